//! Confinement of the code Meshploy runs for its users: builds and replicas.
//!
//! A job (one build, or one replica) never runs as a plain child of Meshploy. Meshploy starts
//! its own binary as the job's *supervisor* (`meshploy sandbox supervise`), which becomes a
//! child subreaper: whatever the job starts and abandons (a `setsid` daemon, a double fork) is
//! reparented to it rather than to init. The supervisor starts the *confine* stage
//! (`meshploy sandbox confine`), which joins the job's cgroup when there is one, restricts
//! itself with Landlock, changes to the job's user and replaces itself with `sh -c SCRIPT`.
//! When the job's main process ends, or the supervisor is told to stop (SIGTERM: the job gets
//! SIGTERM and a grace period; SIGUSR1: at once), the supervisor kills every process left
//! (through `cgroup.kill` when the job has a cgroup, otherwise by killing its children until
//! none is left, which works because every orphan is its child) and exits with the main
//! process's status. The supervisor dies with Meshploy (`PR_SET_PDEATHSIG`), stopping the job
//! the same way, so a killed Meshploy leaves nothing running; and a restarted one kills
//! leftover cgroups.
//!
//! What confines a job, each where the kernel and Meshploy's privileges allow it:
//! - a separate uid for replicas when Meshploy runs as root (one per deployment, with no
//!   capabilities), so DAC keeps them out of Meshploy's files and each other's;
//! - builds keep Meshploy's own user (toolchains live in its home) but lose every capability;
//! - Landlock: read-only access to the whole file system except the hidden paths (Meshploy's
//!   home, the secret keys file), write access only to the job's own directory and a few
//!   devices, no signals to processes outside the job and no abstract unix sockets outside it
//!   (Landlock also stops a job from ptracing Meshploy);
//! - a cgroup v2 per job when Meshploy may create them (as root), so every process of a job
//!   can be killed at once however it detached.
//!
//! The spec travels to both stages on standard input, so no size limit of the command line
//! applies and nothing of it shows in `/proc/PID/cmdline`.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use reconciler::secrets::Plaintext;
use rustix::process::{Pid, Signal, WaitOptions};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The variables a job inherits from Meshploy's own environment; nothing else does, so
/// Meshploy's keys and database settings never reach a job.
const INHERITED: &[&str] = &["PATH", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ"];

/// Devices a job may write to although it may write nowhere else outside its directory.
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];

/// The first uid (and gid) of replicas when Meshploy runs as root: one per deployment, from
/// here on. Such ids have no `/etc/passwd` entry, as in OpenShift; a process does not need one.
const REPLICA_IDS: u32 = 3_000_000_000;
const REPLICA_ID_SPAN: u32 = 1_000_000_000;

/// How Meshploy confines jobs on this machine, found out once at start.
#[derive(Clone, Debug)]
pub struct Sandbox {
    /// Meshploy's own binary, which runs both stages.
    exe: PathBuf,
    /// Paths no job may read (canonical).
    hidden: Vec<PathBuf>,
    /// Whether Landlock restricts jobs here, and how well.
    landlock: Landlock,
    /// The cgroup under which each job gets its own, when Meshploy may create them.
    cgroups: Option<PathBuf>,
    /// Who replicas run as.
    replicas: RunAs,
    /// Whether Meshploy runs as root (jobs then lose their capabilities).
    root: bool,
}

/// What the kernel's Landlock gave a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Landlock {
    /// Every right asked for is enforced.
    Full,
    /// Some are: an older kernel (signal scoping needs Linux 6.12).
    Partial,
    /// None: the kernel lacks Landlock or it is off.
    Unavailable,
}

/// Who replicas run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunAs {
    /// Meshploy's own user (it is not root).
    Meshploy,
    /// A uid and gid of their own per deployment (Meshploy is root).
    PerDeployment,
    /// One named user for every replica (Meshploy is root; `--run-as USER`).
    User { name: String, uid: u32, gid: u32 },
}

/// What starts Meshploy's sandbox: where it lives and what it must hide.
#[derive(Clone, Debug)]
pub struct Options {
    /// Meshploy's binary (`std::env::current_exe()`).
    pub exe: PathBuf,
    /// Meshploy's home: hidden from jobs, except each job's own directory.
    pub home: PathBuf,
    /// More paths to hide, such as the secret keys file.
    pub hidden: Vec<PathBuf>,
    /// `--run-as`: `None` for the default, `Some("auto")` or a user name.
    pub run_as: Option<String>,
}

/// Why the sandbox cannot be set up as asked.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "--run-as needs Meshploy to run as root: only root can start processes as another user"
    )]
    RunAsNeedsRoot,
    #[error("--run-as: there is no user `{0}` in /etc/passwd")]
    NoSuchUser(String),
    #[error("--run-as: `{0}` is root; replicas must not run as root")]
    RunAsRoot(String),
    #[error("cannot probe the sandbox with {}: {error}", exe.display())]
    Probe { exe: PathBuf, error: std::io::Error },
}

/// Who a job is, which decides its user and its cgroup's name.
#[derive(Clone, Copy, Debug)]
pub enum Identity {
    Build(i64),
    Replica { deployment: i64, replica: i32 },
}

impl Identity {
    fn name(self) -> String {
        match self {
            Identity::Build(id) => format!("build-{id}"),
            Identity::Replica {
                deployment,
                replica,
            } => format!("replica-{deployment}-{replica}"),
        }
    }
}

/// One job to start.
#[derive(Debug)]
pub struct Job<'a> {
    pub identity: Identity,
    /// What `sh -c` runs.
    pub script: &'a str,
    /// Its working directory.
    pub dir: &'a Path,
    /// The directories it may write to (its working directory and its home and temporary
    /// directory, all its own).
    pub writable: Vec<PathBuf>,
    /// Variables set after the inherited ones (`HOME`, `TMPDIR`, `PORT`, the release's).
    pub env: &'a [(String, Plaintext)],
    /// From SIGTERM to SIGKILL when it is stopped.
    pub grace: Duration,
}

/// A started job: its supervisor process, and its cgroup when it has one.
#[derive(Debug)]
pub struct Started {
    child: tokio::process::Child,
    cgroup: Option<PathBuf>,
}

/// The one pipe that carries a job's standard output and standard error, in the order they
/// were written.
pub type Output = tokio::net::unix::pipe::Receiver;

impl Started {
    /// The supervisor's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for the job to end by itself. Its supervisor has killed whatever it left by then.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let status = self.child.wait().await;
        self.forget_cgroup().await;
        status
    }

    /// Stops the job: SIGTERM through its supervisor, which gives the job `grace` and then
    /// kills every process it left. Should the supervisor not end (it does), it and the
    /// job's cgroup are killed.
    pub async fn stop(&mut self, grace: Duration) {
        if let Some(pid) = self.child.id().and_then(pid) {
            let _ = rustix::process::kill_process(pid, Signal::TERM);
        }
        let margin = Duration::from_secs(2);
        if tokio::time::timeout(grace + margin, self.child.wait())
            .await
            .is_err()
        {
            if let Some(cgroup) = &self.cgroup {
                kill_cgroup(cgroup);
            }
            let _ = self.child.kill().await;
        }
        self.forget_cgroup().await;
    }

    async fn forget_cgroup(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            let _ = tokio::task::spawn_blocking(move || remove_cgroup(&cgroup)).await;
        }
    }
}

/// Both stages' instructions.
#[derive(Debug, Serialize, Deserialize)]
struct Spec {
    /// Meshploy's pid: the supervisor ends itself when Meshploy is gone.
    parent: u32,
    grace_ms: u64,
    cgroup: Option<PathBuf>,
    landlock: Option<Rules>,
    /// The uid and gid to become, when not Meshploy's.
    user: Option<(u32, u32)>,
    /// Drop every capability (Meshploy is root and the job keeps uid 0).
    drop_capabilities: bool,
    dir: PathBuf,
    script: String,
}

/// What a job may touch under Landlock.
#[derive(Debug, Serialize, Deserialize)]
struct Rules {
    read: Vec<PathBuf>,
    write: Vec<PathBuf>,
}

impl Sandbox {
    /// Finds out what confinement this machine allows: whether Meshploy is root, whether
    /// Landlock works (by a probe process that restricts itself), whether cgroups can be made.
    pub fn detect(options: Options) -> Result<Sandbox, SandboxError> {
        let root = reconciler::postgres::running_as_root();
        let replicas = match (options.run_as.as_deref(), root) {
            (Some(_), false) => return Err(SandboxError::RunAsNeedsRoot),
            (None | Some("auto"), true) => RunAs::PerDeployment,
            (None, false) => RunAs::Meshploy,
            (Some(name), true) => {
                let (uid, gid) = user(name).ok_or_else(|| SandboxError::NoSuchUser(name.into()))?;
                if uid == 0 {
                    return Err(SandboxError::RunAsRoot(name.into()));
                }
                RunAs::User {
                    name: name.into(),
                    uid,
                    gid,
                }
            }
        };
        let mut hidden = vec![options.home.clone()];
        hidden.extend(options.hidden);
        let hidden = hidden
            .into_iter()
            .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
            .collect();
        let landlock = probe(&options.exe)?;
        let cgroups = if root {
            cgroup_base(&options.home)
        } else {
            None
        };
        Ok(Sandbox {
            exe: options.exe,
            hidden,
            landlock,
            cgroups,
            replicas,
            root,
        })
    }

    /// What confines jobs here, in a sentence for the start-up message and the README's claims.
    pub fn describe(&self) -> String {
        let user = match &self.replicas {
            RunAs::Meshploy => "replicas and builds run as Meshploy's own user".to_owned(),
            RunAs::PerDeployment => format!(
                "replicas run as a uid of their own per deployment (from {REPLICA_IDS}), builds as root without capabilities"
            ),
            RunAs::User { name, .. } => {
                format!("replicas run as `{name}`, builds as root without capabilities")
            }
        };
        let landlock = match self.landlock {
            Landlock::Full => "Landlock confines their files and signals",
            Landlock::Partial => {
                "Landlock confines their files (signal scoping needs Linux 6.12 or newer)"
            }
            Landlock::Unavailable => {
                "Landlock is unavailable, so nothing but file permissions keeps them out of Meshploy's home"
            }
        };
        let kill = if self.cgroups.is_some() {
            "a cgroup per job"
        } else {
            "a subreaper per job"
        };
        format!("{user}; {landlock}; {kill} stops every process it starts")
    }

    pub fn landlock(&self) -> Landlock {
        self.landlock
    }

    /// Whether replicas run as a user other than Meshploy's.
    pub fn separate_users(&self) -> bool {
        self.replicas != RunAs::Meshploy
    }

    /// The uid and gid a replica of `deployment` runs as, when not Meshploy's.
    pub fn replica_user(&self, deployment: i64) -> Option<(u32, u32)> {
        match &self.replicas {
            RunAs::Meshploy => None,
            RunAs::PerDeployment => {
                let offset = u32::try_from(deployment.rem_euclid(i64::from(REPLICA_ID_SPAN)))
                    .unwrap_or_default();
                Some((REPLICA_IDS + offset, REPLICA_IDS + offset))
            }
            RunAs::User { uid, gid, .. } => Some((*uid, *gid)),
        }
    }

    /// Starts `job` under its supervisor, with its spec written to the supervisor's
    /// standard input.
    pub async fn start(&self, job: Job<'_>) -> std::io::Result<(Started, Output)> {
        let user = match job.identity {
            Identity::Replica { deployment, .. } => self.replica_user(deployment),
            Identity::Build(_) => None,
        };
        let cgroup = match &self.cgroups {
            Some(base) => {
                let dir = base.join(job.identity.name());
                match std::fs::create_dir(&dir) {
                    Ok(()) => Some(dir),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Some(dir),
                    Err(e) => return Err(e),
                }
            }
            None => None,
        };
        let spec = Spec {
            parent: std::process::id(),
            grace_ms: u64::try_from(job.grace.as_millis()).unwrap_or(u64::MAX),
            cgroup: cgroup.clone(),
            landlock: (self.landlock != Landlock::Unavailable).then(|| Rules {
                read: readable(&self.hidden),
                write: job.writable.clone(),
            }),
            user,
            drop_capabilities: self.root && user.is_none(),
            dir: job.dir.to_owned(),
            script: job.script.to_owned(),
        };
        let spec = serde_json::to_vec(&spec).map_err(std::io::Error::other)?;
        let (reader, writer) = std::io::pipe()?;
        let mut command = tokio::process::Command::new(&self.exe);
        command
            .args(["sandbox", "supervise"])
            .current_dir("/")
            .env_clear()
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(writer.try_clone()?)
            .stderr(writer)
            .kill_on_drop(true);
        for name in INHERITED {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        for (name, value) in job.env {
            command.env(
                name,
                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(value.expose()),
            );
        }
        let mut child = command.spawn()?;
        // The command's copy of the writing end closes with it; ours must close now, or the
        // reader would never see the end of the job's output.
        drop(command);
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            stdin.write_all(&spec).await?;
        }
        let output = Output::from_owned_fd(reader.into())?;
        Ok((Started { child, cgroup }, output))
    }

    /// Kills every job a previous Meshploy with this home left in its cgroups, and removes
    /// them. Returns how many cgroups held processes.
    pub fn kill_leftovers(&self) -> usize {
        let Some(base) = &self.cgroups else {
            return 0;
        };
        let Ok(entries) = std::fs::read_dir(base) else {
            return 0;
        };
        let mut killed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if populated(&path) {
                    killed += 1;
                }
                kill_cgroup(&path);
                remove_cgroup(&path);
            }
        }
        killed
    }
}

/// Kills every process of a job's cgroup (when it has one; the supervisor kills the rest).
pub fn kill_cgroup(cgroup: &Path) {
    let _ = std::fs::write(cgroup.join("cgroup.kill"), "1");
}

/// Removes an emptied cgroup, waiting a moment for killed processes to go.
pub fn remove_cgroup(cgroup: &Path) {
    for _ in 0..100 {
        match std::fs::remove_dir(cgroup) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn populated(cgroup: &Path) -> bool {
    std::fs::read_to_string(cgroup.join("cgroup.events"))
        .is_ok_and(|events| events.lines().any(|l| l == "populated 1"))
}

/// Every path a job may read: everything but the hidden paths. Landlock grants access to
/// whole hierarchies, so the way down to each hidden path is split into its siblings.
/// Symbolic links are not granted (a link's target is readable where it really is, and a
/// link must not open a hidden path).
fn readable(hidden: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    split(Path::new("/"), hidden, &mut out);
    out
}

fn split(dir: &Path, hidden: &[PathBuf], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_symlink()) || hidden.contains(&path) {
            continue;
        }
        if hidden.iter().any(|h| h.starts_with(&path)) {
            split(&path, hidden, out);
        } else {
            out.push(path);
        }
    }
}

/// The cgroup v2 directory under which this home's jobs get theirs, made if Meshploy may.
fn cgroup_base(home: &Path) -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // Fields: id parent major:minor root mount-point options ... - type source options.
    let mount = mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        after
            .starts_with("cgroup2 ")
            .then(|| before.split(' ').nth(4).map(PathBuf::from))
            .flatten()
    })?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let digest = Sha256::digest(home.as_os_str().as_encoded_bytes());
    let name: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    let base = mount
        .join(own.trim_start_matches('/'))
        .join(format!("meshploy-{name}"));
    match std::fs::create_dir(&base) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(_) => return None,
    }
    base.join("cgroup.kill").exists().then_some(base)
}

/// A user's uid and gid from `/etc/passwd`.
fn user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [n, _, uid, gid, ..] if *n == name => Some((uid.parse().ok()?, gid.parse().ok()?)),
            _ => None,
        }
    })
}

/// Asks a throwaway process to restrict itself as a job would, and says how it went.
fn probe(exe: &Path) -> Result<Landlock, SandboxError> {
    let failed = |error| SandboxError::Probe {
        exe: exe.to_owned(),
        error,
    };
    let output = std::process::Command::new(exe)
        .args(["sandbox", "probe"])
        .stdin(Stdio::null())
        .output()
        .map_err(failed)?;
    serde_json::from_slice(&output.stdout).map_err(|e| failed(std::io::Error::other(e)))
}

// ---- The stages, run in their own processes by `meshploy sandbox STAGE`. ----

/// Runs one stage of the sandbox in this process: `supervise`, `confine` or `probe`.
pub fn main(stage: &str) -> ExitCode {
    // Nothing may read this process's memory, whichever stage it is.
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    match stage {
        "probe" => {
            let status = restrict(&Rules {
                read: vec![],
                write: vec![],
            });
            let found = match status {
                Ok(status) => status,
                Err(_) => Landlock::Unavailable,
            };
            println!("{}", serde_json::to_string(&found).unwrap_or_default());
            ExitCode::SUCCESS
        }
        "supervise" | "confine" => {
            let mut input = Vec::new();
            let spec = std::io::stdin()
                .read_to_end(&mut input)
                .map_err(|e| e.to_string())
                .and_then(|_| serde_json::from_slice::<Spec>(&input).map_err(|e| e.to_string()));
            match spec {
                Ok(spec) if stage == "supervise" => supervise(&spec, &input),
                Ok(spec) => confine(&spec),
                Err(error) => {
                    eprintln!("[meshploy] the sandbox got no valid instructions: {error}");
                    ExitCode::from(126)
                }
            }
        }
        other => {
            eprintln!("meshploy sandbox: no stage `{other}` (supervise, confine, probe)");
            ExitCode::from(2)
        }
    }
}

/// The supervisor: starts the confine stage, waits for it, and stops every process the job
/// started when it ends or is told to.
fn supervise(spec: &Spec, input: &[u8]) -> ExitCode {
    // Ends with Meshploy (as a stop, through SIGTERM), and not after it: if Meshploy died
    // before the signal was arranged, the parent is someone else already.
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::TERM));
    if rustix::process::getppid().map(raw) != Some(spec.parent) {
        return ExitCode::from(125);
    }
    if let Err(error) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        eprintln!("[meshploy] cannot adopt the job's orphans: {error}");
        return ExitCode::from(126);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("[meshploy] cannot supervise the job: {error}");
            return ExitCode::from(126);
        }
    };
    let status = runtime.block_on(watch(spec, input));
    kill_all(spec.cgroup.as_deref());
    exit_as(status)
}

/// How the job's main process ended, if it did before the supervisor was told to stop it.
type Status = Option<rustix::process::WaitStatus>;

async fn watch(spec: &Spec, input: &[u8]) -> Status {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut now), Ok(mut child)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::user_defined1()),
        signal(SignalKind::child()),
    ) else {
        eprintln!("[meshploy] cannot watch the job's signals");
        return None;
    };
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let started = std::process::Command::new(exe)
        .args(["sandbox", "confine"])
        .current_dir("/")
        .process_group(0)
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut confine| {
            let mut stdin = confine.stdin.take().ok_or(std::io::ErrorKind::BrokenPipe)?;
            stdin.write_all(input)?;
            Ok(confine.id())
        });
    let main = match started {
        Ok(pid) => pid,
        Err(error) => {
            eprintln!("[meshploy] cannot start the job: {error}");
            return None;
        }
    };
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let until = deadline.unwrap_or_else(|| tokio::time::Instant::now() + YEAR);
        tokio::select! {
            _ = child.recv() => {
                if let Some(status) = reap(main) {
                    return Some(status);
                }
            }
            _ = term.recv() => stop(main, spec, &mut deadline),
            _ = int.recv() => stop(main, spec, &mut deadline),
            _ = now.recv() => return None,
            () = tokio::time::sleep_until(until), if deadline.is_some() => return None,
        }
    }
}

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// Asks the job to stop (SIGTERM to its main process's group), once, and starts the grace.
fn stop(main: u32, spec: &Spec, deadline: &mut Option<tokio::time::Instant>) {
    if deadline.is_none() {
        if let Some(pid) = pid(main) {
            let _ = rustix::process::kill_process_group(pid, Signal::TERM);
        }
        *deadline = Some(tokio::time::Instant::now() + Duration::from_millis(spec.grace_ms));
    }
}

/// Reaps every child that ended; returns the main process's status if it was among them.
fn reap(main: u32) -> Status {
    let mut found = None;
    while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
        if raw(pid) == main {
            found = Some(status);
        }
    }
    found
}

/// Kills every process the job left: its cgroup at once when it has one, then every child of
/// the supervisor (all orphans are, since it is their subreaper) until none is left.
fn kill_all(cgroup: Option<&Path>) {
    if let Some(cgroup) = cgroup {
        kill_cgroup(cgroup);
    }
    let me = raw(rustix::process::getpid());
    for _ in 0..1000 {
        let children = children_of(me);
        if children.is_empty() {
            break;
        }
        for child in children {
            if let Some(pid) = pid(child) {
                let _ = rustix::process::kill_process_group(pid, Signal::KILL);
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
        while let Ok(Some(_)) = rustix::process::wait(WaitOptions::NOHANG) {}
    }
    while let Ok(Some(_)) = rustix::process::wait(WaitOptions::NOHANG) {}
}

/// The pids whose parent is `parent`, from `/proc/PID/stat` (field 4).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // The command name (field 2) may hold spaces and parentheses; fields after it
            // do not.
            let ppid: u32 = stat[stat.rfind(')')? + 1..]
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// Ends the supervisor as its job's main process ended: with its exit code, or by its signal
/// (as 128 + the signal when the supervisor handles that signal itself).
fn exit_as(status: Status) -> ExitCode {
    let Some(status) = status else {
        return ExitCode::from(143);
    };
    if let Some(code) = status.exit_status() {
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    if let Some(signal) = status.terminating_signal() {
        let handled = [Signal::TERM, Signal::INT, Signal::USR1, Signal::CHILD];
        if let Some(signal) = Signal::from_named_raw(signal).filter(|s| !handled.contains(s)) {
            let _ = rustix::process::kill_process(rustix::process::getpid(), signal);
        }
        return ExitCode::from(u8::try_from(128 + signal).unwrap_or(1));
    }
    ExitCode::from(1)
}

/// The confine stage: joins the cgroup, restricts itself, becomes the job's user and replaces
/// itself with `sh -c SCRIPT`. Returns only if that fails.
fn confine(spec: &Spec) -> ExitCode {
    if let Some(cgroup) = &spec.cgroup {
        let procs = cgroup.join("cgroup.procs");
        if let Err(error) = std::fs::write(&procs, std::process::id().to_string()) {
            eprintln!("[meshploy] cannot join {}: {error}", procs.display());
            return ExitCode::from(126);
        }
    }
    if let Some(rules) = &spec.landlock
        && let Err(error) = restrict(rules)
    {
        eprintln!("[meshploy] cannot confine the job with Landlock: {error}");
        return ExitCode::from(126);
    }
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        .arg(&spec.script)
        .current_dir(&spec.dir)
        .stdin(Stdio::null());
    match spec.user {
        // std sets the groups, gid and uid before it runs `sh`; leaving uid 0 drops every
        // capability.
        Some((uid, gid)) => {
            command.uid(uid).gid(gid);
        }
        None if spec.drop_capabilities => {
            if let Err(error) = drop_capabilities() {
                eprintln!("[meshploy] cannot drop the job's capabilities: {error}");
                return ExitCode::from(126);
            }
        }
        None => {}
    }
    let error = command.exec();
    eprintln!("[meshploy] cannot run the job's command: {error}");
    ExitCode::from(127)
}

/// Empties the bounding set first (so that running a program as uid 0 grants nothing), then
/// the thread's own sets.
fn drop_capabilities() -> std::io::Result<()> {
    use rustix::thread::{CapabilitySet, CapabilitySets};
    for capability in CapabilitySet::all().iter() {
        match rustix::thread::remove_capability_from_bounding_set(capability) {
            Ok(()) | Err(rustix::io::Errno::INVAL) => {}
            Err(error) => return Err(error.into()),
        }
    }
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    )?;
    Ok(())
}

/// Restricts this process (and what it runs) with Landlock: `rules.read` read-only,
/// `rules.write` and the devices writable, nothing else; no signals or abstract unix
/// sockets outside. Best effort: what the kernel lacks is said in the result.
fn restrict(rules: &Rules) -> Result<Landlock, landlock::RulesetError> {
    use landlock::{
        ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
        path_beneath_rules,
    };
    let abi = ABI::V6;
    let read = AccessFs::from_read(abi);
    let device = read | AccessFs::WriteFile | AccessFs::IoctlDev;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .scope(Scope::Signal | Scope::AbstractUnixSocket)?
        .create()?
        .add_rules(path_beneath_rules(&rules.read, read))?
        .add_rules(path_beneath_rules(DEVICES, device))?
        .add_rules(path_beneath_rules(&rules.write, AccessFs::from_all(abi)))?
        .restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Landlock::Full,
        RulesetStatus::PartiallyEnforced => Landlock::Partial,
        RulesetStatus::NotEnforced => Landlock::Unavailable,
    })
}

fn raw(pid: Pid) -> u32 {
    pid.as_raw_nonzero().get().unsigned_abs()
}

fn pid(raw: u32) -> Option<Pid> {
    i32::try_from(raw).ok().and_then(Pid::from_raw)
}
