//! `meshploy up`: the whole platform in one process on one machine. The embedded
//! PostgreSQL, the manifests of a directory applied and re-applied on every edit (or a
//! repository followed as `serve` follows it), the deployment controller with the local
//! runtime, the proxy and the API. Ctrl-C stops the services and the database; a second
//! Ctrl-C stops at once.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, bail};
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
    // Nothing is touched before this: not the runtime's records, not the database.
    let _lock = HomeLock::take(&home)?;
    if args.repo.is_none() {
        has_manifests(&args.dir)?;
    }
    let listener = listen(args.api_listen, "--api-listen").await?;
    // The proxy binds its own listener once the database is up: a port taken now fails
    // before the database starts.
    drop(listen(args.proxy.listen, "--listen").await?);
    let embedded = args.db.database_url.is_none();
    let outcome = platform(args, &home, listener).await;
    // The embedded database stops with `up`, whether it stopped on Ctrl-C or failed.
    if embedded {
        let cluster = database::cluster(Some(home))?;
        tokio::task::spawn_blocking(move || cluster.stop())
            .await
            .context("stopping the embedded PostgreSQL")??;
        eprintln!("meshploy up: stopped the embedded PostgreSQL");
    }
    outcome
}

/// Everything `up` runs, until Ctrl-C.
async fn platform(
    args: UpArgs,
    home: &Path,
    listener: tokio::net::TcpListener,
) -> Result<ExitCode> {
    let home = home.to_path_buf();
    let pool = database::pool(&args.db, "up", 16).await?;
    let keys = keyring(&args.keys)?.map(Arc::new);
    let runtime = super::runtime::local(
        &pool,
        &home,
        args.keys.secret_keys_file.iter().cloned().collect(),
        &args.runtime,
    )?;
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
    Ok(ExitCode::SUCCESS)
}

/// The lock a running `up` holds on its MESHPLOY_HOME, with its pid in the file: two `up`s
/// on one home would each stop the other's replicas as leftovers of a crash. Released when
/// the process ends, however it ends.
pub struct HomeLock {
    _file: std::fs::File,
}

impl HomeLock {
    /// Takes the lock of `home`, or says which `up` holds it.
    pub fn take(home: &Path) -> Result<HomeLock> {
        use std::io::Write;
        let path = lock_path(home);
        std::fs::create_dir_all(home)
            .with_context(|| format!("cannot create {}", home.display()))?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if let Err(error) = file.try_lock() {
            return Err(match (error, holder(home)) {
                (std::fs::TryLockError::WouldBlock, Some(pid)) => anyhow::anyhow!(
                    "another `meshploy up` is running (pid {pid}) with this MESHPLOY_HOME ({}); \
                     stop it first, or give this one another --home",
                    home.display()
                ),
                (std::fs::TryLockError::WouldBlock, None) => anyhow::anyhow!(
                    "another `meshploy up` is running with this MESHPLOY_HOME ({})",
                    home.display()
                ),
                (std::fs::TryLockError::Error(error), _) => {
                    anyhow::Error::new(error).context(format!("cannot lock {}", path.display()))
                }
            });
        }
        file.set_len(0)?;
        write!(file, "{}", std::process::id())?;
        Ok(HomeLock { _file: file })
    }
}

fn lock_path(home: &Path) -> PathBuf {
    home.join("up.pid")
}

/// The pid of the `up` holding `home`'s lock, if one does.
pub fn holder(home: &Path) -> Option<u32> {
    let file = std::fs::File::open(lock_path(home)).ok()?;
    if file.try_lock_shared().is_ok() {
        return None;
    }
    std::fs::read_to_string(lock_path(home))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Refuses a directory that cannot be read or holds no manifest: `up` would otherwise start
/// whatever the database holds and watch nothing.
fn has_manifests(dir: &Path) -> Result<()> {
    let files = git::dir::read(dir, &schema::Limits::default())
        .with_context(|| format!("cannot read manifest directory {}", dir.display()))?;
    if files.is_empty() {
        bail!(
            "no manifests in {} (no *.yaml or *.yml files); give the directory that holds them, such as `meshploy up examples/local`",
            dir.display()
        );
    }
    Ok(())
}

/// Binds `address`, or says which option chooses another.
async fn listen(address: SocketAddr, flag: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| anyhow::anyhow!(ports::cannot_listen(address, flag, &error)))
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
        // A wildcard route answers any name in its place; curl needs one.
        let example = match host.strip_prefix("*.") {
            Some(parent) => format!("any.{parent}"),
            None => host.clone(),
        };
        eprintln!(
            "  route {name}: http://{host}:{port}{path}  (curl -H 'Host: {example}' http://{proxy}{path})"
        );
    }
}
