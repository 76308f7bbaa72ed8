//! `POST /api/v1/webhooks/github` (and `/gitea`): push and pull-request events from GitHub,
//! Gitea and Forgejo.
//!
//! The signature (`X-Hub-Signature-256`, HMAC-SHA256 of the raw body under the configured
//! secret) is checked in constant time before anything else is read. A delivery whose id or
//! signed body was seen before is a replay and does nothing (the id is not signed, so a
//! replayed body may come with a new one). Only a push to a tracked repository and branch asks
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
use sha2::{Digest, Sha256};
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
    let verified = match (
        header(&headers, "x-hub-signature-256"),
        any_header(&headers, &["x-gitea-signature", "x-forgejo-signature"]),
    ) {
        (Some(signature), _) => verify(secret, &body, signature),
        (None, Some(hex)) => verify(secret, &body, &format!("sha256={hex}")),
        (None, None) => {
            return Err(ApiError::Unauthorized(
                "the X-Hub-Signature-256 header is missing",
            ));
        }
    };
    if !verified {
        return Err(ApiError::Unauthorized("the signature does not match"));
    }
    let event = any_header(
        &headers,
        &["x-github-event", "x-gitea-event", "x-forgejo-event"],
    )
    .ok_or_else(|| ApiError::BadRequest("the X-GitHub-Event header is missing".into()))?;
    let delivery = any_header(
        &headers,
        &[
            "x-github-delivery",
            "x-gitea-delivery",
            "x-forgejo-delivery",
        ],
    )
    .ok_or_else(|| ApiError::BadRequest("the X-GitHub-Delivery header is missing".into()))?;
    match event {
        "ping" => return Ok(ok(json!({ "pong": true }))),
        "push" | "pull_request" => {}
        other => return Ok(ok(json!({ "ignored": format!("event `{other}`") }))),
    }
    let seen = Seen {
        delivery,
        body_sha256: Sha256::digest(&body).into(),
    };
    if event == "pull_request" {
        let pull: PullEvent = serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!("the pull_request event cannot be read: {e}"))
        })?;
        return pull_request(&state, &seen, pull).await;
    }
    let push: Push = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the push event cannot be read: {e}")))?;
    if !fresh(&state, &seen).await? {
        return Ok(ok(json!({ "ignored": "delivery already processed" })));
    }
    let matched = tracked(&state, &push.repository, &push.r#ref);
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

/// A delivery as it is remembered: its id and the digest of its signed body.
struct Seen<'a> {
    delivery: &'a str,
    body_sha256: [u8; 32],
}

/// Whether the delivery is new (and now remembered); one whose id or body was seen is a
/// replay.
async fn fresh(state: &AppState, seen: &Seen<'_>) -> Result<bool, ApiError> {
    reconciler::store::remember_delivery(&state.pool, seen.delivery, &seen.body_sha256)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))
}

/// The sources that follow `reference` (`refs/heads/BRANCH`) of `repository`.
fn tracked<'a>(state: &'a AppState, repository: &Repository, reference: &str) -> Vec<&'a str> {
    let urls: Vec<String> = repository.urls().map(normalize).collect();
    state
        .sources
        .iter()
        .filter(|s| urls.contains(&normalize(&s.url)))
        .filter(|s| reference == format!("refs/heads/{}", s.branch))
        .map(|s| s.name.as_str())
        .collect()
}

/// A pull request opened, pushed to, reopened, labelled or closed against a tracked branch:
/// recorded for the leader's reviewer (which reads the pull request from the forge, plans its
/// head and comments), or marked closed (which the reviewer confirms with the forge before
/// destroying its preview).
async fn pull_request(
    state: &AppState,
    seen: &Seen<'_>,
    event: PullEvent,
) -> Result<Response, ApiError> {
    // Whether the event says the pull request is open, and whether its head must be reviewed
    // again even if it was (its labels, which may approve it, changed; or it was reopened).
    // This is a claim only: the reviewer reads the pull request from the forge before acting.
    let (open, again) = match event.action.as_str() {
        // GitHub says `synchronize`, Gitea and Forgejo `synchronized`.
        "opened" | "synchronize" | "synchronized" => (true, false),
        // Gitea and Forgejo say `label_updated` and `label_cleared`.
        "reopened" | "labeled" | "unlabeled" | "label_updated" | "label_cleared" => (true, true),
        "closed" => (false, false),
        other => {
            return Ok(ok(
                json!({ "ignored": format!("pull request action `{other}`") }),
            ));
        }
    };
    if event.number <= 0 {
        return Err(ApiError::BadRequest(format!(
            "the pull_request event's number must be positive, not {}",
            event.number
        )));
    }
    if !fresh(state, seen).await? {
        return Ok(ok(json!({ "ignored": "delivery already processed" })));
    }
    let pull = &event.pull_request;
    let base = format!("refs/heads/{}", pull.base.r#ref);
    let matched = tracked(state, &event.repository, &base);
    if matched.is_empty() {
        return Ok(ok(json!({
            "ignored": format!("no tracked source for {} {base}", event.repository.full_name)
        })));
    }
    // A fork's repository may be gone (`head.repo` is null): still a fork.
    let fork = pull
        .head
        .repo
        .as_ref()
        .is_none_or(|r| r.full_name != event.repository.full_name);
    for name in &matched {
        let recorded = if open {
            forge::store::announce(
                &state.pool,
                &forge::store::Pull {
                    source: (*name).to_owned(),
                    number: event.number,
                    repo: event.repository.full_name.clone(),
                    head: pull.head.sha.clone(),
                    fork,
                },
                again,
            )
            .await
        } else {
            forge::store::close(&state.pool, name, event.number).await
        };
        recorded.map_err(|e| ApiError::Unavailable(e.to_string()))?;
    }
    tracing::info!(
        delivery = seen.delivery,
        sources = ?matched,
        number = event.number,
        action = %event.action,
        "pull request webhook"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "pullRequest": event.number, "sources": matched, "action": event.action })),
    )
        .into_response())
}

/// The parts of a pull_request event used here (GitHub's, which Gitea and Forgejo follow).
#[derive(Debug, Deserialize)]
struct PullEvent {
    action: String,
    number: i64,
    pull_request: PullRequest,
    repository: Repository,
}

#[derive(Debug, Deserialize)]
struct PullRequest {
    head: PullHead,
    base: PullBase,
}

#[derive(Debug, Deserialize)]
struct PullHead {
    sha: String,
    repo: Option<Repository>,
}

#[derive(Debug, Deserialize)]
struct PullBase {
    r#ref: String,
}

fn ok(body: serde_json::Value) -> Response {
    (StatusCode::OK, Json(body)).into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The first of `names` the request carries (GitHub's, Gitea's or Forgejo's form).
fn any_header<'a>(headers: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|name| header(headers, name))
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
