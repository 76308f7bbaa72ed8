//! The apply lock: one apply at a time across every process sharing the database.

use sqlx::{PgConnection, PgPool};

use crate::Error;
use crate::error::db;

/// The advisory lock every apply holds ("mesh" in ASCII). Below 2^31, so `pg_locks` shows it
/// whole in `objid`.
const APPLY_LOCK: i64 = 0x6d65_7368;

/// Tries to take the apply lock for the current transaction, waiting up to `timeout_ms`.
/// Returns false when the wait timed out; the transaction is then aborted.
pub(crate) async fn try_apply_lock(
    conn: &mut PgConnection,
    timeout_ms: u64,
) -> Result<bool, Error> {
    // `SET` takes no parameters; `set_config` does.
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(format!("{timeout_ms}ms"))
        .execute(&mut *conn)
        .await
        .map_err(db("taking the apply lock"))?;
    match sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(APPLY_LOCK)
        .execute(&mut *conn)
        .await
    {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => return Ok(false),
        Err(e) => return Err(db("taking the apply lock")(e)),
    }
    sqlx::query("SELECT set_config('lock_timeout', '0', true)")
        .execute(&mut *conn)
        .await
        .map_err(db("taking the apply lock"))?;
    Ok(true)
}

/// Who holds the apply lock: the holder's application name, role, and how long it has held
/// it, as one line.
pub(crate) async fn apply_lock_holder(pool: &PgPool) -> Result<Option<String>, Error> {
    let row: Option<(String, String, f64)> = sqlx::query_as(
        "SELECT a.application_name, coalesce(a.usename::text, ''), \
                extract(epoch FROM now() - coalesce(a.xact_start, a.backend_start))::float8 \
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         JOIN pg_database d ON d.oid = l.database AND d.datname = current_database() \
         WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 \
           AND l.objid = $1::bigint::oid AND l.objsubid = 1",
    )
    .bind(APPLY_LOCK)
    .fetch_optional(pool)
    .await
    .map_err(db("finding who holds the apply lock"))?;
    Ok(row.map(|(application, role, seconds)| {
        let who = if application.is_empty() {
            format!("a session of role `{role}`")
        } else {
            format!("`{application}`")
        };
        format!("{who}, for {seconds:.1} s")
    }))
}
