//! Measures pull-request reviews end to end: from a signed `pull_request` webhook to the plan
//! comment posted on the forge, p50 and p95 over 20 pushes to one pull request of a
//! 1,000-resource repository.
//!
//! ```text
//! cargo run --release --example bench_pulls [-- --resources 1000 --pushes 20 --previews 1]
//! ```
//!
//! With `--previews 1` the source has previews on (`runtime none`: applied, not run), so each
//! review also applies the pull request's copy of the repository before the comment. Its
//! template is `pr-{number}-{host}`: the generated projects route wildcard hosts, and
//! `pr-1.p00000.example.com` would fall inside `*.p00000.example.com`, which the live source
//! serves (the preview is then refused as a conflict, as it should be).
//!
//! The release `meshploy serve` follows a generated repository (a bare repository read over
//! file://, so each review fetches `refs/pull/1/head` as it would from a forge) and reviews
//! pull requests against an in-process fake forge (axum on loopback) that notes when a comment
//! naming each head arrives. Each push changes one service, pushes the commit to
//! `refs/pull/1/head`, and sends `synchronize`.

#[allow(dead_code)]
#[path = "support/generate.rs"]
mod generate;
#[allow(dead_code)]
#[path = "support/git_cli.rs"]
mod git_cli;
#[allow(dead_code)]
#[path = "support/measure.rs"]
mod measure;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::routing::{get, patch, post};
use git_cli::git;
use hmac::{Hmac, KeyInit, Mac};
use reconciler::postgres::Cluster;
use serde_json::{Value, json};

const SECRET: &str = "bench-webhook-secret";

fn main() -> ExitCode {
    measure::exit(run())
}

fn run() -> Result<(), String> {
    let (mut resources, mut pushes, mut previews) = (1_000, 20, 0);
    measure::numbers(
        "bench_pulls [--resources N] [--pushes N] [--previews 0|1]",
        &mut [
            ("--resources", &mut resources),
            ("--pushes", &mut pushes),
            ("--previews", &mut previews),
        ],
    )?;
    let previews = previews > 0;
    measure::with_cluster(|binary, cluster, root| {
        let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        runtime.block_on(bench(binary, cluster, root, (resources, pushes), previews))
    })
}

/// The fake forge: comment bodies by id, when a comment naming each head arrived, and the
/// pull request's head (the forge is asked for it before each review).
#[derive(Default)]
struct Forge {
    comments: Vec<(u64, String)>,
    arrived: Vec<(String, Instant)>,
    head: String,
}

/// The user the fake forge's token belongs to, who writes the comments.
const BOT: &str = "bench-bot";

type Shared = Arc<Mutex<Forge>>;

fn note(forge: &Shared, body: &str) {
    if let Some(head) = body
        .lines()
        .next()
        .and_then(|l| l.split(" head=").nth(1))
        .and_then(|h| h.split(' ').next())
    {
        let mut forge = forge.lock().unwrap_or_else(|e| e.into_inner());
        forge.arrived.push((head.to_owned(), Instant::now()));
    }
}

async fn fake_forge(forge: Shared) -> Result<String, String> {
    let app = axum::Router::new()
        .route(
            "/repos/{owner}/{name}/issues/{number}/comments",
            get(|State(f): State<Shared>| async move {
                let f = f.lock().unwrap_or_else(|e| e.into_inner());
                let all: Vec<Value> = f
                    .comments
                    .iter()
                    .map(|(id, body)| json!({"id": id, "body": body, "user": {"login": BOT}}))
                    .collect();
                Json(all)
            })
            .post(
                |State(f): State<Shared>, Json(request): Json<Value>| async move {
                    let body = request["body"].as_str().unwrap_or_default().to_owned();
                    let id = {
                        let mut forge = f.lock().unwrap_or_else(|e| e.into_inner());
                        let id = forge.comments.len() as u64 + 1;
                        forge.comments.push((id, body.clone()));
                        id
                    };
                    note(&f, &body);
                    Json(json!({"id": id, "body": body}))
                },
            ),
        )
        .route(
            "/repos/{owner}/{name}/issues/comments/{id}",
            patch(
                |State(f): State<Shared>,
                 Path((_, _, id)): Path<(String, String, u64)>,
                 Json(request): Json<Value>| async move {
                    let body = request["body"].as_str().unwrap_or_default().to_owned();
                    {
                        let mut forge = f.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(c) = forge.comments.iter_mut().find(|(c, _)| *c == id) {
                            c.1 = body.clone();
                        }
                    }
                    note(&f, &body);
                    Json(json!({"id": id}))
                },
            ),
        )
        .route(
            "/repos/{owner}/{name}/statuses/{sha}",
            post(|Json(request): Json<Value>| async move { Json(request) }),
        )
        .route(
            "/repos/{owner}/{name}/pulls/{number}",
            get(|State(f): State<Shared>| async move {
                let head = f.lock().unwrap_or_else(|e| e.into_inner()).head.clone();
                Json(json!({
                    "state": "open",
                    "head": {"sha": head, "repo": {"full_name": "acme/deploy"}},
                    "user": {"login": "alice"},
                    "author_association": "MEMBER",
                    "labels": [],
                }))
            }),
        )
        .route("/user", get(|| async { Json(json!({"login": BOT})) }))
        .with_state(forge);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{address}"))
}

async fn bench(
    binary: &std::path::Path,
    cluster: &Cluster,
    root: &std::path::Path,
    (resources, pushes): (usize, usize),
    previews: bool,
) -> Result<(), String> {
    let url = cluster.url("postgres").map_err(|e| e.to_string())?;
    // The manifests in a work tree, pushed to a bare repository that serve reads.
    let work = root.join("work");
    let written =
        generate::write_repo(&work.join("deploy"), resources).map_err(|e| e.to_string())?;
    git(&work, &["init", "-q", "-b", "main"])?;
    git(&work, &["add", "-A"])?;
    git(&work, &["commit", "-q", "-m", "the platform"])?;
    let bare = root.join("deploy.git");
    git(root, &["clone", "-q", "--bare", "work", "deploy.git"])?;
    git(
        &work,
        &["remote", "add", "origin", &bare.display().to_string()],
    )?;
    let forge: Shared = Arc::default();
    let api = fake_forge(forge.clone()).await?;
    let repo_url = format!("file://{}", bare.display());
    let config = root.join("sources.yaml");
    std::fs::write(
        &config,
        format!(
            "sources:\n  - name: bench\n    url: {repo_url}\n    path: deploy\n    pollInterval: 1h\n    forge:\n      kind: github\n      api: {api}\n      tokenEnv: BENCH_FORGE_TOKEN\n    previews:\n      enabled: {previews}\n      host: pr-{{number}}-{{host}}\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut serve = Command::new(binary)
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--webhook-secret", SECRET])
        .env("DATABASE_URL", &url)
        .env("MESHPLOY_HOME", root.join("home"))
        .env("BENCH_FORGE_TOKEN", "bench-token")
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let result = measure_pushes(&mut serve, &url, &work, &repo_url, &forge, written, pushes).await;
    if previews && result.is_ok() {
        let pool = sqlx::PgPool::connect(&url)
            .await
            .map_err(|e| e.to_string())?;
        let copied: i64 =
            sqlx::query_scalar("SELECT count(*) FROM services WHERE source = 'bench#pr-1'")
                .fetch_one(&pool)
                .await
                .map_err(|e| e.to_string())?;
        if copied == 0 {
            let comment = forge
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .comments
                .last()
                .map(|(_, body)| body.clone())
                .unwrap_or_default();
            let said = comment
                .split("#### Preview")
                .nth(1)
                .unwrap_or("no preview section");
            return Err(format!("previews on, but there is no preview: {said}"));
        }
        println!("previews on: the preview holds {copied} services");
    }
    let _ = serve.kill();
    let _ = serve.wait();
    result
}

async fn measure_pushes(
    serve: &mut std::process::Child,
    url: &str,
    work: &std::path::Path,
    repo_url: &str,
    forge: &Shared,
    written: usize,
    pushes: usize,
) -> Result<(), String> {
    let stderr = serve.stderr.take().ok_or("no standard error")?;
    let mut lines = BufReader::new(stderr).lines();
    let port = loop {
        let line = lines
            .next()
            .ok_or("serve exited before listening")?
            .map_err(|e| e.to_string())?;
        if let Some(rest) = line.split("http://").nth(1) {
            let address = rest.split([',', ' ']).next().unwrap_or_default();
            break address
                .rsplit(':')
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .ok_or("no port announced")?;
        }
    };
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    // Wait until main is applied, so that reviews plan against a full live state.
    let pool = sqlx::PgPool::connect(url)
        .await
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    loop {
        let applied: Option<String> =
            sqlx::query_scalar("SELECT last_applied_commit FROM sources WHERE name = 'bench'")
                .fetch_optional(&pool)
                .await
                .map_err(|e| e.to_string())?
                .flatten();
        if applied.is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err("main was not applied within 2 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut times = Vec::new();
    let file = work.join("deploy/p00000/services.yaml");
    let original = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
    for push in 0..pushes {
        // Each push gives the first service another replica count.
        let changed =
            original.replacen("  replicas: 1\n", &format!("  replicas: {}\n", push + 2), 1);
        std::fs::write(&file, changed).map_err(|e| e.to_string())?;
        git(work, &["commit", "-q", "-am", &format!("push {push}")])?;
        let head = git(work, &["rev-parse", "HEAD"])?;
        git(
            work,
            &["push", "-q", "-f", "origin", "HEAD:refs/pull/1/head"],
        )?;
        head.clone_into(&mut forge.lock().unwrap_or_else(|e| e.into_inner()).head);
        let body = json!({
            "action": if push == 0 { "opened" } else { "synchronize" },
            "number": 1,
            "pull_request": {"number": 1, "head": {"sha": head, "repo": {"full_name": "acme/deploy"}}, "base": {"ref": "main"}},
            "repository": {"full_name": "acme/deploy", "clone_url": repo_url},
        })
        .to_string();
        let sent = Instant::now();
        let status = webhook(port, &body, &format!("bench-{push}"))?;
        if status != 202 {
            return Err(format!("the webhook answered {status}"));
        }
        let arrived = loop {
            let found = forge
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .arrived
                .iter()
                .find(|(h, _)| *h == head)
                .map(|(_, at)| *at);
            if let Some(at) = found {
                break at;
            }
            if sent.elapsed() > Duration::from_secs(60) {
                return Err(format!("no comment for push {push} within a minute"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        times.push(arrived - sent);
    }
    times.sort();
    let at = |p: usize| times[((times.len() - 1) * p).div_ceil(100)].as_secs_f64() * 1000.0;
    println!(
        "{written} resources; {pushes} pushes to one pull request; signed webhook to plan comment posted:"
    );
    println!(
        "  p50 {:.0} ms   p95 {:.0} ms   max {:.0} ms",
        at(50),
        at(95),
        times.last().map_or(0.0, |t| t.as_secs_f64() * 1000.0)
    );
    println!("target: p50 under 1 s");
    Ok(())
}

/// Sends a signed `pull_request` webhook over plain HTTP/1.1; returns the status code.
fn webhook(port: u16, body: &str, delivery: &str) -> Result<u16, String> {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes())
        .map_err(|e| e.to_string())?;
    mac.update(body.as_bytes());
    let signature: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    let request = format!(
        "POST /api/v1/webhooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nX-GitHub-Event: pull_request\r\n\
         X-GitHub-Delivery: {delivery}\r\nX-Hub-Signature-256: sha256={signature}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {response:?}"))
}
