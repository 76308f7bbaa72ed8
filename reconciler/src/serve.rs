//! The long-running reconciler behind `meshploy serve`.
//!
//! Any number of replicas may run against one database; exactly one leads. Leadership is a
//! session-level advisory lock held on a dedicated connection: when the leader dies, its
//! connection closes, PostgreSQL releases the lock, and a standby that retries every second
//! takes over. The leader checks its lock connection every second and stops acting the
//! moment it is lost. Even two leaders for a moment could not corrupt anything: every apply
//! also takes the apply lock and re-plans under it.
//!
//! The leader syncs every source on taking over (level-triggered: the branch is compared
//! with what was applied, not with the events seen), then on every trigger: a sync request
//! (`meshploy sync`, a verified webhook, the sync API) arriving as a NOTIFY on
//! [`store::SYNC_CHANNEL`], a change under a local repository's `refs`, and the poll
//! interval. Triggers for one source coalesce while it syncs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::sync::{mpsc, watch};

use crate::Error;

use crate::error::db;
use crate::names::Trigger;
use crate::store;
use crate::sync::{self, Settings, Source};

/// The advisory lock the leader holds ("lead" in ASCII); distinct from the apply lock.
const LEADER_LOCK: i64 = 0x6c65_6164;

/// How often a standby tries to take over, and the leader checks its lock connection.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// What the daemon runs with.
#[derive(Debug)]
pub struct Daemon {
    pub pool: PgPool,
    /// For the dedicated connection that holds the leader lock.
    pub connect: PgConnectOptions,
    pub sources: Vec<(Source, Duration)>,
    pub settings: Settings,
    /// Set while this process leads; shown by the health endpoints.
    pub leading: Arc<AtomicBool>,
}

impl Daemon {
    /// Campaigns for leadership and reconciles while leading, until `shutdown` turns true.
    /// A sync in progress at shutdown finishes first (it is one transaction, so abandoning
    /// it would be safe too, but finishing is cheaper than redoing).
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), Error> {
        loop {
            let mut lock = tokio::select! {
                conn = self.campaign() => conn,
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            };
            self.leading.store(true, Ordering::SeqCst);
            tracing::info!("leading: this process reconciles");
            let result = tokio::select! {
                result = self.lead(shutdown.clone()) => result,
                () = hold(&mut lock) => {
                    tracing::warn!("lost the leader lock's connection; standing by");
                    Ok(())
                }
            };
            self.leading.store(false, Ordering::SeqCst);
            drop(lock);
            if let Err(e) = result {
                tracing::error!(error = %e, "reconciling stopped; campaigning again");
                tokio::time::sleep(HEARTBEAT).await;
            }
            if *shutdown.borrow() {
                return Ok(());
            }
        }
    }

    /// Returns a connection holding the leader lock, retrying every heartbeat.
    async fn campaign(&self) -> PgConnection {
        let mut announced = false;
        loop {
            match self.try_lock().await {
                Ok(Some(conn)) => return conn,
                Ok(None) if !announced => {
                    tracing::info!("another process leads; standing by");
                    announced = true;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot reach PostgreSQL to campaign"),
            }
            tokio::time::sleep(HEARTBEAT).await;
        }
    }

    async fn try_lock(&self) -> Result<Option<PgConnection>, Error> {
        let mut conn = self
            .connect
            .connect()
            .await
            .map_err(db("connecting to campaign for leadership"))?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut conn)
            .await
            .map_err(db("campaigning for leadership"))?;
        Ok(locked.then_some(conn))
    }

    /// Reconciles until shutdown or an error of the database.
    async fn lead(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), Error> {
        // A source still `applying` was being synced by a leader that died: its transaction
        // rolled back, so nothing of it was applied. Say so now rather than at the next sync.
        let interrupted = store::interrupt_applying(
            &self.pool,
            "the reconciler applying this commit stopped before it finished (killed, or cut off from PostgreSQL); nothing of that attempt was applied, and the new leader syncs again",
        )
        .await?;
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                "recorded syncs interrupted by the previous leader"
            );
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, Trigger)>();
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(db("listening for sync requests"))?;
        listener
            .listen(store::SYNC_CHANNEL)
            .await
            .map_err(db("listening for sync requests"))?;
        let _watchers = self.watch(&tx).await;
        let mut pollers = tokio::task::JoinSet::new();
        for (source, interval) in &self.sources {
            let (tx, name, interval) = (tx.clone(), source.name.clone(), *interval);
            pollers.spawn(async move {
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                loop {
                    ticks.tick().await;
                    if tx.send((name.clone(), Trigger::Poll)).is_err() {
                        return;
                    }
                }
            });
        }
        let mut pending: BTreeMap<String, Trigger> = self
            .sources
            .iter()
            .map(|(s, _)| (s.name.clone(), Trigger::Start))
            .collect();
        // Requests made while no process led.
        self.requested(&mut pending).await?;
        loop {
            while let Some((name, trigger)) = pending.pop_first() {
                let Some((source, _)) = self.sources.iter().find(|(s, _)| s.name == name) else {
                    continue;
                };
                sync::sync(&self.pool, source, &self.settings, trigger).await?;
                if *shutdown.borrow() {
                    return Ok(());
                }
                while let Ok((name, trigger)) = rx.try_recv() {
                    merge(&mut pending, name, trigger);
                }
                if listener.next_buffered().is_some() {
                    while listener.next_buffered().is_some() {}
                    self.requested(&mut pending).await?;
                }
            }
            tokio::select! {
                Some((name, trigger)) = rx.recv() => merge(&mut pending, name, trigger),
                notification = listener.recv() => {
                    notification.map_err(db("listening for sync requests"))?;
                    self.requested(&mut pending).await?;
                }
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            }
        }
    }

    /// Queues the syncs requested in `sync_requests` for sources of ours. A NOTIFY only wakes
    /// this up: what is synced comes from rows that only Meshploy's role may insert.
    async fn requested(&self, pending: &mut BTreeMap<String, Trigger>) -> Result<(), Error> {
        for (source, trigger) in store::take_sync_requests(&self.pool).await? {
            if self.sources.iter().any(|(s, _)| s.name == source) {
                merge(pending, source, trigger);
            } else {
                tracing::warn!(%source, "ignoring a sync request for an unknown source");
            }
        }
        Ok(())
    }

    /// Watches the refs of every local repository; each change queues a sync of its source.
    async fn watch(
        &self,
        tx: &mpsc::UnboundedSender<(String, Trigger)>,
    ) -> Vec<notify::RecommendedWatcher> {
        use notify::Watcher;
        let mut watchers = Vec::new();
        for (source, _) in &self.sources {
            let git::Location::Local(path) = git::Location::parse(&source.url) else {
                continue;
            };
            let cache = self.settings.cache.clone();
            let url = source.url.clone();
            let git_dir = tokio::task::spawn_blocking(move || {
                git::open(&url, &cache).map(|repo| repo.git_dir().to_path_buf())
            })
            .await;
            let git_dir = match git_dir {
                Ok(Ok(dir)) => dir,
                _ => {
                    tracing::warn!(path = %path.display(), "cannot watch the repository; polling only");
                    continue;
                }
            };
            let (tx, name) = (tx.clone(), source.name.clone());
            let watcher =
                notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                    if event.is_ok_and(|e| !e.kind.is_access()) {
                        let _ = tx.send((name.clone(), Trigger::Watch));
                    }
                });
            let watched = watcher.and_then(|mut w| {
                w.watch(&git_dir.join("refs"), notify::RecursiveMode::Recursive)?;
                w.watch(&git_dir, notify::RecursiveMode::NonRecursive)?;
                Ok(w)
            });
            match watched {
                Ok(w) => watchers.push(w),
                Err(e) => {
                    tracing::warn!(error = %e, path = %git_dir.display(), "cannot watch the repository; polling only")
                }
            }
        }
        watchers
    }
}

/// Queues `trigger` for `name`; a request (which forces a full attempt) wins over others.
fn merge(pending: &mut BTreeMap<String, Trigger>, name: String, trigger: Trigger) {
    let slot = pending.entry(name).or_insert(trigger);
    if trigger == Trigger::Request {
        *slot = trigger;
    }
}

/// Returns when the connection holding the leader lock stops answering.
async fn hold(conn: &mut PgConnection) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let alive = tokio::time::timeout(HEARTBEAT * 3, conn.ping()).await;
        if !matches!(alive, Ok(Ok(()))) {
            return;
        }
    }
}
