//! The local runtime: each replica is a supervised, confined job on this machine.
//!
//! Each deployment gets its own working copy of its build (`<state>/deployments/<id>`: the
//! copy in `app`, with `home` and `tmp` beside it, owned by the replicas' user), removed when
//! the deployment stops; a replica can write there and nowhere else, so no service can change
//! what another runs. A replica is `command` run by a shell in that copy through
//! [`crate::sandbox`], with `PORT` set to a free port the runtime picked, `HOME` and `TMPDIR`
//! its own, and the release's environment (secrets opened by the caller and held in memory
//! only, for restarts). Its output goes, redacted, into its log stream. Until the deployment
//! serves, an exit is final and fails the rollout with the exit code and last lines; once it
//! serves, an exit is restarted with exponential backoff, and repeated exits mark the
//! deployment degraded. Each running replica leaves a file under the state directory naming
//! its supervisor, so a runtime started after a crash stops what the dead one left running
//! (with the sandbox's leftover cgroups) before it starts anything.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reconciler::secrets::Plaintext;
use rustix::process::Signal;
use schema::model::{HealthCheck, Workload};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Error;
use crate::decide::ServiceKey;
use crate::health::{Probe, probe};
use crate::lines::Redactor;
use crate::logs::{Budget, LogWriter, Owner};
use crate::process::{self, Tail};
use crate::runtime::{Endpoint, Launch, Running, Runtime};
use crate::sandbox::{Identity, Job, Sandbox};

/// How the local runtime treats its processes.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where running replicas are recorded and deployments' working copies live
    /// (`<home>/runtime`).
    pub state_dir: PathBuf,
    /// How replicas are confined.
    pub sandbox: Arc<Sandbox>,
    /// From SIGTERM to SIGKILL.
    pub stop_grace: Duration,
    /// How much of a replica's output is kept.
    pub log: Budget,
}

/// Exits within this window that mark a deployment degraded.
const DEGRADED_EXITS: usize = 5;
const DEGRADED_WINDOW: Duration = Duration::from_secs(60);
/// Times a replica is moved to a new port when its port was taken before it listened.
const PORT_RETRIES: u32 = 3;

#[derive(Debug)]
pub struct LocalRuntime {
    pool: PgPool,
    settings: Settings,
    deployments: Mutex<BTreeMap<i64, Deployment>>,
    /// Working copies made at once: copying is disk-bound, and each copy in flight holds a
    /// blocking thread (with its own allocator heap), so fifty deployments starting together
    /// must not mean fifty threads.
    copying: tokio::sync::Semaphore,
}

#[derive(Debug)]
struct Deployment {
    service: ServiceKey,
    port: u16,
    check: Option<HealthCheck>,
    replicas: Vec<Replica>,
}

#[derive(Debug)]
struct Replica {
    state: Arc<Mutex<ReplicaState>>,
    tail: Tail,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct ReplicaState {
    port: u16,
    /// Set once the deployment serves: exits are restarted from then on.
    serving: bool,
    /// How it ended before it served: final.
    ended: Option<String>,
    /// Recent exits while serving, for the degraded verdict.
    exits: VecDeque<(Instant, String)>,
}

/// What a replica runs, shared by its restarts.
#[derive(Debug)]
struct Spawn {
    command: String,
    /// The deployment's own directory: `app` (the working copy), `home` and `tmp`.
    dir: PathBuf,
    env: Vec<(String, Plaintext)>,
    redactor: Arc<Redactor>,
    deployment: i64,
    replica: i32,
}

impl LocalRuntime {
    /// A runtime keeping its records in `settings.state_dir`. Replicas that a previous
    /// runtime left running (it was killed) are stopped first; returns how many.
    pub fn new(pool: PgPool, settings: Settings) -> Result<(LocalRuntime, usize), Error> {
        let dir = &settings.state_dir;
        let failed = |error| Error::StateDir {
            path: dir.clone(),
            error,
        };
        // Replicas of other users must reach their own directory below `deployments`, and
        // nothing else here.
        for (path, mode) in [
            (dir.clone(), 0o711),
            (dir.join("replicas"), 0o700),
            (dir.join("deployments"), 0o711),
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(&path)
                .and_then(|()| {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                })
                .map_err(failed)?;
        }
        let stopped = kill_recorded(&dir.join("replicas")).map_err(failed)?
            + settings.sandbox.kill_leftovers();
        // The working copies of a run that was killed belong to nothing now.
        for entry in std::fs::read_dir(dir.join("deployments")).map_err(failed)? {
            let _ = std::fs::remove_dir_all(entry.map_err(failed)?.path());
        }
        let runtime = LocalRuntime {
            pool,
            settings,
            deployments: Mutex::new(BTreeMap::new()),
            copying: tokio::sync::Semaphore::new(2),
        };
        Ok((runtime, stopped))
    }

    /// Stops every replica, each as `stop` does, all at once.
    pub async fn shutdown(&self) {
        let all = match self.deployments.lock() {
            Ok(mut d) => std::mem::take(&mut *d),
            Err(_) => return,
        };
        let replicas: Vec<Replica> = all.into_values().flat_map(|d| d.replicas).collect();
        for replica in &replicas {
            let _ = replica.stop.send(true);
        }
        for replica in replicas {
            let _ = replica.task.await;
        }
    }

    /// Kills every replica now, without a grace period: for a second Ctrl-C.
    pub fn kill_all(&self) {
        let _ = kill_recorded(&self.settings.state_dir.join("replicas"));
        self.settings.sandbox.kill_leftovers();
    }

    /// How replicas (and, through the controller's builder, builds) are confined.
    pub fn sandbox(&self) -> Arc<Sandbox> {
        self.settings.sandbox.clone()
    }

    fn deployment_dir(&self, deployment: i64) -> PathBuf {
        self.settings
            .state_dir
            .join("deployments")
            .join(deployment.to_string())
    }

    fn replica_states(&self, deployment: i64) -> Option<ReplicaView> {
        let deployments = self.deployments.lock().ok()?;
        let d = deployments.get(&deployment)?;
        Some(ReplicaView {
            port: d.port,
            check: d.check.clone(),
            replicas: d
                .replicas
                .iter()
                .map(|r| (r.state.clone(), r.tail.clone()))
                .collect(),
        })
    }
}

struct ReplicaView {
    port: u16,
    check: Option<HealthCheck>,
    replicas: Vec<(Arc<Mutex<ReplicaState>>, Tail)>,
}

impl Runtime for LocalRuntime {
    async fn start(&self, launch: Launch) -> Result<(), String> {
        let spec = &launch.release.spec;
        if let Workload::Image(image) = &spec.workload {
            return Err(format!(
                "`{image}` is an image; running images on one machine needs a container engine, \
                 which the local runtime does not drive yet. Build the service from `source` \
                 (strategy `command` or `none`) to run it here"
            ));
        }
        let Some(command) = spec.command.clone() else {
            return Err(
                "the service has no `command`: the local runtime needs one to start it".into(),
            );
        };
        let Some(build) = launch.workdir.clone() else {
            return Err("the release has no build directory".into());
        };
        let dir = self.deployment_dir(launch.deployment);
        let owner = self.settings.sandbox.replica_user(launch.deployment);
        let copied = dir.clone();
        let permit = self.copying.acquire().await.map_err(|e| e.to_string())?;
        let made = tokio::task::spawn_blocking(move || working_copy(&build, &copied, owner)).await;
        drop(permit);
        made.map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|e| {
                let _ = std::fs::remove_dir_all(&dir);
                format!("cannot make the deployment's working copy: {e}")
            })?;
        let mut replicas = Vec::new();
        let env = Arc::new(launch.env);
        for index in 0..spec.replicas {
            let index = i32::try_from(index).unwrap_or(i32::MAX);
            let port = free_port().map_err(|e| format!("cannot find a free port: {e}"))?;
            let state = Arc::new(Mutex::new(ReplicaState {
                port,
                ..ReplicaState::default()
            }));
            let tail = Tail::default();
            let (stop, stopped) = watch::channel(false);
            let spawn = Spawn {
                command: command.clone(),
                dir: dir.clone(),
                env: env
                    .iter()
                    .map(|(k, v)| (k.clone(), Plaintext::new(v.expose().to_vec())))
                    .collect(),
                redactor: launch.redactor.clone(),
                deployment: launch.deployment,
                replica: index,
            };
            let task = tokio::spawn(supervise(
                self.pool.clone(),
                self.settings.clone(),
                spawn,
                state.clone(),
                tail.clone(),
                stopped,
            ));
            replicas.push(Replica {
                state,
                tail,
                stop,
                task,
            });
        }
        let deployment = Deployment {
            service: launch.service,
            port: spec.port,
            check: spec.health_check.clone(),
            replicas,
        };
        if let Ok(mut deployments) = self.deployments.lock() {
            deployments.insert(launch.deployment, deployment);
        }
        Ok(())
    }

    async fn ready(&self, deployment: i64, deadline: Instant) -> Result<Vec<Endpoint>, String> {
        let view = self
            .replica_states(deployment)
            .ok_or("the deployment has no replicas running")?;
        let mut endpoints = Vec::new();
        for (index, (state, tail)) in view.replicas.iter().enumerate() {
            let port = healthy(index, state, tail, view.check.as_ref(), deadline).await?;
            endpoints.push(Endpoint {
                port: view.port,
                address: format!("127.0.0.1:{port}"),
            });
        }
        for (state, _) in &view.replicas {
            if let Ok(mut state) = state.lock() {
                state.serving = true;
            }
        }
        Ok(endpoints)
    }

    async fn stop(&self, deployment: i64) {
        let removed = self
            .deployments
            .lock()
            .ok()
            .and_then(|mut d| d.remove(&deployment));
        let Some(removed) = removed else {
            return;
        };
        for replica in &removed.replicas {
            let _ = replica.stop.send(true);
        }
        for replica in removed.replicas {
            let _ = replica.task.await;
        }
        let dir = self.deployment_dir(deployment);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
    }

    fn running(&self) -> BTreeMap<i64, Running> {
        let Ok(deployments) = self.deployments.lock() else {
            return BTreeMap::new();
        };
        deployments
            .iter()
            .map(|(id, d)| {
                let degraded = d.replicas.iter().enumerate().find_map(|(i, r)| {
                    let state = r.state.lock().ok()?;
                    let recent = state
                        .exits
                        .iter()
                        .filter(|(at, _)| at.elapsed() < DEGRADED_WINDOW)
                        .count();
                    let last = &state.exits.back()?.1;
                    (recent >= DEGRADED_EXITS)
                        .then(|| format!("replica {i} {last} ({recent} exits in 60 s)"))
                });
                let running = Running {
                    service: d.service.clone(),
                    degraded,
                };
                (*id, running)
            })
            .collect()
    }
}

/// Waits until one replica passes its health check; returns its port.
async fn healthy(
    index: usize,
    state: &Mutex<ReplicaState>,
    tail: &Tail,
    check: Option<&HealthCheck>,
    deadline: Instant,
) -> Result<u16, String> {
    let mut failures = 0;
    let mut last_failure = None;
    loop {
        let (port, ended) = match state.lock() {
            Ok(s) => (s.port, s.ended.clone()),
            Err(_) => return Err("the replica's state is lost".into()),
        };
        if let Some(ended) = ended {
            let lines = tail.text();
            return Err(if lines.is_empty() {
                format!("replica {index} {ended} before it was healthy, printing nothing")
            } else {
                format!("replica {index} {ended} before it was healthy; its last lines:\n{lines}")
            });
        }
        if Instant::now() >= deadline {
            return Err(match last_failure {
                Some(why) => format!("replica {index} was not healthy in time: {why}"),
                None => format!(
                    "replica {index} did not accept connections on its PORT ({port}) in time"
                ),
            });
        }
        let pause = match probe(port, check).await {
            Probe::Healthy => return Ok(port),
            Probe::Refused => Duration::from_millis(50),
            Probe::Unhealthy(why) => {
                failures += 1;
                let threshold = check.map_or(1, |c| c.failure_threshold.max(1));
                if failures >= threshold {
                    return Err(format!(
                        "replica {index} failed its health check {failures} times in a row: {why}"
                    ));
                }
                last_failure = Some(why);
                Duration::from_secs(check.map_or(1, |c| u64::from(c.period_seconds.max(1))))
            }
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(pause.min(remaining)).await;
    }
}

/// Runs one replica until it is told to stop: spawns it, captures its output, and restarts it
/// when it exits after its deployment started serving.
async fn supervise(
    pool: PgPool,
    settings: Settings,
    spawn: Spawn,
    state: Arc<Mutex<ReplicaState>>,
    tail: Tail,
    mut stop: watch::Receiver<bool>,
) {
    let owner = Owner::Replica {
        deployment: spawn.deployment,
        replica: spawn.replica,
    };
    let log = Arc::new(LogWriter::start(pool, owner, settings.log));
    let record = (settings.state_dir)
        .join("replicas")
        .join(format!("{}-{}", spawn.deployment, spawn.replica));
    let mut backoff = Duration::from_millis(100);
    let mut moved = 0;
    loop {
        let port = state.lock().map(|s| s.port).unwrap_or_default();
        let mut env: Vec<(String, Plaintext)> = spawn
            .env
            .iter()
            .map(|(k, v)| (k.clone(), Plaintext::new(v.expose().to_vec())))
            .collect();
        for (name, value) in [
            ("PORT", port.to_string()),
            ("HOME", spawn.dir.join("home").display().to_string()),
            ("TMPDIR", spawn.dir.join("tmp").display().to_string()),
        ] {
            env.push((name.into(), Plaintext::new(value.into_bytes())));
        }
        let app = spawn.dir.join("app");
        let job = Job {
            identity: Identity::Replica {
                deployment: spawn.deployment,
                replica: spawn.replica,
            },
            script: &spawn.command,
            dir: &app,
            writable: vec![spawn.dir.clone()],
            env: &env,
            grace: settings.stop_grace,
        };
        let (mut job, output) = match settings.sandbox.start(job).await {
            Ok(started) => started,
            Err(error) => {
                let why = format!("could not be started: {error}");
                log.line(format!("[meshploy] the replica {why}")).await;
                end(&state, why);
                break;
            }
        };
        drop(env);
        if let Some(pid) = job.pid()
            && let Some(started) = start_time(pid)
        {
            let _ = std::fs::write(&record, format!("{pid} {started}\n"));
        }
        let capture = process::capture(output, &log, &spawn.redactor, &tail);
        let started = Instant::now();
        let status = tokio::select! {
            status = job.wait() => status,
            () = stopped(&mut stop) => {
                job.stop(settings.stop_grace).await;
                process::drain(capture).await;
                let _ = std::fs::remove_file(&record);
                break;
            }
        };
        process::drain(capture).await;
        let _ = std::fs::remove_file(&record);
        let how = match status {
            Ok(status) => process::describe(status),
            Err(error) => format!("could not be waited for: {error}"),
        };
        let serving = state.lock().map(|s| s.serving).unwrap_or(false);
        if !serving {
            // A port taken by someone else between the pick and the listen is not the
            // service's fault: move to another port, a few times.
            if moved < PORT_RETRIES && !port_free(port) {
                moved += 1;
                let moved_to = free_port()
                    .ok()
                    .filter(|new| state.lock().map(|mut s| s.port = *new).is_ok());
                if let Some(new) = moved_to {
                    log.line(format!(
                        "[meshploy] port {port} was taken by another process; starting again on {new}"
                    ))
                    .await;
                    tail.clear();
                    continue;
                }
            }
            end(&state, how);
            break;
        }
        let last = tail.last().unwrap_or_default();
        let said = if last.is_empty() {
            how.clone()
        } else {
            format!("{how}: {last}")
        };
        if let Ok(mut s) = state.lock() {
            s.exits.push_back((Instant::now(), said));
            while s.exits.len() > DEGRADED_EXITS * 2 {
                s.exits.pop_front();
            }
        }
        if started.elapsed() > DEGRADED_WINDOW {
            backoff = Duration::from_millis(100);
        }
        log.line(format!(
            "[meshploy] the replica {how}; starting it again in {} ms",
            backoff.as_millis()
        ))
        .await;
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            () = stopped(&mut stop) => break,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
    if let Ok(log) = Arc::try_unwrap(log) {
        log.close().await;
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn end(state: &Mutex<ReplicaState>, how: String) {
    if let Ok(mut s) = state.lock() {
        s.ended = Some(how);
    }
}

/// Tells the supervisor of every replica recorded in `dir` that still runs to kill its job
/// now, waits a moment for them to be gone, and forgets the records. Returns how many were
/// running.
fn kill_recorded(dir: &Path) -> std::io::Result<usize> {
    let mut killed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let recorded = std::fs::read_to_string(&path).unwrap_or_default();
        let mut parts = recorded.split_whitespace();
        if let (Some(Ok(pid)), Some(started)) = (parts.next().map(str::parse::<u32>), parts.next())
            // The same process only if it started when recorded: a pid may be reused.
            && start_time(pid).as_deref() == Some(started)
        {
            process::signal(pid, Signal::USR1);
            killed.push((pid, started.to_owned()));
        }
        let _ = std::fs::remove_file(&path);
    }
    for _ in 0..200 {
        if killed
            .iter()
            .all(|(pid, started)| start_time(*pid).as_deref() != Some(started.as_str()))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(killed.len())
}

/// Copies the build `from` into a deployment's new directory `dir` (as `app`, with an empty
/// `home` and `tmp`), owned by `owner` when replicas run as another user. Links are copied as
/// links, never followed.
fn working_copy(from: &Path, dir: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    copy_tree(from, &dir.join("app"))?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir.join("home"))?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir.join("tmp"))?;
    if let Some((uid, gid)) = owner {
        chown_tree(dir, uid, gid)?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir(to)?;
    std::fs::set_permissions(to, std::fs::metadata(from)?.permissions())?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&source)?, &target)?;
        } else if kind.is_dir() {
            copy_tree(&source, &target)?;
        } else if kind.is_file() {
            std::fs::copy(&source, &target)?;
        }
    }
    Ok(())
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// A port nothing listens on now. Another process may take it before the replica listens;
/// the supervisor moves the replica when that happens.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A process's start time in clock ticks since boot (`/proc/PID/stat`, field 22), which
/// tells a recorded process from a later one with the same pid.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields after it do not.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19).map(str::to_owned)
}
