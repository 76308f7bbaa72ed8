//! The admin listener: `/metrics` (Prometheus text) and `/healthz`, apart from traffic.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::body::plain;
use crate::shared::Shared;

/// The admin listener: `/metrics` (Prometheus text) and `/healthz`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = Arc::clone(&shared);
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let shared = Arc::clone(&shared);
            async move {
                let response = match request.uri().path() {
                    "/metrics" => {
                        let mut response = plain(StatusCode::OK, shared.metrics.render());
                        response.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static(
                                "text/plain; version=0.0.4; charset=utf-8",
                            ),
                        );
                        response
                    }
                    "/healthz" => plain(StatusCode::OK, "ok\n"),
                    _ => plain(StatusCode::NOT_FOUND, "not found\n"),
                };
                Ok::<_, Infallible>(response)
            }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
