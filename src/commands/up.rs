//! `meshploy up`: the whole platform in one process on one machine. The embedded
//! PostgreSQL, the manifests of a directory applied and re-applied on every edit (or a
//! repository followed as `serve` follows it), the deployment controller with the local
//! runtime, the proxy and the API. Ctrl-C stops the services and the database; a second
//! Ctrl-C stops at once.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result};
use reconciler::secrets::Keyring;
use reconciler::serve::Daemon;
use reconciler::sync::{Settings, Source};
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};

use super::apply::{How, actor, plan_and_apply};
use super::serve::shutdown_signal;
use super::{guard, keyring, validate};
use crate::cli::{SourceArgs, UpArgs};
use crate::{database, manifests, ports};

pub async fn run(args: UpArgs) -> Result<ExitCode> {
    let home = database::home(args.db.home.clone())?;
    let pool = database::pool(&args.db, "up", 16).await?;
    let keys = keyring(&args.keys)?.map(Arc::new);
    let runtime = super::runtime::local(
        &pool,
        &home,
        args.keys.secret_keys_file.iter().cloned().collect(),
        &args.runtime,
    )?;
    let listener = tokio::net::TcpListener::bind(args.api_listen)
        .await
        .map_err(|e| anyhow::anyhow!(ports::cannot_listen(args.api_listen, "--api-listen", &e)))?;
    let api_address = listener.local_addr()?;
    let proxy_database = database::options(&args.db, "up proxy").await?;
    // No route may reach the API through the proxy, whatever --allow-upstream allows.
    let mut proxy_config = super::proxy::config(&args.proxy, None);
    proxy_config
        .upstreams
        .reserved_ports
        .push(api_address.port());
    let proxy = super::proxy::start(proxy_config, proxy_database).await?;
    let proxy_address = proxy
        .local_addr()
        .context("the proxy has no listening address")?;
    let (stop, stopped) = watch::channel(false);
    let leading = Arc::new(AtomicBool::new(true));
    let source = args.repo.as_ref().map(|url| Source {
        name: args.name.clone().unwrap_or_else(|| "up".into()),
        url: url.clone(),
        branch: args.branch.clone(),
        path: args.path.clone(),
        policy: reconciler::names::Policy::Auto,
    });
    let state = api::AppState {
        pool: pool.clone(),
        sources: Arc::new(source.iter().cloned().collect()),
        webhook_secret: None,
        api_token_sha256: None,
        leading: leading.clone(),
        anonymous_read: args.anonymous_read,
        hosts: api::Hosts::default(),
    };
    let api = tokio::spawn(api::serve(
        listener,
        api::app(state),
        api::Limits::default(),
        until(stopped.clone()),
    ));
    eprintln!(
        "meshploy up: proxy on http://{proxy_address}, API and console on http://{api_address}"
    );
    let follow = match source {
        None => {
            let dir = args.dir.clone();
            let applier = Applier {
                pool: pool.clone(),
                home: home.clone(),
                keys: keys.clone(),
                guard: guard(&args.guard),
                adopt_from: args.adopt_from.clone(),
            };
            applier.apply(&dir).await;
            let applier = Applier {
                adopt_from: None,
                ..applier
            };
            print_routes(&pool, proxy_address).await;
            let follow: Pin<Box<dyn Future<Output = ()>>> =
                Box::pin(applier.follow(dir, stopped.clone()));
            follow
        }
        Some(source) => {
            source.register(&pool).await?;
            let daemon = Daemon {
                connect: (*pool.connect_options()).clone(),
                pool: pool.clone(),
                sources: vec![(source, args.poll_interval)],
                settings: Settings {
                    cache: home.join("git"),
                    keys: keyring(&args.keys)?,
                    guard: guard(&args.guard),
                    lock_timeout_ms: 30_000,
                    actor: format!("meshploy up (pid {})", std::process::id()),
                },
                leading,
            };
            let stopped = stopped.clone();
            Box::pin(async move {
                if let Err(error) = daemon.run(stopped).await {
                    eprintln!("meshploy up: following the repository stopped: {error:#}");
                }
            })
        }
    };
    let controller = super::runtime::controller(
        &pool,
        &runtime,
        &home,
        &args.runtime,
        keys,
        args.poll_interval,
    );
    let controller = tokio::spawn(controller.run(stopped.clone()));
    let proxy = tokio::spawn(proxy.serve(until(stopped)));

    let signalled = async {
        shutdown_signal().await;
        eprintln!("meshploy up: stopping the services (Ctrl-C again to stop at once)");
        let killer = runtime.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            killer.kill_all();
            std::process::exit(130);
        });
        let _ = stop.send(true);
    };
    tokio::join!(follow, signalled);
    match controller.await {
        Ok(Err(error)) => eprintln!("meshploy up: the controller failed: {error}"),
        Err(error) => eprintln!("meshploy up: the controller stopped: {error}"),
        Ok(Ok(())) => {}
    }
    runtime.shutdown().await;
    let _ = proxy.await;
    let _ = api.await;
    pool.close().await;
    if args.db.database_url.is_none() {
        let cluster = database::cluster(args.db.home.clone())?;
        tokio::task::spawn_blocking(move || cluster.stop())
            .await
            .context("stopping the embedded PostgreSQL")??;
        eprintln!("meshploy up: stopped the embedded PostgreSQL");
    }
    Ok(ExitCode::SUCCESS)
}

/// Completes when `stopped` turns true.
async fn until(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// Applies a directory as `meshploy apply --auto-approve` does, as often as it changes.
struct Applier {
    pool: PgPool,
    home: PathBuf,
    keys: Option<Arc<Keyring>>,
    guard: reconciler::plan::Guard,
    /// Taken over by the first apply; every later one finds nothing left to adopt.
    adopt_from: Option<String>,
}

impl Applier {
    /// Applies `dir` once. Invalid manifests or a refused plan are reported and change
    /// nothing: what runs keeps running.
    async fn apply(&self, dir: &Path) {
        if let Err(error) = self.try_apply(dir).await {
            eprintln!("meshploy up: {error:#}");
        }
    }

    async fn try_apply(&self, dir: &Path) -> Result<()> {
        let from = SourceArgs {
            repo: None,
            reference: None,
            path: String::new(),
            source: None,
            adopt_from: None,
        };
        let manifests = manifests::read(dir, &from, &self.home).await?;
        let state = validate::load(&manifests)?;
        let how = How {
            keys: self.keys.as_deref(),
            guard: self.guard,
            lock_timeout_ms: 30_000,
            actor: actor(),
            adopt_from: self.adopt_from.clone(),
        };
        plan_and_apply(&self.pool, manifests, &state, &how, || Ok(true)).await?;
        Ok(())
    }

    /// Re-applies `dir` after every change under it (a burst of events is one apply).
    async fn follow(self, dir: PathBuf, stopped: watch::Receiver<bool>) {
        use notify::Watcher;
        let (changed, mut changes) = mpsc::channel(1);
        let mut watcher =
            match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = changed.try_send(());
                }
            }) {
                Ok(watcher) => watcher,
                Err(error) => {
                    eprintln!("meshploy up: cannot watch {}: {error}", dir.display());
                    return;
                }
            };
        if let Err(error) = watcher.watch(&dir, notify::RecursiveMode::Recursive) {
            eprintln!("meshploy up: cannot watch {}: {error}", dir.display());
            return;
        }
        loop {
            tokio::select! {
                Some(()) = changes.recv() => {
                    // Editors write in several steps: wait for the burst to end.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    while changes.try_recv().is_ok() {}
                    self.apply(&dir).await;
                }
                () = until(stopped.clone()) => break,
            }
        }
    }
}

/// Prints where each route is served through the proxy.
async fn print_routes(pool: &PgPool, proxy: std::net::SocketAddr) {
    let routes = builder::store::routes(pool).await.unwrap_or_default();
    for (name, host, path) in routes {
        let port = proxy.port();
        eprintln!(
            "  route {name}: http://{host}:{port}{path}  (curl -H 'Host: {host}' http://{proxy}{path})"
        );
    }
}
