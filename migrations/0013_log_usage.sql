-- Bytes of log lines kept per budget scope (`service/<project>/<name>`, or `build/<id>`), so
-- that one noisy service cannot grow the database without bound. An estimate from above: the
-- log writer adds what it stores, and recounts exactly when it trims past the budget.
CREATE TABLE log_usage (
    scope text PRIMARY KEY,
    bytes bigint NOT NULL CHECK (bytes >= 0)
);
