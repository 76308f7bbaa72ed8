//! The output of jobs (builds and replicas, started by [`crate::sandbox`]), captured line by
//! line, redacted, into a log stream, with the last lines kept for failure reasons.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::lines::{Lines, Redactor};
use crate::logs::LogWriter;
use crate::sandbox::Output;

/// The longest captured line, in bytes.
pub const MAX_LINE: usize = 8 * 1024;

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

/// Starts copying a job's output (its standard output and standard error, one pipe), line
/// by line and redacted, into `log`.
pub fn capture(
    output: Output,
    log: &Arc<LogWriter>,
    redactor: &Arc<Redactor>,
    tail: &Tail,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(copy(output, log.clone(), redactor.clone(), tail.clone()))
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
            log.output(line).await;
        }
    }
    if let Some(line) = lines.finish() {
        let line = redactor.redact(line);
        tail.push(&line);
        log.output(line).await;
    }
}

/// Sends `signal` to the process `pid`. A process that is gone already is fine.
pub fn signal(pid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, signal);
    }
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

/// Waits for the capture task to see the end of the pipe, for at most a moment.
pub async fn drain(task: tokio::task::JoinHandle<()>) {
    let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
}
