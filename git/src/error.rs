//! The crate's one error type. Every variant names what it could not read (a redacted URL
//! and commit, or a path on disk) and, where it can, what to do.

use std::path::PathBuf;

/// What went wrong reading manifests or a repository.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot read git repository {url}: {detail}")]
    Open { url: String, detail: String },
    #[error("cannot fetch {url}: {detail}")]
    Fetch { url: String, detail: String },
    #[error("`{reference}` is not a branch, tag or commit in {url}")]
    MissingRef { url: String, reference: String },
    #[error("`{path}` does not exist in commit {commit} of {url}")]
    MissingPath {
        url: String,
        commit: String,
        path: String,
    },
    #[error("`{path}` in commit {commit} of {url} is not a directory")]
    NotADirectory {
        url: String,
        commit: String,
        path: String,
    },
    #[error("`{path}` in commit {commit} of {url} is a {what}; manifests must be regular files")]
    NotAFile {
        url: String,
        commit: String,
        path: String,
        what: &'static str,
    },
    #[error("cannot check out commit {commit} of {url} into {}: {error}", dest.display())]
    Export {
        url: String,
        commit: String,
        dest: PathBuf,
        error: std::io::Error,
    },
    #[error("`{path}` in commit {commit} of {url} cannot be checked out: {why}")]
    UnsafeEntry {
        url: String,
        commit: String,
        path: String,
        why: &'static str,
    },
    #[error("cannot read {what} in {url}: {detail}")]
    Object {
        url: String,
        what: String,
        detail: String,
    },
    // The directory reader's IO errors are part of their message rather than a `source`: a
    // report that prints the chain (`{:#}`) would otherwise say them twice.
    #[error("cannot read manifest directory {}: {error}", path.display())]
    DirUnreadable {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} is not a directory", path.display())]
    DirNotADirectory { path: PathBuf },
    #[error("cannot read {}: {error}", path.display())]
    FileUnreadable {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} is a broken symbolic link: {error}", path.display())]
    BrokenLink {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{} links to {}, outside the manifest directory; links may only point inside it",
        path.display(),
        target.display()
    )]
    LinkOutside { path: PathBuf, target: PathBuf },
    #[error("{} is a {what}; manifests must be regular files", path.display())]
    NotRegular { path: PathBuf, what: &'static str },
    /// A read beyond its limits: a hostile or mistaken repository is refused before it is
    /// read into memory.
    #[error("{place} holds {found} {what}; one read is limited to {limit}")]
    TooMany {
        place: String,
        what: &'static str,
        found: u64,
        limit: u64,
    },
}
