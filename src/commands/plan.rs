//! `meshploy plan`: the difference between the manifests and PostgreSQL, rendered, and
//! optionally saved for `meshploy apply FILE`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use reconciler::apply::SavedPlan;
use reconciler::plan::{self, Plan, render};
use reconciler::store;

use super::{color, guard, keyring, prepare, validate};
use crate::cli::{PlanArgs, PlanFormat};
use crate::database;

pub async fn run(args: PlanArgs) -> Result<ExitCode> {
    let state = validate::load(&args.dir)?;
    let pool = database::connect(&args.db, "plan").await?;
    let keys = keyring(&args.keys)?;
    let desired = prepare(&pool, &state, keys.as_ref()).await?;
    let actual = {
        let mut conn = pool.acquire().await?;
        store::load_state(&mut conn).await?
    };
    let plan = plan::diff(&desired.entries, &actual);
    let source = source(&args.dir)?;
    print(&plan, args.format, &source);
    let refusals = guard(&args.guard).check(&plan, &actual);
    if !refusals.is_empty() {
        for refusal in &refusals {
            eprintln!("error: {refusal}");
        }
        return Ok(ExitCode::FAILURE);
    }
    if let Some(out) = &args.out {
        let saved = SavedPlan {
            format: SavedPlan::FORMAT.into(),
            source,
            desired: desired.for_plan(&plan),
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

/// How a revision names a directory of manifests.
pub fn source(dir: &Path) -> Result<String> {
    let dir =
        std::fs::canonicalize(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    Ok(format!("local:{}", dir.display()))
}
