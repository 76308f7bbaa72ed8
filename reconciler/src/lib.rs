//! The reconciler: from desired state to PostgreSQL through plans.
//!
//! `plan` is the pure core (no IO, no async, no clock): it diffs desired against actual state
//! and renders the result. Everything that touches git or the database lives beside it and
//! calls into it, never the other way round.

pub mod plan;
pub mod secrets;
