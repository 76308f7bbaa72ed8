//! Builds and deployments with `meshploy up`: real git repositories, real builds, real
//! processes (a small Python HTTP server) behind the real proxy.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::fixtures::Process;
use crate::secret::{encrypt, keygen};
use crate::util::{Db, Dir, Remote, wait_for};

/// The service every test runs: answers `MESSAGE` (and, for `/secret`, whether `TOKEN` has
/// the value the test expects, without saying it), `/healthz` with `HEALTH_STATUS`; prints
/// what follows `/say/` in a path; with `CRASH_AFTER`, it dies that many seconds after it
/// starts, saying why.
pub const APP: &str = r#"import hashlib, os, sys, threading, time, http.server
port = int(os.environ["PORT"])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code, body = 200, os.environ.get("MESSAGE", "hello")
        if self.path == "/healthz":
            code = int(os.environ.get("HEALTH_STATUS", "200"))
        if self.path == "/secret":
            body = hashlib.sha256(os.environ.get("TOKEN", "").encode()).hexdigest()
        if self.path == "/built":
            body = open("built.txt").read().strip()
        if self.path.startswith("/say/"):
            print(self.path[len("/say/"):], flush=True)
        data = (body + "\n").encode()
        self.send_response(code)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
print("starting on", port, "with token", os.environ.get("TOKEN", "none"), flush=True)
if "CRASH_AFTER" in os.environ:
    def crash():
        time.sleep(float(os.environ["CRASH_AFTER"]))
        print("fatal: the cache is corrupt", flush=True)
        os._exit(3)
    threading.Thread(target=crash, daemon=True).start()
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

/// A pushed repository holding the app.
pub fn app_repo() -> Remote {
    let remote = Remote::new();
    remote.write("app/server.py", APP);
    // 100 MB of output (100,000 lines) before it serves.
    remote.write(
        "app/loud.sh",
        "head -c 100000000 /dev/zero | tr '\\0' x | fold -w 1000\nexec python3 server.py\n",
    );
    // Once, says its port and waits until the test has taken it before it listens.
    remote.write(
        "app/squat.sh",
        "if [ ! -e \"$HOME/squatted\" ]; then\n  touch \"$HOME/squatted\"\n  echo \"$PORT\" > \"$HOME/port\"\n  while [ ! -e \"$HOME/taken\" ]; do sleep 0.05; done\nfi\nexec python3 server.py\n",
    );
    remote.push("the app");
    remote
}

/// The `shop` project with service `web` built from `git` by `build` (a shell command) and
/// run as the app with `spec` lines added, and a route from web.test to it.
pub fn manifests(git: &Path, build: &str, spec: &str) -> String {
    format!(
        "apiVersion: meshploy.dev/v1\nkind: Project\nmetadata:\n  name: shop\n---\n\
         apiVersion: meshploy.dev/v1\nkind: Service\nmetadata:\n  name: web\n  project: shop\nspec:\n  \
         source:\n    git: {}\n    ref: main\n    path: app\n  build:\n    strategy: command\n    command: {build}\n  \
         command: python3 server.py\n  replicas: 2\n{spec}---\n\
         apiVersion: meshploy.dev/v1\nkind: Route\nmetadata:\n  name: web\n  project: shop\nspec:\n  host: web.test\n  service: web\n",
        git.display()
    )
}

/// Writes the manifests of `manifests` into `dir`, with a build that does nothing.
fn web(dir: &Dir, repo: &Remote, spec: &str) {
    dir.write("shop.yaml", manifests(&repo.bare(), "true", spec));
}

/// Writes `web` answering `message`, and its health check `status`, checked every second
/// and failed after two misses.
fn health_checked(dir: &Dir, repo: &Remote, status: u16, message: &str) {
    web(
        dir,
        repo,
        &format!(
            "  env:\n    MESSAGE: {message}\n    HEALTH_STATUS: \"{status}\"\n  healthCheck:\n    path: /healthz\n    periodSeconds: 1\n    failureThreshold: 2\n"
        ),
    );
}

/// `meshploy up` on a directory (or `serve` with a runtime), stopped with SIGTERM (as Ctrl-C
/// would) when dropped, so the services it runs stop with it.
pub struct Up {
    process: Option<Process>,
    /// The first address it announced: the proxy's for `up`, the API's for `serve`.
    address: SocketAddr,
    /// Its MESHPLOY_HOME, whose runtime records name the replicas it runs.
    home: Option<std::path::PathBuf>,
}

impl Up {
    pub fn start(db: &Db, dir: &Dir, args: &[&str]) -> Up {
        Up::of(db, dir, ".", args)
    }

    /// `meshploy up TARGET ARGS`, run in `dir`.
    fn of(db: &Db, dir: &Dir, target: &str, args: &[&str]) -> Up {
        let mut command = db.command(
            dir,
            &[
                "up",
                target,
                "--listen",
                "127.0.0.1:0",
                "--api-listen",
                "127.0.0.1:0",
                "--stop-grace",
                "2s",
                "--drain",
                "300ms",
            ],
        );
        command.args(args);
        Up::announced(&mut command)
    }

    pub fn announced(command: &mut std::process::Command) -> Up {
        Up::announcing(command, "meshploy up: proxy on")
    }

    /// Starts `command` and waits for its line that holds `announcement`.
    pub fn announcing(command: &mut std::process::Command, announcement: &str) -> Up {
        let home = command
            .get_envs()
            .find(|(name, _)| *name == "MESHPLOY_HOME")
            .and_then(|(_, value)| value.map(std::path::PathBuf::from));
        let (process, addresses) = Process::announced(command, announcement);
        Up {
            process: Some(process),
            address: addresses[0],
            home,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// SIGKILL: nothing of `up` gets to clean up.
    pub fn kill(&mut self) {
        drop(self.process.take());
    }

    pub fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, Process::id)
    }

    /// GET `path` on web.test through the proxy: the status and body, or `None` when the
    /// proxy could not be reached.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        get(self.address, "web.test", path)
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(process) = &mut self.process
            && !process.exited()
        {
            process.terminate();
        }
        // A test that failed half-way (or killed `up`) must not leave replicas running: tell
        // every supervisor the runtime still has a record of to kill its replica at once.
        let Some(Ok(records)) = self
            .home
            .as_ref()
            .map(|h| std::fs::read_dir(h.join("runtime/replicas")))
        else {
            return;
        };
        for entry in records.flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            if let Some(pid) = text.split_whitespace().next() {
                let _ = std::process::Command::new("kill")
                    .args(["-USR1", pid])
                    .status();
            }
        }
    }
}

pub fn get(proxy: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(proxy).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = crate::util::status_of(&response);
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_owned();
    Some((status, body))
}

/// The deployments of `shop/web` as `id|state|trigger|reason|degraded`, oldest first.
pub fn deployments(db: &Db) -> Vec<String> {
    let rows = db.psql(
        "SELECT id || '|' || state || '|' || trigger || '|' || replace(coalesce(reason, ''), E'\\n', ' / ') || '|' || coalesce(degraded, '') \
         FROM deployments ORDER BY id",
    );
    rows.lines().map(str::to_owned).collect()
}

/// Waits until the newest deployment reaches `state`; returns its row.
fn newest_in(db: &Db, state: &str, timeout: Duration) -> String {
    wait_for(timeout, || {
        deployments(db)
            .last()
            .filter(|row| row.split('|').nth(1) == Some(state))
            .cloned()
    })
    .unwrap_or_else(|| panic!("no deployment became {state}: {:#?}", deployments(db)))
}

/// Waits until the proxy answers web.test's `path` with `body`.
pub fn serves(up: &Up, path: &str, body: &str, timeout: Duration) {
    let found = wait_for(timeout, || {
        up.get(path).filter(|(_, b)| b == body).map(|_| ())
    });
    assert!(
        found.is_some(),
        "web.test{path} did not answer `{body}`; last answer {:?}",
        up.get(path)
    );
}

pub const ROLLOUT: Duration = Duration::from_secs(60);

#[test]
fn a_source_service_is_built_by_its_command_and_served_through_the_proxy() {
    let (db, dir, repo) = (Db::new(), Dir::new(), app_repo());
    dir.write(
        "shop.yaml",
        manifests(
            &repo.bare(),
            "echo compiling; echo built at build time > built.txt",
            "  env:\n    MESSAGE: first\n",
        ),
    );
    let up = Up::start(&db, &dir, &[]);
    serves(&up, "/", "first", ROLLOUT);
    assert_eq!(
        up.get("/built"),
        Some((200, "built at build time".into())),
        "the replica runs in the build's output"
    );
    let row = newest_in(&db, "healthy", ROLLOUT);
    assert!(row.contains("|revision|"), "{row}");
    // Both replicas answer, each on its own port, through the proxy's endpoints.
    let endpoints = db.psql("SELECT count(DISTINCT address) FROM endpoints WHERE service = 'web'");
    assert_eq!(endpoints, "2");
    let build = db.meshploy(&dir, &["logs", "shop/web", "--build"]);
    assert_eq!(build.code, 0, "{}", build.stderr);
    assert!(build.stdout.contains("compiling"), "{}", build.stdout);
    assert!(
        build.stdout.contains("[meshploy] checked out"),
        "{}",
        build.stdout
    );
    // Lines reach the database within a second of being printed.
    logs_with(
        &db,
        &dir,
        &["logs", "web"],
        &["[0] starting on", "[1] starting on"],
    );
    let listed = db
        .meshploy(&dir, &["deployments", "--format", "json"])
        .json();
    assert_eq!(listed[0]["state"], "healthy");
    assert_eq!(listed[0]["commit"].as_str().map(str::len), Some(40));

    // A change to the route alone is applied, and is not a new release: the same replicas
    // serve the new host.
    let applied = db.psql("SELECT count(*) FROM revisions");
    let text = std::fs::read_to_string(dir.path().join("shop.yaml")).expect("read");
    dir.write(
        "shop.yaml",
        text.replace("host: web.test", "host: www.test"),
    );
    wait_for(Duration::from_secs(30), || {
        (db.psql("SELECT count(*) FROM revisions") != applied).then_some(())
    })
    .expect("the route change is applied");
    let found = wait_for(Duration::from_secs(10), || {
        get(up.address, "www.test", "/").filter(|(_, body)| body == "first")
    });
    assert!(found.is_some(), "www.test is not served");
    // The controller has woken on the apply; give it a resync too.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(deployments(&db).len(), 1, "{:#?}", deployments(&db));
}

#[test]
fn an_env_change_rolls_out_while_requests_flow_with_none_failing() {
    let (db, dir, repo) = (Db::new(), Dir::new(), app_repo());
    let write = |message: &str| {
        web(
            &dir,
            &repo,
            &format!(
                "  env:\n    MESSAGE: {message}\n  healthCheck:\n    path: /healthz\n    periodSeconds: 1\n"
            ),
        )
    };
    write("before");
    let up = Up::start(&db, &dir, &[]);
    serves(&up, "/", "before", ROLLOUT);
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = {
        let (stop, sent, failed, proxy) = (stop.clone(), sent.clone(), failed.clone(), up.address);
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                sent.fetch_add(1, Ordering::SeqCst);
                match get(proxy, "web.test", "/") {
                    Some((200, body)) if body == "before" || body == "after" => answers.push(body),
                    other => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        eprintln!("failed request: {other:?}");
                    }
                }
            }
            answers
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    write("after");
    serves(&up, "/", "after", ROLLOUT);
    // Keep sending while the old replicas drain and stop.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    let answers = client.join().expect("the client thread");
    let sent = sent.load(Ordering::SeqCst);
    assert!(sent > 50, "only {sent} requests were sent");
    assert_eq!(failed.load(Ordering::SeqCst), 0, "of {sent} requests");
    assert_eq!(answers.last().map(String::as_str), Some("after"));
    let rows = deployments(&db);
    assert!(rows[0].contains("|superseded|"), "{rows:#?}");
    assert!(rows[1].contains("|healthy|"), "{rows:#?}");
}

#[test]
fn a_release_that_fails_its_health_check_fails_and_the_old_one_keeps_serving() {
    let (db, dir, repo) = (Db::new(), Dir::new(), app_repo());
    let write = |status: u16, message: &str| health_checked(&dir, &repo, status, message);
    write(200, "good");
    let up = Up::start(&db, &dir, &[]);
    serves(&up, "/", "good", ROLLOUT);
    write(503, "broken");
    let row = newest_in(&db, "failed", ROLLOUT);
    assert!(
        row.contains("failed its health check 2 times in a row: GET /healthz answered 503"),
        "{row}"
    );
    assert_eq!(
        up.get("/"),
        Some((200, "good".into())),
        "the old release serves"
    );
    assert!(deployments(&db)[0].contains("|healthy|"));
}

#[test]
fn a_replica_that_keeps_crashing_marks_its_deployment_degraded_with_the_exit_code_and_last_line() {
    let (db, dir, repo) = (Db::new(), Dir::new(), app_repo());
    web(&dir, &repo, "  env:\n    CRASH_AFTER: \"1.5\"\n");
    let _up = Up::start(&db, &dir, &[]);
    let degraded = wait_for(Duration::from_secs(60), || {
        let run = db.meshploy(&dir, &["deployments", "shop/web"]);
        run.stdout.contains("degraded:").then_some(run.stdout)
    })
    .unwrap_or_else(|| panic!("not degraded: {:#?}", deployments(&db)));
    assert!(
        degraded.contains("exited with code 3: fatal: the cache is corrupt"),
        "{degraded}"
    );
    let logs = db.meshploy(&dir, &["logs", "shop/web"]);
    assert!(
        logs.stdout
            .contains("[meshploy] the replica exited with code 3; starting it again"),
        "{}",
        logs.stdout
    );
}

#[test]
fn a_failed_build_fails_its_deployment_with_the_log_kept() {
    let (db, dir, repo) = (Db::new(), Dir::new(), app_repo());
    dir.write(
        "shop.yaml",
        manifests(
            &repo.bare(),
            "'echo compiling; echo \"error: expected one of ; or }\" >&2; exit 2'",
            "",
        ),
    );
    let _up = Up::start(&db, &dir, &[]);
    let row = newest_in(&db, "failed", ROLLOUT);
    assert!(
        row.contains("the build failed: the build command exited with code 2"),
        "{row}"
    );
    assert!(row.contains("meshploy logs web --build"), "{row}");
    let logs = db.meshploy(&dir, &["logs", "shop/web", "--build"]);
    assert!(
        logs.stdout.contains("error: expected one of ; or }"),
        "{}",
        logs.stdout
    );
    assert_eq!(db.psql("SELECT count(*) FROM endpoints"), "0");
    // No replica ever ran: `logs` says why rather than printing nothing.
    let replicas = db.meshploy(&dir, &["logs", "web"]);
    replicas.assert_fails_with(
        "deployment 1 of service/shop/web failed before any replica started: the build failed",
    );
    assert!(
        replicas.stderr.contains("meshploy logs web --build"),
        "{}",
        replicas.stderr
    );
    db.meshploy(&dir, &["logs", "wbe"])
        .assert_fails_with("no service `wbe` is applied or was deployed; did you mean `web`?");
}

#[test]
fn a_rollback_pins_the_old_release_until_the_next_change_to_the_service() {
    let (db, dir, repo) = (Db::new(), Dir::new(), app_repo());
    let write = |message: &str| web(&dir, &repo, &format!("  env:\n    MESSAGE: {message}\n"));
    write("one");
    let up = Up::start(&db, &dir, &[]);
    serves(&up, "/", "one", ROLLOUT);
    // Following the serving deployment's log shows what its replicas print as they print it.
    logs_with(
        &db,
        &dir,
        &["logs", "web"],
        &["[0] starting on", "[1] starting on"],
    );
    let mut follow = db.command(&dir, &["logs", "web", "--follow", "--tail", "0"]);
    let mut follower = Process::spawn(follow.stdout(std::process::Stdio::piped()));
    let lines = follower.stdout_lines();
    write("two");
    serves(&up, "/", "two", ROLLOUT);
    newest_in(&db, "healthy", ROLLOUT);
    // The follower started at the end of deployment 1's log and moves on to deployment 2's.
    let first = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("a line while following");
    assert_eq!(first, "[meshploy] deployment 2:");
    let next = lines.recv_timeout(Duration::from_secs(10)).expect("a line");
    assert!(next.contains("] starting on"), "{next}");
    drop(follower);

    let rollback = db.meshploy(&dir, &["rollback", "web", "--wait", "60s"]);
    assert_eq!(rollback.code, 0, "{}{}", rollback.stdout, rollback.stderr);
    assert!(
        rollback
            .stdout
            .contains("Pinned service/shop/web to deployment 1"),
        "{}",
        rollback.stdout
    );
    assert!(
        rollback.stdout.contains("Rolled back"),
        "{}",
        rollback.stdout
    );
    assert_eq!(up.get("/"), Some((200, "one".into())));
    let listed = db.meshploy(&dir, &["deployments", "web"]);
    assert!(
        listed.stdout.contains("pinned to deployment 1"),
        "{}",
        listed.stdout
    );
    assert!(listed.stdout.contains("rolled-back"), "{}", listed.stdout);
    let status = db.meshploy(&dir, &["status"]);
    assert!(
        status.stdout.contains("service/shop/web: healthy")
            && status
                .stdout
                .contains("pinned to deployment 1 by a rollback"),
        "{}",
        status.stdout
    );
    // The controller wakes every few seconds and must not fight the pin.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(up.get("/"), Some((200, "one".into())));

    write("three");
    serves(&up, "/", "three", ROLLOUT);
    assert_eq!(
        db.psql("SELECT count(*) FROM pins"),
        "0",
        "the change released the pin"
    );
    let bad = db.meshploy(&dir, &["rollback", "shop/nothing"]);
    bad.assert_fails_with("no service `shop/nothing` is applied or was deployed");
    let never = db.meshploy(&dir, &["rollback", "web", "--to", "999"]);
    never.assert_fails_with("deployment 999 does not exist");
}

#[test]
fn after_a_sigkill_the_replicas_stop_and_a_restart_serves_the_last_healthy_release() {
    let (db, dir, repo) = (Db::new(), Dir::new(), app_repo());
    web(&dir, &repo, "  env:\n    MESSAGE: kept\n");
    let mut first = Up::start(&db, &dir, &[]);
    serves(&first, "/", "kept", ROLLOUT);
    let old: Vec<u16> = db
        .psql("SELECT split_part(address, ':', 2) FROM endpoints")
        .lines()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(old.len(), 2);
    // SIGKILL: nothing of `up` runs any more, and its replicas' supervisors stop them (they
    // die with it), within their grace.
    first.kill();
    for port in &old {
        assert!(
            wait_for(Duration::from_secs(5), || {
                std::net::TcpStream::connect(("127.0.0.1", *port))
                    .is_err()
                    .then_some(())
            })
            .is_some(),
            "a replica on {port} outlived its `up`"
        );
    }
    let second = Up::start(&db, &dir, &[]);
    serves(&second, "/", "kept", ROLLOUT);
    for port in &old {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", *port)).is_err(),
            "the orphan on port {port} still runs"
        );
    }
    let rows = deployments(&db);
    assert!(
        rows.last().is_some_and(|r| r.contains("|healthy|restart|")),
        "{rows:#?}"
    );
}

#[test]
fn a_sealed_secret_reaches_the_process_and_nothing_else() {
    const TOKEN: &str = "tok_live_4b1d_never_print";
    let (db, dir, repo) = (Db::new(), Dir::new(), app_repo());
    let keys = keygen("k1");
    let place = ["--project", "shop", "--group", "creds", "--name", "TOKEN"];
    let sealed = encrypt(&keys, &place, TOKEN.as_bytes());
    assert_eq!(sealed.code, 0, "{}", sealed.stderr);
    let group = format!(
        "apiVersion: meshploy.dev/v1\nkind: VariableGroup\nmetadata:\n  name: creds\n  project: shop\nspec:\n  secrets:\n    TOKEN: {}\n",
        sealed.stdout.trim()
    );
    dir.write("creds.yaml", group);
    dir.write(
        "shop.yaml",
        manifests(
            &repo.bare(),
            "echo building with $TOKEN",
            "  variableGroups: [creds]\n",
        ),
    );
    let mut command = db.command(&dir, &UP_HERE);
    command
        .env("MESHPLOY_SECRET_KEYS", &keys)
        .env("RUST_LOG", "debug");
    let up = Up::announced(&mut command);
    let digest = crate::util::sha256_hex(TOKEN.as_bytes());
    serves(&up, "/secret", &digest, ROLLOUT);
    let logs = logs_with(&db, &dir, &["logs", "web"], &["with token (redacted)"]);
    let build = logs_with(
        &db,
        &dir,
        &["logs", "web", "--build"],
        &["building with (redacted)"],
    );
    let mut seen = logs + &build + &db.dump();
    for args in [
        &["deployments", "--format", "json"][..],
        &["history"],
        &["show", "1", "--format", "json"],
    ] {
        seen.push_str(&db.meshploy(&dir, args).stdout);
    }
    assert!(!seen.contains(TOKEN), "the secret leaked");
    let on_disk = grep(db.home(), TOKEN.as_bytes());
    assert_eq!(on_disk, Vec::<String>::new(), "the secret is on disk");
}

/// The output of `meshploy ARGS` once it contains every one of `wanted`.
pub fn logs_with(db: &Db, dir: &Dir, args: &[&str], wanted: &[&str]) -> String {
    let mut last = String::new();
    wait_for(Duration::from_secs(10), || {
        last = db.meshploy(dir, args).stdout;
        wanted.iter().all(|w| last.contains(w)).then_some(())
    })
    .unwrap_or_else(|| panic!("`{}` never showed {wanted:?}:\n{last}", args.join(" ")));
    last
}

/// Files under `dir` (recursively) that contain `needle`.
fn grep(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            // The embedded database is checked through pg_dump instead.
            if path.file_name().is_some_and(|n| n == "postgres") {
                continue;
            }
            found.extend(grep(&path, needle));
        } else if kind.is_file()
            && std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        {
            found.push(path.display().to_string());
        }
    }
    found
}

#[test]
fn bad_sources_and_commands_end_in_clear_reasons_and_nothing_half_done() {
    let (db, dir, repo) = (Db::new(), Dir::new(), app_repo());
    let service = |name: &str, body: &str| {
        format!(
            "---\napiVersion: meshploy.dev/v1\nkind: Service\nmetadata:\n  name: {name}\n  project: shop\nspec:\n{body}"
        )
    };
    let source = |reference: &str| {
        format!(
            "  source:\n    git: {}\n    ref: {reference}\n    path: app\n",
            repo.bare().display()
        )
    };
    let mut text =
        "apiVersion: meshploy.dev/v1\nkind: Project\nmetadata:\n  name: shop\n".to_owned();
    text += &service(
        "noref",
        &format!(
            "{}  build:\n    strategy: none\n  command: python3 server.py\n",
            source("no-such-branch")
        ),
    );
    text += &service(
        "silent",
        &format!(
            "{}  build:\n    strategy: none\n  command: sleep 600\n",
            source("main")
        ),
    );
    text += &service(
        "hang",
        &format!(
            "{}  build:\n    strategy: command\n    command: sleep 600\n  command: python3 server.py\n",
            source("main")
        ),
    );
    text += &service("image", "  image: nginx:1.27\n");
    text += &service(
        "auto",
        &format!("{}  command: python3 server.py\n", source("main")),
    );
    text += &service(
        "ok",
        &format!(
            "{}  build:\n    strategy: none\n  command: python3 server.py\n",
            source("main")
        ),
    );
    dir.write("shop.yaml", text);
    let _up = Up::start(
        &db,
        &dir,
        &["--rollout-timeout", "3s", "--build-timeout", "2s"],
    );
    let reasons = wait_for(Duration::from_secs(60), || {
        let rows = db.psql("SELECT service || ': ' || state || ': ' || coalesce(reason, '') FROM deployments ORDER BY service");
        let settled = rows.lines().count() == 6
            && rows.lines().all(|r| r.contains(": failed: ") || r.contains(": healthy: "));
        settled.then_some(rows)
    })
    .unwrap_or_else(|| panic!("not settled: {}", db.psql("SELECT service, state FROM deployments")));
    let expect = [
        ("auto: failed", "strategy `auto` found no Dockerfile"),
        ("hang: failed", "the build ran past its timeout of 2 s"),
        ("image: failed", "needs a container engine"),
        (
            "noref: failed",
            "`no-such-branch` is not a branch, tag or commit",
        ),
        ("ok: healthy", ""),
        ("silent: failed", "did not accept connections on its PORT"),
    ];
    for (line, (head, fragment)) in reasons.lines().zip(expect) {
        assert!(
            line.starts_with(head) && line.contains(fragment),
            "`{line}` should be `{head}` with `{fragment}`"
        );
    }
    // Nothing half-done: no endpoints but ok's, no build directory left in the making, and
    // no process of the failed services still running.
    assert_eq!(db.psql("SELECT DISTINCT service FROM endpoints"), "ok");
    let builds = std::fs::read_dir(db.home().join("builds"))
        .expect("builds")
        .flatten();
    let making: Vec<String> = builds
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert_eq!(making, Vec::<String>::new());
    assert!(pgrep("sleep 600").is_empty(), "{:?}", pgrep("sleep 600"));
}

/// Pids of processes whose command line contains `pattern`.
fn pgrep(pattern: &str) -> Vec<String> {
    let output = std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_process_that_prints_100_mb_keeps_a_bounded_log_and_memory() {
    let (db, dir, repo) = (Db::new(), Dir::new(), app_repo());
    dir.write(
        "shop.yaml",
        manifests(&repo.bare(), "true", "  env:\n    MESSAGE: loud\n")
            .replace("command: python3 server.py", "command: sh loud.sh"),
    );
    // The rate is set high so that the line limit is what trims (the rate's own bound is
    // tested by isolation::a_flood_of_output_keeps_the_database_within_the_log_budget).
    let up = Up::start(&db, &dir, &["--log-lines", "1000", "--log-rate", "1GiB"]);
    serves(&up, "/", "loud", Duration::from_secs(300));
    let (lines, marker) = wait_for(Duration::from_secs(30), || {
        let lines: u64 = db
            .psql("SELECT count(*) FROM log_lines WHERE deployment_id IS NOT NULL AND replica = 0")
            .parse()
            .ok()?;
        let marker = db.psql("SELECT line FROM log_lines WHERE line LIKE '[meshploy] % earlier lines dropped%' AND replica = 0");
        (lines <= 1000 && !marker.is_empty()).then_some((lines, marker))
    })
    .expect("the log is trimmed with a marker");
    assert!(lines > 900, "{lines} lines kept");
    assert!(
        marker.contains("a stream keeps its last 1000 lines"),
        "{marker}"
    );
    let rss = std::fs::read_to_string(format!("/proc/{}/status", up.pid()))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    let kb: u64 = rss.trim_end_matches(" kB").parse().unwrap_or(u64::MAX);
    assert!(kb < 150_000, "meshploy up peaked at {rss}");
}

#[test]
fn the_readme_example_is_built_from_this_repository_and_served() {
    let (db, dir) = (Db::new(), Dir::new());
    let example = crate::util::repo_root().join("examples/local");
    let up = Up::of(&db, &dir, &example.display().to_string(), &[]);
    let answer = wait_for(Duration::from_secs(120), || {
        get(up.address, "hello.localhost", "/").filter(|(status, _)| *status == 200)
    });
    let (_, body) = answer.unwrap_or_else(|| panic!("not served: {:#?}", deployments(&db)));
    assert!(body.starts_with("Hello from the replica on port"), "{body}");
}

#[test]
fn the_serve_leader_runs_what_it_applies_from_git_and_stops_it_on_shutdown() {
    let (db, dir, app) = (Db::new(), Dir::new(), app_repo());
    let manifests_repo = Remote::new();
    manifests_repo.write(
        "deploy/shop.yaml",
        &manifests(&app.bare(), "true", "  env:\n    MESSAGE: from-git\n"),
    );
    manifests_repo.push("shop");
    let bare = manifests_repo.bare().display().to_string();
    let mut command = db.command(
        &dir,
        &[
            "serve",
            "--repo",
            &bare,
            "--name",
            "shop",
            "--path",
            "deploy",
            "--listen",
            "127.0.0.1:0",
            "--runtime",
            "local",
            "--stop-grace",
            "1s",
        ],
    );
    let (mut serve, _) = Process::announced(&mut command, "meshploy serve: API and console on");
    let address: SocketAddr = wait_for(Duration::from_secs(60), || {
        db.psql("SELECT address FROM endpoints ORDER BY address LIMIT 1")
            .parse()
            .ok()
    })
    .unwrap_or_else(|| panic!("nothing runs: {:#?}", deployments(&db)));
    assert_eq!(
        get(address, "web.test", "/"),
        Some((200, "from-git".into()))
    );
    assert!(serve.terminate().success());
    assert!(
        std::net::TcpStream::connect(address).is_err(),
        "the replica outlived serve"
    );
}

#[test]
fn a_port_taken_before_the_replica_listens_moves_the_replica_to_another() {
    let (db, dir, repo) = (Db::new(), Dir::new(), app_repo());
    dir.write(
        "shop.yaml",
        manifests(&repo.bare(), "true", "  env:\n    MESSAGE: moved\n")
            .replace("replicas: 2", "replicas: 1")
            .replace("command: python3 server.py", "command: sh squat.sh"),
    );
    let up = Up::start(&db, &dir, &[]);
    // Another process (this test: not one of the replica's, which would go with it) takes
    // the port the replica was given before it listens.
    let home = db.home().join("runtime/deployments/1/home");
    let port: u16 = wait_for(ROLLOUT, || {
        std::fs::read_to_string(home.join("port"))
            .ok()?
            .trim()
            .parse()
            .ok()
    })
    .expect("the replica says its port");
    // Bound but not listening, so the replica's health check is refused rather than
    // answered by the squatter.
    let mut squatter = Process::spawn(
        std::process::Command::new("python3")
            .args([
                "-c",
                "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); print('bound', flush=True); time.sleep(120)",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::piped()),
    );
    let bound = squatter
        .stdout_lines()
        .recv_timeout(Duration::from_secs(10));
    assert_eq!(bound.as_deref(), Ok("bound"), "the squatter took the port");
    std::fs::write(home.join("taken"), "").expect("tell the replica");
    serves(&up, "/", "moved", ROLLOUT);
    let logs = logs_with(
        &db,
        &dir,
        &["logs", "web"],
        &["was taken by another process"],
    );
    assert!(
        logs.contains("OSError") || logs.contains("Address already in use"),
        "{logs}"
    );
    drop(squatter);
}

#[test]
fn up_follows_a_repository_and_applies_each_push() {
    let (db, dir, app) = (Db::new(), Dir::new(), app_repo());
    let manifests_repo = Remote::new();
    let write = |message: &str| {
        manifests_repo.write(
            "deploy/shop.yaml",
            &manifests(
                &app.bare(),
                "true",
                &format!("  env:\n    MESSAGE: {message}\n"),
            ),
        );
        manifests_repo.push(message);
    };
    write("pushed-one");
    let bare = manifests_repo.bare().display().to_string();
    let mut command = db.command(
        &dir,
        &[
            "up",
            "--repo",
            &bare,
            "--path",
            "deploy",
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ],
    );
    let up = Up::announced(&mut command);
    serves(&up, "/", "pushed-one", ROLLOUT);
    write("pushed-two");
    serves(&up, "/", "pushed-two", ROLLOUT);
    assert_eq!(db.psql("SELECT DISTINCT source FROM services"), "up");
}

#[test]
fn ctrl_c_stops_the_replicas_and_the_embedded_database_and_a_second_one_stops_at_once() {
    let (dir, repo) = (Dir::new(), app_repo());
    let home = crate::util::open_tempdir();
    let _database = StopsDatabase::new(home.path());
    // `trap` makes the replicas ignore SIGTERM, so only the second Ctrl-C ends them quickly.
    dir.write(
        "shop.yaml",
        manifests(&repo.bare(), "true", "  env:\n    MESSAGE: stubborn\n").replace(
            "command: python3 server.py",
            "command: trap '' TERM; python3 server.py",
        ),
    );
    let command = |grace: &str| {
        let mut command = embedded_up(&dir, home.path());
        command.args(["--stop-grace", grace]);
        command
    };
    let db_status = || {
        crate::util::meshploy()
            .args(["db", "status"])
            .env("MESHPLOY_HOME", home.path())
            .status()
            .expect("db status")
            .code()
    };
    // The ports the replicas listen on, from what they printed.
    let ports = |up: &Up| -> Vec<u16> {
        serves(up, "/", "stubborn", ROLLOUT);
        let records =
            std::fs::read_dir(home.path().join("runtime/replicas")).expect("runtime records");
        assert_eq!(records.count(), 2, "one record per running replica");
        wait_for(Duration::from_secs(10), || {
            let output = crate::util::meshploy()
                .args(["logs", "web"])
                .env("MESHPLOY_HOME", home.path())
                .env_remove("DATABASE_URL")
                .output()
                .ok()?;
            let ports: Vec<u16> = String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter_map(|l| {
                    l.split("starting on ")
                        .nth(1)?
                        .split(' ')
                        .next()?
                        .parse()
                        .ok()
                })
                .collect();
            (ports.len() == 2).then_some(ports)
        })
        .expect("both replicas said where they listen")
    };

    // A killed process closes its sockets as it exits, which may be a moment after `up`
    // has; a port another test's process took since answers something else.
    let gone = |ports: &[u16]| {
        let answering = || {
            ports
                .iter()
                .filter(|port| {
                    let address = SocketAddr::from(([127, 0, 0, 1], **port));
                    get(address, "web.test", "/").is_some_and(|(_, body)| body == "stubborn")
                })
                .copied()
                .collect::<Vec<_>>()
        };
        let quiet = wait_for(Duration::from_secs(3), || {
            answering().is_empty().then_some(())
        });
        assert!(quiet.is_some(), "still served: {:?}", answering());
    };

    // One Ctrl-C: the replicas get their grace period, then the database stops.
    let mut first = Up::announced(&mut command("3s"));
    let running = ports(&first);
    let pid = first.pid();
    interrupt(pid);
    let stopped = first.process.as_mut().map(|p| p.finished().0);
    assert_eq!(stopped, Some(0));
    gone(&running);
    assert_eq!(db_status(), Some(3), "the embedded database stopped");

    // Two: no grace period; everything is gone at once.
    let mut second = Up::announced(&mut command("60s"));
    let running = ports(&second);
    let started = std::time::Instant::now();
    interrupt(second.pid());
    std::thread::sleep(Duration::from_millis(500));
    interrupt(second.pid());
    let code = second.process.as_mut().map(|p| p.finished().0);
    assert_eq!(code, Some(130));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    gone(&running);
}

/// `meshploy up .` with its proxy and API on ports the system picks.
const UP_HERE: [&str; 6] = [
    "up",
    ".",
    "--listen",
    "127.0.0.1:0",
    "--api-listen",
    "127.0.0.1:0",
];

/// `meshploy up .` in `dir` on the embedded database of `home`.
pub fn embedded_up(dir: &Dir, home: &Path) -> std::process::Command {
    let mut command = crate::util::meshploy();
    command
        .current_dir(dir.path())
        .args(UP_HERE)
        .env("MESHPLOY_HOME", home)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG");
    command
}

/// Stops the embedded database under a home when dropped, also when a test fails; as the
/// user whose database it is, when that is not root.
pub struct StopsDatabase {
    home: std::path::PathBuf,
    user: Option<u32>,
}

impl StopsDatabase {
    pub fn new(home: &Path) -> StopsDatabase {
        StopsDatabase {
            home: home.to_owned(),
            user: None,
        }
    }

    pub fn of_user(home: &Path, uid: u32) -> StopsDatabase {
        StopsDatabase {
            home: home.to_owned(),
            user: Some(uid),
        }
    }
}

impl Drop for StopsDatabase {
    fn drop(&mut self) {
        use std::os::unix::process::CommandExt;
        let mut command = crate::util::meshploy();
        command
            .args(["db", "stop"])
            .env("MESHPLOY_HOME", &self.home);
        if let Some(uid) = self.user {
            command.uid(uid).gid(uid);
        }
        let _ = command.status();
    }
}

fn interrupt(pid: u32) {
    std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill -INT");
}

/// Starts `command` and waits up to `timeout` for it to exit: its exit code and standard
/// error, or a panic naming what it printed if it is still running then.
fn exits_within(command: &mut std::process::Command, timeout: Duration) -> (i32, String) {
    let mut process = Process::spawn(
        command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped()),
    );
    if wait_for(timeout, || process.exited().then_some(())).is_none() {
        drop(process);
        panic!("still running after {timeout:?}");
    }
    process.finished()
}

/// `meshploy up ARGS` in `dir` against `db`, with its listeners on free ports.
fn up_command(db: &Db, dir: &Dir, args: &[&str]) -> std::process::Command {
    let mut command = db.command(
        dir,
        &[
            "up",
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ],
    );
    command.args(args);
    command
}

#[test]
fn a_second_up_on_the_same_home_refuses_and_touches_nothing_while_the_first_serves() {
    let (db, dir, repo) = (Db::new(), Dir::new(), app_repo());
    web(&dir, &repo, "  env:\n    MESSAGE: first\n");
    let up = Up::start(&db, &dir, &[]);
    serves(&up, "/", "first", ROLLOUT);
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = {
        let (stop, sent, failed, proxy) = (stop.clone(), sent.clone(), failed.clone(), up.address);
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                sent.fetch_add(1, Ordering::SeqCst);
                if get(proxy, "web.test", "/") != Some((200, "first".into())) {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let (code, stderr) = exits_within(&mut up_command(&db, &dir, &["."]), ROLLOUT);
    // Whatever the second one did, the first must have served throughout, and go on.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    client.join().expect("the client");
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "another `meshploy up` is running (pid {}) with this MESHPLOY_HOME",
            up.pid()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("stopped"), "{stderr}");
    assert_eq!(failed.load(Ordering::SeqCst), 0, "of {sent:?} requests");
    assert!(sent.load(Ordering::SeqCst) > 20, "{sent:?} requests");
    assert_eq!(deployments(&db).len(), 1, "{:#?}", deployments(&db));
}

#[test]
fn after_a_sigkill_the_last_healthy_release_serves_again_though_a_newer_one_failed() {
    let (db, dir, repo) = (Db::new(), Dir::new(), app_repo());
    let write = |status: u16, message: &str| health_checked(&dir, &repo, status, message);
    write(200, "good");
    let mut first = Up::start(&db, &dir, &[]);
    serves(&first, "/", "good", ROLLOUT);
    write(503, "broken");
    newest_in(&db, "failed", ROLLOUT);
    assert_eq!(first.get("/"), Some((200, "good".into())));
    first.kill();
    let second = Up::start(&db, &dir, &[]);
    serves(&second, "/", "good", ROLLOUT);
    let rows = deployments(&db);
    assert!(
        rows.last().is_some_and(|r| r.contains("|healthy|restart|")),
        "{rows:#?}"
    );
    let releases = db.psql("SELECT release_digest FROM deployments WHERE id IN (1, 3) ORDER BY id");
    let mut releases = releases.lines();
    assert_eq!(
        releases.next(),
        releases.next(),
        "deployment 3 runs release 1"
    );
}

#[test]
fn each_deployment_names_the_revision_its_release_came_from_after_group_edits_and_a_rollback() {
    let (db, dir, repo) = (Db::new(), Dir::new(), app_repo());
    let write = |greeting: &str| {
        let group = format!(
            "apiVersion: meshploy.dev/v1\nkind: VariableGroup\nmetadata:\n  name: greetings\n  project: shop\nspec:\n  variables:\n    MESSAGE: {greeting}\n"
        );
        dir.write("greetings.yaml", group);
        web(&dir, &repo, "  variableGroups: [greetings]\n");
    };
    write("hello");
    let up = Up::start(&db, &dir, &[]);
    serves(&up, "/", "hello", ROLLOUT);
    write("bonjour");
    serves(&up, "/", "bonjour", ROLLOUT);
    write("hola");
    serves(&up, "/", "hola", ROLLOUT);
    let rollback = db.meshploy(&dir, &["rollback", "web", "--wait", "60s"]);
    assert_eq!(rollback.code, 0, "{}", rollback.stderr);
    assert_eq!(up.get("/"), Some((200, "bonjour".into())));
    let revisions = |rows: &serde_json::Value| -> Vec<(i64, String)> {
        rows.as_array()
            .into_iter()
            .flatten()
            .rev()
            .map(|d| {
                let revision = d["revision_id"].as_i64().unwrap_or_default();
                (
                    revision,
                    d["trigger"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let listed = db
        .meshploy(&dir, &["deployments", "--format", "json"])
        .json();
    assert_eq!(
        revisions(&listed),
        [
            (1, "revision".to_owned()),
            (2, "revision".to_owned()),
            (3, "revision".to_owned()),
            (2, "rollback".to_owned())
        ]
    );
    // Each of those revisions holds the change its deployment shows.
    let second = db.meshploy(&dir, &["show", "2"]);
    assert!(
        second.stdout.contains("\"hello\" -> \"bonjour\""),
        "{}",
        second.stdout
    );
}

#[test]
fn up_refuses_a_missing_or_empty_directory_before_touching_anything() {
    let (db, dir) = (Db::new(), Dir::new());
    let (code, stderr) = exits_within(&mut up_command(&db, &dir, &["nowhere"]), ROLLOUT);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("cannot read manifest directory nowhere"),
        "{stderr}"
    );
    std::fs::create_dir(dir.path().join("empty")).expect("mkdir");
    dir.write("empty/notes.txt", "not a manifest");
    let (code, stderr) = exits_within(&mut up_command(&db, &dir, &["empty"]), ROLLOUT);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("no manifests in empty (no *.yaml or *.yml files)"),
        "{stderr}"
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'revisions'"),
        "0",
        "nothing was migrated, applied or started"
    );
}

#[test]
fn a_taken_port_stops_up_at_once_naming_the_flag_with_the_embedded_database_left_stopped() {
    let dir = Dir::new();
    let home = crate::util::open_tempdir();
    let _database = StopsDatabase::new(home.path());
    dir.write("shop.yaml", crate::fixtures::PROJECT);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    for (flag, other) in [("--listen", "--api-listen"), ("--api-listen", "--listen")] {
        let mut command = crate::util::meshploy();
        command
            .current_dir(dir.path())
            .args(["up", ".", flag, &address, other, "127.0.0.1:0"])
            .env("MESHPLOY_HOME", home.path())
            .env_remove("DATABASE_URL")
            .env_remove("RUST_LOG");
        let (code, stderr) = exits_within(&mut command, ROLLOUT);
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains(&format!("cannot listen on {address} ({flag})"))
                && stderr.contains(&format!("give another address with {flag}")),
            "{stderr}"
        );
        assert_eq!(stderr.matches("in use").count(), 1, "said once: {stderr}");
        let status = crate::util::meshploy()
            .args(["db", "status"])
            .env("MESHPLOY_HOME", home.path())
            .output()
            .expect("db status");
        assert_eq!(
            status.status.code(),
            Some(3),
            "the embedded database is not running"
        );
    }
}

/// A git server that answers while `answering` is set, and otherwise accepts connections and
/// never says a word: each connection is passed to `git daemon` on `port`, or held silent.
fn tarpit(port: u16, answering: Arc<AtomicBool>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let own = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for client in listener.incoming().flatten() {
            if !answering.load(Ordering::SeqCst) {
                held.push(client);
                continue;
            }
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                continue;
            };
            let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            };
            let (c, s) = (
                client.try_clone().expect("clone"),
                server.try_clone().expect("clone"),
            );
            pipe(client, server);
            pipe(s, c);
        }
    });
    own
}

#[test]
fn a_git_server_that_never_answers_delays_no_deployment_and_its_last_known_commit_is_used() {
    let (db, dir, repo) = (Db::new(), Dir::new(), app_repo());
    let daemon = crate::git_source::Daemon::start(&repo);
    let answering = Arc::new(AtomicBool::new(true));
    let port = tarpit(daemon.port, answering.clone());
    let remote = format!("git://127.0.0.1:{port}/bare.git");
    let write = |message: &str| {
        let slow = manifests(
            Path::new(&remote),
            "true",
            &format!("  env:\n    MESSAGE: {message}\n"),
        )
        .replace("name: web", "name: slow")
        .replace("service: web", "service: slow")
        .replace("host: web.test", "host: slow.test")
        .replace("name: shop\n---", "name: remote\n---")
        .replace("project: shop", "project: remote");
        dir.write("remote.yaml", slow);
        web(&dir, &repo, &format!("  env:\n    MESSAGE: {message}\n"));
    };
    write("one");
    // Every pass would fetch the remote source again: the slowest a remote can make it.
    let up = Up::start(&db, &dir, &["--poll-interval", "1s"]);
    serves(&up, "/", "one", ROLLOUT);
    let slow = |body: &str| {
        wait_for(Duration::from_secs(10), || {
            get(up.address, "slow.test", "/").filter(|(_, b)| b == body)
        })
        .is_some()
    };
    assert!(slow("one"), "{:#?}", deployments(&db));
    let commit =
        db.psql("SELECT release->'resolved'->>'commit' FROM deployments WHERE service = 'slow'");
    assert_eq!(commit.len(), 40, "{commit}");
    // How long an edit of both takes while the server answers, and then while it does not.
    let rollout = |message: &str| {
        let edited = std::time::Instant::now();
        write(message);
        serves(&up, "/", message, Duration::from_secs(60));
        assert!(slow(message), "{:#?}", deployments(&db));
        edited.elapsed()
    };
    let answered = rollout("two");
    answering.store(false, Ordering::SeqCst);
    // A few passes start fetches that never end.
    std::thread::sleep(Duration::from_secs(3));
    let silent = rollout("three");
    assert!(
        silent < answered + Duration::from_secs(1),
        "{silent:?} with a silent server, {answered:?} with an answering one"
    );
    assert_eq!(
        db.psql(
            "SELECT DISTINCT release->'resolved'->>'commit' FROM deployments WHERE service = 'slow'"
        ),
        commit,
        "the last known commit is used meanwhile"
    );
    // Nor does it hold up stopping.
    let mut up = up;
    let stopping = std::time::Instant::now();
    if let Some(process) = up.process.as_mut() {
        assert!(process.terminate().success());
    }
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "stopping took {:?}",
        stopping.elapsed()
    );
}

#[test]
fn up_prints_a_curl_command_that_reaches_each_route_wildcards_included() {
    let (db, dir) = (Db::new(), Dir::new());
    dir.write(
        "shop.yaml",
        format!(
            "{}---\n{}---\n{}",
            crate::fixtures::PROJECT,
            crate::fixtures::service("web", 1),
            crate::fixtures::route("main", "/", "web")
                .replace("host: shop.example.com", "host: \"*.shop.example.com\"")
        ),
    );
    let mut process =
        Process::spawn(up_command(&db, &dir, &["."]).stderr(std::process::Stdio::piped()));
    let lines = process.stderr_lines();
    let line = wait_for(ROLLOUT, || {
        lines.try_iter().find(|l| l.contains("route shop/main:"))
    })
    .expect("the route's line");
    assert!(
        line.contains("http://*.shop.example.com:")
            && line.contains("(curl -H 'Host: any.shop.example.com' http://127.0.0.1:"),
        "{line}"
    );
}
