//! Measures `meshploy validate` on synthetic repositories and on a YAML alias bomb: wall
//! time and peak resident memory of the real binary, as a user would run it.
//!
//! ```text
//! cargo run --release --example bench_validate [-- --resources 10000 --runs 5]
//! ```
//!
//! It builds the release binary first and measures each run with `/usr/bin/time` (Debian's
//! `time` package), which reports the child's peak RSS.

// The support modules are shared by several programs; not every one uses every helper.
#[allow(dead_code)]
#[path = "support/generate.rs"]
mod generate;
#[allow(dead_code)]
#[path = "support/measure.rs"]
mod measure;
#[path = "support/yaml_bomb.rs"]
mod yaml_bomb;

use std::path::Path;
use std::process::ExitCode;

use measure::build_binary;

fn main() -> ExitCode {
    measure::exit(run())
}

fn run() -> Result<(), String> {
    let (mut resources, mut runs) = (10_000, 5);
    measure::numbers(
        "bench_validate [--resources N] [--runs K]",
        &mut [("--resources", &mut resources), ("--runs", &mut runs)],
    )?;
    let binary = build_binary()?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let repo = dir.path().join("repo");
    let written = generate::write_repo(&repo, resources).map_err(|e| e.to_string())?;
    println!("meshploy validate on {written} resources ({runs} runs, release build):");
    let mut samples = Vec::new();
    for _ in 0..runs {
        let m = measure(&binary, &repo)?;
        if m.exit_code != 0 {
            return Err(format!(
                "validate exited {} on the generated repo",
                m.exit_code
            ));
        }
        samples.push(m);
    }
    samples.sort_by(|a, b| a.wall_ms.total_cmp(&b.wall_ms));
    let median = &samples[samples.len() / 2];
    let worst_rss = samples.iter().map(|m| m.peak_rss_mb).fold(0.0, f64::max);
    println!(
        "  wall: min {:.0} ms, median {:.0} ms, max {:.0} ms",
        samples[0].wall_ms,
        median.wall_ms,
        samples[samples.len() - 1].wall_ms
    );
    println!("  peak RSS: {worst_rss:.1} MB (largest of {runs} runs)");
    println!("  targets: under 300 ms wall, under 100 MB peak RSS");

    let bomb_dir = dir.path().join("bomb");
    std::fs::create_dir_all(&bomb_dir).map_err(|e| e.to_string())?;
    let bomb = yaml_bomb::billion_laughs();
    std::fs::write(bomb_dir.join("bomb.yaml"), &bomb).map_err(|e| e.to_string())?;
    let m = measure(&binary, &bomb_dir)?;
    println!(
        "billion laughs ({} bytes, 10^9 nodes if expanded): exit {}, {:.0} ms, peak RSS {:.1} MB",
        bomb.len(),
        m.exit_code,
        m.wall_ms,
        m.peak_rss_mb
    );
    println!("  targets: rejected (exit 1) in under 1 s with under 50 MB");
    if m.exit_code != 1 {
        return Err("the alias bomb was not rejected".into());
    }
    Ok(())
}

fn measure(binary: &Path, dir: &Path) -> Result<measure::Measurement, String> {
    let dir = dir.to_str().ok_or("temporary path is not UTF-8")?;
    measure::measure(binary, &["validate", dir], &[])
}
