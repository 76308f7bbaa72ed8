//! Connecting to the state: `--database-url`, or the embedded PostgreSQL under
//! `MESHPLOY_HOME`, started on first use. Migrations run on every connect.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Context, Result};
use reconciler::postgres::{self, Cluster};
use reconciler::store;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::cli::DbArgs;

/// The database the embedded cluster keeps Meshploy's state in.
const DATABASE: &str = "meshploy";

/// Meshploy's data directory: `--home`/`MESHPLOY_HOME`, else the user's data directory. Root
/// gets `/var/lib/meshploy`, because the unprivileged server user cannot enter `/root`.
pub fn home(home: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(home) = home {
        return std::path::absolute(&home)
            .with_context(|| format!("cannot resolve {}", home.display()));
    }
    if postgres::running_as_root() {
        return Ok(PathBuf::from("/var/lib/meshploy"));
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .context("cannot find a data directory: set MESHPLOY_HOME")?;
    Ok(data.join("meshploy"))
}

pub fn cluster(home_dir: Option<PathBuf>) -> Result<Cluster> {
    Ok(Cluster::new(&home(home_dir)?.join("postgres"))?)
}

/// A migrated connection pool. `purpose` names this process in `pg_stat_activity`, which is
/// what a waiting apply reports as the lock holder.
pub async fn connect(args: &DbArgs, purpose: &str) -> Result<PgPool> {
    pool(args, purpose, 2).await
}

/// Like [`connect`], with up to `connections` connections.
pub async fn pool(args: &DbArgs, purpose: &str, connections: u32) -> Result<PgPool> {
    let options = options(args, purpose).await?;
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .connect_with(options)
        .await
        .context("cannot connect to PostgreSQL")?;
    store::MIGRATOR
        .run(&pool)
        .await
        .map_err(reconciler::Error::from)?;
    Ok(pool)
}

/// Where to connect, without connecting: the embedded cluster is started if it is the one.
/// For processes that must not migrate, such as the proxy with its read-only role.
pub async fn options(args: &DbArgs, purpose: &str) -> Result<PgConnectOptions> {
    let options = match &args.database_url {
        Some(url) => {
            PgConnectOptions::from_str(url).context("--database-url is not a PostgreSQL URL")?
        }
        None => embedded(args.home.clone()).await?,
    };
    let name = format!("meshploy {purpose} (pid {})", std::process::id());
    Ok(options.application_name(&name))
}

async fn embedded(home_dir: Option<PathBuf>) -> Result<PgConnectOptions> {
    let cluster = cluster(home_dir)?;
    let starting = cluster.clone();
    let started = tokio::task::spawn_blocking(move || starting.start())
        .await
        .context("starting the embedded PostgreSQL")??;
    if started {
        eprintln!(
            "Started the embedded PostgreSQL in {} (stop it with `meshploy db stop`).",
            cluster.dir().display()
        );
    }
    let mut admin = cluster
        .connect_options("postgres")?
        .connect()
        .await
        .context("cannot connect to the embedded PostgreSQL")?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(DATABASE)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        // A concurrent first run may create it between the check and here (42P04, or 23505
        // when both insert into pg_database at once).
        match sqlx::query("CREATE DATABASE meshploy")
            .execute(&mut admin)
            .await
        {
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {}
            other => {
                other?;
            }
        }
    }
    Ok(cluster.connect_options(DATABASE)?)
}
