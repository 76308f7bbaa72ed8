//! `meshploy serve`: the reconciler daemon and the HTTP API, until SIGINT or SIGTERM.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use forge::worker::{PullSource, Worker};
use reconciler::names::Policy;
use reconciler::serve::Daemon;
use reconciler::sync::{Settings, Source};
use serde::Deserialize;
use tokio::sync::watch;

use super::{guard, keyring};
use crate::cli::{RuntimeKind, ServeArgs, parse_duration};
use crate::database;

pub async fn run(args: ServeArgs) -> Result<ExitCode> {
    let Tracked {
        sources,
        pulls: pull_sources,
    } = sources(&args)?;
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
        hosts: api::Hosts::new(args.public_url.as_deref(), &args.allow_host),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!(crate::ports::cannot_listen(args.listen, "--listen", &e)))?;
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
    let reviewer = (!pull_sources.is_empty()).then(|| Worker {
        pool: daemon.pool.clone(),
        sources: pull_sources,
        cache: daemon.settings.cache.clone(),
        keys: keyring(&args.keys).ok().flatten(),
        guard: guard(&args.guard),
        lock_timeout_ms: daemon.settings.lock_timeout_ms,
        public_url: args.public_url.clone(),
        leading: daemon.leading.clone(),
    });
    let reviewer = reviewer.map(|worker| {
        let stopped = stopped.clone();
        tokio::spawn(async move {
            if let Err(error) = worker.run(stopped).await {
                eprintln!("meshploy serve: the pull-request reviewer stopped: {error}");
            }
        })
    });
    let controller = match args.runtime {
        RuntimeKind::None => None,
        RuntimeKind::Local => {
            let runtime = super::runtime::local(
                &daemon.pool,
                &home,
                args.keys.secret_keys_file.iter().cloned().collect(),
                &args.runtime_options,
            )?;
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
    if let Some(reviewer) = reviewer {
        let _ = reviewer.await;
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

/// What `serve` follows: the sources, each with its poll interval, and the forges of those
/// whose pull requests are reviewed.
struct Tracked {
    sources: Vec<(Source, Duration)>,
    pulls: Vec<PullSource>,
}

/// The sources to track: from --config, or the one --repo.
fn sources(args: &ServeArgs) -> Result<Tracked> {
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
    let source = Source {
        name,
        url,
        branch: args.branch.clone(),
        path: args.path.clone(),
        policy: args.policy,
    };
    Ok(Tracked {
        sources: vec![(source, args.poll_interval)],
        pulls: Vec::new(),
    })
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
    /// Where its pull requests get plan comments and statuses.
    forge: Option<ForgeConfig>,
    /// Its pull requests' preview environments (off unless `enabled`).
    previews: Option<PreviewsConfig>,
}

/// `previews:` of a source.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PreviewsConfig {
    enabled: bool,
    #[serde(default = "preview_host")]
    host: String,
    #[serde(default = "preview_ttl")]
    ttl: String,
    #[serde(default = "preview_max_active")]
    max_active: u32,
    #[serde(default)]
    allow_forks: bool,
    #[serde(default = "preview_scheme")]
    scheme: String,
    /// Which production secrets previews get, by variable group: `inherit`, or the name of
    /// a preview-only group of the same project. Every other group's copy has none.
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    /// Author associations whose pull requests are built and run without approval.
    #[serde(default = "trusted_authors")]
    trusted_authors: Vec<String>,
    /// The label with which a maintainer approves anyone else's pull request.
    #[serde(default = "approval_label")]
    approval_label: String,
}

fn trusted_authors() -> Vec<String> {
    forge::Trust::default().associations
}

fn approval_label() -> String {
    forge::Trust::default().label
}

/// GitHub's author associations (Gitea's permissions are read as these).
const ASSOCIATIONS: [&str; 7] = [
    "OWNER",
    "MEMBER",
    "COLLABORATOR",
    "CONTRIBUTOR",
    "FIRST_TIME_CONTRIBUTOR",
    "FIRST_TIMER",
    "NONE",
];

fn preview_host() -> String {
    "pr-{number}.{host}".into()
}

fn preview_ttl() -> String {
    "72h".into()
}

fn preview_max_active() -> u32 {
    5
}

fn preview_scheme() -> String {
    "https".into()
}

impl PreviewsConfig {
    /// The settings, if previews are on.
    fn settings(&self, place: &str) -> Result<Option<forge::preview::Settings>> {
        if !self.enabled {
            return Ok(None);
        }
        let host = forge::preview::Template::parse(&self.host)
            .map_err(|e| anyhow::anyhow!("{place}: previews.host: {e}"))?;
        let ttl =
            parse_duration(&self.ttl).map_err(|e| anyhow::anyhow!("{place}: previews.ttl: {e}"))?;
        if ttl.is_zero() {
            bail!("{place}: previews.ttl: must be longer than 0");
        }
        if !matches!(self.scheme.as_str(), "http" | "https") {
            bail!(
                "{place}: previews.scheme: `{}` is neither http nor https",
                self.scheme
            );
        }
        if let Some(unknown) = self
            .trusted_authors
            .iter()
            .find(|a| !ASSOCIATIONS.contains(&a.as_str()))
        {
            bail!(
                "{place}: previews.trustedAuthors: `{unknown}` is not an author association; use {}",
                ASSOCIATIONS.join(", ")
            );
        }
        if self.approval_label.trim().is_empty() {
            bail!("{place}: previews.approvalLabel: is empty");
        }
        let mut secrets = BTreeMap::new();
        for (group, taken) in &self.secrets {
            let name = |name: &str| {
                schema::rules::dns_label(name).map_err(|problem| {
                    anyhow::anyhow!(
                        "{place}: previews.secrets: `{name}` is not a variable group's name: {}",
                        problem.message
                    )
                })
            };
            name(group)?;
            let secret = match taken.as_str() {
                "inherit" => forge::Secrets::Inherit,
                other if other == group => bail!(
                    "{place}: previews.secrets.{group}: write `inherit` to give previews the group's own secrets"
                ),
                other => {
                    name(other)?;
                    forge::Secrets::From(other.to_owned())
                }
            };
            secrets.insert(group.clone(), secret);
        }
        Ok(Some(forge::preview::Settings {
            host,
            ttl,
            max_active: self.max_active,
            allow_forks: self.allow_forks,
            scheme: self.scheme.clone(),
            secrets,
            trust: forge::Trust {
                associations: self.trusted_authors.clone(),
                label: self.approval_label.clone(),
            },
        }))
    }
}

/// A source's forge: `kind`, the API's base URL, and where its token is (a file or an
/// environment variable; never the token itself in the file).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ForgeConfig {
    kind: forge::Kind,
    api: Option<String>,
    token_file: Option<std::path::PathBuf>,
    token_env: Option<String>,
    /// The token's user, for tokens that may not ask (`GET /user`) who they are.
    user: Option<String>,
}

impl ForgeConfig {
    fn client(&self, place: &str) -> Result<forge::Client> {
        let token = match (&self.token_file, &self.token_env) {
            (Some(file), None) => std::fs::read_to_string(file).with_context(|| {
                format!("{place}: forge.tokenFile: cannot read {}", file.display())
            })?,
            (None, Some(name)) => std::env::var(name).map_err(|_| {
                anyhow::anyhow!(
                    "{place}: forge.tokenEnv: the environment variable {name} is not set"
                )
            })?,
            _ => bail!("{place}: forge: give exactly one of tokenFile and tokenEnv"),
        };
        if token.trim().is_empty() {
            bail!("{place}: forge: the token is empty");
        }
        let api = match (self.kind, &self.api) {
            (_, Some(api)) => api.clone(),
            (forge::Kind::GitHub, None) => "https://api.github.com".to_owned(),
            (forge::Kind::Gitea, None) => {
                bail!("{place}: forge.api is required for gitea (https://HOST/api/v1)")
            }
        };
        Ok(forge::Client::new(self.kind, &api, &token)?.with_user(self.user.as_deref()))
    }
}

fn main_branch() -> String {
    "main".into()
}

fn read_config(path: &Path, default_poll: Duration) -> Result<Tracked> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    // Only the error's first line: the rest quotes the file, where someone may have pasted a
    // token (`token: ...`, an unknown field) that must not reach a terminal or a log.
    let config: Config = serde_saphyr::from_str(&text).map_err(|e| {
        let error = e.to_string();
        let first = error.lines().next().unwrap_or_default();
        anyhow::anyhow!(
            "{}: {}",
            path.display(),
            first.trim_start_matches("error: ")
        )
    })?;
    if config.sources.is_empty() {
        bail!("{}: `sources` is empty; list at least one", path.display());
    }
    let mut seen = std::collections::BTreeSet::new();
    let (mut sources, mut pulls) = (Vec::new(), Vec::new());
    for c in config.sources {
        if !seen.insert(c.name.clone()) {
            bail!("{}: two sources are named `{}`", path.display(), c.name);
        }
        let place = format!("{}: source `{}`", path.display(), c.name);
        let poll = match &c.poll_interval {
            Some(text) => {
                parse_duration(text).map_err(|e| anyhow::anyhow!("{place}: pollInterval: {e}"))?
            }
            None => default_poll,
        };
        let source = Source {
            name: c.name,
            url: c.url,
            branch: c.branch,
            path: c.path,
            policy: c.policy,
        };
        let previews = match &c.previews {
            Some(previews) => previews.settings(&place)?,
            None => None,
        };
        match &c.forge {
            Some(forge) => pulls.push(PullSource {
                source: source.clone(),
                forge: forge.client(&place)?,
                previews,
            }),
            None if previews.is_some() => {
                bail!("{place}: previews need a `forge` to learn of pull requests")
            }
            None => {}
        }
        sources.push((source, poll));
    }
    Ok(Tracked { sources, pulls })
}
