//! `meshploy serve`: the reconciler daemon and the HTTP API, until SIGINT or SIGTERM.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reconciler::names::Policy;
use reconciler::serve::Daemon;
use reconciler::sync::{Settings, Source};
use serde::Deserialize;
use tokio::sync::watch;

use super::{guard, keyring};
use crate::cli::{RuntimeKind, ServeArgs, parse_duration};
use crate::database;

pub async fn run(args: ServeArgs) -> Result<ExitCode> {
    let sources = sources(&args)?;
    let keys = keyring(&args.keys)?;
    let home = database::home(args.db.home.clone())?;
    let pool = database::pool(&args.db, "serve", 8).await?;
    for (source, _) in &sources {
        source.register(&pool).await?;
    }
    let leading = Arc::new(AtomicBool::new(false));
    let state = api::AppState {
        pool: pool.clone(),
        sources: Arc::new(sources.iter().map(|(s, _)| s.clone()).collect()),
        webhook_secret: args.webhook_secret.map(|s| Arc::from(s.into_bytes())),
        api_token_sha256: args.api_token.as_deref().map(api::AppState::token_digest),
        leading: leading.clone(),
        anonymous_read: args.anonymous_read,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let names: Vec<&str> = sources.iter().map(|(s, _)| s.name.as_str()).collect();
    eprintln!(
        "meshploy serve: API and console on http://{address}, tracking {}",
        names.join(", ")
    );
    let daemon = Daemon {
        connect: (*pool.connect_options()).clone(),
        pool,
        sources,
        settings: Settings {
            cache: home.join("git"),
            keys,
            guard: guard(&args.guard),
            lock_timeout_ms: u64::try_from(args.lock_timeout.as_millis()).unwrap_or(u64::MAX),
            actor: format!("meshploy serve (pid {})", std::process::id()),
        },
        leading,
    };
    let (stop, stopped) = watch::channel(false);
    let controller = match args.runtime {
        RuntimeKind::None => None,
        RuntimeKind::Local => {
            let runtime = super::runtime::local(&daemon.pool, &home, &args.runtime_options)?;
            let keys = keyring(&args.keys)?.map(Arc::new);
            let (pool, runs) = (daemon.pool.clone(), runtime.clone());
            let (options, poll) = (args.runtime_options, args.poll_interval);
            let make = move || {
                super::runtime::controller(&pool, &runs, &home, &options, keys.clone(), poll)
            };
            Some(tokio::spawn(super::runtime::while_leading(
                make,
                runtime,
                daemon.leading.clone(),
                stopped.clone(),
            )))
        }
    };
    let server = {
        let mut stopped = stopped.clone();
        let graceful = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let limits = api::Limits {
            header_timeout: args.header_timeout,
            request_timeout: args.request_timeout,
            max_connections: args.max_connections as usize,
            max_connections_per_ip: args.max_connections_per_ip as usize,
        };
        api::serve(listener, api::app(state), limits, graceful)
    };
    let server = tokio::spawn(server);
    let signals = tokio::spawn(async move {
        shutdown_signal().await;
        eprintln!("meshploy serve: shutting down after the current sync");
        let _ = stop.send(true);
    });
    daemon.run(stopped).await?;
    if let Some(controller) = controller {
        let _ = controller.await;
    }
    signals.abort();
    server.await.context("the API server stopped")?;
    Ok(ExitCode::SUCCESS)
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The sources to track, each with its poll interval: from --config, or the one --repo.
fn sources(args: &ServeArgs) -> Result<Vec<(Source, Duration)>> {
    if let Some(path) = &args.config {
        return read_config(path, args.poll_interval);
    }
    let url = args
        .repo
        .clone()
        .context("--repo or --config is required")?;
    let name = match &args.name {
        Some(name) => name.clone(),
        None => default_name(&url)?,
    };
    Ok(vec![(
        Source {
            name,
            url,
            branch: args.branch.clone(),
            path: args.path.clone(),
            policy: args.policy,
        },
        args.poll_interval,
    )])
}

/// The repository's name: the last part of its path without `.git`.
fn default_name(url: &str) -> Result<String> {
    let name = url
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .next()
        .unwrap_or_default()
        .trim_end_matches(".git");
    if name.is_empty() {
        bail!("cannot name a source after `{url}`; give it a name with --name");
    }
    Ok(name.to_owned())
}

/// `meshploy serve --config FILE`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    sources: Vec<SourceConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SourceConfig {
    name: String,
    url: String,
    #[serde(default = "main_branch")]
    branch: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    policy: Policy,
    poll_interval: Option<String>,
}

fn main_branch() -> String {
    "main".into()
}

fn read_config(path: &Path, default_poll: Duration) -> Result<Vec<(Source, Duration)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let config: Config =
        serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if config.sources.is_empty() {
        bail!("{}: `sources` is empty; list at least one", path.display());
    }
    let mut seen = std::collections::BTreeSet::new();
    config
        .sources
        .into_iter()
        .map(|c| {
            if !seen.insert(c.name.clone()) {
                bail!("{}: two sources are named `{}`", path.display(), c.name);
            }
            let poll = match &c.poll_interval {
                Some(text) => parse_duration(text).map_err(|e| {
                    anyhow::anyhow!("{}: source `{}`: pollInterval: {e}", path.display(), c.name)
                })?,
                None => default_poll,
            };
            Ok((
                Source {
                    name: c.name,
                    url: c.url,
                    branch: c.branch,
                    path: c.path,
                    policy: c.policy,
                },
                poll,
            ))
        })
        .collect()
}
