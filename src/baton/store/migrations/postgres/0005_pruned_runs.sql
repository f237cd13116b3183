-- Runs whose events were archived to a file and removed (baton runs prune): their last head,
-- which a signed checkpoint covers, and where the archive went.
CREATE TABLE pruned_runs (
    run_id    TEXT COLLATE "C" PRIMARY KEY,
    head_seq  BIGINT NOT NULL,
    head_hash TEXT NOT NULL,
    archive   TEXT NOT NULL,
    pruned_at DOUBLE PRECISION NOT NULL
);
