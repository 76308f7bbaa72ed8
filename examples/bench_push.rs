//! Measures push-to-applied latency of `meshploy serve`: from `git push` returning to the
//! revision being committed in PostgreSQL, over 20 pushes to a 1,000-resource repository.
//!
//! ```text
//! cargo run --release --example bench_push [-- --resources 1000 --pushes 20 --idle-connections 20000]
//! ```
//!
//! Two triggers are measured, each with polling set to an hour so it cannot help:
//! - watch: `serve --repo <bare repository>` notices the ref change on disk;
//! - webhook: `serve --repo file://<bare repository>` (fetched into a cache, like a remote)
//!   is told by a signed GitHub push webhook sent right after the push returns, as GitHub
//!   would send it.
//!
//! The commit is observed through LISTEN on the channel every apply notifies at commit, and
//! checked against the revision row. Each push changes one project's description.
//!
//! With `--idle-connections N`, attacker processes (this program, `--attack`) keep N
//! connections to the API from 127.0.0.3, each sending half a request head and opening a new
//! one whenever the server closes it; every push is then also followed by a `GET /readyz`
//! from 127.0.0.2, whose status and latency are reported.

#[allow(dead_code)]
#[path = "support/generate.rs"]
mod generate;
#[allow(dead_code)]
#[path = "support/git_cli.rs"]
mod git_cli;
#[allow(dead_code)]
#[path = "support/measure.rs"]
mod measure;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use git_cli::git;
use hmac::{Hmac, KeyInit, Mac};
use reconciler::postgres::Cluster;
use sha2::Sha256;
use sqlx::postgres::PgListener;

const SECRET: &str = "bench-webhook-secret";

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = runtime
        .map_err(|e| e.to_string())
        .and_then(|r| match &args[..] {
            [mode, port, count] if mode == "--attack" => r.block_on(attack(port, count)),
            _ => r.block_on(run()),
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let mut resources = 1_000;
    let mut pushes = 20;
    let mut idle = 0;
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let number = |v: &str| v.parse().map_err(|_| format!("`{v}` is not a number"));
        match pair {
            [flag, value] if flag == "--resources" => resources = number(value)?,
            [flag, value] if flag == "--pushes" => pushes = number(value)?,
            [flag, value] if flag == "--idle-connections" => idle = number(value)?,
            _ => {
                return Err(
                    "usage: bench_push [--resources N] [--pushes K] [--idle-connections C]".into(),
                );
            }
        }
    }
    let binary = measure::build_binary()?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    // The server user must be able to enter it when this runs as root.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(|e| e.to_string())?;
    let cluster = Cluster::new(&dir.path().join("pg")).map_err(|e| e.to_string())?;
    cluster.start().map_err(|e| e.to_string())?;
    let mut result = Ok(());
    for trigger in [Trigger::Watch, Trigger::Webhook] {
        result = bench(
            &binary,
            &cluster,
            dir.path(),
            resources,
            pushes,
            idle,
            trigger,
        )
        .await;
        if result.is_err() {
            break;
        }
    }
    cluster.stop().map_err(|e| e.to_string())?;
    result?;
    println!(
        "target: p50 under 1 s, p95 under 2 s (Argo CD polls every 3 minutes by default, Flux every minute)"
    );
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Trigger {
    Watch,
    Webhook,
}

async fn bench(
    binary: &Path,
    cluster: &Cluster,
    root: &Path,
    resources: usize,
    pushes: usize,
    idle: usize,
    trigger: Trigger,
) -> Result<(), String> {
    let name = format!("{trigger:?}").to_lowercase();
    let database = format!("push_{name}");
    sql(cluster, "postgres", &format!("CREATE DATABASE {database}"))?;
    let url = cluster.url(&database).map_err(|e| e.to_string())?;
    let base = root.join(&name);
    std::fs::create_dir_all(&base).map_err(|e| e.to_string())?;
    git(&base, &["init", "-q", "--bare", "-b", "main", "bare.git"])?;
    git(&base, &["clone", "-q", "bare.git", "work"])?;
    let work = base.join("work");
    git(&work, &["checkout", "-q", "-b", "main"])?;
    let written =
        generate::write_repo(&work.join("deploy"), resources).map_err(|e| e.to_string())?;
    git(&work, &["add", "-A"])?;
    git(&work, &["commit", "-q", "-m", "initial"])?;
    git(&work, &["push", "-q", "origin", "main"])?;

    let mut listener = PgListener::connect(&url).await.map_err(|e| e.to_string())?;
    listener
        .listen("meshploy_revisions")
        .await
        .map_err(|e| e.to_string())?;
    let bare = base.join("bare.git");
    let repo = match trigger {
        Trigger::Watch => bare.display().to_string(),
        Trigger::Webhook => format!("file://{}", bare.display()),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let mut serve = Server(
        Command::new(binary)
            .args([
                "serve", "--repo", &repo, "--name", "shop", "--path", "deploy",
            ])
            .args(["--poll-interval", "1h", "--webhook-secret", SECRET])
            .arg(format!("--listen=127.0.0.1:{port}"))
            .env("DATABASE_URL", &url)
            .env("MESHPLOY_HOME", &base)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start meshploy serve: {e}"))?,
    );
    // The first sync applies everything.
    next_revision(&mut listener, Duration::from_secs(60)).await?;
    // Each attacker process stays well under this machine's open-file limit.
    let attackers: Vec<Server> = (0..idle.div_ceil(9_000))
        .map(|i| {
            let count = (idle - i * 9_000).min(9_000);
            std::env::current_exe()
                .and_then(|exe| {
                    Command::new(exe)
                        .args(["--attack", &port.to_string(), &count.to_string()])
                        .spawn()
                })
                .map(Server)
                .map_err(|e| format!("cannot start an attacker: {e}"))
        })
        .collect::<Result<_, _>>()?;
    if idle > 0 {
        // Let the attackers open their connections before the first push.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let mut readyz = Vec::new();

    let mut latencies = Vec::with_capacity(pushes);
    for i in 0..pushes {
        std::fs::write(
            work.join("deploy/p00000/project.yaml"),
            format!(
                "apiVersion: meshploy.dev/v1\nkind: Project\nmetadata:\n  name: p00000\nspec:\n  description: push {i}\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        git(&work, &["commit", "-q", "-a", "-m", &format!("push {i}")])?;
        let commit = git(&work, &["rev-parse", "HEAD"])?;
        git(&work, &["push", "-q", "origin", "main"])?;
        let pushed = Instant::now();
        if trigger == Trigger::Webhook {
            webhook(port, &repo, &format!("delivery-{i}"))?;
        }
        let revision = next_revision(&mut listener, Duration::from_secs(30)).await?;
        let latency = pushed.elapsed();
        let recorded = sql(
            cluster,
            &database,
            &format!("SELECT commit_id FROM revisions WHERE id = {revision}"),
        )?;
        if recorded != commit {
            return Err(format!(
                "revision {revision} records {recorded}, not {commit}"
            ));
        }
        latencies.push(latency);
        if idle > 0 {
            readyz.push(readyz_from([127, 0, 0, 2], port).await);
        }
        // A pause between pushes, as people push; back-to-back pushes would coalesce.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let files = std::fs::read_dir(format!("/proc/{}/fd", serve.0.id())).map_or(0, Iterator::count);
    drop(attackers);
    serve.stop();
    latencies.sort();
    let at = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    println!(
        "{name:>7} trigger, N = {written} resources, {pushes} pushes: p50 {} ms, p95 {} ms, max {} ms",
        at(0.50).as_millis(),
        at(0.95).as_millis(),
        at(1.0).as_millis()
    );
    if idle > 0 {
        let answered = readyz.iter().filter(|(status, _)| *status == 200).count();
        let mut times: Vec<Duration> = readyz.iter().map(|(_, t)| *t).collect();
        times.sort();
        println!(
            "{name:>7} trigger under {idle} idle connections: /readyz 200 for {answered} of {}, p50 {} ms, max {} ms; serve held {files} open files",
            readyz.len(),
            times[times.len() / 2].as_millis(),
            times.last().copied().unwrap_or_default().as_millis()
        );
    }
    Ok(())
}

/// `GET /readyz` from a loopback source address: the status (0 if there was no answer) and
/// how long it took.
async fn readyz_from(source: [u8; 4], port: u16) -> (u16, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let answer = async {
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        socket
            .bind((std::net::Ipv4Addr::from(source), 0).into())
            .ok()?;
        let mut stream = socket.connect(([127, 0, 0, 1], port).into()).await.ok()?;
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        response.split(' ').nth(1)?.parse().ok()
    };
    let status = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .ok()
        .flatten()
        .unwrap_or(0);
    (status, started.elapsed())
}

/// The attacker: `count` connections from 127.0.0.3, each sending half a request head and
/// waiting; whenever the server closes one, another is opened. Runs until killed.
async fn attack(port: &str, count: &str) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{port}` is not a port"))?;
    let count: usize = count
        .parse()
        .map_err(|_| format!("`{count}` is not a number"))?;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        tasks.spawn(async move {
            loop {
                let connected = async {
                    let socket = tokio::net::TcpSocket::new_v4().ok()?;
                    socket.bind(([127, 0, 0, 3], 0).into()).ok()?;
                    socket.connect(([127, 0, 0, 1], port).into()).await.ok()
                }
                .await;
                let Some(mut stream) = connected else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                if stream
                    .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
                    .await
                    .is_ok()
                {
                    let mut sink = [0u8; 64];
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Waits for the next committed revision and returns its id.
async fn next_revision(listener: &mut PgListener, timeout: Duration) -> Result<i64, String> {
    let notification = tokio::time::timeout(timeout, listener.recv())
        .await
        .map_err(|_| format!("no revision within {} s", timeout.as_secs()))?
        .map_err(|e| e.to_string())?;
    let payload: serde_json::Value =
        serde_json::from_str(notification.payload()).map_err(|e| e.to_string())?;
    payload["revision"]
        .as_i64()
        .ok_or_else(|| format!("no revision in {}", notification.payload()))
}

/// Sends a signed push event, as GitHub would.
fn webhook(port: u16, repo: &str, delivery: &str) -> Result<(), String> {
    let body = serde_json::json!({
        "ref": "refs/heads/main",
        "repository": { "full_name": "bench/shop", "clone_url": repo },
    })
    .to_string();
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).map_err(|e| e.to_string())?;
    mac.update(body.as_bytes());
    let signature: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let request = format!(
        "POST /api/v1/webhooks/github HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: {delivery}\r\nX-Hub-Signature-256: sha256={signature}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    if !response.starts_with("HTTP/1.1 202") {
        return Err(format!("the webhook was not accepted: {response}"));
    }
    Ok(())
}

/// `meshploy serve`, stopped with SIGTERM (graceful) when done, killed if dropped early.
struct Server(Child);

impl Server {
    fn stop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sql(cluster: &Cluster, database: &str, sql: &str) -> Result<String, String> {
    let output = Command::new(cluster.program("psql"))
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .arg(cluster.conninfo(database))
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!("psql: {}", String::from_utf8_lossy(&output.stderr)));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
