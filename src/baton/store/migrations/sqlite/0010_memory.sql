-- Long-term memory: what runs chose to remember, searchable by later runs of the same tenant.
-- An entry written by a run is keyed by (run_id, step_id), so a step replayed after a crash
-- writes nothing twice. Not tied to the runs table: memory outlives the runs that wrote it
-- (pruning a run keeps what it learned; erasing a person's data deletes it).
-- tenant is '' for runs without one; data is JSON text; embedding a JSON list of floats.
CREATE TABLE memories (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant     TEXT NOT NULL,
    principal  TEXT,
    namespace  TEXT NOT NULL,
    text       TEXT NOT NULL,
    data       TEXT NOT NULL DEFAULT 'null',
    source     TEXT NOT NULL,
    trusted    INTEGER NOT NULL DEFAULT 0,
    run_id     TEXT,
    step_id    INTEGER,
    created_at REAL NOT NULL,
    embedding  TEXT,
    UNIQUE (run_id, step_id)
);

CREATE INDEX memories_by_scope ON memories (tenant, namespace, id);

-- Full-text search: an FTS5 index over the text (English stemming, accents folded), whose
-- content is read from the memories table and kept in step with it by the triggers below.
-- Each trigger stands on one line: the migration runner ends a statement at a line that ends with ';'.
CREATE VIRTUAL TABLE memories_fts USING fts5 (text, content = 'memories', content_rowid = 'id', tokenize = 'porter unicode61 remove_diacritics 2');
CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories BEGIN INSERT INTO memories_fts (rowid, text) VALUES (new.id, new.text); END;
CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories BEGIN INSERT INTO memories_fts (memories_fts, rowid, text) VALUES ('delete', old.id, old.text); END;
-- Entries are never edited (a correction is a new entry); an edit by hand still keeps the index true.
CREATE TRIGGER memories_fts_update AFTER UPDATE OF text ON memories BEGIN INSERT INTO memories_fts (memories_fts, rowid, text) VALUES ('delete', old.id, old.text); INSERT INTO memories_fts (rowid, text) VALUES (new.id, new.text); END;
