//! Sealed secrets and the sealed digest key. Crate only: secrets are written by an apply or
//! a reseal, both under the apply lock.

use sqlx::PgConnection;

use crate::Error;
use crate::error::db;

/// A stored secret's place and ciphertext.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SealedSecret {
    pub project: String,
    pub group_name: String,
    pub name: String,
    pub ciphertext: String,
}

/// Every stored secret with its ciphertext, for re-sealing.
pub(crate) async fn sealed_secrets(conn: &mut PgConnection) -> Result<Vec<SealedSecret>, Error> {
    sqlx::query_as("SELECT project, group_name, name, ciphertext FROM secrets ORDER BY 1, 2, 3")
        .fetch_all(conn)
        .await
        .map_err(db("reading the sealed secrets"))
}

/// Replaces the ciphertext of `secret` with `ciphertext`.
pub(crate) async fn update_secret_ciphertext(
    conn: &mut PgConnection,
    secret: &SealedSecret,
    ciphertext: &str,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE secrets SET ciphertext = $4 WHERE project = $1 AND group_name = $2 AND name = $3",
    )
    .bind(&secret.project)
    .bind(&secret.group_name)
    .bind(&secret.name)
    .bind(ciphertext)
    .execute(conn)
    .await
    .map_err(db("re-sealing a secret"))?;
    Ok(())
}

pub(crate) async fn digest_key(conn: &mut PgConnection) -> Result<Option<String>, Error> {
    sqlx::query_scalar("SELECT sealed FROM secret_digest_key")
        .fetch_optional(conn)
        .await
        .map_err(db("reading the secret digest key"))
}

/// Stores the sealed digest key unless one exists already (a concurrent first use may have
/// stored its own; the caller reads back whichever won).
pub(crate) async fn insert_digest_key(conn: &mut PgConnection, sealed: &str) -> Result<(), Error> {
    sqlx::query("INSERT INTO secret_digest_key (sealed) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(sealed)
        .execute(conn)
        .await
        .map_err(db("storing the secret digest key"))?;
    Ok(())
}

pub(crate) async fn update_digest_key(conn: &mut PgConnection, sealed: &str) -> Result<(), Error> {
    sqlx::query("UPDATE secret_digest_key SET sealed = $1")
        .bind(sealed)
        .execute(conn)
        .await
        .map_err(db("re-sealing the secret digest key"))?;
    Ok(())
}
