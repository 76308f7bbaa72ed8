//! The crate's one error type: what failed, and for a database error, the operation it
//! interrupted. Failures of a deployment itself are not errors: they are reasons recorded on
//! its row.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error while {operation}: {error}")]
    Database {
        operation: &'static str,
        error: sqlx::Error,
    },
    #[error("deployment {0} does not exist")]
    NoDeployment(i64),
    #[error("{service} has no deployment that was healthy to roll back to")]
    NothingToRollBackTo { service: String },
    #[error("deployment {deployment} is of {actual}, not of {service}")]
    OtherService {
        deployment: i64,
        service: String,
        actual: String,
    },
    #[error("deployment {deployment} of {service} never became healthy; roll back to one that did")]
    NeverHealthy { deployment: i64, service: String },
    #[error("no service `{name}` is applied or was deployed{}", did_you_mean(.near.as_deref()))]
    NoService { name: String, near: Option<String> },
    #[error("`{name}` is a service of several projects ({projects}); name it as PROJECT/{name}")]
    Ambiguous { name: String, projects: String },
    #[error("the applied {service} cannot be read: {reason}")]
    Unreadable { service: String, reason: String },
    #[error("cannot use the runtime's state directory {path}: {error}")]
    StateDir {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
}

fn did_you_mean(near: Option<&str>) -> String {
    near.map(|n| format!("; did you mean `{n}`?"))
        .unwrap_or_default()
}

/// Wraps a database error with the operation it interrupted.
pub(crate) fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |error| Error::Database { operation, error }
}
