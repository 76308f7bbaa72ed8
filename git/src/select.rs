//! Which files are manifests, and how much of each is read: the one rule that the directory
//! reader and the commit reader share, so a working tree and its commit always yield the
//! same files.

use schema::{Limits, ManifestFile};

use crate::GitError;

/// Whether a file or directory name is hidden (`.git`, `.github`, editor files): hidden
/// entries and everything below them are never read.
pub fn hidden(name: &str) -> bool {
    name.starts_with('.')
}

/// Whether a file name is a manifest's: `*.yaml` or `*.yml`.
pub fn is_manifest(name: &str) -> bool {
    name.ends_with(".yaml") || name.ends_with(".yml")
}

/// Whether a path relative to the manifest root (components separated by `/`) is read: no
/// component hidden, and a manifest's name.
pub fn selects(relative: &str) -> bool {
    !relative.split('/').any(hidden) && is_manifest(relative)
}

/// Checks one read's manifests, known by their sizes before any is read, against the
/// limits on files and total bytes. A file over the per-file limit is not read (the loader
/// reports it), so it does not count towards the total. `place` names the read in the error.
pub fn check(place: &str, sizes: &[u64], limits: &Limits) -> Result<(), GitError> {
    if sizes.len() > limits.max_files {
        return Err(GitError::TooMany {
            place: place.to_owned(),
            what: "manifest files",
            found: sizes.len() as u64,
            limit: limits.max_files as u64,
        });
    }
    let total: u64 = sizes.iter().filter(|size| !too_large(**size, limits)).sum();
    if total > limits.max_total_bytes {
        return Err(GitError::TooMany {
            place: place.to_owned(),
            what: "bytes of manifests",
            found: total,
            limit: limits.max_total_bytes,
        });
    }
    Ok(())
}

/// Whether a file is over the per-file limit, so it is not read.
pub fn too_large(size: u64, limits: &Limits) -> bool {
    size > limits.max_file_bytes as u64
}

/// Gathers the selected files and hands them out in path order.
#[derive(Debug, Default)]
pub struct Collected {
    files: Vec<ManifestFile>,
}

impl Collected {
    pub fn push(&mut self, file: ManifestFile) {
        self.files.push(file);
    }

    /// The files, sorted by path.
    pub fn finish(mut self) -> Vec<ManifestFile> {
        self.files.sort_by(|a, b| a.path.cmp(&b.path));
        self.files
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_are_yaml_files_outside_hidden_directories() {
        for read in ["a.yaml", "b.yml", "deploy/web.yaml", "a/b/c/d.yml"] {
            assert!(selects(read), "{read}");
        }
        for skipped in [
            ".hidden.yaml",
            ".github/workflows/ci.yml",
            "deploy/.draft/web.yaml",
            "README.md",
            "web.yaml.bak",
            "values.json",
        ] {
            assert!(!selects(skipped), "{skipped}");
        }
    }

    #[test]
    fn one_read_is_bounded_in_files_and_in_bytes_but_unread_files_do_not_count() {
        let limits = Limits {
            max_file_bytes: 10,
            max_files: 3,
            max_total_bytes: 20,
            ..Limits::default()
        };
        assert!(check("deploy", &[10, 10, 1_000_000_000], &limits).is_ok());
        let files = check("deploy", &[1, 1, 1, 1], &limits).map_err(|e| e.to_string());
        assert_eq!(
            files,
            Err("deploy holds 4 manifest files; one read is limited to 3".into())
        );
        let bytes = check("deploy", &[10, 10, 1], &limits).map_err(|e| e.to_string());
        assert_eq!(
            bytes,
            Err("deploy holds 21 bytes of manifests; one read is limited to 20".into())
        );
    }
}
