-- What `qmp import` has written: one row per chunk of a source file (by its SHA-256, the venue it went to and
-- the chunk size), committed with the chunk's bars and dead letters, so an interrupted import resumes where
-- it stopped and a repeated one writes nothing twice.
CREATE TABLE IF NOT EXISTS import_chunks (
    sha256 text NOT NULL,
    venue text NOT NULL,
    chunk_rows integer NOT NULL,
    chunk integer NOT NULL,
    chunks integer NOT NULL,
    source text NOT NULL,
    rows integer NOT NULL,
    imported integer NOT NULL,
    rejected integer NOT NULL,
    ts timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sha256, venue, chunk_rows, chunk)
);
