//! The runtime side of Meshploy: what runs, and how it gets there.
//!
//! - [`release`] (pure) turns a service's applied fields into a release and its digest.
//! - [`decide`] (pure) is the controller's mind: desired releases and what it observes in,
//!   decisions out.
//! - [`build`] checks a source out through the `git` crate and runs its build strategy,
//!   streaming the output into PostgreSQL ([`logs`]), with a cache by commit and settings.
//! - [`sandbox`] confines what builds and replicas run: a supervisor per job that stops
//!   every process the job starts, Landlock, a user of their own, a cgroup each.
//! - [`runtime`] is the boundary a runtime implements (start a release's replicas, wait for
//!   their health, stop them, report how they fare); [`local`] runs them as supervised child
//!   processes on this machine.
//! - [`controller`] is the level-triggered loop that observes, decides and carries out,
//!   keeping its state in PostgreSQL ([`store`]) so a restart carries on where it stopped.
//!
//! Invariant: a secret's value exists only while a process is spawned (its environment) and
//! in the redactor that replaces it in captured output; rows, logs and errors never hold it.

pub mod build;
pub mod controller;
pub mod decide;
mod error;
mod health;
pub mod lines;
pub mod local;
pub mod logs;
mod process;
pub mod release;
pub mod rollback;
pub mod runtime;
pub mod sandbox;
pub mod store;

pub use error::Error;
pub use process::MAX_LINE;
