-- API tokens (`meshploy token create`). Only the SHA-256 digest of a token is kept: the
-- token itself is shown once, when it is made. Revoking deletes the row.
CREATE TABLE api_tokens (
    name         text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
    scope        text NOT NULL CHECK (scope IN ('read', 'operate', 'admin')),
    sha256       bytea NOT NULL UNIQUE CHECK (length(sha256) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz
);
