//! Measures the console and the API with 10,000 resources applied: server time, p50 and p99
//! over repeated requests on loopback, and the weight of each page.
//!
//! ```text
//! cargo run --release --example bench_console [-- --resources 10000 --requests 200]
//! ```
//!
//! It applies a generated repository with the release binary into a private PostgreSQL,
//! then changes 10% of it (a revision whose plan has about 1,000 changes), records a
//! deployment per service (one in ten failed) so the overview counts health, makes a read
//! token, and serves `api::app` (the API and the console, as `serve` and `up` do) on a
//! loopback port. The console is asked with a session cookie from its own login form, the
//! API with the bearer token.

#[allow(dead_code)]
#[path = "support/generate.rs"]
mod generate;
#[allow(dead_code)]
#[path = "support/measure.rs"]
mod measure;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use reconciler::postgres::Cluster;

fn main() -> ExitCode {
    measure::exit(run())
}

fn run() -> Result<(), String> {
    let (mut resources, mut requests) = (10_000, 200);
    measure::numbers(
        "bench_console [--resources N] [--requests N]",
        &mut [
            ("--resources", &mut resources),
            ("--requests", &mut requests),
        ],
    )?;
    measure::with_cluster(|binary, cluster, root| {
        bench(binary, cluster, root, resources, requests.max(1))
    })
}

fn bench(
    binary: &std::path::Path,
    cluster: &Cluster,
    root: &std::path::Path,
    resources: usize,
    requests: usize,
) -> Result<(), String> {
    let url = cluster.url("postgres").map_err(|e| e.to_string())?;
    let repo = root.join("repo");
    let written = generate::write_repo(&repo, resources).map_err(|e| e.to_string())?;
    let repo_arg = repo.to_str().ok_or("temporary path is not UTF-8")?;
    let meshploy = |args: &[&str]| measure::meshploy(binary, &url, args);
    meshploy(&["apply", repo_arg, "--auto-approve"])?;
    let changed = generate::change_percent(&repo, written, 10.0).map_err(|e| e.to_string())?;
    meshploy(&["apply", repo_arg, "--auto-approve"])?;
    let token = meshploy(&["token", "create", "--name", "bench", "--scope", "read"])?;
    let token = token.trim().to_owned();
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let pool = sqlx::PgPool::connect(&url)
            .await
            .map_err(|e| e.to_string())?;
        sqlx::query(
            "INSERT INTO deployments (project, service, release_digest, release, revision_id, \
               trigger, state, reason) \
             SELECT project, name, md5(project || name), '{}'::jsonb, revision_id, 'revision', \
               CASE WHEN hashtext(name || project) % 10 = 0 THEN 'failed' ELSE 'healthy' END, \
               CASE WHEN hashtext(name || project) % 10 = 0 THEN 'exited with code 1' END \
             FROM services",
        )
        .execute(&pool)
        .await
        .map_err(|e| e.to_string())?;
        let app = api::app(api::AppState {
            pool,
            sources: Arc::new(Vec::new()),
            webhook_secret: None,
            api_token_sha256: None,
            leading: Arc::new(AtomicBool::new(true)),
            anonymous_read: false,
            hosts: api::Hosts::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        let base = format!("http://{address}");
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        let login = client
            .post(format!("{base}/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            // A token is URL-safe base64 after its prefix: nothing to encode.
            .body(format!("token={token}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let cookie = login
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .ok_or("the login set no cookie")?
            .to_owned();
        let revision = "2";
        let pages: [(&str, String, bool); 6] = [
            ("console: overview", "/".into(), true),
            ("console: project page", "/projects/p00000".into(), true),
            ("console: service page", "/services/p00000/svc0".into(), true),
            (
                "console: revision (first 100 changes)",
                format!("/revisions/{revision}"),
                true,
            ),
            ("API: services list", "/api/v1/services".into(), false),
            (
                "API: revision (whole plan)",
                format!("/api/v1/revisions/{revision}"),
                false,
            ),
        ];
        println!(
            "{written} resources applied; revision {revision} changed {changed}; {requests} requests each after 10 to warm up"
        );
        println!(
            "  {:<38} {:>8} {:>8} {:>8} {:>10}",
            "", "p50 ms", "p99 ms", "max ms", "weight"
        );
        for (name, path, console) in pages {
            let mut times = Vec::with_capacity(requests);
            let mut weight = 0;
            for i in 0..requests + 10 {
                let request = client.get(format!("{base}{path}"));
                let request = if console {
                    request.header("cookie", &cookie)
                } else {
                    request.bearer_auth(&token)
                };
                let started = Instant::now();
                let response = request.send().await.map_err(|e| e.to_string())?;
                let status = response.status();
                let body = response.bytes().await.map_err(|e| e.to_string())?;
                let took = started.elapsed();
                if !status.is_success() {
                    return Err(format!("{path} answered {status}"));
                }
                weight = body.len();
                if i >= 10 {
                    times.push(took);
                }
            }
            times.sort();
            println!(
                "  {name:<38} {:>8.1} {:>8.1} {:>8.1} {:>8.1} KB",
                ms(percentile(&times, 50)),
                ms(percentile(&times, 99)),
                ms(times.last().copied().unwrap_or_default()),
                weight as f64 / 1000.0
            );
        }
        println!("targets: p99 under 100 ms for each; no console page over 200 KB");
        Ok(())
    })
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) * p).div_ceil(100)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
