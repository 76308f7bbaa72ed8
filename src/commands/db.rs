//! `meshploy db` (the embedded PostgreSQL) and `meshploy migrate`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use reconciler::postgres::Status;
use reconciler::store;

use crate::cli::{DbArgs, DbCommand};
use crate::database;

pub fn run(command: DbCommand, home: Option<PathBuf>) -> Result<ExitCode> {
    let home = database::home(home)?;
    if let (DbCommand::Stop, Some(pid)) = (command, super::up::holder(&home)) {
        bail!(
            "`meshploy up` (pid {pid}) runs on this database; stop it (Ctrl-C), and it stops the database too"
        );
    }
    let cluster = database::cluster(Some(home))?;
    let dir = cluster.dir().display();
    match command {
        DbCommand::Start => {
            if cluster.start()? {
                outln!("Started the embedded PostgreSQL in {dir}.")?;
            } else {
                outln!("The embedded PostgreSQL in {dir} is already running.")?;
            }
        }
        DbCommand::Stop => {
            if cluster.stop()? {
                outln!("Stopped the embedded PostgreSQL in {dir}.")?;
            } else {
                outln!("The embedded PostgreSQL in {dir} is not running.")?;
            }
        }
        DbCommand::Status => match cluster.status()? {
            Status::NotCreated => {
                outln!(
                    "The embedded PostgreSQL in {dir} has not been created yet; any command that needs it creates it."
                )?;
                return Ok(ExitCode::from(3));
            }
            Status::Stopped => {
                outln!("The embedded PostgreSQL in {dir} is stopped.")?;
                return Ok(ExitCode::from(3));
            }
            Status::Running => outln!(
                "The embedded PostgreSQL in {dir} is running (log: {}).",
                cluster.log_file().display()
            )?,
        },
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn migrate(db: &DbArgs) -> Result<ExitCode> {
    // Connecting runs the migrations.
    database::connect(db, "migrate").await?;
    let latest = store::MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    outln!("The database schema is at version {latest}.")?;
    Ok(ExitCode::SUCCESS)
}
