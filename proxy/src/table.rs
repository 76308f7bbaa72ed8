//! The in-memory route table: built from rows, asked per request. Pure values, no IO.
//!
//! Hosts are found in O(1): one hash lookup for the exact host, then one for the wildcard that
//! covers its first label (`*.example.com` matches `a.example.com`, not `a.b.example.com`). An
//! exact host beats a wildcard even when none of its paths match, as nginx picks the server
//! before the location. Within a host, the longest path prefix on a segment boundary wins.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use hyper::Uri;
use hyper::header::HeaderValue;

/// A row of the `routes` table, as the proxy reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRow {
    pub project: String,
    pub name: String,
    pub host: String,
    pub path: String,
    pub service: Option<String>,
    pub service_port: Option<i32>,
    pub upstream: Option<String>,
    pub strip_prefix: bool,
}

/// A row of the `endpoints` table: one place a service port is served from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointRow {
    pub project: String,
    pub service: String,
    pub port: i32,
    pub address: String,
}

/// One route, ready to forward by.
#[derive(Debug)]
pub struct Route {
    /// `route/<project>/<name>`, for logs.
    pub address: String,
    prefix: Box<str>,
    strip_prefix: bool,
    pub target: Target,
}

#[derive(Debug)]
pub enum Target {
    /// An external URL: its origin (`scheme://authority`), the authority as the `Host` the
    /// upstream expects, and a base path prepended to the request's.
    Upstream {
        origin: Arc<str>,
        host: HeaderValue,
        base: Box<str>,
    },
    /// A service's live endpoints.
    Service(Arc<Backends>),
}

/// The endpoints of one service port, picked round robin among the healthy ones.
#[derive(Debug, Default)]
pub struct Backends {
    endpoints: Vec<Arc<Endpoint>>,
    next: AtomicUsize,
}

/// One endpoint and its passive health: ejected until a time, in milliseconds of the
/// process's clock (0 when healthy). It is shared across table reloads, so a reload does not
/// bring a dead endpoint back early.
#[derive(Debug)]
pub struct Endpoint {
    pub address: Box<str>,
    /// `http://` and the address: where its connections are pooled.
    pub origin: Box<str>,
    ejected_until_ms: AtomicU64,
}

impl Endpoint {
    pub fn eject(&self, until_ms: u64) {
        self.ejected_until_ms.store(until_ms, Ordering::Relaxed);
    }

    fn healthy(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }
}

impl Backends {
    /// The next endpoint in turn among the healthy ones, or `None` when there are none.
    /// Turns go round the healthy endpoints only, so an ejected one's share is spread evenly
    /// rather than handed to its neighbour.
    pub fn pick(&self, now_ms: u64) -> Option<&Arc<Endpoint>> {
        let healthy = self.endpoints.iter().filter(|e| e.healthy(now_ms)).count();
        if healthy == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % healthy;
        self.endpoints
            .iter()
            .filter(|e| e.healthy(now_ms))
            .nth(turn)
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }
}

/// What the table says about a request.
#[derive(Debug)]
pub enum Found<'a> {
    Route(&'a Arc<Route>),
    /// The host is served, but no route's prefix covers the path.
    NoPath,
    UnknownHost,
}

#[derive(Debug, Default)]
pub struct Table {
    exact: HashMap<Box<str>, Vec<Arc<Route>>>,
    wildcard: HashMap<Box<str>, Vec<Arc<Route>>>,
    endpoints: HashMap<Box<str>, Arc<Endpoint>>,
    routes: usize,
}

/// Builds a [`Table`] one route row at a time, so rows can stream in from the database
/// without all of them being held at once.
#[derive(Debug)]
pub struct Builder {
    table: Table,
    backends: HashMap<(String, String, i32), Arc<Backends>>,
    /// Upstream URLs already split, so routes to one upstream share its origin and `Host`.
    upstreams: HashMap<String, Option<SplitUpstream>>,
    skipped: Vec<String>,
}

impl Builder {
    /// Starts a table with the services' endpoints. `previous` lends its endpoints, so their
    /// health carries over.
    pub fn new(endpoints: impl IntoIterator<Item = EndpointRow>, previous: &Table) -> Builder {
        let mut table = Table::default();
        let mut backends: HashMap<(String, String, i32), Vec<Arc<Endpoint>>> = HashMap::new();
        for row in endpoints {
            let endpoint = previous
                .endpoints
                .get(row.address.as_str())
                .cloned()
                .unwrap_or_else(|| {
                    Arc::new(Endpoint {
                        origin: format!("http://{}", row.address).into(),
                        address: row.address.clone().into(),
                        ejected_until_ms: AtomicU64::new(0),
                    })
                });
            table
                .endpoints
                .insert(row.address.into(), Arc::clone(&endpoint));
            backends
                .entry((row.project, row.service, row.port))
                .or_default()
                .push(endpoint);
        }
        let backends = backends
            .into_iter()
            .map(|(key, endpoints)| {
                let backends = Backends {
                    endpoints,
                    next: AtomicUsize::new(0),
                };
                (key, Arc::new(backends))
            })
            .collect();
        Builder {
            table,
            backends,
            upstreams: HashMap::new(),
            skipped: Vec::new(),
        }
    }

    /// Adds one route. A row the proxy cannot use (an upstream that is not an absolute
    /// http(s) URL, which validation already refuses) is skipped and noted.
    pub fn add(&mut self, row: RouteRow) {
        let address = format!("route/{}/{}", row.project, row.name);
        let target = match (row.upstream, &row.service, row.service_port) {
            (Some(url), _, _) => {
                let split = match self.upstreams.get(url.as_str()) {
                    Some(split) => split.clone(),
                    None => {
                        let split = upstream(&url);
                        self.upstreams.insert(url.clone(), split.clone());
                        split
                    }
                };
                match split {
                    Some((origin, host, base)) => Target::Upstream { origin, host, base },
                    None => {
                        self.skipped
                            .push(format!("{address}: `{url}` is not an http(s) URL"));
                        return;
                    }
                }
            }
            (None, Some(service), Some(port)) => Target::Service(
                self.backends
                    .get(&(row.project, service.clone(), port))
                    .cloned()
                    .unwrap_or_default(),
            ),
            _ => {
                self.skipped
                    .push(format!("{address}: no service port and no upstream"));
                return;
            }
        };
        let route = Arc::new(Route {
            address,
            prefix: row.path.trim_end_matches('/').into(),
            strip_prefix: row.strip_prefix,
            target,
        });
        let (map, host) = match row.host.strip_prefix("*.") {
            Some(suffix) => (&mut self.table.wildcard, suffix),
            None => (&mut self.table.exact, row.host.as_str()),
        };
        map.entry(host.to_ascii_lowercase().into())
            .or_default()
            .push(route);
        self.table.routes += 1;
    }

    /// The finished table, and the reasons rows were skipped.
    pub fn finish(mut self) -> (Table, Vec<String>) {
        let table = &mut self.table;
        for routes in table.exact.values_mut().chain(table.wildcard.values_mut()) {
            routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
            routes.shrink_to_fit();
        }
        (self.table, self.skipped)
    }
}

impl Table {
    /// The route for a normalised host (see [`normalize_host`]) and a request path.
    pub fn find(&self, host: &str, path: &str) -> Found<'_> {
        let routes = self.exact.get(host).or_else(|| {
            host.split_once('.')
                .and_then(|(_, parent)| self.wildcard.get(parent))
        });
        let Some(routes) = routes else {
            return Found::UnknownHost;
        };
        routes
            .iter()
            .find(|r| covers(&r.prefix, path))
            .map_or(Found::NoPath, Found::Route)
    }

    pub fn len(&self) -> usize {
        self.routes
    }
}

impl Route {
    /// The path and query to send upstream: the prefix removed when the route strips it,
    /// behind the upstream URL's own path.
    pub fn forward_path(&self, path: &str, query: Option<&str>) -> String {
        let rest = if self.strip_prefix {
            &path[self.prefix.len()..]
        } else {
            path
        };
        let base = match &self.target {
            Target::Upstream { base, .. } => base,
            Target::Service(_) => "",
        };
        let mut out = String::with_capacity(base.len() + rest.len() + 2);
        out.push_str(base);
        out.push_str(rest);
        if out.is_empty() {
            out.push('/');
        }
        if let Some(query) = query {
            out.push('?');
            out.push_str(query);
        }
        out
    }
}

/// Whether a prefix (without trailing `/`; empty for the root) covers a path on a segment
/// boundary: `/api` covers `/api` and `/api/x`, not `/apiary`.
fn covers(prefix: &str, path: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || prefix.is_empty())
}

/// An upstream URL's origin, its authority as a `Host` value, and its path without a
/// trailing `/`.
type SplitUpstream = (Arc<str>, HeaderValue, Box<str>);

fn upstream(url: &str) -> Option<SplitUpstream> {
    let uri: Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = uri.authority()?;
    let host = HeaderValue::from_str(authority.as_str()).ok()?;
    Some((
        Arc::from(format!("{scheme}://{authority}")),
        host,
        uri.path().trim_end_matches('/').into(),
    ))
}

/// The host of a `Host` header or URI authority as the table keys it: lowercase, without the
/// port or a trailing dot. `None` for an empty or malformed host.
pub fn normalize_host(raw: &str) -> Option<String> {
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // An IPv6 literal keeps its brackets; the port follows them.
        let end = rest.find(']')?;
        &raw[..end + 2]
    } else {
        match raw.rsplit_once(':') {
            // RFC 9112 §3.2: a port is a number a TCP port can be.
            Some((host, port)) if port.is_empty() || port.parse::<u16>().is_ok() => host,
            Some(_) => return None,
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    // An empty label (`.wild.test`, `a..b`) is no host name, and must not match a wildcard.
    let empty_label = !host.starts_with('[') && host.split('.').any(str::is_empty);
    if host.is_empty() || empty_label || host.bytes().any(|b| b.is_ascii_whitespace() || b == b'/')
    {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(
        routes: Vec<RouteRow>,
        endpoints: Vec<EndpointRow>,
        previous: &Table,
    ) -> (Table, Vec<String>) {
        let mut builder = Builder::new(endpoints, previous);
        for row in routes {
            builder.add(row);
        }
        builder.finish()
    }

    fn route(host: &str, path: &str, target: &str, strip: bool) -> RouteRow {
        let (service, upstream) = match target.strip_prefix("svc:") {
            Some(service) => (Some(service.to_owned()), None),
            None => (None, Some(target.to_owned())),
        };
        RouteRow {
            project: "p".into(),
            name: format!("{host}{path}").replace(['/', '*', '.'], "-"),
            host: host.into(),
            path: path.into(),
            service_port: service.as_ref().map(|_| 8080),
            service,
            upstream,
            strip_prefix: strip,
        }
    }

    fn table(rows: Vec<RouteRow>) -> Table {
        let (table, skipped) = build(rows, Vec::new(), &Table::default());
        assert_eq!(skipped, Vec::<String>::new());
        table
    }

    /// The route name a request is routed to, or what the table said instead.
    fn routed(table: &Table, host: &str, path: &str) -> String {
        match table.find(&normalize_host(host).unwrap_or_default(), path) {
            Found::Route(route) => route.address.clone(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn exact_hosts_beat_wildcards_and_wildcards_cover_one_label() {
        let t = table(vec![
            route("api.example.com", "/", "http://exact", false),
            route("*.example.com", "/", "http://wild", false),
        ]);
        assert_eq!(
            routed(&t, "API.Example.COM:8443", "/"),
            "route/p/api-example-com-"
        );
        assert_eq!(
            routed(&t, "www.example.com", "/x"),
            "route/p/--example-com-"
        );
        assert_eq!(routed(&t, "a.b.example.com", "/"), "UnknownHost");
        assert_eq!(routed(&t, "example.com", "/"), "UnknownHost");
        assert_eq!(
            routed(&t, "api.example.com.", "/"),
            "route/p/api-example-com-"
        );
    }

    #[test]
    fn the_longest_prefix_wins_on_segment_boundaries() {
        let t = table(vec![
            route("h", "/", "http://root", false),
            route("h", "/api", "http://api", false),
            route("h", "/api/v2", "http://v2", false),
        ]);
        assert_eq!(routed(&t, "h", "/api"), "route/p/h-api");
        assert_eq!(routed(&t, "h", "/api/"), "route/p/h-api");
        assert_eq!(routed(&t, "h", "/api/x"), "route/p/h-api");
        assert_eq!(routed(&t, "h", "/api/v2/users"), "route/p/h-api-v2");
        assert_eq!(routed(&t, "h", "/apiary"), "route/p/h-");
        assert_eq!(routed(&t, "h", "/api/v20"), "route/p/h-api");
    }

    #[test]
    fn a_known_host_without_a_matching_path_is_not_a_wildcard_match() {
        let t = table(vec![
            route("api.example.com", "/v1", "http://exact", false),
            route("*.example.com", "/", "http://wild", false),
        ]);
        assert_eq!(routed(&t, "api.example.com", "/v2"), "NoPath");
    }

    #[test]
    fn forwarded_paths_strip_prefixes_and_keep_queries() {
        let t = table(vec![
            route("h", "/api", "http://up:9000/base/", true),
            route("h", "/keep", "http://up", false),
            route("h", "/strip", "svc:web", true),
        ]);
        let forward = |path: &str, query| match t.find("h", path) {
            Found::Route(r) => r.forward_path(path, query),
            other => format!("{other:?}"),
        };
        assert_eq!(forward("/api/users", Some("a=1")), "/base/users?a=1");
        assert_eq!(forward("/api", None), "/base");
        assert_eq!(forward("/keep/x", None), "/keep/x");
        assert_eq!(forward("/strip", None), "/");
        assert_eq!(forward("/strip/a/b", Some("q")), "/a/b?q");
    }

    #[test]
    fn hosts_are_normalised_or_refused() {
        assert_eq!(
            normalize_host("Example.COM:80").as_deref(),
            Some("example.com")
        );
        assert_eq!(normalize_host("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(
            normalize_host("example.com.").as_deref(),
            Some("example.com")
        );
        assert_eq!(normalize_host(""), None);
        assert_eq!(normalize_host(":80"), None);
        assert_eq!(normalize_host("a:b"), None);
        assert_eq!(normalize_host("a b"), None);
        assert_eq!(normalize_host(".wild.test"), None);
        assert_eq!(normalize_host("a..wild.test"), None);
        assert_eq!(normalize_host("shop.test:65536"), None);
        assert_eq!(normalize_host("shop.test:99999999999"), None);
        assert_eq!(
            normalize_host("shop.test:65535").as_deref(),
            Some("shop.test")
        );
    }

    #[test]
    fn round_robin_goes_round_the_healthy_endpoints_and_health_survives_reloads() {
        let endpoints: Vec<EndpointRow> = ["a:1", "b:1", "c:1"]
            .iter()
            .map(|address| EndpointRow {
                project: "p".into(),
                service: "web".into(),
                port: 8080,
                address: (*address).into(),
            })
            .collect();
        let rows = vec![route("h", "/", "svc:web", false)];
        let (t, _) = build(rows.clone(), endpoints.clone(), &Table::default());
        let backends = |t: &Table| match t.find("h", "/") {
            Found::Route(r) => match &r.target {
                Target::Service(b) => Arc::clone(b),
                Target::Upstream { .. } => panic!("an upstream"),
            },
            other => panic!("{other:?}"),
        };
        let picks = |b: &Backends, n, now| -> Vec<String> {
            (0..n)
                .map(|_| b.pick(now).map_or("none".into(), |e| e.address.to_string()))
                .collect()
        };
        let b = backends(&t);
        assert_eq!(picks(&b, 6, 0), ["a:1", "b:1", "c:1", "a:1", "b:1", "c:1"]);
        t.endpoints["a:1"].eject(1_000);
        // The ejected endpoint's turns are shared evenly, not all given to its neighbour.
        assert_eq!(picks(&b, 4, 500), ["b:1", "c:1", "b:1", "c:1"]);
        let (reloaded, _) = build(rows, endpoints, &t);
        let b = backends(&reloaded);
        assert!(!picks(&b, 4, 500).contains(&"a:1".to_owned()));
        assert_eq!(b.pick(1_000).map(|_| ()), Some(()));
        for e in ["a:1", "b:1", "c:1"] {
            reloaded.endpoints[e].eject(2_000);
        }
        assert!(b.pick(1_500).is_none());
    }

    #[test]
    fn unusable_rows_are_skipped_and_named() {
        let (t, skipped) = build(
            vec![
                route("h", "/", "ftp://x", false),
                route("g", "/", "http://ok", false),
            ],
            Vec::new(),
            &Table::default(),
        );
        assert_eq!(skipped, ["route/p/h-: `ftp://x` is not an http(s) URL"]);
        assert_eq!(t.len(), 1);
    }
}
