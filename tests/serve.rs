//! `meshploy serve` end to end: pushes to real repositories applied, failures closed, force
//! pushes followed, webhooks verified, and a standby taking over from a killed leader.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::fixtures::{Process, service, shop_remote};
use crate::util::{Db, Dir, Remote, git, http, wait_for};

/// A running `meshploy serve` on a port it chose, killed (SIGKILL) when dropped.
struct Serve {
    process: Process,
    port: u16,
    /// The working directory, which must outlive the process.
    _cwd: Dir,
}

impl Serve {
    fn start(db: &Db, args: &[&str]) -> Serve {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let cwd = Dir::new();
        let (process, addresses) = Process::announced(
            db.command(&cwd, &all)
                .stdin(Stdio::null())
                .stdout(Stdio::null()),
            "meshploy serve: API and console on",
        );
        Serve {
            process,
            port: addresses.first().expect("the API's address").port(),
            _cwd: cwd,
        }
    }

    /// `leader` or `standby`, from the health endpoint.
    fn role(&self) -> String {
        let (status, body) = http(self.port, "GET", "/healthz", &[], b"");
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        json["role"].as_str().unwrap_or_default().to_owned()
    }
}

/// The status of the one registered source, as `meshploy status --format json` shows it.
fn status(db: &Db) -> serde_json::Value {
    let run = db.meshploy(&Dir::new(), &["status", "--format", "json"]);
    run.json()[0].clone()
}

/// Waits until the source's status satisfies `check`; panics with the last status if not.
fn wait_status(
    db: &Db,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_for(Duration::from_secs(15), || {
        last = status(db);
        check(&last).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("no status with {what}; last: {last:#}"))
}

fn applied(db: &Db, commit: &str) -> serde_json::Value {
    wait_status(db, &format!("{commit} applied"), |s| {
        s["last_applied_commit"] == commit && s["state"] == "synced"
    })
}

/// The shop remote (see [`shop_remote`]) followed by `meshploy serve` from its bare
/// repository's `deploy/`, polling hourly (so only the watch and requests trigger syncs) with
/// `extra` arguments, once its first commit is applied. Returns the remote, that commit and
/// the server.
fn following_shop(db: &Db, extra: &[&str]) -> (Remote, String, Serve) {
    let (remote, first) = shop_remote();
    let bare = remote.bare();
    let repo = bare.to_str().expect("utf-8 path");
    let mut args = vec!["--repo", repo, "--path", "deploy", "--poll-interval", "1h"];
    args.extend_from_slice(extra);
    let serve = Serve::start(db, &args);
    applied(db, &first);
    (remote, first, serve)
}

#[test]
fn pushes_are_applied_failures_leave_the_state_and_force_pushes_are_followed() {
    let db = Db::new();
    let (remote, first) = shop_remote();
    let bare = remote.bare();
    let repo = bare.to_str().expect("utf-8 path");
    // Only the watch on the repository's refs can trigger these syncs: polling is hourly.
    let _serve = Serve::start(
        &db,
        &["--repo", repo, "--path", "deploy", "--poll-interval", "1h"],
    );
    applied(&db, &first);

    remote.write("deploy/d.yaml", &service("d", 1));
    let second = remote.push("add d");
    let status = applied(&db, &second);
    assert_eq!(status["name"], "bare");
    assert_eq!(status["trigger"], "watch");
    let state = db.meshploy(&Dir::new(), &["state", "list"]);
    let line = state
        .stdout
        .lines()
        .find(|l| l.starts_with("service/shop/d "))
        .unwrap_or_else(|| panic!("service d in:\n{}", state.stdout));
    assert!(
        line.contains(&format!("commit {}", &second[..12])),
        "{line}"
    );

    // A broken manifest: the state stays, the source says why and where.
    remote.write(
        "deploy/e.yaml",
        &service("e", 1).replace("replicas: 1", "replica: 1"),
    );
    let broken = remote.push("broken e");
    let failed = wait_status(&db, "the broken commit failed", |s| {
        s["last_seen_commit"] == broken.as_str() && s["state"] == "failed"
    });
    // One push is one attempt, however many files the push changed under `refs/`.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        db.psql(&format!(
            "SELECT count(*) FROM sync_attempts WHERE commit_id = '{broken}'"
        )),
        "1"
    );
    let message = failed["message"].as_str().unwrap_or_default();
    assert_eq!(
        message,
        "the manifests are invalid (1 problem); nothing was applied:\n\
         deploy/e.yaml:9:3: unknown field `replica` [unknown-field] (help: did you mean `replicas`?)"
    );
    assert_eq!(failed["last_applied_commit"], second.as_str());
    assert_eq!(db.psql("SELECT count(*) FROM services"), "4");
    // The same outcome as data, for the console and PR comments.
    let detail = &failed["detail"];
    assert_eq!(detail["kind"], "invalid", "{detail:#}");
    assert_eq!(detail["total"], 1);
    let diagnostic = &detail["diagnostics"][0];
    assert_eq!(
        (
            &diagnostic["file"],
            &diagnostic["line"],
            &diagnostic["column"],
            &diagnostic["code"]
        ),
        (
            &serde_json::json!("deploy/e.yaml"),
            &serde_json::json!(9),
            &serde_json::json!(3),
            &serde_json::json!("unknown-field")
        )
    );
    assert_eq!(diagnostic["hint"], "did you mean `replicas`?");

    // Every manifest deleted: refused by the guard, nothing deleted.
    for name in ["project", "a", "b", "c", "d", "e", "route"] {
        remote.remove(&format!("deploy/{name}.yaml"));
    }
    let emptied = remote.push("delete every manifest");
    let refused = wait_status(&db, "the emptied commit refused", |s| {
        s["last_seen_commit"] == emptied.as_str() && s["state"] == "failed"
    });
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("this plan destroys project/shop and everything in it"),
        "{message}"
    );
    assert_eq!(db.psql("SELECT count(*) FROM services"), "4");
    assert_eq!(refused["detail"]["kind"], "refused");
    assert_eq!(
        refused["detail"]["refusals"][0],
        serde_json::json!({ "reason": "projectDestroyed", "address": "project/shop" })
    );
    let text = db.meshploy(&Dir::new(), &["status"]);
    assert_eq!(text.code, 1, "a failed source fails `status`");
    assert!(
        text.stdout.contains("bare: failed (policy auto)"),
        "{}",
        text.stdout
    );

    // A force-push back to the first commit: followed, applied and recorded as a rewrite.
    git(
        &remote.work(),
        &["push", "-q", "-f", "origin", &format!("{first}:main")],
    );
    let rewound = applied(&db, &first);
    assert_eq!(rewound["rewritten_from"], second.as_str());
    assert_eq!(db.psql("SELECT count(*) FROM services"), "3");
    assert_eq!(
        db.psql("SELECT commit_id || ' -' || destroyed FROM revisions ORDER BY id DESC LIMIT 1"),
        format!("{first} -1")
    );
    let text = db.meshploy(&Dir::new(), &["status"]);
    assert!(
        text.stdout.contains(&format!(
            "history rewritten: followed a force-push from {}",
            &second[..12]
        )),
        "{}",
        text.stdout
    );
    // Failed commits never became revisions.
    assert_eq!(
        db.psql(&format!(
            "SELECT count(*) FROM revisions WHERE commit_id IN ('{broken}', '{emptied}')"
        )),
        "0"
    );
}

pub const SECRET: &str = "webhook-s3cret";
const TOKEN: &str = "ci-token-4a1f";

pub fn signature(body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

fn push_event(url: &str, branch: &str) -> Vec<u8> {
    serde_json::json!({
        "ref": format!("refs/heads/{branch}"),
        "after": "0000000000000000000000000000000000000000",
        "repository": { "full_name": "acme/shop", "clone_url": url },
    })
    .to_string()
    .into_bytes()
}

#[test]
fn webhooks_sync_only_when_signed_fresh_and_for_the_tracked_branch() {
    let db = Db::new();
    let (remote, first) = shop_remote();
    // A file:// URL is fetched into a cache, so no file watch sees pushes: only webhooks,
    // sync requests and the (hourly) poll can.
    let url = format!("file://{}", remote.bare().display());
    let serve = Serve::start(
        &db,
        &[
            "--repo",
            &url,
            "--name",
            "shop",
            "--path",
            "deploy",
            "--poll-interval",
            "1h",
            "--webhook-secret",
            SECRET,
            "--api-token",
            TOKEN,
        ],
    );
    applied(&db, &first);
    remote.write("deploy/d.yaml", &service("d", 1));
    let second = remote.push("add d");
    let body = push_event(&url, "main");
    let post = |headers: &[(&str, &str)], body: &[u8]| {
        http(serve.port, "POST", "/api/v1/webhooks/github", headers, body)
    };
    let good = signature(&body);
    let forged = signature(b"another body");
    for headers in [
        vec![
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "d-1"),
            ("X-Hub-Signature-256", forged.as_str()),
        ],
        vec![("X-GitHub-Event", "push"), ("X-GitHub-Delivery", "d-1")],
        vec![
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "d-1"),
            ("X-Hub-Signature-256", "sha256=00"),
        ],
    ] {
        let (code, answer) = post(&headers, &body);
        assert_eq!(code, 401, "{headers:?}: {answer}");
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        status(&db)["last_applied_commit"],
        first.as_str(),
        "a refused webhook did something"
    );

    let signed = [
        ("X-GitHub-Event", "push"),
        ("X-GitHub-Delivery", "d-1"),
        ("X-Hub-Signature-256", good.as_str()),
    ];
    let (code, answer) = post(&signed, &body);
    assert_eq!(code, 202, "{answer}");
    assert!(answer.contains("shop"), "{answer}");
    assert_eq!(applied(&db, &second)["trigger"], "webhook");

    // The same delivery again (a replay, validly signed): acknowledged, nothing done.
    remote.write("deploy/e.yaml", &service("e", 1));
    let third = remote.push("add e");
    let (code, answer) = post(&signed, &body);
    assert_eq!(code, 200, "{answer}");
    assert!(answer.contains("delivery already processed"), "{answer}");
    // Another branch and another repository: acknowledged, nothing done.
    for (id, event) in [
        ("d-2", push_event(&url, "feature")),
        (
            "d-3",
            push_event("https://github.com/acme/other.git", "main"),
        ),
    ] {
        let signature = signature(&event);
        let headers = [
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", id),
            ("X-Hub-Signature-256", signature.as_str()),
        ];
        let (code, answer) = post(&headers, &event);
        assert_eq!(code, 200, "{answer}");
        assert!(answer.contains("no tracked source"), "{answer}");
    }
    let ping = signature(b"{}");
    let (code, _) = post(
        &[
            ("X-GitHub-Event", "ping"),
            ("X-GitHub-Delivery", "d-4"),
            ("X-Hub-Signature-256", ping.as_str()),
        ],
        b"{}",
    );
    assert_eq!(code, 200);
    // A body over the cap is refused before it is read whole.
    let huge = vec![b' '; api::MAX_BODY_BYTES + 1];
    let huge_signature = signature(&huge);
    let (code, _) = post(
        &[
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "d-5"),
            ("X-Hub-Signature-256", huge_signature.as_str()),
        ],
        &huge,
    );
    assert_eq!(code, 413);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        status(&db)["last_applied_commit"],
        second.as_str(),
        "an ignored webhook did something"
    );

    // The generic sync API for other forges and CI: bearer token only.
    let sync = |headers: &[(&str, &str)], name: &str| {
        http(
            serve.port,
            "POST",
            &format!("/api/v1/sources/{name}/sync"),
            headers,
            b"",
        )
    };
    assert_eq!(sync(&[], "shop").0, 401);
    assert_eq!(sync(&[("Authorization", "Bearer wrong")], "shop").0, 401);
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(sync(&[("Authorization", bearer.as_str())], "nope").0, 404);
    assert_eq!(sync(&[("Authorization", bearer.as_str())], "shop").0, 202);
    assert_eq!(applied(&db, &third)["trigger"], "request");
    // And the CLI, which waits for the outcome.
    let run = db.meshploy(&Dir::new(), &["sync", "shop"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), "shop: synced");
}

#[test]
fn a_standby_takes_over_within_ten_seconds_when_the_leader_is_killed() {
    let db = Db::new();
    let (remote, first) = shop_remote();
    let bare = remote.bare();
    let args = [
        "--repo",
        bare.to_str().expect("utf-8 path"),
        "--path",
        "deploy",
        "--poll-interval",
        "1h",
    ];
    let mut replicas = vec![Serve::start(&db, &args), Serve::start(&db, &args)];
    applied(&db, &first);
    let roles: Vec<String> = replicas.iter().map(Serve::role).collect();
    let leader = roles
        .iter()
        .position(|r| r == "leader")
        .expect("one leader");
    assert_eq!(
        roles.iter().filter(|r| *r == "standby").count(),
        1,
        "{roles:?}"
    );
    drop(replicas.remove(leader)); // SIGKILL: no graceful shutdown, no unlock.
    remote.write("deploy/d.yaml", &service("d", 1));
    let second = remote.push("add d");
    let pushed = Instant::now();
    applied(&db, &second);
    let took = pushed.elapsed();
    assert!(took < Duration::from_secs(10), "took over in {took:?}");
    assert_eq!(replicas[0].role(), "leader");
    assert_eq!(
        db.psql("SELECT count(*) || ' ' || count(DISTINCT commit_id) FROM revisions"),
        "2 2",
        "a commit was applied twice"
    );
}

#[test]
fn status_sync_and_configuration_errors_say_what_is_wrong() {
    let db = Db::new();
    let dir = Dir::new();
    let empty = db.meshploy(&dir, &["status"]);
    assert!(empty.stdout.contains("No sources yet"), "{}", empty.stdout);
    db.meshploy(&dir, &["sync", "shop"])
        .assert_fails_with("no source named `shop`; known sources: none");
    let (remote, _) = shop_remote();
    let bare = remote.bare().display().to_string();
    for (config, error) in [
        (
            format!("sources:\n  - name: shop\n    url: {bare}\n    brnch: main\n"),
            "unknown field `brnch`",
        ),
        ("sources: []\n".to_owned(), "`sources` is empty"),
        (
            format!("sources:\n  - name: a\n    url: {bare}\n  - name: a\n    url: {bare}\n"),
            "two sources are named `a`",
        ),
        (
            format!("sources:\n  - name: a\n    url: {bare}\n    pollInterval: soon\n"),
            "source `a`: pollInterval: `soon` is not a duration",
        ),
        (
            format!("sources:\n  - name: a\n    url: {bare}\n    policy: sometimes\n"),
            "sometimes",
        ),
    ] {
        let path = dir.write("meshploy.yaml", &config);
        let run = db.meshploy(&dir, &["serve", "--config", path.to_str().expect("utf-8")]);
        run.assert_fails_with(error);
        run.assert_fails_with("meshploy.yaml");
    }
    let run = db.meshploy(&dir, &["serve"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--config"), "{}", run.stderr);

    // A manual source plans and reports, and applies nothing.
    let path = dir.write(
        "meshploy.yaml",
        format!(
            "sources:\n  - name: shop\n    url: {bare}\n    path: deploy\n    policy: manual\n"
        ),
    );
    let serve = Serve::start(&db, &["--config", path.to_str().expect("utf-8")]);
    let pending = wait_status(&db, "out-of-sync", |s| s["state"] == "out-of-sync");
    let message = pending["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("Plan: 5 to add, 0 to change, 0 to destroy"),
        "{message}"
    );
    let run = db.meshploy(&dir, &["sync", "shop"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("shop: out-of-sync"),
        "{}",
        run.stdout
    );
    assert_eq!(db.psql("SELECT count(*) FROM revisions"), "0");
    drop(serve);
    db.meshploy(&dir, &["sync", "shop", "--wait", "1s"])
        .assert_fails_with("no reconciler synced `shop` within 1 s");
}

#[test]
fn the_api_answers_within_100_ms_while_a_10000_resource_commit_is_synced() {
    let db = Db::new();
    let remote = Remote::new();
    let resources =
        crate::generate::write_repo(&remote.work().join("deploy"), 10_000).expect("generate");
    assert!(resources >= 10_000);
    let commit = remote.push("10,000 resources");
    let bare = remote.bare();
    let repo = bare.to_str().expect("utf-8 path");
    let serve = Serve::start(
        &db,
        &["--repo", repo, "--path", "deploy", "--poll-interval", "1h"],
    );
    // The first sync starts as soon as the process leads; /healthz is asked throughout.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (done, port) = (Arc::clone(&done), serve.port);
        std::thread::spawn(move || {
            let mut latencies = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let started = Instant::now();
                let (status, body) = http(port, "GET", "/healthz", &[], b"");
                latencies.push(started.elapsed());
                assert_eq!(status, 200, "{body}");
                std::thread::sleep(Duration::from_millis(10));
            }
            latencies
        })
    };
    let synced = wait_for(Duration::from_secs(180), || {
        let status = status(&db);
        (status["state"] != "applying" && status["state"] != "pending").then_some(status)
    })
    .expect("the sync finished");
    done.store(true, Ordering::SeqCst);
    let latencies = sampler.join().expect("the sampler");
    assert_eq!(synced["state"], "synced", "{synced:#}");
    assert_eq!(synced["last_applied_commit"], commit.as_str());
    // The check means something only if the sync took a while: at least ten health checks
    // went out while it ran.
    assert!(latencies.len() >= 10, "only {} samples", latencies.len());
    let worst = latencies.iter().max().copied().unwrap_or_default();
    assert!(
        worst < Duration::from_millis(100),
        "a health check took {worst:?} during the sync ({} samples)",
        latencies.len()
    );
}

/// Open file descriptors of a process.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

#[test]
fn idle_connections_are_capped_and_timed_out_and_the_api_still_answers() {
    use std::io::{Read, Write};
    let db = Db::new();
    let (remote, _, serve) = following_shop(
        &db,
        &["--max-connections-per-ip", "20", "--header-timeout", "1s"],
    );
    let before = open_files(serve.process.id());
    // 200 clients from 127.0.0.1 each send half a request head and wait.
    let mut idle: Vec<std::net::TcpStream> = (0..200)
        .map(|_| {
            let mut stream =
                std::net::TcpStream::connect(("127.0.0.1", serve.port)).expect("connect");
            stream
                .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
                .expect("half a head");
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let held = open_files(serve.process.id());
    assert!(
        held < before + 40,
        "the server holds {held} files with 200 idle clients ({before} before)"
    );
    // Another client is served meanwhile.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (status, body) = rt.block_on(readyz_from([127, 0, 0, 2], serve.port));
    assert_eq!(status, 200, "{body}");
    // A push is applied meanwhile.
    remote.write("deploy/d.yaml", &service("d", 1));
    let second = remote.push("add d");
    applied(&db, &second);
    // Every idle connection is closed by the server within the header timeout (and slack).
    let started = Instant::now();
    for stream in &mut idle {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut rest = Vec::new();
        // Closed is an end of stream, or a reset (the server closed with our half head
        // unread); a read that times out means the connection is still open.
        let still_open = matches!(
            stream.read_to_end(&mut rest),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        );
        assert!(
            !still_open,
            "an idle connection is still open after {:?}",
            started.elapsed()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// `GET /readyz` from a given loopback source address: status and body.
async fn readyz_from(source: [u8; 4], port: u16) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind((std::net::Ipv4Addr::from(source), 0).into())
        .expect("bind the source address");
    let mut stream = socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect");
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    (crate::util::status_of(&response), response)
}

#[test]
fn an_empty_webhook_secret_or_api_token_is_refused_at_start() {
    let db = Db::new();
    let dir = Dir::new();
    for (args, env) in [
        (
            vec!["serve", "--repo", "/r.git", "--webhook-secret", ""],
            None,
        ),
        (vec!["serve", "--repo", "/r.git", "--api-token", " "], None),
        (
            vec!["serve", "--repo", "/r.git"],
            Some(("MESHPLOY_WEBHOOK_SECRET", "")),
        ),
        (
            vec!["serve", "--repo", "/r.git"],
            Some(("MESHPLOY_API_TOKEN", "")),
        ),
    ] {
        let mut command = db.command(&dir, &args);
        command.args(["--listen", "127.0.0.1:0"]).envs(env);
        let mut process = Process::spawn(command.stdout(Stdio::null()).stderr(Stdio::piped()));
        // Before the fix it started and ran on; give it ten seconds to refuse.
        let refused = wait_for(Duration::from_secs(10), || process.exited().then_some(()));
        assert!(refused.is_some(), "{args:?} {env:?} started");
        let (code, stderr) = process.finished();
        assert_eq!(code, 2, "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains("is empty"), "{stderr}");
    }
}

#[test]
fn a_new_leader_records_a_sync_its_predecessor_was_killed_in_as_interrupted() {
    let db = Db::new();
    let (remote, _, serve) = following_shop(&db, &[]);
    drop(serve);
    let bare = remote.bare();
    let repo = bare.to_str().expect("utf-8 path");
    let args = ["--repo", repo, "--path", "deploy", "--poll-interval", "1h"];
    // What a leader killed mid-sync leaves: the source shown `applying` a commit.
    let second = remote.push("an empty commit");
    db.psql(&format!(
        "UPDATE sources SET state = 'applying', last_seen_commit = '{second}'"
    ));
    let _serve = Serve::start(&db, &args);
    applied(&db, &second);
    let interrupted = db.psql(
        "SELECT commit_id || ' ' || message FROM sync_attempts WHERE outcome = 'interrupted'",
    );
    assert!(
        interrupted.starts_with(&format!(
            "{second} the reconciler applying this commit stopped before it finished"
        )),
        "{interrupted}"
    );
}

/// Runs `sql` as `role` and returns what psql said on standard error.
fn psql_as_error(db: &Db, role: &str, sql: &str) -> String {
    let output = db
        .psql_command_as(role)
        .args(["-c", sql])
        .output()
        .expect("psql as the role");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn the_proxy_role_can_neither_take_the_locks_nor_trigger_syncs_nor_make_temporary_tables() {
    let db = Db::new();
    let (_remote, _, _serve) = following_shop(&db, &[]);
    let role = crate::fixtures::proxy_login(&db);
    // A real login as the proxy's role: the leader and apply locks are out of its reach.
    for lock in [
        "SELECT pg_try_advisory_lock(1818584420)",
        "SELECT pg_advisory_lock(1835365224)",
        "BEGIN; SELECT pg_advisory_xact_lock(1835365224); COMMIT",
        "SELECT pg_try_advisory_lock_shared(1, 2)",
    ] {
        let error = psql_as_error(&db, &role, lock);
        assert!(error.contains("permission denied"), "{lock}: {error:?}");
    }
    let error = psql_as_error(&db, &role, "CREATE TEMPORARY TABLE t (x int)");
    assert!(error.contains("permission denied"), "{error:?}");
    let error = psql_as_error(
        &db,
        &role,
        "INSERT INTO sync_requests (source, trigger) VALUES ('bare', 'request')",
    );
    assert!(error.contains("permission denied"), "{error:?}");
    // It may NOTIFY (PostgreSQL lets every role), but that alone syncs nothing.
    let before = db.psql("SELECT count(*) FROM sync_attempts");
    let notified = psql_as_error(
        &db,
        &role,
        "SELECT pg_notify('meshploy_sync', '{\"source\": \"bare\", \"trigger\": \"request\"}')",
    );
    assert!(notified.is_empty(), "{notified}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(db.psql("SELECT count(*) FROM sync_attempts"), before);
    // Meshploy's own request still works.
    let sync = db.meshploy(&Dir::new(), &["sync", "bare"]);
    assert_eq!(sync.code, 0, "{}", sync.stderr);
    assert_ne!(db.psql("SELECT count(*) FROM sync_attempts"), before);
}

#[test]
fn a_source_is_removed_only_once_told_what_becomes_of_what_it_owns() {
    let db = Db::new();
    let dir = Dir::new();
    let (remote, _, serve) = following_shop(&db, &[]);
    // The repository and its reconciler are gone; the source and its resources stay.
    drop(serve);
    drop(remote);
    let refused = db.meshploy(&dir, &["source", "remove", "bare"]);
    refused.assert_fails_with("source `bare` owns 5 resources (project/shop, ");
    assert!(refused.stderr.contains("--destroy"), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("--adopt-from bare"),
        "{}",
        refused.stderr
    );
    assert_eq!(db.psql("SELECT count(*) FROM sources"), "1");
    assert_eq!(db.psql("SELECT count(*) FROM services"), "3");

    let removed = db.meshploy(&dir, &["source", "remove", "bare", "--destroy"]);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    assert!(
        removed
            .stdout
            .contains("Plan: 0 to add, 0 to change, 5 to destroy."),
        "{}",
        removed.stdout
    );
    assert!(
        removed.stdout.contains("Removed source `bare`"),
        "{}",
        removed.stdout
    );
    for table in ["sources", "sync_attempts", "services", "projects"] {
        assert_eq!(
            db.psql(&format!("SELECT count(*) FROM {table}")),
            "0",
            "{table}"
        );
    }
    let status = db.meshploy(&dir, &["status"]);
    assert_eq!(status.code, 0, "{}", status.stdout);
    assert!(!status.stdout.contains("bare"), "{}", status.stdout);
    assert_eq!(
        db.psql("SELECT destroyed || ' ' || source FROM revisions ORDER BY id DESC LIMIT 1"),
        "5 bare"
    );

    // A source that owns nothing goes at once; an unknown name is an error.
    db.psql(
        "INSERT INTO sources (name, url, branch, path, policy) VALUES ('empty', '/srv/gone.git', 'main', '', 'auto')",
    );
    let empty = db.meshploy(&dir, &["source", "remove", "empty"]);
    assert_eq!(empty.code, 0, "{}", empty.stderr);
    assert_eq!(db.psql("SELECT count(*) FROM sources"), "0");
    db.meshploy(&dir, &["source", "remove", "nope"])
        .assert_fails_with("no source named `nope` is registered or owns resources");
}
