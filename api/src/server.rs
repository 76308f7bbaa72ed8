//! The HTTP server every listener of the project uses (the API now; the console and metrics
//! next), with the limits that keep idle or slow clients from exhausting the process:
//!
//! - a request head must arrive within the header timeout, which also bounds how long a
//!   kept-alive connection may wait idle for its next request (hyper starts the timer as soon
//!   as it waits for a head);
//! - a request, body included, must be answered within the request timeout (408 otherwise);
//! - at most `max_connections` connections are open at once, and at most
//!   `max_connections_per_ip` from one client address; past either, a new connection is
//!   closed at once, so file descriptors stay bounded and the reconciler keeps its own;
//! - log streams, which hold their connection for as long as they follow a log, take a slot
//!   of their own: at most a quarter of the connections, and [`STREAMS_PER_TOKEN`] per
//!   token, so that health checks, webhooks and other requests always find a connection;
//! - shutdown stops accepting and lets open requests finish.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower_http::timeout::TimeoutLayer;

/// How patient the server is, and how many clients it serves at once.
#[derive(Clone, Debug)]
pub struct Limits {
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
}

/// Log streams one token (or one console session's token) may hold at once.
pub const STREAMS_PER_TOKEN: usize = 8;

/// The slots of log streams, keyed by token name; anonymous streams count in all only.
pub(crate) type Streams = Arc<Slots<String>>;

impl Limits {
    /// Log streams at once: a quarter of the connections, so that the rest always serve
    /// health checks, webhooks and ordinary requests.
    fn streams(&self) -> Streams {
        Slots::new((self.max_connections / 4).max(1), STREAMS_PER_TOKEN)
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_connections_per_ip: 64,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then waits for open requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let router =
        router
            .layer(axum::Extension(limits.streams()))
            .layer(TimeoutLayer::with_status_code(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                limits.request_timeout,
            ));
    let slots = Slots::new(limits.max_connections, limits.max_connections_per_ip);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, usually: wait instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = slots.take(Some(peer.ip())) else {
            tracing::debug!(client = %peer.ip(), "connection limit reached; closed");
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "API connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Open connections or streams, in all and per key (a client address, a token).
#[derive(Debug)]
pub(crate) struct Slots<K: Hash + Eq + Clone> {
    open: Mutex<(usize, HashMap<K, usize>)>,
    max: usize,
    max_per_key: usize,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    fn new(max: usize, max_per_key: usize) -> Arc<Slots<K>> {
        Arc::new(Slots {
            open: Mutex::new((0, HashMap::new())),
            max,
            max_per_key,
        })
    }

    /// A slot for `key` (without one, it counts in all only), given back when dropped;
    /// `None` past a limit.
    pub(crate) fn take(self: &Arc<Slots<K>>, key: Option<K>) -> Option<Slot<K>> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, by_key) = &mut *open;
        if *total >= self.max {
            return None;
        }
        if let Some(key) = &key {
            let mine = by_key.entry(key.clone()).or_default();
            if *mine >= self.max_per_key {
                if *mine == 0 {
                    by_key.remove(key);
                }
                return None;
            }
            *mine += 1;
        }
        *total += 1;
        Some(Slot {
            slots: Arc::clone(self),
            key,
        })
    }
}

#[derive(Debug)]
pub(crate) struct Slot<K: Hash + Eq + Clone> {
    slots: Arc<Slots<K>>,
    key: Option<K>,
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (total, by_key) = &mut *open;
        *total -= 1;
        if let Some(key) = &self.key
            && let Some(mine) = by_key.get_mut(key)
        {
            *mine -= 1;
            if *mine == 0 {
                by_key.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn connections_are_limited_in_all_and_per_client() {
        let slots = Slots::new(3, 2);
        let (a, b): (IpAddr, IpAddr) = ([127, 0, 0, 1].into(), [127, 0, 0, 2].into());
        let first = slots.take(Some(a));
        let second = slots.take(Some(a));
        assert!(first.is_some() && second.is_some());
        assert!(slots.take(Some(a)).is_none(), "a third from one client");
        let third = slots.take(Some(b));
        assert!(third.is_some());
        assert!(slots.take(Some(b)).is_none(), "a fourth in all");
        drop(first);
        assert!(
            slots.take(Some(a)).is_some(),
            "a slot is given back when dropped"
        );
        drop((second, third));
        let open = slots.open.lock().unwrap_or_else(PoisonError::into_inner);
        assert_eq!(open.0, 0);
        assert!(open.1.is_empty());
    }

    #[test]
    fn streams_are_a_quarter_of_the_connections_and_keyless_ones_count_in_all_only() {
        let streams = Limits {
            max_connections: 40,
            ..Limits::default()
        }
        .streams();
        let token = || Some("ci".to_owned());
        let held: Vec<_> = (0..STREAMS_PER_TOKEN)
            .map(|_| streams.take(token()).expect("a stream"))
            .collect();
        assert!(
            streams.take(token()).is_none(),
            "one token's streams are capped"
        );
        let anonymous: Vec<_> = (STREAMS_PER_TOKEN..10)
            .map(|_| streams.take(None).expect("an anonymous stream"))
            .collect();
        assert!(
            streams.take(None).is_none(),
            "ten of forty connections stream at most"
        );
        assert!(streams.take(Some("other".into())).is_none());
        drop(held);
        assert!(streams.take(token()).is_some());
        drop(anonymous);
    }
}
