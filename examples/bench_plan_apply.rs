//! Measures `meshploy plan` and `apply` against a real PostgreSQL on synthetic repositories:
//! wall time and peak resident memory of the release binary, as a user would run it.
//!
//! ```text
//! cargo run --release --example bench_plan_apply [-- --resources 1000,10000 --runs 3]
//! ```
//!
//! For each size it starts a private PostgreSQL cluster (the same code as the embedded
//! default, with fsync on), then measures: plan against the empty database, apply of every
//! create, a no-op plan, and a plan and apply after changing 1% of the resources. Plans are
//! run `--runs` times (median shown); applies once, since they change the state.

#[allow(dead_code)]
#[path = "support/generate.rs"]
mod generate;
#[allow(dead_code)]
#[path = "support/measure.rs"]
mod measure;

use std::path::Path;
use std::process::{Command, ExitCode};

use measure::{Measurement, build_binary};
use reconciler::postgres::Cluster;

fn main() -> ExitCode {
    measure::exit(run())
}

fn run() -> Result<(), String> {
    let mut sizes = vec![1_000, 10_000];
    let mut runs = 3;
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        match pair {
            [flag, value] if flag == "--resources" => {
                sizes = value
                    .split(',')
                    .map(|n| n.parse().map_err(|_| format!("`{n}` is not a number")))
                    .collect::<Result<_, _>>()?;
            }
            [flag, value] if flag == "--runs" => {
                runs = value
                    .parse()
                    .map_err(|_| format!("`{value}` is not a number"))?;
            }
            _ => return Err("usage: bench_plan_apply [--resources N,M] [--runs K]".into()),
        }
    }
    let binary = build_binary()?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let cluster = Cluster::new(&dir.path().join("pg")).map_err(|e| e.to_string())?;
    cluster.start().map_err(|e| e.to_string())?;
    let result = sizes
        .iter()
        .try_for_each(|&n| bench(&binary, &cluster, dir.path(), n, runs));
    cluster.stop().map_err(|e| e.to_string())?;
    result?;
    println!(
        "targets at N = 10,000: no-op plan under 0.5 s, apply of all creates under 3 s, peak RSS under 150 MB"
    );
    println!(
        "Terraform 1.11 (terraform_data, local state): N = 1,000 plan 1.0 s, apply 17.9 s, no-op plan 1.2 s; N = 10,000 plan 13.5 s with 720 MB"
    );
    Ok(())
}

fn bench(
    binary: &Path,
    cluster: &Cluster,
    root: &Path,
    n: usize,
    runs: usize,
) -> Result<(), String> {
    let database = format!("bench{n}");
    let psql = Command::new(cluster.program("psql"))
        .args(["-X", "-q", "-c", &format!("CREATE DATABASE {database}")])
        .arg(cluster.conninfo("postgres"))
        .status()
        .map_err(|e| e.to_string())?;
    if !psql.success() {
        return Err("cannot create the benchmark database".into());
    }
    let url = cluster.url(&database).map_err(|e| e.to_string())?;
    let repo = root.join(format!("repo{n}"));
    let written = generate::write_repo(&repo, n).map_err(|e| e.to_string())?;
    let repo_arg = repo.to_str().ok_or("temporary path is not UTF-8")?;
    let env = [("DATABASE_URL", url.as_str())];
    let plan = ["plan", repo_arg, "--detailed-exitcode"];
    let apply = ["apply", repo_arg, "--auto-approve"];

    println!("N = {written} resources:");
    report(
        "plan, empty database",
        &median(binary, &plan, &env, runs, 2)?,
    );
    report("apply, all creates", &once(binary, &apply, &env, 0)?);
    report("plan, no changes", &median(binary, &plan, &env, runs, 0)?);
    let changed = generate::change_percent(&repo, written, 1.0).map_err(|e| e.to_string())?;
    report(
        &format!("plan, {changed} changed (1%)"),
        &median(binary, &plan, &env, runs, 2)?,
    );
    report(
        &format!("apply, {changed} changed"),
        &once(binary, &apply, &env, 0)?,
    );
    Ok(())
}

fn once(
    binary: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    expect: i32,
) -> Result<Measurement, String> {
    let m = measure::measure(binary, args, env)?;
    if m.exit_code != expect {
        return Err(format!(
            "`meshploy {}` exited {} (expected {expect}):\n{}",
            args.join(" "),
            m.exit_code,
            m.stderr
        ));
    }
    Ok(m)
}

fn median(
    binary: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    runs: usize,
    expect: i32,
) -> Result<Measurement, String> {
    let mut samples = (0..runs.max(1))
        .map(|_| once(binary, args, env, expect))
        .collect::<Result<Vec<_>, _>>()?;
    samples.sort_by(|a, b| a.wall_ms.total_cmp(&b.wall_ms));
    Ok(samples.swap_remove(samples.len() / 2))
}

fn report(what: &str, m: &Measurement) {
    println!(
        "  {what:<28} {:>7.0} ms  {:>6.1} MB peak RSS",
        m.wall_ms, m.peak_rss_mb
    );
}
