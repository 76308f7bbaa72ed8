//! One sync of a git source: fetch, read the branch's tree, validate, plan, and apply (or,
//! for a manual source, only plan), with the attempt recorded.
//!
//! It fails closed: a fetch error, a missing branch or path, manifests that do not
//! validate, an ownership conflict or a plan the guard refuses leave the state untouched
//! and mark the source `failed` with the reason. Nothing is deleted because something could
//! not be read.

use std::path::PathBuf;
use std::time::Instant;

use schema::Limits;
use serde::Deserialize;
use sqlx::PgPool;

use crate::Error;
use crate::apply;

use crate::plan::Guard;
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

/// What happens to a new commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Apply each new commit.
    #[default]
    Auto,
    /// Plan only, and report the source out of sync until someone applies.
    Manual,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Auto => "auto",
            Policy::Manual => "manual",
        }
    }
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
                policy: self.policy.as_str(),
            },
        )
        .await
    }
}

/// What asked for a sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The reconciler started or took over.
    Start,
    /// The poll interval passed.
    Poll,
    /// A ref of a local repository changed.
    Watch,
    /// A verified push webhook.
    Webhook,
    /// `meshploy sync` or the sync API: always a full attempt.
    Request,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Poll => "poll",
            Trigger::Watch => "watch",
            Trigger::Webhook => "webhook",
            Trigger::Request => "request",
        }
    }

    pub fn parse(text: &str) -> Option<Trigger> {
        [
            Trigger::Start,
            Trigger::Poll,
            Trigger::Watch,
            Trigger::Webhook,
            Trigger::Request,
        ]
        .into_iter()
        .find(|t| t.as_str() == text)
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
    /// An attempt was recorded with this outcome (`synced`, `out-of-sync`, `failed`).
    Attempted {
        outcome: String,
        revision: Option<i64>,
    },
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
    let (state, last_applied) = store::source_position(pool, &source.name)
        .await?
        .unwrap_or_default();
    let skip_if_at = (trigger != Trigger::Request && state == "synced")
        .then(|| last_applied.clone())
        .flatten();
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
    let mut attempt = Attempt {
        source: &source.name,
        trigger: trigger.as_str(),
        started_at,
        commit: None,
        rewritten_from: None,
        outcome: "failed",
        message: None,
        revision: None,
        fetch_ms,
        total_ms: 0,
    };
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
            let message = e.to_string();
            attempt.message = Some(&message);
            attempt.total_ms = millis(clock);
            return record(pool, &attempt).await;
        }
    };
    attempt.commit = Some(&snapshot.commit);
    attempt.rewritten_from = rewritten_from.as_deref();
    if let Some(old) = &rewritten_from {
        tracing::warn!(
            source = %source.name,
            from = %old,
            to = %snapshot.commit,
            "history rewritten (force-push); following the branch"
        );
    }
    store::mark_applying(pool, &source.name, &snapshot.commit).await?;
    let result = plan_and_apply(pool, source, settings, &snapshot).await;
    attempt.total_ms = millis(clock);
    let message;
    match result {
        Ok(Applied::Synced(revision)) => {
            attempt.outcome = "synced";
            attempt.revision = revision;
        }
        Ok(Applied::Pending(summary)) => {
            attempt.outcome = "out-of-sync";
            message = summary;
            attempt.message = Some(&message);
        }
        Err(text) => {
            message = text;
            attempt.message = Some(&message);
        }
    }
    record(pool, &attempt).await
}

async fn record(pool: &PgPool, attempt: &Attempt<'_>) -> Result<Outcome, Error> {
    store::record_attempt(pool, attempt).await?;
    // A failed sync is what an operator must notice, so it is logged a level higher.
    macro_rules! log_attempt {
        ($level:ident) => {
            tracing::$level!(
                source = attempt.source,
                trigger = attempt.trigger,
                commit = attempt.commit,
                outcome = attempt.outcome,
                revision = attempt.revision,
                total_ms = attempt.total_ms,
                message = attempt.message,
                "sync attempt"
            )
        };
    }
    if attempt.outcome == "failed" {
        log_attempt!(warn);
    } else {
        log_attempt!(info);
    }
    Ok(Outcome::Attempted {
        outcome: attempt.outcome.to_owned(),
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

enum Applied {
    /// Applied (with the revision, or none when there was nothing to change).
    Synced(Option<i64>),
    /// A manual source with a plan waiting: its summary.
    Pending(String),
}

/// How many diagnostics a failed attempt records; the rest are counted.
const SHOWN_DIAGNOSTICS: usize = 10;

/// Validates, plans and (for an auto source) applies one commit. Every failure comes back as
/// the text recorded on the source.
async fn plan_and_apply(
    pool: &PgPool,
    source: &Source,
    settings: &Settings,
    snapshot: &git::Snapshot,
) -> Result<Applied, String> {
    let state = schema::load(&snapshot.files, &Limits::default()).map_err(|diagnostics| {
        let mut lines: Vec<String> = diagnostics
            .iter()
            .take(SHOWN_DIAGNOSTICS)
            .map(|d| {
                let hint = match &d.hint {
                    // A hint next to a redacted line could echo what was pasted there.
                    Some(hint) if !d.redact_line => format!(" (help: {hint})"),
                    _ => String::new(),
                };
                format!(
                    "{}:{}:{}: {} [{}]{hint}",
                    d.file, d.line, d.column, d.message, d.code
                )
            })
            .collect();
        if diagnostics.len() > SHOWN_DIAGNOSTICS {
            lines.push(format!(
                "and {} more",
                diagnostics.len() - SHOWN_DIAGNOSTICS
            ));
        }
        let count = match diagnostics.len() {
            1 => "1 problem".to_owned(),
            n => format!("{n} problems"),
        };
        format!(
            "the manifests are invalid ({count}); nothing was applied:\n{}",
            lines.join("\n")
        )
    })?;
    let text = |e: Error| e.to_string();
    let desired = apply::prepare_for(pool, &state, settings.keys.as_ref())
        .await
        .map_err(text)?;
    let locked = apply::lock(pool, &source.name, settings.lock_timeout_ms)
        .await
        .map_err(text)?;
    let plan = locked.plan(&desired).map_err(text)?;
    if plan.is_empty() {
        return Ok(Applied::Synced(None));
    }
    let refusals = locked.refusals(&settings.guard, &plan);
    if !refusals.is_empty() {
        return Err(Error::Refused(refusals).to_string());
    }
    if source.policy == Policy::Manual {
        let s = plan.summary();
        return Ok(Applied::Pending(format!(
            "Plan: {} to add, {} to change, {} to destroy; not applied, because the policy is manual.",
            s.add, s.change, s.destroy
        )));
    }
    let meta = RevisionMeta {
        actor: settings.actor.clone(),
        source: source.name.clone(),
        commit: Some(snapshot.commit.clone()),
    };
    let revision = locked
        .apply(&plan, &desired, settings.keys.as_ref(), &meta)
        .await
        .map_err(text)?;
    Ok(Applied::Synced(Some(revision)))
}

fn millis(since: Instant) -> i32 {
    i32::try_from(since.elapsed().as_millis()).unwrap_or(i32::MAX)
}
