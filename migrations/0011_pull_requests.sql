-- Pull requests whose base branch feeds a source, as their webhooks announce them. A burst of
-- pushes leaves one row with the newest head: the leader reviews that one only. `body` is the
-- comment as posted (a plan never holds a secret) and backs the console's page of the PR.
CREATE TABLE pull_requests (
    source     text NOT NULL REFERENCES sources (name) ON DELETE CASCADE,
    number     bigint NOT NULL CHECK (number > 0),
    -- The base repository as `owner/name`, which the forge's API is called with.
    repo       text NOT NULL,
    head       text NOT NULL,
    fork       boolean NOT NULL,
    state      text NOT NULL CHECK (state IN ('open', 'closed')),
    -- The head the last published review describes, and what it found.
    reviewed   text,
    outcome    text CHECK (outcome IN ('success', 'failure')),
    summary    text,
    body       text,
    -- Why the last review could not be published (the forge refused or was away).
    error      text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, number)
);

CREATE INDEX pull_requests_pending ON pull_requests (updated_at)
    WHERE state = 'open' AND reviewed IS DISTINCT FROM head;
