//! Writes a synthetic manifest repository for benchmarks.
//!
//! ```text
//! cargo run --release --example gen_repo -- --resources 10000 /tmp/repo
//! cargo run --release --example gen_repo -- --resources 10000 --change-percent 1 /tmp/repo
//! ```
//!
//! With `--change-percent P`, about P% of the resources differ from a plain run (their
//! services' replicas): generate once, apply, generate again with the option, and plan.

#[path = "support/generate.rs"]
mod generate;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: gen_repo --resources N [--change-percent P] DIR";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (resources, percent, dir) = match args.as_slice() {
        [flag, n, dir] if flag == "--resources" => (n, None, dir),
        [flag, n, change, p, dir] if flag == "--resources" && change == "--change-percent" => {
            (n, Some(p), dir)
        }
        _ => return usage("expected --resources N [--change-percent P] DIR"),
    };
    let Ok(resources) = resources.parse::<usize>() else {
        return usage(&format!("`{resources}` is not a number"));
    };
    let percent = match percent.map(|p| p.parse::<f64>()) {
        None => None,
        Some(Ok(p)) if (0.0..=100.0).contains(&p) => Some(p),
        Some(_) => return usage("--change-percent takes a number from 0 to 100"),
    };
    let dir = PathBuf::from(dir);
    let written = generate::write_repo(&dir, resources).and_then(|written| {
        percent.map_or(Ok((written, 0)), |p| {
            generate::change_percent(&dir, written, p).map(|changed| (written, changed))
        })
    });
    match written {
        Ok((written, changed)) => {
            println!(
                "wrote {written} resources ({changed} changed) to {}",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("error: {problem}\n{USAGE}");
    ExitCode::from(2)
}
