//! Builds: a source checked out at its commit through the `git` crate (from the fetch cache
//! the controller's resolution filled), then its strategy run in that directory, with the
//! output streaming into the build's log. A build is cached by commit, path and build
//! settings: an unchanged source is not built again.

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reconciler::secrets::Plaintext;
use schema::model::{Build, Checkout, Strategy};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::decide::ServiceKey;
use crate::lines::Redactor;
use crate::logs::{Budget, LogWriter, Owner};
use crate::process::{self, Tail};
use crate::sandbox::{Identity, Job, Sandbox};
use crate::store::{self, NewBuild};

/// Where and how builds run.
#[derive(Clone, Debug)]
pub struct Builder {
    pub pool: PgPool,
    /// `<home>/builds`: one directory per cache key.
    pub dir: PathBuf,
    /// The git fetch cache the reconciler and the controller's resolution share.
    pub git_cache: PathBuf,
    pub timeout: Duration,
    /// How build commands are confined.
    pub sandbox: Arc<Sandbox>,
    /// How much of a build's output is kept.
    pub log: Budget,
    /// One lock per cache key, so services built from the same source and settings wait
    /// for one build and share it rather than all building at once.
    pub building: Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// A finished build: its row and the directory replicas run in.
#[derive(Debug)]
pub struct Built {
    pub id: i64,
    pub dir: PathBuf,
}

/// A failed build: its row (when it got one) and why, in words.
#[derive(Debug)]
pub struct Failed {
    pub id: Option<i64>,
    pub reason: String,
}

/// What one build is of.
#[derive(Debug)]
pub struct Request<'a> {
    pub service: &'a ServiceKey,
    /// `source.git` as the service gives it, made absolute when it was a relative path.
    pub url: &'a str,
    pub source: &'a Checkout,
    pub build: &'a Build,
    pub commit: &'a str,
    pub env: &'a [(String, Plaintext)],
    pub redactor: Arc<Redactor>,
}

impl Builder {
    /// The build for `request`: from the cache, or built now.
    pub async fn build(&self, request: Request<'_>) -> Result<Built, Failed> {
        let key = cache_key(request.url, request.source, request.build, request.commit);
        let dir = self.dir.join(&key[..32]);
        let lock = self
            .building
            .lock()
            .map(|mut locks| locks.entry(key.clone()).or_default().clone())
            .unwrap_or_default();
        let _building = lock.lock().await;
        let cached = store::cached_build(&self.pool, &key)
            .await
            .map_err(|e| Failed {
                id: None,
                reason: e.to_string(),
            })?;
        if let Some(id) = cached.filter(|_| dir.is_dir()) {
            return Ok(Built { id, dir });
        }
        let shown = git::redact(request.url);
        let row = NewBuild {
            service: request.service,
            git: &shown,
            commit: request.commit,
            strategy: request.build.strategy().as_str(),
            cache_key: &key,
        };
        let id = store::insert_build(&self.pool, &row)
            .await
            .map_err(|e| Failed {
                id: None,
                reason: e.to_string(),
            })?;
        let log = Arc::new(LogWriter::start(
            self.pool.clone(),
            Owner::Build(id),
            self.log,
        ));
        let work = dir.with_extension(format!("tmp-{id}"));
        let outcome = self.run(&request, id, &work, &log).await;
        let outcome = match outcome {
            Ok(()) => place(&work, &dir).map_err(|e| format!("cannot keep the build: {e}")),
            Err(reason) => Err(reason),
        };
        if let Err(reason) = &outcome {
            log.line(format!("[meshploy] the build failed: {reason}"))
                .await;
            let _ = std::fs::remove_dir_all(&work);
        }
        if let Ok(log) = Arc::try_unwrap(log) {
            log.close().await;
        }
        let failure = outcome.as_ref().err().map(String::as_str);
        if let Err(e) = store::finish_build(&self.pool, id, failure).await {
            return Err(Failed {
                id: Some(id),
                reason: e.to_string(),
            });
        }
        match outcome {
            Ok(()) => Ok(Built { id, dir }),
            Err(reason) => Err(Failed {
                id: Some(id),
                reason,
            }),
        }
    }

    async fn run(
        &self,
        request: &Request<'_>,
        id: i64,
        work: &Path,
        log: &Arc<LogWriter>,
    ) -> Result<(), String> {
        let _ = std::fs::remove_dir_all(work);
        // Only Meshploy's own user may enter the cache: replicas run copies of it.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let (url, cache, commit, path, into) = (
            request.url.to_owned(),
            self.git_cache.clone(),
            request.commit.to_owned(),
            request.source.path.clone(),
            work.to_owned(),
        );
        let files = tokio::task::spawn_blocking(move || {
            git::open_cached(&url, &cache)?.export(&commit, &path, &into)
        })
        .await
        .map_err(|e| format!("the checkout stopped: {e}"))?
        .map_err(|e| e.to_string())?;
        log.line(format!(
            "[meshploy] checked out {} of {} ({files} files)",
            &request.commit[..request.commit.len().min(12)],
            git::redact(request.url)
        ))
        .await;
        let strategy = match request.build {
            Build::Auto => {
                let chosen = auto(work)?;
                log.line(format!(
                    "[meshploy] strategy auto chose {}",
                    chosen.as_str()
                ))
                .await;
                chosen
            }
            other => other.strategy(),
        };
        match (strategy, request.build) {
            (Strategy::None, _) => Ok(()),
            (Strategy::Command, Build::Command { command }) => {
                let tmp = self.dir.join(format!("tmp-{id}"));
                let built = match std::fs::create_dir(&tmp) {
                    Ok(()) => self.command(command, id, work, &tmp, request, log).await,
                    Err(e) => Err(format!("cannot create {}: {e}", tmp.display())),
                };
                let _ = std::fs::remove_dir_all(&tmp);
                built
            }
            (strategy, _) => Err(image_strategy(strategy)),
        }
    }

    /// Runs `build.command` with a shell in `work`, confined to `work` and `tmp`, within the
    /// build timeout.
    async fn command(
        &self,
        command: &str,
        id: i64,
        work: &Path,
        tmp: &Path,
        request: &Request<'_>,
        log: &Arc<LogWriter>,
    ) -> Result<(), String> {
        log.line(format!("[meshploy] running: {command}")).await;
        let mut env: Vec<(String, Plaintext)> = request
            .env
            .iter()
            .map(|(k, v)| (k.clone(), Plaintext::new(v.expose().to_vec())))
            .collect();
        // Toolchains live in Meshploy's user's home (read-only to the build).
        if let Some(home) = std::env::var_os("HOME") {
            env.push(("HOME".into(), Plaintext::new(home.into_encoded_bytes())));
        }
        env.push((
            "TMPDIR".into(),
            Plaintext::new(tmp.display().to_string().into_bytes()),
        ));
        let job = Job {
            identity: Identity::Build(id),
            script: command,
            dir: work,
            writable: vec![work.to_owned(), tmp.to_owned()],
            env: &env,
            grace: Duration::from_secs(5),
        };
        let (mut job, output) = self
            .sandbox
            .start(job)
            .await
            .map_err(|e| format!("cannot start the build command: {e}"))?;
        drop(env);
        let tail = Tail::default();
        let capture = process::capture(output, log, &request.redactor, &tail);
        let status = tokio::time::timeout(self.timeout, job.wait()).await;
        let Ok(status) = status else {
            job.stop(Duration::from_secs(5)).await;
            process::drain(capture).await;
            return Err(format!(
                "the build ran past its timeout of {} s and was stopped",
                self.timeout.as_secs()
            ));
        };
        process::drain(capture).await;
        let status = status.map_err(|e| format!("cannot wait for the build command: {e}"))?;
        if status.success() {
            return Ok(());
        }
        let lines = tail.text();
        Err(format!(
            "the build command {}{}",
            process::describe(status),
            if lines.is_empty() {
                String::new()
            } else {
                format!("; its last lines:\n{lines}")
            }
        ))
    }
}

/// What `strategy: auto` picks in a checkout: a Dockerfile first, then railpack or nixpacks
/// when installed.
fn auto(work: &Path) -> Result<Strategy, String> {
    if work.join("Dockerfile").is_file() {
        return Ok(Strategy::Dockerfile);
    }
    for (tool, strategy) in [
        ("railpack", Strategy::Railpack),
        ("nixpacks", Strategy::Nixpacks),
    ] {
        if on_path(tool) {
            return Ok(strategy);
        }
    }
    Err(
        "strategy `auto` found no Dockerfile, and neither railpack nor nixpacks is installed; \
         set `build.strategy` to `command` (with `build.command`), or `none` to run the checkout \
         as it is"
            .into(),
    )
}

/// Why an image-building strategy cannot finish here: its tool is missing (named, with what
/// to install), or it would make an image, which the local runtime does not run yet.
fn image_strategy(strategy: Strategy) -> String {
    let name = strategy.as_str();
    let tool = match strategy {
        Strategy::Nixpacks => Some("nixpacks"),
        Strategy::Railpack => Some("railpack"),
        _ => None,
    };
    if let Some(tool) = tool.filter(|t| !on_path(t)) {
        return format!(
            "strategy `{name}` needs `{tool}` on PATH (install it from https://{tool}.com) and a \
             container engine (docker or podman)"
        );
    }
    if !on_path("docker") && !on_path("podman") {
        return format!(
            "strategy `{name}` needs a container engine: install docker or podman and put it on PATH"
        );
    }
    format!(
        "strategy `{name}` builds an image, and the local runtime runs processes, not images \
         (running images on one machine comes with the container engine runtime); use strategy \
         `command` or `none` here"
    )
}

fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Moves a finished build to its cache directory. A build of the same key that finished
/// first wins; this one is dropped.
fn place(work: &Path, dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return std::fs::remove_dir_all(work);
    }
    std::fs::rename(work, dir)
}

/// The cache key: what makes two builds the same.
fn cache_key(url: &str, source: &Checkout, build: &Build, commit: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [
        "meshploy/build/v1",
        &git::redact(url),
        &source.path,
        commit,
        &serde_json::to_string(build).unwrap_or_default(),
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkout(path: &str) -> Checkout {
        Checkout {
            git: "https://example.com/a.git".into(),
            git_ref: "main".into(),
            path: path.into(),
        }
    }

    #[test]
    fn the_cache_key_changes_with_commit_path_and_settings_only() {
        let command = Build::Command {
            command: "make".into(),
        };
        let url = "https://example.com/a.git";
        let base = cache_key(url, &checkout(""), &command, "c1");
        assert_eq!(base, cache_key(url, &checkout(""), &command, "c1"));
        let mut other_ref = checkout("");
        other_ref.git_ref = "v1".into();
        assert_eq!(
            base,
            cache_key(url, &other_ref, &command, "c1"),
            "the ref is resolved"
        );
        assert_ne!(base, cache_key(url, &checkout(""), &command, "c2"));
        assert_ne!(base, cache_key(url, &checkout("api"), &command, "c1"));
        assert_ne!(base, cache_key(url, &checkout(""), &Build::None, "c1"));
        assert_eq!(
            cache_key(
                "https://bot:old@example.com/a.git",
                &checkout(""),
                &command,
                "c1"
            ),
            cache_key(
                "https://bot:new@example.com/a.git",
                &checkout(""),
                &command,
                "c1"
            ),
            "a rotated token keeps the cache"
        );
    }

    #[test]
    fn auto_prefers_a_dockerfile_and_otherwise_names_the_choices() {
        let dir = tempfile::tempdir().expect("temp dir");
        if !on_path("railpack") && !on_path("nixpacks") {
            let error = auto(dir.path()).expect_err("nothing to pick");
            assert!(
                error.contains("`command`") && error.contains("`none`"),
                "{error}"
            );
        }
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").expect("write");
        assert_eq!(auto(dir.path()), Ok(Strategy::Dockerfile));
    }
}
