//! Writes a synthetic manifest repository for benchmarks.
//!
//! ```text
//! cargo run --release --example gen_repo -- --resources 10000 /tmp/repo
//! ```

#[path = "support/generate.rs"]
mod generate;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (resources, dir) = match args.as_slice() {
        [flag, n, dir] if flag == "--resources" => match n.parse::<usize>() {
            Ok(n) => (n, PathBuf::from(dir)),
            Err(_) => return usage(&format!("`{n}` is not a number")),
        },
        _ => return usage("expected --resources N DIR"),
    };
    match generate::write_repo(&dir, resources) {
        Ok(written) => {
            println!("wrote {written} resources to {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("error: {problem}\nusage: gen_repo --resources N DIR");
    ExitCode::from(2)
}
