-- The outcome of a sync attempt as data, beside its message: the diagnostics (file, line,
-- column, code), the refused addresses, the owners of conflicting resources, or the plan's
-- summary. The console and PR comments read this; `message` stays the text for people.

ALTER TABLE sync_attempts ADD COLUMN detail jsonb;
ALTER TABLE sources ADD COLUMN detail jsonb;
