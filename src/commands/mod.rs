//! One module per subcommand; `run` dispatches.

mod apply;
mod db;
mod deployments;
mod history;
mod plan;
mod proxy;
mod runtime;
mod secret;
mod serve;
mod status;
mod token;
mod up;
mod validate;

use std::process::ExitCode;

use anyhow::{Context, Result};
use reconciler::plan::Guard;
use reconciler::secrets::Keyring;

use crate::cli::{Cli, Command, GuardArgs, KeyArgs};

pub async fn run(cli: Cli) -> Result<ExitCode> {
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
        Command::Openapi => {
            println!("{:#}", api::openapi::document());
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            println!("{:#}", schema::json_schema::document_schema());
            Ok(ExitCode::SUCCESS)
        }
    }
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

/// Whether standard output is a terminal that takes colour.
fn color() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}
