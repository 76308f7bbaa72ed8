//! Measures what a token costs the API: requests per second on one endpoint without a token
//! (anonymous reading) and with a bearer token, with the same clients, one after the other.
//!
//! ```text
//! cargo run --release --example bench_tokens [-- --seconds 5 --clients 16 --rounds 3]
//! ```
//!
//! It applies a small generated repository with the release binary into a private
//! PostgreSQL, makes a read token, and serves `api::app` through `api::serve` (as `serve` and
//! `up` do) on a loopback port with anonymous reading on. Kept-alive clients then ask
//! `GET /api/v1/projects` as fast as they can for the given time, alternating without and
//! with the token each round; the medians of the rounds are compared.

#[allow(dead_code)]
#[path = "support/generate.rs"]
mod generate;
#[allow(dead_code)]
#[path = "support/measure.rs"]
mod measure;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reconciler::postgres::Cluster;

fn main() -> ExitCode {
    measure::exit(run())
}

fn run() -> Result<(), String> {
    let (mut seconds, mut clients, mut rounds) = (5, 16, 3);
    measure::numbers(
        "bench_tokens [--seconds N] [--clients N] [--rounds N]",
        &mut [
            ("--seconds", &mut seconds),
            ("--clients", &mut clients),
            ("--rounds", &mut rounds),
        ],
    )?;
    let load = Load {
        time: Duration::from_secs(seconds.max(1) as u64),
        clients: clients.max(1),
    };
    measure::with_cluster(|binary, cluster, root| {
        bench(binary, cluster, root, &load, rounds.max(1))
    })
}

/// How hard each measurement asks.
struct Load {
    time: Duration,
    clients: usize,
}

fn bench(
    binary: &std::path::Path,
    cluster: &Cluster,
    root: &std::path::Path,
    load: &Load,
    rounds: usize,
) -> Result<(), String> {
    let url = cluster.url("postgres").map_err(|e| e.to_string())?;
    let repo = root.join("repo");
    generate::write_repo(&repo, 100).map_err(|e| e.to_string())?;
    let meshploy = |args: &[&str]| measure::meshploy(binary, &url, args);
    let repo_arg = repo.to_str().ok_or("temporary path is not UTF-8")?;
    meshploy(&["apply", repo_arg, "--auto-approve"])?;
    let token = meshploy(&["token", "create", "--name", "bench", "--scope", "read"])?;
    let token = token.trim().to_owned();
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        // As many connections as `up` gives its API.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(16)
            .connect(&url)
            .await
            .map_err(|e| e.to_string())?;
        let app = api::app(api::AppState {
            pool,
            sources: Arc::new(Vec::new()),
            webhook_secret: None,
            api_token_sha256: None,
            leading: Arc::new(AtomicBool::new(true)),
            anonymous_read: true,
            hosts: api::Hosts::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        tokio::spawn(api::serve(
            listener,
            app,
            api::Limits::default(),
            std::future::pending(),
        ));
        let target = format!("http://{address}/api/v1/projects");
        println!(
            "GET /api/v1/projects, {} kept-alive clients, {} s per measurement, {rounds} rounds",
            load.clients,
            load.time.as_secs()
        );
        let (mut without, mut with) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            let anonymous = throughput(&target, None, load).await?;
            let bearer = throughput(&target, Some(&token), load).await?;
            println!("  round {round}: {anonymous:>8.0} requests/s without a token, {bearer:>8.0} with one");
            without.push(anonymous);
            with.push(bearer);
        }
        let (without, with) = (median(&mut without), median(&mut with));
        println!(
            "medians: {without:.0} requests/s without a token, {with:.0} with one ({:.0}% of it)",
            with / without * 100.0
        );
        println!("target: with a token at least 80% of without");
        Ok(())
    })
}

/// Requests per second `load.clients` kept-alive clients get from `url` in `load.time`.
async fn throughput(url: &str, token: Option<&str>, load: &Load) -> Result<f64, String> {
    let answered = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..load.clients {
        let (url, token, answered) = (url.to_owned(), token.map(str::to_owned), answered.clone());
        let until = started + load.time;
        clients.spawn(async move {
            let client = reqwest::Client::new();
            while Instant::now() < until {
                let mut request = client.get(&url);
                if let Some(token) = &token {
                    request = request.bearer_auth(token);
                }
                let response = request.send().await.map_err(|e| e.to_string())?;
                if !response.status().is_success() {
                    return Err(format!("{url} answered {}", response.status()));
                }
                response.bytes().await.map_err(|e| e.to_string())?;
                answered.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        });
    }
    while let Some(done) = clients.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    Ok(answered.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
