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
//! - shutdown stops accepting and lets open requests finish.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
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
    let router = router.layer(TimeoutLayer::with_status_code(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        limits.request_timeout,
    ));
    let slots = Slots::new(&limits);
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
        let Some(slot) = slots.take(peer.ip()) else {
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

/// Open connections, in all and per client address.
#[derive(Debug)]
struct Slots {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    max: usize,
    max_per_ip: usize,
}

impl Slots {
    fn new(limits: &Limits) -> Arc<Slots> {
        Arc::new(Slots {
            open: Mutex::default(),
            max: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
        })
    }

    /// A slot for a connection from `ip`, given back when dropped; `None` past a limit.
    fn take(self: &Arc<Slots>, ip: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, by_ip) = &mut *open;
        let mine = by_ip.entry(ip).or_default();
        if *total >= self.max || *mine >= self.max_per_ip {
            if *mine == 0 {
                by_ip.remove(&ip);
            }
            return None;
        }
        *total += 1;
        *mine += 1;
        Some(Slot {
            slots: Arc::clone(self),
            ip,
        })
    }
}

#[derive(Debug)]
struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (total, by_ip) = &mut *open;
        *total -= 1;
        if let Some(mine) = by_ip.get_mut(&self.ip) {
            *mine -= 1;
            if *mine == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_limited_in_all_and_per_client() {
        let slots = Slots::new(&Limits {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..Limits::default()
        });
        let (a, b): (IpAddr, IpAddr) = ([127, 0, 0, 1].into(), [127, 0, 0, 2].into());
        let first = slots.take(a);
        let second = slots.take(a);
        assert!(first.is_some() && second.is_some());
        assert!(slots.take(a).is_none(), "a third from one client");
        let third = slots.take(b);
        assert!(third.is_some());
        assert!(slots.take(b).is_none(), "a fourth in all");
        drop(first);
        assert!(slots.take(a).is_some(), "a slot is given back when dropped");
        drop((second, third));
        let open = slots.open.lock().unwrap_or_else(PoisonError::into_inner);
        assert_eq!(open.0, 0);
        assert!(open.1.is_empty());
    }
}
