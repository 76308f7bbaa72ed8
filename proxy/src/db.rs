//! The proxy's side of PostgreSQL: read-only queries for the route table, a refresher that
//! reloads it on NOTIFY and on a timer and reconnects with backoff, and the guarded lookup of
//! hosts missing from the table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{Stream, TryStreamExt};
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Row};
use tokio::sync::{Notify, OnceCell};

use crate::error::ProxyError;
use crate::shared::Shared;
use crate::table::{Builder, EndpointRow, RouteRow};

/// Channels whose notifications may change the table: applies, and endpoint writes.
const CHANNELS: [&str; 2] = ["meshploy_revisions", "meshploy_endpoints"];

/// Every route row, as a stream: a table of 100,000 routes is built without holding all its
/// rows at once.
fn routes(pool: &PgPool) -> impl Stream<Item = Result<RouteRow, sqlx::Error>> + '_ {
    sqlx::query(
        "SELECT project, name, host, path, service, service_port, upstream, strip_prefix FROM routes",
    )
    .try_map(|row: sqlx::postgres::PgRow| {
        Ok(RouteRow {
            project: row.try_get(0)?,
            name: row.try_get(1)?,
            host: row.try_get(2)?,
            path: row.try_get(3)?,
            service: row.try_get(4)?,
            service_port: row.try_get(5)?,
            upstream: row.try_get(6)?,
            strip_prefix: row.try_get(7)?,
        })
    })
    .fetch(pool)
}

async fn endpoints(pool: &PgPool) -> Result<Vec<EndpointRow>, sqlx::Error> {
    sqlx::query("SELECT project, service, port, address FROM endpoints")
        .try_map(|row: sqlx::postgres::PgRow| {
            Ok(EndpointRow {
                project: row.try_get(0)?,
                service: row.try_get(1)?,
                port: row.try_get(2)?,
                address: row.try_get(3)?,
            })
        })
        .fetch_all(pool)
        .await
}

/// Whether any route serves `host`, exactly or through the wildcard over its first label.
async fn host_routed(pool: &PgPool, host: &str) -> Result<bool, sqlx::Error> {
    let wildcard = host
        .split_once('.')
        .map(|(_, parent)| format!("*.{parent}"));
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM routes WHERE host = $1 OR host = $2)")
        .bind(host)
        .bind(wildcard)
        .fetch_one(pool)
        .await
}

/// Loads the table and swaps it in. It is built as the route rows stream in; this runs on
/// the control thread, which serves no requests, so a large table delays no one.
pub async fn reload(shared: &Arc<Shared>) -> Result<usize, ProxyError> {
    let started = Instant::now();
    let endpoints = endpoints(&shared.pool).await.map_err(ProxyError::Load)?;
    let mut builder = Builder::new(endpoints, &shared.table.load_full());
    let mut rows = std::pin::pin!(routes(&shared.pool));
    while let Some(row) = rows.try_next().await.map_err(ProxyError::Load)? {
        builder.add(row);
    }
    let (table, skipped) = builder.finish();
    for reason in skipped {
        tracing::warn!(%reason, "route skipped");
    }
    let count = table.len();
    shared.table.store(Arc::new(table));
    shared.lookups.forget_misses();
    shared.metrics.loaded(count);
    tracing::debug!(
        routes = count,
        ms = started.elapsed().as_millis() as u64,
        "route table loaded"
    );
    Ok(count)
}

/// Keeps the table current until the process ends: LISTEN for changes, reload on each (and
/// once after every reconnect, for what was missed), a full reload every `resync`, and on a
/// lost connection a retry with backoff while requests go on being served from memory.
pub async fn refresh(shared: Arc<Shared>, resync: Duration) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let error = follow(&shared, resync, &mut backoff).await;
        shared.metrics.load_failed();
        tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "route table refresh failed; serving the last table");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn follow(shared: &Arc<Shared>, resync: Duration, backoff: &mut Duration) -> ProxyError {
    let mut listener = match PgListener::connect_with(&shared.pool).await {
        Ok(listener) => listener,
        Err(e) => return ProxyError::Load(e),
    };
    if let Err(e) = listener.listen_all(CHANNELS).await {
        return ProxyError::Load(e);
    }
    // A reconnect may have missed notifications: catch up first.
    if let Err(e) = reload(shared).await {
        return e;
    }
    *backoff = Duration::from_millis(250);
    loop {
        let wanted = tokio::select! {
            notification = listener.recv() => match notification {
                Ok(n) => affects_routes(n.channel(), n.payload()),
                Err(e) => return ProxyError::Load(e),
            },
            () = tokio::time::sleep(resync) => true,
            () = shared.lookups.reload_wanted.notified() => true,
        };
        if wanted && let Err(e) = reload(shared).await {
            return e;
        }
    }
}

/// Whether a notification can change the table: endpoint writes always; an apply only when
/// it changed routes (its payload lists the kinds it touched).
fn affects_routes(channel: &str, payload: &str) -> bool {
    if channel != CHANNELS[0] {
        return true;
    }
    match serde_json::from_str::<serde_json::Value>(payload) {
        Ok(value) => value["kinds"]
            .as_array()
            .is_none_or(|kinds| kinds.iter().any(|k| k == "Route")),
        Err(_) => true,
    }
}

/// How hosts missing from the table are looked up: at most one query per host at a time
/// (single-flight), misses remembered until the next table load (negative cache), and no
/// more than a burst plus a steady rate of queries overall, so a flood of random Host
/// headers costs the database a bounded number of queries however many requests it sends.
#[derive(Debug)]
pub struct Lookups {
    misses: Mutex<HashMap<Box<str>, Instant>>,
    inflight: Mutex<HashMap<Box<str>, Arc<OnceCell<bool>>>>,
    bucket: Mutex<Bucket>,
    reload_wanted: Notify,
    loaded: Notify,
}

/// Misses remembered at most; past it, new misses are not remembered (the rate limit still
/// bounds the queries).
const MAX_MISSES: usize = 10_000;
/// How long a miss is remembered without a table load.
const MISS_TTL: Duration = Duration::from_secs(10);
/// Queries allowed at once, and per second after that.
const BURST: f64 = 20.0;
const PER_SECOND: f64 = 10.0;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Default for Lookups {
    fn default() -> Lookups {
        Lookups {
            misses: Mutex::default(),
            inflight: Mutex::default(),
            bucket: Mutex::new(Bucket {
                tokens: BURST,
                at: Instant::now(),
            }),
            reload_wanted: Notify::new(),
            loaded: Notify::new(),
        }
    }
}

impl Lookups {
    fn forget_misses(&self) {
        lock(&self.misses).clear();
        self.loaded.notify_waiters();
    }

    fn take_token(&self) -> bool {
        let mut bucket = lock(&self.bucket);
        let now = Instant::now();
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * PER_SECOND).min(BURST);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Asks the database whether `host` (not in the table) is routed after all, which happens
/// while the table is being refreshed. When it is, waits for the reload (up to a second) and
/// returns true so the caller looks again.
pub async fn lookup(shared: &Shared, host: &str) -> bool {
    let lookups = &shared.lookups;
    if let Some(until) = lock(&lookups.misses).get(host)
        && *until > Instant::now()
    {
        return false;
    }
    let cell = {
        let mut inflight = lock(&lookups.inflight);
        match inflight.get(host) {
            Some(cell) => Arc::clone(cell),
            None if lookups.take_token() => {
                let cell = Arc::new(OnceCell::new());
                inflight.insert(host.into(), Arc::clone(&cell));
                cell
            }
            None => return false,
        }
    };
    let routed = *cell
        .get_or_init(|| async {
            shared.metrics.lookup();
            // The query runs on the control runtime, which owns the pool's connections.
            let (pool, asked) = (shared.pool.clone(), host.to_owned());
            let query = shared
                .control
                .spawn(async move { host_routed(&pool, &asked).await });
            let routed = match query.await {
                Ok(Ok(routed)) => routed,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "host lookup failed");
                    false
                }
                Err(error) => {
                    tracing::debug!(%error, "host lookup did not finish");
                    false
                }
            };
            if !routed {
                let mut misses = lock(&lookups.misses);
                if misses.len() >= MAX_MISSES {
                    let now = Instant::now();
                    misses.retain(|_, until| *until > now);
                }
                if misses.len() < MAX_MISSES {
                    misses.insert(host.into(), Instant::now() + MISS_TTL);
                }
            }
            // Only now, with the miss remembered, may the next request start a new query.
            lock(&lookups.inflight).remove(host);
            routed
        })
        .await;
    if routed {
        let loaded = lookups.loaded.notified();
        lookups.reload_wanted.notify_one();
        let _ = tokio::time::timeout(Duration::from_secs(1), loaded).await;
    }
    routed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_applies_that_touch_routes_reload_the_table() {
        let revisions = CHANNELS[0];
        assert!(affects_routes(
            revisions,
            r#"{"revision":3,"kinds":["Route","Service"]}"#
        ));
        assert!(!affects_routes(
            revisions,
            r#"{"revision":3,"kinds":["Project","Service"]}"#
        ));
        assert!(affects_routes(revisions, r#"{"revision":3}"#));
        assert!(affects_routes(revisions, "not json"));
        assert!(affects_routes(CHANNELS[1], ""));
    }

    #[test]
    fn the_query_budget_is_a_burst_then_a_steady_rate() {
        let lookups = Lookups::default();
        let granted = (0..1_000).filter(|_| lookups.take_token()).count();
        assert_eq!(granted, BURST as usize);
    }
}
