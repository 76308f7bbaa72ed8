//! The leader's pull-request reviewer: woken by `NOTIFY meshploy_pulls` (a webhook recorded
//! a new head) and every few seconds, it reviews each open pull request whose newest head
//! has no published review yet. A burst of pushes is one row with the newest head, so it is
//! reviewed once. A webhook is only a trigger: before a review, the forge is asked for the pull
//! request's head, state and author, and an event that disagrees (a replayed or forged one)
//! is logged and ignored. Only YAML is read from a pull request's head, so forks are reviewed
//! like any other pull request; only a preview builds and runs a head's code, and it is made
//! only for authors the source trusts (or approved by a maintainer's label), never for forks
//! unless the source allows it.
//!
//! Each pass first sweeps the previews: those of pull requests the forge confirms closed and
//! those whose time is up are destroyed, and about once a minute the forge is asked whether
//! the pull requests of the running ones are still open, so a missed close event (or one sent
//! while no server ran) still removes its preview.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reconciler::plan::Guard;
use reconciler::secrets::Keyring;
use reconciler::sync::Source;
use schema::{DesiredState, Limits, ManifestFile};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::client::{Client, Forge, ForgeError, PullRef, PullRequest, State};
use crate::comment::{self, Preview, Review};
use crate::preview::Settings;
use crate::previews::{self, Head, Key, Which};
use crate::review::{self, Said};
use crate::store::{self, Pull};

/// A source whose pull requests are reviewed, with its forge and its previews (if on).
#[derive(Debug)]
pub struct PullSource {
    pub source: Source,
    pub forge: Client,
    pub previews: Option<Settings>,
}

/// How long a burst of webhooks is let settle before the review starts.
const SETTLE: Duration = Duration::from_millis(100);
/// How often pending reviews are looked for without a notification (a missed one, or a
/// review the forge refused before).
const RECHECK: Duration = Duration::from_secs(10);
/// How often the forge is asked whether a running preview's pull request is still open.
const STATE_CHECK: Duration = Duration::from_secs(60);

/// When the forge last said each running preview's pull request was open.
type Checked = HashMap<(String, i64), Instant>;

#[derive(Debug)]
pub struct Worker {
    pub pool: PgPool,
    pub sources: Vec<PullSource>,
    /// Where remote repositories are fetched to (shared with the reconciler).
    pub cache: PathBuf,
    pub keys: Option<Keyring>,
    pub guard: Guard,
    /// How long applying a preview waits for another apply.
    pub lock_timeout_ms: u64,
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
        let mut checked = Checked::new();
        loop {
            if self.leading.load(Ordering::SeqCst) {
                self.sweep(&mut checked).await;
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

    /// Destroys the previews of closed pull requests and those whose time is up, after
    /// asking the forge (at most every [`STATE_CHECK`]) which running ones are still open.
    async fn sweep(&self, checked: &mut Checked) {
        if let Err(error) = self.check_states(checked).await {
            tracing::warn!(%error, "cannot read the running previews");
        }
        match previews::list(&self.pool, Which::OfClosed).await {
            Ok(closed) => {
                for key in closed {
                    if self.closed_on_the_forge(&key).await
                        && self.destroy(&key, "its pull request was closed").await
                    {
                        let _ = previews::forget(&self.pool, &key).await;
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the previews of closed pull requests")
            }
        }
        match previews::list(&self.pool, Which::Expired).await {
            Ok(expired) => {
                for key in expired {
                    if self.destroy(&key, "its time was up").await {
                        let _ = previews::expire(&self.pool, &key).await;
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read the expired previews"),
        }
    }

    /// Marks closed the pull requests of running previews that the forge says are closed.
    async fn check_states(&self, checked: &mut Checked) -> Result<(), sqlx::Error> {
        for key in previews::list(&self.pool, Which::Running).await? {
            let at = (key.source.clone(), key.number);
            if checked.get(&at).is_some_and(|t| t.elapsed() < STATE_CHECK) {
                continue;
            }
            let Some(source) = self.source(&key.source) else {
                continue;
            };
            let pr = pull_ref(&key.repo, key.number);
            match source.forge.pull(&pr).await.map(|now| now.open) {
                Ok(true) => {
                    checked.insert(at, Instant::now());
                }
                Ok(false) => {
                    tracing::info!(source = key.source, %pr, "the forge says the pull request is closed");
                    store::close(&self.pool, &key.source, key.number).await?;
                    checked.remove(&at);
                }
                Err(error) => {
                    // Asked again after the same interval, so a forge that is away is not
                    // called every pass.
                    tracing::warn!(source = key.source, %pr, %error, "cannot ask whether a pull request is open");
                    checked.insert(at, Instant::now());
                }
            }
        }
        Ok(())
    }

    /// Whether the forge confirms that the pull request of `key` (which a close event marked
    /// closed) is closed. One it says is open is marked open again: the event was not the
    /// truth (replayed, or signed by someone holding the secret). A forge that cannot say is
    /// asked again on the next pass; a source no longer configured has no forge to ask.
    async fn closed_on_the_forge(&self, key: &Key) -> bool {
        let Some(source) = self.source(&key.source) else {
            return true;
        };
        let pr = pull_ref(&key.repo, key.number);
        match source.forge.pull(&pr).await {
            Ok(now) if now.open => {
                tracing::warn!(source = key.source, %pr, "a close event that the forge does not confirm is ignored");
                if let Err(error) = store::reopen(&self.pool, &key.source, key.number).await {
                    tracing::warn!(%error, %pr, "cannot mark a pull request open again");
                }
                false
            }
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(source = key.source, %pr, %error, "cannot ask whether a pull request is closed");
                false
            }
        }
    }

    fn source(&self, name: &str) -> Option<&PullSource> {
        self.sources.iter().find(|s| s.source.name == name)
    }

    /// Destroys one preview; returns whether it is gone.
    async fn destroy(&self, key: &Key, why: &str) -> bool {
        match previews::destroy(&self.pool, self.lock_timeout_ms, &key.source, key.number).await {
            Ok(resources) => {
                tracing::info!(
                    source = key.source,
                    number = key.number,
                    resources,
                    "preview destroyed: {why}"
                );
                true
            }
            Err(error) => {
                tracing::warn!(source = key.source, number = key.number, %error, "cannot destroy a preview");
                false
            }
        }
    }

    async fn review(&self, pull: &Pull) {
        let name = pull.source.as_str();
        let Some(source) = self.source(name) else {
            let _ = store::failed(
                &self.pool,
                pull,
                &format!("no forge is configured for source `{name}` (see `forge:` in the README)"),
            )
            .await;
            return;
        };
        let pr = pull_ref(&pull.repo, pull.number);
        let now = match source.forge.pull(&pr).await {
            Ok(now) => now,
            Err(error) => {
                tracing::warn!(source = name, %pr, %error, "cannot read a pull request from the forge");
                let _ = store::failed(&self.pool, pull, &error.to_string()).await;
                return;
            }
        };
        let Some(pull) = self.agree(pull, &now).await else {
            return;
        };
        let pull = &pull;
        match self.publish(source, &pr, pull, &now).await {
            Ok((review, manifests, preview)) => {
                let (state, _, summary) = comment::status(name, &review);
                let outcome = if state == State::Success {
                    "success"
                } else {
                    "failure"
                };
                let body = comment::body(name, &pull.head, &manifests, &review, &preview);
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

    /// `pull` as the forge has it (`now`), or `None` when there is nothing to review: the
    /// forge says the pull request is closed (it is marked so), or its head, which the event
    /// did not name, was reviewed already. An event that disagrees is logged and ignored.
    async fn agree(&self, pull: &Pull, now: &PullRequest) -> Option<Pull> {
        let (source, number) = (pull.source.as_str(), pull.number);
        if !now.open {
            tracing::warn!(source, number, announced = %pull.head, "the forge says the pull request is closed; the event that announced it open is ignored");
            if let Err(error) = store::close(&self.pool, source, number).await {
                tracing::warn!(%error, source, number, "cannot mark a pull request closed");
            }
            return None;
        }
        if now.head == pull.head && now.fork == pull.fork {
            return Some(pull.clone());
        }
        if now.head != pull.head {
            tracing::warn!(source, number, announced = %pull.head, head = %now.head, "the event's head is not the forge's; the event is ignored and the forge's head counts");
        }
        match store::correct(&self.pool, pull, &now.head, now.fork).await {
            Ok(Some(true)) => Some(Pull {
                head: now.head.clone(),
                fork: now.fork,
                ..pull.clone()
            }),
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(%error, source, number, "cannot correct a pull request's head");
                None
            }
        }
    }

    async fn publish(
        &self,
        source: &PullSource,
        pr: &PullRef,
        pull: &Pull,
        now: &PullRequest,
    ) -> Result<(Review, String, Preview), ForgeError> {
        let name = &source.source.name;
        let files = self.files(&source.source, pull).await;
        let manifests = files
            .as_ref()
            .map(|files| comment::manifests_digest(files))
            .unwrap_or_default();
        review::mark_outdated(&source.forge, pr, name, &pull.head, &manifests).await?;
        let loaded = match files {
            Ok(files) => review::load(files).await,
            Err(reason) => Err(Review::Failed { reason }),
        };
        let (review, state) = match loaded {
            Ok(state) => {
                let keys = self.keys.as_ref();
                let review = review::plan_loaded(&self.pool, name, &state, keys, &self.guard);
                (review.await, Some(state))
            }
            Err(review) => (review, None),
        };
        let preview = match (&source.previews, state) {
            (Some(settings), Some(state)) if matches!(review, Review::Planned { .. }) => {
                self.preview(source, settings, (pull, now), &state).await
            }
            (Some(_), _) => Preview::Missing {
                reason: "this commit could not be planned (above), so no preview was made of it; a preview made before stays as it was".into(),
            },
            (None, _) => Preview::Off,
        };
        let target = self.public_url.as_ref().map(|url| {
            format!(
                "{}/sources/{name}/pulls/{}",
                url.trim_end_matches('/'),
                pr.number
            )
        });
        let said = Said {
            head: &pull.head,
            manifests: &manifests,
            review: &review,
            preview: &preview,
        };
        review::publish(&source.forge, pr, name, said, target).await?;
        Ok((review, manifests, preview))
    }

    /// Makes (or updates) the preview of `pull`'s head (`now` on the forge), unless the
    /// source's policy says no.
    async fn preview(
        &self,
        source: &PullSource,
        settings: &Settings,
        (pull, now): (&Pull, &PullRequest),
        state: &DesiredState,
    ) -> Preview {
        let missing = |reason: String| Preview::Missing { reason };
        let ttl = span(settings.ttl);
        if pull.fork && !settings.allow_forks {
            return missing("pull requests from forks get no preview, since it would build and run their code (`allowForks: true` allows it)".into());
        }
        if !settings.trust.trusts(now) {
            return missing(settings.trust.untrusted(now));
        }
        let name = source.source.name.as_str();
        let existing = match previews::row(&self.pool, name, pull.number).await {
            Ok(existing) => existing,
            Err(error) => return missing(format!("cannot read the previews: {error}")),
        };
        let stage = existing.as_ref().map(|row| row.state.as_str());
        if stage == Some("expired") && existing.as_ref().is_some_and(|row| row.head == pull.head) {
            return missing(format!(
                "it was destroyed after {ttl} without a push; push a commit to make it again"
            ));
        }
        if stage != Some("active") {
            let active = match previews::active_besides(&self.pool, name, pull.number).await {
                Ok(active) => active,
                Err(error) => return missing(format!("cannot count the previews: {error}")),
            };
            if active >= i64::from(settings.max_active) {
                return missing(format!(
                    "source `{name}` already runs {active} previews, its `maxActive`; close one of their pull requests or raise `maxActive`, then push again"
                ));
            }
        }
        let head = Head {
            source: name,
            repository: &source.source.url,
            number: pull.number,
            commit: &pull.head,
        };
        let applied = previews::apply(
            &self.pool,
            self.keys.as_ref(),
            self.lock_timeout_ms,
            settings,
            head,
            state,
        )
        .await;
        match applied {
            Ok(urls) => Preview::Live { urls, ttl },
            Err(reason) => missing(format!("it cannot be made: {reason}")),
        }
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

fn pull_ref(repo: &str, number: i64) -> PullRef {
    PullRef {
        repo: repo.to_owned(),
        number: u64::try_from(number).unwrap_or_default(),
    }
}

/// A duration as the configuration writes it: `72h`, `30m`, `45s`.
fn span(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0 => format!("{}ms", duration.as_millis()),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
