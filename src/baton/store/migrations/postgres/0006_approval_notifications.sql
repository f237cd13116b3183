-- When each approval request's notification got through (NULL: not yet), so that workers
-- can send again the ones that did not.
ALTER TABLE approvals ADD COLUMN notified_at DOUBLE PRECISION;
CREATE INDEX approvals_to_notify ON approvals (notified_at, status);
