//! One sync of a git source: fetch, read the branch's tree, validate, plan, and apply (or,
//! for a manual source, only plan), with the attempt recorded.
//!
//! It fails closed: a fetch error, a missing branch or path, manifests that do not
//! validate, an ownership conflict or a plan the guard refuses leave the state untouched
//! and mark the source `failed` with the reason. Nothing is deleted because something could
//! not be read.

use std::path::PathBuf;
use std::time::Instant;

use schema::{Diagnostic, Limits};
use serde::Serialize;
use sqlx::PgPool;

use crate::Error;
use crate::apply;
use crate::error::invalid_headline;
use crate::names::{AttemptOutcome, Policy, SourceState, Trigger};
use crate::pipeline;
use crate::plan::{Conflict, Guard, Refusal, Summary};
use crate::secrets::Keyring;
use crate::store::{self, Attempt, RevisionMeta, SourceRow};

/// A tracked (repository, branch, path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// Owns the resources this source declares; names the source in status and revisions.
    pub name: String,
    /// A local repository path, or a file://, git://, https:// or ssh:// URL.
    pub url: String,
    pub branch: String,
    /// Directory inside the repository holding the manifests; empty for the root.
    pub path: String,
    pub policy: Policy,
}

impl Source {
    /// Registers (or updates) this source in the database.
    pub async fn register(&self, pool: &PgPool) -> Result<(), Error> {
        let url = git::redact(&self.url);
        store::upsert_source(
            pool,
            &SourceRow {
                name: &self.name,
                url: &url,
                branch: &self.branch,
                path: &self.path,
                policy: self.policy,
            },
        )
        .await
    }
}

/// What every sync needs besides the source.
#[derive(Debug)]
pub struct Settings {
    /// Where remote repositories are fetched to.
    pub cache: PathBuf,
    pub keys: Option<Keyring>,
    pub guard: Guard,
    pub lock_timeout_ms: u64,
    /// Recorded as the actor of the revisions it applies.
    pub actor: String,
}

/// How a sync ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The branch is where it was last applied; nothing was recorded.
    Unchanged,
    /// An attempt was recorded with this outcome.
    Attempted {
        outcome: AttemptOutcome,
        revision: Option<i64>,
    },
}

/// What an attempt found, as data: stored as JSON beside the attempt's message, so the
/// console and PR comments can show each diagnostic, refusal and owner without parsing text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Detail {
    /// Applied as `revision`, or nothing to change (no revision).
    Synced {
        #[serde(skip_serializing_if = "Option::is_none")]
        revision: Option<i64>,
        summary: Summary,
    },
    /// A manual source's plan, waiting for someone to apply it.
    Pending { summary: Summary },
    /// The manifests do not validate: the first diagnostics, and how many there are.
    Invalid {
        diagnostics: Vec<Diagnostic>,
        total: usize,
    },
    /// The guard refused the plan.
    Refused { refusals: Vec<Refusal> },
    /// The manifests declare what another source owns.
    Conflict { conflicts: Vec<Conflict> },
    /// Anything else that stopped the attempt: the fetch, the lock, the database, a secret.
    Error { message: String },
}

/// How many diagnostics a failed attempt records; the rest are counted.
const SHOWN_DIAGNOSTICS: usize = 10;

impl Detail {
    fn outcome(&self) -> AttemptOutcome {
        match self {
            Detail::Synced { .. } => AttemptOutcome::Synced,
            Detail::Pending { .. } => AttemptOutcome::OutOfSync,
            Detail::Invalid { .. }
            | Detail::Refused { .. }
            | Detail::Conflict { .. }
            | Detail::Error { .. } => AttemptOutcome::Failed,
        }
    }

    fn failed(error: Error) -> Detail {
        match error {
            Error::Invalid(diagnostics) => Detail::Invalid {
                total: diagnostics.len(),
                diagnostics: diagnostics.into_iter().take(SHOWN_DIAGNOSTICS).collect(),
            },
            Error::Refused(refusals) => Detail::Refused { refusals },
            Error::Conflict { conflicts, .. } => Detail::Conflict { conflicts },
            other => Detail::Error {
                message: other.to_string(),
            },
        }
    }

    /// The text recorded as the attempt's message and shown by `meshploy status`, if any.
    pub fn message(&self, source: &str) -> Option<String> {
        let error = |error: Error| Some(error.to_string());
        match self {
            Detail::Synced { .. } => None,
            Detail::Pending { summary } => Some(format!(
                "Plan: {} to add, {} to change, {} to destroy; not applied, because the policy is manual.",
                summary.add, summary.change, summary.destroy
            )),
            Detail::Invalid { diagnostics, total } => {
                let mut lines: Vec<String> = diagnostics.iter().map(Diagnostic::one_line).collect();
                if *total > diagnostics.len() {
                    lines.push(format!("and {} more", total - diagnostics.len()));
                }
                Some(format!(
                    "{}:\n{}",
                    invalid_headline(*total),
                    lines.join("\n")
                ))
            }
            Detail::Refused { refusals } => error(Error::Refused(refusals.clone())),
            Detail::Conflict { conflicts } => error(Error::Conflict {
                source_name: source.to_owned(),
                conflicts: conflicts.clone(),
            }),
            Detail::Error { message } => Some(message.clone()),
        }
    }
}

/// Syncs `source` once. Errors are recorded on the source, not returned; only a failure to
/// record them (the database being away) is an `Err`.
pub async fn sync(
    pool: &PgPool,
    source: &Source,
    settings: &Settings,
    trigger: Trigger,
) -> Result<Outcome, Error> {
    let started_at = time::OffsetDateTime::now_utc();
    let clock = Instant::now();
    let position = store::source_position(pool, &source.name)
        .await?
        .unwrap_or_default();
    let last_applied = position.last_applied_commit;
    // A branch still at the commit last applied is not planned again, unless asked. A file
    // watch fires for every file a push changes under `refs/`: a branch still at the commit
    // last attempted, whatever came of it, has not moved.
    let skip_if_at = match trigger {
        Trigger::Request => None,
        Trigger::Watch if position.last_seen_commit.is_some() => position.last_seen_commit,
        _ if position.state == Some(SourceState::Synced) => last_applied.clone(),
        _ => None,
    };
    let fetched = {
        let (url, branch, path) = (
            source.url.clone(),
            source.branch.clone(),
            source.path.clone(),
        );
        let cache = settings.cache.clone();
        let last_applied = last_applied.clone();
        tokio::task::spawn_blocking(move || {
            fetch(&url, &branch, &path, &cache, last_applied, skip_if_at)
        })
        .await
        .map_err(|e| {
            Error::Git(git::GitError::Fetch {
                url: git::redact(&source.url),
                detail: e.to_string(),
            })
        })?
    };
    let fetch_ms = millis(clock);
    let (snapshot, rewritten_from) = match fetched {
        Ok(Fetched::Unchanged) => {
            store::touch_source(pool, &source.name).await?;
            return Ok(Outcome::Unchanged);
        }
        Ok(Fetched::Commit {
            snapshot,
            rewritten_from,
        }) => (snapshot, rewritten_from),
        Err(e) => {
            let detail = Detail::failed(Error::Git(e));
            let attempt = Attempt {
                fetch_ms,
                total_ms: millis(clock),
                ..attempt(source, trigger, started_at, None, None, &detail)
            };
            return record(pool, &attempt).await;
        }
    };
    if let Some(old) = &rewritten_from {
        tracing::warn!(
            source = %source.name,
            from = %old,
            to = %snapshot.commit,
            "history rewritten (force-push); following the branch"
        );
    }
    store::mark_applying(pool, &source.name, &snapshot.commit).await?;
    let detail =
        match plan_and_apply(pool, source, settings, snapshot.files, &snapshot.commit).await {
            Ok(detail) => detail,
            Err(error) => Detail::failed(error),
        };
    let attempt = Attempt {
        fetch_ms,
        total_ms: millis(clock),
        ..attempt(
            source,
            trigger,
            started_at,
            Some(&snapshot.commit),
            rewritten_from.as_deref(),
            &detail,
        )
    };
    record(pool, &attempt).await
}

/// The attempt row for `detail`, timings aside.
fn attempt<'a>(
    source: &'a Source,
    trigger: Trigger,
    started_at: time::OffsetDateTime,
    commit: Option<&'a str>,
    rewritten_from: Option<&'a str>,
    detail: &Detail,
) -> Attempt<'a> {
    Attempt {
        source: &source.name,
        trigger,
        started_at,
        commit,
        rewritten_from,
        outcome: detail.outcome(),
        message: detail.message(&source.name),
        // A detail holds strings, numbers and lists only, which always serialise.
        detail: serde_json::to_value(detail).ok(),
        revision: match detail {
            Detail::Synced { revision, .. } => *revision,
            _ => None,
        },
        fetch_ms: 0,
        total_ms: 0,
    }
}

async fn record(pool: &PgPool, attempt: &Attempt<'_>) -> Result<Outcome, Error> {
    store::record_attempt(pool, attempt).await?;
    // A failed sync is what an operator must notice, so it is logged a level higher.
    macro_rules! log_attempt {
        ($level:ident) => {
            tracing::$level!(
                source = attempt.source,
                trigger = %attempt.trigger,
                commit = attempt.commit,
                outcome = %attempt.outcome,
                revision = attempt.revision,
                total_ms = attempt.total_ms,
                message = attempt.message,
                "sync attempt"
            )
        };
    }
    if attempt.outcome == AttemptOutcome::Failed {
        log_attempt!(warn);
    } else {
        log_attempt!(info);
    }
    Ok(Outcome::Attempted {
        outcome: attempt.outcome,
        revision: attempt.revision,
    })
}

enum Fetched {
    Unchanged,
    Commit {
        snapshot: git::Snapshot,
        rewritten_from: Option<String>,
    },
}

/// Fetches and reads the branch (blocking). `skip_if_at` is the commit to stop at when the
/// branch has not moved.
fn fetch(
    url: &str,
    branch: &str,
    path: &str,
    cache: &std::path::Path,
    last_applied: Option<String>,
    skip_if_at: Option<String>,
) -> Result<Fetched, git::GitError> {
    let repo = git::open(url, cache)?;
    let commit = repo.branch(branch)?;
    if skip_if_at.as_deref() == Some(commit.as_str()) {
        return Ok(Fetched::Unchanged);
    }
    let rewritten_from = match last_applied {
        Some(old) if !repo.descends(&commit, &old)? => Some(old),
        _ => None,
    };
    let snapshot = repo.read(&commit, path, &Limits::default())?;
    Ok(Fetched::Commit {
        snapshot,
        rewritten_from,
    })
}

/// Validates, plans and (for an auto source) applies one commit through the pipeline.
/// Validation runs off the async thread: on 10,000 resources it takes hundreds of
/// milliseconds, which would stall the API and the leader's heartbeat.
async fn plan_and_apply(
    pool: &PgPool,
    source: &Source,
    settings: &Settings,
    files: Vec<schema::ManifestFile>,
    commit: &str,
) -> Result<Detail, Error> {
    let state = tokio::task::spawn_blocking(move || schema::load(&files, &Limits::default()))
        .await
        .map_err(|e| Error::Task(e.to_string()))?
        .map_err(Error::Invalid)?;
    let desired = apply::prepare_for(pool, &state, settings.keys.as_ref()).await?;
    let owner = pipeline::Owner::source(&source.name);
    let locked = pipeline::lock(pool, owner, settings.lock_timeout_ms).await?;
    let planned = locked.plan(desired)?;
    let summary = planned.plan().summary();
    if planned.plan().is_empty() {
        return Ok(Detail::Synced {
            revision: None,
            summary,
        });
    }
    let checked = planned.check(&settings.guard)?;
    if source.policy == Policy::Manual {
        return Ok(Detail::Pending { summary });
    }
    let meta = RevisionMeta {
        actor: settings.actor.clone(),
        source: source.name.clone(),
        commit: Some(commit.to_owned()),
        directory: None,
    };
    let revision = checked.apply(settings.keys.as_ref(), &meta).await?;
    Ok(Detail::Synced {
        revision: Some(revision),
        summary,
    })
}

fn millis(since: Instant) -> i32 {
    i32::try_from(since.elapsed().as_millis()).unwrap_or(i32::MAX)
}
