//! Reads manifest files for the pure loader in `schema`, through the `git` crate: from a
//! directory (`git::dir`), or from a commit (`git::repo`). Both select files by the same rule
//! and fail closed.

use std::path::Path;

use anyhow::{Context, Result, bail};
use schema::{Limits, ManifestFile};

use crate::cli::SourceArgs;

/// Manifest files, where they came from, and the source that owns what they declare.
#[derive(Debug)]
pub struct Manifests {
    pub files: Vec<ManifestFile>,
    /// Where they were read, for messages: a directory, or `URL@commit`.
    pub label: String,
    /// The owning source, recorded on every row and revision.
    pub source: String,
    /// The commit they were read from, when read from git.
    pub commit: Option<String>,
    /// The directory they were read from, when read from one (canonical).
    pub directory: Option<String>,
}

/// Reads the manifests `dir` or `from.repo` names. Remote repositories are fetched into
/// `<home>/git`.
pub async fn read(dir: &Path, from: &SourceArgs, home: &Path) -> Result<Manifests> {
    let limits = Limits::default();
    let Some(url) = from.repo.clone() else {
        let canonical = std::fs::canonicalize(dir)
            .with_context(|| format!("cannot read manifest directory {}", dir.display()))?;
        return Ok(Manifests {
            files: git::dir::read(dir, &limits)?,
            label: dir.display().to_string(),
            source: from.source.clone().unwrap_or_else(|| {
                git::dir::identity(&canonical)
                    .unwrap_or_else(|| format!("local:{}", canonical.display()))
            }),
            commit: None,
            directory: Some(canonical.display().to_string()),
        });
    };
    let reference = match (&from.reference, git::Location::parse(&url)) {
        (Some(reference), _) => reference.clone(),
        (None, git::Location::Local(_)) => "HEAD".to_owned(),
        (None, git::Location::Remote(_)) => {
            bail!("--ref is required with a repository URL: name the branch, tag or commit to read")
        }
    };
    let path = from.path.clone();
    let cache = home.join("git");
    let fetch_url = url.clone();
    let snapshot = tokio::task::spawn_blocking(move || {
        let repo = git::open(&fetch_url, &cache)?;
        let commit = repo.resolve(&reference)?;
        repo.read(&commit, &path, &limits)
    })
    .await??;
    let shown = git::redact(&url);
    let source = from.source.clone().unwrap_or_else(|| {
        if from.path.is_empty() {
            shown.clone()
        } else {
            format!("{shown}//{}", from.path.trim_matches('/'))
        }
    });
    Ok(Manifests {
        files: snapshot.files,
        label: format!("{shown}@{}", short(&snapshot.commit)),
        source,
        commit: Some(snapshot.commit),
        directory: None,
    })
}

/// The first 12 characters of a commit id, as people quote them.
pub fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}
