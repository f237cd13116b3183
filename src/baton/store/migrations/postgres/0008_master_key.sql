-- The master key, for a shared database whose workers were given none (BATON_MASTER_KEY):
-- one row, made by the first process that needed it. Keeping it here lets any worker open any
-- run and erasure still work, but whoever can read the database can read the values; set
-- BATON_MASTER_KEY in production. (An SQLite database keeps its key in a file beside it.)
CREATE TABLE master_key (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    secret TEXT NOT NULL
);
