//! Child processes, as builds and the local runtime run them: a shell command in its own
//! process group (so stopping it stops everything it started), a clean environment, and its
//! output captured line by line, redacted, into a log stream.

use std::collections::VecDeque;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reconciler::secrets::Plaintext;
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

use crate::lines::{Lines, Redactor};
use crate::logs::LogWriter;

/// The variables a child inherits from Meshploy's own environment; nothing else does, so
/// Meshploy's keys and database settings never reach a service.
const INHERITED: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR",
];

/// The longest captured line, in bytes.
pub const MAX_LINE: usize = 8 * 1024;

/// `sh -c script` in `dir` with exactly `env` (after the inherited variables), in a new
/// process group, output piped.
pub fn shell(script: &str, dir: &Path, env: &[(String, Plaintext)]) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env_clear()
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for name in INHERITED {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    for (name, value) in env {
        command.env(name, std::ffi::OsStr::from_bytes(value.expose()));
    }
    command
}

/// The last lines a process wrote, for failure reasons.
#[derive(Clone, Debug, Default)]
pub struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    const KEEP: usize = 5;

    fn push(&self, line: &str) {
        if let Ok(mut lines) = self.0.lock() {
            if lines.len() == Self::KEEP {
                lines.pop_front();
            }
            lines.push_back(line.to_owned());
        }
    }

    pub fn last(&self) -> Option<String> {
        self.0.lock().ok()?.back().cloned()
    }

    /// The kept lines, one per line.
    pub fn text(&self) -> String {
        self.0
            .lock()
            .map(|lines| lines.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    pub fn clear(&self) {
        if let Ok(mut lines) = self.0.lock() {
            lines.clear();
        }
    }
}

/// Starts copying the child's stdout and stderr, line by line and redacted, into `log`.
pub fn capture(
    child: &mut Child,
    log: &Arc<LogWriter>,
    redactor: &Arc<Redactor>,
    tail: &Tail,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(out) = child.stdout.take() {
        tasks.push(tokio::spawn(copy(
            out,
            log.clone(),
            redactor.clone(),
            tail.clone(),
        )));
    }
    if let Some(err) = child.stderr.take() {
        tasks.push(tokio::spawn(copy(
            err,
            log.clone(),
            redactor.clone(),
            tail.clone(),
        )));
    }
    tasks
}

async fn copy(
    mut reader: impl AsyncRead + Unpin,
    log: Arc<LogWriter>,
    redactor: Arc<Redactor>,
    tail: Tail,
) {
    let mut lines = Lines::new(MAX_LINE);
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for line in lines.push(&buffer[..n]) {
            let line = redactor.redact(line);
            tail.push(&line);
            log.line(line).await;
        }
    }
    if let Some(line) = lines.finish() {
        let line = redactor.redact(line);
        tail.push(&line);
        log.line(line).await;
    }
}

/// Sends `signal` to the process group led by `pid`. A group that is gone already is fine.
pub fn signal_group(pid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process_group(pid, signal);
    }
}

/// Stops a child and its group: SIGTERM, up to `grace` to exit, then SIGKILL.
pub async fn terminate(child: &mut Child, grace: Duration) {
    let Some(pid) = child.id() else {
        return;
    };
    signal_group(pid, Signal::TERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        signal_group(pid, Signal::KILL);
        let _ = child.wait().await;
    }
    // Whatever the shell started and left behind goes with it.
    signal_group(pid, Signal::KILL);
}

/// How a process ended, in words.
pub fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "ended".to_owned(),
    }
}

/// Waits for the capture tasks to see the end of their pipes, for at most a moment: a
/// process left behind may hold a pipe open.
pub async fn drain(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
}
