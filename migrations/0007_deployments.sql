-- What the runtime controller did with the applied state: builds of source services,
-- deployments of releases, their logs, and rollback pins. The controller writes them; the
-- CLI (and the API next) read them. None of them holds a secret value: a release names each
-- secret with its keyed digest, and captured log lines have every secret value replaced.

-- One build of a source at a commit. A build is reused by every deployment with the same
-- cache key (commit, path and build settings), so it is its own row.
CREATE TABLE builds (
    id          bigserial PRIMARY KEY,
    project     text NOT NULL,
    service     text NOT NULL,
    -- The source's URL as shown to people (credentials removed), and the commit built.
    git         text NOT NULL,
    commit_id   text NOT NULL,
    strategy    text NOT NULL,
    cache_key   text NOT NULL,
    state       text NOT NULL CHECK (state IN ('building', 'succeeded', 'failed')),
    reason      text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    CHECK ((state = 'failed') = (reason IS NOT NULL)),
    CHECK ((state = 'building') = (finished_at IS NULL))
);

CREATE INDEX builds_by_key ON builds (cache_key, id DESC);

CREATE TABLE deployments (
    id             bigserial PRIMARY KEY,
    project        text NOT NULL,
    service        text NOT NULL,
    release_digest text NOT NULL,
    -- The release as data: workload, resolved commit, command, ports, replicas, resources,
    -- health check and environment, with secrets as (group, name, digest) only.
    release        jsonb NOT NULL,
    -- The applied revision the release came from, and its manifests' commit.
    revision_id    bigint REFERENCES revisions (id),
    trigger        text NOT NULL CHECK (trigger IN ('revision', 'rollback', 'restart')),
    state          text NOT NULL CHECK (state IN
        ('queued', 'building', 'deploying', 'healthy', 'failed', 'superseded', 'rolled-back')),
    -- Why it failed, in words; or, for a healthy deployment, why it is degraded.
    reason         text,
    build_id       bigint REFERENCES builds (id),
    queued_at      timestamptz NOT NULL DEFAULT now(),
    building_at    timestamptz,
    deploying_at   timestamptz,
    finished_at    timestamptz,
    -- Set while a healthy release's replicas keep exiting: what the last exits said.
    degraded       text,
    CHECK (state <> 'failed' OR reason IS NOT NULL)
);

CREATE INDEX deployments_by_service ON deployments (project, service, id DESC);

-- Captured output: a build's, or one replica's of a deployment. Bounded per stream by the
-- writer, which drops the oldest lines and leaves a marker saying how many.
CREATE TABLE log_lines (
    seq           bigserial PRIMARY KEY,
    build_id      bigint REFERENCES builds (id) ON DELETE CASCADE,
    deployment_id bigint REFERENCES deployments (id) ON DELETE CASCADE,
    replica       integer,
    at            timestamptz NOT NULL DEFAULT now(),
    line          text NOT NULL,
    CHECK ((build_id IS NULL) <> (deployment_id IS NULL)),
    CHECK ((deployment_id IS NULL) = (replica IS NULL))
);

CREATE INDEX log_lines_by_build ON log_lines (build_id, seq) WHERE build_id IS NOT NULL;
CREATE INDEX log_lines_by_deployment ON log_lines (deployment_id, replica, seq)
    WHERE deployment_id IS NOT NULL;

-- A rollback pins a service to an earlier deployment's release until the applied service
-- changes: `spec_digest` is its applied specification when it was pinned.
CREATE TABLE pins (
    project       text NOT NULL,
    service       text NOT NULL,
    deployment_id bigint NOT NULL REFERENCES deployments (id),
    spec_digest   text NOT NULL,
    pinned_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project, service)
);
