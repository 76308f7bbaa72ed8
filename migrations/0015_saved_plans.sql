-- The SHA-256 of every plan file `meshploy plan --out` wrote. `apply FILE` applies a file only
-- when its digest is here, so a file edited after it was saved, however consistently, or one
-- saved against another database, is refused. Only Meshploy's own role records one.
CREATE TABLE saved_plans (
    sha256   bytea PRIMARY KEY CHECK (length(sha256) = 32),
    source   text NOT NULL,
    saved_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON saved_plans FROM PUBLIC;
