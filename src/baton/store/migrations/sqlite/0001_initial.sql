-- The journal, the run index, and the inbox of requests sent from outside.
-- runs.anchor_seq/anchor_hash: the journal head as of the run's last status change or lease
-- release (not every append, which would cost every step a second page write).
CREATE TABLE runs (
    run_id           TEXT PRIMARY KEY,
    workflow         TEXT NOT NULL,
    workflow_ref     TEXT NOT NULL,
    status           TEXT NOT NULL,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    anchor_seq       INTEGER NOT NULL,
    anchor_hash      TEXT NOT NULL,
    principal        TEXT,
    tenant           TEXT,
    wake_at          REAL,
    waiting_for      TEXT,
    outcome          TEXT,
    owner            TEXT,
    lease_expires_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX runs_by_status ON runs (status, wake_at);
CREATE INDEX runs_by_created ON runs (created_at);

CREATE TABLE events (
    run_id TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    type   TEXT NOT NULL,
    at     TEXT NOT NULL,
    codec  TEXT NOT NULL DEFAULT 'json/c14n-v1',
    data   TEXT NOT NULL,
    hash   TEXT NOT NULL,
    PRIMARY KEY (run_id, seq),
    FOREIGN KEY (run_id) REFERENCES runs (run_id)
) WITHOUT ROWID;

CREATE TABLE signals (
    signal_id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id    TEXT NOT NULL,
    name      TEXT NOT NULL,
    data      TEXT NOT NULL,
    sent_at   REAL NOT NULL,
    consumed  INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX signals_by_run ON signals (run_id, consumed);
