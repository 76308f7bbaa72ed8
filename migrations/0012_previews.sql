-- Pull requests' preview environments: at most one per pull request and source. Its resources
-- are owned by the source `<source>#pr-<n>` (`owner`), so destroying it is a plan of that
-- source to nothing. `active` previews count against the source's `maxActive`; an `expired`
-- one was destroyed when its TTL passed and is made again by the next push.
CREATE TABLE previews (
    source     text NOT NULL,
    number     bigint NOT NULL,
    owner      text NOT NULL UNIQUE,
    head       text NOT NULL,
    urls       text[] NOT NULL,
    state      text NOT NULL CHECK (state IN ('active', 'expired')),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (source, number),
    FOREIGN KEY (source, number) REFERENCES pull_requests (source, number) ON DELETE CASCADE
);
