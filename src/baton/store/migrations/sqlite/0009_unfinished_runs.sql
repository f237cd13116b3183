-- Partial indexes over the runs that are not over, which is what workers look for on every
-- claim: their cost follows the work in progress, not the database's history.
CREATE INDEX runs_unfinished ON runs (created_at) WHERE status NOT IN ('completed', 'failed', 'cancelled');
CREATE INDEX runs_owned ON runs (owner) WHERE owner IS NOT NULL;
