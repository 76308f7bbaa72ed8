-- Console sessions: a login with an API token makes one, kept in an HttpOnly cookie. Only the
-- SHA-256 digest of the session's cookie value is stored. Revoking the token ends its
-- sessions (the foreign key deletes them); logging out deletes the row.
CREATE TABLE console_sessions (
    sha256     bytea PRIMARY KEY CHECK (length(sha256) = 32),
    token      text NOT NULL REFERENCES api_tokens (name) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at);
