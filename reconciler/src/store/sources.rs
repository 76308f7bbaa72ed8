//! Tracked sources, their sync attempts, and sync requests.

use sqlx::PgPool;

use crate::Error;
use crate::error::db;
use crate::names::{AttemptOutcome, Policy, SourceState, Trigger};

/// The channel that wakes the active reconciler to take the rows of `sync_requests`. The
/// payload means nothing: any role may NOTIFY, but only Meshploy's may insert a request.
pub const SYNC_CHANNEL: &str = "meshploy_sync";

/// A tracked source as registered by `meshploy serve`.
#[derive(Clone, Debug)]
pub struct SourceRow<'a> {
    pub name: &'a str,
    pub url: &'a str,
    pub branch: &'a str,
    pub path: &'a str,
    pub policy: Policy,
}

/// Registers a source, or updates where it points; its sync history is kept.
pub async fn upsert_source(pool: &PgPool, source: &SourceRow<'_>) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO sources (name, url, branch, path, policy) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (name) DO UPDATE SET url = $2, branch = $3, path = $4, policy = $5, \
             updated_at = now() \
         WHERE (sources.url, sources.branch, sources.path, sources.policy) \
               IS DISTINCT FROM ($2, $3, $4, $5)",
    )
    .bind(source.name)
    .bind(source.url)
    .bind(source.branch)
    .bind(source.path)
    .bind(source.policy)
    .execute(pool)
    .await
    .map_err(db("registering a source"))?;
    Ok(())
}

/// Where a source stands, as `meshploy status` shows it.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct SourceStatus {
    pub name: String,
    pub url: String,
    pub branch: String,
    pub path: String,
    pub policy: Policy,
    pub state: SourceState,
    pub last_seen_commit: Option<String>,
    pub last_applied_commit: Option<String>,
    pub last_revision: Option<i64>,
    pub message: Option<String>,
    /// The last attempt's outcome as data (see [`crate::sync::Detail`]).
    pub detail: Option<serde_json::Value>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub checked_at: Option<time::OffsetDateTime>,
    /// The newest attempt, if any.
    pub attempt_id: Option<i64>,
    pub trigger: Option<Trigger>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub finished_at: Option<time::OffsetDateTime>,
    pub rewritten_from: Option<String>,
    pub fetch_ms: Option<i32>,
    pub total_ms: Option<i32>,
}

/// Every registered source with its newest attempt, by name.
pub async fn source_statuses(pool: &PgPool) -> Result<Vec<SourceStatus>, Error> {
    sqlx::query_as(
        "SELECT s.name, s.url, s.branch, s.path, s.policy, s.state, s.last_seen_commit, \
                s.last_applied_commit, s.last_revision, s.message, s.detail, s.checked_at, \
                a.id AS attempt_id, a.trigger, a.finished_at, a.rewritten_from, \
                a.fetch_ms, a.total_ms \
         FROM sources s LEFT JOIN LATERAL \
             (SELECT * FROM sync_attempts WHERE source = s.name ORDER BY id DESC LIMIT 1) a \
             ON true \
         ORDER BY s.name",
    )
    .fetch_all(pool)
    .await
    .map_err(db("reading the sources"))
}

/// A source that owns resources without being registered by `meshploy serve`: a directory
/// applied by `meshploy up DIR` or `apply DIR`, an `apply --repo` or `--source NAME`, or a
/// preview. Its latest revision says when and by whom.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Unregistered {
    pub name: String,
    pub resources: i64,
    pub revision: i64,
    pub applied_at: time::OffsetDateTime,
    pub actor: String,
    /// Where it was applied from, when that was a directory.
    pub directory: Option<String>,
}

/// Every unregistered source that owns resources, by name.
pub async fn unregistered_sources(pool: &PgPool) -> Result<Vec<Unregistered>, Error> {
    sqlx::query_as(
        "WITH owners AS ( \
             SELECT source, count(*) AS resources FROM ( \
                 SELECT source FROM projects UNION ALL SELECT source FROM variable_groups \
                 UNION ALL SELECT source FROM services UNION ALL SELECT source FROM routes) owned \
             WHERE source NOT IN (SELECT name FROM sources) GROUP BY source) \
         SELECT o.source AS name, o.resources, r.id AS revision, r.applied_at, r.actor, \
                r.directory \
         FROM owners o JOIN LATERAL \
             (SELECT * FROM revisions WHERE source = o.source ORDER BY id DESC LIMIT 1) r ON true \
         ORDER BY o.source",
    )
    .fetch_all(pool)
    .await
    .map_err(db("reading the sources applied without `meshploy serve`"))
}

/// Forgets a registered source with its attempts and pull requests. Returns whether it was
/// registered.
pub async fn remove_source(pool: &PgPool, name: &str) -> Result<bool, Error> {
    let deleted = sqlx::query("DELETE FROM sources WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await
        .map_err(db("removing a source"))?;
    Ok(deleted.rows_affected() > 0)
}

/// A recorded attempt, as the console lists a source's history.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PastAttempt {
    pub id: i64,
    pub trigger: Trigger,
    pub finished_at: time::OffsetDateTime,
    pub commit_id: Option<String>,
    pub rewritten_from: Option<String>,
    pub outcome: AttemptOutcome,
    pub message: Option<String>,
    pub detail: Option<serde_json::Value>,
    pub revision_id: Option<i64>,
    pub total_ms: i32,
}

/// Up to `limit` attempts of `source` older than attempt `before`, newest first.
pub async fn past_attempts(
    pool: &PgPool,
    source: &str,
    before: i64,
    limit: i64,
) -> Result<Vec<PastAttempt>, Error> {
    sqlx::query_as(
        "SELECT id, trigger, finished_at, commit_id, rewritten_from, outcome, message, detail, \
                revision_id, total_ms \
         FROM sync_attempts WHERE source = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
    )
    .bind(source)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(db("reading a source's attempts"))
}

/// Where a source stands before a sync: its state and last applied commit.
#[derive(Clone, Debug, Default, sqlx::FromRow)]
pub struct SourcePosition {
    pub state: Option<SourceState>,
    pub last_seen_commit: Option<String>,
    pub last_applied_commit: Option<String>,
}

/// The state and the last seen and applied commits of one source.
pub async fn source_position(pool: &PgPool, name: &str) -> Result<Option<SourcePosition>, Error> {
    sqlx::query_as(
        "SELECT state, last_seen_commit, last_applied_commit FROM sources WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .map_err(db("reading where a source stands"))
}

/// Records that a source was checked and found unchanged (no attempt row: polls every
/// minute would bury the attempts that did something).
pub async fn touch_source(pool: &PgPool, name: &str) -> Result<(), Error> {
    sqlx::query("UPDATE sources SET checked_at = now() WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await
        .map_err(db("marking a source checked"))?;
    Ok(())
}

/// Marks a source as applying `commit`.
pub async fn mark_applying(pool: &PgPool, name: &str, commit: &str) -> Result<(), Error> {
    sqlx::query(
        "UPDATE sources SET state = $3, last_seen_commit = $2, checked_at = now(), \
             updated_at = now() WHERE name = $1",
    )
    .bind(name)
    .bind(commit)
    .bind(SourceState::Applying)
    .execute(pool)
    .await
    .map_err(db("marking a source applying"))?;
    Ok(())
}

/// Records every attempt left `applying` by a reconciler that died as `interrupted`, and
/// returns how many there were. Run by a new leader before it syncs.
pub async fn interrupt_applying(pool: &PgPool, message: &str) -> Result<u64, Error> {
    let done = sqlx::query(
        "WITH s AS ( \
             UPDATE sources SET state = $1, message = $2, detail = NULL, updated_at = now() \
             WHERE state = $3 RETURNING name, last_seen_commit) \
         INSERT INTO sync_attempts (source, trigger, started_at, commit_id, outcome, message, \
             fetch_ms, total_ms) \
         SELECT name, $4, now(), last_seen_commit, $5, $2, 0, 0 FROM s",
    )
    .bind(SourceState::Interrupted)
    .bind(message)
    .bind(SourceState::Applying)
    .bind(Trigger::Start)
    .bind(AttemptOutcome::Interrupted)
    .execute(pool)
    .await
    .map_err(db("recording interrupted attempts"))?;
    Ok(done.rows_affected())
}

/// One finished sync attempt.
#[derive(Clone, Debug)]
pub struct Attempt<'a> {
    pub source: &'a str,
    pub trigger: Trigger,
    pub started_at: time::OffsetDateTime,
    pub commit: Option<&'a str>,
    pub rewritten_from: Option<&'a str>,
    pub outcome: AttemptOutcome,
    /// The outcome for people: why it failed, or what a manual source waits to apply.
    pub message: Option<String>,
    /// The same outcome as data (JSON): diagnostics, refusals, conflicts, summaries.
    pub detail: Option<serde_json::Value>,
    pub revision: Option<i64>,
    pub fetch_ms: i32,
    pub total_ms: i32,
}

/// Records an attempt and moves the source to its outcome, in one statement. The last
/// applied commit moves only when the attempt synced.
pub async fn record_attempt(pool: &PgPool, attempt: &Attempt<'_>) -> Result<i64, Error> {
    sqlx::query_scalar(
        "WITH a AS ( \
             INSERT INTO sync_attempts (source, trigger, started_at, commit_id, rewritten_from, \
                 outcome, message, detail, revision_id, fetch_ms, total_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id), \
         s AS ( \
             UPDATE sources SET state = $12, message = $7, detail = $8, checked_at = now(), \
                 updated_at = now(), \
                 last_seen_commit = coalesce($4, last_seen_commit), \
                 last_applied_commit = CASE WHEN $13 THEN $4 ELSE last_applied_commit END, \
                 last_revision = coalesce($9, last_revision) \
             WHERE name = $1) \
         SELECT id FROM a",
    )
    .bind(attempt.source)
    .bind(attempt.trigger)
    .bind(attempt.started_at)
    .bind(attempt.commit)
    .bind(attempt.rewritten_from)
    .bind(attempt.outcome)
    .bind(attempt.message.as_deref())
    .bind(&attempt.detail)
    .bind(attempt.revision)
    .bind(attempt.fetch_ms)
    .bind(attempt.total_ms)
    .bind(attempt.outcome.state())
    .bind(attempt.outcome == AttemptOutcome::Synced)
    .fetch_one(pool)
    .await
    .map_err(db("recording a sync attempt"))
}

/// The newest attempt of a source.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct LatestAttempt {
    pub id: i64,
    pub outcome: AttemptOutcome,
    pub message: Option<String>,
}

/// The newest attempt of a source, if any.
pub async fn latest_attempt(pool: &PgPool, source: &str) -> Result<Option<LatestAttempt>, Error> {
    sqlx::query_as(
        "SELECT id, outcome, message FROM sync_attempts WHERE source = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(source)
    .fetch_optional(pool)
    .await
    .map_err(db("reading the latest sync attempt"))
}

/// Asks the active reconciler, whichever process it is, to sync `source` now: a row, and a
/// NOTIFY to wake it.
pub async fn request_sync(pool: &PgPool, source: &str, trigger: Trigger) -> Result<(), Error> {
    sqlx::query(
        "WITH r AS (INSERT INTO sync_requests (source, trigger) VALUES ($1, $2) RETURNING id) \
         SELECT pg_notify($3, '') FROM r",
    )
    .bind(source)
    .bind(trigger)
    .bind(SYNC_CHANNEL)
    .execute(pool)
    .await
    .map_err(db("requesting a sync"))?;
    Ok(())
}

/// Takes (and deletes) every pending sync request, oldest first.
pub async fn take_sync_requests(pool: &PgPool) -> Result<Vec<(String, Trigger)>, Error> {
    sqlx::query_as(
        "WITH taken AS (DELETE FROM sync_requests RETURNING id, source, trigger) \
         SELECT source, trigger FROM taken ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .map_err(db("taking sync requests"))
}
