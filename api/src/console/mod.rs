//! The console: read-only HTML pages rendered by the server from the same queries as the API
//! (askama templates compiled into the binary, one stylesheet, and a few lines of vendored
//! JavaScript for live logs; no build step). Every page works with JavaScript off; only the
//! live log lines need it. Lists are paginated like the API's, so no page grows with the
//! platform.
//!
//! The console uses the API's tokens: the login form takes one and sets an HttpOnly,
//! SameSite=Strict session cookie (see [`session`]); with `--anonymous-read` no login is
//! needed.

mod data;
mod pages;
mod session;

use axum::Router;
use axum::extract::Request;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};

use crate::{ApiError, AppState};

/// The console's routes, merged into the API's router.
pub fn routes(state: AppState) -> Router<AppState> {
    let pages = Router::new()
        .route("/", get(pages::overview))
        .route("/projects/{name}", get(pages::project))
        .route("/services/{project}/{name}", get(pages::service))
        .route(
            "/services/{project}/{name}/events",
            get(pages::service_events),
        )
        .route("/revisions", get(pages::revisions))
        .route("/revisions/{id}", get(pages::revision))
        .route("/sources/{name}", get(pages::source))
        .route("/sources/{name}/pulls/{number}", get(pages::pull))
        .route("/logout", post(session::logout))
        .route_layer(middleware::from_fn_with_state(state, session::require));
    Router::new()
        .route("/login", get(session::form).post(session::login))
        .route("/static/console.css", get(stylesheet))
        .route("/static/console.js", get(script))
        .merge(pages)
        .layer(middleware::from_fn(protect))
}

async fn stylesheet() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("../../static/console.css"),
    )
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../static/console.js"),
    )
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [(CONTENT_TYPE, kind), (CACHE_CONTROL, "public, max-age=300")],
        body,
    )
        .into_response()
}

/// Headers every console answer carries: only this origin's scripts, styles and
/// connections; no framing; no sniffing; no caching of pages that show the platform.
async fn protect(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = [
        (
            "content-security-policy",
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
        ("x-frame-options", "DENY"),
    ];
    for (name, value) in set {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    headers
        .entry(CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// A refusal or failure shown as a page, with the API's status and message (never a
/// database's text: [`ApiError`] keeps that for the log).
#[derive(Debug)]
pub struct PageError(ApiError);

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> PageError {
        PageError(error)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        if let ApiError::Unavailable(detail) = &self.0 {
            tracing::error!(%detail, "database error while serving a console page");
        }
        let page = pages::ErrorPage {
            nav: pages::Nav::default(),
            status: status.to_string(),
            message: self.0.to_string(),
        };
        (status, render(&page)).into_response()
    }
}

/// A template as an HTML answer. Templates only fail on a formatting error of a value,
/// which the page then names instead of its content.
fn render(page: &impl askama::Template) -> Html<String> {
    Html(
        page.render()
            .unwrap_or_else(|error| format!("<p>This page could not be rendered: {error}</p>")),
    )
}
