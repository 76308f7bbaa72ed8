//! Reviewing a pull request for one source: plan its manifests against the live state,
//! read-only, and publish the plan as the one comment of (pull request, source) and a commit
//! status. Used by the server on pull-request webhooks and by `meshploy plan --comment`.

use reconciler::plan::Guard;
use reconciler::secrets::Keyring;
use reconciler::{Error, apply, pipeline};
use schema::{DesiredState, Limits, ManifestFile};
use sqlx::PgPool;

use crate::client::{Forge, ForgeError, PullRef, Status};
use crate::comment::{self, Preview, Review};

/// Plans `files` (the manifests at a pull request's head) as `source` against the live
/// state. Nothing is locked or written: the plan is a preview, as `meshploy plan` makes.
pub async fn plan(
    pool: &PgPool,
    source: &str,
    files: Vec<ManifestFile>,
    keys: Option<&Keyring>,
    guard: &Guard,
) -> Review {
    match load(files).await {
        Ok(state) => plan_loaded(pool, source, &state, keys, guard).await,
        Err(review) => review,
    }
}

/// Validates `files`; what is wrong with them is the review.
pub async fn load(files: Vec<ManifestFile>) -> Result<DesiredState, Review> {
    let loaded = tokio::task::spawn_blocking(move || schema::load(&files, &Limits::default()))
        .await
        .map_err(|e| Review::Failed {
            reason: e.to_string(),
        })?;
    loaded.map_err(|diagnostics| Review::Invalid { diagnostics })
}

/// [`plan`] of manifests already validated.
pub async fn plan_loaded(
    pool: &PgPool,
    source: &str,
    state: &DesiredState,
    keys: Option<&Keyring>,
    guard: &Guard,
) -> Review {
    let planned = match apply::prepare_for(pool, state, keys).await {
        Ok(desired) => {
            pipeline::preview(pool, pipeline::Owner::source(source), desired, guard).await
        }
        Err(error) => Err(error),
    };
    match planned {
        Ok(preview) => Review::Planned {
            plan: preview.plan,
            refusals: preview.refusals,
        },
        Err(Error::Invalid(diagnostics)) => Review::Invalid { diagnostics },
        Err(error) => Review::Failed {
            reason: error.to_string(),
        },
    }
}

/// What publishing did to the comment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    Created(u64),
    Edited(u64),
    /// The comment said exactly this already.
    Unchanged(u64),
}

/// Marks `source`'s comment on `pr` as describing an older commit than `head`, before the
/// new plan is made, unless the head's manifests (digest `manifests`) are the ones the
/// comment describes. Returns whether a comment was marked.
pub async fn mark_outdated(
    forge: &impl Forge,
    pr: &PullRef,
    source: &str,
    head: &str,
    manifests: &str,
) -> Result<bool, ForgeError> {
    let me = forge.me().await?;
    let comments = forge.comments(pr).await?;
    let Some(existing) = comment::find(&comments, &me, source) else {
        return Ok(false);
    };
    let Some(body) = comment::outdated(&existing.body, head, manifests) else {
        return Ok(false);
    };
    // Only a courtesy while the plan is made: a comment that cannot be edited is replaced
    // when the plan is published.
    match forge.edit_comment(pr, existing.id, &body).await {
        Ok(()) => Ok(true),
        Err(error) => {
            tracing::warn!(%pr, comment = existing.id, %error, "cannot mark the plan comment outdated");
            Ok(false)
        }
    }
}

/// What one review of a pull request's head says: the head, the digest of its manifests,
/// the plan and the preview.
#[derive(Clone, Copy, Debug)]
pub struct Said<'a> {
    pub head: &'a str,
    pub manifests: &'a str,
    pub review: &'a Review,
    pub preview: &'a Preview,
}

/// Puts what `said` of `source` on `pr`: the comment is created once, then edited in place,
/// and left alone when it would say the same (the same text, or the same review of the same
/// manifests at an earlier head); a comment of ours that cannot be edited is replaced by a new
/// one. Then the commit status of the head is set, whatever became of the comment, so that
/// no earlier verdict (or none) stands for this head.
pub async fn publish(
    forge: &impl Forge,
    pr: &PullRef,
    source: &str,
    said: Said<'_>,
    target_url: Option<String>,
) -> Result<Published, ForgeError> {
    let commented = comment_on(forge, pr, source, said).await;
    let (state, context, description) = comment::status(source, said.review);
    let status = Status {
        state,
        context,
        description,
        target_url,
    };
    let status_set = forge.set_status(&pr.repo, said.head, &status).await;
    let published = commented?;
    status_set?;
    Ok(published)
}

/// The comment part of [`publish`].
async fn comment_on(
    forge: &impl Forge,
    pr: &PullRef,
    source: &str,
    said: Said<'_>,
) -> Result<Published, ForgeError> {
    let Said {
        head,
        manifests,
        review,
        preview,
    } = said;
    let body = comment::body(source, head, manifests, review, preview);
    let me = forge.me().await?;
    let comments = forge.comments(pr).await?;
    Ok(match comment::find(&comments, &me, source) {
        Some(existing)
            if existing.body == body
                || comment::says_already(&existing.body, source, manifests, review, preview) =>
        {
            Published::Unchanged(existing.id)
        }
        Some(existing) => match forge.edit_comment(pr, existing.id, &body).await {
            Ok(()) => Published::Edited(existing.id),
            Err(error) => {
                // Locked, or its permissions changed: trying again on every pass would
                // never publish anything.
                tracing::warn!(%pr, comment = existing.id, %error, "cannot edit the plan comment; posting a new one");
                Published::Created(forge.create_comment(pr, &body).await?.id)
            }
        },
        None => Published::Created(forge.create_comment(pr, &body).await?.id),
    })
}
