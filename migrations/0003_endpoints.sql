-- Live endpoints of services, which the proxy routes to: where each replica of a service port
-- can be reached. The runtime writes them; the proxy only reads them.
CREATE TABLE endpoints (
    project    text NOT NULL,
    service    text NOT NULL,
    -- The service port (as routes name it) that this endpoint serves.
    port       integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    -- Where to connect: `host:port`.
    address    text NOT NULL CHECK (address ~ '^[^\s/]+:[0-9]{1,5}$'),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project, service, port, address),
    -- A deleted service takes its endpoints with it.
    FOREIGN KEY (project, service) REFERENCES services (project, name) ON DELETE CASCADE
);

-- Every change of endpoints tells the proxies, as applies do on meshploy_revisions.
CREATE FUNCTION notify_endpoints() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('meshploy_endpoints', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER endpoints_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON endpoints
    FOR EACH STATEMENT EXECUTE FUNCTION notify_endpoints();

-- The least privilege the proxy needs: read routes and endpoints. Give it to a login role
-- with `GRANT meshploy_proxy TO <role>`. Roles belong to the whole cluster, so another
-- database may have created it already; a migrating role without CREATEROLE leaves it to
-- the administrator (see the README).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'meshploy_proxy') THEN
        BEGIN
            CREATE ROLE meshploy_proxy NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'cannot create role meshploy_proxy: create it and grant it SELECT on routes and endpoints';
                RETURN;
        END;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO meshploy_proxy', current_schema());
    GRANT SELECT ON routes, endpoints TO meshploy_proxy;
END
$$;
