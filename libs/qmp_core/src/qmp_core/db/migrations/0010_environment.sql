-- What the database is for, set by `qmp init --env production|test` (and `qmp up`, whose database is a test
-- one): production data is never cleared by `qmp db clear-test-data`, and `qmp init --env production`
-- refuses a database that already holds another environment's data unless told.
CREATE TABLE IF NOT EXISTS qmp_environment (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    environment text NOT NULL CHECK (environment IN ('production', 'test')),
    tagged_at timestamptz NOT NULL DEFAULT now()
);
