//! What a service (or its repository) written by an attacker can reach on one machine: the
//! attacks of the isolation review, each run against `meshploy up` with real processes.

use std::path::Path;
use std::time::Duration;

use crate::git_cli::git_with_input;
use crate::runtime::{
    APP, ROLLOUT, StopsDatabase, Up, app_repo, deployments, embedded_up, get, logs_with, manifests,
    serves,
};
use crate::util::{Db, Dir, open_tempdir, wait_for};

/// A key nothing may ever show: `MESHPLOY_SECRET_KEYS` of `up`.
const CANARY: &str = "canary:Y2FuYXJ5LWtleS1mb3ItdGhlLWlzb2xhdGlvbi10ZXM";

/// What the attacking replica tries, printing one line per attempt: Meshploy's environment
/// through /proc, the embedded database as its superuser, the database's password file.
const PROBE: &str = r#"import glob, os, subprocess
leaked = []
for path in glob.glob("/proc/[0-9]*/environ"):
    try:
        data = open(path, "rb").read()
    except OSError:
        continue
    if b"MESHPLOY_SECRET_KEYS" in data or b"DATABASE_URL" in data:
        leaked.append(path)
print("environ:", ("LEAK " + " ".join(leaked)) if leaked else "nothing readable", flush=True)
home = os.environ["MH"]
run = subprocess.run(["psql", "-w", "-h", home + "/postgres", "-U", "postgres", "-d", "meshploy", "-c", "SELECT 1"], capture_output=True, text=True)
print("psql:", "CONNECTED" if run.returncode == 0 else "refused", flush=True)
try:
    open(home + "/postgres/password").read()
    print("password: LEAK", flush=True)
except OSError as error:
    print("password: denied", error.strerror, flush=True)
try:
    open(home + "/runtime/escaped", "w").write("pwned")
    print("write: LEAK", flush=True)
except OSError as error:
    print("write: denied", error.strerror, flush=True)
pid = os.getpid()
while b"sandbox\0supervise" not in open("/proc/%d/cmdline" % pid, "rb").read():
    pid = int(open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[1])
try:
    os.kill(pid, 0)
    print("signal: ALLOWED to", pid, flush=True)
except PermissionError:
    print("signal: denied", flush=True)
"#;

/// The unprivileged user Meshploy runs as in the tests of its unprivileged sandbox.
const NOBODY: u32 = 65534;

/// Runs the probe as a replica of `meshploy up` on its embedded database, with the canary
/// key, as root or as `user`; checks what it could reach, then that its detached daemon goes
/// with a killed `up`.
fn probe_as(user: Option<u32>) {
    use std::os::unix::process::CommandExt;
    let (dir, repo) = (Dir::new(), app_repo());
    repo.write("app/probe.py", PROBE);
    repo.push("the probe");
    let home = open_tempdir();
    let _database = match user {
        Some(uid) => {
            for path in [home.path(), dir.path()] {
                std::os::unix::fs::chown(path, Some(uid), Some(uid)).expect("chown");
            }
            StopsDatabase::of_user(home.path(), uid)
        }
        None => StopsDatabase::new(home.path()),
    };
    let daemon = "setsid sh -c 'echo $$ > \"$HOME/daemon.pid\"; exec sleep 1000' &";
    dir.write(
        "shop.yaml",
        manifests(
            &repo.bare(),
            "true",
            &format!(
                "  env:\n    MESSAGE: probed\n    MH: {}\n",
                home.path().display()
            ),
        )
        .replace(
            "command: python3 server.py",
            &format!("command: {daemon} python3 probe.py; exec python3 server.py"),
        )
        .replace("replicas: 2", "replicas: 1"),
    );
    let mut command = embedded_up(&dir, home.path());
    command
        .args(["--stop-grace", "2s", "--drain", "300ms"])
        .env("MESHPLOY_SECRET_KEYS", CANARY);
    if let Some(uid) = user {
        command.uid(uid).gid(uid).env("HOME", home.path());
    }
    let mut up = Up::announced(&mut command);
    serves(&up, "/", "probed", ROLLOUT);
    // Meshploy's other commands, as the user whose embedded database it is.
    let meshploy = |args: &[&str]| {
        let mut command = crate::util::meshploy();
        command.args(args).env("MESHPLOY_HOME", home.path());
        if let Some(uid) = user {
            command.uid(uid).gid(uid);
        }
        command.output().expect("run meshploy")
    };
    let mut logs = String::new();
    wait_for(Duration::from_secs(10), || {
        let output = meshploy(&["logs", "web"]);
        logs = String::from_utf8_lossy(&output.stdout).into_owned();
        logs.contains("signal:").then_some(())
    })
    .unwrap_or_else(|| panic!("the probe did not finish:\n{logs}"));
    for line in [
        "environ: nothing readable",
        "psql: refused",
        "password: denied",
        "write: denied",
        "signal: denied",
    ] {
        assert!(logs.contains(line), "no `{line}` in:\n{logs}");
    }
    assert!(!logs.contains(CANARY.split(':').nth(1).unwrap_or(CANARY)));
    // Meshploy itself reads its own database: the password is in its home, for it only.
    let state = meshploy(&["state", "list"]);
    assert!(
        String::from_utf8_lossy(&state.stdout).contains("service/shop/web"),
        "{state:?}"
    );
    let pid = daemon_pid(home.path(), 1);
    up.kill();
    assert!(gone(pid), "the daemon {pid} outlived a killed `up`");
}

#[test]
fn as_root_a_replica_reaches_neither_meshploy_nor_its_database_nor_its_supervisor() {
    probe_as(None);
}

#[test]
fn unprivileged_a_replica_reaches_neither_meshploy_nor_its_database_nor_its_supervisor() {
    probe_as(Some(NOBODY));
}

#[test]
fn a_service_writes_neither_another_services_working_copy_nor_the_build_cache() {
    let (db, dir, repo) = (Db::new(), Dir::new(), app_repo());
    // Two projects' services from the same source and build: one build, shared in the
    // cache. `a` overwrites what it can: its own copy, every other copy, the cache.
    let attack = format!(
        "echo pwned > built.txt; for d in {home}/runtime/deployments/*/app {home}/builds/*; do echo pwned > \"$d/built.txt\" 2>/dev/null && echo \"wrote $d\"; done; exec python3 server.py",
        home = db.home().display()
    );
    let service = |project: &str, command: &str| {
        format!(
            "apiVersion: meshploy.dev/v1\nkind: Project\nmetadata:\n  name: {project}\n---\n\
             apiVersion: meshploy.dev/v1\nkind: Service\nmetadata:\n  name: web\n  project: {project}\nspec:\n  \
             source:\n    git: {}\n    ref: main\n    path: app\n  build:\n    strategy: command\n    command: echo original > built.txt\n  \
             command: {command}\n  replicas: 1\n---\n\
             apiVersion: meshploy.dev/v1\nkind: Route\nmetadata:\n  name: web\n  project: {project}\nspec:\n  host: {project}.test\n  service: web\n",
            repo.bare().display()
        )
    };
    dir.write("b.yaml", service("b", "python3 server.py"));
    let up = Up::start(&db, &dir, &[]);
    let built = |host: &str| get(up.address(), host, "/built").map(|(_, body)| body);
    wait_for(ROLLOUT, || (built("b.test")? == "original").then_some(()))
        .expect("b serves its build");
    dir.write("a.yaml", service("a", &attack));
    wait_for(ROLLOUT, || (built("a.test")? == "pwned").then_some(()))
        .expect("a changed its own copy");
    assert_eq!(built("b.test").as_deref(), Some("original"));
    let logs = db.meshploy(&dir, &["logs", "a/web"]).stdout;
    assert!(!logs.contains("wrote"), "a wrote outside its copy:\n{logs}");
}

/// The pid a replica's daemon wrote into its deployment's home, once it did.
fn daemon_pid(home: &Path, deployment: i64) -> u32 {
    let file = home.join(format!("runtime/deployments/{deployment}/home/daemon.pid"));
    wait_for(ROLLOUT, || {
        std::fs::read_to_string(&file).ok()?.trim().parse().ok()
    })
    .unwrap_or_else(|| panic!("no {}", file.display()))
}

fn gone(pid: u32) -> bool {
    wait_for(Duration::from_secs(10), || {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    })
    .is_some()
}

#[test]
fn a_detached_daemon_goes_with_its_deployment_and_with_a_killed_up() {
    let (db, dir, repo) = (Db::new(), Dir::new(), app_repo());
    let daemon =
        "setsid sh -c 'echo $$ > \"$HOME/daemon.pid\"; exec sleep 1000' & exec python3 server.py";
    let write = |message: &str| {
        dir.write(
            "shop.yaml",
            manifests(
                &repo.bare(),
                "true",
                &format!("  env:\n    MESSAGE: {message}\n"),
            )
            .replace("command: python3 server.py", &format!("command: {daemon}"))
            .replace("replicas: 2", "replicas: 1"),
        );
    };
    write("one");
    let mut up = Up::start(&db, &dir, &[]);
    serves(&up, "/", "one", ROLLOUT);
    let first = daemon_pid(db.home(), 1);
    // A new release replaces the deployment: its daemon goes with it.
    write("two");
    serves(&up, "/", "two", ROLLOUT);
    let second = daemon_pid(db.home(), 2);
    assert!(gone(first), "the daemon {first} outlived its deployment");
    // SIGKILL: `up` cleans nothing up itself, yet the daemon goes.
    up.kill();
    assert!(gone(second), "the daemon {second} outlived a killed `up`");
    let again = Up::start(&db, &dir, &[]);
    serves(&again, "/", "two", ROLLOUT);
}

/// A bare repository whose `main` is one commit of a tree made with `--literally` (as an
/// attacker can, unchecked): `entries` are (mode, name, content) of blobs.
fn hostile_repository(entries: &[(&str, &[u8], &[u8])]) -> tempfile::TempDir {
    let dir = open_tempdir();
    let git = |args: &[&str], input: &[u8]| {
        git_with_input(dir.path(), args, input).unwrap_or_else(|e| panic!("{e}"))
    };
    git(&["init", "-q", "--bare", "-b", "main"], b"");
    let blob = |data: &[u8]| git(&["hash-object", "-w", "--stdin"], data);
    let tree = |entries: &[(&str, &[u8], String)]| {
        let mut raw = Vec::new();
        for (mode, name, id) in entries {
            raw.extend_from_slice(format!("{mode} ").as_bytes());
            raw.extend_from_slice(name);
            raw.push(0);
            raw.extend(
                (0..id.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&id[i..i + 2], 16).expect("hex")),
            );
        }
        git(
            &["hash-object", "-t", "tree", "--literally", "-w", "--stdin"],
            &raw,
        )
    };
    let made: Vec<(&str, &[u8], String)> = entries
        .iter()
        .map(|(mode, name, content)| (*mode, *name, blob(content)))
        .collect();
    let root = tree(&made);
    let commit = git(&["commit-tree", &root, "-m", "hostile"], b"");
    git(&["update-ref", "refs/heads/main", &commit], b"");
    dir
}

#[test]
fn a_checkout_writes_nothing_outside_its_directory() {
    let (db, dir) = (Db::new(), Dir::new());
    let outside = open_tempdir();
    // A name of this run's own: what an earlier run (of an older Meshploy, say) left must not
    // make this one fail, and this one must not pass because of it.
    let unique = outside
        .path()
        .file_name()
        .expect("a name")
        .to_string_lossy();
    let escaped = format!("ESCAPED{unique}");
    let entry = format!("../../../{escaped}");
    let escape = hostile_repository(&[
        ("100644", b"server.py", APP.as_bytes()),
        ("100644", entry.as_bytes(), b"pwned\n"),
    ]);
    let target = outside.path().join("pwned");
    let link = hostile_repository(&[
        ("100644", b"server.py", APP.as_bytes()),
        ("120000", b"out", target.as_os_str().as_encoded_bytes()),
        ("100644", b"out", b"pwned\n"),
    ]);
    let service = |name: &str, git: &Path| {
        format!(
            "apiVersion: meshploy.dev/v1\nkind: Service\nmetadata:\n  name: {name}\n  project: shop\nspec:\n  \
             source:\n    git: {}\n    ref: main\n  build:\n    strategy: command\n    command: \"true\"\n  \
             command: python3 server.py\n---\n",
            git.display()
        )
    };
    dir.write(
        "shop.yaml",
        format!(
            "apiVersion: meshploy.dev/v1\nkind: Project\nmetadata:\n  name: shop\n---\n{}{}",
            service("escape", escape.path()),
            service("link", link.path())
        ),
    );
    let _up = Up::start(&db, &dir, &[]);
    let failed = wait_for(ROLLOUT, || {
        let rows = db.psql(
            "SELECT service || ': ' || reason FROM deployments WHERE state = 'failed' ORDER BY service",
        );
        (rows.lines().count() == 2).then_some(rows)
    })
    .unwrap_or_else(|| panic!("both deployments fail: {:#?}", deployments(&db)));
    assert!(
        failed.contains("escape: ")
            && failed.contains(&format!("`{entry}`"))
            && failed.contains("cannot be checked out: it holds a path separator"),
        "{failed}"
    );
    assert!(
        failed.contains("link: ") && failed.contains("File exists"),
        "{failed}"
    );
    // Three levels up from the build directory is the home's parent.
    let home_parent = db.home().parent().expect("a parent");
    assert!(!home_parent.join(&escaped).exists(), "written outside");
    assert!(!target.exists(), "written through the link");
}

#[test]
fn a_flood_of_output_keeps_the_database_within_the_log_budget() {
    let (db, dir, repo) = (Db::new(), Dir::new(), app_repo());
    // Four replicas printing 8 KiB lines as fast as they can while they serve; random, so
    // that PostgreSQL cannot compress them away.
    let flood = "yes \"$(head -c 6000 /dev/urandom | base64 -w 0)\" & exec python3 server.py";
    dir.write(
        "shop.yaml",
        manifests(&repo.bare(), "true", "  env:\n    MESSAGE: loud\n")
            .replace("command: python3 server.py", &format!("command: {flood}"))
            .replace("replicas: 2", "replicas: 4"),
    );
    let size = || -> u64 {
        db.psql("SELECT pg_total_relation_size('log_lines')")
            .parse()
            .expect("a size")
    };
    assert_eq!(db.meshploy(&dir, &["migrate"]).code, 0);
    let before = size();
    let up = Up::start(&db, &dir, &["--log-budget", "1MiB", "--log-rate", "64KiB"]);
    serves(&up, "/", "loud", ROLLOUT);
    std::thread::sleep(Duration::from_secs(15));
    let stored: u64 = db
        .psql(
            "SELECT coalesce(sum(octet_length(line)), 0) FROM log_lines \
             WHERE deployment_id IN (SELECT id FROM deployments WHERE service = 'web')",
        )
        .parse()
        .expect("a sum");
    let grown = size().saturating_sub(before);
    println!("stored {stored} bytes of logs; log_lines grew by {grown} bytes");
    // The budget, and what one flush of four streams at their rate may add past it.
    assert!(stored <= (1 << 20) + 4 * (64 << 10), "{stored} bytes kept");
    assert!(grown < 4 << 20, "log_lines grew by {grown} bytes");
    let logs = logs_with(&db, &dir, &["logs", "web"], &["lines dropped"]);
    assert!(
        logs.contains("faster than 64 KiB per second (--log-rate)"),
        "{logs}"
    );
}

#[test]
fn a_port_in_use_is_named_with_the_process_that_holds_it() {
    let (db, dir) = (Db::new(), Dir::new());
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = held.local_addr().expect("address").to_string();
    dir.write("shop.yaml", crate::fixtures::PROJECT);
    let run = db.meshploy(
        &dir,
        &[
            "up",
            ".",
            "--listen",
            &address,
            "--api-listen",
            "127.0.0.1:0",
        ],
    );
    run.assert_fails_with(&format!(
        "cannot listen on {address} (--listen): Address already in use"
    ));
    assert!(
        run.stderr
            .contains(&format!("pid {} (", std::process::id())),
        "{}",
        run.stderr
    );
}
