//! One request through the proxy: find the route, rewrite the headers, hand the request to
//! the worker's upstream pool (which owns timeouts, endpoint choice and every retry), turn a
//! failure into 502/503/504, and splice upgraded connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;

use crate::body::{Body, boxed, plain};
use crate::config::Cidr;
use crate::db;
use crate::path;
use crate::shared::{Shared, X_REQUEST_ID};
use crate::table::{Found, Route, Target, normalize_host};
use crate::upstream::{Outgoing, Upstreams};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), besides those the
/// `Connection` header names.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// The client connection a request came on: its address, its IP as it goes into
/// X-Forwarded-For, and whether it is a trusted proxy; made once per connection rather than
/// once per request.
#[derive(Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    ip: HeaderValue,
    trusted: bool,
}

impl Peer {
    pub fn new(addr: SocketAddr, trusted_proxies: &[Cidr]) -> Peer {
        let ip = HeaderValue::try_from(addr.ip().to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
        let trusted = trusted_proxies.iter().any(|c| c.contains(addr.ip()));
        Peer { addr, ip, trusted }
    }
}

/// What a worker thread forwards with: the shared state and the thread's own upstream pool,
/// so a client connection, its requests and their upstream connections stay on one thread.
#[derive(Debug)]
pub struct Forwarder {
    pub shared: Arc<Shared>,
    pub upstreams: Upstreams,
}

/// The hyper service: every request gets an answer, so the error type is `Infallible`.
pub async fn handle(
    worker: Arc<Forwarder>,
    peer: Arc<Peer>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let shared = &*worker.shared;
    let request_id = shared.ids.keep_or_make(request.headers());
    let logged = shared.config.access_log.then(|| {
        (
            request.method().clone(),
            request.uri().clone(),
            Instant::now(),
        )
    });
    let mut response = proxy(&worker, &peer, request, &request_id).await;
    let status = response.status();
    shared.metrics.response(status.as_u16());
    if let Some((method, uri, started)) = logged {
        tracing::info!(
            target: "meshploy::access",
            client = %peer.addr.ip(),
            %method,
            uri = %uri,
            status = status.as_u16(),
            ms = started.elapsed().as_millis() as u64,
            request_id = request_id.to_str().unwrap_or_default(),
            "request"
        );
    }
    response.headers_mut().insert(X_REQUEST_ID, request_id);
    Ok(response)
}

async fn proxy(
    worker: &Forwarder,
    peer: &Peer,
    mut request: Request<Incoming>,
    request_id: &HeaderValue,
) -> Response<Body> {
    let shared = &*worker.shared;
    // RFC 9112 §3.2: a request with more than one Host is refused, not routed by the first.
    if request
        .headers()
        .get_all(header::HOST)
        .iter()
        .nth(1)
        .is_some()
    {
        return plain(
            StatusCode::BAD_REQUEST,
            "bad request: more than one Host header\n",
        );
    }
    let raw_host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .map(str::to_owned);
    let Some(host) = raw_host.as_deref().and_then(normalize_host) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "bad request: no valid Host header\n",
        );
    };
    // The route is matched on the normalised path and exactly that path is forwarded, so a
    // request can never leave the prefix it matched (see `path`).
    let Ok(path) = path::normalize(request.uri().path()) else {
        return plain(StatusCode::BAD_REQUEST, "bad request: invalid path\n");
    };
    let Some(route) = find(shared, &host, &path).await else {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: no route for this host and path\n",
        );
    };
    let Ok(uri) = Uri::try_from(route.forward_path(&path, request.uri().query())) else {
        return plain(StatusCode::BAD_REQUEST, "bad request: invalid path\n");
    };
    // Only the configured protocols are spliced (`websocket`); any other upgrade, `h2c` above
    // all, goes out as a plain request, since a splice would be a raw tunnel past routing.
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .filter(|protocol| upgradable(protocol, &shared.config.upgrade_protocols))
        .cloned()
        .filter(|_| {
            request
                .headers()
                .get_all(header::CONNECTION)
                .iter()
                .any(|v| has_token(v, "upgrade"))
        });
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));
    let (parts, body) = request.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    forwarded(&mut headers, peer, raw_host.as_deref(), request_id);
    let mut outgoing = Outgoing {
        method: parts.method,
        uri,
        headers,
    };
    let sent = match &route.target {
        Target::Upstream { origin, host, .. } => {
            outgoing.headers.insert(header::HOST, host.clone());
            worker
                .upstreams
                .send(shared, origin, outgoing, boxed(body))
                .await
        }
        Target::Service(backends) => {
            // A service sees the Host the client asked for (HTTP/2 clients send it as the
            // :authority, which HTTP/1.1 carries as Host).
            if !outgoing.headers.contains_key(header::HOST)
                && let Some(raw) = raw_host
                    .as_deref()
                    .and_then(|h| HeaderValue::from_str(h).ok())
            {
                outgoing.headers.insert(header::HOST, raw);
            }
            worker
                .upstreams
                .send_to_service(shared, backends, &route.address, outgoing, body)
                .await
        }
    };
    match sent {
        Ok(response) => respond(response, client_upgrade),
        Err(failure) => failure.response(&route.address),
    }
}

/// The route for a request; a host missing from the table is looked up (guarded) in case
/// the table is mid-refresh.
async fn find(shared: &Shared, host: &str, path: &str) -> Option<Arc<Route>> {
    let table = shared.table.load();
    match table.find(host, path) {
        Found::Route(route) => return Some(Arc::clone(route)),
        Found::NoPath => return None,
        Found::UnknownHost => {}
    }
    drop(table);
    if !db::lookup(shared, host).await {
        return None;
    }
    match shared.table.load().find(host, path) {
        Found::Route(route) => Some(Arc::clone(route)),
        Found::NoPath | Found::UnknownHost => None,
    }
}

/// The upstream's response for the client: hop-by-hop headers removed, the body streamed,
/// and for `101 Switching Protocols` both connections spliced once upgraded.
fn respond(
    mut response: Response<Body>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<Body> {
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let protocol = response.headers().get(header::UPGRADE).cloned();
    if switching && let Some(client) = client_upgrade {
        let upstream = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            match tokio::try_join!(client, upstream) {
                Ok((client, upstream)) => {
                    let _ = tokio::io::copy_bidirectional(
                        &mut TokioIo::new(client),
                        &mut TokioIo::new(upstream),
                    )
                    .await;
                }
                Err(error) => tracing::debug!(%error, "upgrade failed"),
            }
        });
    }
    let headers = response.headers_mut();
    strip_hop_by_hop(headers);
    if switching && let Some(protocol) = protocol {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    response
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
}

/// X-Forwarded-For (the client appended), -Proto and -Host, and the request id. From a
/// client that is not a trusted proxy, `Forwarded` and `X-Forwarded-Port` are dropped and
/// `X-Real-IP` is the client's own address, so a backend never reads an address the client
/// chose.
fn forwarded(headers: &mut HeaderMap, peer: &Peer, host: Option<&str>, request_id: &HeaderValue) {
    if !peer.trusted {
        headers.remove(header::FORWARDED);
        headers.remove(&X_FORWARDED_PORT);
        headers.insert(X_REAL_IP, peer.ip.clone());
    }
    let chain = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(earlier) if !earlier.trim().is_empty() => {
            HeaderValue::try_from(format!("{earlier}, {}", peer.addr.ip())).ok()
        }
        _ => Some(peer.ip.clone()),
    };
    if let Some(chain) = chain {
        headers.insert(X_FORWARDED_FOR, chain);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(host) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert(X_FORWARDED_HOST, host);
    }
    headers.insert(X_REQUEST_ID, request_id.clone());
}

/// Whether an `Upgrade` header asks for one of `allowed` (a protocol name, with or without
/// its `/version`). Only a single protocol is accepted.
fn upgradable(protocol: &HeaderValue, allowed: &[String]) -> bool {
    let Ok(text) = protocol.to_str() else {
        return false;
    };
    let name = text.trim().split('/').next().unwrap_or_default();
    !text.contains(',') && allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic abc"),
            ("accept", "text/html"),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn forwarded_headers_append_the_client_and_keep_the_host() {
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.7"));
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let peer: SocketAddr = "198.51.100.2:5555"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        forwarded(
            &mut headers,
            &Peer::new(peer, &[]),
            Some("Shop.example.com:8080"),
            &HeaderValue::from_static("abc"),
        );
        assert_eq!(headers[&X_FORWARDED_FOR], "203.0.113.7, 198.51.100.2");
        assert_eq!(headers[&X_FORWARDED_PROTO], "http");
        assert_eq!(headers[&X_FORWARDED_HOST], "Shop.example.com:8080");
        assert_eq!(headers[&X_REQUEST_ID], "abc");
    }

    #[test]
    fn client_chosen_addresses_are_dropped_unless_a_trusted_proxy_sent_them() {
        let spoofed = || {
            let mut headers = HeaderMap::new();
            headers.insert(header::FORWARDED, HeaderValue::from_static("for=1.2.3.4"));
            headers.insert(X_REAL_IP, HeaderValue::from_static("1.2.3.4"));
            headers.insert(X_FORWARDED_PORT, HeaderValue::from_static("443"));
            headers
        };
        let client: SocketAddr = "198.51.100.2:5555"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let id = HeaderValue::from_static("id");
        let mut untrusted = spoofed();
        forwarded(&mut untrusted, &Peer::new(client, &[]), None, &id);
        assert_eq!(untrusted.get(header::FORWARDED), None);
        assert_eq!(untrusted.get(&X_FORWARDED_PORT), None);
        assert_eq!(untrusted[&X_REAL_IP], "198.51.100.2");
        let balancer: Cidr = "198.51.100.0/24".parse().unwrap_or_else(|e| panic!("{e}"));
        let mut trusted = spoofed();
        forwarded(&mut trusted, &Peer::new(client, &[balancer]), None, &id);
        assert_eq!(trusted[header::FORWARDED], "for=1.2.3.4");
        assert_eq!(trusted[&X_REAL_IP], "1.2.3.4");
        assert_eq!(trusted[&X_FORWARDED_PORT], "443");
    }

    #[test]
    fn only_the_configured_protocols_are_upgraded() {
        let allowed = ["websocket".to_owned()];
        let check = |value: &'static str| upgradable(&HeaderValue::from_static(value), &allowed);
        assert!(check("websocket"));
        assert!(check("WebSocket"));
        assert!(!check("h2c"));
        assert!(!check("websocket, h2c"));
        assert!(!check("tls/1.3"));
    }
}
