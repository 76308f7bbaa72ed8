//! `git` for the benchmark programs: a fixed identity, no user or system configuration.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `git ARGS` in `dir` and returns its trimmed standard output.
pub fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    git_with_input(dir, args, "")
}

/// Runs `git ARGS` in `dir` with `input` on standard input (`mktree` reads its listing
/// there, `hash-object --stdin` its object) and returns its trimmed standard output.
pub fn git_with_input(
    dir: &Path,
    args: &[&str],
    input: impl AsRef<[u8]>,
) -> Result<String, String> {
    let mut child = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Meshploy Bench")
        .env("GIT_AUTHOR_EMAIL", "bench@meshploy.invalid")
        .env("GIT_COMMITTER_NAME", "Meshploy Bench")
        .env("GIT_COMMITTER_EMAIL", "bench@meshploy.invalid")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_ref())
            .map_err(|e| format!("cannot write to git: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
