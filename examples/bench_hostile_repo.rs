//! Measures `meshploy plan --repo` on two small hostile repositories, as an attacker would
//! push them: peak resident memory and wall time of the real binary.
//!
//! ```text
//! cargo run --release --example bench_hostile_repo
//! ```
//!
//! - `big.yaml`: one 2 GiB file of zeros (a few MB packed);
//! - 3,000 tree entries naming one 1 MiB blob (3 GB if every entry were read).
//!
//! Both must be refused from the object headers, before anything large is inflated. Needs
//! `git` and `/usr/bin/time` (Debian's `time` package).

// The support modules are shared by several programs; not every one uses every helper.
#[path = "support/git_cli.rs"]
mod git_cli;
#[allow(dead_code)]
#[path = "support/measure.rs"]
mod measure;

use std::process::ExitCode;

use git_cli::{git, git_with_input};

fn main() -> ExitCode {
    measure::exit(run())
}

fn run() -> Result<(), String> {
    let binary = measure::build_binary()?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let home = dir.path().join("home");

    let big = dir.path().join("big");
    git(dir.path(), &["init", "-q", "-b", "main", "big"])?;
    let file = std::fs::File::create(big.join("big.yaml")).map_err(|e| e.to_string())?;
    // A sparse file: two GiB of zeros without writing them.
    file.set_len(2 << 30).map_err(|e| e.to_string())?;
    git(&big, &["add", "big.yaml"])?;
    git(&big, &["commit", "-q", "-m", "big"])?;

    let many = dir.path().join("many");
    git(dir.path(), &["init", "-q", "-b", "main", "many"])?;
    std::fs::write(
        many.join("blob"),
        format!("# {}\n", "x".repeat(1024 * 1024 - 3)),
    )
    .map_err(|e| e.to_string())?;
    let blob = git(&many, &["hash-object", "-w", "blob"])?;
    let listing: String = (0..3_000)
        .map(|i| format!("100644 blob {blob}\tm{i:05}.yaml\n"))
        .collect();
    let tree = git_with_input(&many, &["mktree"], &listing)?;
    let commit = git(&many, &["commit-tree", &tree, "-m", "many"])?;
    git(&many, &["update-ref", "refs/heads/main", &commit])?;

    for (name, repo) in [("2 GiB big.yaml", &big), ("3,000 entries x 1 MiB", &many)] {
        let repo = repo.display().to_string();
        let home = home.display().to_string();
        let run = measure::measure(
            &binary,
            &["plan", "--repo", &repo, "--ref", "main"],
            &[
                ("MESHPLOY_HOME", &home),
                ("DATABASE_URL", "postgres://unused"),
            ],
        )?;
        let error = run
            .stderr
            .lines()
            .find(|l| l.starts_with("error"))
            .unwrap_or_default()
            .to_owned();
        println!(
            "{name:>22}: exit {}, {:.0} ms, peak RSS {:.1} MB; {error}",
            run.exit_code, run.wall_ms, run.peak_rss_mb
        );
    }
    println!("target: peak RSS under 100 MB for each");
    Ok(())
}
