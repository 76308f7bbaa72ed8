//! The state in PostgreSQL: one small function per query, grouped by concern. Every value is
//! a bound parameter; writes go in batches (`UNNEST` of arrays), so applying 10,000 resources
//! takes a handful of statements rather than 10,000 round trips.
//!
//! - `locks`: the apply lock (crate only: [`crate::pipeline`] takes it).
//! - `state`: the live state as one source sees it, and the stored resources.
//! - `secrets`: ciphertexts and the digest key (crate only).
//! - `revisions`: the revision rows and their NOTIFY.
//! - `writes`: the rows an apply writes (crate only, so nothing writes the state without
//!   holding the apply lock).
//! - `sources`: tracked sources, sync attempts and sync requests.
//! - `deliveries`: webhook deliveries seen, by id and by the digest of their signed body.
//! - `saved_plans`: digests of the plan files `plan --out` wrote.

mod deliveries;
pub(crate) mod locks;
pub(crate) mod revisions;
mod saved_plans;
pub(crate) mod secrets;
mod sources;
mod state;
pub(crate) mod writes;

use sqlx::migrate::Migrator;

pub use deliveries::remember_delivery;
pub use revisions::{CHANNEL, Revision, RevisionMeta, RevisionPlan, revision, revisions};
pub use saved_plans::{record_saved_plan, saved_plan_recorded};
pub use sources::{
    Attempt, LatestAttempt, PastAttempt, SYNC_CHANNEL, SourcePosition, SourceRow, SourceStatus,
    Unregistered, interrupt_applying, latest_attempt, mark_applying, past_attempts, record_attempt,
    remove_source, request_sync, source_position, source_statuses, take_sync_requests,
    touch_source, unregistered_sources, upsert_source,
};
pub use state::{Live, Stored, load_state, stored_resources};

/// The versioned SQL under `migrations/`.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// One column of a batch, for binding as an array.
fn column<'a, T, U>(rows: &'a [T], value: impl Fn(&'a T) -> U) -> Vec<U> {
    rows.iter().map(value).collect()
}
