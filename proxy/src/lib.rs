//! `meshploy proxy`: the reverse proxy that live traffic enters through.
//!
//! The route table lives in memory ([`table`]), loaded from PostgreSQL and kept current by
//! LISTEN/NOTIFY with a periodic resync ([`db`]); requests never wait on the database except
//! for a guarded lookup of an unknown host. Each request goes through [`forward`] and out on
//! its worker thread's [`upstream`] connections. The proxy
//! is stateless: any number of replicas can run against one database, with a read-only role.
//! This crate must stay small: it does not depend on gix, kube or the reconciler.

mod admin;
mod body;
mod config;
mod db;
mod error;
mod forward;
mod idle;
mod metrics;
mod path;
mod shared;
mod table;
mod upstream;
mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::net::TcpListener;

pub use config::{Cidr, Config, UpstreamPolicy};
pub use error::ProxyError;

use db::Lookups;
use metrics::Metrics;
use shared::{RequestIds, Shared};

/// A proxy that has loaded its table and bound its listeners, ready to [`Proxy::serve`].
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    listener: TcpListener,
    admin: Option<TcpListener>,
}

impl Proxy {
    /// Connects, loads the route table (an error if the database cannot give one) and binds.
    pub async fn start(config: Config, database: PgConnectOptions) -> Result<Proxy, ProxyError> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(2))
            .connect_with(database)
            .await
            .map_err(ProxyError::Connect)?;
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ProxyError::Listen { addr, source })
        };
        let listener = bind(config.listen).await?;
        let admin = match config.admin {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        // A route back into the proxy (a loop) or to its admin listener is never allowed.
        let mut config = config;
        let own = [Some(&listener), admin.as_ref()];
        for port in own
            .into_iter()
            .flatten()
            .filter_map(|l| l.local_addr().ok())
        {
            config.upstreams.reserved_ports.push(port.port());
        }
        let shared = Arc::new(Shared {
            config,
            table: ArcSwap::default(),
            pool,
            control: tokio::runtime::Handle::current(),
            metrics: Metrics::default(),
            lookups: Lookups::default(),
            ids: RequestIds::default(),
        });
        db::reload(&shared).await.map_err(|e| match e {
            ProxyError::Load(sqlx::Error::Database(d)) if d.code().as_deref() == Some("42P01") => {
                ProxyError::NoSchema
            }
            other => other,
        })?;
        Ok(Proxy {
            shared,
            listener,
            admin,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    pub fn routes(&self) -> usize {
        self.shared.table.load().len()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets open requests finish for
    /// up to the drain timeout, and returns.
    ///
    /// The calling task is the control thread: it accepts connections and hands them round
    /// robin to the worker threads (one per core, each with a single-threaded runtime), and it
    /// runs the refresher and the admin listener.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ProxyError> {
        let shared = self.shared;
        let mut workers = Vec::new();
        let mut queues = Vec::new();
        for n in 0..shared.config.workers.get() {
            let (queue, incoming) = tokio::sync::mpsc::unbounded_channel();
            let shared = Arc::clone(&shared);
            let thread = std::thread::Builder::new()
                .name(format!("proxy-worker-{n}"))
                .spawn(move || worker::run(shared, incoming))
                .map_err(ProxyError::Worker)?;
            workers.push(thread);
            queues.push(queue);
        }
        let refresher = tokio::spawn(db::refresh(Arc::clone(&shared), shared.config.resync));
        let admin = self
            .admin
            .map(|listener| tokio::spawn(admin::serve(listener, Arc::clone(&shared))));
        let mut shutdown = std::pin::pin!(shutdown);
        for queue in queues.iter().cycle() {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = &mut shutdown => break,
            };
            match accepted.and_then(|(stream, peer)| Ok((stream.into_std()?, peer))) {
                Ok(connection) => {
                    // A worker only stops early if it could not start its runtime (logged).
                    if queue.send(connection).is_err() {
                        tracing::error!("a worker thread has stopped; connection closed");
                    }
                }
                Err(error) => {
                    // Out of file descriptors, usually: wait instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drop(self.listener);
        // Closing the queues tells the workers to drain.
        drop(queues);
        let drained = tokio::task::spawn_blocking(move || {
            for worker in workers {
                let _ = worker.join();
            }
        });
        let _ = drained.await;
        refresher.abort();
        if let Some(admin) = admin {
            admin.abort();
        }
        Ok(())
    }
}
