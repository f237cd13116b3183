-- Ids are compared as bytes (COLLATE "C", on every run_id column alike, so joins use the
-- indexes): prefix lookups are ranges, whatever the locale.
-- The journal, the run index, and the inbox of requests sent from outside (the same schema
-- as SQLite's 0001, in PostgreSQL's types). runs.anchor_seq/anchor_hash: the journal head as
-- of the run's last status change or lease release.
CREATE TABLE runs (
    run_id           TEXT COLLATE "C" PRIMARY KEY,
    workflow         TEXT NOT NULL,
    workflow_ref     TEXT NOT NULL,
    status           TEXT NOT NULL,
    created_at       DOUBLE PRECISION NOT NULL,
    updated_at       DOUBLE PRECISION NOT NULL,
    anchor_seq       BIGINT NOT NULL,
    anchor_hash      TEXT NOT NULL,
    principal        TEXT,
    tenant           TEXT,
    wake_at          DOUBLE PRECISION,
    waiting_for      TEXT,
    outcome          TEXT,
    owner            TEXT,
    lease_expires_at DOUBLE PRECISION,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX runs_by_status ON runs (status, wake_at);
CREATE INDEX runs_by_created ON runs (created_at);
CREATE INDEX runs_by_tenant ON runs (tenant, created_at);

CREATE TABLE events (
    run_id TEXT COLLATE "C" NOT NULL REFERENCES runs (run_id),
    seq    BIGINT NOT NULL,
    type   TEXT NOT NULL,
    at     TEXT NOT NULL,
    codec  TEXT NOT NULL DEFAULT 'json/c14n-v1',
    data   TEXT NOT NULL,
    hash   TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE signals (
    signal_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id    TEXT COLLATE "C" NOT NULL,
    name      TEXT NOT NULL,
    data      TEXT NOT NULL,
    sent_at   DOUBLE PRECISION NOT NULL,
    consumed  INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX signals_by_run ON signals (run_id, consumed);
