//! Webhook deliveries already seen, so a replayed delivery does nothing.

use sqlx::PgPool;

use crate::Error;
use crate::error::db;

/// Remembers a webhook delivery by its id and the SHA-256 of its signed body; false when
/// either was seen before (a replay: the id is not signed, so a replayed body may come with
/// a new one). Deliveries older than 30 days are forgotten, as GitHub redelivers only recent
/// ones.
pub async fn remember_delivery(pool: &PgPool, id: &str, body_sha256: &[u8]) -> Result<bool, Error> {
    sqlx::query("DELETE FROM webhook_deliveries WHERE received_at < now() - interval '30 days'")
        .execute(pool)
        .await
        .map_err(db("recording a webhook delivery"))?;
    let inserted = sqlx::query(
        "INSERT INTO webhook_deliveries (id, body_sha256) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(body_sha256)
    .execute(pool)
    .await
    .map_err(db("recording a webhook delivery"))?;
    Ok(inserted.rows_affected() == 1)
}
