//! Pull requests' preview environments in the database: applying one through the pipeline as
//! its own source (`<source>#pr-<n>`) under [`Guard::preview`], destroying it the same way
//! (a plan of that source to nothing), and the `previews` rows that count them against
//! `maxActive`, remember their hosts and expire them. Since the pipeline shows a source only
//! its own resources, a preview can neither change nor destroy anything else.

use reconciler::apply::{self, Desired};
use reconciler::pipeline::{self, Owner};
use reconciler::plan::Guard;
use reconciler::secrets::Keyring;
use reconciler::store::RevisionMeta;
use schema::DesiredState;
use sqlx::PgPool;

use crate::preview::{self, Settings};

/// Who the revisions of previews name.
const ACTOR: &str = "meshploy previews";

/// A preview as its row keeps it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Row {
    pub head: String,
    pub urls: Vec<String>,
    pub state: String,
}

/// A preview to destroy or check: its source and pull request (with the base repository).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Key {
    pub source: String,
    pub number: i64,
    pub repo: String,
}

/// A pull request's head, whose preview is made.
#[derive(Clone, Copy, Debug)]
pub struct Head<'a> {
    pub source: &'a str,
    /// The source's repository: services built from it run the head's code.
    pub repository: &'a str,
    pub number: i64,
    pub commit: &'a str,
}

/// Applies `state` (the manifests at the pull request's head) as the preview of `head`;
/// returns its URLs.
pub async fn apply(
    pool: &PgPool,
    keys: Option<&Keyring>,
    lock_timeout_ms: u64,
    settings: &Settings,
    head: Head<'_>,
    state: &DesiredState,
) -> Result<Vec<String>, String> {
    let Head {
        source,
        repository,
        number,
        commit: head,
    } = head;
    let positive = u64::try_from(number).unwrap_or_default();
    let made = preview::rewrite(state, settings, positive, repository, head)?;
    let desired = apply::prepare_copies_for(pool, &made.state, &made.copies, keys)
        .await
        .map_err(|e| e.to_string())?;
    let owner = preview::owner(source, positive);
    write(pool, keys, lock_timeout_ms, &owner, Some(head), desired).await?;
    let ttl = i64::try_from(settings.ttl.as_millis()).unwrap_or(i64::MAX);
    sqlx::query(
        "INSERT INTO previews (source, number, owner, head, urls, state, expires_at) \
         VALUES ($1, $2, $3, $4, $5, 'active', now() + make_interval(secs => $6 / 1000.0)) \
         ON CONFLICT (source, number) DO UPDATE SET head = EXCLUDED.head, \
           urls = EXCLUDED.urls, state = 'active', expires_at = EXCLUDED.expires_at",
    )
    .bind(source)
    .bind(number)
    .bind(&owner)
    .bind(head)
    .bind(&made.urls)
    .bind(ttl)
    .execute(pool)
    .await
    .map_err(|e| format!("cannot record the preview: {e}"))?;
    Ok(made.urls)
}

/// Destroys the preview of pull request `number` of `source`: every resource its source owns.
/// Returns how many resources went.
pub async fn destroy(
    pool: &PgPool,
    lock_timeout_ms: u64,
    source: &str,
    number: i64,
) -> Result<usize, String> {
    let owner = preview::owner(source, u64::try_from(number).unwrap_or_default());
    write(
        pool,
        None,
        lock_timeout_ms,
        &owner,
        None,
        Desired::default(),
    )
    .await
}

/// Plans `desired` as `owner` under the preview guard and applies it, if it changes anything.
async fn write(
    pool: &PgPool,
    keys: Option<&Keyring>,
    lock_timeout_ms: u64,
    owner: &str,
    commit: Option<&str>,
    desired: Desired,
) -> Result<usize, String> {
    let text = |e: reconciler::Error| e.to_string();
    let locked = pipeline::lock(pool, Owner::source(owner), lock_timeout_ms)
        .await
        .map_err(text)?;
    let checked = locked
        .plan(desired)
        .map_err(text)?
        .check(&Guard::preview())
        .map_err(text)?;
    let changes = checked.plan().changes.len();
    if changes > 0 {
        let meta = RevisionMeta {
            actor: ACTOR.to_owned(),
            source: owner.to_owned(),
            commit: commit.map(str::to_owned),
            directory: None,
        };
        checked
            .apply(keys, &meta)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(changes)
}

/// The preview of pull request `number` of `source`, if it has one.
pub async fn row(pool: &PgPool, source: &str, number: i64) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as("SELECT head, urls, state FROM previews WHERE source = $1 AND number = $2")
        .bind(source)
        .bind(number)
        .fetch_optional(pool)
        .await
}

/// How many previews of `source` run, besides that of pull request `number`.
pub async fn active_besides(pool: &PgPool, source: &str, number: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM previews WHERE source = $1 AND number <> $2 AND state = 'active'",
    )
    .bind(source)
    .bind(number)
    .fetch_one(pool)
    .await
}

/// Which previews [`list`] finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// Those whose pull request is closed: they go, row and all.
    OfClosed,
    /// Running ones whose time is up.
    Expired,
    /// Running ones of pull requests still open as far as the webhooks said.
    Running,
}

/// The previews `which` names, in source and number order.
pub async fn list(pool: &PgPool, which: Which) -> Result<Vec<Key>, sqlx::Error> {
    let sql = match which {
        Which::OfClosed => {
            "SELECT p.source, p.number, r.repo FROM previews p \
             JOIN pull_requests r USING (source, number) WHERE r.state = 'closed' \
             ORDER BY p.source, p.number"
        }
        Which::Expired => {
            "SELECT p.source, p.number, r.repo FROM previews p \
             JOIN pull_requests r USING (source, number) \
             WHERE p.state = 'active' AND p.expires_at < now() ORDER BY p.source, p.number"
        }
        Which::Running => {
            "SELECT p.source, p.number, r.repo FROM previews p \
             JOIN pull_requests r USING (source, number) \
             WHERE p.state = 'active' AND r.state = 'open' ORDER BY p.source, p.number"
        }
    };
    sqlx::query_as(sql).fetch_all(pool).await
}

/// Forgets a destroyed preview of a closed pull request.
pub async fn forget(pool: &PgPool, key: &Key) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM previews WHERE source = $1 AND number = $2")
        .bind(&key.source)
        .bind(key.number)
        .execute(pool)
        .await
        .map(|_| ())
}

/// Records that a preview was destroyed when its time was up, and has the pull request
/// reviewed again, so its comment says so.
pub async fn expire(pool: &PgPool, key: &Key) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE previews SET state = 'expired' WHERE source = $1 AND number = $2")
        .bind(&key.source)
        .bind(key.number)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE pull_requests SET reviewed = NULL WHERE source = $1 AND number = $2")
        .bind(&key.source)
        .bind(key.number)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}
