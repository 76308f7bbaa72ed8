//! `POST /api/v1/webhooks/github`: GitHub push events.
//!
//! The signature (`X-Hub-Signature-256`, HMAC-SHA256 of the raw body under the configured
//! secret) is checked in constant time before anything else is read. A delivery id seen
//! before is a replay and does nothing. Only a push to a tracked repository and branch asks
//! for a sync; anything else is acknowledged with 2xx and no effect, as GitHub expects.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use reconciler::names::Trigger;
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::{ApiError, AppState};

/// The largest body accepted. GitHub caps payloads at 25 MB, but a push event for a
/// manifest repository is a few kilobytes; anything this large is refused with 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub async fn github(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(secret) = &state.webhook_secret else {
        return Err(ApiError::Unauthorized(
            "no webhook secret is configured on this server (--webhook-secret)",
        ));
    };
    let signature = header(&headers, "x-hub-signature-256").ok_or(ApiError::Unauthorized(
        "the X-Hub-Signature-256 header is missing",
    ))?;
    if !verify(secret, &body, signature) {
        return Err(ApiError::Unauthorized("the signature does not match"));
    }
    let event = header(&headers, "x-github-event")
        .ok_or_else(|| ApiError::BadRequest("the X-GitHub-Event header is missing".into()))?;
    let delivery = header(&headers, "x-github-delivery")
        .ok_or_else(|| ApiError::BadRequest("the X-GitHub-Delivery header is missing".into()))?;
    match event {
        "ping" => return Ok(ok(json!({ "pong": true }))),
        "push" => {}
        other => return Ok(ok(json!({ "ignored": format!("event `{other}`") }))),
    }
    let push: Push = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the push event cannot be read: {e}")))?;
    let fresh = reconciler::store::remember_delivery(&state.pool, delivery)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    if !fresh {
        return Ok(ok(json!({ "ignored": "delivery already processed" })));
    }
    let urls: Vec<String> = push.repository.urls().map(normalize).collect();
    let matched: Vec<&str> = state
        .sources
        .iter()
        .filter(|s| urls.contains(&normalize(&s.url)))
        .filter(|s| push.r#ref == format!("refs/heads/{}", s.branch))
        .map(|s| s.name.as_str())
        .collect();
    if matched.is_empty() {
        return Ok(ok(json!({
            "ignored": format!("no tracked source for {} {}", push.repository.full_name, push.r#ref)
        })));
    }
    for name in &matched {
        reconciler::store::request_sync(&state.pool, name, Trigger::Webhook)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    }
    tracing::info!(delivery, sources = ?matched, "push webhook: sync requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "syncRequested": matched })),
    )
        .into_response())
}

fn ok(body: serde_json::Value) -> Response {
    (StatusCode::OK, Json(body)).into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks `sha256=<hex>` against the HMAC of `body`, in constant time.
fn verify(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(expected) = signature.strip_prefix("sha256=").and_then(decode_hex) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    let actual = mac.finalize().into_bytes();
    actual.len() == expected.len() && bool::from(actual.as_slice().ct_eq(&expected))
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The parts of a push event used here.
#[derive(Debug, Deserialize)]
struct Push {
    r#ref: String,
    repository: Repository,
}

#[derive(Debug, Deserialize)]
struct Repository {
    #[serde(default)]
    full_name: String,
    #[serde(default)]
    clone_url: Option<String>,
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    ssh_url: Option<String>,
    #[serde(default)]
    git_url: Option<String>,
}

impl Repository {
    fn urls(&self) -> impl Iterator<Item = &str> {
        [
            &self.clone_url,
            &self.html_url,
            &self.ssh_url,
            &self.git_url,
        ]
        .into_iter()
        .filter_map(|u| u.as_deref())
    }
}

/// A repository URL reduced to host and path, so the https, ssh and git forms of one
/// repository compare equal: no scheme, no credentials, no `.git`, lowercase.
fn normalize(url: &str) -> String {
    let url = url.trim().to_lowercase();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let rest = match rest.split_once('@') {
        Some((user, host)) if !user.contains('/') => host,
        _ => rest,
    };
    // scp-like `host:owner/repo` becomes `host/owner/repo`.
    let rest = match rest.split_once(':') {
        Some((host, path))
            if !host.contains('/') && !path.starts_with(|c: char| c.is_ascii_digit()) =>
        {
            format!("{host}/{path}")
        }
        _ => rest.to_owned(),
    };
    rest.trim_end_matches('/')
        .trim_end_matches(".git")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_repository_in_every_url_form_compares_equal() {
        let forms = [
            "https://github.com/Acme/Deploy.git",
            "https://bot:token@github.com/acme/deploy",
            "git@github.com:acme/deploy.git",
            "ssh://git@github.com/acme/deploy.git",
            "git://github.com/acme/deploy.git",
            "https://github.com/acme/deploy/",
        ];
        for form in forms {
            assert_eq!(normalize(form), "github.com/acme/deploy", "{form}");
        }
        assert_ne!(
            normalize("https://github.com/acme/deploy-old"),
            "github.com/acme/deploy"
        );
        assert_eq!(normalize("file:///srv/git/deploy.git"), "/srv/git/deploy");
        assert_eq!(normalize("/srv/git/deploy.git"), "/srv/git/deploy");
    }

    #[test]
    fn signatures_verify_only_for_the_exact_body_and_secret() {
        // The example from GitHub's documentation on validating webhook deliveries.
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify(secret, body, good));
        assert!(!verify(secret, b"Hello, World?", good));
        assert!(!verify(b"another secret", body, good));
        assert!(!verify(secret, body, &good.replace("sha256=", "sha1=")));
        assert!(!verify(secret, body, &good[..good.len() - 2]));
        assert!(!verify(secret, body, "sha256=zz"));
        assert!(!verify(secret, body, ""));
    }
}
