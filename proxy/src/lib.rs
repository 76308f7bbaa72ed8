//! `meshploy proxy`: the reverse proxy that live traffic enters through.
//!
//! The route table lives in memory ([`table`]), loaded from PostgreSQL and kept current by
//! LISTEN/NOTIFY with a periodic resync ([`db`]); requests never wait on the database except
//! for a guarded lookup of an unknown host. Each request goes through [`forward`] and out on
//! its worker thread's [`upstream`] connections. The proxy
//! is stateless: any number of replicas can run against one database, with a read-only role.
//! This crate must stay small: it does not depend on gix, kube or the reconciler.

mod db;
mod forward;
mod metrics;
mod table;
mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use db::Lookups;
use forward::{Peer, RequestIds};
use metrics::Metrics;
use table::Table;
use upstream::Upstreams;

/// How the proxy listens and how patient it is.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where `/metrics` and `/healthz` are served, apart from traffic.
    pub admin: Option<SocketAddr>,
    /// Full reload of the table even without notifications.
    pub resync: Duration,
    pub connect_timeout: Duration,
    /// From sending a request upstream to its response headers.
    pub upstream_timeout: Duration,
    /// For a client to send a complete request head (also bounds a keep-alive wait).
    pub header_timeout: Duration,
    /// A connection with no bytes read or written for this long is closed.
    pub idle_timeout: Duration,
    /// On shutdown, how long open requests may take to finish.
    pub drain_timeout: Duration,
    /// How long an endpoint that refused a connection or timed out is skipped.
    pub eject_for: Duration,
    /// Largest request head (request line and headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    pub access_log: bool,
    /// Threads serving connections; one per core is usual.
    pub workers: NonZeroUsize,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] sqlx::Error),
    #[error(
        "the database has no Meshploy tables (routes, endpoints): run `meshploy migrate` against it first"
    )]
    NoSchema,
    #[error("cannot load the route table: {0}")]
    Load(#[source] sqlx::Error),
    #[error("cannot start a worker thread: {0}")]
    Worker(#[source] std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What every worker and connection shares.
#[derive(Debug)]
struct Shared {
    config: Config,
    table: ArcSwap<Table>,
    pool: PgPool,
    /// The runtime of the control thread, where every database query runs: the connections
    /// of the pool belong to its IO driver, which outlives the workers.
    control: tokio::runtime::Handle,
    metrics: Metrics,
    lookups: Lookups,
    ids: RequestIds,
}

/// One worker thread's state. Each worker has its own upstream pool, so a client connection,
/// the requests on it and the upstream connections they use are all driven by one thread:
/// no request ever waits for a wakeup from another core.
#[derive(Debug)]
struct Worker {
    shared: Arc<Shared>,
    upstreams: Upstreams,
}

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
                .spawn(move || work(shared, incoming))
                .map_err(ProxyError::Worker)?;
            workers.push(thread);
            queues.push(queue);
        }
        let refresher = tokio::spawn(db::refresh(Arc::clone(&shared), shared.config.resync));
        let admin = self
            .admin
            .map(|listener| tokio::spawn(admin(listener, Arc::clone(&shared))));
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

/// A worker thread: serves the connections it is handed until its queue closes, then drains.
fn work(
    shared: Arc<Shared>,
    mut incoming: tokio::sync::mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start a worker runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let worker = Arc::new(Worker {
            upstreams: Upstreams::new(&shared.config),
            shared: Arc::clone(&shared),
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(shared.config.header_timeout)
            .max_buf_size(shared.config.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(
                u32::try_from(shared.config.max_header_bytes).unwrap_or(u32::MAX),
            );
        let graceful = GracefulShutdown::new();
        while let Some((stream, peer)) = incoming.recv().await {
            let Ok(stream) = TcpStream::from_std(stream) else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let activity = Arc::new(AtomicU64::new(0));
            let io = TokioIo::new(Tracked {
                stream,
                activity: Arc::clone(&activity),
            });
            let service_worker = Arc::clone(&worker);
            let peer = Arc::new(Peer::new(peer));
            let service = hyper::service::service_fn(move |request| {
                forward::handle(Arc::clone(&service_worker), Arc::clone(&peer), request)
            });
            let builder = builder.clone();
            let watcher = graceful.watcher();
            let connection = tokio::spawn(async move {
                let served = builder.serve_connection_with_upgrades(io, service);
                if let Err(error) = watcher.watch(served).await {
                    tracing::debug!(%error, "connection ended with an error");
                }
            });
            // The idle watchdog is a task of its own, so waking the connection for its
            // requests never polls the watchdog's timer too.
            let idle_timeout = shared.config.idle_timeout;
            let connection = connection.abort_handle();
            tokio::spawn(async move {
                if idle(idle_timeout, &activity, &connection).await {
                    tracing::debug!("idle connection closed");
                    connection.abort();
                }
            });
        }
        let open = graceful.count();
        tracing::debug!(open, "draining");
        if tokio::time::timeout(shared.config.drain_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                open,
                "drain timeout reached; closing the remaining connections"
            );
        }
    });
}

/// Waits until a connection has been idle (no bytes either way) for the idle timeout, give
/// or take a quarter, and returns true; returns false as soon as it sees the connection has
/// ended. It looks at the connection's activity count four times per timeout, which costs
/// the request path one counter increment instead of a clock reading per read.
async fn idle(
    timeout: Duration,
    activity: &AtomicU64,
    connection: &tokio::task::AbortHandle,
) -> bool {
    const LOOKS: u32 = 4;
    let mut seen = activity.load(Ordering::Relaxed);
    let mut quiet = 0;
    while quiet < LOOKS {
        tokio::time::sleep(timeout / LOOKS).await;
        if connection.is_finished() {
            return false;
        }
        let now = activity.load(Ordering::Relaxed);
        quiet = if now == seen { quiet + 1 } else { 0 };
        seen = now;
    }
    true
}

/// A client connection that counts its reads and writes, for the idle timeout.
struct Tracked {
    stream: TcpStream,
    activity: Arc<AtomicU64>,
}

impl Tracked {
    fn touch(&self) {
        // Only this connection's task writes the count, so a plain load and store will do.
        let count = self.activity.load(Ordering::Relaxed);
        self.activity
            .store(count.wrapping_add(1), Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        poll
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The admin listener: `/metrics` (Prometheus text) and `/healthz`.
async fn admin(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = Arc::clone(&shared);
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let shared = Arc::clone(&shared);
            async move {
                let response = match request.uri().path() {
                    "/metrics" => {
                        let mut response = forward::plain(StatusCode::OK, shared.metrics.render());
                        response.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static(
                                "text/plain; version=0.0.4; charset=utf-8",
                            ),
                        );
                        response
                    }
                    "/healthz" => forward::plain(StatusCode::OK, "ok\n"),
                    _ => forward::plain(StatusCode::NOT_FOUND, "not found\n"),
                };
                Ok::<_, Infallible>(response)
            }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
