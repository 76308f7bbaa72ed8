//! The deployment controller: level-triggered. On every wake-up (an apply's
//! `meshploy_revisions`, a rollback's `meshploy_runtime`, a deployment ending, or the resync
//! timer) it reads the applied services, resolves their sources, observes the rows and the
//! runtime, lets [`decide`] choose, and carries the decisions out. Deployments run as tasks,
//! one per service at most; every phase has a timeout and every failure a reason on the row.
//!
//! It keeps nothing that matters in memory: started again after a crash or on a new leader,
//! it fails what was under way (`interrupted`), finds healthy releases that nothing runs, and
//! deploys them again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reconciler::names::{DeployTrigger, DeploymentState};
use reconciler::secrets::{Keyring, Place, Plaintext};
use schema::Envelope;
use schema::model::Workload;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::Error;
use crate::build::{self, Builder};
use crate::decide::{Decision, Desired, Observed, ServiceKey, Target, decide};
use crate::error::db;
use crate::lines::Redactor;
use crate::release::{self, EnvValue, Release, Resolved, Spec};
use crate::runtime::{Launch, Runtime};
use crate::store;

/// The controller's timings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The longest a rollout waits for its replicas to be healthy.
    pub rollout_timeout: Duration,
    /// How long replaced replicas keep running after the switch, for requests in flight.
    pub drain: Duration,
    /// The longest between two passes when nothing wakes the controller.
    pub resync: Duration,
    /// How often a remote source is fetched to see whether its ref moved.
    pub fetch_every: Duration,
    /// Deployments per service whose replica logs are kept.
    pub keep_logs_of: i64,
}

#[derive(Debug)]
pub struct Controller<R> {
    pub pool: PgPool,
    pub runtime: Arc<R>,
    pub builder: Builder,
    pub keys: Option<Arc<Keyring>>,
    pub settings: Settings,
}

/// A desired release and the revision that applied it.
type Wanted = BTreeMap<ServiceKey, (Release, Option<i64>)>;

impl<R: Runtime> Controller<R> {
    /// Runs until `stop` turns true. Deployments under way are abandoned then; the next
    /// controller records them as interrupted.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Result<(), Error> {
        let this = Arc::new(self);
        let interrupted = store::interrupt_active(&this.pool).await?;
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                "deployments under way when the last controller stopped failed"
            );
        }
        let mut listener = PgListener::connect_with(&this.pool)
            .await
            .map_err(db("listening for applies"))?;
        listener
            .listen_all([reconciler::store::CHANNEL, store::CHANNEL])
            .await
            .map_err(db("listening for applies"))?;
        let mut tasks: JoinSet<ServiceKey> = JoinSet::new();
        let mut in_flight = BTreeSet::new();
        let mut resolver = Resolver::new(this.builder.git_cache.clone(), this.settings.fetch_every);
        loop {
            if let Err(error) = this.pass(&mut in_flight, &mut tasks, &mut resolver).await {
                tracing::warn!(error = %report::causes(&error), "a controller pass failed; trying again");
            }
            tokio::select! {
                notification = listener.recv() => {
                    if notification.is_err() {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                Some(done) = tasks.join_next() => {
                    if let Ok(service) = done {
                        in_flight.remove(&service);
                    }
                }
                () = resolver.fetched() => {}
                () = tokio::time::sleep(this.settings.resync) => {}
                () = stopping(&mut stop) => break,
            }
            // Whatever else ended meanwhile.
            while let Some(done) = tasks.try_join_next() {
                if let Ok(service) = done {
                    in_flight.remove(&service);
                }
            }
        }
        tasks.abort_all();
        Ok(())
    }

    async fn pass(
        self: &Arc<Self>,
        in_flight: &mut BTreeSet<ServiceKey>,
        tasks: &mut JoinSet<ServiceKey>,
        resolver: &mut Resolver,
    ) -> Result<(), Error> {
        let (desired, wanted, fetching) = self.desired(resolver).await?;
        let running = self.runtime.running();
        for (id, r) in &running {
            store::set_degraded(&self.pool, *id, r.degraded.as_deref()).await?;
        }
        let observed = Observed {
            latest: store::latest(&self.pool).await?,
            tried: store::tried(&self.pool).await?,
            healthy: store::healthy(&self.pool).await?,
            pins: store::pins(&self.pool).await?,
            running: running.into_iter().map(|(id, r)| (id, r.service)).collect(),
            // A service whose source is being fetched for the first time is left as it is.
            in_flight: in_flight.union(&fetching).cloned().collect(),
        };
        for decision in decide(&desired, &observed) {
            match decision {
                Decision::Deploy {
                    service,
                    target,
                    trigger,
                } => {
                    let (release, revision) = match target {
                        Target::Desired => match wanted.get(&service) {
                            Some(w) => w.clone(),
                            None => continue,
                        },
                        Target::Earlier { deployment } => {
                            let row = store::deployment(&self.pool, deployment).await?;
                            (row.release.0, row.revision_id)
                        }
                    };
                    let id =
                        store::insert_deployment(&self.pool, &service, &release, revision, trigger)
                            .await?;
                    store::prune_logs(&self.pool, &service, self.settings.keep_logs_of).await?;
                    tracing::info!(%service, deployment = id, %trigger, "deploying");
                    in_flight.insert(service.clone());
                    let this = self.clone();
                    tasks.spawn(async move {
                        this.deploy(id, &service, release, trigger).await;
                        service
                    });
                }
                Decision::Unpin { service } => store::unpin(&self.pool, &service).await?,
                Decision::Unroute { service } => store::unroute(&self.pool, &service).await?,
                Decision::Stop { deployment, .. } => {
                    let runtime = self.runtime.clone();
                    tokio::spawn(async move { runtime.stop(deployment).await });
                }
                Decision::Retire { deployment, .. } => {
                    store::retire(&self.pool, deployment).await?;
                }
            }
        }
        Ok(())
    }

    /// Every applied service's release, with its source resolved, and the services whose
    /// source is still being fetched for the first time.
    async fn desired(
        &self,
        resolver: &mut Resolver,
    ) -> Result<(BTreeMap<ServiceKey, Desired>, Wanted, BTreeSet<ServiceKey>), Error> {
        let services = store::applied_services(&self.pool).await?;
        let groups = store::applied_groups(&self.pool).await?;
        let directories = store::source_directories(&self.pool).await?;
        let none = BTreeMap::new();
        let mut desired = BTreeMap::new();
        let mut wanted = BTreeMap::new();
        let mut fetching = BTreeSet::new();
        resolver.start_pass();
        for service in services {
            let project_groups = groups.get(&service.key.project).unwrap_or(&none);
            let spec = match release::spec(&service.fields, project_groups) {
                Ok(spec) => spec,
                Err(reason) => {
                    tracing::error!(service = %service.key, %reason, "the applied service cannot be read");
                    continue;
                }
            };
            let resolved = match &spec.workload {
                Workload::Image(_) => Resolved::Image,
                Workload::Source { source, .. } => {
                    let directory = directories.get(&service.source).map(String::as_str);
                    let url = absolute_url(&source.git, directory);
                    match resolver.resolve(&url, &source.git_ref).await {
                        Resolution::Known(Ok(commit)) => Resolved::Commit { commit },
                        Resolution::Known(Err(reason)) => Resolved::Unresolved { reason },
                        Resolution::Fetching => {
                            fetching.insert(service.key);
                            continue;
                        }
                    }
                }
            };
            let release = Release { spec, resolved };
            desired.insert(
                service.key.clone(),
                Desired {
                    spec_digest: release.spec.digest(),
                    release_digest: release.digest(),
                },
            );
            wanted.insert(service.key, (release, Some(service.revision_id)));
        }
        Ok((desired, wanted, fetching))
    }

    /// Carries one deployment out, and records how it ended.
    async fn deploy(
        &self,
        id: i64,
        service: &ServiceKey,
        release: Release,
        trigger: DeployTrigger,
    ) {
        let outcome = self.roll_out(id, service, release, trigger).await;
        if let Err(reason) = outcome {
            tracing::warn!(%service, deployment = id, %reason, "the deployment failed");
            self.runtime.stop(id).await;
            if let Err(error) = store::fail(&self.pool, id, &reason).await {
                tracing::error!(%error, deployment = id, "the failure was not recorded");
            }
        }
    }

    async fn roll_out(
        &self,
        id: i64,
        service: &ServiceKey,
        release: Release,
        trigger: DeployTrigger,
    ) -> Result<(), String> {
        let (env, redactor) = self.environment(service, &release.spec).await?;
        let redactor = Arc::new(redactor);
        let workdir = match (&release.spec.workload, &release.resolved) {
            (_, Resolved::Unresolved { reason }) => return Err(reason.clone()),
            (Workload::Source { source, build }, Resolved::Commit { commit }) => {
                self.advance(id, DeploymentState::Building, None).await?;
                let directory = store::directory_of(&self.pool, service)
                    .await
                    .map_err(|e| e.to_string())?;
                let url = absolute_url(&source.git, directory.as_deref());
                let request = build::Request {
                    service,
                    url: &url,
                    source,
                    build,
                    commit,
                    env: &env,
                    redactor: redactor.clone(),
                };
                match self.builder.build(request).await {
                    Ok(built) => {
                        self.advance(id, DeploymentState::Deploying, Some(built.id))
                            .await?;
                        Some(built.dir)
                    }
                    Err(failed) => {
                        if let Some(build) = failed.id {
                            self.advance(id, DeploymentState::Building, Some(build))
                                .await?;
                        }
                        return Err(format!(
                            "the build failed: {} (the whole log: `meshploy logs {} --build`)",
                            failed.reason, service.name
                        ));
                    }
                }
            }
            _ => {
                self.advance(id, DeploymentState::Deploying, None).await?;
                None
            }
        };
        let launch = Launch {
            deployment: id,
            service: service.clone(),
            release,
            workdir,
            env,
            redactor,
        };
        self.runtime.start(launch).await?;
        let deadline = Instant::now() + self.settings.rollout_timeout;
        let ready = tokio::time::timeout(
            self.settings.rollout_timeout + Duration::from_secs(5),
            self.runtime.ready(id, deadline),
        );
        let endpoints = ready.await.map_err(|_| {
            format!(
                "the replicas were not healthy within the rollout timeout of {} s",
                self.settings.rollout_timeout.as_secs()
            )
        })??;
        let replaced = match trigger {
            DeployTrigger::Rollback => DeploymentState::RolledBack,
            DeployTrigger::Revision | DeployTrigger::Restart => DeploymentState::Superseded,
        };
        store::promote(&self.pool, id, service, &endpoints, replaced)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(%service, deployment = id, "healthy and serving");
        // The proxies follow the endpoints within milliseconds; the replaced replicas finish
        // what they were sent meanwhile, then stop.
        let old: Vec<i64> = self
            .runtime
            .running()
            .into_iter()
            .filter(|(other, r)| *other != id && &r.service == service)
            .map(|(other, _)| other)
            .collect();
        if !old.is_empty() {
            tokio::time::sleep(self.settings.drain).await;
            for other in old {
                self.runtime.stop(other).await;
            }
        }
        Ok(())
    }

    async fn advance(
        &self,
        id: i64,
        state: DeploymentState,
        build: Option<i64>,
    ) -> Result<(), String> {
        store::advance(&self.pool, id, state, build)
            .await
            .map_err(|e| e.to_string())
    }

    /// The release's environment with its secrets opened, and a redactor for their values.
    /// A secret is opened only if it is still the value the release names (its digest).
    async fn environment(
        &self,
        service: &ServiceKey,
        spec: &Spec,
    ) -> Result<(Vec<(String, Plaintext)>, Redactor), String> {
        let mut env = Vec::new();
        let mut secrets = Vec::new();
        for (name, value) in &spec.env {
            match value {
                EnvValue::Plain { value } => {
                    env.push((name.clone(), Plaintext::new(value.clone().into_bytes())));
                }
                EnvValue::Secret {
                    group,
                    name: secret,
                    digest,
                } => {
                    let place = format!("{group}/{secret}");
                    let Some(keys) = &self.keys else {
                        return Err(format!(
                            "the service reads secret {place}, and no secret keys were given \
                             (--secret-keys-file or MESHPLOY_SECRET_KEYS)"
                        ));
                    };
                    let stored = store::sealed_secret(&self.pool, &service.project, group, secret)
                        .await
                        .map_err(|e| e.to_string())?;
                    let Some((ciphertext, stored_digest)) = stored else {
                        return Err(format!("secret {place} is no longer applied"));
                    };
                    if &stored_digest != digest {
                        return Err(format!(
                            "secret {place} changed since this release was made, and old values \
                             are not kept; this release cannot be deployed again"
                        ));
                    }
                    let envelope = Envelope::parse(&ciphertext)
                        .map_err(|e| format!("secret {place} is not a sealed value: {e}"))?;
                    let opened = keys
                        .open(&Place::stored(&service.project, group, secret), &envelope)
                        .map_err(|e| e.to_string())?;
                    secrets.push(Plaintext::new(opened.expose().to_vec()));
                    env.push((name.clone(), opened));
                }
            }
        }
        Ok((env, Redactor::new(secrets)))
    }
}

async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// `source.git` as a URL or path to open: a relative path (`./app`, `../..`) is taken
/// relative to the directory its source was applied from.
fn absolute_url(git: &str, directory: Option<&str>) -> String {
    let relative = git == "." || git == ".." || git.starts_with("./") || git.starts_with("../");
    match directory {
        Some(dir) if relative => {
            let joined = Path::new(dir).join(git);
            std::fs::canonicalize(&joined)
                .unwrap_or(joined)
                .display()
                .to_string()
        }
        _ => git.to_owned(),
    }
}

/// How long a service whose source has never been fetched waits for its first fetch before
/// its deployment fails saying so.
const FIRST_FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a source's ref stands for this pass.
#[derive(Debug)]
enum Resolution {
    /// A commit, or why there is none.
    Known(Result<String, String>),
    /// A remote repository fetched for the first time, still under way.
    Fetching,
}

/// Resolves sources' refs to commits without a pass ever waiting on the network. A local
/// repository is read on every pass (it is cheap). A remote one is fetched on a thread of its
/// own, at most every `fetch_every` and one fetch per repository at a time, and its ref is
/// resolved from the fetch cache meanwhile: a git server that never answers holds up nothing,
/// and its services run the commit fetched last. The threads are not waited for, so a fetch
/// stuck on such a server holds up no shutdown either.
#[derive(Debug)]
struct Resolver {
    cache: PathBuf,
    fetch_every: Duration,
    remotes: HashMap<String, Remote>,
    fetched: (
        mpsc::UnboundedSender<Fetched>,
        mpsc::UnboundedReceiver<Fetched>,
    ),
    /// What each URL and ref resolved to in this pass.
    this_pass: HashMap<(String, String), Result<String, String>>,
}

/// A finished fetch: the repository's URL and how it ended.
type Fetched = (String, Result<(), String>);

/// The fetches of one remote repository.
#[derive(Debug)]
struct Remote {
    /// When the newest fetch started, and whether it is still under way.
    started: Instant,
    under_way: bool,
    /// How the newest finished fetch ended; `None` before the first one finished.
    last: Option<Result<(), String>>,
}

impl Resolver {
    fn new(cache: PathBuf, fetch_every: Duration) -> Resolver {
        Resolver {
            cache,
            fetch_every,
            remotes: HashMap::new(),
            fetched: mpsc::unbounded_channel(),
            this_pass: HashMap::new(),
        }
    }

    fn start_pass(&mut self) {
        self.this_pass.clear();
        while let Ok((url, outcome)) = self.fetched.1.try_recv() {
            self.finished(url, outcome);
        }
    }

    /// Completes when a fetch finishes, having recorded it: the next pass resolves from it.
    async fn fetched(&mut self) {
        if let Some((url, outcome)) = self.fetched.1.recv().await {
            self.finished(url, outcome);
        }
    }

    fn finished(&mut self, url: String, outcome: Result<(), String>) {
        if let Err(error) = &outcome {
            tracing::warn!(url = %git::redact(&url), %error, "fetching a service's source failed; its services keep the commit fetched before");
        }
        if let Some(remote) = self.remotes.get_mut(&url) {
            remote.under_way = false;
            remote.last = Some(outcome);
        }
    }

    async fn resolve(&mut self, url: &str, reference: &str) -> Resolution {
        let key = (url.to_owned(), reference.to_owned());
        if let Some(known) = self.this_pass.get(&key) {
            return Resolution::Known(known.clone());
        }
        let remote = matches!(git::Location::parse(url), git::Location::Remote(_));
        if remote {
            self.fetch_if_due(url);
        }
        // A remote repository is read from its cache, as the last fetch left it.
        let (cache, url_owned, reference_owned) =
            (self.cache.clone(), url.to_owned(), reference.to_owned());
        let resolved = tokio::task::spawn_blocking(move || {
            git::open_cached(&url_owned, &cache)?.resolve(&reference_owned)
        })
        .await
        .map_err(|e| format!("resolving the source stopped: {e}"))
        .and_then(|r| r.map_err(|e| format!("cannot resolve `source.ref`: {e}")));
        let resolved = match (resolved, self.remotes.get(url)) {
            (Ok(commit), _) => Ok(commit),
            // Not in the cache: say why once a fetch has said, or wait for the first.
            (Err(_), Some(remote)) if remote.last.is_none() => {
                if remote.started.elapsed() < FIRST_FETCH_TIMEOUT {
                    return Resolution::Fetching;
                }
                Err(format!(
                    "cannot fetch {}: no answer within {} s",
                    git::redact(url),
                    FIRST_FETCH_TIMEOUT.as_secs()
                ))
            }
            (
                Err(_),
                Some(Remote {
                    last: Some(Err(fetch)),
                    ..
                }),
            ) => Err(format!("cannot resolve `source.ref`: {fetch}")),
            (Err(reason), _) => Err(reason),
        };
        self.this_pass.insert(key, resolved.clone());
        Resolution::Known(resolved)
    }

    /// Starts fetching `url` on a thread of its own unless a fetch is under way or one
    /// started less than `fetch_every` ago.
    fn fetch_if_due(&mut self, url: &str) {
        let due = self
            .remotes
            .get(url)
            .is_none_or(|r| !r.under_way && r.started.elapsed() >= self.fetch_every);
        if !due {
            return;
        }
        self.remotes.insert(
            url.to_owned(),
            Remote {
                started: Instant::now(),
                under_way: true,
                last: self.remotes.get(url).and_then(|r| r.last.clone()),
            },
        );
        let (cache, url, done) = (self.cache.clone(), url.to_owned(), self.fetched.0.clone());
        std::thread::spawn(move || {
            let outcome = git::open(&url, &cache).map(drop).map_err(|e| e.to_string());
            let _ = done.send((url, outcome));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_sources_are_taken_from_the_directory_the_source_was_applied_from() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = std::fs::canonicalize(dir.path()).expect("canonical");
        std::fs::create_dir(root.join("app")).expect("mkdir");
        std::fs::create_dir(root.join("deploy")).expect("mkdir");
        let deploy = root.join("deploy").display().to_string();
        assert_eq!(
            absolute_url("../app", Some(&deploy)),
            root.join("app").display().to_string()
        );
        assert_eq!(
            absolute_url("https://example.com/a.git", Some(&deploy)),
            "https://example.com/a.git"
        );
        assert_eq!(
            absolute_url("./app", None),
            "./app",
            "a source never applied from a directory is left alone"
        );
    }
}
