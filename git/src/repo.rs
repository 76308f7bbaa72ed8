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

use std::os::unix::ffi::OsStrExt;
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

/// Why a tree entry's name cannot be checked out, if it cannot: one that could name a place
/// outside its directory, or git's own directory.
fn safe_name(name: &gix::bstr::BStr) -> Result<(), &'static str> {
    if name.is_empty() || name == "." || name == ".." {
        return Err("it names no file or a directory above");
    }
    if name.contains(&b'/') || name.contains(&b'\\') {
        return Err("it holds a path separator");
    }
    if name.contains(&0) {
        return Err("it holds a NUL byte");
    }
    if name.eq_ignore_ascii_case(b".git") {
        return Err("it is git's own directory");
    }
    Ok(())
}

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
    ///
    /// A tree is untrusted input: an entry whose name could reach outside its directory
    /// (`..`, a `/` or `\\`, NUL, `.git`) is refused, naming it. Nothing is written through a
    /// symbolic link: every file and directory is created new (`O_EXCL`) inside a directory
    /// this checkout just made, so a link in the tree stays a leaf, and a tree naming an entry
    /// twice (a link, then a directory through it) fails on the second.
    pub fn export(&self, commit: &str, path: &str, dest: &Path) -> Result<u64, GitError> {
        let root = self.subtree(commit, path)?;
        std::fs::create_dir(dest).map_err(|e| self.export_error(commit, dest, e))?;
        let mut files = 0;
        self.write_tree(commit, &root, dest, "", 0, &mut files)?;
        Ok(files)
    }

    /// Writes the entries of `tree` (at `shown` in the commit) into `dir`.
    fn write_tree(
        &self,
        commit: &str,
        tree: &gix::Tree<'_>,
        dir: &Path,
        shown: &str,
        depth: usize,
        files: &mut u64,
    ) -> Result<(), GitError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        /// Deeper than any real tree; a hostile one must not exhaust the stack.
        const MAX_DEPTH: usize = 256;
        for entry in tree.iter() {
            let entry =
                entry.map_err(|e| self.object_error(format!("the tree at `{shown}`"), &e))?;
            let name = entry.filename();
            let place = if shown.is_empty() {
                name.to_str_lossy().into_owned()
            } else {
                format!("{shown}/{}", name.to_str_lossy())
            };
            if let Err(why) = safe_name(name) {
                return Err(GitError::UnsafeEntry {
                    url: self.url.clone(),
                    commit: commit.to_owned(),
                    path: place.escape_debug().to_string(),
                    why,
                });
            }
            let target = dir.join(std::ffi::OsStr::from_bytes(name));
            let written = |e| self.export_error(commit, &target, e);
            let object = || {
                self.repo
                    .find_object(entry.oid())
                    .map_err(|e| self.object_error(format!("`{place}`"), &e))
            };
            match entry.mode().kind() {
                EntryKind::Tree => {
                    if depth >= MAX_DEPTH {
                        return Err(self.object_error(
                            format!("`{place}`"),
                            &format!("the tree is nested deeper than {MAX_DEPTH} directories"),
                        ));
                    }
                    std::fs::create_dir(&target).map_err(written)?;
                    let subtree = object()?
                        .peel_to_tree()
                        .map_err(|e| self.object_error(format!("`{place}`"), &e))?;
                    self.write_tree(commit, &subtree, &target, &place, depth + 1, files)?;
                }
                EntryKind::Commit => std::fs::create_dir(&target).map_err(written)?,
                kind @ (EntryKind::Blob | EntryKind::BlobExecutable) => {
                    let mode = if kind == EntryKind::BlobExecutable {
                        0o755
                    } else {
                        0o644
                    };
                    let data = object()?.detach().data;
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(mode)
                        .open(&target)
                        .and_then(|mut file| file.write_all(&data))
                        .map_err(written)?;
                    *files += 1;
                }
                EntryKind::Link => {
                    let link = String::from_utf8_lossy(&object()?.data).into_owned();
                    std::os::unix::fs::symlink(link, &target).map_err(written)?;
                    *files += 1;
                }
            }
        }
        Ok(())
    }

    fn export_error(&self, commit: &str, dest: &Path, error: std::io::Error) -> GitError {
        GitError::Export {
            url: self.url.clone(),
            commit: commit.to_owned(),
            dest: dest.to_owned(),
            error,
        }
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
    use std::process::{Command, Stdio};

    /// Runs git in `dir` with a fixed identity and returns its standard output.
    fn git(dir: &Path, args: &[&str], input: Option<&[u8]>) -> String {
        use std::io::Write;
        let mut child = Command::new("git")
            .current_dir(dir)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run git");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.unwrap_or_default()).expect("write");
        drop(stdin);
        let output = child.wait_with_output().expect("git");
        assert!(output.status.success(), "git {args:?} failed");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn bare() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        git(dir.path(), &["init", "-q", "--bare"], None);
        dir
    }

    fn commit(dir: &Path, tree: &str) -> String {
        git(dir, &["commit-tree", tree, "-m", "a commit"], None)
    }

    fn blob(dir: &Path, data: &[u8]) -> String {
        git(dir, &["hash-object", "-w", "--stdin"], Some(data))
    }

    /// A tree holding `entries` (mode, name, object id) as they are: made with
    /// `--literally`, as an attacker would, unchecked and unsorted.
    fn literal_tree(dir: &Path, entries: &[(&str, &[u8], String)]) -> String {
        let mut raw = Vec::new();
        for (mode, name, id) in entries {
            raw.extend_from_slice(mode.as_bytes());
            raw.push(b' ');
            raw.extend_from_slice(name);
            raw.push(0);
            let id = gix::ObjectId::from_hex(id.as_bytes()).expect("an object id");
            raw.extend_from_slice(id.as_bytes());
        }
        git(
            dir,
            &["hash-object", "-t", "tree", "--literally", "-w", "--stdin"],
            Some(&raw),
        )
    }

    fn export(repo: &Path, commit: &str, dest: &Path) -> Result<u64, GitError> {
        let cache = tempfile::tempdir().expect("cache");
        open(repo.to_str().expect("a path"), cache.path())?.export(commit, "", dest)
    }

    #[test]
    fn a_checkout_writes_files_modes_links_and_directories() {
        let dir = bare();
        let (script, readme) = (blob(dir.path(), b"echo hi\n"), blob(dir.path(), b"hello\n"));
        let link = blob(dir.path(), b"../README");
        let inner = literal_tree(
            dir.path(),
            &[("100755", b"run.sh", script), ("120000", b"readme", link)],
        );
        let tree = literal_tree(
            dir.path(),
            &[("100644", b"README", readme), ("40000", b"bin", inner)],
        );
        let commit = commit(dir.path(), &tree);
        let out = tempfile::tempdir().expect("out");
        let dest = out.path().join("checkout");
        assert_eq!(export(dir.path(), &commit, &dest).expect("exported"), 3);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dest.join("bin/run.sh")).expect("script");
        assert_eq!(mode.permissions().mode() & 0o777, 0o755);
        assert_eq!(
            std::fs::read_link(dest.join("bin/readme")).expect("a link"),
            Path::new("../README")
        );
        assert_eq!(
            std::fs::read_to_string(dest.join("bin/readme")).expect("read"),
            "hello\n"
        );
    }

    #[test]
    fn entries_that_name_a_place_outside_their_directory_are_refused_by_name() {
        for (name, why) in [
            (&b"../../../ESCAPED"[..], "path separator"),
            (b"..", "directory above"),
            (b".", "directory above"),
            (b"a\\b", "path separator"),
            (b".GIT", "git's own directory"),
        ] {
            let dir = bare();
            let id = blob(dir.path(), b"pwned\n");
            let tree = literal_tree(dir.path(), &[("100644", name, id)]);
            let commit = commit(dir.path(), &tree);
            let out = tempfile::tempdir().expect("out");
            let dest = out.path().join("a/b/c/checkout");
            std::fs::create_dir_all(dest.parent().expect("parent")).expect("parents");
            let error = export(dir.path(), &commit, &dest)
                .expect_err("refused")
                .to_string();
            assert!(
                error.contains("cannot be checked out") && error.contains(why),
                "{error}"
            );
            assert!(!out.path().join("ESCAPED").exists(), "written outside");
            assert!(!out.path().join("a/ESCAPED").exists(), "written outside");
        }
    }

    #[test]
    fn nothing_is_written_through_a_link_even_when_the_tree_names_it_twice() {
        let outside = tempfile::tempdir().expect("outside");
        let dir = bare();
        let pwned = blob(dir.path(), b"pwned\n");
        let inner = literal_tree(dir.path(), &[("100644", b"pwned", pwned.clone())]);
        let to_file = blob(
            dir.path(),
            outside.path().join("pwned").as_os_str().as_bytes(),
        );
        let to_dir = blob(dir.path(), outside.path().as_os_str().as_bytes());
        // `out` is a link out, then a file (or a directory holding one) of the same name: a
        // checkout that followed the link would write `pwned` outside.
        for (link, second) in [(to_file, ("100644", pwned)), (to_dir, ("40000", inner))] {
            let tree = literal_tree(
                dir.path(),
                &[("120000", b"out", link), (second.0, b"out", second.1)],
            );
            let commit = commit(dir.path(), &tree);
            let out = tempfile::tempdir().expect("out");
            let error = export(dir.path(), &commit, &out.path().join("checkout"))
                .expect_err("refused")
                .to_string();
            assert!(error.contains("File exists"), "{error}");
            assert_eq!(
                std::fs::read_dir(outside.path()).expect("read").count(),
                0,
                "written through the link"
            );
        }
    }

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
