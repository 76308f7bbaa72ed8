//! Webhook deliveries already seen, so a replayed delivery does nothing.

use sqlx::PgPool;

use crate::Error;
use crate::error::db;

/// Remembers a webhook delivery id; false when it was seen before (a replay). Deliveries
/// older than 30 days are forgotten, as GitHub redelivers only recent ones.
pub async fn remember_delivery(pool: &PgPool, id: &str) -> Result<bool, Error> {
    sqlx::query("DELETE FROM webhook_deliveries WHERE received_at < now() - interval '30 days'")
        .execute(pool)
        .await
        .map_err(db("recording a webhook delivery"))?;
    let inserted =
        sqlx::query("INSERT INTO webhook_deliveries (id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(id)
            .execute(pool)
            .await
            .map_err(db("recording a webhook delivery"))?;
    Ok(inserted.rows_affected() == 1)
}
