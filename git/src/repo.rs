//! Reading a commit's tree with gix, without a checkout.
//!
//! A local repository (a path, bare or not) is read in place. A remote (`file://`, `git://`,
//! `https://`, `ssh://`) is fetched into a bare cache repository first; its branches and tags
//! are mirrored with forced refspecs, so a force-push upstream is followed (git is the
//! truth).
//!
//! Credentials come from the URL or the user's git configuration (credential helpers). They
//! never leave this module: every URL shown to a user goes through [`redact`], and error
//! texts from gix are scrubbed of the URL's user information.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use gix::bstr::ByteSlice;
use gix::objs::tree::EntryKind;
use report::causes;
use schema::{Limits, ManifestFile};
use sha2::{Digest, Sha256};

use crate::GitError;
use crate::select::{self, Collected};
use crate::url::{Location, redact, scrub};

/// A repository ready to read, and the name it is shown under.
#[derive(Debug)]
pub struct Repo {
    repo: gix::Repository,
    url: String,
}

/// One commit's manifests.
#[derive(Debug)]
pub struct Snapshot {
    pub commit: String,
    pub files: Vec<ManifestFile>,
}

/// Opens a local repository, or fetches a remote one into its cache under `cache_root`.
pub fn open(url: &str, cache_root: &Path) -> Result<Repo, GitError> {
    let shown = redact(url);
    match Location::parse(url) {
        Location::Local(path) => {
            let repo = gix::open_opts(&path, options()).map_err(|e| GitError::Open {
                url: shown.clone(),
                detail: e.to_string(),
            })?;
            Ok(Repo { repo, url: shown })
        }
        Location::Remote(url) => fetch(&url, cache_root),
    }
}

/// Opens a repository as [`open`] does, without fetching: a remote one is read from its
/// cache as the last fetch left it.
pub fn open_cached(url: &str, cache_root: &Path) -> Result<Repo, GitError> {
    let shown = redact(url);
    match Location::parse(url) {
        Location::Local(_) => open(url, cache_root),
        Location::Remote(url) => {
            let repo = gix::open_opts(cache_dir(&url, cache_root), options()).map_err(|e| {
                GitError::Open {
                    url: shown.clone(),
                    detail: format!("not fetched yet ({e})"),
                }
            })?;
            Ok(Repo { repo, url: shown })
        }
    }
}

/// One cache per URL (credentials excluded, so rotating a token keeps the cache).
fn cache_dir(url: &str, cache_root: &Path) -> std::path::PathBuf {
    let digest = Sha256::digest(redact(url).as_bytes());
    cache_root.join(
        digest[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    )
}

/// Opening options that honour the user's and the system's git configuration, which is
/// where credential helpers are configured.
fn options() -> gix::open::Options {
    use gix::sec::trust::DefaultForLevel;
    let mut options = gix::open::Options::default_for_level(gix::sec::Trust::Full);
    options.permissions.config.git_binary = true;
    options
}

/// Opens a repository as [`open`] does, with a pull request's head: a remote one also
/// fetches `refs/pull/NUMBER/head`, which GitHub and Gitea keep in the base repository for
/// every pull request, forks' included.
pub fn open_pull(url: &str, cache_root: &Path, number: u64) -> Result<Repo, GitError> {
    match Location::parse(url) {
        Location::Local(_) => open(url, cache_root),
        Location::Remote(url) => fetch_refs(
            &url,
            cache_root,
            &[format!("+refs/pull/{number}/head:refs/pull/{number}/head")],
        ),
    }
}

fn fetch(url: &str, cache_root: &Path) -> Result<Repo, GitError> {
    fetch_refs(url, cache_root, &[])
}

/// Fetches branches, tags and `extra` refspecs of `url` into its cache.
fn fetch_refs(url: &str, cache_root: &Path, extra: &[String]) -> Result<Repo, GitError> {
    let shown = redact(url);
    let failed = |e: &dyn std::error::Error| GitError::Fetch {
        url: shown.clone(),
        detail: scrub(url, causes(e)),
    };
    let dir = cache_dir(url, cache_root);
    private_dir(cache_root).map_err(|e| failed(&e))?;
    let repo = if dir.join("HEAD").exists() {
        gix::open_opts(&dir, options()).map_err(|e| failed(&e))?
    } else {
        std::fs::create_dir_all(&dir).map_err(|e| failed(&e))?;
        gix::ThreadSafeRepository::init_opts(
            &dir,
            gix::create::Kind::Bare,
            gix::create::Options::default(),
            options(),
        )
        .map_err(|e| failed(&e))?
        .to_thread_local()
    };
    let remote = repo
        .remote_at(url)
        .map_err(|e| failed(&e))?
        .with_refspecs(
            ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]
                .into_iter()
                .chain(extra.iter().map(String::as_str)),
            gix::remote::Direction::Fetch,
        )
        .map_err(|e| failed(&e))?;
    let interrupt = AtomicBool::new(false);
    remote
        .connect(gix::remote::Direction::Fetch)
        .map_err(|e| failed(&e))?
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(|e| failed(&e))?
        .receive(gix::progress::Discard, &interrupt)
        .map_err(|e| failed(&e))?;
    Ok(Repo { repo, url: shown })
}

/// Creates `dir` (and its parents) if needed and makes it readable by its owner only: the
/// cache mirrors private repositories.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

impl Repo {
    /// The commit `reference` names: a branch, a tag, a commit id or any revision that
    /// `git rev-parse` understands (`main~1`).
    pub fn resolve(&self, reference: &str) -> Result<String, GitError> {
        let missing = || GitError::MissingRef {
            url: self.url.clone(),
            reference: reference.to_owned(),
        };
        // A branch name is tried as a branch first, so a same-named file or tag never wins.
        let branch = format!("refs/heads/{reference}");
        let id = match self.repo.try_find_reference(branch.as_str()) {
            Ok(Some(mut r)) => r.peel_to_id().map_err(|_| missing())?.detach(),
            _ => self
                .repo
                .rev_parse_single(reference)
                .map_err(|_| missing())?
                .detach(),
        };
        let object = self.repo.find_object(id).map_err(|_| missing())?;
        let commit = object.peel_to_commit().map_err(|_| missing())?;
        Ok(commit.id.to_string())
    }

    /// The commit at the tip of `branch`, and nothing else: a missing branch is an error,
    /// never a tag or commit of the same name.
    pub fn branch(&self, branch: &str) -> Result<String, GitError> {
        let missing = || GitError::MissingRef {
            url: self.url.clone(),
            reference: format!("refs/heads/{branch}"),
        };
        let mut reference = self
            .repo
            .try_find_reference(format!("refs/heads/{branch}").as_str())
            .map_err(|_| missing())?
            .ok_or_else(missing)?;
        let id = reference.peel_to_id().map_err(|_| missing())?.detach();
        Ok(id.to_string())
    }

    /// The git directory of a local repository, whose refs a watcher can follow.
    pub fn git_dir(&self) -> &Path {
        self.repo.git_dir()
    }

    /// Whether `ancestor` is `commit` or one of its ancestors. An ancestor that the
    /// repository no longer holds (history rewritten and collected) is not one.
    pub fn descends(&self, commit: &str, ancestor: &str) -> Result<bool, GitError> {
        let (Ok(commit), Ok(ancestor)) = (
            gix::ObjectId::from_hex(commit.as_bytes()),
            gix::ObjectId::from_hex(ancestor.as_bytes()),
        ) else {
            return Ok(false);
        };
        if commit == ancestor {
            return Ok(true);
        }
        if self.repo.find_object(ancestor).is_err() {
            return Ok(false);
        }
        match self.repo.merge_base(commit, ancestor) {
            Ok(base) => Ok(base.is_some_and(|b| b.detach() == ancestor)),
            Err(_) => Ok(false),
        }
    }

    /// Writes the tree under `path` in `commit` into `dest`, a new directory: the checkout a
    /// build runs in. Executable files keep their mode and symbolic links stay links; a
    /// submodule becomes an empty directory, as `git clone` without `--recursive` leaves it.
    /// Returns the number of files written.
    pub fn export(&self, commit: &str, path: &str, dest: &Path) -> Result<u64, GitError> {
        use std::os::unix::fs::PermissionsExt;
        let root = self.subtree(commit, path)?;
        let written = |e: std::io::Error| GitError::Export {
            url: self.url.clone(),
            commit: commit.to_owned(),
            dest: dest.to_owned(),
            error: e,
        };
        let mut recorder = gix::traverse::tree::Recorder::default();
        root.traverse()
            .breadthfirst(&mut recorder)
            .map_err(|e| self.object_error(format!("the tree of commit {commit}"), &e))?;
        std::fs::create_dir(dest).map_err(written)?;
        let mut files = 0;
        // Breadth first: every directory is recorded before what it holds.
        for entry in recorder.records {
            let relative = entry.filepath.to_str_lossy();
            let target = dest.join(relative.as_ref());
            let blob = || {
                self.repo
                    .find_object(entry.oid)
                    .map(|o| o.detach().data)
                    .map_err(|e| self.object_error(format!("`{relative}`"), &e))
            };
            match entry.mode.kind() {
                EntryKind::Tree | EntryKind::Commit => {
                    std::fs::create_dir(&target).map_err(written)?;
                }
                EntryKind::Blob | EntryKind::BlobExecutable => {
                    std::fs::write(&target, blob()?).map_err(written)?;
                    if entry.mode.kind() == EntryKind::BlobExecutable {
                        let mode = std::fs::Permissions::from_mode(0o755);
                        std::fs::set_permissions(&target, mode).map_err(written)?;
                    }
                    files += 1;
                }
                EntryKind::Link => {
                    let link = String::from_utf8_lossy(&blob()?).into_owned();
                    std::os::unix::fs::symlink(link, &target).map_err(written)?;
                    files += 1;
                }
            }
        }
        Ok(files)
    }

    fn object_error(&self, what: String, error: &dyn std::fmt::Display) -> GitError {
        GitError::Object {
            url: self.url.clone(),
            what,
            detail: error.to_string(),
        }
    }

    /// The tree at `path` (`""` or `"."` for the root) in `commit`.
    fn subtree(&self, commit: &str, path: &str) -> Result<gix::Tree<'_>, GitError> {
        let id = gix::ObjectId::from_hex(commit.as_bytes())
            .map_err(|e| self.object_error(format!("commit {commit}"), &e))?;
        let tree = self
            .repo
            .find_commit(id)
            .and_then(|c| c.tree())
            .map_err(|e| self.object_error(format!("the tree of commit {commit}"), &e))?;
        let path = path.trim_matches('/');
        if path.is_empty() || path == "." {
            return Ok(tree);
        }
        let located = |e: &dyn std::fmt::Display| self.object_error(format!("`{path}`"), e);
        let entry = tree
            .lookup_entry_by_path(path)
            .map_err(|e| located(&e))?
            .ok_or_else(|| GitError::MissingPath {
                url: self.url.clone(),
                commit: commit.to_owned(),
                path: path.to_owned(),
            })?;
        if !entry.mode().is_tree() {
            return Err(GitError::NotADirectory {
                url: self.url.clone(),
                commit: commit.to_owned(),
                path: path.to_owned(),
            });
        }
        entry
            .object()
            .map_err(|e| located(&e))?
            .peel_to_tree()
            .map_err(|e| located(&e))
    }

    /// Every manifest (`*.yaml`, `*.yml`, not hidden) under `path` in `commit`'s tree,
    /// sorted by path. Files are named by their path in the repository.
    pub fn read(&self, commit: &str, path: &str, limits: &Limits) -> Result<Snapshot, GitError> {
        let root = self.subtree(commit, path)?;
        let path = path.trim_matches('/');
        let mut recorder = gix::traverse::tree::Recorder::default();
        root.traverse()
            .breadthfirst(&mut recorder)
            .map_err(|e| self.object_error(format!("the tree of commit {commit}"), &e))?;
        // First every manifest's size from its object header, without inflating any: a
        // hostile tree (a huge blob, or thousands of entries naming one blob) is refused or
        // skipped before it costs memory.
        let mut found = Vec::new();
        for entry in recorder.records {
            let relative = entry.filepath.to_str_lossy();
            if relative.split('/').any(select::hidden) {
                continue;
            }
            let is_manifest = select::is_manifest(&relative);
            let full = if path.is_empty() || path == "." {
                relative.to_string()
            } else {
                format!("{path}/{relative}")
            };
            let not_a_file = |what| GitError::NotAFile {
                url: self.url.clone(),
                commit: commit.to_owned(),
                path: full.clone(),
                what,
            };
            match entry.mode.kind() {
                EntryKind::Blob | EntryKind::BlobExecutable if is_manifest => {
                    let size = self
                        .repo
                        .find_header(entry.oid)
                        .map_err(|e| self.object_error(format!("`{full}`"), &e))?
                        .size();
                    found.push((full, entry.oid, size));
                }
                EntryKind::Link if is_manifest => return Err(not_a_file("symbolic link")),
                // A submodule's manifests would silently vanish from the plan.
                EntryKind::Commit => return Err(not_a_file("submodule")),
                _ => {}
            }
        }
        let sizes: Vec<u64> = found.iter().map(|(_, _, size)| *size).collect();
        let place = format!(
            "`{}` in commit {commit} of {}",
            if path.is_empty() { "." } else { path },
            self.url
        );
        select::check(&place, &sizes, limits)?;
        let mut collected = Collected::default();
        for (full, oid, size) in found {
            if select::too_large(size, limits) {
                collected.push(ManifestFile::unread(full, size));
                continue;
            }
            let blob = self
                .repo
                .find_object(oid)
                .map_err(|e| self.object_error(format!("`{full}`"), &e))?;
            collected.push(ManifestFile::new(full, blob.detach().data));
        }
        Ok(Snapshot {
            commit: commit.to_owned(),
            files: collected.finish(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_errors_say_why_and_hide_credentials_in_every_cause() {
        let refused = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connect to https://bot:s3cr3t@host/r: connection refused",
        );
        let outer = std::io::Error::other(Wrapped(refused));
        let text = scrub("https://bot:s3cr3t@host/r", causes(&outer));
        assert_eq!(
            text,
            "handshake failed: connect to https://***@host/r: connection refused"
        );
    }

    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("handshake failed")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
