//! A worker's connections to upstreams: HTTP/1.1 over plain TCP or TLS, kept alive and reused
//! per origin.
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

use crate::Config;
use report::causes;

use crate::forward::{Body, BoxError, Failure, boxed};

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

    /// Sends `request` (its URI in origin form, its `Host` header set) to `origin`, on an idle
    /// connection when one is alive, otherwise on a new one. A request that an idle connection
    /// turns out unable to take (the upstream closed it meanwhile) goes out on a new one.
    pub async fn send(
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
