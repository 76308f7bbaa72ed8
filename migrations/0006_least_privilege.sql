-- Other roles of this database (the proxy's read-only role, and any future one) must not be
-- able to affect reconciliation.
--
-- Sync requests are rows that only Meshploy's own role may insert; a NOTIFY on meshploy_sync is
-- only a wake-up, so a role that can NOTIFY (every role can) triggers nothing by itself.
CREATE TABLE sync_requests (
    id           bigserial PRIMARY KEY,
    source       text NOT NULL,
    trigger      text NOT NULL CHECK (trigger IN ('start', 'poll', 'watch', 'webhook', 'request')),
    requested_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON sync_requests FROM PUBLIC;

-- The leader and apply locks are advisory locks, which any role may take by default. Only
-- Meshploy's role may call the advisory lock functions in this database, and no other role may
-- create temporary tables. Both need the database's owner or a superuser (the embedded
-- database migrates as its superuser); a migrating role without that leaves a warning and the
-- statements for an administrator (see the README).
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
             WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname LIKE 'pg\_%advisory\_%'
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', f, current_user);
    END LOOP;
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO %I', current_database(), current_user);
EXCEPTION
    WHEN insufficient_privilege THEN
        RAISE WARNING 'the migrating role may not restrict the advisory lock functions and temporary tables; as a superuser, REVOKE EXECUTE on pg_catalog''s pg_*advisory_* functions FROM PUBLIC and REVOKE TEMPORARY ON DATABASE % FROM PUBLIC', current_database();
END
$$;
