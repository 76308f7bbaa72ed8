//! A worker's connections to upstreams: HTTP/1.1 over plain TCP or TLS, kept alive and reused
//! per origin. This module owns sending a request upstream, with its timeout and every retry:
//! a request that a closed idle connection could not take goes out on a new connection, and
//! a body-less request that a service endpoint refused goes to the next endpoint.
//!
//! Each worker thread has its own [`Upstreams`], so a connection is only ever driven by the
//! thread whose requests use it. A connection goes back to the idle list when the response
//! body it carried has been read to the end; the idle list is last in, first out, so the
//! connections that stay idle are the ones the upstream closes first when it trims them.

use std::collections::HashMap;
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
use crate::config::Config;
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
    connector: HttpsConnector<HttpConnector>,
    idle: Arc<IdleConnections>,
}

/// Idle connections by origin (`scheme://authority`), each with the time it was put back.
type IdleConnections = Mutex<HashMap<Box<str>, Vec<(SendRequest<Body>, Instant)>>>;

impl Upstreams {
    pub fn new(config: &Config) -> Upstreams {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Upstreams {
            connector,
            idle: Arc::default(),
        }
    }

    /// Sends a request to `origin` within the upstream timeout (connecting included), and
    /// records its latency.
    pub async fn send(
        &self,
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
        let sent = self.exchange(origin, request);
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
            let failure = match self.send(shared, &endpoint.origin, this, this_body).await {
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
        origin: &str,
        mut request: Request<Body>,
    ) -> Result<Response<Body>, Failure> {
        while let Some(mut sender) = self.checkout(origin).await {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.track(origin, sender, response)),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(Failure::Upstream(causes(error.error()))),
                },
            }
        }
        let mut sender = self.connect(origin).await?;
        match sender.send_request(request).await {
            Ok(response) => Ok(self.track(origin, sender, response)),
            Err(error) => Err(Failure::Upstream(causes(&error))),
        }
    }

    /// The most recently used idle connection to `origin` that is still open and ready.
    async fn checkout(&self, origin: &str) -> Option<SendRequest<Body>> {
        loop {
            let mut sender = {
                let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
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

    async fn connect(&self, origin: &str) -> Result<SendRequest<Body>, Failure> {
        let uri: Uri = origin
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| Failure::Connect(e.to_string()))?;
        let stream = self
            .connector
            .clone()
            .call(uri)
            .await
            .map_err(|e| Failure::Connect(causes(&*e)))?;
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
                idle: Arc::clone(&self.idle),
            }),
        };
        if tracked.body.is_end_stream() {
            tracked.finished();
        }
        Response::from_parts(parts, boxed(tracked))
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
