//! The API and the console facing clients they cannot trust, through the real binary: a log
//! stream ends soon after its token is revoked, streams leave connection slots for health
//! checks and webhooks, only known host names are answered, cross-site posts are refused,
//! routes cannot reach the platform's own ports, and secrets given as flags are warned about.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::fixtures::{PROJECT, Process, shop_remote};
use crate::util::{Db, Dir, http, wait_for};

/// `meshploy serve` of the shop's repository on a port it chose, with `args` added.
fn serve(db: &Db, dir: &Dir, args: &[&str]) -> (Process, u16) {
    let (remote, _) = shop_remote();
    let url = remote.bare().display().to_string();
    let mut all = vec![
        "serve",
        "--repo",
        &url,
        "--path",
        "deploy",
        "--listen",
        "127.0.0.1:0",
        "--webhook-secret",
        crate::serve::SECRET,
    ];
    all.extend_from_slice(args);
    let mut command = db.command(dir, &all);
    command.stdin(Stdio::null()).stdout(Stdio::null());
    let (process, addresses) =
        Process::announced(&mut command, "meshploy serve: API and console on");
    // The repository must outlive the process: it is read on every poll.
    std::mem::forget(remote);
    (process, addresses[0].port())
}

/// A deployment of `shop/web` with one captured line, as the controller leaves them.
fn deployment_with_a_line(db: &Db) {
    db.psql(
        "INSERT INTO deployments (id, project, service, release_digest, release, trigger, state) \
         VALUES (1, 'shop', 'web', 'r', '{}', 'revision', 'healthy'); \
         INSERT INTO log_lines (deployment_id, replica, line) VALUES (1, 0, 'first line')",
    );
}

/// An open request whose answer is read as it comes, on another thread.
struct Stream {
    received: std::sync::Arc<std::sync::Mutex<String>>,
    /// When the server ended the answer (closed the connection).
    ended: std::sync::mpsc::Receiver<Instant>,
}

impl Stream {
    /// Sends `GET path` with `headers` and `Connection: close`, so that the end of the answer
    /// is the end of the connection.
    fn open(port: u16, path: &str, headers: &[(&str, &str)]) -> Stream {
        let mut socket = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        socket.write_all(request.as_bytes()).expect("send");
        let received = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (end, ended) = std::sync::mpsc::channel();
        let shared = received.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = socket.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
                shared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&text);
            }
            let _ = end.send(Instant::now());
        });
        Stream { received, ended }
    }

    fn holds(&self, text: &str) -> bool {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(text)
    }

    /// Waits up to `timeout` for `text` to arrive.
    fn wait_for(&self, text: &str, timeout: Duration) {
        let arrived = wait_for(timeout, || self.holds(text).then_some(()));
        assert!(
            arrived.is_some(),
            "`{text}` never arrived: {}",
            self.received.lock().unwrap_or_else(|e| e.into_inner())
        );
    }
}

#[test]
fn a_log_stream_ends_within_30_seconds_of_its_token_being_revoked() {
    let (db, dir) = (Db::new(), Dir::new());
    let (_serve, port) = serve(&db, &dir, &[]);
    deployment_with_a_line(&db);
    let token = crate::api::token(&db, &dir, "watcher", "read");
    let bearer = format!("Bearer {token}");
    let api = Stream::open(
        port,
        "/api/v1/deployments/1/logs",
        &[("Authorization", &bearer), ("Accept", "text/event-stream")],
    );
    // The console's live log, from a session the same token opened.
    let session = login_cookie(port, &format!("token={token}"));
    let console = Stream::open(
        port,
        "/services/shop/web/events",
        &[("Cookie", &session), ("Accept", "text/event-stream")],
    );
    for stream in [&api, &console] {
        stream.wait_for("first line", Duration::from_secs(10));
    }
    db.psql("INSERT INTO log_lines (deployment_id, replica, line) VALUES (1, 0, 'live line')");
    for stream in [&api, &console] {
        stream.wait_for("live line", Duration::from_secs(10));
    }
    let revoked = db.meshploy(&dir, &["token", "revoke", "watcher"]);
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    let at = Instant::now();
    for (name, stream) in [("API", &api), ("console", &console)] {
        let ended = stream
            .ended
            .recv_timeout(Duration::from_secs(35).saturating_sub(at.elapsed()))
            .unwrap_or_else(|_| panic!("the {name} stream still runs 35 s after the revocation"));
        let after = ended.duration_since(at);
        eprintln!("the {name} stream ended {after:?} after the revocation");
        assert!(
            after <= Duration::from_secs(30),
            "the {name} stream ended after {after:?}"
        );
    }
    db.psql("INSERT INTO log_lines (deployment_id, replica, line) VALUES (1, 0, 'after revoking')");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!api.holds("after revoking") && !console.holds("after revoking"));
}

/// The session cookie a login with `form` sets, as `name=value`.
fn login_cookie(port: u16, form: &str) -> String {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let request = format!(
        "POST /login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    );
    socket.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    socket.read_to_string(&mut answer).expect("read");
    answer
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no session cookie in {answer}"))
        .to_owned()
}

/// A request that may find the connection refused or closed: its status, or `None`.
fn try_get(port: u16, path: &str) -> Option<u16> {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    let _ = socket.read_to_string(&mut answer);
    Some(crate::util::status_of(&answer)).filter(|s| *s != 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleven_hundred_held_log_streams_leave_readyz_and_webhooks_answering() {
    let (db, dir) = (Db::new(), Dir::new());
    let (_serve, port) = serve(&db, &dir, &["--anonymous-read"]);
    deployment_with_a_line(&db);
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    // 1,100 streams from 20 addresses, fewer than the 64 connections one address may hold.
    let mut held = Vec::new();
    for batch in 0..11u8 {
        let mut opening = tokio::task::JoinSet::new();
        for i in 0..100usize {
            let octet = u8::try_from(1 + (usize::from(batch) * 100 + i) % 20).unwrap_or(1);
            let from: SocketAddr = ([127, 0, 1, octet], 0).into();
            opening.spawn(async move {
                let socket = tokio::net::TcpSocket::new_v4().ok()?;
                socket.bind(from).ok()?;
                let mut stream = socket.connect(server).await.ok()?;
                let request = "GET /api/v1/deployments/1/logs HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                               Accept: text/event-stream\r\n\r\n";
                tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
                    .await
                    .ok()?;
                let mut head = [0u8; 12];
                let read = tokio::time::timeout(
                    Duration::from_secs(10),
                    tokio::io::AsyncReadExt::read(&mut stream, &mut head),
                )
                .await;
                let status = match read {
                    Ok(Ok(n)) if n >= 12 => crate::util::status_of(&String::from_utf8_lossy(&head)),
                    _ => 0,
                };
                Some((stream, status))
            });
        }
        while let Some(opened) = opening.join_next().await {
            if let Ok(Some(opened)) = opened {
                held.push(opened);
            }
        }
    }
    let streaming = held.iter().filter(|(_, status)| *status == 200).count();
    eprintln!("{streaming} of {} connections got a stream", held.len());
    let (ready, pong) = tokio::task::block_in_place(|| {
        let ready = try_get(port, "/readyz");
        let body = br#"{"zen": "Keep it logically awesome."}"#;
        let signature = crate::serve::signature(body);
        let headers = [
            ("X-GitHub-Event", "ping"),
            ("X-GitHub-Delivery", "held-1"),
            ("X-Hub-Signature-256", signature.as_str()),
        ];
        let pong = std::panic::catch_unwind(|| {
            http(port, "POST", "/api/v1/webhooks/github", &headers, body).0
        })
        .ok();
        (ready, pong)
    });
    assert_eq!(ready, Some(200), "/readyz with {streaming} streams held");
    assert_eq!(pong, Some(200), "a webhook with {streaming} streams held");
    assert!(streaming > 0, "some streams were served");
    drop(held);
}

#[test]
fn only_known_host_names_are_answered_and_cross_site_posts_are_refused() {
    let (db, dir) = (Db::new(), Dir::new());
    let (_serve, port) = serve(
        &db,
        &dir,
        &[
            "--anonymous-read",
            "--public-url",
            "https://meshploy.example.com/",
        ],
    );
    let token = crate::api::token(&db, &dir, "reader", "read");
    let with_host = |method: &str, path: &str, host: &str, extra: &[(&str, &str)], body: &[u8]| {
        let mut socket = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in extra {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        socket.write_all(request.as_bytes()).expect("send");
        socket.write_all(body).expect("send the body");
        let mut answer = String::new();
        let _ = socket.read_to_string(&mut answer);
        answer
    };
    // A name that rebinds to this machine: refused, on the API and the console alike.
    for path in ["/api/v1/services", "/", "/login"] {
        let answer = with_host("GET", path, "rebind.attacker.example:8080", &[], b"");
        assert_eq!(crate::util::status_of(&answer), 421, "{path}: {answer}");
        assert!(answer.contains("--allow-host"), "{answer}");
    }
    // Loopback names and addresses, and --public-url's host, are answered.
    let local = format!("127.0.0.1:{port}");
    for host in [
        local.as_str(),
        "localhost",
        "LOCALHOST:8080",
        "[::1]:80",
        "meshploy.example.com",
    ] {
        let answer = with_host("GET", "/api/v1/services", host, &[], b"");
        assert_eq!(crate::util::status_of(&answer), 200, "{host}: {answer}");
    }
    // Health checks and signed webhooks come from machines, under whatever name.
    let answer = with_host("GET", "/readyz", "10.0.0.7:8080", &[], b"");
    assert_eq!(crate::util::status_of(&answer), 200, "{answer}");

    // Logging in from another site's form (login CSRF) is refused; from the console's own
    // page it works.
    let form = format!("token={token}");
    let form_type = ("Content-Type", "application/x-www-form-urlencoded");
    for headers in [
        vec![form_type, ("Origin", "https://attacker.example")],
        vec![form_type, ("Sec-Fetch-Site", "cross-site")],
        vec![form_type, ("Origin", "null")],
    ] {
        let answer = with_host("POST", "/login", &local, &headers, form.as_bytes());
        assert_eq!(
            crate::util::status_of(&answer),
            403,
            "{headers:?}: {answer}"
        );
        assert!(!answer.contains("meshploy_session="), "{answer}");
    }
    let origin = format!("http://{local}");
    let answer = with_host(
        "POST",
        "/login",
        &local,
        &[
            form_type,
            ("Origin", &origin),
            ("Sec-Fetch-Site", "same-origin"),
        ],
        form.as_bytes(),
    );
    assert_eq!(crate::util::status_of(&answer), 303, "{answer}");
    assert!(answer.contains("meshploy_session="), "{answer}");
}

#[test]
fn secrets_given_as_flags_are_warned_about_without_being_shown() {
    let dir = Dir::new();
    let run = crate::util::Run::new(
        crate::util::meshploy()
            .current_dir(dir.path())
            .args([
                "serve",
                "--repo",
                "/nowhere/at/all.git",
                "--webhook-secret",
                "whs3cr3t",
                "--api-token=apit0k3n",
                "--secret-keys",
                "k1:not-a-key",
            ])
            .output(),
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    for (flag, variable) in [
        ("--webhook-secret", "MESHPLOY_WEBHOOK_SECRET"),
        ("--api-token", "MESHPLOY_API_TOKEN"),
        ("--secret-keys", "MESHPLOY_SECRET_KEYS_FILE"),
    ] {
        assert!(
            run.stderr
                .contains(&format!("warning: {flag} on the command line")),
            "{flag}: {}",
            run.stderr
        );
        assert!(run.stderr.contains(variable), "{variable}: {}", run.stderr);
    }
    for value in ["whs3cr3t", "apit0k3n", "not-a-key"] {
        assert!(!run.stderr.contains(value), "{value}: {}", run.stderr);
    }
}

/// An HTTP server on loopback answering every request with `answer`, for as long as the test
/// runs: a service an operator may let routes reach.
fn answering(answer: &'static str) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for mut socket in listener.incoming().flatten() {
            let mut buffer = [0u8; 4096];
            let _ = socket.read(&mut buffer);
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
            let _ = socket.write_all(response.as_bytes());
        }
    });
    port
}

/// A route of `shop` from `host` to `upstream`.
fn upstream_route(name: &str, host: &str, upstream: &str) -> String {
    format!(
        "apiVersion: meshploy.dev/v1\nkind: Route\nmetadata:\n  name: {name}\n  project: shop\nspec:\n  host: {host}\n  upstream: {upstream}\n---\n"
    )
}

#[test]
fn a_route_reaches_neither_the_platforms_own_ports_nor_internal_addresses_unless_allowed() {
    let local = answering("allowed");
    for allow in [None, Some("127.0.0.0/8")] {
        let (db, dir) = (Db::new(), Dir::new());
        dir.write("project.yaml", PROJECT);
        let mut args = vec![
            "up",
            ".",
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ];
        if let Some(network) = allow {
            args.extend(["--allow-upstream", network]);
        }
        let mut command = db.command(&dir, &args);
        let (_up, addresses) = Process::announced(&mut command, "meshploy up: proxy on");
        let (proxy, api) = (addresses[0], addresses[1].port());
        let routes = [
            upstream_route("api", "api.test", &format!("http://127.0.0.1:{api}")),
            upstream_route(
                "api-by-name",
                "name.test",
                &format!("http://localhost:{api}"),
            ),
            upstream_route(
                "api-as-number",
                "number.test",
                &format!("http://2130706433:{api}"),
            ),
            upstream_route(
                "proxy",
                "loop.test",
                &format!("http://127.0.0.1:{}", proxy.port()),
            ),
            upstream_route("metadata", "metadata.test", "http://169.254.169.254"),
            upstream_route("local", "local.test", &format!("http://127.0.0.1:{local}")),
        ];
        // Written again until applied: `up` may still be starting to watch the directory.
        let applied = (0..6).find_map(|_| {
            dir.write("routes.yaml", routes.concat());
            wait_for(Duration::from_secs(5), || {
                (db.psql("SELECT count(*) FROM routes") == "6").then_some(())
            })
        });
        assert!(applied.is_some(), "the routes were applied");
        // The proxy reloads on the apply's notification.
        std::thread::sleep(Duration::from_millis(500));
        for host in [
            "api.test",
            "name.test",
            "number.test",
            "loop.test",
            "metadata.test",
        ] {
            let answer = crate::runtime::get(proxy, host, "/readyz");
            let (status, body) = answer.unwrap_or_default();
            assert_eq!(status, 502, "{allow:?}: {host} answered {status}: {body}");
            assert!(
                body.contains("not allowed") && !body.contains("ready"),
                "{allow:?}: {host}: {body}"
            );
        }
        let answer = crate::runtime::get(proxy, "local.test", "/").unwrap_or_default();
        if allow.is_some() {
            assert_eq!(
                answer,
                (200, "allowed".to_owned()),
                "allowed by --allow-upstream"
            );
        } else {
            assert_eq!(answer.0, 502, "loopback is refused by default: {answer:?}");
            assert!(answer.1.contains("--allow-upstream"), "{answer:?}");
        }
    }
}
