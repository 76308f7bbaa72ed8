-- The directory a revision was applied from, when it came from one (`apply DIR`, `up DIR`).
-- A source's identity is the same for every clone of its repository, so the controller
-- takes a relative `source.git` (such as `../..`) from the newest directory recorded for the
-- source, rather than from the identity.
ALTER TABLE revisions ADD COLUMN directory text;
