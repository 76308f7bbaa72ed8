//! Which files are manifests, and how much of each is read: the one rule that the directory
//! reader and the commit reader share, so a working tree and its commit always yield the
//! same files.

use schema::{Limits, ManifestFile};

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

/// How many bytes of a file are kept: one past the per-file limit, so the loader reports an
/// oversized file as too large without the reader holding all of it.
pub fn kept_bytes(limits: &Limits) -> usize {
    limits.max_file_bytes.saturating_add(1)
}

/// Gathers the selected files and hands them out in path order.
#[derive(Debug, Default)]
pub struct Collected {
    files: Vec<ManifestFile>,
}

impl Collected {
    /// Keeps `bytes` (already cut to [`kept_bytes`]) as the file `path`.
    pub fn push(&mut self, path: String, bytes: Vec<u8>) {
        self.files.push(ManifestFile { path, bytes });
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
}
