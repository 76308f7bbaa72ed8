//! How the proxy listens and how patient it is.

use std::net::{IpAddr, SocketAddr};
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
    /// Clients whose `Forwarded`, `X-Real-IP` and `X-Forwarded-Port` are kept (a load balancer
    /// in front); from anyone else they are dropped, and `X-Real-IP` is the client's address.
    pub trusted_proxies: Vec<Cidr>,
    /// The `Upgrade` protocols spliced through, lowercase (`websocket`). Any other upgrade is
    /// forwarded as a plain request: an `h2c` upgrade would give the client a raw tunnel to
    /// the backend, past routing.
    pub upgrade_protocols: Vec<String>,
}

/// An IP network, `address/prefix-length` (or one address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client may arrive on a dual-stack socket as an IPv4-mapped IPv6 address.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let (address, prefix) = text.split_once('/').unwrap_or((text, ""));
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("`{address}` is not an IP address"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{prefix}` is not a prefix length from 0 to {max}"))?
        };
        Ok(Cidr { network, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn networks_contain_their_addresses_only() {
        assert!(cidr("10.0.0.0/8").contains(ip("10.1.2.3")));
        assert!(!cidr("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(cidr("192.0.2.7").contains(ip("192.0.2.7")));
        assert!(!cidr("192.0.2.7").contains(ip("192.0.2.8")));
        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(cidr("10.0.0.0/8").contains(ip("::ffff:10.0.0.1")));
        assert!(cidr("fd00::/8").contains(ip("fd12::1")));
        assert!(!cidr("fd00::/8").contains(ip("10.0.0.1")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense/8".parse::<Cidr>().is_err());
    }
}
