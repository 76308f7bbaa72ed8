//! Fixtures every module shares: manifests, a pushed repository, and running processes.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::util::{Remote, wait_for};

/// The `shop` project.
pub const PROJECT: &str = "apiVersion: meshploy.dev/v1\nkind: Project\nmetadata:\n  name: shop\n";

/// A service of project `shop` running an image on port 8080.
pub fn service(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: meshploy.dev/v1\nkind: Service\nmetadata:\n  name: {name}\n  project: shop\nspec:\n  image: registry.example.com/{name}:1\n  port: 8080\n  replicas: {replicas}\n"
    )
}

/// A route of project `shop` on `shop.example.com` to `service`'s port 8080.
pub fn route(name: &str, path: &str, service: &str) -> String {
    format!(
        "apiVersion: meshploy.dev/v1\nkind: Route\nmetadata:\n  name: {name}\n  project: shop\nspec:\n  host: shop.example.com\n  path: {path}\n  service: {service}\n  port: 8080\n"
    )
}

/// A pushed remote whose `deploy/` holds a project, services `a`..`c` and a route: five
/// resources, with the commit id. READMEs at the root and in `deploy/` are not manifests; the
/// one in `deploy/` keeps the directory in git when every manifest is deleted.
pub fn shop_remote() -> (Remote, String) {
    let remote = Remote::new();
    remote.write("deploy/project.yaml", PROJECT);
    for name in ["a", "b", "c"] {
        remote.write(&format!("deploy/{name}.yaml"), &service(name, 1));
    }
    remote.write("deploy/route.yaml", &route("main", "/", "a"));
    remote.write("README.md", "not a manifest\n");
    remote.write("deploy/README.md", "The shop's manifests.\n");
    let commit = remote.push("shop");
    (remote, commit)
}

/// A child process that is killed (SIGKILL) and reaped when dropped: the one guard for every
/// process a test starts.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// Whether the child leads its own process group, all of which goes with it.
    group: bool,
}

impl Process {
    pub fn spawn(command: &mut Command) -> Process {
        Process {
            child: command.spawn().expect("start a process"),
            group: false,
        }
    }

    /// Starts `command` in a process group of its own, killed whole when dropped: for a
    /// program that starts others (ChromeDriver starts Chromium and its helpers), so that a
    /// failing test leaves none of them behind.
    pub fn spawn_group(command: &mut Command) -> Process {
        use std::os::unix::process::CommandExt;
        Process {
            child: command.process_group(0).spawn().expect("start a process"),
            group: true,
        }
    }

    /// Starts `command`, which binds its listeners to port 0 and announces them on standard
    /// error, and returns it with every `http://ADDRESS` on the first line that contains
    /// `announcement`. Binding port 0 leaves no window in which another process could take the
    /// port. The rest of its standard error goes on to the test's, so failures stay readable.
    pub fn announced(command: &mut Command, announcement: &str) -> (Process, Vec<SocketAddr>) {
        let mut process = Process::spawn(command.stderr(Stdio::piped()));
        let stderr = process.child.stderr.take().expect("piped standard error");
        let mut lines = BufReader::new(stderr).lines();
        let line = loop {
            match lines.next() {
                Some(Ok(line)) if line.contains(announcement) => break line,
                Some(Ok(line)) => eprintln!("{line}"),
                _ => panic!(
                    "the process exited before announcing `{announcement}`: {:?}",
                    process.child.wait()
                ),
            }
        };
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                eprintln!("{line}");
            }
        });
        let addresses = line
            .split("http://")
            .skip(1)
            .filter_map(|rest| {
                let end = rest
                    .find(|c: char| c == ',' || c == ';' || c.is_whitespace())
                    .unwrap_or(rest.len());
                rest[..end].parse().ok()
            })
            .collect();
        (process, addresses)
    }

    /// The lines of its piped standard output, as they come.
    pub fn stdout_lines(&mut self) -> std::sync::mpsc::Receiver<String> {
        lines(self.child.stdout.take().expect("piped standard output"))
    }

    /// The lines of its piped standard error, as they come.
    pub fn stderr_lines(&mut self) -> std::sync::mpsc::Receiver<String> {
        lines(self.child.stderr.take().expect("piped standard error"))
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// The exit code and standard error (when piped) of a process that has exited.
    pub fn finished(&mut self) -> (i32, String) {
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        let code = self.child.wait().map_or(-1, |s| s.code().unwrap_or(-1));
        (code, stderr)
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        Command::new("kill")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        self.child.wait().expect("wait for the process")
    }
}

/// The lines read from `pipe` by a thread of their own, as they come.
fn lines(pipe: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (send, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.group {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new login role holding `meshploy_proxy`, as the proxy's would: roles belong to the
/// whole test cluster, so each name is unique in it.
pub fn proxy_login(db: &crate::util::Db) -> String {
    static ROLES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = ROLES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let role = format!("proxy_{}_{n}", std::process::id());
    db.psql(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD '{}' IN ROLE meshploy_proxy",
        db.password()
    ));
    role
}

/// Waits until something accepts connections on loopback `port`.
pub fn listening(port: u16, timeout: Duration) -> bool {
    wait_for(timeout, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .is_some()
}
