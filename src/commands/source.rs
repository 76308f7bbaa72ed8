//! `meshploy source remove`: forgetting a source, registered by `serve` or known only by
//! what it owns, without leaving its resources to nobody.

use std::process::ExitCode;

use anyhow::{Result, bail};
use reconciler::plan::Guard;
use reconciler::store::{self, RevisionMeta};
use reconciler::{apply, pipeline};

use super::apply::{actor, finish};
use super::plan::print;
use crate::cli::{PlanFormat, SourceCommand};
use crate::database;

/// How many of a refused source's resources the refusal names.
const NAMED: usize = 3;

pub async fn run(command: SourceCommand) -> Result<ExitCode> {
    let SourceCommand::Remove {
        name,
        destroy,
        lock_timeout,
        actor: who,
        db,
    } = command;
    let pool = database::connect(&db, "source remove").await?;
    let registered = store::source_statuses(&pool)
        .await?
        .iter()
        .any(|s| s.name == name);
    // What the source owns is what a plan of it declaring nothing destroys.
    let nothing = apply::prepare_for(&pool, &schema::DesiredState::default(), None).await?;
    let lock_timeout_ms = u64::try_from(lock_timeout.as_millis()).unwrap_or(u64::MAX);
    let planned = pipeline::lock(&pool, pipeline::Owner::source(&name), lock_timeout_ms)
        .await?
        .plan(nothing)?;
    let owned: Vec<String> = planned
        .plan()
        .changes
        .iter()
        .map(|c| c.address.to_string())
        .collect();
    let shown = report::printable(&name, report::Lines::Escape);
    match (registered, owned.len(), destroy) {
        (false, 0, _) => bail!(
            "no source named `{shown}` is registered or owns resources; `meshploy status` lists them"
        ),
        (_, 0, _) => drop(planned),
        (_, count, false) => bail!(
            "source `{shown}` owns {count} resources ({}{}); nothing was removed. Pass --destroy \
             to destroy them with the source, or let another source take them over first \
             (`meshploy apply DIR --adopt-from {shown}`)",
            owned[..count.min(NAMED)].join(", "),
            if count > NAMED { ", ..." } else { "" }
        ),
        (_, _, true) => {
            print(planned.plan(), PlanFormat::Text, "")?;
            // Destroying everything the source owns is what was asked for; protection
            // still holds.
            let everything = Guard {
                max_destroy_fraction: 1.0,
                allow_destroy: true,
            };
            let meta = RevisionMeta {
                actor: who.unwrap_or_else(actor),
                source: name.clone(),
                commit: None,
                directory: None,
            };
            finish(planned.check(&everything)?, None, &meta).await?;
        }
    }
    store::remove_source(&pool, &name).await?;
    outln!("Removed source `{shown}`.")?;
    Ok(ExitCode::SUCCESS)
}
