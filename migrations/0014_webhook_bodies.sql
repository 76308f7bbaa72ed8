-- A webhook delivery's id is not covered by its signature, so a signed body replayed under a
-- new id would pass as new. Each delivery also keeps the SHA-256 of its signed body, unique:
-- a body seen before is a replay whatever its id. Rows from before this column stay, without
-- a digest.
ALTER TABLE webhook_deliveries ADD COLUMN body_sha256 bytea CHECK (length(body_sha256) = 32);
CREATE UNIQUE INDEX webhook_deliveries_by_body ON webhook_deliveries (body_sha256);
