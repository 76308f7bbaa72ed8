//! `meshploy apply`: plan and apply in one locked transaction, or apply a saved plan after
//! checking that nothing it touches changed since.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use reconciler::apply::{self, SavedPlan};
use reconciler::pipeline::{self, Checked};
use reconciler::secrets::Keyring;
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
    let auto_approve = args.auto_approve;
    let approve = || if auto_approve { Ok(true) } else { confirm() };
    let actor = args.actor.clone().unwrap_or_else(actor);
    let how = How {
        keys: keys.as_ref(),
        guard: guard(&args.guard),
        lock_timeout_ms: millis(&args),
        actor,
        adopt_from: args.from.adopt_from.clone(),
    };
    plan_and_apply(&pool, manifests, &state, &how, approve).await
}

/// How `plan_and_apply` works: with which keys, under which guard, as whom.
#[derive(Debug)]
pub struct How<'a> {
    pub keys: Option<&'a Keyring>,
    pub guard: reconciler::plan::Guard,
    pub lock_timeout_ms: u64,
    pub actor: String,
    /// `--adopt-from`: the source whose resources this apply takes over.
    pub adopt_from: Option<String>,
}

/// Plans `manifests` (loaded as `state`) against the state as their source, shows the plan,
/// and applies it when it is not empty and `approve` says yes.
pub async fn plan_and_apply(
    pool: &sqlx::PgPool,
    manifests: manifests::Manifests,
    state: &schema::DesiredState,
    how: &How<'_>,
    approve: impl FnOnce() -> Result<bool>,
) -> Result<ExitCode> {
    let desired = apply::prepare_for(pool, state, how.keys).await?;
    let owner = pipeline::Owner {
        source: &manifests.source,
        adopt_from: how.adopt_from.as_deref(),
    };
    let planned = pipeline::lock(pool, owner, how.lock_timeout_ms)
        .await?
        .plan(desired)?;
    print(planned.plan(), PlanFormat::Text, "")?;
    if planned.plan().is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let checked = planned.check(&how.guard)?;
    if !approve()? {
        eprintln!("Apply cancelled; nothing was changed.");
        return Ok(ExitCode::FAILURE);
    }
    let meta = RevisionMeta {
        actor: how.actor.clone(),
        source: manifests.source,
        commit: manifests.commit,
        directory: manifests.directory,
    };
    finish(checked, how.keys, &meta).await
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
    // Only a file that `plan --out` saved against this database, byte for byte, is applied.
    let pool = database::connect(&args.db, "apply").await?;
    if !reconciler::store::saved_plan_recorded(&pool, &bytes).await? {
        bail!(
            "{} is not a plan `meshploy plan --out` saved against this database: it was changed since it was saved, or saved against another database. Make the plan again with `meshploy plan --out FILE`",
            path.display()
        );
    }
    // The manifests saved with the plan are validated again; what is applied is planned from
    // them, and must be exactly the saved plan.
    let state = schema::load(&saved.manifest_files(), &schema::Limits::default())
        .map_err(reconciler::Error::Invalid)
        .with_context(|| format!("the manifests saved in {} do not validate", path.display()))?;
    let keys = keyring(&args.keys)?;
    let desired = apply::prepare_for(&pool, &state, keys.as_ref()).await?;
    let meta = meta(&args, saved.source.clone(), saved.commit.clone());
    let owner = pipeline::Owner {
        source: &saved.source,
        adopt_from: saved.adopt_from.as_deref(),
    };
    let checked = pipeline::lock(&pool, owner, millis(&args))
        .await?
        .saved(saved, desired)?
        .check(&guard(&args.guard))?;
    print(checked.plan(), PlanFormat::Text, "")?;
    if checked.plan().is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    finish(checked, keys.as_ref(), &meta).await
}

/// Applies a checked plan and reports the revision.
pub(super) async fn finish(
    checked: Checked,
    keys: Option<&Keyring>,
    meta: &RevisionMeta,
) -> Result<ExitCode> {
    let summary = checked.plan().summary();
    let revision = checked
        .apply(keys, meta)
        .await
        .context("nothing was applied")?;
    outln!(
        "\nApply complete! Resources: {} added, {} changed, {} destroyed. Revision {revision}.",
        summary.add,
        summary.change,
        summary.destroy
    )?;
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
        directory: None,
    }
}

/// `USER@hostname`: the user from the environment, else the account of this process's user
/// (a service manager or `sudo -i` may set neither `USER` nor `LOGNAME`).
pub fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(account);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("{user}@{host}")
}

/// The name `/etc/passwd` gives this process's user, else `uid N`.
fn account() -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return "unknown".into();
    };
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            (fields.nth(1)? == uid.to_string()).then(|| name.to_owned())
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

fn confirm() -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "apply needs confirmation, and standard input is not a terminal; rerun with --auto-approve, or save a plan with `meshploy plan --out FILE` and apply that"
        );
    }
    out!(
        "\nDo you want to perform these actions? Only 'yes' will be accepted to approve.\n  Enter a value: "
    )?;
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}
