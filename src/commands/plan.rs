//! `meshploy plan`: the difference between the manifests and PostgreSQL, rendered, and
//! optionally saved for `meshploy apply FILE`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use reconciler::plan::{Plan, render};
use reconciler::{apply, pipeline};

use super::{color, guard, keyring, validate};
use crate::cli::{PlanArgs, PlanFormat};
use crate::{database, manifests};

pub async fn run(args: PlanArgs) -> Result<ExitCode> {
    let home = database::home(args.db.home.clone())?;
    let manifests = manifests::read(&args.dir, &args.from, &home).await?;
    let state = validate::load(&manifests)?;
    let pool = database::connect(&args.db, "plan").await?;
    let keys = keyring(&args.keys)?;
    let desired = apply::prepare_for(&pool, &state, keys.as_ref()).await?;
    let owner = pipeline::Owner {
        source: &manifests.source,
        adopt_from: args.from.adopt_from.as_deref(),
    };
    let preview = pipeline::preview(&pool, owner, desired, &guard(&args.guard)).await?;
    print(&preview.plan, args.format, &manifests.label);
    if !preview.refusals.is_empty() {
        for refusal in &preview.refusals {
            eprintln!("error: {refusal}");
        }
        return Ok(ExitCode::FAILURE);
    }
    let changes = !preview.plan.is_empty();
    if let Some(out) = &args.out {
        let saved = preview.save(manifests.source, manifests.commit, &manifests.files);
        let json = serde_json::to_vec(&saved)?;
        std::fs::write(out, json).with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!(
            "Saved the plan to {}; apply exactly this plan with `meshploy apply {}`.",
            out.display(),
            out.display()
        );
    }
    Ok(match (args.detailed_exitcode, changes) {
        (true, true) => ExitCode::from(2),
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
