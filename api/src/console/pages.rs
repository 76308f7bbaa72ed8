//! The pages: each handler reads what it shows through the API's own queries, turns it into
//! a view of plain strings, and renders its template (which escapes every value).

use askama::Template;
use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, Response};
use reconciler::names::DeploymentState;
use reconciler::plan::render;
use time::OffsetDateTime;

use super::{PageError, data, render as html};
use crate::read::{self, ListQuery, clean, cursor};
use crate::tokens::Caller;
use crate::{ApiError, AppState};

/// How many rows a console list shows at a time.
const PAGE_ROWS: i64 = 50;
/// How many of a plan's changes a revision page shows at a time.
const PLAN_CHANGES: usize = 100;
/// How many log lines a service page starts with.
const LOG_LINES: i64 = 200;

/// Who is looking, for the header.
#[derive(Debug, Default)]
pub struct Nav {
    pub caller: String,
    pub anonymous: bool,
}

impl Nav {
    fn of(caller: &Caller) -> Nav {
        Nav {
            caller: caller.name.clone(),
            anonymous: caller.name == "anonymous",
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub nav: Nav,
    pub status: String,
    pub message: String,
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub nav: Nav,
    pub problem: Option<String>,
    pub hours: i64,
    pub anonymous: bool,
}

/// The query a console page takes: cursors as the API gives them, and a plan's page.
#[derive(Debug, Default, serde::Deserialize)]
pub struct PageQuery {
    cursor: Option<String>,
    routes: Option<String>,
    page: Option<String>,
}

type Pager = Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>;

fn page_query(query: Pager) -> Result<PageQuery, PageError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| PageError(ApiError::BadRequest(e.body_text())))
}

fn list(cursor: Option<String>, rows: i64) -> ListQuery {
    ListQuery {
        limit: Some(rows.to_string()),
        cursor,
        ..ListQuery::default()
    }
}

/// A moment as people read it, in UTC.
fn when(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// A commit or digest, shortened as git shows it.
fn short(id: Option<&str>) -> String {
    id.map_or_else(|| "—".to_owned(), |id| id.chars().take(12).collect())
}

/// The badge colour of a deployment's state.
fn deployment_class(state: Option<DeploymentState>) -> &'static str {
    match state {
        Some(DeploymentState::Healthy) => "ok",
        Some(DeploymentState::Failed) => "bad",
        Some(DeploymentState::Queued | DeploymentState::Building | DeploymentState::Deploying) => {
            "busy"
        }
        _ => "",
    }
}

fn state_name(state: Option<DeploymentState>) -> String {
    state.map_or_else(|| "not deployed".to_owned(), |s| s.to_string())
}

pub struct SourceView {
    name: String,
    url: String,
    branch: String,
    state: String,
    class: &'static str,
    commit: String,
    checked: String,
    failure: Option<String>,
}

impl SourceView {
    fn of(status: &reconciler::store::SourceStatus) -> SourceView {
        use reconciler::names::SourceState;
        let class = match status.state {
            SourceState::Synced => "ok",
            SourceState::Failed | SourceState::Interrupted => "bad",
            _ => "busy",
        };
        SourceView {
            name: status.name.clone(),
            url: git::redact(&status.url),
            branch: status.branch.clone(),
            state: status.state.to_string(),
            class,
            commit: short(status.last_seen_commit.as_deref()),
            checked: status.checked_at.map(when).unwrap_or_default(),
            failure: (class == "bad").then(|| status.message.clone()).flatten(),
        }
    }
}

#[derive(Template)]
#[template(path = "overview.html")]
pub struct Overview {
    nav: Nav,
    sources: Vec<SourceView>,
    projects: Vec<data::ProjectHealth>,
    next: Option<String>,
}

/// `GET /`: every source and a page of projects with their services' health.
pub async fn overview(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Pager,
) -> Result<Html<String>, PageError> {
    let query = list(page_query(query)?.cursor, PAGE_ROWS);
    let after = query.after()?;
    let sources = reconciler::store::source_statuses(&state.pool)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let mut projects = data::project_health(&state.pool, after.as_deref(), PAGE_ROWS + 1).await?;
    let next = more(&mut projects, |p| p.name.clone());
    Ok(html(&Overview {
        nav: Nav::of(&caller),
        sources: sources.iter().map(SourceView::of).collect(),
        projects,
        next,
    }))
}

/// Cuts `rows` (one more than a page, when another page follows) to a page, and returns the
/// next page's cursor.
fn more<T>(rows: &mut Vec<T>, position: impl Fn(&T) -> String) -> Option<String> {
    let rows_per_page = usize::try_from(PAGE_ROWS).unwrap_or(50);
    if rows.len() <= rows_per_page {
        return None;
    }
    rows.truncate(rows_per_page);
    rows.last().map(|last| cursor(&position(last)))
}

pub struct ServiceRow {
    project: String,
    name: String,
    state: String,
    class: &'static str,
    release: String,
    replicas: i32,
    workload: String,
    degraded: Option<String>,
    pinned: Option<i64>,
}

pub struct RouteRow {
    host: String,
    path: String,
    target: String,
}

#[derive(Template)]
#[template(path = "project.html")]
pub struct ProjectPage {
    nav: Nav,
    name: String,
    description: Option<String>,
    source: String,
    revision: i64,
    services: Vec<ServiceRow>,
    services_next: Option<String>,
    routes: Vec<RouteRow>,
    routes_next: Option<String>,
}

/// `GET /projects/{name}`: the project's services and routes.
pub async fn project(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    query: Pager,
) -> Result<Html<String>, PageError> {
    let name = clean(&name);
    let query = page_query(query)?;
    let project = data::project(&state.pool, &name).await?;
    let mut services_query = list(query.cursor, PAGE_ROWS);
    services_query.project = Some(name.clone());
    let services = read::service_page(&state.pool, &services_query).await?;
    let mut routes_query = list(query.routes, PAGE_ROWS);
    routes_query.project = Some(name.clone());
    let routes = read::route_page(&state.pool, &routes_query).await?;
    Ok(html(&ProjectPage {
        nav: Nav::of(&caller),
        name: project.name,
        description: project.description,
        source: project.source,
        revision: project.revision,
        services: services
            .items
            .into_iter()
            .map(|s| ServiceRow {
                state: state_name(s.state),
                class: deployment_class(s.state),
                release: short(s.release.as_deref()),
                workload: s.image.or(s.source_git).unwrap_or_default(),
                replicas: s.replicas,
                degraded: s.degraded,
                pinned: s.pinned_to,
                project: s.project,
                name: s.name,
            })
            .collect(),
        services_next: services.next_cursor,
        routes: routes
            .items
            .into_iter()
            .map(|r| RouteRow {
                target: match (r.service, r.upstream) {
                    (Some(service), _) => {
                        format!("service {service}:{}", r.port.unwrap_or_default())
                    }
                    (None, Some(upstream)) => git::redact(&upstream),
                    (None, None) => String::new(),
                },
                host: r.host,
                path: r.path,
            })
            .collect(),
        routes_next: routes.next_cursor,
    }))
}

pub struct DeploymentRow {
    id: i64,
    state: String,
    class: &'static str,
    trigger: String,
    release: String,
    revision: Option<i64>,
    commit: String,
    queued: String,
    reason: Option<String>,
    degraded: Option<String>,
}

pub struct SpecField {
    path: String,
    value: String,
}

#[derive(Template)]
#[template(path = "service.html")]
pub struct ServicePage {
    nav: Nav,
    project: String,
    name: String,
    state: String,
    class: &'static str,
    degraded: Option<String>,
    pinned: Option<i64>,
    deployments: Vec<DeploymentRow>,
    deployments_next: Option<String>,
    logs: Vec<String>,
    logs_cursor: String,
    /// The deployment of the last line shown (0 for none), where the live lines go on from.
    logs_deployment: i64,
    spec: Vec<SpecField>,
}

/// Captured lines as the page and the live script show them: each deployment's lines after a
/// marker line naming it, as `meshploy logs --follow` prints them.
fn log_lines(lines: &[builder::logs::LogLine]) -> Vec<String> {
    let mut shown = Vec::with_capacity(lines.len() + 1);
    let mut deployment = None;
    for line in lines {
        if line.deployment_id.is_some() && line.deployment_id != deployment {
            deployment = line.deployment_id;
            shown.push(format!(
                "[meshploy] deployment {}:",
                deployment.unwrap_or_default()
            ));
        }
        shown.push(match line.replica {
            Some(replica) => format!("[replica {replica}] {}", line.line),
            None => line.line.clone(),
        });
    }
    shown
}

/// `GET /services/{project}/{name}`: what is applied, every deployment with its reason, and
/// the log.
pub async fn service(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project, name)): Path<(String, String)>,
    query: Pager,
) -> Result<Html<String>, PageError> {
    let (project, name) = (clean(&project), clean(&name));
    let query = page_query(query)?;
    let detail = read::service_detail(&state.pool, &project, &name).await?;
    let mut deployments_query = list(query.cursor, PAGE_ROWS);
    deployments_query.project = Some(project.clone());
    deployments_query.service = Some(name.clone());
    let deployments = read::deployment_page(&state.pool, &deployments_query).await?;
    let selection = builder::logs::Selection::Service {
        project: project.clone(),
        name: name.clone(),
    };
    let logs = builder::logs::read(&state.pool, &selection, 0, LOG_LINES, true)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let last_seq = logs.iter().map(|l| l.seq).max().unwrap_or(0);
    let spec = match detail.spec {
        serde_json::Value::Object(fields) => fields
            .into_iter()
            .map(|(path, value)| SpecField {
                path,
                value: match value {
                    serde_json::Value::String(text) => text,
                    other => other.to_string(),
                },
            })
            .collect(),
        _ => Vec::new(),
    };
    let service = detail.service;
    Ok(html(&ServicePage {
        nav: Nav::of(&caller),
        state: state_name(service.state),
        class: deployment_class(service.state),
        degraded: service.degraded,
        pinned: service.pinned_to,
        deployments: deployments
            .items
            .into_iter()
            .map(|d| DeploymentRow {
                id: d.id,
                state: d.state.to_string(),
                class: deployment_class(Some(d.state)),
                trigger: d.trigger.to_string(),
                release: short(Some(&d.release)),
                revision: d.revision,
                commit: short(d.commit.as_deref()),
                queued: when(d.queued_at),
                reason: d.reason,
                degraded: d.degraded,
            })
            .collect(),
        deployments_next: deployments.next_cursor,
        logs: log_lines(&logs),
        logs_cursor: cursor(&last_seq.to_string()),
        logs_deployment: logs.last().and_then(|l| l.deployment_id).unwrap_or(0),
        spec,
        project,
        name,
    }))
}

/// `GET /services/{project}/{name}/events`: the service's log lines as server-sent events,
/// across its deployments, after the cursor (the page's last line) or `Last-Event-ID`.
pub async fn service_events(
    state: State<AppState>,
    watcher: crate::streams::Watcher,
    Path((project, name)): Path<(String, String)>,
    query: ListQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let selection = builder::logs::Selection::Service {
        project: clean(&project),
        name: clean(&name),
    };
    read::logs(state, watcher, selection, query, headers).await
}

pub struct RevisionRow {
    id: i64,
    applied: String,
    actor: String,
    source: String,
    commit: String,
    added: i32,
    changed: i32,
    destroyed: i32,
}

#[derive(Template)]
#[template(path = "revisions.html")]
pub struct RevisionsPage {
    nav: Nav,
    revisions: Vec<RevisionRow>,
    next: Option<String>,
}

fn revision_row(r: reconciler::store::Revision) -> RevisionRow {
    RevisionRow {
        id: r.id,
        applied: when(r.applied_at),
        commit: short(r.commit_id.as_deref()),
        actor: r.actor,
        source: r.source,
        added: r.added,
        changed: r.changed,
        destroyed: r.destroyed,
    }
}

/// `GET /revisions`: what was applied, newest first.
pub async fn revisions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Pager,
) -> Result<Html<String>, PageError> {
    let page =
        read::revision_page(&state.pool, &list(page_query(query)?.cursor, PAGE_ROWS)).await?;
    Ok(html(&RevisionsPage {
        nav: Nav::of(&caller),
        revisions: page.items.into_iter().map(revision_row).collect(),
        next: page.next_cursor,
    }))
}

pub struct PlanLine {
    class: &'static str,
    text: String,
}

/// A line of plan text with the colour of what it says: `+` added, `-` destroyed (and `-/+`
/// replaced), `~` changed, `#` a note.
fn plan_line(text: &str) -> PlanLine {
    let class = match text.trim_start().chars().next() {
        Some('+') => "add",
        Some('-') => "del",
        Some('~') => "chg",
        Some('#') => "note",
        _ => "",
    };
    PlanLine {
        class,
        text: text.to_owned(),
    }
}

#[derive(Template)]
#[template(path = "revision.html")]
pub struct RevisionPage {
    nav: Nav,
    id: i64,
    applied: String,
    actor: String,
    source: String,
    commit: String,
    summary: String,
    lines: Vec<PlanLine>,
    total: usize,
    first: usize,
    last: usize,
    pages: usize,
    previous: Option<usize>,
    next: Option<usize>,
}

/// `GET /revisions/{id}?page=N`: the plan the revision applied, as the CLI renders it, a
/// hundred changes at a time.
pub async fn revision(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(text): Path<String>,
    query: Pager,
) -> Result<Html<String>, PageError> {
    let query = page_query(query)?;
    let (revision, plan) = read::revision_with_plan(&state.pool, &text).await?;
    let total = plan.changes.len();
    let pages = total.div_ceil(PLAN_CHANGES).max(1);
    let page = match query.page.as_deref() {
        None => 1,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=pages).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "page must be a number from 1 to {pages}, not `{text}`"
                ))
            })?,
    };
    let start = (page - 1) * PLAN_CHANGES;
    let shown = &plan.changes[start..(start + PLAN_CHANGES).min(total)];
    let mut text = if page == 1 {
        render::adoption(&plan)
    } else {
        String::new()
    };
    if plan.is_empty() {
        text.push_str(render::NO_CHANGES);
    }
    for change in shown {
        text.push_str(&render::block(change, false));
        text.push('\n');
    }
    let row = revision_row(revision);
    Ok(html(&RevisionPage {
        nav: Nav::of(&caller),
        summary: render::summary_line(&plan),
        lines: text.lines().map(plan_line).collect(),
        total,
        first: start + 1,
        last: start + shown.len(),
        pages,
        previous: (page > 1).then(|| page - 1),
        next: (page < pages).then(|| page + 1),
        id: row.id,
        applied: row.applied,
        actor: row.actor,
        source: row.source,
        commit: if row.commit == "—" {
            String::new()
        } else {
            row.commit
        },
    }))
}

pub struct AttemptRow {
    id: i64,
    finished: String,
    trigger: String,
    commit: String,
    outcome: String,
    class: &'static str,
    revision: Option<i64>,
    message: Option<String>,
    problems: Vec<String>,
}

/// What an attempt's detail lists, one line each: diagnostics as `file:line:col: message`,
/// and resources another source owns.
fn problems(detail: Option<&serde_json::Value>) -> Vec<String> {
    let Some(detail) = detail else {
        return Vec::new();
    };
    let listed = |key: &str| {
        detail
            .get(key)
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default()
    };
    let text = |v: &serde_json::Value, key: &str| {
        v.get(key)
            .map(|f| f.as_str().map_or_else(|| f.to_string(), str::to_owned))
            .unwrap_or_default()
    };
    match detail.get("kind").and_then(|k| k.as_str()) {
        Some("invalid") => {
            let diagnostics = listed("diagnostics");
            let mut lines: Vec<String> = diagnostics
                .iter()
                .map(|d| {
                    format!(
                        "{}:{}:{}: {}",
                        text(d, "file"),
                        text(d, "line"),
                        text(d, "column"),
                        text(d, "message")
                    )
                })
                .collect();
            let total = detail
                .get("total")
                .and_then(|t| t.as_u64())
                .and_then(|t| usize::try_from(t).ok())
                .unwrap_or(0);
            if total > lines.len() {
                lines.push(format!("… and {} more", total - lines.len()));
            }
            lines
        }
        Some("conflict") => listed("conflicts")
            .iter()
            .map(|c| {
                format!(
                    "{} belongs to source {}",
                    text(c, "address"),
                    text(c, "owner")
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}

pub struct PullRow {
    number: i64,
    state: String,
    head: String,
    outcome: &'static str,
    class: &'static str,
    summary: Option<String>,
}

/// How a pull request's last review went, and its badge colour.
fn review_outcome(outcome: Option<&str>) -> (&'static str, &'static str) {
    match outcome {
        Some("success") => ("plan ok", "ok"),
        Some(_) => ("plan failed", "bad"),
        None => ("not reviewed", "busy"),
    }
}

#[derive(Template)]
#[template(path = "source.html")]
pub struct SourcePage {
    nav: Nav,
    source: SourceView,
    pulls: Vec<PullRow>,
    path: String,
    policy: String,
    applied: String,
    attempts: Vec<AttemptRow>,
    next: Option<String>,
}

/// `GET /sources/{name}`: the source and its attempts, with what each found.
pub async fn source(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    query: Pager,
) -> Result<Html<String>, PageError> {
    let query = list(page_query(query)?.cursor, PAGE_ROWS);
    let before = read::before_id(&query)?;
    let status = reconciler::store::source_statuses(&state.pool)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("no source named `{name}`")))?;
    let mut attempts = reconciler::store::past_attempts(&state.pool, &name, before, PAGE_ROWS + 1)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let next = more(&mut attempts, |a| a.id.to_string());
    let pulls = forge::store::listed(&state.pool, &name, PAGE_ROWS)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    use reconciler::names::AttemptOutcome;
    Ok(html(&SourcePage {
        nav: Nav::of(&caller),
        source: SourceView::of(&status),
        pulls: pulls
            .into_iter()
            .map(|p| {
                let (outcome, class) = review_outcome(p.outcome.as_deref());
                PullRow {
                    number: p.number,
                    state: p.state,
                    head: short(Some(&p.head)),
                    outcome,
                    class,
                    summary: p.summary,
                }
            })
            .collect(),
        path: status.path.clone(),
        policy: status.policy.to_string(),
        applied: short(status.last_applied_commit.as_deref()),
        attempts: attempts
            .into_iter()
            .map(|a| AttemptRow {
                id: a.id,
                finished: when(a.finished_at),
                trigger: a.trigger.to_string(),
                commit: short(a.commit_id.as_deref()),
                outcome: a.outcome.to_string(),
                class: match a.outcome {
                    AttemptOutcome::Synced => "ok",
                    AttemptOutcome::OutOfSync => "busy",
                    AttemptOutcome::Failed | AttemptOutcome::Interrupted => "bad",
                },
                revision: a.revision_id,
                problems: problems(a.detail.as_ref()),
                message: a.message,
            })
            .collect(),
        next,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_lines_are_coloured_by_what_they_say() {
        let classes: Vec<&str> = [
            "  # service/shop/web will be created",
            "  + service/shop/web {",
            "      ~ replicas = 1 -> 2",
            "-/+ route/shop/api {",
            "      - env.OLD = \"x\"",
            "    }",
        ]
        .iter()
        .map(|l| plan_line(l).class)
        .collect();
        assert_eq!(classes, ["note", "add", "chg", "del", "del", ""]);
    }

    #[test]
    fn an_invalid_attempt_lists_its_diagnostics_with_file_line_and_column() {
        let detail = serde_json::json!({
            "kind": "invalid",
            "total": 3,
            "diagnostics": [
                {"file": "shop.yaml", "line": 4, "column": 7, "code": "unknown-field",
                 "message": "unknown field `replica`"},
                {"file": "a/b.yaml", "line": 1, "column": 1, "code": "yaml", "message": "bad"}
            ]
        });
        assert_eq!(
            problems(Some(&detail)),
            [
                "shop.yaml:4:7: unknown field `replica`",
                "a/b.yaml:1:1: bad",
                "… and 1 more"
            ]
        );
        let conflict = serde_json::json!({
            "kind": "conflict",
            "conflicts": [{"address": "service/shop/web", "owner": "other"}]
        });
        assert_eq!(
            problems(Some(&conflict)),
            ["service/shop/web belongs to source other"]
        );
        assert!(problems(Some(&serde_json::json!({"kind": "error", "message": "x"}))).is_empty());
        assert!(problems(None).is_empty());
    }

    #[test]
    fn moments_read_in_utc_and_ids_are_shortened() {
        let at = OffsetDateTime::from_unix_timestamp(1_795_000_000).expect("a moment");
        assert_eq!(when(at), "2026-11-18 11:06:40 UTC");
        assert_eq!(short(Some("0123456789abcdef")), "0123456789ab");
        assert_eq!(short(None), "—");
    }
}

#[derive(Template)]
#[template(path = "pull.html")]
pub struct PullPage {
    nav: Nav,
    source: String,
    number: i64,
    repo: String,
    head: String,
    reviewed: String,
    fork: bool,
    state: String,
    outcome: String,
    class: &'static str,
    summary: Option<String>,
    error: Option<String>,
    body: Option<String>,
}

/// `GET /sources/{name}/pulls/{number}`: the last review of a pull request, which its commit
/// status links to.
pub async fn pull(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((source, text)): Path<(String, String)>,
) -> Result<Html<String>, PageError> {
    let source = clean(&source);
    let number: i64 =
        text.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            ApiError::BadRequest(format!("`{text}` is not a pull request number"))
        })?;
    let shown = forge::store::shown(&state.pool, &source, number)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no pull request {number} of source `{source}` is known"
            ))
        })?;
    let (outcome, class) = review_outcome(shown.outcome.as_deref());
    Ok(html(&PullPage {
        nav: Nav::of(&caller),
        number,
        repo: shown.repo,
        head: short(Some(&shown.head)),
        reviewed: shown
            .reviewed
            .as_deref()
            .map(|r| short(Some(r)))
            .unwrap_or_default(),
        fork: shown.fork,
        state: shown.state,
        outcome: outcome.to_owned(),
        class,
        summary: shown.summary,
        error: shown.error,
        // The hidden marker line is for the forge, not for people.
        body: shown.body.map(|b| {
            b.split_once('\n')
                .map_or(b.clone(), |(_, rest)| rest.to_owned())
        }),
        source,
    }))
}
