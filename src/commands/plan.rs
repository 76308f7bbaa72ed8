//! `meshploy plan`: the difference between the manifests and PostgreSQL, rendered, and
//! optionally saved for `meshploy apply FILE`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use reconciler::plan::{Plan, render};
use reconciler::{apply, pipeline};

use super::{color, guard, keyring, validate};
use crate::cli::{CommentArgs, ForgeKind, PlanArgs, PlanFormat};
use crate::{database, manifests};

pub async fn run(args: PlanArgs) -> Result<ExitCode> {
    if let Some(pr) = &args.comment.comment {
        return comment(&args, pr).await;
    }
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
    print(&preview.plan, args.format, &manifests.label)?;
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
        // The file's digest goes into the database first: `apply FILE` applies only a file
        // recorded there, so an edited one is refused whatever the edit.
        reconciler::store::record_saved_plan(&pool, &json, &saved.source).await?;
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
pub fn print(plan: &Plan, format: PlanFormat, title: &str) -> Result<()> {
    match format {
        PlanFormat::Text => out!("{}", render::text(plan, color())),
        PlanFormat::Json => outln!("{:#}", render::json(plan)),
        PlanFormat::Markdown => out!(
            "{}",
            render::markdown(plan, &format!("Meshploy plan for `{title}`"))
        ),
    }
}

/// `plan --comment`: the review the server makes of a pull request, from a CI job. Invalid
/// manifests, a refused plan and any other failure are posted too, then reported here.
async fn comment(args: &PlanArgs, pr: &forge::PullRef) -> Result<ExitCode> {
    let home = database::home(args.db.home.clone())?;
    let manifests = manifests::read(&args.dir, &args.from, &home).await?;
    let head = args
        .comment
        .head
        .clone()
        .or_else(|| manifests.commit.clone())
        .context("give --head SHA: the pull request's head commit, which the status is set on")?;
    let client = forge_client(&args.comment)?;
    let pool = database::connect(&args.db, "plan").await?;
    let keys = keyring(&args.keys)?;
    let source = &manifests.source;
    let digest = forge::comment::manifests_digest(&manifests.files);
    forge::review::mark_outdated(&client, pr, source, &head, &digest).await?;
    let review = forge::review::plan(
        &pool,
        source,
        manifests.files.clone(),
        keys.as_ref(),
        &guard(&args.guard),
    )
    .await;
    let said = forge::review::Said {
        head: &head,
        manifests: &digest,
        review: &review,
        preview: &forge::comment::Preview::Off,
    };
    let published = forge::review::publish(&client, pr, source, said, None).await?;
    let done = match published {
        forge::review::Published::Created(id) => format!("posted comment {id}"),
        forge::review::Published::Edited(id) => format!("updated comment {id}"),
        forge::review::Published::Unchanged(id) => format!("comment {id} is up to date"),
    };
    eprintln!("{pr}: {done}; status meshploy/plan/{source} set on {head}.");
    match review {
        forge::Review::Planned { plan, refusals } => {
            print(&plan, args.format, &manifests.label)?;
            for refusal in &refusals {
                eprintln!("error: {refusal}");
            }
            Ok(if refusals.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        forge::Review::Invalid { diagnostics } => {
            for diagnostic in diagnostics {
                let line = diagnostic.redacted().one_line();
                eprintln!("{}", report::printable(&line, report::Lines::Escape));
            }
            Ok(ExitCode::FAILURE)
        }
        forge::Review::Failed { reason } => {
            eprintln!("error: {}", report::printable(&reason, report::Lines::Keep));
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The forge client `--forge`, `--forge-api` and the token describe.
fn forge_client(args: &CommentArgs) -> Result<forge::Client> {
    let token = match &args.forge_token_file {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the forge token from {}", file.display()))?,
        None => std::env::var("MESHPLOY_FORGE_TOKEN")
            .or_else(|_| std::env::var("GITHUB_TOKEN"))
            .ok()
            .filter(|t| !t.trim().is_empty())
            .context(
                "no forge token: give --forge-token-file FILE, or set MESHPLOY_FORGE_TOKEN (or GITHUB_TOKEN)",
            )?,
    };
    if token.trim().is_empty() {
        anyhow::bail!("the forge token is empty");
    }
    let (kind, api) = match args.forge {
        ForgeKind::Github => (
            forge::Kind::GitHub,
            args.forge_api
                .clone()
                .or_else(|| std::env::var("GITHUB_API_URL").ok())
                .unwrap_or_else(|| "https://api.github.com".to_owned()),
        ),
        ForgeKind::Gitea => (
            forge::Kind::Gitea,
            args.forge_api
                .clone()
                .context("give --forge-api https://HOST/api/v1 for a Gitea or Forgejo forge")?,
        ),
    };
    Ok(forge::Client::new(kind, &api, &token)?.with_user(args.forge_user.as_deref()))
}
