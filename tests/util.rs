//! Shared helpers: temporary manifest directories, running the binary, and a fresh
//! PostgreSQL database per test.

use std::hash::{Hash, Hasher};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use reconciler::postgres::Cluster;

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

/// A fresh database in the test cluster, handed to the binary as `DATABASE_URL`.
pub struct Db {
    name: String,
    /// MESHPLOY_HOME of every command (remote repositories are cached there).
    home: tempfile::TempDir,
}

static DATABASES: AtomicUsize = AtomicUsize::new(0);

impl Db {
    pub fn new() -> Db {
        let n = DATABASES.fetch_add(1, Ordering::SeqCst);
        let name = format!("t{}_{n}", std::process::id());
        let db = Db {
            name,
            home: open_tempdir(),
        };
        db.psql_in("postgres", &format!("CREATE DATABASE {}", db.name));
        db
    }

    pub fn url(&self) -> String {
        cluster()
            .url(&self.name)
            .expect("the test cluster's password")
    }

    /// `MESHPLOY_HOME` of every command run against this database.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// The URL of this database for another role of the cluster (made with
    /// [`Db::password`]).
    pub fn url_as(&self, role: &str) -> String {
        self.url()
            .replacen("://postgres:", &format!("://{role}:"), 1)
    }

    /// The cluster's password, which the tests give every role they make.
    pub fn password(&self) -> String {
        cluster().password().expect("the test cluster's password")
    }

    /// Runs `meshploy ARGS` in `dir` against this database.
    pub fn meshploy(&self, dir: &Dir, args: &[&str]) -> Run {
        self.meshploy_with(dir, args, &[])
    }

    /// Like [`Db::meshploy`], with extra environment variables.
    pub fn meshploy_with(&self, dir: &Dir, args: &[&str], env: &[(&str, &str)]) -> Run {
        Run::new(
            self.command(dir, args)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .output(),
        )
    }

    /// The command `meshploy ARGS` in `dir` against this database, not yet started.
    pub fn command(&self, dir: &Dir, args: &[&str]) -> Command {
        let mut command = meshploy();
        command
            .current_dir(dir.path())
            .args(args)
            .env("DATABASE_URL", self.url())
            .env("MESHPLOY_HOME", self.home.path())
            .env_remove("MESHPLOY_SECRET_KEYS")
            .env_remove("RUST_LOG");
        command
    }

    /// Runs SQL with `psql` and returns its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in(&self.name, sql)
    }

    fn psql_in(&self, database: &str, sql: &str) -> String {
        let output = Command::new(cluster().program("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .arg(cluster().conninfo(database))
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "psql failed on `{sql}`: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// A `psql` command for this database, for a session kept open by the test.
    pub fn psql_command(&self) -> Command {
        self.psql_command_as("postgres")
    }

    /// `psql` connected to this database as `role`.
    pub fn psql_command_as(&self, role: &str) -> Command {
        let mut command = Command::new(cluster().program("psql"));
        command
            .args(["-X", "-q", "-A", "-t"])
            // In a connection string the last `user` wins.
            .arg(format!("{} user={role}", cluster().conninfo(&self.name)));
        command
    }

    /// The whole database as `pg_dump` prints it (data included).
    pub fn dump(&self) -> String {
        let output = Command::new(cluster().program("pg_dump"))
            .args(["--no-owner", "--inserts"])
            .arg(cluster().conninfo(&self.name))
            .output()
            .expect("run pg_dump");
        assert!(
            output.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// The test cluster: one per run of the test binary, made with the same code as the embedded
/// default, in a directory keyed by this checkout so two checkouts never share one.
fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let mut hasher = std::hash::DefaultHasher::new();
        env!("CARGO_MANIFEST_DIR").hash(&mut hasher);
        let dir = std::env::temp_dir()
            .join(format!("meshploy-tests-{:016x}", hasher.finish()))
            .join("pg");
        let cluster = Cluster::new(&dir)
            .expect("PostgreSQL binaries")
            .not_durable();
        // A server left by an earlier run is stopped and its data thrown away.
        if dir.exists() {
            cluster.stop().expect("stop the previous test cluster");
            std::fs::remove_dir_all(&dir).expect("remove the previous test cluster");
        }
        cluster.start().expect("start the test cluster");
        stop_on_exit(&cluster);
        cluster
    })
}

/// Stops the test cluster when this test process ends, however it ends: a watcher process
/// waits for end-of-file on a pipe that only this process holds open, then asks the server
/// for a fast shutdown (SIGINT to the postmaster).
fn stop_on_exit(cluster: &Cluster) {
    // The watcher and its pipe live until the process exits; it is never waited for.
    static WATCHER: OnceLock<std::process::Child> = OnceLock::new();
    let pid_file = cluster.data().join("postmaster.pid");
    let watcher = Command::new("sh")
        .args(["-c", "cat >/dev/null; kill -INT \"$(head -n 1 \"$0\")\""])
        .arg(pid_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the cluster watcher");
    let _ = WATCHER.set(watcher);
}

/// A temporary directory the PostgreSQL server user can enter (for `MESHPLOY_HOME`).
pub fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the temporary directory");
    dir
}

/// Runs `git ARGS` in `dir` with a fixed identity and no user or system configuration, and
/// returns its trimmed standard output.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Meshploy Tests")
        .env("GIT_AUTHOR_EMAIL", "tests@meshploy.invalid")
        .env("GIT_COMMITTER_NAME", "Meshploy Tests")
        .env("GIT_COMMITTER_EMAIL", "tests@meshploy.invalid")
        .output()
        .expect("run git");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A bare repository (the "remote" people push to) and a clone to commit in.
pub struct Remote {
    root: tempfile::TempDir,
}

impl Remote {
    pub fn new() -> Remote {
        let remote = Remote {
            root: open_tempdir(),
        };
        git(
            remote.root.path(),
            &["init", "-q", "--bare", "-b", "main", "bare.git"],
        );
        git(remote.root.path(), &["clone", "-q", "bare.git", "work"]);
        git(&remote.work(), &["checkout", "-q", "-b", "main"]);
        remote
    }

    pub fn bare(&self) -> PathBuf {
        self.root.path().join("bare.git")
    }

    pub fn work(&self) -> PathBuf {
        self.root.path().join("work")
    }

    /// Writes a file in the clone.
    pub fn write(&self, relative: &str, contents: &str) {
        let path = self.work().join(relative);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create directories");
        std::fs::write(path, contents).expect("write");
    }

    pub fn remove(&self, relative: &str) {
        std::fs::remove_file(self.work().join(relative)).expect("remove");
    }

    /// Commits everything in the clone and returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        git(&self.work(), &["add", "-A"]);
        git(
            &self.work(),
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        git(&self.work(), &["rev-parse", "HEAD"])
    }

    /// Pushes the clone's HEAD as pull request `number`'s head, `refs/pull/N/head` of the
    /// bare repository, as forges keep it.
    pub fn push_pull(&self, number: u64) {
        git(
            &self.work(),
            &[
                "push",
                "-q",
                "-f",
                "origin",
                &format!("HEAD:refs/pull/{number}/head"),
            ],
        );
    }

    /// Commits and pushes to the bare repository; returns the commit id.
    pub fn push(&self, message: &str) -> String {
        let commit = self.commit(message);
        git(&self.work(), &["push", "-q", "origin", "HEAD:main"]);
        commit
    }
}

/// Waits up to `timeout` for `check` to return something, asking every 50 ms.
pub fn wait_for<T>(timeout: std::time::Duration, check: impl FnMut() -> Option<T>) -> Option<T> {
    wait_every(std::time::Duration::from_millis(50), timeout, check)
}

/// Waits up to `timeout` for `check` to return something, asking every `interval`: a short
/// interval for checks that measure how fast something happens.
pub fn wait_every<T>(
    interval: std::time::Duration,
    timeout: std::time::Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(interval);
    }
}

/// A loopback port nothing listens on right now: for a connection that must be refused (a
/// dead endpoint). Servers the tests start bind port 0 and announce their port instead.
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// The status code of a raw HTTP/1 response (its head, or all of it); 0 without one.
pub fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// One HTTP/1.1 request over a real socket; returns the status and the body.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    // The server may answer (413) and close before reading a large body.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = status_of(&response);
    assert_ne!(status, 0, "no HTTP status in {response:?}");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A Python command-line tool (`requirement` as pip takes it), installed on first use into a
/// virtual environment under `target/python-tools`, so a fresh machine gets it without
/// anyone installing anything by hand.
pub fn python_tool(command: &str, requirement: &str) -> PathBuf {
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _installing = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let venv = repo_root().join("target/python-tools");
    let program = venv.join("bin").join(command);
    if !program.exists() {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv (install python3 and python3-venv)");
        assert!(
            made.success(),
            "cannot make a virtual environment in {}",
            venv.display()
        );
        let installed = Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                requirement,
            ])
            .status()
            .expect("pip install");
        assert!(
            installed.success(),
            "cannot install {requirement} from PyPI"
        );
    }
    program
}

/// Debian's ChromeDriver, installed with Chromium by `tests/install-chromium.sh` on first use,
/// so a fresh machine needs nothing done by hand.
pub fn chromedriver() -> PathBuf {
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _installing = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let driver = PathBuf::from("/usr/bin/chromedriver");
    if !driver.exists() {
        let installed = Command::new("bash")
            .arg(repo_root().join("tests/install-chromium.sh"))
            .status()
            .expect("run tests/install-chromium.sh");
        assert!(
            installed.success(),
            "cannot install chromium and chromium-driver"
        );
    }
    driver
}

/// SHA-256 of `bytes` in lowercase hex: what the test app answers for its secret, so a test
/// can check the value arrived without the app printing it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
