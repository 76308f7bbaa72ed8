//! `meshploy proxy`: the reverse proxy that live traffic enters through.
//!
//! The route table lives in memory ([`table`]), loaded from PostgreSQL and kept current by
//! LISTEN/NOTIFY with a periodic resync ([`db`]); requests never wait on the database except
//! for a guarded lookup of an unknown host. Each request goes through [`forward`]. The proxy
//! is stateless: any number of replicas can run against one database, with a read-only role.
//! This crate must stay small: it does not depend on gix, kube or the reconciler.

mod db;
mod forward;
mod metrics;
mod table;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use db::Lookups;
use forward::{Body, RequestIds};
use metrics::Metrics;
use table::Table;

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
    #[error("building the route table failed: {0}")]
    Build(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What every connection shares.
#[derive(Debug)]
struct Shared {
    config: Config,
    table: ArcSwap<Table>,
    pool: PgPool,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
    metrics: Metrics,
    lookups: Lookups,
    ids: RequestIds,
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
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(connector);
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
            client,
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
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let shared = self.shared;
        let refresher = tokio::spawn(db::refresh(Arc::clone(&shared), shared.config.resync));
        let admin = self
            .admin
            .map(|listener| tokio::spawn(admin(listener, Arc::clone(&shared))));
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
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors, usually: wait instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let activity = Arc::new(AtomicU64::new(shared.metrics.now_ms()));
            let io = TokioIo::new(Tracked {
                stream,
                activity: Arc::clone(&activity),
                shared: Arc::clone(&shared),
            });
            let service_shared = Arc::clone(&shared);
            let service = hyper::service::service_fn(move |request| {
                forward::handle(Arc::clone(&service_shared), peer, request)
            });
            let builder = builder.clone();
            let watcher = graceful.watcher();
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let connection = watcher.watch(builder.serve_connection_with_upgrades(io, service));
                tokio::select! {
                    result = connection => if let Err(error) = result {
                        tracing::debug!(%error, %peer, "connection ended with an error");
                    },
                    () = idle(&shared, &activity) => tracing::debug!(%peer, "idle connection closed"),
                }
            });
        }
        drop(self.listener);
        let open = graceful.count();
        tracing::info!(open, "draining");
        if tokio::time::timeout(shared.config.drain_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout reached; closing the remaining connections");
        }
        refresher.abort();
        if let Some(admin) = admin {
            admin.abort();
        }
    }
}

/// Completes once a connection has been idle (no bytes either way) for the idle timeout.
async fn idle(shared: &Shared, activity: &AtomicU64) {
    let timeout = shared.config.idle_timeout.as_millis() as u64;
    loop {
        let quiet = shared
            .metrics
            .now_ms()
            .saturating_sub(activity.load(Ordering::Relaxed));
        if quiet >= timeout {
            return;
        }
        tokio::time::sleep(Duration::from_millis(timeout - quiet)).await;
    }
}

/// A client connection that records when bytes last moved, for the idle timeout.
struct Tracked {
    stream: TcpStream,
    activity: Arc<AtomicU64>,
    shared: Arc<Shared>,
}

impl Tracked {
    fn touch(&self) {
        self.activity
            .store(self.shared.metrics.now_ms(), Ordering::Relaxed);
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
