//! `meshploy history`, `meshploy show` and `meshploy state list`: reading what PostgreSQL
//! holds.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use reconciler::plan::Plan;
use reconciler::store;
use report::{Lines, printable};

use super::plan::print;
use crate::cli::{DbArgs, Format, PlanFormat, StateCommand};
use crate::{database, manifests};

pub async fn list(db: &DbArgs, limit: i64, format: Format) -> Result<ExitCode> {
    let pool = database::connect(db, "history").await?;
    let revisions = store::revisions(&pool, limit).await?;
    match format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&revisions)?)?,
        Format::Text if revisions.is_empty() => outln!("No revisions yet.")?,
        Format::Text => {
            outln!(
                "{:>8}  {:<27}  {:<14}  {:<24}  SOURCE",
                "REVISION",
                "APPLIED",
                "CHANGES",
                "ACTOR"
            )?;
            for r in &revisions {
                let changes = format!("+{} ~{} -{}", r.added, r.changed, r.destroyed);
                outln!(
                    "{:>8}  {:<27}  {changes:<14}  {:<24}  {}{}",
                    r.id,
                    timestamp(r.applied_at),
                    printable(&r.actor, Lines::Escape),
                    printable(&r.source, Lines::Escape),
                    r.commit_id
                        .as_deref()
                        .map(|c| format!(" @ {}", printable(c, Lines::Escape)))
                        .unwrap_or_default()
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn show(db: &DbArgs, id: i64, format: PlanFormat) -> Result<ExitCode> {
    let pool = database::connect(db, "show").await?;
    let Some(store::RevisionPlan { revision, plan }) = store::revision(&pool, id).await? else {
        bail!("there is no revision {id}; `meshploy history` lists them");
    };
    let plan: Plan = serde_json::from_str(&plan)
        .with_context(|| format!("the plan stored with revision {id} cannot be read"))?;
    if format == PlanFormat::Text {
        outln!(
            "Revision {} applied {} by {} from {}{}\n",
            revision.id,
            timestamp(revision.applied_at),
            printable(&revision.actor, Lines::Escape),
            printable(&revision.source, Lines::Escape),
            revision
                .commit_id
                .as_deref()
                .map(|c| format!(" at commit {}", printable(c, Lines::Escape)))
                .unwrap_or_default()
        )?;
    }
    print(&plan, format, &format!("revision {id}"))?;
    Ok(ExitCode::SUCCESS)
}

pub async fn state(command: StateCommand) -> Result<ExitCode> {
    let StateCommand::List { format, db } = command;
    let pool = database::connect(&db, "state list").await?;
    let resources = store::stored_resources(&pool).await?;
    match format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&resources)?)?,
        Format::Text if resources.is_empty() => outln!("The state is empty.")?,
        Format::Text => {
            let width = resources
                .iter()
                .map(|r| r.address.to_string().len())
                .max()
                .unwrap_or(0);
            for r in &resources {
                let commit = r
                    .commit
                    .as_deref()
                    .map(|c| format!("  commit {}", manifests::short(c)))
                    .unwrap_or_default();
                outln!(
                    "{:<width$}  version {:<6} revision {:<5} {}{commit}",
                    r.address.to_string(),
                    r.version,
                    r.revision,
                    printable(&r.source, Lines::Escape)
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn timestamp(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}
