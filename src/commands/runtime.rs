//! The local runtime and its controller, as `up` and `serve --runtime local` run them.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use builder::build::Builder;
use builder::controller::{self, Controller};
use builder::local::{self, LocalRuntime};
use reconciler::secrets::Keyring;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::cli::RuntimeOptions;

/// The local runtime keeping its records under `home`; replicas a killed run left are
/// stopped first.
pub fn local(pool: &PgPool, home: &Path, options: &RuntimeOptions) -> Result<Arc<LocalRuntime>> {
    let (runtime, orphans) = LocalRuntime::new(
        pool.clone(),
        local::Settings {
            state_dir: home.join("runtime"),
            stop_grace: options.stop_grace,
            log_lines: options.log_lines,
        },
    )?;
    if orphans > 0 {
        eprintln!("meshploy: stopped {orphans} replicas that an earlier run left running");
    }
    Ok(Arc::new(runtime))
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
            log_lines: options.log_lines,
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
