//! `meshploy proxy` over real sockets: routes applied through the real plan/apply path, real
//! upstream servers on loopback, and the proxy binary in between.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::routing::{any, get, post};
use futures_util::{SinkExt, StreamExt};
use reconciler::postgres::Cluster;
use tokio::runtime::Runtime;

use crate::fixtures::{PROJECT, Process};
use crate::util::{Db, Dir, closed_port, meshploy, open_tempdir, status_of, wait_every, wait_for};

/// A running `meshploy proxy` on ports it chose, killed when dropped.
struct Proxy {
    process: Process,
    port: u16,
    admin: u16,
}

impl Proxy {
    fn start(database_url: &str, extra: &[&str]) -> Proxy {
        let (process, addresses) = Process::announced(
            meshploy()
                .arg("proxy")
                .arg("--listen=127.0.0.1:0")
                .arg("--admin-listen=127.0.0.1:0")
                // The tests' upstreams are servers on loopback, as an operator allows them.
                .arg("--allow-upstream=127.0.0.0/8")
                .args(extra)
                .env("DATABASE_URL", database_url)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null()),
            "meshploy proxy: listening on",
        );
        let [port, admin] = addresses[..] else {
            panic!("the proxy announced {addresses:?}, not its two listeners");
        };
        Proxy {
            process,
            port: port.port(),
            admin: admin.port(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// One metric's value from `/metrics`.
    fn metric(&self, name: &str) -> f64 {
        let mut stream = TcpStream::connect(("127.0.0.1", self.admin)).expect("admin");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .expect("ask for metrics");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    fn rss_peak_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .expect("VmHWM")
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        self.process.terminate()
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Serves `router` on a loopback port of `rt` and returns the port.
fn serve(rt: &Runtime, router: Router) -> u16 {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind an upstream");
    let port = listener.local_addr().expect("upstream address").port();
    rt.spawn(axum::serve(listener, router).into_future());
    port
}

/// An upstream that answers every request with its own name, the URI and the headers it got.
fn echo(rt: &Runtime, name: &'static str) -> u16 {
    serve(
        rt,
        Router::new().fallback(any(move |request: Request| async move {
            let headers: BTreeMap<String, String> = request
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_owned()))
                .collect();
            axum::Json(serde_json::json!({
                "name": name,
                "uri": request.uri().to_string(),
                "headers": headers,
            }))
        })),
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("HTTP client")
}

/// GET through the proxy with a Host header: the status and the JSON or text body.
async fn get_via(
    client: &reqwest::Client,
    proxy: &Proxy,
    host: &str,
    path: &str,
) -> (u16, serde_json::Value) {
    let response = client
        .get(proxy.url(path))
        .header("host", host)
        .send()
        .await
        .expect("request through the proxy");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, body)
}

fn route(name: &str, host: &str, path: &str, target: &str, strip: bool) -> String {
    format!(
        "apiVersion: meshploy.dev/v1\nkind: Route\nmetadata:\n  name: {name}\n  project: shop\nspec:\n  host: \"{host}\"\n  path: {path}\n  {target}\n  stripPrefix: {strip}\n"
    )
}

const WEB: &str = "apiVersion: meshploy.dev/v1\nkind: Service\nmetadata:\n  name: web\n  project: shop\nspec:\n  image: registry.example.com/web:1\n  port: 8080\n";

fn apply(db: &Db, dir: &Dir) {
    let run = db.meshploy(dir, &["apply", ".", "--auto-approve"]);
    assert_eq!(run.code, 0, "apply failed: {}", run.stderr);
}

/// A database where project `shop` routes `host` to an upstream on a loopback port.
fn upstream_db(host: &str, port: u16) -> Db {
    let db = Db::new();
    let dir = Dir::new();
    dir.write("project.yaml", PROJECT);
    let target = format!("upstream: http://127.0.0.1:{port}");
    dir.write("route.yaml", route("up", host, "/", &target, false));
    apply(&db, &dir);
    db
}

/// Rows of the `endpoints` table for service `web` port 8080.
fn set_endpoints(db: &Db, ports: &[u16]) {
    let values: Vec<String> = ports
        .iter()
        .map(|p| format!("('shop', 'web', 8080, '127.0.0.1:{p}')"))
        .collect();
    let insert = if values.is_empty() {
        String::new()
    } else {
        format!(
            "INSERT INTO endpoints (project, service, port, address) VALUES {};",
            values.join(", ")
        )
    };
    db.psql(&format!("BEGIN; DELETE FROM endpoints; {insert} COMMIT;"));
}

#[test]
fn routes_by_exact_wildcard_and_longest_prefix_with_forwarded_headers_as_a_read_only_role() {
    let rt = runtime();
    let ports: Vec<u16> = ["root", "api", "wild", "v1"]
        .iter()
        .map(|name| echo(&rt, name))
        .collect();
    let db = Db::new();
    let dir = Dir::new();
    dir.write("project.yaml", PROJECT);
    let upstream = |i: usize, base: &str| format!("upstream: http://127.0.0.1:{}{base}", ports[i]);
    dir.write(
        "routes.yaml",
        [
            route("root", "shop.test", "/", &upstream(0, ""), false),
            route("api", "shop.test", "/api", &upstream(1, "/base"), true),
            route("wild", "*.shop.test", "/", &upstream(2, ""), false),
            route("v1", "api.shop.test", "/v1", &upstream(3, ""), false),
        ]
        .join("---\n"),
    );
    apply(&db, &dir);

    // The proxy connects as a login role holding only `meshploy_proxy`.
    let role = crate::fixtures::proxy_login(&db);
    let denied = db
        .psql_command_as(&role)
        .args(["-c", "DELETE FROM routes"])
        .output()
        .expect("psql as the proxy role");
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("permission denied"),
        "the proxy role may write: {denied:?}"
    );
    let proxy = Proxy::start(&db.url_as(&role), &["--max-header-size=8192"]);
    let client = client();
    rt.block_on(async {
        let cases = [
            ("shop.test", "/", "root", "/"),
            ("SHOP.test:8080", "/x?q=1", "root", "/x?q=1"),
            ("shop.test", "/apiary", "root", "/apiary"),
            ("shop.test", "/api", "api", "/base"),
            ("shop.test", "/api/users?id=7", "api", "/base/users?id=7"),
            ("www.shop.test", "/anything", "wild", "/anything"),
            ("api.shop.test", "/v1/items", "v1", "/v1/items"),
        ];
        for (host, path, name, uri) in cases {
            let (status, body) = get_via(&client, &proxy, host, path).await;
            assert_eq!(status, 200, "{host}{path}: {body}");
            assert_eq!(body["name"], name, "{host}{path}");
            assert_eq!(body["uri"], uri, "{host}{path}");
        }
        // An exact host with no matching path is not handed to the wildcard; one wildcard
        // label only; unknown hosts are 404 with a short body of the proxy's own.
        for (host, path) in [
            ("api.shop.test", "/v2"),
            ("a.b.shop.test", "/"),
            ("elsewhere.test", "/"),
        ] {
            let (status, body) = get_via(&client, &proxy, host, path).await;
            assert_eq!(status, 404, "{host}{path}");
            assert_eq!(body, "not found: no route for this host and path\n");
        }

        // Forwarded headers, the request id, hop-by-hop headers.
        let response = client
            .get(proxy.url("/"))
            .header("host", "shop.test")
            .header("x-forwarded-for", "203.0.113.9")
            .header("connection", "x-hop")
            .header("x-hop", "drop me")
            .header("x-request-id", "req-1234")
            .send()
            .await
            .expect("request");
        assert_eq!(response.headers()["x-request-id"], "req-1234");
        let body: serde_json::Value = response.json().await.expect("json");
        let headers = &body["headers"];
        assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "shop.test");
        assert_eq!(headers["x-request-id"], "req-1234");
        assert_eq!(headers["host"], format!("127.0.0.1:{}", ports[0]));
        assert!(headers.get("x-hop").is_none(), "{headers}");
        let (_, made) = get_via(&client, &proxy, "shop.test", "/").await;
        let id = made["headers"]["x-request-id"].as_str().unwrap_or_default();
        assert_eq!(id.len(), 32, "a generated request id: {id:?}");

        // h2c: HTTP/2 without TLS, by prior knowledge.
        let h2 = reqwest::Client::builder()
            .no_proxy()
            .http2_prior_knowledge()
            .resolve("shop.test", ([127, 0, 0, 1], proxy.port).into())
            .build()
            .expect("h2c client");
        let response = h2
            .get(format!("http://shop.test:{}/api/h2", proxy.port))
            .send()
            .await
            .expect("h2c request");
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(body["uri"], "/base/h2");

        // A request head over the limit is refused before it reaches anyone.
        let response = client
            .get(proxy.url("/"))
            .header("host", "shop.test")
            .header("x-big", "a".repeat(10_000))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 431);
    });
    assert_eq!(proxy.metric("meshploy_proxy_routes"), 4.0);
    assert_eq!(
        proxy.metric("meshploy_proxy_requests_total{status=\"404\"}"),
        3.0
    );
    assert!(proxy.metric("meshploy_proxy_upstream_latency_seconds_count") >= 10.0);
}

#[test]
fn round_robin_over_endpoints_ejects_dead_ones_and_says_503_when_none_is_left() {
    let rt = runtime();
    let live: Vec<u16> = ["e1", "e2", "e3"].iter().map(|n| echo(&rt, n)).collect();
    let dead = closed_port();
    let db = Db::new();
    let dir = Dir::new();
    dir.write("project.yaml", PROJECT);
    dir.write("web.yaml", WEB);
    dir.write(
        "route.yaml",
        route("web", "web.test", "/", "service: web", false),
    );
    apply(&db, &dir);
    set_endpoints(&db, &[live[0], dead, live[1], live[2]]);
    let proxy = Proxy::start(&db.url(), &["--eject-for=30s"]);
    let client = client();
    rt.block_on(async {
        let mut seen = BTreeMap::new();
        for _ in 0..12 {
            let (status, body) = get_via(&client, &proxy, "web.test", "/").await;
            assert_eq!(status, 200, "{body}");
            *seen
                .entry(body["name"].as_str().unwrap_or("?").to_owned())
                .or_insert(0) += 1;
        }
        // The dead endpoint cost no request (a body-less request moves on to the next
        // endpoint), and after its ejection the three live ones share the load evenly.
        assert_eq!(seen.values().sum::<i32>(), 12);
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen.values().all(|&n| (3..=5).contains(&n)), "{seen:?}");

        // An HTTP/2 client's :authority reaches the service as its Host, as HTTP/1.1's would.
        let h2 = reqwest::Client::builder()
            .no_proxy()
            .http2_prior_knowledge()
            .resolve("web.test", ([127, 0, 0, 1], proxy.port).into())
            .build()
            .expect("h2c client");
        let body: serde_json::Value = h2
            .get(format!("http://web.test:{}/h2", proxy.port))
            .send()
            .await
            .expect("h2c request")
            .json()
            .await
            .expect("json");
        assert_eq!(body["headers"]["host"], format!("web.test:{}", proxy.port));

        // A request with a body is not repeated: a dead endpoint alone gives 502, then 503
        // while it is ejected.
        set_endpoints(&db, &[closed_port()]);
        let routed = wait_for(Duration::from_secs(5), || {
            let (status, _) = rt_free_get(&proxy, "web.test");
            (status != 200).then_some(status)
        });
        assert!(
            routed.is_some(),
            "the endpoint change never reached the proxy"
        );
        let post = || {
            client
                .post(proxy.url("/"))
                .header("host", "web.test")
                .body("payload")
                .send()
        };
        let response = post().await.expect("post");
        assert_eq!(response.status().as_u16(), 503);
        set_endpoints(&db, &[closed_port()]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let response = post().await.expect("post");
        assert_eq!(response.status().as_u16(), 502);
        assert_eq!(
            response.text().await.expect("body"),
            "bad gateway: the upstream failed\n"
        );
        let (status, body) = get_via(&client, &proxy, "web.test", "/").await;
        assert_eq!(status, 503);
        assert_eq!(body, "service unavailable: no healthy endpoint\n");
        set_endpoints(&db, &[]);
    });
    assert!(proxy.metric("meshploy_proxy_requests_total{status=\"503\"}") >= 2.0);
}

/// A blocking GET through the proxy, for polling from outside the runtime.
fn rt_free_get(proxy: &Proxy, host: &str) -> (u16, String) {
    raw(
        proxy,
        &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
}

/// Sends `request` exactly as written (no client normalises it) and reads the whole answer.
fn raw(proxy: &Proxy, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    (status_of(&response), response)
}

#[test]
fn websockets_and_100_mb_bodies_stream_through_with_bounded_memory() {
    const SIZE: u64 = 100 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let rt = runtime();
    let upstream = serve(
        &rt,
        Router::new()
            .route(
                "/ws",
                get(|ws: WebSocketUpgrade| async {
                    ws.on_upgrade(|mut socket| async move {
                        while let Some(Ok(message)) = socket.recv().await {
                            if matches!(message, Message::Text(_) | Message::Binary(_))
                                && socket.send(message).await.is_err()
                            {
                                break;
                            }
                        }
                    })
                }),
            )
            .route(
                "/upload",
                post(|request: Request| async move {
                    let mut body = request.into_body().into_data_stream();
                    let mut total = 0u64;
                    while let Some(Ok(chunk)) = body.next().await {
                        total += chunk.len() as u64;
                    }
                    total.to_string()
                }),
            )
            .route(
                "/download",
                get(|| async {
                    let chunks =
                        futures_util::stream::iter((0..SIZE / CHUNK as u64).map(|_| {
                            Ok::<_, std::io::Error>(bytes::Bytes::from(vec![7u8; CHUNK]))
                        }));
                    axum::body::Body::from_stream(chunks)
                }),
            ),
    );
    let db = upstream_db("stream.test", upstream);
    let proxy = Proxy::start(&db.url(), &[]);
    let before = proxy.rss_peak_kib();
    rt.block_on(async {
        // WebSocket echo, text and binary, through the proxy.
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
            .await
            .expect("connect");
        let request = tokio_tungstenite::tungstenite::handshake::client::Request::builder()
            .uri("ws://stream.test/ws")
            .header("host", "stream.test")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header(
                "sec-websocket-key",
                tokio_tungstenite::tungstenite::handshake::client::generate_key(),
            )
            .body(())
            .expect("handshake request");
        let (mut ws, response) = tokio_tungstenite::client_async(request, stream)
            .await
            .expect("websocket handshake through the proxy");
        assert_eq!(response.status().as_u16(), 101);
        for text in ["hello", "world"] {
            ws.send(tokio_tungstenite::tungstenite::Message::text(text))
                .await
                .expect("send");
            let echoed = ws.next().await.expect("an answer").expect("a message");
            assert_eq!(echoed.into_text().expect("text").as_str(), text);
        }
        ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![
            1u8, 2, 3,
        ]))
        .await
        .expect("send");
        let echoed = ws.next().await.expect("an answer").expect("a message");
        assert_eq!(echoed.into_data().as_ref(), [1, 2, 3]);

        let client = client();
        // 100 MB up: generated as it is sent, counted by the upstream as it arrives.
        let chunks = futures_util::stream::iter(
            (0..SIZE / CHUNK as u64)
                .map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![1u8; CHUNK]))),
        );
        let response = client
            .post(proxy.url("/upload"))
            .header("host", "stream.test")
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .expect("upload");
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.text().await.expect("count"), SIZE.to_string());
        // 100 MB down, counted as it arrives.
        let response = client
            .get(proxy.url("/download"))
            .header("host", "stream.test")
            .send()
            .await
            .expect("download");
        let mut body = response.bytes_stream();
        let mut total = 0u64;
        while let Some(chunk) = body.next().await {
            total += chunk.expect("chunk").len() as u64;
        }
        assert_eq!(total, SIZE);
    });
    let after = proxy.rss_peak_kib();
    assert!(
        after < before + 32 * 1024,
        "the proxy's peak memory grew from {before} KiB to {after} KiB moving 200 MB"
    );
}

#[test]
fn slow_clients_and_slow_upstreams_hit_their_timeouts_and_sigterm_drains() {
    let rt = runtime();
    let upstream = serve(
        &rt,
        Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    "late"
                }),
            )
            .route(
                "/second",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    "done"
                }),
            ),
    );
    let db = upstream_db("slow.test", upstream);
    let mut proxy = Proxy::start(
        &db.url(),
        &[
            "--header-timeout=1s",
            "--upstream-timeout=1s",
            "--idle-timeout=2s",
        ],
    );

    // A client that starts a request and never finishes its headers is cut off.
    let mut slow = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: slow.test\r\n")
        .expect("half a request");
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "the half-sent request was closed after {waited:?}"
    );

    let client = client();
    rt.block_on(async {
        let started = Instant::now();
        let response = client
            .get(proxy.url("/slow"))
            .header("host", "slow.test")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 504);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            response.text().await.expect("body"),
            "gateway timeout: the upstream did not answer in time\n"
        );
    });

    // SIGTERM while a request is in flight: it finishes, then the proxy exits cleanly.
    let port = proxy.port;
    let in_flight = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .write_all(b"GET /second HTTP/1.1\r\nHost: slow.test\r\nConnection: close\r\n\r\n")
            .expect("send");
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
    });
    std::thread::sleep(Duration::from_millis(200));
    let status = proxy.terminate();
    assert!(status.success(), "the proxy exited with {status}");
    let response = in_flight.join().expect("the in-flight request");
    assert!(
        response.starts_with("HTTP/1.1 200") && response.ends_with("done"),
        "{response}"
    );
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn a_flood_of_unknown_hosts_costs_a_bounded_number_of_database_lookups() {
    const REQUESTS: usize = 100_000;
    const CONNECTIONS: usize = 4;
    let db = upstream_db("known.test", 9);
    let proxy = Proxy::start(&db.url(), &[]);
    let started = Instant::now();
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let port = proxy.port;
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                let mut reader = stream.try_clone().expect("clone the socket");
                let count = REQUESTS / CONNECTIONS;
                let counting = std::thread::spawn(move || {
                    // Every 404 body ends with this, once.
                    let needle = b"and path\n";
                    let (mut seen, mut tail) = (0, Vec::new());
                    let mut buffer = vec![0u8; 64 * 1024];
                    while seen < count {
                        let n = reader.read(&mut buffer).expect("read responses");
                        assert!(n > 0, "the proxy closed the connection after {seen}");
                        tail.extend_from_slice(&buffer[..n]);
                        seen += tail.windows(needle.len()).filter(|w| w == needle).count();
                        // Kept: too short to hold a whole needle, long enough for a split one.
                        tail.drain(..tail.len().saturating_sub(needle.len() - 1));
                    }
                    seen
                });
                let mut batch = String::new();
                for i in 0..count {
                    batch.push_str(&format!(
                        "GET / HTTP/1.1\r\nHost: h{c}x{i}.random.test\r\n\r\n"
                    ));
                    if batch.len() > 32 * 1024 {
                        stream.write_all(batch.as_bytes()).expect("send");
                        batch.clear();
                    }
                }
                stream.write_all(batch.as_bytes()).expect("send");
                counting.join().expect("counting")
            })
        })
        .collect();
    let answered: usize = workers.into_iter().map(|w| w.join().expect("worker")).sum();
    let elapsed = started.elapsed();
    assert_eq!(answered, REQUESTS);
    let lookups = proxy.metric("meshploy_proxy_db_lookups_total");
    // A burst of 20, then 10 per second, however many hosts.
    let bound = 20.0 + 10.0 * elapsed.as_secs_f64().ceil();
    assert!(
        lookups >= 1.0 && lookups <= bound,
        "{lookups} lookups for {REQUESTS} unknown hosts in {elapsed:?} (bound {bound})"
    );
    assert_eq!(
        proxy.metric("meshploy_proxy_requests_total{status=\"404\"}"),
        REQUESTS as f64
    );
}

#[test]
fn an_applied_route_is_live_within_100_ms_and_known_routes_outlive_postgresql() {
    let rt = runtime();
    let first = echo(&rt, "first");
    let second = echo(&rt, "second");
    // A cluster of its own, since this test stops it.
    let home = open_tempdir();
    let cluster = Cluster::new(&home.path().join("pg"))
        .expect("PostgreSQL binaries")
        .not_durable();
    cluster.start().expect("start a private cluster");
    let url = cluster.url("postgres").expect("the cluster's password");
    let dir = Dir::new();
    let apply = |dir: &Dir| {
        let output = meshploy()
            .current_dir(dir.path())
            .args(["apply", ".", "--auto-approve", "--allow-destroy"])
            .env("DATABASE_URL", &url)
            .output()
            .expect("apply");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    dir.write("project.yaml", PROJECT);
    dir.write(
        "a.yaml",
        route(
            "a",
            "a.test",
            "/",
            &format!("upstream: http://127.0.0.1:{first}"),
            false,
        ),
    );
    apply(&dir);
    let proxy = Proxy::start(&url, &["--resync-interval=1h"]);
    assert_eq!(rt_free_get(&proxy, "b.test").0, 404);

    // The apply returns after its commit; the NOTIFY goes out at commit.
    dir.write(
        "b.yaml",
        route(
            "b",
            "b.test",
            "/",
            &format!("upstream: http://127.0.0.1:{second}"),
            false,
        ),
    );
    apply(&dir);
    let applied = Instant::now();
    let live = wait_until(Duration::from_secs(5), || {
        rt_free_get(&proxy, "b.test").0 == 200
    });
    let latency = applied.elapsed();
    assert!(live, "the new route never reached the proxy");
    assert!(
        latency < Duration::from_millis(100),
        "the new route took {latency:?} to reach the proxy"
    );

    // PostgreSQL goes away: known routes keep working from memory.
    cluster.stop().expect("stop the cluster");
    let (status, body) = rt_free_get(&proxy, "a.test");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"first\""));
    assert!(wait_until(Duration::from_secs(5), || {
        proxy.metric("meshploy_proxy_route_table_load_failures_total") >= 1.0
    }));
    assert_eq!(rt_free_get(&proxy, "b.test").0, 200);
    assert_eq!(rt_free_get(&proxy, "unknown.test").0, 404);

    // It comes back: the proxy reconnects and follows changes again.
    cluster.start().expect("restart the cluster");
    assert!(wait_until(Duration::from_secs(10), || {
        proxy.metric("meshploy_proxy_route_table_loads_total") >= 3.0
    }));
    std::fs::remove_file(dir.path().join("b.yaml")).expect("remove b");
    apply(&dir);
    assert!(
        wait_until(Duration::from_secs(2), || rt_free_get(&proxy, "b.test").0
            == 404),
        "the deleted route is still served"
    );
    drop(proxy);
    cluster.stop().expect("stop the cluster");
}

/// An HTTP/1.1 upstream that counts the connections it accepts, answers every request on a
/// connection with `ok`, and closes a connection once it has been idle for `idle_close`.
fn counting_upstream(rt: &Runtime, idle_close: Duration) -> (u16, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind an upstream");
    let port = listener.local_addr().expect("upstream address").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    rt.spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let read = tokio::time::timeout(idle_close, stream.read(&mut buf)).await;
                    let Ok(Ok(n @ 1..)) = read else { return };
                    head.extend_from_slice(&buf[..n]);
                    // Requests here have no body: each blank line ends one.
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, accepted)
}

/// A GET on a kept-alive connection: the status and the body (read by its content-length).
fn get_on(stream: &mut TcpStream, host: &str) -> (u16, String) {
    write!(stream, "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let status = status_of(&head);
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("response body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn upstream_connections_are_reused_replaced_when_closed_and_idle_clients_are_cut_off() {
    let rt = runtime();
    let (pooled, accepted) = counting_upstream(&rt, Duration::from_millis(300));
    // An upstream that reads a whole request body before it answers.
    let upload = serve(
        &rt,
        Router::new().route("/", post(|body: String| async move { body })),
    );
    let db = Db::new();
    let dir = Dir::new();
    dir.write("project.yaml", PROJECT);
    for (name, port) in [("pool", pooled), ("upload", upload)] {
        let target = format!("upstream: http://127.0.0.1:{port}");
        let manifest = route(name, &format!("{name}.test"), "/", &target, false);
        dir.write(&format!("{name}.yaml"), manifest);
    }
    apply(&db, &dir);
    let proxy = Proxy::start(&db.url(), &["--idle-timeout=1s"]);

    // Requests one after another on one client connection share one upstream connection.
    let mut client = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
    for _ in 0..20 {
        assert_eq!(get_on(&mut client, "pool.test"), (200, "ok".to_owned()));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // The upstream closes it while idle; the next requests go out on a new one.
    std::thread::sleep(Duration::from_millis(600));
    for _ in 0..5 {
        assert_eq!(get_on(&mut client, "pool.test"), (200, "ok".to_owned()));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    // A client that sends its headers and part of its body, then nothing, is disconnected
    // after the idle timeout (1 s, checked every quarter of it) without an answer.
    let mut stalled = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
    stalled
        .write_all(b"POST / HTTP/1.1\r\nHost: upload.test\r\nContent-Length: 100\r\n\r\npart")
        .expect("part of a request");
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

/// Polls `check` every 2 ms until it holds or `timeout` passes.
/// Waits up to `timeout` for `check`, asking every 2 ms: fine enough to measure propagation.
fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    wait_every(Duration::from_millis(2), timeout, || check().then_some(())).is_some()
}

/// The JSON an `echo` upstream answered, from a raw response.
fn echoed(response: &str) -> serde_json::Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
}

/// A proxy in front of one `echo` upstream, with routes `api.test/api` (stripped, to the
/// upstream's `/public`), `app.test/app` and `*.wild.test`. The runtime serves the upstream.
fn hostile_setup() -> (Runtime, Db, Proxy) {
    let rt = runtime();
    let port = echo(&rt, "up");
    let db = Db::new();
    let dir = Dir::new();
    dir.write("project.yaml", PROJECT);
    let to = |base: &str| format!("upstream: http://127.0.0.1:{port}{base}");
    dir.write(
        "routes.yaml",
        [
            route("api", "api.test", "/api", &to("/public"), true),
            route("app", "app.test", "/app", &to(""), false),
            route("wild", "*.wild.test", "/", &to(""), false),
        ]
        .join("---\n"),
    );
    apply(&db, &dir);
    let proxy = Proxy::start(&db.url(), &[]);
    (rt, db, proxy)
}

fn get_raw(proxy: &Proxy, host: &str, target: &str) -> (u16, String) {
    raw(
        proxy,
        &format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
}

#[test]
fn paths_are_matched_and_forwarded_normalised_so_none_leaves_its_prefix() {
    let (_rt, _db, proxy) = hostile_setup();
    for target in [
        "/api/../secret.txt",
        "/api/%2e%2e/secret.txt",
        "/api/%2E%2E/secret.txt",
        "/api/./../secret.txt",
    ] {
        let (status, response) = get_raw(&proxy, "api.test", target);
        assert_eq!(status, 404, "{target} escaped its route:\n{response}");
    }
    for target in [
        "/api/..%2fsecret.txt",
        "/api/..%2Fsecret.txt",
        "/../secret.txt",
    ] {
        let (status, response) = get_raw(&proxy, "api.test", target);
        assert_eq!(status, 400, "{target}:\n{response}");
    }
    let (status, response) = get_raw(&proxy, "app.test", "/app/../admin");
    assert_eq!(
        status, 404,
        "/app/../admin reached the service:\n{response}"
    );
    for (target, forwarded) in [
        ("/api//../secret.txt", "/public/secret.txt"),
        ("/api/x/../v1", "/public/v1"),
        ("/api/%7Euser", "/public/~user"),
    ] {
        let (status, response) = get_raw(&proxy, "api.test", target);
        assert_eq!(status, 200, "{target}:\n{response}");
        assert_eq!(echoed(&response)["uri"], forwarded, "{target}");
    }
}

#[test]
fn two_hosts_an_empty_label_or_a_port_over_65535_are_bad_requests() {
    let (_rt, _db, proxy) = hostile_setup();
    let (status, _) = raw(
        &proxy,
        "GET / HTTP/1.1\r\nHost: a.wild.test\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 400, "two Host headers");
    assert_eq!(
        get_raw(&proxy, ".wild.test", "/").0,
        400,
        "an empty first label"
    );
    assert_eq!(
        get_raw(&proxy, "a.wild.test:99999", "/").0,
        400,
        "a port over 65535"
    );
    assert_eq!(get_raw(&proxy, "a.wild.test:8080", "/").0, 200);
}

#[test]
fn addresses_a_client_chose_never_reach_a_backend() {
    let (_rt, _db, proxy) = hostile_setup();
    let (status, response) = raw(
        &proxy,
        "GET / HTTP/1.1\r\nHost: a.wild.test\r\nForwarded: for=1.2.3.4\r\nX-Real-IP: 1.2.3.4\r\nX-Forwarded-Port: 443\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{response}");
    let headers = &echoed(&response)["headers"];
    assert_eq!(headers.get("forwarded"), None, "{headers}");
    assert_eq!(headers.get("x-forwarded-port"), None, "{headers}");
    assert_eq!(headers["x-real-ip"], "127.0.0.1", "{headers}");
}

#[test]
fn an_h2c_upgrade_is_forwarded_as_a_plain_request_not_spliced() {
    let (_rt, _db, proxy) = hostile_setup();
    let (status, response) = raw(
        &proxy,
        "GET / HTTP/1.1\r\nHost: a.wild.test\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    );
    assert_eq!(status, 200, "{response}");
    let headers = &echoed(&response)["headers"];
    assert_eq!(headers.get("upgrade"), None, "{headers}");
}
