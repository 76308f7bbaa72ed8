//! `meshploy apply`: plan and apply in one locked transaction, or apply a saved plan after
//! checking that nothing it touches changed since.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use reconciler::apply::{self as core, SavedPlan};
use reconciler::plan::{self, Plan};
use reconciler::store::RevisionMeta;

use super::plan::print;
use super::{guard, keyring, validate};
use crate::cli::{ApplyArgs, PlanFormat};
use crate::{database, manifests};

pub async fn run(args: ApplyArgs) -> Result<ExitCode> {
    if args.from.repo.is_none() && args.target.is_file() {
        return apply_saved(args).await;
    }
    let home = database::home(args.db.home.clone())?;
    let manifests = manifests::read(&args.target, &args.from, &home).await?;
    let state = validate::load(&manifests)?;
    let pool = database::connect(&args.db, "apply").await?;
    let keys = keyring(&args.keys)?;
    let desired = core::prepare_for(&pool, &state, keys.as_ref()).await?;
    let locked = core::lock(&pool, &manifests.source, millis(&args)).await?;
    let plan = locked.plan(&desired)?;
    print(&plan, PlanFormat::Text, "");
    if plan.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let refusals = locked.refusals(&guard(&args.guard), &plan);
    if !refusals.is_empty() {
        return Err(reconciler::Error::Refused(refusals).into());
    }
    if !args.auto_approve && !confirm()? {
        eprintln!("Apply cancelled; nothing was changed.");
        return Ok(ExitCode::FAILURE);
    }
    let meta = meta(&args, manifests.source, manifests.commit);
    let revision = locked
        .apply(&plan, &desired, keys.as_ref(), &meta)
        .await
        .context("nothing was applied")?;
    done(&plan, revision);
    Ok(ExitCode::SUCCESS)
}

/// Applies a saved plan exactly, or refuses it as stale. A saved plan was reviewed already,
/// so it is not shown for confirmation again (as in Terraform).
async fn apply_saved(args: ApplyArgs) -> Result<ExitCode> {
    let path = &args.target;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let saved: SavedPlan = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not a plan saved by `meshploy plan --out`",
            path.display()
        )
    })?;
    if saved.format != SavedPlan::FORMAT {
        bail!(
            "{} is a plan of format `{}`; this meshploy reads `{}`",
            path.display(),
            saved.format,
            SavedPlan::FORMAT
        );
    }
    let pool = database::connect(&args.db, "apply").await?;
    let keys = keyring(&args.keys)?;
    let locked = core::lock(&pool, &saved.source, millis(&args)).await?;
    let stale = plan::stale(&saved.plan, &locked.live.state);
    if !stale.is_empty() {
        return Err(reconciler::Error::Stale(stale).into());
    }
    core::check_ownership(&locked.live, &saved.source, &saved.desired.entries)?;
    let refusals = locked.refusals(&guard(&args.guard), &saved.plan);
    if !refusals.is_empty() {
        return Err(reconciler::Error::Refused(refusals).into());
    }
    print(&saved.plan, PlanFormat::Text, "");
    if saved.plan.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let meta = meta(&args, saved.source.clone(), saved.commit.clone());
    let revision = locked
        .apply(&saved.plan, &saved.desired, keys.as_ref(), &meta)
        .await
        .context("nothing was applied")?;
    done(&saved.plan, revision);
    Ok(ExitCode::SUCCESS)
}

fn millis(args: &ApplyArgs) -> u64 {
    u64::try_from(args.lock_timeout.as_millis()).unwrap_or(u64::MAX)
}

fn meta(args: &ApplyArgs, source: String, commit: Option<String>) -> RevisionMeta {
    RevisionMeta {
        actor: args.actor.clone().unwrap_or_else(actor),
        source,
        commit,
    }
}

/// `USER@hostname`, as far as the environment tells.
fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("{user}@{host}")
}

fn confirm() -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "apply needs confirmation, and standard input is not a terminal; rerun with --auto-approve, or save a plan with `meshploy plan --out FILE` and apply that"
        );
    }
    print!(
        "\nDo you want to perform these actions? Only 'yes' will be accepted to approve.\n  Enter a value: "
    );
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}

fn done(plan: &Plan, revision: i64) {
    let s = plan.summary();
    println!(
        "\nApply complete! Resources: {} added, {} changed, {} destroyed. Revision {revision}.",
        s.add, s.change, s.destroy
    );
}
