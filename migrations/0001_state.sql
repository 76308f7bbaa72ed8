-- The desired state as applied: one table per kind, revisions, and sealed secrets.
--
-- Every resource row carries the flattened fields the plan compares (`fields`, without
-- secrets), typed columns for what constraints and runtime readers need, `protect`, a
-- `version` drawn from one sequence (so a resource deleted and created again never reuses a
-- version, which is what saved plans check), the source that owns it and the revision that
-- last wrote it. References between resources are foreign keys checked at commit, so the
-- order of writes inside one apply does not matter, only the end state.

CREATE TABLE revisions (
    id          bigserial PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    source      text NOT NULL,
    commit_id   text,
    added       integer NOT NULL CHECK (added >= 0),
    changed     integer NOT NULL CHECK (changed >= 0),
    destroyed   integer NOT NULL CHECK (destroyed >= 0),
    -- The plan in its documented JSON form, which carries no secret values.
    plan        jsonb NOT NULL
);

CREATE SEQUENCE resource_version;

CREATE TABLE projects (
    name        text PRIMARY KEY,
    fields      jsonb NOT NULL,
    protect     boolean NOT NULL,
    version     bigint NOT NULL DEFAULT nextval('resource_version'),
    source      text NOT NULL,
    revision_id bigint NOT NULL REFERENCES revisions (id)
);

CREATE TABLE variable_groups (
    project     text NOT NULL REFERENCES projects (name) DEFERRABLE INITIALLY DEFERRED,
    name        text NOT NULL,
    fields      jsonb NOT NULL,
    protect     boolean NOT NULL,
    version     bigint NOT NULL DEFAULT nextval('resource_version'),
    source      text NOT NULL,
    revision_id bigint NOT NULL REFERENCES revisions (id),
    PRIMARY KEY (project, name)
);

-- Secret values, only as ciphertext sealed for this row (associated data
-- `meshploy/v1/db/secrets/<project>/<group>/<name>/ciphertext`), and a keyed digest that
-- plans compare. They belong to their group and go with it.
CREATE TABLE secrets (
    project     text NOT NULL,
    group_name  text NOT NULL,
    name        text NOT NULL,
    ciphertext  text NOT NULL CHECK (ciphertext LIKE 'meshploy:v1:%'),
    digest      text NOT NULL,
    PRIMARY KEY (project, group_name, name),
    FOREIGN KEY (project, group_name) REFERENCES variable_groups (project, name)
        ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED
);

CREATE TABLE services (
    project     text NOT NULL REFERENCES projects (name) DEFERRABLE INITIALLY DEFERRED,
    name        text NOT NULL,
    -- Exactly one of a prebuilt image or a git source to build.
    image       text,
    source_git  text,
    port        integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    replicas    integer NOT NULL CHECK (replicas >= 0),
    fields      jsonb NOT NULL,
    protect     boolean NOT NULL,
    version     bigint NOT NULL DEFAULT nextval('resource_version'),
    source      text NOT NULL,
    revision_id bigint NOT NULL REFERENCES revisions (id),
    PRIMARY KEY (project, name),
    CHECK ((image IS NULL) <> (source_git IS NULL))
);

-- Which variable groups a service reads. A group cannot go while a service uses it.
CREATE TABLE service_variable_groups (
    project     text NOT NULL,
    service     text NOT NULL,
    group_name  text NOT NULL,
    PRIMARY KEY (project, service, group_name),
    FOREIGN KEY (project, service) REFERENCES services (project, name)
        ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    FOREIGN KEY (project, group_name) REFERENCES variable_groups (project, name)
        DEFERRABLE INITIALLY DEFERRED
);

CREATE TABLE routes (
    project      text NOT NULL REFERENCES projects (name) DEFERRABLE INITIALLY DEFERRED,
    name         text NOT NULL,
    host         text NOT NULL,
    path         text NOT NULL,
    -- Exactly one target: a service of the same project and one of its ports, or an
    -- external upstream URL.
    service      text,
    service_port integer CHECK (service_port BETWEEN 1 AND 65535),
    upstream     text,
    strip_prefix boolean NOT NULL,
    fields       jsonb NOT NULL,
    protect      boolean NOT NULL,
    version      bigint NOT NULL DEFAULT nextval('resource_version'),
    source       text NOT NULL,
    revision_id  bigint NOT NULL REFERENCES revisions (id),
    PRIMARY KEY (project, name),
    -- One route owns a host and path across all projects.
    UNIQUE (host, path) DEFERRABLE INITIALLY DEFERRED,
    FOREIGN KEY (project, service) REFERENCES services (project, name)
        DEFERRABLE INITIALLY DEFERRED,
    CHECK ((service IS NULL) = (service_port IS NULL)),
    CHECK ((service IS NULL) <> (upstream IS NULL))
);

-- The key of the secret digests, sealed under the primary secret key (associated data
-- `meshploy/v1/db/settings/secret_digest_key`). It is separate from the sealing keys so
-- digests stay comparable across key rotation; one row at most.
CREATE TABLE secret_digest_key (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    sealed      text NOT NULL CHECK (sealed LIKE 'meshploy:v1:%')
);
