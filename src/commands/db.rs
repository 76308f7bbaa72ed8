//! `meshploy db` (the embedded PostgreSQL) and `meshploy migrate`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use reconciler::postgres::Status;
use reconciler::store;

use crate::cli::{DbArgs, DbCommand};
use crate::database;

pub fn run(command: DbCommand, home: Option<PathBuf>) -> Result<ExitCode> {
    let cluster = database::cluster(home)?;
    let dir = cluster.dir().display();
    match command {
        DbCommand::Start => {
            if cluster.start()? {
                println!("Started the embedded PostgreSQL in {dir}.");
            } else {
                println!("The embedded PostgreSQL in {dir} is already running.");
            }
        }
        DbCommand::Stop => {
            if cluster.stop()? {
                println!("Stopped the embedded PostgreSQL in {dir}.");
            } else {
                println!("The embedded PostgreSQL in {dir} is not running.");
            }
        }
        DbCommand::Status => match cluster.status()? {
            Status::NotCreated => {
                println!(
                    "The embedded PostgreSQL in {dir} has not been created yet; any command that needs it creates it."
                );
                return Ok(ExitCode::from(3));
            }
            Status::Stopped => {
                println!("The embedded PostgreSQL in {dir} is stopped.");
                return Ok(ExitCode::from(3));
            }
            Status::Running => println!(
                "The embedded PostgreSQL in {dir} is running (log: {}).",
                cluster.log_file().display()
            ),
        },
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn migrate(db: &DbArgs) -> Result<ExitCode> {
    // Connecting runs the migrations.
    database::connect(db, "migrate").await?;
    let latest = store::MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    println!("The database schema is at version {latest}.");
    Ok(ExitCode::SUCCESS)
}
