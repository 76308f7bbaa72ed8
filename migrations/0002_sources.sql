-- The git sources `meshploy serve` tracks, every sync attempt, and the webhook deliveries
-- already seen (so a replayed delivery does nothing, whichever replica receives it).

CREATE TABLE sources (
    name                text PRIMARY KEY,
    -- The URL without credentials: this table is shown by `meshploy status`.
    url                 text NOT NULL,
    branch              text NOT NULL,
    path                text NOT NULL,
    policy              text NOT NULL CHECK (policy IN ('auto', 'manual')),
    state               text NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending', 'synced', 'out-of-sync', 'applying', 'failed')),
    last_seen_commit    text,
    last_applied_commit text,
    last_revision       bigint REFERENCES revisions (id),
    -- Why the last attempt failed, or what a manual source is waiting to apply.
    message             text,
    checked_at          timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sync_attempts (
    id              bigserial PRIMARY KEY,
    source          text NOT NULL REFERENCES sources (name) ON DELETE CASCADE,
    -- What asked for it: webhook, watch, poll, request (sync command or API) or start.
    trigger         text NOT NULL,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL DEFAULT now(),
    commit_id       text,
    -- Set when the commit does not descend from the last applied one: a force-push or
    -- another history rewrite, followed because git is the truth.
    rewritten_from  text,
    outcome         text NOT NULL CHECK (outcome IN ('synced', 'out-of-sync', 'failed')),
    message         text,
    revision_id     bigint REFERENCES revisions (id),
    fetch_ms        integer NOT NULL,
    total_ms        integer NOT NULL
);

CREATE INDEX sync_attempts_by_source ON sync_attempts (source, id DESC);

CREATE TABLE webhook_deliveries (
    id          text PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now()
);
