//! How the proxy listens, how patient it is, and where routes may send requests.

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
    /// Which addresses a route's `upstream` may reach.
    pub upstreams: UpstreamPolicy,
}

/// Where a route's `upstream` may connect. A route is public: whoever can reach the proxy
/// reaches what it points at. So an upstream resolving to a loopback, link-local, private,
/// shared or unspecified address (this machine, its network, a cloud's metadata service) is
/// refused unless `allow` names it, and one of `reserved_ports` (the platform's own
/// listeners) on such an address is refused even then. Each address is checked as it is
/// connected to, after name resolution, so no name or numeric spelling gets around it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamPolicy {
    pub allow: Vec<Cidr>,
    pub reserved_ports: Vec<u16>,
}

impl UpstreamPolicy {
    /// Why a route may not connect to `address`, if it may not.
    pub fn refuses(&self, address: SocketAddr) -> Option<String> {
        let ip = plain(address.ip());
        let kind = internal(ip)?;
        if self.reserved_ports.contains(&address.port()) {
            return Some(format!(
                "{address} is Meshploy's own port on a {kind} address, which no route may reach"
            ));
        }
        (!self.allow.iter().any(|n| n.contains(ip))).then(|| {
            format!("{address} is a {kind} address, which routes reach only if --allow-upstream names it")
        })
    }
}

/// An IPv4 address written as IPv6 (mapped, or through the NAT64 prefix) as the IPv4 address.
fn plain(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let [a, b, c, d, e, f, g, h] = v6.segments();
            if [a, b, c, d, e, f] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [w, x] = g.to_be_bytes();
                let [y, z] = h.to_be_bytes();
                return IpAddr::V4(std::net::Ipv4Addr::new(w, x, y, z));
            }
            ip
        }
        v4 => v4,
    }
}

/// What kind of address that is not on the public internet `ip` is, if it is one.
fn internal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if a == 0 {
                Some("unspecified")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_private() {
                Some("private")
            } else if a == 100 && (64..128).contains(&b) {
                Some("shared (carrier-grade NAT)")
            } else if v4.is_broadcast() || v4.is_multicast() {
                Some("broadcast or multicast")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if first & 0xffc0 == 0xfe80 || first & 0xffc0 == 0xfec0 {
                Some("link-local")
            } else if first & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if v6.is_multicast() {
                Some("broadcast or multicast")
            } else {
                None
            }
        }
    }
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

    #[test]
    fn routes_reach_public_addresses_and_allowed_internal_ones_but_never_reserved_ports() {
        let address = |text: &str| text.parse::<SocketAddr>().unwrap_or_else(|e| panic!("{e}"));
        let closed = UpstreamPolicy::default();
        for public in [
            "93.184.215.14:443",
            "[2606:2800:21f:cb07:6820:80da:af6b:8b2c]:443",
        ] {
            assert_eq!(closed.refuses(address(public)), None, "{public}");
        }
        for (internal, kind) in [
            ("127.0.0.1:8001", "loopback"),
            ("127.8.9.10:80", "loopback"),
            ("0.0.0.0:8001", "unspecified"),
            ("169.254.169.254:80", "link-local"),
            ("10.1.2.3:80", "private"),
            ("172.16.0.1:80", "private"),
            ("192.168.1.1:80", "private"),
            ("100.64.0.1:80", "shared"),
            ("[::1]:8001", "loopback"),
            ("[::]:80", "unspecified"),
            ("[::ffff:127.0.0.1]:8001", "loopback"),
            ("[::ffff:169.254.169.254]:80", "link-local"),
            ("[64:ff9b::a9fe:a9fe]:80", "link-local"),
            ("[fe80::1]:80", "link-local"),
            ("[fd00:ec2::254]:80", "unique local"),
        ] {
            let why = closed.refuses(address(internal)).unwrap_or_default();
            assert!(
                why.contains(kind) && why.contains("--allow-upstream"),
                "{internal}: {why}"
            );
        }
        let open = UpstreamPolicy {
            allow: vec![cidr("127.0.0.0/8"), cidr("10.0.0.0/8")],
            reserved_ports: vec![8001],
        };
        assert_eq!(open.refuses(address("127.0.0.1:9000")), None);
        assert_eq!(open.refuses(address("[::ffff:10.1.1.1]:80")), None);
        assert!(open.refuses(address("192.168.1.1:80")).is_some());
        for own in ["127.0.0.1:8001", "10.0.0.5:8001", "[::1]:8001"] {
            let why = open.refuses(address(own)).unwrap_or_default();
            assert!(why.contains("Meshploy's own port"), "{own}: {why}");
        }
        assert_eq!(
            open.refuses(address("93.184.215.14:8001")),
            None,
            "not ours"
        );
    }
}
