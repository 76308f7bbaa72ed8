//! The one error type of the reconciler crate. Messages name what failed and what to do;
//! none carries a secret value.

use crate::plan::{Conflict, Refusal, Stale};
use crate::postgres::ClusterError;
use crate::secrets::SecretError;
use git::GitError;
use schema::Diagnostic;

// The database errors carry their cause in their message rather than as a `source`: a report
// that prints the chain (`{:#}`) would otherwise say it twice.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error while {operation}: {error}")]
    Database {
        operation: &'static str,
        error: sqlx::Error,
    },
    #[error("database migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// A secret of a manifest that cannot be opened, with where it is declared.
    #[error("{file}:{line}: spec.secrets.{name}: {error}")]
    ManifestSecret {
        file: String,
        line: u32,
        name: String,
        error: SecretError,
    },
    #[error("source `{from}` owns nothing to adopt; `meshploy state list` shows every owner")]
    NothingToAdopt { from: String },
    #[error(
        "the stored state of {address} cannot be read ({detail}); was the database edited by hand?"
    )]
    CorruptState { address: String, detail: String },
    #[error(
        "the saved plan has no desired value for {address}; make plans with `meshploy plan --out`"
    )]
    CorruptPlan { address: String },
    #[error(
        "the saved plan holds no envelope for secret {place}; make plans with `meshploy plan --out`"
    )]
    MissingEnvelope { place: String },
    #[error(
        "another apply holds the lock: {holder}; gave up after waiting {waited_ms} ms (raise --lock-timeout to wait longer)"
    )]
    Locked { holder: String, waited_ms: u64 },
    #[error("the saved plan is stale, nothing was applied; run `meshploy plan` again:\n{}", lines(.0))]
    Stale(Vec<Stale>),
    /// The saved plan is not what its own manifests plan: the file was edited.
    #[error("the saved plan does not match the manifests saved with it (was the file edited?); nothing was applied; make a new one with `meshploy plan --out`. It differs for:\n{}", lines(.0))]
    Tampered(Vec<String>),
    #[error("the plan is refused, nothing was applied:\n{}", lines(.0))]
    Refused(Vec<Refusal>),
    #[error("source `{source_name}` declares resources that another source owns; nothing was applied:\n{}\nTo take over everything a source owns (one renamed or moved), plan and apply with `--adopt-from SOURCE`.", lines(.conflicts))]
    Conflict {
        source_name: String,
        conflicts: Vec<Conflict>,
    },
    #[error(transparent)]
    Git(#[from] GitError),
    /// The manifests do not validate; each diagnostic names its file, line and column.
    #[error("{}", invalid_headline(.0.len()))]
    Invalid(Vec<Diagnostic>),
    /// A blocking task (parsing, git) ended without an answer: it panicked or was cancelled.
    #[error("a background task failed: {0}")]
    Task(String),
}

/// What `n` problems in the manifests mean for an apply, in one line.
pub(crate) fn invalid_headline(n: usize) -> String {
    let problems = match n {
        1 => "1 problem".to_owned(),
        n => format!("{n} problems"),
    };
    format!("the manifests are invalid ({problems}); nothing was applied")
}

/// Names the operation a database error interrupted, for `map_err`.
pub(crate) fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |error| Error::Database { operation, error }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(error: sqlx::migrate::MigrateError) -> Error {
        Error::Migrate(error)
    }
}

fn lines<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|item| format!("  - {item}"))
        .collect::<Vec<_>>()
        .join("\n")
}
