-- Large values, stored once by the sha256 of their canonical JSON and referred to from the
-- events that carry them (codec json/c14n-v1+blobs).
CREATE TABLE blobs (
    hash TEXT PRIMARY KEY,
    data TEXT NOT NULL
);
