//! Runs the release `meshploy` binary under `/usr/bin/time` (Debian's `time` package) for
//! benchmarks: wall time and the child's peak resident memory.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Measurement {
    pub exit_code: i32,
    pub wall_ms: f64,
    pub peak_rss_mb: f64,
    pub stderr: String,
}

/// Builds the release binary and returns its path next to this program's, or returns the
/// binary `MESHPLOY_BENCH_BINARY` names (to compare two builds on one machine).
pub fn build_binary() -> Result<PathBuf, String> {
    // Another build (an older commit's, for an A/B comparison on the same machine) may be
    // measured instead.
    if let Some(binary) = std::env::var_os("MESHPLOY_BENCH_BINARY") {
        return Ok(PathBuf::from(binary));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--bin", "meshploy"])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("cargo build --release failed".into());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let release = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot locate the target directory")?;
    Ok(release.join("meshploy"))
}

/// Runs `meshploy ARGS` with `env`; `/usr/bin/time` prints wall seconds and peak RSS in KiB
/// on the last line of standard error.
pub fn measure(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Measurement, String> {
    let output = Command::new("/usr/bin/time")
        .args(["-f", "%e %M"])
        .arg(binary)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .map_err(|e| format!("cannot run /usr/bin/time (apt-get install time): {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let last = stderr.lines().last().unwrap_or_default().to_owned();
    let mut fields = last.split_whitespace();
    let mut number = || -> Result<f64, String> {
        fields
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or(format!("unexpected time output: {last}"))
    };
    let (seconds, kib) = (number()?, number()?);
    Ok(Measurement {
        exit_code: output.status.code().unwrap_or(-1),
        wall_ms: seconds * 1000.0,
        peak_rss_mb: kib / 1024.0,
        stderr,
    })
}

/// A benchmark's exit code: success, or the error printed.
pub fn exit(result: Result<(), String>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Reads the command line's `--flag N` pairs into `numbers`; anything else is `usage`.
pub fn numbers(usage: &str, numbers: &mut [(&str, &mut usize)]) -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            return Err(format!("usage: {usage}"));
        };
        let slot = numbers
            .iter_mut()
            .find(|(name, _)| name == flag)
            .ok_or_else(|| format!("usage: {usage}"))?;
        *slot.1 = value
            .parse()
            .map_err(|_| format!("`{value}` is not a number"))?;
    }
    Ok(())
}

/// Runs `meshploy ARGS` against the database at `url` and returns its standard output, or
/// what it said on standard error when it failed.
pub fn meshploy(binary: &Path, url: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(binary)
        .args(args)
        .env("DATABASE_URL", url)
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "`meshploy {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Builds the release binary and starts a private PostgreSQL cluster in a new temporary
/// directory, runs `bench` with the binary, the cluster and that directory, and stops the
/// cluster whatever `bench` returned.
pub fn with_cluster(
    bench: impl FnOnce(&Path, &reconciler::postgres::Cluster, &Path) -> Result<(), String>,
) -> Result<(), String> {
    let binary = build_binary()?;
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    // The server user must be able to enter it when this runs as root.
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(|e| e.to_string())?;
    let cluster =
        reconciler::postgres::Cluster::new(&root.path().join("pg")).map_err(|e| e.to_string())?;
    cluster.start().map_err(|e| e.to_string())?;
    let result = bench(&binary, &cluster, root.path());
    cluster.stop().map_err(|e| e.to_string())?;
    result
}
