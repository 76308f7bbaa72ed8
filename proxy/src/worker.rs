//! A worker thread: a current-thread runtime serving the connections the control thread hands
//! it, each with hyper-util's auto (HTTP/1.1 + h2c) builder, an idle watchdog, and a graceful
//! drain when its queue closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpStream;

use crate::forward::{self, Forwarder, Peer};
use crate::idle::{Tracked, idle};
use crate::shared::Shared;
use crate::upstream::Upstreams;

/// A worker thread: serves the connections it is handed until its queue closes, then drains.
pub fn run(
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
        let worker = Arc::new(Forwarder {
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
            let peer = Arc::new(Peer::new(peer, &shared.config.trusted_proxies));
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
