//! `meshploy plan`: the difference between the manifests and PostgreSQL, rendered, and
//! optionally saved for `meshploy apply FILE`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use reconciler::apply::{self as core, SavedPlan};
use reconciler::plan::{Plan, render};

use super::{color, guard, keyring, validate};
use crate::cli::{PlanArgs, PlanFormat};
use crate::{database, manifests};

pub async fn run(args: PlanArgs) -> Result<ExitCode> {
    let home = database::home(args.db.home.clone())?;
    let manifests = manifests::read(&args.dir, &args.from, &home).await?;
    let state = validate::load(&manifests)?;
    let pool = database::connect(&args.db, "plan").await?;
    let keys = keyring(&args.keys)?;
    let desired = core::prepare_for(&pool, &state, keys.as_ref()).await?;
    // Planning takes no lock: the plan is a preview, and `apply FILE` checks it for
    // staleness. The transaction only gives one consistent snapshot.
    let live = {
        let mut tx = pool.begin().await?;
        reconciler::store::load_state(&mut tx, &manifests.source).await?
    };
    let plan = core::plan_for(&live, &manifests.source, &desired)?;
    print(&plan, args.format, &manifests.origin);
    let refusals = guard(&args.guard).check(&plan, &live.state);
    if !refusals.is_empty() {
        for refusal in &refusals {
            eprintln!("error: {refusal}");
        }
        return Ok(ExitCode::FAILURE);
    }
    if let Some(out) = &args.out {
        let saved = SavedPlan {
            format: SavedPlan::FORMAT.into(),
            source: manifests.source,
            commit: manifests.commit,
            desired: core::Desired::for_plan(desired, &plan),
            plan: plan.clone(),
        };
        let json = serde_json::to_vec(&saved)?;
        std::fs::write(out, json).with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!(
            "Saved the plan to {}; apply exactly this plan with `meshploy apply {}`.",
            out.display(),
            out.display()
        );
    }
    Ok(match (args.detailed_exitcode, plan.is_empty()) {
        (true, false) => ExitCode::from(2),
        _ => ExitCode::SUCCESS,
    })
}

/// Prints `plan` in `format`; `title` heads the Markdown form.
pub fn print(plan: &Plan, format: PlanFormat, title: &str) {
    match format {
        PlanFormat::Text => print!("{}", render::text(plan, color())),
        PlanFormat::Json => println!("{:#}", render::json(plan)),
        PlanFormat::Markdown => print!(
            "{}",
            render::markdown(plan, &format!("Meshploy plan for `{title}`"))
        ),
    }
}
