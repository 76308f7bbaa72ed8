//! The HTTP API (health, push webhooks, sync requests, the read endpoints and rollback) and
//! the console's pages, served together.
//!
//! Every replica serves it; none syncs directly. A verified webhook or sync request is
//! turned into a NOTIFY that the leading reconciler acts on, so it works whichever replica a
//! load balancer picks. Errors answer with a short plain message and never with a database
//! error's text.

mod auth;
mod console;
pub mod openapi;
mod origins;
pub(crate) mod read;
mod server;
mod streams;
pub mod tokens;
mod webhook;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use reconciler::names::{TokenScope, Trigger};
use reconciler::sync::Source;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

pub use origins::Hosts;
pub use server::{Limits, serve};
pub use webhook::MAX_BODY_BYTES;

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    pub pool: PgPool,
    /// The sources this process tracks (webhooks are matched against them).
    pub sources: Arc<Vec<Source>>,
    /// The secret GitHub signs push webhooks with; without one, webhooks are refused.
    pub webhook_secret: Option<Arc<[u8]>>,
    /// SHA-256 of the bearer token the sync API accepts; without one, it is refused.
    pub api_token_sha256: Option<[u8; 32]>,
    /// Whether this process leads the reconcilers.
    pub leading: Arc<AtomicBool>,
    /// Whether requests without a token may read (`--anonymous-read`).
    pub anonymous_read: bool,
    /// The host names the API and console answer to.
    pub hosts: Hosts,
}

impl AppState {
    /// Keeps only a digest of `token`, which is all a comparison needs.
    pub fn token_digest(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }
}

/// The router, given its state. Needs a Tokio runtime: it follows the stored tokens on a
/// task of its own (see [`tokens::Known`]).
pub fn app(state: AppState) -> Router {
    let known = tokens::Known::follow(state.pool.clone());
    // Everything under /api/v1 but the webhook (which is signed instead) needs a caller.
    let authenticated = Router::new()
        .route("/api/v1/sources/{name}/sync", post(sync))
        .route("/api/v1/projects", get(read::projects))
        .route("/api/v1/services", get(read::services))
        .route("/api/v1/services/{project}/{name}", get(read::service))
        .route(
            "/api/v1/services/{project}/{name}/rollback",
            post(read::rollback),
        )
        .route("/api/v1/deployments", get(read::deployments))
        .route("/api/v1/deployments/{id}/logs", get(read::deployment_logs))
        .route("/api/v1/builds/{id}", get(read::build))
        .route("/api/v1/builds/{id}/logs", get(read::build_logs))
        .route("/api/v1/sources", get(read::sources))
        .route("/api/v1/sources/{name}", get(read::source))
        .route("/api/v1/routes", get(read::routes))
        .route("/api/v1/variable-groups", get(read::variable_groups))
        .route("/api/v1/revisions", get(read::revisions))
        .route("/api/v1/revisions/{id}", get(read::revision))
        .route_layer(axum::middleware::from_fn_with_state(
            (state.clone(), known),
            auth::authenticate,
        ));
    // What a browser can reach is answered only under our host names, and posted to only
    // from our own pages.
    let browsed = Router::new()
        .route("/api/v1/openapi.json", get(openapi_json))
        .merge(authenticated)
        .merge(console::routes(state.clone()))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            origins::guard,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/api/v1/webhooks/github",
            post(webhook::github).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
        .route(
            "/api/v1/webhooks/gitea",
            post(webhook::github).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
        .merge(browsed)
        .fallback(not_found)
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// `GET /api/v1/openapi.json`: this API described in OpenAPI 3.1 (no token needed).
async fn openapi_json() -> Json<serde_json::Value> {
    Json(openapi::document())
}

/// Rewrites the framework's own plain-text refusals (a path or body it could not read) into
/// the API's one error shape.
async fn json_errors(response: Response) -> Response {
    let plain = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !plain || !response.status().is_client_error() {
        return response;
    }
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&bytes).into_owned();
    let error = match status {
        StatusCode::NOT_FOUND => ApiError::NotFound(message),
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            return (
                status,
                Json(ErrorBody {
                    error: ErrorDetail {
                        code: "bad_request",
                        message,
                    },
                }),
            )
                .into_response();
        }
        _ => ApiError::BadRequest(message),
    };
    error.into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

/// Alive: answers as long as the process runs.
async fn healthz(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        role: role(&state),
    })
}

/// How this process stands.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct Health {
    status: &'static str,
    /// `leader` or `standby`.
    role: &'static str,
}

/// Ready: the database answers.
async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    sqlx::query("SELECT 1")
        .execute(&state.pool)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(Health {
        status: "ready",
        role: role(&state),
    }))
}

fn role(state: &AppState) -> &'static str {
    if state.leading.load(Ordering::SeqCst) {
        "leader"
    } else {
        "standby"
    }
}

/// `POST /api/v1/sources/{name}/sync` (scope `operate`): asks for a full sync now, for
/// forges other than GitHub and for CI.
async fn sync(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<tokens::Caller>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    auth::require(&caller, TokenScope::Operate)?;
    if !state.sources.iter().any(|s| s.name == name) {
        return Err(ApiError::NotFound(format!("no source named `{name}`")));
    }
    reconciler::store::request_sync(&state.pool, &name, Trigger::Request)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(SyncAnswer {
            source: name,
            sync: "requested",
        }),
    )
        .into_response())
}

/// A sync request taken.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct SyncAnswer {
    source: String,
    sync: &'static str,
}

/// Every error's body.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct ErrorDetail {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `misdirected`,
    /// `too_many_requests` or `unavailable`.
    code: &'static str,
    message: String,
}

/// The one error type of the API. Database details are logged, never sent. Every error
/// answers `{"error": {"code", "message"}}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// A host name this server does not answer to.
    #[error("{0}")]
    Misdirected(String),
    #[error("the database is unavailable")]
    Unavailable(String),
    /// Past a limit on what one client holds at once (log streams); the connection closes.
    #[error("{0}")]
    TooMany(String),
}

impl ApiError {
    /// The status and the code of the error's body.
    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Misdirected(_) => (StatusCode::MISDIRECTED_REQUEST, "misdirected"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
        }
    }

    fn status(&self) -> StatusCode {
        self.answer().0
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.answer();
        if let ApiError::Unavailable(detail) = &self {
            tracing::error!(%detail, "database error while serving a request");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message: self.to_string(),
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let ApiError::TooMany(_) = self {
            // The connection is given back at once rather than kept alive for another try.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}
