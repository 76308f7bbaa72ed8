//! One module per subcommand; `run` dispatches.

mod secret;
mod validate;

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{Cli, Command};

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Validate { dir, format } => validate::run(&dir, format),
        Command::Secret(command) => secret::run(command),
        Command::Schema => {
            println!("{:#}", schema::json_schema::document_schema());
            Ok(ExitCode::SUCCESS)
        }
    }
}
