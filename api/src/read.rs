//! The read endpoints and rollback: projects, services (with what runs and any pin) and
//! deployments. Lists are paginated with an opaque cursor and a `limit` (default 50, at
//! most 500) and filter by `project`; a single object carries an `ETag` and answers
//! `If-None-Match` with 304. No secret value, envelope or digest is ever part of an answer.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header::{ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use reconciler::names::{DeploymentState, TokenScope};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::streams::Watcher;
use crate::tokens::Caller;
use crate::{ApiError, AppState, auth};

/// The query of a list: all text, so a bad value is this API's 400, not the framework's.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    pub(crate) limit: Option<String>,
    pub(crate) cursor: Option<String>,
    pub(crate) project: Option<String>,
    pub(crate) service: Option<String>,
}

/// A page of a list and the cursor of the next one.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[schemars(rename = "PageOf{T}")]
pub struct Page<T> {
    pub(crate) items: Vec<T>,
    pub(crate) next_cursor: Option<String>,
}

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ListQuery {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<ListQuery, ApiError> {
        let Query(mut query) = Query::<ListQuery>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        query.project = query.project.as_deref().map(clean);
        query.service = query.service.as_deref().map(clean);
        Ok(query)
    }
}

/// Text that goes into a query: PostgreSQL's text cannot hold NUL, and no name holds one,
/// so a NUL becomes a character that matches nothing rather than a database error.
pub fn clean(text: &str) -> String {
    text.replace('\0', "\u{fffd}")
}

impl ListQuery {
    fn limit(&self) -> Result<i64, ApiError> {
        let Some(text) = &self.limit else {
            return Ok(DEFAULT_LIMIT);
        };
        match text.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::BadRequest(format!(
                "limit must be a number from 1 to {MAX_LIMIT}, not `{text}`"
            ))),
        }
    }

    /// The position after which the page starts, as the cursor encodes it. A cursor is the
    /// position's bytes in lowercase hex, so every string of hex pairs is a position to
    /// start after (the OpenAPI document gives the pattern); anything else is refused.
    pub(crate) fn after(&self) -> Result<Option<String>, ApiError> {
        let Some(cursor) = &self.cursor else {
            return Ok(None);
        };
        let hex = cursor.as_bytes();
        if hex.is_empty() || hex.len() % 2 != 0 {
            return Err(bad_cursor());
        }
        let bytes: Option<Vec<u8>> = hex
            .chunks(2)
            .map(|pair| {
                let text = std::str::from_utf8(pair).ok()?;
                u8::from_str_radix(text, 16).ok()
            })
            .collect();
        let bytes = bytes.ok_or_else(bad_cursor)?;
        Ok(Some(clean(&String::from_utf8_lossy(&bytes))))
    }

    /// The `(project, name)` after which a list keyed by both starts; `("", "")` for the
    /// first page, which sorts before every key.
    fn after_key(&self) -> Result<(String, String), ApiError> {
        let after = self.after()?.unwrap_or_default();
        let (project, name) = after.split_once('/').unwrap_or(("", ""));
        Ok((project.to_owned(), name.to_owned()))
    }
}

fn bad_cursor() -> ApiError {
    ApiError::BadRequest("the cursor is not one this API gave".into())
}

pub(crate) fn cursor(position: &str) -> String {
    position.bytes().map(|b| format!("{b:02x}")).collect()
}

/// `items` (one more than `limit` asked for, to know whether another page follows) as a page.
fn page<T>(mut items: Vec<T>, limit: i64, position: impl Fn(&T) -> String) -> Page<T> {
    let more = items.len() as i64 > limit;
    items.truncate(usize::try_from(limit).unwrap_or(0));
    let next_cursor = if more {
        items.last().map(|last| cursor(&position(last)))
    } else {
        None
    };
    Page { items, next_cursor }
}

fn unavailable(error: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(error.to_string())
}

#[derive(Debug, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct ProjectItem {
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    pub(crate) source: String,
    pub(crate) revision: i64,
}

/// `GET /api/v1/projects`
pub async fn projects(
    State(state): State<AppState>,
    query: ListQuery,
) -> Result<Response, ApiError> {
    Ok(Json(project_page(&state.pool, &query).await?).into_response())
}

pub(crate) async fn project_page(
    pool: &PgPool,
    query: &ListQuery,
) -> Result<Page<ProjectItem>, ApiError> {
    let limit = query.limit()?;
    let rows: Vec<ProjectItem> = sqlx::query_as(
        "SELECT name, fields->>'description' AS description, source, revision_id AS revision \
         FROM projects WHERE $1::text IS NULL OR name > $1 ORDER BY name LIMIT $2",
    )
    .bind(query.after()?)
    .bind(limit + 1)
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    Ok(page(rows, limit, |p| p.name.clone()))
}

/// A service as the API shows it: what is applied, and what runs.
#[derive(Debug, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct ServiceItem {
    pub(crate) project: String,
    pub(crate) name: String,
    pub(crate) source: String,
    pub(crate) revision: i64,
    pub(crate) image: Option<String>,
    #[serde(rename = "git")]
    pub(crate) source_git: Option<String>,
    pub(crate) replicas: i32,
    /// The serving deployment, else the newest.
    pub(crate) deployment: Option<i64>,
    pub(crate) state: Option<DeploymentState>,
    pub(crate) release: Option<String>,
    pub(crate) degraded: Option<String>,
    /// The deployment a rollback pinned the service to.
    pub(crate) pinned_to: Option<i64>,
}

impl ServiceItem {
    /// With any credentials in the source's URL removed, as everywhere a URL is shown.
    fn redacted(mut self) -> ServiceItem {
        self.source_git = self.source_git.as_deref().map(git::redact);
        self
    }
}

const SERVICES: &str = "SELECT s.project, s.name, s.source, s.revision_id AS revision, s.image, \
       s.source_git, s.replicas, d.id AS deployment, d.state, d.release_digest AS release, \
       d.degraded, p.deployment_id AS pinned_to \
     FROM services s \
     LEFT JOIN LATERAL (SELECT id, state, release_digest, degraded FROM deployments \
       WHERE project = s.project AND service = s.name \
       ORDER BY (state = 'healthy') DESC, id DESC LIMIT 1) d ON true \
     LEFT JOIN pins p ON p.project = s.project AND p.service = s.name";

/// `GET /api/v1/services`
pub async fn services(
    State(state): State<AppState>,
    query: ListQuery,
) -> Result<Response, ApiError> {
    Ok(Json(service_page(&state.pool, &query).await?).into_response())
}

pub(crate) async fn service_page(
    pool: &PgPool,
    query: &ListQuery,
) -> Result<Page<ServiceItem>, ApiError> {
    let limit = query.limit()?;
    let (after_project, after_name) = query.after_key()?;
    let rows: Vec<ServiceItem> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SERVICES} WHERE ($1::text IS NULL OR s.project = $1) AND (s.project, s.name) > ($2, $3) \
         ORDER BY s.project, s.name LIMIT $4"
    )))
    .bind(&query.project)
    .bind(after_project)
    .bind(after_name)
    .bind(limit + 1)
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    let rows = rows.into_iter().map(ServiceItem::redacted).collect();
    Ok(page(rows, limit, |s: &ServiceItem| {
        format!("{}/{}", s.project, s.name)
    }))
}

/// `GET /api/v1/services/{project}/{name}`: the service with its applied fields.
pub async fn service(
    State(state): State<AppState>,
    Path((project, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let detail = service_detail(&state.pool, &clean(&project), &clean(&name)).await?;
    tagged(&headers, &detail)
}

pub(crate) async fn service_detail(
    pool: &PgPool,
    project: &str,
    name: &str,
) -> Result<ServiceDetail, ApiError> {
    let item = one_service(pool, project, name).await?;
    let spec: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT fields FROM services WHERE project = $1 AND name = $2")
            .bind(project)
            .bind(name)
            .fetch_optional(pool)
            .await
            .map_err(unavailable)?;
    let mut spec = spec.unwrap_or_default();
    if let Some(url) = spec.get("source.git").and_then(|v| v.as_str()) {
        spec["source.git"] = git::redact(url).into();
    }
    Ok(ServiceDetail {
        service: item.redacted(),
        spec,
    })
}

/// One service: the list's item and its applied fields, named as in the manifest.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ServiceDetail {
    #[serde(flatten)]
    pub(crate) service: ServiceItem,
    pub(crate) spec: serde_json::Value,
}

async fn one_service(pool: &PgPool, project: &str, name: &str) -> Result<ServiceItem, ApiError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SERVICES} WHERE s.project = $1 AND s.name = $2"
    )))
    .bind(project)
    .bind(name)
    .fetch_optional(pool)
    .await
    .map_err(unavailable)?
    .ok_or_else(|| ApiError::NotFound(format!("no service {project}/{name} is applied")))
}

/// `body` as JSON with a strong `ETag` of its bytes, or 304 when the client has it already.
fn tagged(headers: &HeaderMap, body: &impl Serialize) -> Result<Response, ApiError> {
    let bytes = serde_json::to_vec(body).map_err(unavailable)?;
    let digest = Sha256::digest(&bytes);
    let tag = format!(
        "\"{}\"",
        digest[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let matches = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, [(ETAG, tag)]).into_response());
    }
    Ok((
        [
            (ETAG, tag),
            (axum::http::header::CONTENT_TYPE, "application/json".into()),
        ],
        bytes,
    )
        .into_response())
}

#[derive(Debug, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct DeploymentItem {
    pub(crate) id: i64,
    pub(crate) project: String,
    pub(crate) service: String,
    pub(crate) state: DeploymentState,
    pub(crate) trigger: reconciler::names::DeployTrigger,
    pub(crate) release: String,
    pub(crate) revision: Option<i64>,
    /// The commit of the manifests that revision applied.
    pub(crate) commit: Option<String>,
    pub(crate) reason: Option<String>,
    pub(crate) degraded: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub(crate) queued_at: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub(crate) finished_at: Option<time::OffsetDateTime>,
}

/// `GET /api/v1/deployments`, newest first.
pub async fn deployments(
    State(state): State<AppState>,
    query: ListQuery,
) -> Result<Response, ApiError> {
    Ok(Json(deployment_page(&state.pool, &query).await?).into_response())
}

pub(crate) async fn deployment_page(
    pool: &PgPool,
    query: &ListQuery,
) -> Result<Page<DeploymentItem>, ApiError> {
    let limit = query.limit()?;
    let before = before_id(query)?;
    let rows: Vec<DeploymentItem> = sqlx::query_as(
        "SELECT d.id, d.project, d.service, d.state, d.trigger, d.release_digest AS release, \
           d.revision_id AS revision, r.commit_id AS commit, d.reason, d.degraded, d.queued_at, \
           d.finished_at \
         FROM deployments d LEFT JOIN revisions r ON r.id = d.revision_id \
         WHERE ($1::text IS NULL OR d.project = $1) AND ($2::text IS NULL OR d.service = $2) \
           AND d.id < $3 \
         ORDER BY d.id DESC LIMIT $4",
    )
    .bind(&query.project)
    .bind(&query.service)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    Ok(page(rows, limit, |d| d.id.to_string()))
}

/// What a rollback asks for: an earlier deployment, or by default the one before.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    to: Option<i64>,
}

/// What a rollback request pinned.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct RollbackAnswer {
    service: String,
    pinned_to: i64,
    release: String,
}

/// `POST /api/v1/services/{project}/{name}/rollback` (scope `operate`): pins the service to
/// an earlier healthy release; the controller deploys it.
pub async fn rollback(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    auth::require(&caller, TokenScope::Operate)?;
    let (project, name) = (clean(&project), clean(&name));
    let request: RollbackRequest = if body.is_empty() {
        RollbackRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("the request body is not valid: {e}")))?
    };
    one_service(&state.pool, &project, &name).await?;
    let service = builder::decide::ServiceKey { project, name };
    let pinned = builder::rollback::pin(&state.pool, &service, request.to)
        .await
        .map_err(|e| match e {
            builder::Error::Database { .. } => unavailable(e),
            builder::Error::NoDeployment(_) => ApiError::NotFound(e.to_string()),
            other => ApiError::BadRequest(other.to_string()),
        })?;
    tracing::info!(caller = %caller.name, %service, deployment = pinned.id, "rollback requested");
    let answer = RollbackAnswer {
        service: service.to_string(),
        pinned_to: pinned.id,
        release: pinned.release_digest,
    };
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// `GET /api/v1/sources`: every tracked source with its state and last attempt.
pub async fn sources(
    State(state): State<AppState>,
    query: ListQuery,
) -> Result<Response, ApiError> {
    let limit = query.limit()?;
    let after = query.after()?;
    let all = reconciler::store::source_statuses(&state.pool)
        .await
        .map_err(unavailable)?;
    let rows: Vec<_> = all
        .into_iter()
        .filter(|s| after.as_ref().is_none_or(|a| &s.name > a))
        .take(usize::try_from(limit + 1).unwrap_or(usize::MAX))
        .collect();
    Ok(Json(page(rows, limit, |s| s.name.clone())).into_response())
}

/// `GET /api/v1/sources/{name}`
pub async fn source(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let found = reconciler::store::source_statuses(&state.pool)
        .await
        .map_err(unavailable)?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("no source named `{name}`")))?;
    tagged(&headers, &found)
}

#[derive(Debug, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct RouteItem {
    pub(crate) project: String,
    pub(crate) name: String,
    pub(crate) host: String,
    pub(crate) path: String,
    pub(crate) service: Option<String>,
    pub(crate) port: Option<i32>,
    pub(crate) upstream: Option<String>,
    pub(crate) strip_prefix: bool,
    pub(crate) source: String,
}

/// `GET /api/v1/routes`: host + path → target.
pub async fn routes(State(state): State<AppState>, query: ListQuery) -> Result<Response, ApiError> {
    Ok(Json(route_page(&state.pool, &query).await?).into_response())
}

pub(crate) async fn route_page(
    pool: &PgPool,
    query: &ListQuery,
) -> Result<Page<RouteItem>, ApiError> {
    let limit = query.limit()?;
    let (after_project, after_name) = query.after_key()?;
    let rows: Vec<RouteItem> = sqlx::query_as(
        "SELECT project, name, host, path, service, service_port AS port, upstream, strip_prefix, source \
         FROM routes WHERE ($1::text IS NULL OR project = $1) AND (project, name) > ($2, $3) \
         ORDER BY project, name LIMIT $4",
    )
    .bind(&query.project)
    .bind(after_project)
    .bind(after_name)
    .bind(limit + 1)
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    Ok(page(rows, limit, |r| format!("{}/{}", r.project, r.name)))
}

/// A variable group: its variables with their values, its secrets by name only.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct GroupItem {
    project: String,
    name: String,
    variables: serde_json::Map<String, serde_json::Value>,
    secrets: Vec<String>,
    source: String,
}

/// `GET /api/v1/variable-groups`
pub async fn variable_groups(
    State(state): State<AppState>,
    query: ListQuery,
) -> Result<Response, ApiError> {
    let limit = query.limit()?;
    let (after_project, after_name) = query.after_key()?;
    #[derive(sqlx::FromRow)]
    struct Row {
        project: String,
        name: String,
        fields: sqlx::types::Json<serde_json::Map<String, serde_json::Value>>,
        secrets: Vec<String>,
        source: String,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT g.project, g.name, g.fields, g.source, \
           coalesce(array_agg(s.name ORDER BY s.name) FILTER (WHERE s.name IS NOT NULL), '{}') AS secrets \
         FROM variable_groups g LEFT JOIN secrets s ON s.project = g.project AND s.group_name = g.name \
         WHERE ($1::text IS NULL OR g.project = $1) AND (g.project, g.name) > ($2, $3) \
         GROUP BY g.project, g.name ORDER BY g.project, g.name LIMIT $4",
    )
    .bind(&query.project)
    .bind(after_project)
    .bind(after_name)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await
    .map_err(unavailable)?;
    let items = rows
        .into_iter()
        .map(|row| GroupItem {
            variables: row
                .fields
                .0
                .into_iter()
                .filter_map(|(path, value)| {
                    Some((path.strip_prefix("variables.")?.to_owned(), value))
                })
                .collect(),
            project: row.project,
            name: row.name,
            secrets: row.secrets,
            source: row.source,
        })
        .collect();
    Ok(Json(page(items, limit, |g| format!("{}/{}", g.project, g.name))).into_response())
}

/// `GET /api/v1/revisions`, newest first, without their plans.
pub async fn revisions(
    State(state): State<AppState>,
    query: ListQuery,
) -> Result<Response, ApiError> {
    Ok(Json(revision_page(&state.pool, &query).await?).into_response())
}

pub(crate) async fn revision_page(
    pool: &PgPool,
    query: &ListQuery,
) -> Result<Page<reconciler::store::Revision>, ApiError> {
    let limit = query.limit()?;
    let before = before_id(query)?;
    let rows: Vec<reconciler::store::Revision> = sqlx::query_as(
        "SELECT id, applied_at, actor, source, commit_id, added, changed, destroyed \
         FROM revisions WHERE id < $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(before)
    .bind(limit + 1)
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    Ok(page(rows, limit, |r| r.id.to_string()))
}

pub(crate) fn before_id(query: &ListQuery) -> Result<i64, ApiError> {
    match query.after()? {
        None => Ok(i64::MAX),
        Some(text) => text.parse().map_err(|_| bad_cursor()),
    }
}

fn id(text: &str, what: &str) -> Result<i64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::BadRequest(format!("`{text}` is not a {what} number")))
}

/// A revision and its plan as `plan --format json` renders it.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct RevisionDetail {
    #[serde(flatten)]
    revision: reconciler::store::Revision,
    plan: serde_json::Value,
}

/// `GET /api/v1/revisions/{id}`: the revision and its plan, rendered in the plan's documented
/// JSON form (`render::json`, which holds no secret, not even a digest; the stored plan does
/// hold digests).
pub async fn revision(
    State(state): State<AppState>,
    Path(text): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (revision, plan) = revision_with_plan(&state.pool, &text).await?;
    let detail = RevisionDetail {
        revision,
        plan: reconciler::plan::render::json(&plan),
    };
    tagged(&headers, &detail)
}

/// The revision numbered `text` and the plan it applied (which holds secrets' digests: render
/// it, never send it).
pub(crate) async fn revision_with_plan(
    pool: &PgPool,
    text: &str,
) -> Result<(reconciler::store::Revision, reconciler::plan::Plan), ApiError> {
    let number = id(text, "revision")?;
    let found = reconciler::store::revision(pool, number)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| ApiError::NotFound(format!("no revision {number}")))?;
    let plan = serde_json::from_str(&found.plan).map_err(unavailable)?;
    Ok((found.revision, plan))
}

/// `GET /api/v1/builds/{id}`
pub async fn build(
    State(state): State<AppState>,
    Path(text): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let number = id(&text, "build")?;
    let found = builder::store::build(&state.pool, number)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| ApiError::NotFound(format!("no build {number}")))?;
    tagged(&headers, &found)
}

/// `GET /api/v1/deployments/{id}/logs` (or `/api/v1/builds/{id}/logs`): the captured lines
/// after the cursor, oldest first; with `Accept: text/event-stream`, the lines as server-sent
/// events as they are captured, each with its sequence number as the event id, resuming
/// after `Last-Event-ID`.
pub async fn deployment_logs(
    state: State<AppState>,
    watcher: Watcher,
    Path(text): Path<String>,
    query: ListQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let selection = builder::logs::Selection::Deployment(id(&text, "deployment")?);
    logs(state, watcher, selection, query, headers).await
}

pub async fn build_logs(
    state: State<AppState>,
    watcher: Watcher,
    Path(text): Path<String>,
    query: ListQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let selection = builder::logs::Selection::Build(id(&text, "build")?);
    logs(state, watcher, selection, query, headers).await
}

/// A log's lines as a page, or followed as server-sent events (see [`crate::streams`]).
pub(crate) async fn logs(
    State(state): State<AppState>,
    watcher: Watcher,
    selection: builder::logs::Selection,
    query: ListQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let limit = query.limit()?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| id(v, "Last-Event-ID"))
        .transpose()?;
    let after = match (resume, query.after()?) {
        (Some(seq), _) => seq,
        (None, Some(text)) => text.parse().map_err(|_| bad_cursor())?,
        (None, None) => 0,
    };
    let streaming = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !streaming {
        let lines = builder::logs::read(&state.pool, &selection, after, limit + 1, false)
            .await
            .map_err(unavailable)?;
        return Ok(Json(page(lines, limit, |l| l.seq.to_string())).into_response());
    }
    let events = crate::streams::follow(&state, watcher, selection, after)?;
    Ok(axum::response::sse::Sse::new(events)
        .keep_alive(axum::response::sse::KeepAlive::default())
        .into_response())
}
