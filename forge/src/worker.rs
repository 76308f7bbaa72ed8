//! The leader's pull-request reviewer: woken by `NOTIFY meshploy_pulls` (a webhook recorded
//! a new head) and every few seconds, it reviews each open pull request whose newest head
//! has no published review yet. A burst of pushes is one row with the newest head, so it is
//! reviewed once. Only YAML is read from a pull request's head: nothing of it is built or run,
//! so forks are reviewed like any other pull request.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reconciler::plan::Guard;
use reconciler::secrets::Keyring;
use reconciler::sync::Source;
use schema::{Limits, ManifestFile};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::client::{Client, ForgeError, PullRef, State};
use crate::comment::{self, Review};
use crate::review;
use crate::store::{self, Pull};

/// A source whose pull requests are reviewed, with its forge.
#[derive(Debug)]
pub struct PullSource {
    pub source: Source,
    pub forge: Client,
}

/// How long a burst of webhooks is let settle before the review starts.
const SETTLE: Duration = Duration::from_millis(100);
/// How often pending reviews are looked for without a notification (a missed one, or a
/// review the forge refused before).
const RECHECK: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Worker {
    pub pool: PgPool,
    pub sources: Vec<PullSource>,
    /// Where remote repositories are fetched to (shared with the reconciler).
    pub cache: PathBuf,
    pub keys: Option<Keyring>,
    pub guard: Guard,
    /// The console's public URL, which statuses link to.
    pub public_url: Option<String>,
    pub leading: Arc<AtomicBool>,
}

async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

impl Worker {
    /// Reviews while this process leads, until `stopped`.
    pub async fn run(&self, mut stopped: watch::Receiver<bool>) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(store::CHANNEL).await?;
        loop {
            if self.leading.load(Ordering::SeqCst) {
                self.pass().await;
            }
            tokio::select! {
                woken = listener.recv() => {
                    if woken.is_err() {
                        // The connection is re-established by the next `recv`.
                        tokio::time::sleep(RECHECK).await;
                    }
                    tokio::time::sleep(SETTLE).await;
                }
                () = tokio::time::sleep(RECHECK) => {}
                () = until_stopped(&mut stopped) => return Ok(()),
            }
        }
    }

    /// Reviews every pending pull request once.
    pub async fn pass(&self) {
        let pending = match store::pending(&self.pool).await {
            Ok(pending) => pending,
            Err(error) => {
                tracing::warn!(%error, "cannot read the pending pull requests");
                return;
            }
        };
        for pull in pending {
            self.review(&pull).await;
        }
    }

    async fn review(&self, pull: &Pull) {
        let name = pull.source.as_str();
        let Some(source) = self.sources.iter().find(|s| s.source.name == name) else {
            let _ = store::failed(
                &self.pool,
                pull,
                &format!("no forge is configured for source `{name}` (see `forge:` in the README)"),
            )
            .await;
            return;
        };
        let pr = PullRef {
            repo: pull.repo.clone(),
            number: u64::try_from(pull.number).unwrap_or_default(),
        };
        match self.publish(source, &pr, pull).await {
            Ok((review, manifests)) => {
                let (state, _, summary) = comment::status(name, &review);
                let outcome = if state == State::Success {
                    "success"
                } else {
                    "failure"
                };
                let body = comment::body(name, &pull.head, &manifests, &review);
                if let Err(error) =
                    store::reviewed(&self.pool, pull, outcome, &summary, &body).await
                {
                    tracing::warn!(%error, %pr, "cannot record a pull request's review");
                }
                tracing::info!(source = name, %pr, head = %pull.head, outcome, "pull request reviewed");
            }
            Err(error) => {
                tracing::warn!(source = name, %pr, %error, "cannot publish a pull request's review");
                let _ = store::failed(&self.pool, pull, &error.to_string()).await;
            }
        }
    }

    async fn publish(
        &self,
        source: &PullSource,
        pr: &PullRef,
        pull: &Pull,
    ) -> Result<(Review, String), ForgeError> {
        let name = &source.source.name;
        let files = self.files(&source.source, pull).await;
        let manifests = files
            .as_ref()
            .map(|files| comment::manifests_digest(files))
            .unwrap_or_default();
        review::mark_outdated(&source.forge, pr, name, &pull.head, &manifests).await?;
        let review = match files {
            Ok(files) => {
                review::plan(&self.pool, name, files, self.keys.as_ref(), &self.guard).await
            }
            Err(reason) => Review::Failed { reason },
        };
        let target = self.public_url.as_ref().map(|url| {
            format!(
                "{}/sources/{name}/pulls/{}",
                url.trim_end_matches('/'),
                pr.number
            )
        });
        review::publish(
            &source.forge,
            pr,
            name,
            &pull.head,
            &manifests,
            &review,
            target,
        )
        .await?;
        Ok((review, manifests))
    }

    /// The manifests at the pull request's head, from `refs/pull/N/head` of the base
    /// repository.
    async fn files(&self, source: &Source, pull: &Pull) -> Result<Vec<ManifestFile>, String> {
        let (url, path, cache) = (source.url.clone(), source.path.clone(), self.cache.clone());
        let (number, head) = (
            u64::try_from(pull.number).unwrap_or_default(),
            pull.head.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let repo = git::open_pull(&url, &cache, number)?;
            repo.read(&head, &path, &Limits::default())
        })
        .await
        .map_err(|e| e.to_string())?
        .map(|snapshot| snapshot.files)
        .map_err(|e| e.to_string())
    }
}
