//! The embedded database: created and started on first use under `MESHPLOY_HOME`, managed
//! with `meshploy db`, and a clear error when PostgreSQL is missing.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::util::{Dir, Run, meshploy, open_tempdir};

fn run(home: &std::path::Path, dir: &Dir, args: &[&str], env: &[(&str, &str)]) -> Run {
    Run::new(
        meshploy()
            .current_dir(dir.path())
            .args(args)
            .env("MESHPLOY_HOME", home)
            .env_remove("DATABASE_URL")
            .envs(env.iter().copied())
            .output(),
    )
}

/// Writes a manifest directory holding one project.
fn hello(dir: &Dir) {
    dir.write(
        "hello.yaml",
        "apiVersion: meshploy.dev/v1\nkind: Project\nmetadata:\n  name: hello\n",
    );
}

#[test]
fn the_embedded_database_starts_on_first_use_and_stops_on_request() {
    let home = open_tempdir();
    let home = home.path();
    let dir = Dir::new();
    hello(&dir);

    let status = run(home, &dir, &["db", "status"], &[]);
    assert_eq!(status.code, 3);
    assert!(
        status.stdout.contains("has not been created yet"),
        "{}",
        status.stdout
    );

    let apply = run(home, &dir, &["apply", "--auto-approve"], &[]);
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    assert!(
        apply.stderr.contains("Started the embedded PostgreSQL in"),
        "{}",
        apply.stderr
    );
    assert!(
        home.join("postgres/.s.PGSQL.5432").exists(),
        "listens on its own socket"
    );
    let config = std::fs::read_to_string(home.join("postgres/data/postgresql.conf")).expect("conf");
    assert!(config.contains("listen_addresses = ''"), "no TCP port");

    let plan = run(home, &dir, &["plan", "--detailed-exitcode"], &[]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert!(
        !plan.stderr.contains("Started"),
        "already running: {}",
        plan.stderr
    );
    assert_eq!(run(home, &dir, &["db", "status"], &[]).code, 0);

    let stop = run(home, &dir, &["db", "stop"], &[]);
    assert!(
        stop.stdout.contains("Stopped the embedded PostgreSQL"),
        "{}",
        stop.stdout
    );
    assert_eq!(run(home, &dir, &["db", "status"], &[]).code, 3);
    // The state survives a restart.
    let start = run(home, &dir, &["db", "start"], &[]);
    assert_eq!(start.code, 0, "{}", start.stderr);
    let plan = run(home, &dir, &["plan", "--detailed-exitcode"], &[]);
    assert_eq!(plan.code, 0, "{}{}", plan.stdout, plan.stderr);
    assert_eq!(run(home, &dir, &["migrate"], &[]).code, 0);
    assert_eq!(run(home, &dir, &["db", "stop"], &[]).code, 0);
}

#[test]
fn missing_postgres_binaries_and_unreachable_homes_are_explained() {
    let dir = Dir::new();
    let home = open_tempdir();
    let missing = run(
        home.path(),
        &dir,
        &["plan"],
        &[("MESHPLOY_POSTGRES_BIN", "/nonexistent")],
    );
    missing.assert_fails_with("no PostgreSQL server binaries found");
    assert!(
        missing.stderr.contains("apt-get install postgresql"),
        "{}",
        missing.stderr
    );

    // A home the unprivileged server user cannot enter (we run as root in CI).
    let private = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    let home = private.path().join("meshploy");
    let start = run(&home, &dir, &["db", "start"], &[]);
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if root {
        start.assert_fails_with("cannot enter");
        assert!(
            start.stderr.contains("set MESHPLOY_HOME"),
            "{}",
            start.stderr
        );
    } else {
        // Not root: the server runs as us and the private directory is fine.
        assert_eq!(start.code, 0, "{}", start.stderr);
        assert_eq!(run(&home, &dir, &["db", "stop"], &[]).code, 0);
    }
}

#[test]
fn a_cluster_left_half_made_by_a_killed_first_start_is_made_again_safely() {
    let home = open_tempdir();
    let home = home.path();
    let dir = Dir::new();
    // Whatever happens, no server is left running (a failure here would leave one with
    // initdb's defaults).
    struct Stop<'a>(&'a std::path::Path);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = run(self.0, &Dir::new(), &["db", "stop"], &[]);
        }
    }
    let _stop = Stop(home);
    let started = run(home, &dir, &["db", "start"], &[]);
    assert_eq!(started.code, 0, "{}", started.stderr);
    assert_eq!(run(home, &dir, &["db", "stop"], &[]).code, 0);
    // What a kill between initdb and Meshploy's settings left: initdb's own defaults (TCP on
    // localhost, a socket in a shared directory), and a stray directory of a second attempt.
    let data = home.join("postgres/data");
    let conf = data.join("postgresql.conf");
    let text = std::fs::read_to_string(&conf).expect("conf");
    let cut = text.find("\n# Meshploy").expect("Meshploy's settings");
    std::fs::write(&conf, &text[..cut]).expect("strip the settings");
    std::fs::create_dir_all(home.join("postgres/data.new/base")).expect("a stray data.new");

    let status = run(home, &dir, &["db", "status"], &[]);
    assert_eq!(
        status.code, 3,
        "a half-made cluster is not created: {}",
        status.stdout
    );
    let started = run(home, &dir, &["db", "start"], &[]);
    assert_eq!(started.code, 0, "{}", started.stderr);
    let config = std::fs::read_to_string(&conf).expect("conf");
    assert!(config.contains("listen_addresses = ''"), "no TCP port");
    assert!(config.contains("unix_socket_permissions = 0700"));
    assert!(
        home.join("postgres/.s.PGSQL.5432").exists(),
        "its own socket"
    );
    assert!(
        home.join("postgres/data.incomplete").is_dir(),
        "kept aside, not deleted"
    );
    assert!(!home.join("postgres/data.new").exists());
    assert_eq!(run(home, &dir, &["db", "stop"], &[]).code, 0);
}

/// `psql` on the embedded cluster of `home` as its superuser, without a password: what any
/// process that reaches the socket could try.
fn psql_without_password(home: &std::path::Path) -> std::process::Output {
    std::process::Command::new("psql")
        .args(["-X", "-w", "-h"])
        .arg(home.join("postgres"))
        .args(["-U", "postgres", "-d", "postgres", "-c", "SELECT 1"])
        .env("PGPASSFILE", "/dev/null")
        .output()
        .expect("run psql")
}

#[test]
fn the_embedded_database_wants_its_password_even_from_a_cluster_that_trusted_its_socket() {
    let home = open_tempdir();
    let home = home.path();
    let dir = Dir::new();
    hello(&dir);
    let key = "k1:VDT7krsxaM23mIIaBMjctfq_j0Z4pMkFb7KgZUE4ePU";
    let apply = run(
        home,
        &dir,
        &["apply", "--auto-approve"],
        &[("MESHPLOY_SECRET_KEYS", key)],
    );
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    // The server outlives the command that started it, with its own environment only.
    let pid = std::fs::read_to_string(home.join("postgres/data/postmaster.pid")).expect("pid");
    let pid = pid.lines().next().expect("a pid");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("its environment");
    assert!(
        !String::from_utf8_lossy(&environ).contains("MESHPLOY_SECRET_KEYS"),
        "the server holds Meshploy's keys"
    );
    let refused = psql_without_password(home);
    assert!(!refused.status.success(), "connected without a password");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("password"),
        "{refused:?}"
    );
    let password = home.join("postgres/password");
    let mode = std::fs::metadata(&password).expect("the password file");
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);

    // A cluster made by an older release: it trusts its socket and has no password file.
    let hba = home.join("postgres/data/pg_hba.conf");
    std::fs::write(&hba, "local all all trust\n").expect("write pg_hba.conf");
    for file in ["password", "pgpass"] {
        std::fs::remove_file(home.join("postgres").join(file)).expect("remove");
    }
    // Its next start moves it to passwords, and keeps its state.
    assert_eq!(run(home, &dir, &["db", "stop"], &[]).code, 0);
    assert_eq!(run(home, &dir, &["db", "start"], &[]).code, 0);
    let plan = run(home, &dir, &["plan", "--detailed-exitcode"], &[]);
    assert_eq!(plan.code, 0, "{}{}", plan.stdout, plan.stderr);
    assert!(
        !psql_without_password(home).status.success(),
        "still trusted"
    );
    assert!(
        std::fs::read_to_string(&hba)
            .expect("read")
            .contains("scram-sha-256")
    );
    assert_eq!(run(home, &dir, &["db", "stop"], &[]).code, 0);
}
