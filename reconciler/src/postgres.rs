//! The embedded database: a private PostgreSQL cluster made with the machine's own
//! PostgreSQL binaries, so one machine needs no configuration.
//!
//! The cluster lives in one directory (`<MESHPLOY_HOME>/postgres`): the data directory, the
//! server log and the unix socket. It listens on no TCP port. `initdb` and `postgres` refuse
//! to run as root, so when we are root the server runs as the unprivileged `postgres` user
//! (or `nobody`) and owns the directory. Starting is idempotent and serialised by a file lock,
//! so concurrent commands that all need the database start it once.
//!
//! Every connection authenticates with a password (SCRAM): a random one made with the
//! cluster, kept in `password` (and, for libpq's tools, `pgpass`) in the cluster's own
//! directory with mode 0600. Reaching the socket is not enough, since a process of the same
//! user (a replica of a service, when Meshploy does not run as root) may reach it. A cluster
//! made by an older release, which trusted its socket, is moved to passwords on its next start.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sqlx::postgres::PgConnectOptions;

/// The port number only names the socket file (`.s.PGSQL.5432`); no TCP port is opened.
const PORT: u16 = 5432;
/// The line that opens Meshploy's settings in `postgresql.conf`; a data directory without it
/// was not finished.
const SETTINGS_MARKER: &str = "# Meshploy";

/// The database superuser that `initdb` creates.
const SUPERUSER: &str = "postgres";
/// Longest unix socket path Linux accepts (`sun_path` is 108 bytes with its terminator).
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "no PostgreSQL server binaries found (looked for `initdb` and `pg_ctl` on PATH and under /usr/lib/postgresql/*/bin); install them (Debian/Ubuntu: `apt-get install postgresql`), set MESHPLOY_POSTGRES_BIN to their directory, or give --database-url"
    )]
    NoBinaries,
    #[error(
        "running as root, but there is no unprivileged user to run PostgreSQL as (PostgreSQL refuses root); create the `postgres` user or run meshploy as a normal user"
    )]
    NoServerUser,
    #[error(
        "the PostgreSQL server runs as user `{user}` (PostgreSQL refuses root) and cannot enter {path}; set MESHPLOY_HOME to a directory it can reach, such as /var/lib/meshploy"
    )]
    Unreachable { user: String, path: PathBuf },
    #[error(
        "the socket path {path}/.s.PGSQL.5432 is longer than the {MAX_SOCKET_PATH} bytes unix sockets allow; set MESHPLOY_HOME to a shorter path"
    )]
    SocketPathTooLong { path: PathBuf },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("cannot use {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What `status` finds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    NotCreated,
    Stopped,
    Running,
}

/// A private PostgreSQL cluster in one directory.
#[derive(Clone, Debug)]
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    /// The user the server runs as when it cannot be us (we are root): name, uid, gid.
    server_user: Option<(String, u32, u32)>,
    /// Whether the server syncs to disk. Test clusters turn this off for speed.
    durable: bool,
}

impl Cluster {
    /// A cluster in `dir` (created on first start), using the binaries found on this machine.
    pub fn new(dir: &Path) -> Result<Cluster, ClusterError> {
        let bin = find_binaries().ok_or(ClusterError::NoBinaries)?;
        let server_user = if running_as_root() {
            Some(unprivileged_user().ok_or(ClusterError::NoServerUser)?)
        } else {
            None
        };
        let socket = dir.join(".s.PGSQL.5432");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(ClusterError::SocketPathTooLong {
                path: dir.to_owned(),
            });
        }
        Ok(Cluster {
            dir: dir.to_owned(),
            bin,
            server_user,
            durable: true,
        })
    }

    /// Turns off fsync: faster, and safe only for throwaway clusters such as tests'.
    pub fn not_durable(mut self) -> Cluster {
        self.durable = false;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A PostgreSQL program from the same installation (`psql`, `pg_dump`, ...).
    pub fn program(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// The data directory; its `postmaster.pid` names the running server.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// Connection options for `database` over the cluster's socket.
    pub fn connect_options(&self, database: &str) -> Result<PgConnectOptions, ClusterError> {
        Ok(PgConnectOptions::new_without_pgpass()
            .socket(&self.dir)
            .port(PORT)
            .username(SUPERUSER)
            .password(&self.password()?)
            .database(database))
    }

    /// A libpq connection string for `database`, for `psql` and `pg_dump`; the password
    /// comes from the cluster's `pgpass` file, not the command line.
    pub fn conninfo(&self, database: &str) -> String {
        format!(
            "host={} port={PORT} user={SUPERUSER} dbname={database} passfile={}",
            self.dir.display(),
            self.dir.join("pgpass").display()
        )
    }

    /// A `postgres://` URL for `database` over the cluster's socket, password included: for
    /// `DATABASE_URL` in tests and benchmarks.
    pub fn url(&self, database: &str) -> Result<String, ClusterError> {
        Ok(format!(
            "postgres://{SUPERUSER}:{}@localhost/{database}?host={}",
            self.password()?,
            self.dir.display()
        ))
    }

    /// The password of every role Meshploy makes in this cluster, from its file.
    pub fn password(&self) -> Result<String, ClusterError> {
        let path = self.dir.join("password");
        fs::read_to_string(&path)
            .map(|p| p.trim().to_owned())
            .map_err(|source| io(&path, source))
    }

    pub fn status(&self) -> Result<Status, ClusterError> {
        if !self.data().join("PG_VERSION").exists() || !self.configured()? {
            return Ok(Status::NotCreated);
        }
        let output = self.run("pg_ctl status", self.pg_ctl().arg("status"))?;
        // pg_ctl status exits 0 when running and 3 when not.
        Ok(if output.status.success() {
            Status::Running
        } else {
            Status::Stopped
        })
    }

    /// Creates the cluster if needed and starts it if it is not running. Returns whether it
    /// had to be started.
    pub fn start(&self) -> Result<bool, ClusterError> {
        self.create_dir()?;
        let lock_path = self.dir.join("start.lock");
        let lock = File::create(&lock_path).map_err(|source| io(&lock_path, source))?;
        lock.lock().map_err(|source| io(&lock_path, source))?;
        let started = match self.status()? {
            Status::Running => false,
            Status::NotCreated => {
                self.init()?;
                self.start_server()?;
                true
            }
            Status::Stopped => {
                self.start_server()?;
                true
            }
        };
        self.require_passwords()?;
        // Dropping the file releases the lock.
        drop(lock);
        Ok(started)
    }

    /// Stops the server (fast shutdown: open transactions roll back). Returns whether it was
    /// running.
    pub fn stop(&self) -> Result<bool, ClusterError> {
        if self.status()? != Status::Running {
            return Ok(false);
        }
        let mut command = self.pg_ctl();
        command.args(["stop", "-m", "fast", "-w"]);
        self.check("pg_ctl stop", &mut command)?;
        Ok(true)
    }

    fn create_dir(&self) -> Result<(), ClusterError> {
        if !self.dir.exists() {
            // Parents get the usual modes; only the cluster's own directory is private.
            if let Some(parent) = self.dir.parent() {
                fs::create_dir_all(parent).map_err(|source| io(parent, source))?;
            }
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&self.dir)
                .map_err(|source| io(&self.dir, source))?;
        }
        if let Some((user, uid, gid)) = &self.server_user {
            std::os::unix::fs::chown(&self.dir, Some(*uid), Some(*gid))
                .map_err(|source| io(&self.dir, source))?;
            if let Some(path) = unreachable_ancestor(&self.dir, *uid)? {
                return Err(ClusterError::Unreachable {
                    user: user.clone(),
                    path,
                });
            }
        }
        Ok(())
    }

    /// Whether the data directory carries Meshploy's settings. One without them was left by
    /// an `initdb` that was killed (or made by an older release before its settings were
    /// written): its defaults (TCP on localhost, a socket in a shared directory) are not ours.
    fn configured(&self) -> Result<bool, ClusterError> {
        let conf = self.data().join("postgresql.conf");
        match fs::read_to_string(&conf) {
            Ok(text) => Ok(text.contains(SETTINGS_MARKER)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(io(&conf, source)),
        }
    }

    /// Creates the cluster atomically: `initdb` into `data.new`, Meshploy's settings written
    /// there, then a rename to `data`. A kill at any point leaves either no `data` or a
    /// finished one; a leftover `data.new` is removed, and a `data` without the settings is
    /// moved aside to `data.incomplete` (never deleted) and made again.
    fn init(&self) -> Result<(), ClusterError> {
        let data = self.data();
        let fresh = self.dir.join("data.new");
        if fresh.exists() {
            fs::remove_dir_all(&fresh).map_err(|source| io(&fresh, source))?;
        }
        if data.exists() {
            let aside = self.dir.join("data.incomplete");
            if aside.exists() {
                fs::remove_dir_all(&aside).map_err(|source| io(&aside, source))?;
            }
            tracing::warn!(
                path = %data.display(),
                "the embedded PostgreSQL data directory was never finished (an interrupted first start?); moved it to data.incomplete and creating it again"
            );
            fs::rename(&data, &aside).map_err(|source| io(&data, source))?;
        }
        let password = self.password_files()?;
        let mut command = self.command("initdb");
        command
            .arg("-D")
            .arg(&fresh)
            .arg("--pwfile")
            .arg(&password)
            .args([
                "--username",
                SUPERUSER,
                "--auth-local=scram-sha-256",
                "--auth-host=reject",
                "--encoding=UTF8",
                "--no-locale",
            ]);
        if !self.durable {
            command.arg("--no-sync");
        }
        self.check("initdb", &mut command)?;
        let hba = fresh.join("pg_hba.conf");
        fs::write(&hba, HBA).map_err(|source| io(&hba, source))?;
        // Settings go into the configuration file rather than onto the command line, so a
        // server started by hand with `pg_ctl -D` behaves the same.
        let mut settings = format!(
            "\n{SETTINGS_MARKER}: unix socket only, in the cluster's own directory.\nlisten_addresses = ''\nport = {PORT}\nunix_socket_directories = '{}'\nunix_socket_permissions = 0700\n",
            self.dir.display().to_string().replace('\'', "''")
        );
        if !self.durable {
            settings.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        let conf = fresh.join("postgresql.conf");
        OpenOptions::new()
            .append(true)
            .open(&conf)
            .and_then(|mut file| {
                file.write_all(settings.as_bytes())?;
                file.sync_all()
            })
            .map_err(|source| io(&conf, source))?;
        fs::rename(&fresh, &data).map_err(|source| io(&fresh, source))
    }

    /// Makes the password files if there are none: the password (read by `initdb --pwfile`
    /// and by Meshploy) and a libpq `pgpass`, both 0600 and owned by the server's user.
    /// Returns the password file's path.
    fn password_files(&self) -> Result<PathBuf, ClusterError> {
        let path = self.dir.join("password");
        if !path.exists() {
            let password = crate::secrets::generate_key();
            let pgpass = self.dir.join("pgpass");
            for (file, text) in [
                (&pgpass, format!("*:*:*:*:{password}\n")),
                (&path, format!("{password}\n")),
            ] {
                let written = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(file)
                    .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()));
                written.map_err(|source| io(file, source))?;
                if let Some((_, uid, gid)) = &self.server_user {
                    std::os::unix::fs::chown(file, Some(*uid), Some(*gid))
                        .map_err(|source| io(file, source))?;
                }
            }
        }
        Ok(path)
    }

    /// Moves a running cluster that still trusts its socket (made by an older release) to
    /// passwords: the superuser gets the password over the trusted socket, then the
    /// authentication file is replaced and the server reloads it.
    fn require_passwords(&self) -> Result<(), ClusterError> {
        let hba = self.data().join("pg_hba.conf");
        let current = fs::read_to_string(&hba).map_err(|source| io(&hba, source))?;
        // A file that begins as Meshploy's does is Meshploy's; any other still trusts the
        // socket and is replaced.
        if HBA
            .lines()
            .next()
            .is_some_and(|marker| current.starts_with(marker))
        {
            return Ok(());
        }
        self.password_files()?;
        let mut psql = self.command("psql");
        psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .arg(format!(
                "host={} port={PORT} user={SUPERUSER} dbname=postgres",
                self.dir.display()
            ))
            .stdin(Stdio::piped());
        let mut child = psql.spawn().map_err(|e| ClusterError::Command {
            what: "psql".into(),
            detail: e.to_string(),
        })?;
        // The password goes on standard input, never on a command line.
        let sql = format!("ALTER ROLE {SUPERUSER} PASSWORD '{}';\n", self.password()?);
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(sql.as_bytes())
                .map_err(|source| io(&hba, source))?;
        }
        let output = child
            .wait_with_output()
            .map_err(|e| ClusterError::Command {
                what: "psql".into(),
                detail: e.to_string(),
            })?;
        if !output.status.success() {
            return Err(ClusterError::Command {
                what: "setting the superuser's password".into(),
                detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        fs::write(&hba, HBA).map_err(|source| io(&hba, source))?;
        self.check("pg_ctl reload", self.pg_ctl().arg("reload"))
            .map(drop)
    }

    fn start_server(&self) -> Result<(), ClusterError> {
        let mut command = self.pg_ctl();
        command
            .arg("-l")
            .arg(self.log_file())
            .args(["-w", "-t", "60", "start"]);
        // Its own process group: a Ctrl-C aimed at this command must not stop the server.
        command.process_group(0);
        self.check("starting PostgreSQL", &mut command)
            .map(drop)
            .map_err(|e| {
                let log = fs::read_to_string(self.log_file()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                match e {
                    ClusterError::Command { what, detail } if !tail.is_empty() => {
                        let tail: Vec<&str> = tail.into_iter().rev().collect();
                        ClusterError::Command {
                            what,
                            detail: format!("{detail}; server log:\n{}", tail.join("\n")),
                        }
                    }
                    other => other,
                }
            })
    }

    fn pg_ctl(&self) -> Command {
        let mut command = self.command("pg_ctl");
        command.arg("-D").arg(self.data());
        command
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.program(program));
        // The server lives on in its own process with the environment it was started with:
        // Meshploy's keys, tokens and database URL must not be part of it.
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_clear();
        for name in ["PATH", "LANG", "LC_ALL", "TZ"] {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        if let Some((_, uid, gid)) = &self.server_user {
            // std drops root's supplementary groups when it changes the uid.
            command.uid(*uid).gid(*gid);
            // The server user may not be able to enter our working directory.
            command.current_dir(&self.dir);
        }
        command
    }

    fn run(&self, what: &str, command: &mut Command) -> Result<Output, ClusterError> {
        command.output().map_err(|e| ClusterError::Command {
            what: what.to_owned(),
            detail: e.to_string(),
        })
    }

    fn check(&self, what: &str, command: &mut Command) -> Result<Output, ClusterError> {
        let output = self.run(what, command)?;
        if output.status.success() {
            return Ok(output);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        Err(ClusterError::Command {
            what: what.to_owned(),
            detail: format!("{} {}", stderr.trim(), stdout.trim())
                .trim()
                .to_owned(),
        })
    }
}

/// Client authentication: the socket only, and only with a password.
const HBA: &str = "# Meshploy: every connection gives the cluster's password.\n\
# TYPE  DATABASE  USER  METHOD\n\
local   all       all   scram-sha-256\n";

fn io(path: &Path, source: std::io::Error) -> ClusterError {
    ClusterError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The directory holding `initdb` and `pg_ctl`: `MESHPLOY_POSTGRES_BIN`, then PATH, then the
/// newest `/usr/lib/postgresql/<version>/bin` (Debian and Ubuntu keep them there).
fn find_binaries() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("MESHPLOY_POSTGRES_BIN") {
        return Some(PathBuf::from(dir)).filter(|d| has_both(d));
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(dir) = on_path.into_iter().find(|d| has_both(d)) {
        // PATH may hold symbolic links to the real installation (/usr/local/bin/initdb ->
        // /usr/lib/postgresql/15/bin/initdb); its other programs live beside the target.
        let real = fs::canonicalize(dir.join("initdb")).ok();
        return real
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .or(Some(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_both(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

/// Whether our effective uid is root, read without `unsafe`: `/proc/self` belongs to it.
pub fn running_as_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `postgres` if that user exists, else `nobody`, from `/etc/passwd`.
fn unprivileged_user() -> Option<(String, u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    let users: Vec<(String, u32, u32)> = passwd
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.as_slice() {
                [name, _, uid, gid, ..] => {
                    Some((name.to_string(), uid.parse().ok()?, gid.parse().ok()?))
                }
                _ => None,
            }
        })
        .collect();
    ["postgres", "nobody"]
        .into_iter()
        .find_map(|wanted| {
            users
                .iter()
                .find(|(name, uid, _)| name == wanted && *uid != 0)
        })
        .cloned()
}

/// The first ancestor of `dir` that `uid` cannot traverse, judging by its mode bits.
fn unreachable_ancestor(dir: &Path, uid: u32) -> Result<Option<PathBuf>, ClusterError> {
    for ancestor in dir.ancestors().skip(1) {
        let meta = fs::metadata(ancestor).map_err(|source| io(ancestor, source))?;
        let mode = meta.permissions().mode();
        let can_enter = if meta.uid() == uid {
            mode & 0o100 != 0
        } else {
            mode & 0o001 != 0
        };
        if !can_enter {
            return Ok(Some(ancestor.to_owned()));
        }
    }
    Ok(None)
}
