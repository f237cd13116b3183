-- Each run's data key, wrapped by the master key: it encrypts the run's sensitive values.
-- Erasing them (`baton runs forget`) deletes the wrapped key and keeps the row, with
-- erased_at, as the record of when. Not tied to the runs table: a pruned run's archive
-- stays erasable.
CREATE TABLE data_keys (
    run_id TEXT COLLATE "C" PRIMARY KEY,
    master_id TEXT,
    wrapped BYTEA,
    created_at DOUBLE PRECISION NOT NULL,
    erased_at DOUBLE PRECISION
);
