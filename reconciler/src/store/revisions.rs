//! Revisions: one row per apply, with its plan, and the NOTIFY that tells listeners.

use sqlx::{PgConnection, PgPool};

use crate::Error;
use crate::error::db;

/// The channel a committed apply notifies, with the revision as JSON payload.
pub const CHANNEL: &str = "meshploy_revisions";

/// What a revision records about itself.
#[derive(Clone, Debug)]
pub struct RevisionMeta {
    pub actor: String,
    pub source: String,
    pub commit: Option<String>,
    /// The directory the manifests were read from, if they were read from one.
    pub directory: Option<String>,
}

pub(crate) async fn insert_revision(
    conn: &mut PgConnection,
    meta: &RevisionMeta,
    (added, changed, destroyed): (i32, i32, i32),
    plan: &str,
) -> Result<i64, Error> {
    sqlx::query_scalar(
        "INSERT INTO revisions (actor, source, commit_id, added, changed, destroyed, plan, directory) \
         VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8) RETURNING id",
    )
    .bind(&meta.actor)
    .bind(&meta.source)
    .bind(&meta.commit)
    .bind(added)
    .bind(changed)
    .bind(destroyed)
    .bind(plan)
    .bind(&meta.directory)
    .fetch_one(conn)
    .await
    .map_err(db("recording the revision"))
}

pub(crate) async fn notify(conn: &mut PgConnection, payload: &str) -> Result<(), Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(conn)
        .await
        .map_err(db("notifying listeners of the revision"))?;
    Ok(())
}

/// One row of `meshploy history`.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct Revision {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub applied_at: time::OffsetDateTime,
    pub actor: String,
    pub source: String,
    pub commit_id: Option<String>,
    pub added: i32,
    pub changed: i32,
    pub destroyed: i32,
}

pub async fn revisions(pool: &PgPool, limit: i64) -> Result<Vec<Revision>, Error> {
    sqlx::query_as(
        "SELECT id, applied_at, actor, source, commit_id, added, changed, destroyed \
         FROM revisions ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(db("listing revisions"))
}

/// A revision and its plan (as stored JSON text).
#[derive(Debug, sqlx::FromRow)]
pub struct RevisionPlan {
    #[sqlx(flatten)]
    pub revision: Revision,
    pub plan: String,
}

pub async fn revision(pool: &PgPool, id: i64) -> Result<Option<RevisionPlan>, Error> {
    sqlx::query_as(
        "SELECT id, applied_at, actor, source, commit_id, added, changed, destroyed, \
                plan::text AS plan \
         FROM revisions WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(db("reading a revision"))
}
