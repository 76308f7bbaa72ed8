//! Reads manifest files for the pure loader in `schema`: from a directory, or from a git
//! commit through `reconciler::git`.
//!
//! Every `*.yaml` and `*.yml` below the root is read, in sorted order, skipping hidden
//! directories and files. Symbolic links are followed only when they resolve inside the
//! root: a link out of the root is an error, never silently skipped, because a skipped file
//! would look like deleted resources to a plan. Any directory that cannot be read is an
//! error for the same reason (fail closed).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use reconciler::git;
use schema::{Limits, SourceFile};

use crate::cli::SourceArgs;

/// Manifest files, where they came from, and the source that owns what they declare.
#[derive(Debug)]
pub struct Manifests {
    pub files: Vec<SourceFile>,
    /// Where they were read, for messages: a directory, or `URL@commit`.
    pub origin: String,
    /// The owning source, recorded on every row and revision.
    pub source: String,
    /// The commit they were read from, when read from git.
    pub commit: Option<String>,
}

/// Reads the manifests `dir` or `from.repo` names. Remote repositories are fetched into
/// `<home>/git`.
pub async fn read(dir: &Path, from: &SourceArgs, home: &Path) -> Result<Manifests> {
    let limits = Limits::default();
    let Some(url) = from.repo.clone() else {
        let canonical = std::fs::canonicalize(dir)
            .with_context(|| format!("cannot read manifest directory {}", dir.display()))?;
        return Ok(Manifests {
            files: read_dir(dir, &limits)?,
            origin: dir.display().to_string(),
            source: from
                .source
                .clone()
                .unwrap_or_else(|| format!("local:{}", canonical.display())),
            commit: None,
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
        origin: format!("{shown}@{}", short(&snapshot.commit)),
        source,
        commit: Some(snapshot.commit),
    })
}

/// The first 12 characters of a commit id, as people quote them.
pub fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// Reads every manifest file under `root`. Files larger than the limit are read only up to
/// one byte past it, so the loader can reject them without holding them in memory.
pub fn read_dir(root: &Path, limits: &Limits) -> Result<Vec<SourceFile>> {
    let meta = fs::metadata(root)
        .with_context(|| format!("cannot read manifest directory {}", root.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", root.display());
    }
    let canonical_root = root
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", root.display()))?;
    let mut paths = Vec::new();
    collect(root, &canonical_root, &mut paths)?;
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let mut bytes = Vec::new();
            fs::File::open(&path)
                .and_then(|f| {
                    f.take(limits.max_file_bytes as u64 + 1)
                        .read_to_end(&mut bytes)
                })
                .with_context(|| format!("cannot read {}", path.display()))?;
            Ok(SourceFile {
                path: path.display().to_string(),
                bytes,
            })
        })
        .collect()
}

fn collect(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        fs::read_dir(dir).with_context(|| format!("cannot read directory {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read directory {}", dir.display()))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let file_type = entry
            .file_type()
            .with_context(|| format!("cannot read {}", path.display()))?;
        let is_manifest =
            |p: &Path| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
        if file_type.is_symlink() {
            let target = path
                .canonicalize()
                .with_context(|| format!("{} is a broken symbolic link", path.display()))?;
            if !target.starts_with(root) {
                bail!(
                    "{} links to {}, outside the manifest directory; links may only point inside it",
                    path.display(),
                    target.display()
                );
            }
            // Links inside the root to directories are not descended into: the target is
            // already walked where it lives, and following them could loop.
            if target.is_file() && is_manifest(&path) {
                out.push(path);
            }
        } else if file_type.is_dir() {
            collect(&path, root, out)?;
        } else if file_type.is_file() && is_manifest(&path) {
            out.push(path);
        }
    }
    Ok(())
}
