//! Measures the runtime behind `meshploy up`:
//!
//! 1. edit to serving: from a manifest edit (an env value) to the new release answering
//!    through the proxy, p50 and p95 over 20 edits, for a service whose build is cached (the
//!    edit changes no build setting) and whose health check answers at once;
//! 2. convergence: 50 services × 2 replicas from nothing (one shared build of a small Rust
//!    server, then 100 processes) until every route answers through the proxy, and again
//!    after a restart of `up` (builds cached); with `up`'s own peak memory (VmHWM), its
//!    children not counted.
//!
//! ```text
//! cargo run --release --example bench_runtime [-- --edits 20 --services 50]
//! ```

#[allow(dead_code)]
#[path = "support/git_cli.rs"]
mod git_cli;
#[allow(dead_code)]
#[path = "support/measure.rs"]
mod measure;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use git_cli::git;
use reconciler::postgres::Cluster;

fn main() -> ExitCode {
    measure::exit(run())
}

fn run() -> Result<(), String> {
    let (mut edits, mut services) = (20, 50);
    measure::numbers(
        "bench_runtime [--edits N] [--services N]",
        &mut [("--edits", &mut edits), ("--services", &mut services)],
    )?;
    measure::with_cluster(|binary, cluster, root| {
        let app = app_repository(root)?;
        edit_to_serving(binary, cluster, root, &app, edits)
            .and_then(|()| convergence(binary, cluster, root, &app, services))
    })
}

/// A repository holding the example's server (examples/local/app), committed on `main`.
fn app_repository(root: &Path) -> Result<std::path::PathBuf, String> {
    let repo = root.join("app");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/local/app");
    std::fs::create_dir_all(repo.join("src")).map_err(|e| e.to_string())?;
    for file in ["Cargo.toml", "src/main.rs"] {
        std::fs::copy(source.join(file), repo.join(file)).map_err(|e| e.to_string())?;
    }
    git(&repo, &["init", "-q", "-b", "main"])?;
    git(&repo, &["add", "-A"])?;
    git(&repo, &["commit", "-q", "-m", "app"])?;
    Ok(repo)
}

fn service(app: &Path, name: &str, greeting: &str) -> String {
    format!(
        "---\napiVersion: meshploy.dev/v1\nkind: Service\nmetadata:\n  name: {name}\n  project: bench\nspec:\n  \
         source:\n    git: {}\n    ref: main\n  build:\n    strategy: command\n    command: cargo build --release --quiet\n  \
         command: ./target/release/hello\n  replicas: 2\n  env:\n    GREETING: {greeting}\n  \
         healthCheck:\n    path: /healthz\n    periodSeconds: 1\n---\n\
         apiVersion: meshploy.dev/v1\nkind: Route\nmetadata:\n  name: {name}\n  project: bench\nspec:\n  host: {name}.test\n  service: {name}\n",
        app.display()
    )
}

const PROJECT: &str = "apiVersion: meshploy.dev/v1\nkind: Project\nmetadata:\n  name: bench\n";

/// `meshploy up DIR` against `database`; stopped with SIGTERM when dropped.
struct Up {
    child: Child,
    proxy: SocketAddr,
}

impl Up {
    fn start(binary: &Path, cluster: &Cluster, database: &str, dir: &Path) -> Result<Up, String> {
        let url = cluster.url(database).map_err(|e| e.to_string())?;
        let mut child = Command::new(binary)
            .args(["up", "."])
            .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
            .args(["--drain", "200ms"])
            .current_dir(dir)
            .env("DATABASE_URL", &url)
            .env("MESHPLOY_HOME", dir.join("home"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start meshploy up: {e}"))?;
        let stderr = child.stderr.take().ok_or("no standard error")?;
        let mut lines = BufReader::new(stderr).lines();
        let proxy = loop {
            let line = lines
                .next()
                .ok_or("meshploy up exited before announcing its proxy")?
                .map_err(|e| e.to_string())?;
            if let Some(rest) = line.split("proxy on http://").nth(1) {
                let address = rest.split(',').next().unwrap_or_default();
                break address.parse().map_err(|_| format!("odd line: {line}"))?;
            }
        };
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| eprintln!("{l}")));
        Ok(Up { child, proxy })
    }

    /// The body `host` answers with through the proxy, if it answers 200.
    fn get(&self, host: &str) -> Option<String> {
        let mut stream = std::net::TcpStream::connect(self.proxy).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        response
            .starts_with("HTTP/1.1 200")
            .then(|| response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
    }

    /// Peak resident memory of `up` itself, in MiB.
    fn peak_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches(" kB").parse::<f64>().ok())
            })
            .map_or(0.0, |kib| kib / 1024.0)
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn wait(timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<Duration, String> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready() {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!("not ready within {} s", timeout.as_secs()))
}

fn create_database(cluster: &Cluster, name: &str) -> Result<(), String> {
    let status = Command::new(cluster.program("psql"))
        .arg(cluster.conninfo("postgres"))
        .args(["-q", "-c", &format!("CREATE DATABASE {name}")])
        .status()
        .map_err(|e| e.to_string())?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("cannot create database {name}"))
}

fn edit_to_serving(
    binary: &Path,
    cluster: &Cluster,
    root: &Path,
    app: &Path,
    edits: usize,
) -> Result<(), String> {
    create_database(cluster, "edits")?;
    let dir = root.join("edits");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let write = |greeting: &str| {
        std::fs::write(
            dir.join("bench.yaml"),
            format!("{PROJECT}{}", service(app, "web", greeting)),
        )
        .map_err(|e| e.to_string())
    };
    write("v0")?;
    let up = Up::start(binary, cluster, "edits", &dir)?;
    let serving = |up: &Up, greeting: &str| {
        up.get("web.test")
            .is_some_and(|b| b.starts_with(&format!("{greeting} from")))
    };
    wait(Duration::from_secs(300), || serving(&up, "v0"))?;
    let mut times = Vec::new();
    for i in 1..=edits {
        let greeting = format!("v{i}");
        write(&greeting)?;
        times.push(wait(Duration::from_secs(120), || serving(&up, &greeting))?);
    }
    up.stop();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "edit to serving ({edits} env edits, 2 replicas, cached build): p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms (target p50 < 2000 ms)",
        ms(times[times.len() / 2]),
        ms(times[(times.len() * 95 / 100).min(times.len() - 1)]),
        ms(times[times.len() - 1]),
    );
    Ok(())
}

fn convergence(
    binary: &Path,
    cluster: &Cluster,
    root: &Path,
    app: &Path,
    services: usize,
) -> Result<(), String> {
    create_database(cluster, "converge")?;
    let dir = root.join("converge");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut text = PROJECT.to_owned();
    let names: Vec<String> = (0..services).map(|i| format!("s{i}")).collect();
    for name in &names {
        text.push_str(&service(app, name, "hi"));
    }
    std::fs::write(dir.join("bench.yaml"), text).map_err(|e| e.to_string())?;
    for run in [
        "from nothing (one shared build)",
        "after a restart (builds cached)",
    ] {
        let started = Instant::now();
        let up = Up::start(binary, cluster, "converge", &dir)?;
        let mut pending: Vec<&String> = names.iter().collect();
        wait(Duration::from_secs(600), || {
            pending.retain(|name| up.get(&format!("{name}.test")).is_none());
            pending.is_empty()
        })?;
        let took = started.elapsed();
        // Let the controller settle, then read its peak.
        std::thread::sleep(Duration::from_secs(2));
        println!(
            "{services} services × 2 replicas {run}: all serving in {:.1} s; meshploy up peak RSS {:.1} MiB (target < 60 MiB)",
            took.as_secs_f64(),
            up.peak_mib()
        );
        up.stop();
    }
    Ok(())
}
