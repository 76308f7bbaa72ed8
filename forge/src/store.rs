//! The `pull_requests` rows: what webhooks announced, and what the last review published. A
//! webhook's word is a claim: the reviewer reads the forge and corrects the row
//! ([`correct`], [`reopen`], [`close`]) before acting on it.

use sqlx::PgPool;

/// The channel that wakes the leader to review pull requests.
pub const CHANNEL: &str = "meshploy_pulls";

/// A pull request as a webhook announced it (or the forge corrected it).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Pull {
    pub source: String,
    pub number: i64,
    pub repo: String,
    pub head: String,
    pub fork: bool,
}

/// Records an opened or updated pull request (the newest head wins) and wakes the leader.
/// `again` has its head reviewed again even if it was (a label changed, or it was reopened).
pub async fn announce(pool: &PgPool, pull: &Pull, again: bool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO pull_requests (source, number, repo, head, fork, state) \
         VALUES ($1, $2, $3, $4, $5, 'open') \
         ON CONFLICT (source, number) DO UPDATE SET repo = $3, head = $4, fork = $5, \
           state = 'open', updated_at = now(), \
           reviewed = CASE WHEN $6 THEN NULL ELSE pull_requests.reviewed END",
    )
    .bind(&pull.source)
    .bind(pull.number)
    .bind(&pull.repo)
    .bind(&pull.head)
    .bind(pull.fork)
    .bind(again)
    .execute(&mut *tx)
    .await?;
    wake(&mut tx).await?;
    tx.commit().await
}

/// Wakes the leader's reviewer when the transaction commits.
async fn wake(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Records that a pull request was closed or merged, and wakes the leader (which destroys
/// its preview).
pub async fn close(pool: &PgPool, source: &str, number: i64) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE pull_requests SET state = 'closed', updated_at = now() \
         WHERE source = $1 AND number = $2",
    )
    .bind(source)
    .bind(number)
    .execute(&mut *tx)
    .await?;
    wake(&mut tx).await?;
    tx.commit().await
}

/// Sets `pull`'s row to the head and fork the forge gives, unless another announcement
/// changed it meanwhile. Returns whether that head still needs a review (`None`: the row moved
/// on, and the next pass reviews what it holds).
pub async fn correct(
    pool: &PgPool,
    pull: &Pull,
    head: &str,
    fork: bool,
) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE pull_requests SET head = $4, fork = $5 \
         WHERE source = $1 AND number = $2 AND head = $3 AND state = 'open' \
         RETURNING reviewed IS DISTINCT FROM head",
    )
    .bind(&pull.source)
    .bind(pull.number)
    .bind(&pull.head)
    .bind(head)
    .bind(fork)
    .fetch_optional(pool)
    .await
}

/// Marks open again a pull request that a close event said was closed, when the forge says
/// it is open: the event is ignored.
pub async fn reopen(pool: &PgPool, source: &str, number: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE pull_requests SET state = 'open' WHERE source = $1 AND number = $2 AND state = 'closed'",
    )
    .bind(source)
    .bind(number)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Open pull requests whose newest head has not been reviewed, oldest announcement first.
pub async fn pending(pool: &PgPool) -> Result<Vec<Pull>, sqlx::Error> {
    sqlx::query_as(
        "SELECT source, number, repo, head, fork FROM pull_requests \
         WHERE state = 'open' AND reviewed IS DISTINCT FROM head ORDER BY updated_at",
    )
    .fetch_all(pool)
    .await
}

/// Records a published review of `head`, unless a newer head arrived meanwhile (which the
/// next pass reviews).
pub async fn reviewed(
    pool: &PgPool,
    pull: &Pull,
    outcome: &str,
    summary: &str,
    body: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE pull_requests SET reviewed = $3, outcome = $4, summary = $5, body = $6, \
           error = NULL \
         WHERE source = $1 AND number = $2 AND head = $3",
    )
    .bind(&pull.source)
    .bind(pull.number)
    .bind(&pull.head)
    .bind(outcome)
    .bind(summary)
    .bind(body)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Records why a review could not be published; the next pass tries again.
pub async fn failed(pool: &PgPool, pull: &Pull, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE pull_requests SET error = $3 WHERE source = $1 AND number = $2")
        .bind(&pull.source)
        .bind(pull.number)
        .bind(error)
        .execute(pool)
        .await
        .map(|_| ())
}

/// A pull request as the console shows it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Shown {
    pub repo: String,
    pub head: String,
    pub fork: bool,
    pub state: String,
    pub reviewed: Option<String>,
    pub outcome: Option<String>,
    pub summary: Option<String>,
    pub body: Option<String>,
    pub error: Option<String>,
}

pub async fn shown(pool: &PgPool, source: &str, number: i64) -> Result<Option<Shown>, sqlx::Error> {
    sqlx::query_as(
        "SELECT repo, head, fork, state, reviewed, outcome, summary, body, error \
         FROM pull_requests WHERE source = $1 AND number = $2",
    )
    .bind(source)
    .bind(number)
    .fetch_optional(pool)
    .await
}

/// A pull request in a source's list.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Listed {
    pub number: i64,
    pub head: String,
    pub state: String,
    pub outcome: Option<String>,
    pub summary: Option<String>,
}

/// Up to `limit` pull requests of `source`, most recently announced first.
pub async fn listed(pool: &PgPool, source: &str, limit: i64) -> Result<Vec<Listed>, sqlx::Error> {
    sqlx::query_as(
        "SELECT number, head, state, outcome, summary FROM pull_requests \
         WHERE source = $1 ORDER BY updated_at DESC, number DESC LIMIT $2",
    )
    .bind(source)
    .bind(limit)
    .fetch_all(pool)
    .await
}
