//! How the proxy listens and how patient it is.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

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
