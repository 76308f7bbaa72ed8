//! The `meshploy` command: a thin layer that parses arguments and wires the crates together.

mod cli;
mod commands;
mod database;
mod manifests;
mod ports;

use std::process::ExitCode;

use clap::Parser;

/// Parsing manifests allocates many small strings; mimalloc parses a 10,000-resource
/// repository measurably faster than the system allocator (figures in ARCHITECTURE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // No process of the same user (a replica, a build) may read this one's memory or
    // environment through /proc or ptrace: they hold the keys and the database's password.
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    // `meshploy sandbox STAGE` is how Meshploy runs builds and replicas, not a command for
    // people: it is not in the command line's help.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == "sandbox") {
        let stage = args.next().unwrap_or_default();
        return builder::sandbox::main(&stage.to_string_lossy());
    }
    let cli = cli::Cli::parse();
    // The daemon reports what it does; one-shot commands only warn.
    let default_level = if matches!(
        cli.command,
        cli::Command::Serve(_) | cli::Command::Proxy(_) | cli::Command::Up(_)
    ) {
        "info,sqlx=warn"
    } else {
        "warn"
    };
    logging(cli.log_json, default_level);
    // sqlx's TLS uses rustls with aws-lc-rs; installing it explicitly keeps a second provider
    // pulled in by another crate from making the choice ambiguous at run time.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // `serve` answers HTTP while it reconciles, so planning thousands of resources must not
    // hold up a health check: it gets a thread per core. Every other command is one task at
    // a time (the proxy starts its own worker threads).
    let runtime = match cli.command {
        cli::Command::Serve(_) | cli::Command::Up(_) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            // Blocking work (checkouts, working copies, git reads) is disk-bound: a few
            // threads do it as fast as many, and each thread costs its own allocator heap.
            .max_blocking_threads(8)
            .build(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            // An error may quote what a manifest, a process or a forge said.
            let text = format!("{error:#}");
            eprintln!("error: {}", report::printable(&text, report::Lines::Keep));
            ExitCode::FAILURE
        }
    }
}

/// Logs to standard error, filtered by `RUST_LOG` (default: `default_level`).
fn logging(json: bool, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
