-- Signed checkpoints: each holds the heads of the runs changed since the one before, their
-- Merkle root, that checkpoint's hash and an Ed25519 signature. checkpoint_heads is an index
-- of the latest head checkpointed per run (to find what changed); verification reads only
-- the signed bodies.
CREATE TABLE checkpoints (
    seq        BIGINT PRIMARY KEY,
    created_at DOUBLE PRECISION NOT NULL,
    body       TEXT NOT NULL,
    hash       TEXT NOT NULL,
    signature  TEXT NOT NULL
);

CREATE TABLE checkpoint_heads (
    run_id     TEXT COLLATE "C" PRIMARY KEY,
    seq        BIGINT NOT NULL,
    hash       TEXT NOT NULL,
    checkpoint BIGINT NOT NULL
);
