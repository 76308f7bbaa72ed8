//! Git and manifest files: what the reconciler and the builder read, with no database.
//!
//! - [`select`] is the one rule for which files are manifests (`*.yaml`/`*.yml`, nothing
//!   hidden) and how much of each is read; both readers below use it.
//! - [`dir`] reads a directory on disk (a working tree before it is committed).
//! - [`repo`] reads a commit's tree with gix, without a checkout: a local repository in
//!   place, a remote one fetched into a cache first.
//! - [`url`] tells URLs from paths and redacts credentials.
//!
//! Invariant: a URL leaves this crate only redacted, and every error text is scrubbed of
//! the URL's user information. Everything here blocks: async callers use `spawn_blocking`.

pub mod dir;
mod error;
pub mod repo;
pub mod select;
pub mod url;

pub use error::GitError;
pub use repo::{Repo, Snapshot, open, open_cached, open_pull};
pub use url::{Location, redact};
