//! A worker's connections to upstreams: HTTP/1.1 over plain TCP or TLS, kept alive and reused
//! per origin. This module owns sending a request upstream, with its timeout and every retry:
//! a request that a closed idle connection could not take goes out on a new connection, and
//! a body-less request that a service endpoint refused goes to the next endpoint.
//!
//! A route's upstream is connected to only at an address its [`UpstreamPolicy`] allows,
//! checked on the resolved address that is connected to; its idle connections are kept apart
//! from those of service endpoints (which are on this machine), so neither takes the other's.
//!
//! Each worker thread has its own [`Upstreams`], so a connection is only ever driven by the
//! thread whose requests use it. A connection goes back to the idle list when the response
//! body it carried has been read to the end; the idle list is last in, first out, so the
//! connections that stay idle are the ones the upstream closes first when it trims them.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service as _;

use hyper::header::HeaderMap;
use hyper::{Method, StatusCode, Version};
use report::causes;

use crate::body::{Body, BoxError, boxed, empty, plain};
use crate::config::{Config, UpstreamPolicy};
use crate::shared::Shared;
use crate::table::Backends;

/// A request's head as it goes upstream: the URI in origin form, the headers rewritten.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
}

/// Why a request got no response from upstream.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("no response headers within the upstream timeout")]
    Timeout,
    #[error("the upstream failed: {0}")]
    Upstream(String),
    #[error("no healthy endpoint")]
    NoEndpoint,
    #[error("{0}")]
    NotAllowed(String),
}

impl Failure {
    /// The client's answer: 503 without an endpoint, 504 on a timeout, 502 otherwise.
    pub fn response(&self, route: &str) -> Response<Body> {
        if let Failure::NoEndpoint = self {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "service unavailable: no healthy endpoint\n",
            );
        }
        tracing::warn!(route, reason = %self, "upstream request failed");
        match self {
            Failure::Timeout => plain(
                StatusCode::GATEWAY_TIMEOUT,
                "gateway timeout: the upstream did not answer in time\n",
            ),
            // The address itself goes to the log only.
            Failure::NotAllowed(_) => plain(
                StatusCode::BAD_GATEWAY,
                "bad gateway: the route's upstream address is not allowed (see --allow-upstream)\n",
            ),
            _ => plain(
                StatusCode::BAD_GATEWAY,
                "bad gateway: the upstream failed\n",
            ),
        }
    }
}

/// Idle connections kept per origin and worker; past it, a finished connection is closed.
/// nginx's `keepalive` directive bounds the same thing.
const MAX_IDLE: usize = 128;

/// How long a connection may sit idle before it is no longer trusted and is closed: upstreams
/// close idle connections themselves (nginx after 75 s), and a request sent on a connection
/// they are closing fails.
const IDLE_FOR: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Upstreams {
    /// For service endpoints.
    connector: HttpsConnector<HttpConnector>,
    idle: Arc<IdleConnections>,
    /// For routes' upstreams.
    routes: HttpsConnector<Guarded>,
    routes_idle: Arc<IdleConnections>,
}

/// What a request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Endpoint,
    Route,
}

/// Idle connections by origin (`scheme://authority`), each with the time it was put back.
type IdleConnections = Mutex<HashMap<Box<str>, Vec<(SendRequest<Body>, Instant)>>>;

impl Upstreams {
    pub fn new(config: &Config) -> Upstreams {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let tls = || {
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_webpki_roots()
                .https_or_http()
                .enable_http1()
        };
        let guarded = Guarded {
            policy: Arc::new(config.upstreams.clone()),
            timeout: config.connect_timeout,
        };
        Upstreams {
            connector: tls().wrap_connector(http),
            idle: Arc::default(),
            routes: tls().wrap_connector(guarded),
            routes_idle: Arc::default(),
        }
    }

    fn idle(&self, via: Via) -> &Arc<IdleConnections> {
        match via {
            Via::Endpoint => &self.idle,
            Via::Route => &self.routes_idle,
        }
    }

    /// Sends a request to a route's upstream `origin` within the upstream timeout
    /// (connecting included), and records its latency.
    pub async fn send(
        &self,
        shared: &Shared,
        origin: &str,
        outgoing: Outgoing,
        body: Body,
    ) -> Result<Response<Body>, Failure> {
        self.send_via(Via::Route, shared, origin, outgoing, body)
            .await
    }

    async fn send_via(
        &self,
        via: Via,
        shared: &Shared,
        origin: &str,
        outgoing: Outgoing,
        body: Body,
    ) -> Result<Response<Body>, Failure> {
        let mut request = Request::new(body);
        *request.method_mut() = outgoing.method;
        *request.uri_mut() = outgoing.uri;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = outgoing.headers;
        let started = Instant::now();
        let sent = self.exchange(via, origin, request);
        match tokio::time::timeout(shared.config.upstream_timeout, sent).await {
            Err(_) => Err(Failure::Timeout),
            Ok(Err(failure)) => Err(failure),
            Ok(Ok(response)) => {
                shared.metrics.upstream_latency(started.elapsed());
                Ok(response)
            }
        }
    }

    /// Sends a request to one of a service's endpoints, round robin. An endpoint that refuses
    /// the connection or times out is ejected for a while; a request without a body that was
    /// refused goes to the next endpoint, each endpoint tried at most once.
    pub async fn send_to_service(
        &self,
        shared: &Shared,
        backends: &Backends,
        route: &str,
        mut outgoing: Outgoing,
        body: Incoming,
    ) -> Result<Response<Body>, Failure> {
        let now = shared.metrics.now_ms();
        let retriable = body.is_end_stream();
        let mut body = boxed(body);
        let mut tries = 0;
        loop {
            let endpoint = backends.pick(now).ok_or(Failure::NoEndpoint)?;
            tries += 1;
            // Only a request that may go out again keeps a copy of its head.
            let (this, kept) = if retriable && tries < backends.len() {
                (outgoing.clone(), Some(outgoing))
            } else {
                (outgoing, None)
            };
            let this_body = std::mem::replace(&mut body, empty());
            let sent = self.send_via(Via::Endpoint, shared, &endpoint.origin, this, this_body);
            let failure = match sent.await {
                Ok(response) => return Ok(response),
                Err(failure) => failure,
            };
            if matches!(failure, Failure::Connect(_) | Failure::Timeout) {
                let eject_for = shared.config.eject_for.as_millis() as u64;
                endpoint.eject(shared.metrics.now_ms() + eject_for);
                tracing::warn!(endpoint = &*endpoint.address, route, reason = %failure, "endpoint ejected");
            }
            match kept {
                Some(head) if matches!(failure, Failure::Connect(_)) => outgoing = head,
                _ => return Err(failure),
            }
        }
    }

    /// Sends `request` (its URI in origin form, its `Host` header set) to `origin`, on an idle
    /// connection when one is alive, otherwise on a new one. A request that an idle connection
    /// turns out unable to take (the upstream closed it meanwhile) goes out on a new one.
    async fn exchange(
        &self,
        via: Via,
        origin: &str,
        mut request: Request<Body>,
    ) -> Result<Response<Body>, Failure> {
        while let Some(mut sender) = self.checkout(via, origin).await {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.track(via, origin, sender, response)),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(Failure::Upstream(causes(error.error()))),
                },
            }
        }
        let mut sender = self.connect(via, origin).await?;
        match sender.send_request(request).await {
            Ok(response) => Ok(self.track(via, origin, sender, response)),
            Err(error) => Err(Failure::Upstream(causes(&error))),
        }
    }

    /// The most recently used idle connection to `origin` that is still open and ready.
    async fn checkout(&self, via: Via, origin: &str) -> Option<SendRequest<Body>> {
        loop {
            let mut sender = {
                let mut idle = self
                    .idle(via)
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let list = idle.get_mut(origin)?;
                let (sender, since) = list.pop()?;
                if since.elapsed() > IDLE_FOR {
                    // Last in, first out: everything under the newest is older still.
                    list.clear();
                    return None;
                }
                sender
            };
            if !sender.is_closed() && sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self, via: Via, origin: &str) -> Result<SendRequest<Body>, Failure> {
        let uri: Uri = origin
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| Failure::Connect(e.to_string()))?;
        let connected = match via {
            Via::Endpoint => self.connector.clone().call(uri).await,
            Via::Route => self.routes.clone().call(uri).await,
        };
        let stream = connected.map_err(|e| match e.downcast_ref::<NotAllowed>() {
            Some(NotAllowed(why)) => Failure::NotAllowed(why.clone()),
            None => Failure::Connect(causes(&*e)),
        })?;
        let (sender, connection) = http1::Builder::new()
            .handshake(stream)
            .await
            .map_err(|e| Failure::Connect(causes(&e)))?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// The response with a body that hands the connection back once it has been read through.
    fn track(
        &self,
        via: Via,
        origin: &str,
        sender: SendRequest<Body>,
        response: Response<Incoming>,
    ) -> Response<Body> {
        let (parts, body) = response.into_parts();
        // A connection switched to another protocol is the client's now, not the pool's.
        let reusable = parts.status != hyper::StatusCode::SWITCHING_PROTOCOLS;
        let mut tracked = PooledBody {
            body,
            give_back: reusable.then(|| GiveBack {
                origin: origin.into(),
                sender,
                idle: Arc::clone(self.idle(via)),
            }),
        };
        if tracked.body.is_end_stream() {
            tracked.finished();
        }
        Response::from_parts(parts, boxed(tracked))
    }
}

/// Connects a route's upstream: resolves its host and connects to the first resolved
/// address the policy allows, so the address checked is the address connected to (a name
/// that resolves differently the next time changes nothing).
#[derive(Clone, Debug)]
struct Guarded {
    policy: Arc<UpstreamPolicy>,
    timeout: Duration,
}

/// Every address a route's upstream resolves to is one routes may not reach.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotAllowed(String);

impl tower_service::Service<Uri> for Guarded {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (policy, timeout) = (Arc::clone(&self.policy), self.timeout);
        Box::pin(async move {
            let host = uri.host().ok_or("the upstream has no host")?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let https = uri.scheme() == Some(&hyper::http::uri::Scheme::HTTPS);
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let (mut refused, mut failed): (Option<String>, Option<BoxError>) = (None, None);
            for address in tokio::net::lookup_host((host.as_str(), port)).await? {
                if let Some(why) = policy.refuses(address) {
                    refused = Some(why);
                    continue;
                }
                match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
                    Ok(Ok(stream)) => {
                        let _ = stream.set_nodelay(true);
                        return Ok(hyper_util::rt::TokioIo::new(stream));
                    }
                    Ok(Err(error)) => failed = Some(error.into()),
                    Err(_) => failed = Some(format!("connecting to {address} timed out").into()),
                }
            }
            Err(match (failed, refused) {
                (Some(error), _) => error,
                (None, Some(why)) => Box::new(NotAllowed(why)),
                (None, None) => format!("`{host}` resolves to no address").into(),
            })
        })
    }
}

/// A connection waiting for its response body to end before it can carry another request.
struct GiveBack {
    origin: Box<str>,
    sender: SendRequest<Body>,
    idle: Arc<IdleConnections>,
}

/// A response body from an upstream. When it ends, its connection is idle again; if it is
/// dropped before that (the client went away), the connection is dropped and so closed.
struct PooledBody {
    body: Incoming,
    give_back: Option<GiveBack>,
}

impl PooledBody {
    fn finished(&mut self) {
        let Some(GiveBack {
            origin,
            sender,
            idle,
        }) = self.give_back.take()
        else {
            return;
        };
        if sender.is_closed() {
            return;
        }
        let mut idle = idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.entry(origin).or_default();
        if list.len() >= MAX_IDLE {
            list.retain(|(sender, _)| !sender.is_closed());
        }
        if list.len() < MAX_IDLE {
            list.push((sender, Instant::now()));
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finished(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.finished(),
            Poll::Ready(Some(Err(_))) => self.give_back = None,
            _ => {}
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
