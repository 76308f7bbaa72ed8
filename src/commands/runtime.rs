//! The local runtime and its controller, as `up` and `serve --runtime local` run them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use builder::build::Builder;
use builder::controller::{self, Controller};
use builder::local::{self, LocalRuntime};
use builder::logs::Budget;
use builder::sandbox::{self, Sandbox};
use reconciler::secrets::Keyring;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::cli::RuntimeOptions;

/// The local runtime keeping its records under `home`; replicas a killed run left are
/// stopped first. Builds and replicas may read nothing of `home` but their own directories,
/// nor any of `hidden` (the secret keys file).
pub fn local(
    pool: &PgPool,
    home: &Path,
    hidden: Vec<PathBuf>,
    options: &RuntimeOptions,
) -> Result<Arc<LocalRuntime>> {
    let sandbox = Sandbox::detect(sandbox::Options {
        exe: std::env::current_exe().context("cannot find Meshploy's own binary")?,
        home: home.to_owned(),
        hidden,
        run_as: options.run_as.clone(),
    })?;
    tracing::info!("isolation: {}", sandbox.describe());
    if sandbox.landlock() == sandbox::Landlock::Unavailable && !sandbox.separate_users() {
        tracing::warn!(
            "replicas and builds run as Meshploy's own user without Landlock: they can read Meshploy's home (see the README's \"What a service can and cannot reach\")"
        );
    }
    let (runtime, orphans) = LocalRuntime::new(
        pool.clone(),
        local::Settings {
            state_dir: home.join("runtime"),
            sandbox: Arc::new(sandbox),
            stop_grace: options.stop_grace,
            log: log_budget(options),
        },
    )?;
    if orphans > 0 {
        eprintln!("meshploy: stopped {orphans} replicas that an earlier run left running");
    }
    Ok(Arc::new(runtime))
}

/// How much of each build's and replica's output is kept.
fn log_budget(options: &RuntimeOptions) -> Budget {
    Budget {
        lines: options.log_lines,
        bytes: options.log_budget,
        rate: options.log_rate,
    }
}

/// A controller driving `runtime`, building under `home`.
pub fn controller(
    pool: &PgPool,
    runtime: &Arc<LocalRuntime>,
    home: &Path,
    options: &RuntimeOptions,
    keys: Option<Arc<Keyring>>,
    fetch_every: Duration,
) -> Controller<LocalRuntime> {
    Controller {
        pool: pool.clone(),
        runtime: runtime.clone(),
        builder: Builder {
            pool: pool.clone(),
            dir: home.join("builds"),
            git_cache: home.join("git"),
            timeout: options.build_timeout,
            sandbox: runtime.sandbox(),
            log: log_budget(options),
            building: Arc::default(),
        },
        keys,
        settings: controller::Settings {
            rollout_timeout: options.rollout_timeout,
            drain: options.drain,
            resync: Duration::from_secs(5),
            fetch_every,
            keep_logs_of: 20,
        },
    }
}

/// Runs a controller whenever this process leads (`leading`), until `shutdown`. When
/// leadership is lost, the controller stops and so do the replicas it ran: the new leader
/// starts them on its machine.
pub async fn while_leading(
    make: impl Fn() -> Controller<LocalRuntime>,
    runtime: Arc<LocalRuntime>,
    leading: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let tick = Duration::from_millis(200);
    loop {
        while !leading.load(Ordering::SeqCst) {
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
        let (stop, stopped) = watch::channel(false);
        let running = tokio::spawn(make().run(stopped));
        while leading.load(Ordering::SeqCst) && !*shutdown.borrow() {
            tokio::time::sleep(tick).await;
        }
        let _ = stop.send(true);
        if let Ok(Err(error)) = running.await {
            eprintln!("meshploy: the controller failed: {error}");
        }
        runtime.shutdown().await;
        if *shutdown.borrow() {
            return;
        }
    }
}
