//! `meshploy deployments`, `meshploy logs` and `meshploy rollback`: what the controller did,
//! what the replicas and builds printed, and the way back to an earlier release.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use builder::logs::{self, Selection};
use builder::release::Resolved;
use builder::store::{self, Deployment};
use reconciler::names::{DeployTrigger, DeploymentState};
use sqlx::PgPool;

use super::shown_lines;
use crate::cli::{DbArgs, Format, LogsArgs};
use crate::database;

pub async fn list(
    db: &DbArgs,
    service: Option<&str>,
    limit: i64,
    format: Format,
) -> Result<ExitCode> {
    let pool = database::connect(db, "deployments").await?;
    let service = match service {
        Some(text) => Some(store::find_service(&pool, text).await?),
        None => None,
    };
    let rows = store::deployments(&pool, service.as_ref(), limit).await?;
    let pins = store::pins(&pool).await?;
    if format == Format::Json {
        let rows: Vec<serde_json::Value> = rows.iter().map(json).collect();
        outln!("{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        outln!("No deployments yet.")?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:<6} {:<24} {:<12} {:<9} {:<13} {:<9} {:<20} TOOK",
        "ID",
        "SERVICE",
        "STATE",
        "TRIGGER",
        "RELEASE",
        "REVISION",
        "QUEUED"
    )?;
    for row in &rows {
        let took = row
            .finished_at
            .map(|end| format!("{:.1} s", (end - row.queued_at).as_seconds_f64()))
            .unwrap_or_default();
        outln!(
            "{:<6} {:<24} {:<12} {:<9} {:<13} {:<9} {:<20} {took}",
            row.id,
            format!("{}/{}", row.project, row.service),
            row.state.as_str(),
            row.trigger.as_str(),
            &row.release_digest[..12],
            row.revision_id.map(|r| r.to_string()).unwrap_or_default(),
            timestamp(row.queued_at),
        )?;
        let key = builder::decide::ServiceKey {
            project: row.project.clone(),
            name: row.service.clone(),
        };
        if row.state == DeploymentState::Healthy
            && let Some(pin) = pins.get(&key)
        {
            outln!(
                "       pinned to deployment {} by a rollback; the next change to the service in git releases it",
                pin.deployment
            )?;
        }
        if let Some(degraded) = &row.degraded {
            out!(
                "{}",
                shown_lines(degraded, "       degraded: ", "         ")
            )?;
        }
        if let Some(reason) = &row.reason {
            out!("{}", shown_lines(reason, "       ", "       "))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What runs, per service: the serving deployment, a newer one that failed or is under way,
/// the pin and the degradation, as `meshploy status` prints it.
pub async fn services(pool: &PgPool) -> Result<String> {
    use std::fmt::Write;
    let rows = store::current(pool).await?;
    let pins = store::pins(pool).await?;
    let mut out = String::new();
    if !rows.is_empty() {
        out.push_str("\nServices:\n");
    }
    for row in rows {
        let key = builder::decide::ServiceKey {
            project: row.project.clone(),
            name: row.service.clone(),
        };
        let _ = write!(
            out,
            "{key}: {} (deployment {}, release {})",
            row.state,
            row.id,
            &row.release_digest[..12],
        );
        match &row.reason {
            Some(reason) => out.push_str(&shown_lines(reason, ": ", "    ")),
            None => out.push('\n'),
        }
        if row.state == DeploymentState::Healthy {
            if let Some(pin) = pins.get(&key) {
                let _ = writeln!(
                    out,
                    "  pinned to deployment {} by a rollback; the next change to the service in git releases it",
                    pin.deployment
                );
            }
            if let Some(degraded) = &row.degraded {
                out.push_str(&shown_lines(degraded, "  degraded: ", "    "));
            }
        }
    }
    Ok(out)
}

/// A deployment as JSON: the row without the release's environment (which names secrets by
/// digest), with the commit it deployed.
fn json(row: &Deployment) -> serde_json::Value {
    let commit = match &row.release.0.resolved {
        Resolved::Commit { commit } => Some(commit.clone()),
        Resolved::Image | Resolved::Unresolved { .. } => None,
    };
    let mut value = serde_json::to_value(row).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.remove("release");
        object.insert("commit".into(), commit.into());
    }
    value
}

fn timestamp(at: time::OffsetDateTime) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    at.format(&format).unwrap_or_default()
}

pub async fn logs(args: LogsArgs) -> Result<ExitCode> {
    let pool = database::connect(&args.db, "logs").await?;
    let service = store::find_service(&pool, &args.service).await?;
    let deployment = match args.deployment {
        Some(id) => {
            let row = store::deployment(&pool, id).await?;
            if row.project != service.project || row.service != service.name {
                bail!("deployment {id} is not of {service}");
            }
            row
        }
        None => chosen(&pool, &service).await?,
    };
    let selection = if args.build {
        match deployment.build_id {
            Some(id) => Selection::Build(id),
            None => bail!(
                "deployment {} of {service} has no build (an image service, or it failed before building)",
                deployment.id
            ),
        }
    } else {
        Selection::Deployment(deployment.id)
    };
    // The newest `--tail` lines; `last` is where following goes on from, even with none.
    let tail = logs::read(&pool, &selection, 0, args.tail.max(1), true).await?;
    let mut last = tail.last().map_or(0, |l| l.seq);
    let skip = tail
        .len()
        .saturating_sub(usize::try_from(args.tail).unwrap_or(0));
    for line in tail.iter().skip(skip) {
        show(line)?;
    }
    // A deployment that failed without a line from its replicas: say why, rather than
    // print nothing.
    if let (Selection::Deployment(_), [], Some(reason)) =
        (&selection, tail.as_slice(), &deployment.reason)
        && deployment.state == DeploymentState::Failed
    {
        let when = if deployment.deploying_at.is_none() {
            "failed before any replica started"
        } else {
            "failed, and its replicas printed nothing"
        };
        let why = report::printable(reason, report::Lines::Keep);
        if !args.follow {
            bail!("deployment {} of {service} {when}: {why}", deployment.id);
        }
        eprintln!("deployment {} of {service} {when}: {why}", deployment.id);
    }
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    // Without --deployment, following goes across rollouts: every deployment of the service.
    let (following, mut current) = match (&selection, args.deployment) {
        (Selection::Deployment(id), None) => (
            Selection::Service {
                project: service.project.clone(),
                name: service.name.clone(),
            },
            Some(*id),
        ),
        _ => (selection.clone(), None),
    };
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for line in logs::read(&pool, &following, last, 1000, false).await? {
            if line.deployment_id.is_some() && current.is_some() && line.deployment_id != current {
                current = line.deployment_id;
                outln!(
                    "[meshploy] deployment {}:",
                    line.deployment_id.unwrap_or_default()
                )?;
            }
            show(&line)?;
            last = line.seq;
        }
    }
}

/// One captured line, with the replica it came from.
fn show(line: &logs::LogLine) -> Result<()> {
    let text = report::printable(&line.line, report::Lines::Escape);
    match line.replica {
        Some(replica) => outln!("[{replica}] {text}"),
        None => outln!("{text}"),
    }
}

/// The deployment whose logs to show by default: the healthy one, else the newest.
async fn chosen(pool: &PgPool, service: &builder::decide::ServiceKey) -> Result<Deployment> {
    let rows = store::deployments(pool, Some(service), 1000).await?;
    let healthy = rows.iter().find(|d| d.state == DeploymentState::Healthy);
    match healthy.or(rows.first()) {
        Some(row) => Ok(row.clone()),
        None => bail!("{service} has no deployments yet"),
    }
}

pub async fn rollback(
    db: &DbArgs,
    service: &str,
    to: Option<i64>,
    wait: Duration,
) -> Result<ExitCode> {
    let pool = database::connect(db, "rollback").await?;
    let service = store::find_service(&pool, service).await?;
    let before = store::deployments(&pool, Some(&service), 1)
        .await?
        .first()
        .map_or(0, |d| d.id);
    let target = builder::rollback::pin(&pool, &service, to).await?;
    outln!(
        "Pinned {service} to deployment {} (release {}). The next change to the service in git releases the pin.",
        target.id,
        &target.release_digest[..12]
    )?;
    if wait.is_zero() {
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        let rows = store::deployments(&pool, Some(&service), 20).await?;
        let rollback = rows
            .iter()
            .find(|d| d.id > before && d.trigger == DeployTrigger::Rollback);
        let serving = rows
            .iter()
            .find(|d| d.state == DeploymentState::Healthy)
            .is_some_and(|d| d.release_digest == target.release_digest);
        match rollback {
            Some(d) if d.state == DeploymentState::Healthy => {
                outln!("Rolled back: deployment {} is healthy and serving.", d.id)?;
                return Ok(ExitCode::SUCCESS);
            }
            Some(d) if d.state == DeploymentState::Failed => {
                let reason = d.reason.as_deref().unwrap_or("no reason recorded");
                eprintln!(
                    "The rollback failed (deployment {}): {}",
                    d.id,
                    report::printable(reason, report::Lines::Keep)
                );
                return Ok(ExitCode::FAILURE);
            }
            None if serving => {
                outln!("That release is serving already.")?;
                return Ok(ExitCode::SUCCESS);
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    eprintln!(
        "No controller deployed the pinned release within {} s; is `meshploy up` running?",
        wait.as_secs()
    );
    Ok(ExitCode::FAILURE)
}
