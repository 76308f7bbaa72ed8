//! Digests of the plan files `meshploy plan --out` wrote, which authenticate a file that
//! `apply FILE` is given: only a file saved against this database, byte for byte, applies.

use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::Error;
use crate::error::db;

/// Records that the plan file `file` (its bytes as written) was saved for `source`.
pub async fn record_saved_plan(pool: &PgPool, file: &[u8], source: &str) -> Result<(), Error> {
    sqlx::query("INSERT INTO saved_plans (sha256, source) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(Sha256::digest(file).as_slice())
        .bind(source)
        .execute(pool)
        .await
        .map_err(db("recording a saved plan"))?;
    Ok(())
}

/// Whether the plan file `file` (its bytes as read) is one saved against this database.
pub async fn saved_plan_recorded(pool: &PgPool, file: &[u8]) -> Result<bool, Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM saved_plans WHERE sha256 = $1)")
        .bind(Sha256::digest(file).as_slice())
        .fetch_one(pool)
        .await
        .map_err(db("checking a saved plan"))
}
