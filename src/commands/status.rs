//! `meshploy status` and `meshploy sync`: where each git source stands, and a sync on
//! demand through the running reconciler.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use reconciler::names::{AttemptOutcome, SourceState, Trigger};
use reconciler::store::{self, LatestAttempt, SourceStatus, Unregistered};
use report::{Lines, printable};

use super::shown_lines;
use crate::cli::{DbArgs, Format};
use crate::database;
use crate::manifests::short;

pub async fn status(db: &DbArgs, format: Format) -> Result<ExitCode> {
    let pool = database::connect(db, "status").await?;
    let sources = store::source_statuses(&pool).await?;
    if format == Format::Json {
        outln!("{}", serde_json::to_string_pretty(&sources)?)?;
    } else {
        let applied = store::unregistered_sources(&pool).await?;
        if sources.is_empty() && applied.is_empty() {
            outln!(
                "No sources yet: `meshploy serve` registers the sources it tracks, and `meshploy up DIR` or `apply DIR` applies a directory as one."
            )?;
        }
        for source in &sources {
            out!("{}", text(source))?;
        }
        for source in &applied {
            out!("{}", unregistered(source))?;
        }
        out!("{}", super::deployments::services(&pool).await?)?;
    }
    let failed = sources.iter().any(|s| s.state == SourceState::Failed);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// One registered source as a block of lines.
fn text(s: &SourceStatus) -> String {
    let commit = |c: &Option<String>| {
        c.as_deref().map_or("none".to_owned(), |c| {
            printable(short(c), Lines::Escape).into_owned()
        })
    };
    let mut out = format!(
        "{}: {} (policy {})\n  repository    {}  branch {}{}\n  last seen     {}\n  last applied  {}{}\n",
        printable(&s.name, Lines::Escape),
        s.state,
        s.policy,
        printable(&s.url, Lines::Escape),
        printable(&s.branch, Lines::Escape),
        if s.path.is_empty() {
            String::new()
        } else {
            format!("  path {}", printable(&s.path, Lines::Escape))
        },
        commit(&s.last_seen_commit),
        commit(&s.last_applied_commit),
        s.last_revision
            .map(|r| format!(" (revision {r})"))
            .unwrap_or_default(),
    );
    if let (Some(trigger), Some(finished), Some(total)) = (&s.trigger, s.finished_at, s.total_ms) {
        out.push_str(&format!(
            "  last attempt  {} by {trigger}, {total} ms (fetch {} ms)\n",
            super::history::timestamp(finished),
            s.fetch_ms.unwrap_or_default()
        ));
    }
    if let Some(from) = &s.rewritten_from {
        out.push_str(&format!(
            "  history rewritten: followed a force-push from {}\n",
            printable(short(from), Lines::Escape)
        ));
    }
    if let Some(message) = &s.message {
        out.push_str(&shown_lines(
            message,
            "  message       ",
            "                ",
        ));
    }
    out
}

/// A source that owns resources without `meshploy serve` tracking it, as a block of lines.
fn unregistered(s: &Unregistered) -> String {
    let how = if s.directory.is_some() {
        "from a directory"
    } else {
        "with `meshploy apply`"
    };
    let mut out = format!(
        "{}: applied {how} (revision {}, {} by {})\n",
        printable(&s.name, Lines::Escape),
        s.revision,
        super::history::timestamp(s.applied_at),
        printable(&s.actor, Lines::Escape),
    );
    if let Some(directory) = &s.directory {
        out.push_str(&format!(
            "  directory     {}\n",
            printable(directory, Lines::Escape)
        ));
    }
    out.push_str(&format!(
        "  owns          {} {}\n",
        s.resources,
        if s.resources == 1 {
            "resource"
        } else {
            "resources"
        }
    ));
    out
}

pub async fn sync(db: &DbArgs, source: &str, wait: Duration, no_wait: bool) -> Result<ExitCode> {
    let pool = database::connect(db, "sync").await?;
    let known = store::source_statuses(&pool).await?;
    if !known.iter().any(|s| s.name == source) {
        let names: Vec<&str> = known.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "no source named `{source}`; known sources: {}",
            if names.is_empty() {
                "none (`meshploy serve` registers them)".to_owned()
            } else {
                names.join(", ")
            }
        );
    }
    let before = store::latest_attempt(&pool, source).await?.map(|a| a.id);
    store::request_sync(&pool, source, Trigger::Request).await?;
    if no_wait {
        outln!("Sync of `{source}` requested.")?;
        return Ok(ExitCode::SUCCESS);
    }
    let started = Instant::now();
    while started.elapsed() < wait {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(LatestAttempt {
            id,
            outcome,
            message,
        }) = store::latest_attempt(&pool, source).await?
        else {
            continue;
        };
        if Some(id) == before {
            continue;
        }
        outln!("{}: {outcome}", printable(source, Lines::Escape))?;
        if let Some(message) = message {
            out!("{}", shown_lines(&message, "", ""))?;
        }
        return Ok(if outcome == AttemptOutcome::Failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    bail!(
        "no reconciler synced `{source}` within {} s; is `meshploy serve` running against this database?",
        wait.as_secs()
    )
}
