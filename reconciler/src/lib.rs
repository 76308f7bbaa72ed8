//! The reconciler: from desired state to PostgreSQL through plans.
//!
//! `plan` is the pure core (no IO, no async, no clock): it diffs desired against actual state
//! and renders the result. `pipeline` is the one checked path from desired state to written
//! state (lock, plan, check, apply); `apply`, `store` and `postgres` are the IO shell around
//! it: what an apply writes, the queries, and the embedded database. The core never calls
//! out.

pub mod apply;
mod error;
pub mod names;
pub mod pipeline;
pub mod plan;
pub mod postgres;
pub mod secrets;
pub mod serve;
pub mod store;
pub mod sync;

pub use error::Error;
