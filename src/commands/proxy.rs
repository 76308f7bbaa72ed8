//! `meshploy proxy`: the reverse proxy, until SIGTERM or SIGINT, then a graceful drain.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;

use super::serve::shutdown_signal;
use crate::cli::{ProxyArgs, ProxyOptions};
use crate::database;

pub async fn run(args: ProxyArgs) -> Result<ExitCode> {
    // The proxy only reads, so it does not migrate: it may run as the read-only role.
    let database = database::options(&args.db, "proxy").await?;
    let started = Instant::now();
    let proxy = start(config(&args.proxy, Some(args.proxy.admin_listen)), database).await?;
    let show = |a: Option<std::net::SocketAddr>| a.map_or("?".to_owned(), |a| a.to_string());
    let routes = match proxy.routes() {
        1 => "1 route".to_owned(),
        n => format!("{n} routes"),
    };
    eprintln!(
        "meshploy proxy: listening on http://{}, admin on http://{}; {routes} loaded in {} ms",
        show(proxy.local_addr()),
        show(proxy.admin_addr()),
        started.elapsed().as_millis()
    );
    proxy
        .serve(async {
            shutdown_signal().await;
            eprintln!("meshploy proxy: draining open requests");
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}

/// Starts the proxy; a listener it cannot open is named with its flag and, when the port is
/// in use, with the process that holds it.
pub async fn start(
    config: proxy::Config,
    database: sqlx::postgres::PgConnectOptions,
) -> Result<proxy::Proxy> {
    let (listen, admin) = (config.listen, config.admin);
    proxy::Proxy::start(config, database)
        .await
        .map_err(|error| match error {
            proxy::ProxyError::Listen { addr, source } => {
                let flag = if Some(addr) == admin && addr != listen {
                    "--admin-listen"
                } else {
                    "--listen"
                };
                anyhow::anyhow!(crate::ports::cannot_listen(addr, flag, &source))
            }
            other => anyhow::Error::new(other).context("cannot start the proxy"),
        })
}

/// The proxy's configuration from its options; `admin` is where metrics are served, if
/// anywhere.
pub fn config(args: &ProxyOptions, admin: Option<std::net::SocketAddr>) -> proxy::Config {
    proxy::Config {
        listen: args.listen,
        admin,
        resync: args.resync_interval,
        connect_timeout: args.connect_timeout,
        upstream_timeout: args.upstream_timeout,
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
        drain_timeout: args.drain_timeout,
        eject_for: args.eject_for,
        max_header_bytes: args.max_header_size as usize,
        access_log: args.access_log,
        trusted_proxies: args.trusted_proxies.clone(),
        upgrade_protocols: args
            .upgrade_protocols
            .iter()
            .map(|p| p.to_ascii_lowercase())
            .collect(),
        upstreams: proxy::UpstreamPolicy {
            allow: args.allow_upstream.clone(),
            reserved_ports: Vec::new(),
        },
        workers: args
            .workers
            .or_else(|| std::thread::available_parallelism().ok())
            .unwrap_or(std::num::NonZeroUsize::MIN),
    }
}
