//! Manifests from a directory on disk: a working tree before it is committed.
//!
//! Every file [`select`](crate::select) picks below the root is read, in path order.
//! Symbolic links are followed only when they resolve inside the root: a link out of the root
//! is an error, never silently skipped, because a skipped file would look like deleted
//! resources to a plan. Any directory that cannot be read is an error for the same reason
//! (fail closed).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use schema::{Limits, ManifestFile};

use crate::GitError;
use crate::select::{self, Collected};

/// Reads every manifest file under `root`, each named by its path as given (`root` joined
/// with the path below it).
pub fn read(root: &Path, limits: &Limits) -> Result<Vec<ManifestFile>, GitError> {
    let meta = fs::metadata(root).map_err(|error| GitError::DirUnreadable {
        path: root.to_owned(),
        error,
    })?;
    if !meta.is_dir() {
        return Err(GitError::DirNotADirectory {
            path: root.to_owned(),
        });
    }
    let canonical_root = root
        .canonicalize()
        .map_err(|error| GitError::DirUnreadable {
            path: root.to_owned(),
            error,
        })?;
    let mut paths = Vec::new();
    collect(root, &canonical_root, &mut paths)?;
    let sizes = paths
        .iter()
        .map(|path| {
            fs::metadata(path)
                .map(|m| m.len())
                .map_err(|error| GitError::FileUnreadable {
                    path: path.clone(),
                    error,
                })
        })
        .collect::<Result<Vec<u64>, _>>()?;
    select::check(&root.display().to_string(), &sizes, limits)?;
    let mut collected = Collected::default();
    for (path, size) in paths.into_iter().zip(sizes) {
        let name = path.display().to_string();
        if select::too_large(size, limits) {
            collected.push(ManifestFile::unread(name, size));
            continue;
        }
        // A file that grew since it was measured is read one byte past the limit, so the
        // loader still refuses it rather than this reader holding all of it.
        let mut bytes = Vec::new();
        fs::File::open(&path)
            .and_then(|f| {
                f.take(limits.max_file_bytes as u64 + 1)
                    .read_to_end(&mut bytes)
            })
            .map_err(|error| GitError::FileUnreadable {
                path: path.clone(),
                error,
            })?;
        collected.push(ManifestFile::new(name, bytes));
    }
    Ok(collected.finish())
}

/// Refuses a manifest name that is not a regular file (a FIFO would block the reader, a
/// device would be read forever): skipping it would look like deleted resources.
fn regular(path: &Path, target: &Path) -> Result<(), GitError> {
    use std::os::unix::fs::FileTypeExt;
    let kind = fs::metadata(target)
        .map_err(|error| GitError::FileUnreadable {
            path: path.to_owned(),
            error,
        })?
        .file_type();
    let what = if kind.is_file() {
        return Ok(());
    } else if kind.is_fifo() {
        "FIFO"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "device"
    } else {
        "special file"
    };
    Err(GitError::NotRegular {
        path: path.to_owned(),
        what,
    })
}

fn collect(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) -> Result<(), GitError> {
    let unreadable = |error| GitError::FileUnreadable {
        path: dir.to_owned(),
        error,
    };
    for entry in fs::read_dir(dir).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if select::hidden(&name) {
            continue;
        }
        let file_type = entry
            .file_type()
            .map_err(|error| GitError::FileUnreadable {
                path: path.clone(),
                error,
            })?;
        if file_type.is_symlink() {
            let target = path.canonicalize().map_err(|error| GitError::BrokenLink {
                path: path.clone(),
                error,
            })?;
            if !target.starts_with(root) {
                return Err(GitError::LinkOutside { path, target });
            }
            // Links inside the root to directories are not descended into: the target is
            // already walked where it lives, and following them could loop.
            if select::is_manifest(&name) && !target.is_dir() {
                regular(&path, &target)?;
                out.push(path);
            }
        } else if file_type.is_dir() {
            collect(&path, root, out)?;
        } else if select::is_manifest(&name) {
            regular(&path, &path)?;
            out.push(path);
        }
    }
    Ok(())
}

/// The stable identity of a manifest directory inside a git work tree: the redacted URL of its
/// repository's default remote, then `//` and the directory's path in the work tree (nothing
/// at the root), as `plan --repo URL --path DIR` names it. The same repository cloned anywhere
/// gives the same identity. `None` outside a work tree, or in one without a remote.
pub fn identity(dir: &Path) -> Option<String> {
    let canonical = dir.canonicalize().ok()?;
    let repo = gix::discover(&canonical).ok()?;
    let work = repo.workdir()?.canonicalize().ok()?;
    let remote = repo
        .find_default_remote(gix::remote::Direction::Fetch)?
        .ok()?;
    let url = remote
        .url(gix::remote::Direction::Fetch)?
        .to_bstring()
        .to_string();
    let shown = crate::url::redact(&url);
    let inside = canonical.strip_prefix(&work).ok()?;
    Some(if inside.as_os_str().is_empty() {
        shown
    } else {
        format!("{shown}//{}", inside.display())
    })
}
