//! One module per subcommand; `run` dispatches.
//!
//! Commands write to standard output with [`out!`] and [`outln!`] rather than `print!`:
//! a reader that goes away (`meshploy status | head`) is an error they return, not a panic,
//! and `run` ends the command quietly, as a process killed by SIGPIPE would.

/// `print!` that returns an error instead of panicking when standard output is closed.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*).map_err($crate::commands::output_error)
    }};
}

/// `println!` that returns an error instead of panicking when standard output is closed.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::commands::output_error)
    }};
}

mod apply;
mod db;
mod deployments;
mod history;
mod plan;
mod proxy;
mod runtime;
mod secret;
mod serve;
mod source;
mod status;
mod token;
mod up;
mod validate;

use std::process::ExitCode;

use anyhow::{Context, Result};
use reconciler::plan::Guard;
use reconciler::secrets::Keyring;

use crate::cli::{Cli, Command, GuardArgs, KeyArgs};

/// What a shell reports for a process killed by SIGPIPE (128 + 13).
const SIGPIPE_EXIT: u8 = 141;

/// Standard output's reader went away: the output is cut short, and nothing is wrong.
#[derive(Debug)]
struct ReaderGone;

impl std::fmt::Display for ReaderGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for ReaderGone {}

/// The error of a failed write to standard output.
fn output_error(error: std::io::Error) -> anyhow::Error {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        ReaderGone.into()
    } else {
        anyhow::Error::new(error).context("cannot write to standard output")
    }
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    for warning in secret_flags(std::env::args_os().skip(1)) {
        eprintln!("{warning}");
    }
    match dispatch(cli).await {
        Err(error) if error.is::<ReaderGone>() => Ok(ExitCode::from(SIGPIPE_EXIT)),
        outcome => outcome,
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Validate { dir, format } => validate::run(&dir, format),
        Command::Plan(args) => plan::run(args).await,
        Command::Apply(args) => apply::run(args).await,
        Command::History { limit, format, db } => history::list(&db, limit, format).await,
        Command::Show {
            revision,
            format,
            db,
        } => history::show(&db, revision, format).await,
        Command::State(command) => history::state(command).await,
        Command::Migrate { db } => db::migrate(&db).await,
        Command::Db { command, home } => db::run(command, home),
        Command::Secret(command) => secret::run(command).await,
        Command::Token(command) => token::run(command).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Proxy(args) => proxy::run(args).await,
        Command::Up(args) => up::run(*args).await,
        Command::Deployments {
            service,
            limit,
            format,
            db,
        } => deployments::list(&db, service.as_deref(), limit, format).await,
        Command::Logs(args) => deployments::logs(args).await,
        Command::Rollback {
            service,
            to,
            wait,
            db,
        } => deployments::rollback(&db, &service, to, wait).await,
        Command::Status { format, db } => status::status(&db, format).await,
        Command::Sync {
            source,
            wait,
            no_wait,
            db,
        } => status::sync(&db, &source, wait, no_wait).await,
        Command::Source(command) => source::run(command).await,
        Command::Openapi => {
            outln!("{:#}", api::openapi::document())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            outln!("{:#}", schema::json_schema::document_schema())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Secrets that, given as flags, every user of the machine can read (`/proc/PID/cmdline`,
/// `ps`), and where to give them instead.
const SECRET_FLAGS: [(&str, &str); 3] = [
    ("--webhook-secret", "set MESHPLOY_WEBHOOK_SECRET instead"),
    ("--api-token", "set MESHPLOY_API_TOKEN instead"),
    (
        "--secret-keys",
        "give a file with --secret-keys-file or MESHPLOY_SECRET_KEYS_FILE, or set MESHPLOY_SECRET_KEYS, instead",
    ),
];

/// A warning for each secret given as a flag among `args`; the values are never repeated.
fn secret_flags(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<String> {
    let args: Vec<String> = args
        .map(|a| a.to_string_lossy().into_owned())
        .take_while(|a| a != "--")
        .collect();
    SECRET_FLAGS
        .iter()
        .filter(|(flag, _)| {
            args.iter()
                .any(|a| a == flag || a.strip_prefix(flag).is_some_and(|r| r.starts_with('=')))
        })
        .map(|(flag, instead)| {
            format!(
                "warning: {flag} on the command line can be read by every user of this machine (in /proc/PID/cmdline and `ps`); {instead}"
            )
        })
        .collect()
}

/// The configured keys, if any: `--secret-keys` or the file `--secret-keys-file`.
fn keyring(args: &KeyArgs) -> Result<Option<Keyring>> {
    let spec = match (&args.secret_keys, &args.secret_keys_file) {
        (Some(spec), _) => spec.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the secret keys file {}", path.display()))?,
        (None, None) => return Ok(None),
    };
    Ok(Some(Keyring::parse(&spec)?))
}

fn guard(args: &GuardArgs) -> Guard {
    Guard {
        max_destroy_fraction: f64::from(args.max_destroy_percent) / 100.0,
        allow_destroy: args.allow_destroy,
    }
}

/// `text` from a process, git or a forge, made printable: its first line after `first` and
/// each further line after `rest`, every line ending in a newline.
fn shown_lines(text: &str, first: &str, rest: &str) -> String {
    report::printable(text, report::Lines::Keep)
        .lines()
        .enumerate()
        .map(|(i, line)| format!("{}{line}\n", if i == 0 { first } else { rest }))
        .collect()
}

/// Whether standard output is a terminal that takes colour.
fn color() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_given_as_flags_are_warned_about_by_name_only() {
        let warnings = |args: &[&str]| secret_flags(args.iter().map(Into::into));
        let found = warnings(&[
            "serve",
            "--webhook-secret",
            "s3cr3t",
            "--api-token=t0k3n",
            "--secret-keys-file",
            "keys.txt",
        ]);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("warning: --webhook-secret on the command line"));
        assert!(found[0].contains("MESHPLOY_WEBHOOK_SECRET"));
        assert!(found[1].starts_with("warning: --api-token on the command line"));
        assert!(
            found
                .iter()
                .all(|w| !w.contains("s3cr3t") && !w.contains("t0k3n"))
        );
        let keys = warnings(&["plan", "--secret-keys", "k1:x"]);
        assert!(keys[0].contains("MESHPLOY_SECRET_KEYS_FILE"), "{keys:?}");
        assert!(warnings(&["serve", "--secret-keys-file=k", "--api-tokens"]).is_empty());
        assert!(warnings(&["validate", "--", "--api-token"]).is_empty());
    }
}
