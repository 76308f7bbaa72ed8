//! Shared helpers: temporary manifest directories and running the binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A directory of manifests in a temporary location, removed when dropped.
pub struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        Dir {
            dir: tempfile::tempdir().expect("create a temporary directory"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `contents` to `relative`, creating parent directories.
    pub fn write(&self, relative: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(relative);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create directories");
        std::fs::write(&path, contents).expect("write a manifest");
        path
    }

    /// Runs `meshploy ARGS` with this directory as the working directory.
    pub fn meshploy(&self, args: &[&str]) -> Run {
        Run::new(meshploy().current_dir(self.path()).args(args).output())
    }
}

pub fn meshploy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshploy"))
}

/// The outcome of one run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn new(output: std::io::Result<Output>) -> Run {
        let output = output.expect("run meshploy");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Asserts that the run failed with exit code 1 and an error containing `fragment`.
    pub fn assert_fails_with(&self, fragment: &str) {
        assert_eq!(self.code, 1, "expected failure; stderr:\n{}", self.stderr);
        assert!(
            self.stderr.contains(fragment),
            "no `{fragment}` in:\n{}",
            self.stderr
        );
    }

    /// Parses standard output as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// The root of this repository, for tests that read its examples.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
