//! What the CLI prints: a listing whose reader goes away ends quietly, as `git log | head`
//! does; text that came from processes, manifests, git or a forge is shown with its control
//! characters escaped (JSON stays exact); and a multi-line reason is shown whole, in order.

use std::process::Stdio;
use std::time::Duration;

use crate::fixtures::{PROJECT, Process, route, service};
use crate::util::{Db, Dir, wait_for};

/// The release of an image service as the controller stores it on a deployment row.
const RELEASE: &str = r#"{"spec": {"workload": {"image": "registry.example.com/s0:1"}, "command": null, "port": 8080, "additionalPorts": [], "replicas": 1, "cpu": null, "memory": null, "healthCheck": null, "env": {}}, "resolved": {"type": "image"}}"#;

/// `text` as a PostgreSQL escape string literal (`E'...'`), control characters included.
fn literal(text: &str) -> String {
    let mut out = String::from("E'");
    for c in text.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Project `shop` with services `s0`..`s2` and a route, applied; returns the database and
/// the directory.
fn applied() -> (Db, Dir) {
    let (db, dir) = (Db::new(), Dir::new());
    dir.write("project.yaml", PROJECT);
    for i in 0..3 {
        dir.write(&format!("s{i}.yaml"), service(&format!("s{i}"), 1));
    }
    dir.write("route.yaml", route("main", "/", "s0"));
    let run = db.meshploy(&dir, &["apply", "--auto-approve"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    (db, dir)
}

/// Records a deployment of `shop/s0` in `state` with `reason`, as the controller would, and
/// returns its id.
fn deployment(db: &Db, state: &str, reason: Option<&str>) -> String {
    db.psql(&format!(
        "INSERT INTO deployments (project, service, release_digest, release, revision_id, trigger, state, reason, finished_at) \
         VALUES ('shop', 's0', repeat('a', 64), '{RELEASE}'::jsonb, 1, 'revision', '{state}', {}, now()) RETURNING id",
        reason.map_or("NULL".to_owned(), literal)
    ))
}

/// Records `line` as printed by replica 0 of deployment `id`.
fn log_line(db: &Db, id: &str, line: &str) {
    db.psql(&format!(
        "INSERT INTO log_lines (deployment_id, replica, line) VALUES ({id}, 0, {})",
        literal(line)
    ));
}

#[test]
fn every_listing_ends_quietly_when_its_reader_goes_away() {
    let (db, dir) = applied();
    let id = deployment(&db, "healthy", None);
    for i in 0..5 {
        log_line(&db, &id, &format!("line {i}"));
    }
    let made = db.meshploy(
        &dir,
        &["token", "create", "--name", "ci", "--scope", "read"],
    );
    assert_eq!(made.code, 0, "{}", made.stderr);
    for args in [
        &["status"][..],
        &["status", "--format", "json"],
        &["deployments"],
        &["deployments", "--format", "json"],
        &["history"],
        &["history", "--format", "json"],
        &["show", "1"],
        &["show", "1", "--format", "json"],
        &["state", "list"],
        &["state", "list", "--format", "json"],
        &["token", "list"],
        &["logs", "s0"],
        &["logs", "s0", "--follow"],
        &["plan", "."],
        &["validate", "."],
        &["schema"],
        &["openapi"],
    ] {
        // The reading end is closed before anything is written: `| head` that has had its
        // lines, or `| true`.
        let (reader, writer) = std::io::pipe().expect("a pipe");
        drop(reader);
        let mut command = db.command(&dir, args);
        command
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped());
        let mut process = Process::spawn(&mut command);
        let ended = wait_for(Duration::from_secs(30), || process.exited().then_some(()));
        assert!(ended.is_some(), "`{}` kept running", args.join(" "));
        let (code, stderr) = process.finished();
        assert_eq!(
            (code, stderr.as_str()),
            (141, ""),
            "`{}` should end quietly as a process killed by SIGPIPE",
            args.join(" ")
        );
    }
}

#[test]
fn text_from_processes_and_manifests_is_printed_with_control_characters_escaped() {
    let (db, dir) = applied();
    let id = deployment(
        &db,
        "failed",
        Some("replica 0 exited with code 3; its last lines:\n\x1b[2J\x1b[Hcleared\n\x07bell"),
    );
    log_line(
        &db,
        &id,
        "\x1b]0;pwned\x07title and \x1b[31mred\x1b[0m\ttabbed",
    );
    let logs = db.meshploy(&dir, &["logs", "s0", "--deployment", &id]);
    assert_eq!(logs.code, 0, "{}", logs.stderr);
    assert_eq!(
        logs.stdout,
        "[0] \\x1b]0;pwned\\x07title and \\x1b[31mred\\x1b[0m\ttabbed\n"
    );
    for args in [&["deployments"][..], &["status"]] {
        let run = db.meshploy(&dir, args);
        assert!(!run.stdout.contains('\x1b'), "{}", run.stdout);
        assert!(
            run.stdout.contains("\\x1b[2J\\x1b[Hcleared\n") && run.stdout.contains("\\x07bell"),
            "{}",
            run.stdout
        );
    }
    let json = db
        .meshploy(&dir, &["deployments", "--format", "json"])
        .json();
    assert_eq!(
        json[0]["reason"],
        "replica 0 exited with code 3; its last lines:\n\x1b[2J\x1b[Hcleared\n\x07bell",
        "JSON stays exact"
    );

    // A multi-line manifest value with an escape sequence: shown as lines, escaped.
    dir.write(
        "s1.yaml",
        service("s1", 1) + "  env:\n    BANNER: \"first line\\n\\e[31mred\\e[0m\\nlast line\"\n",
    );
    let plan = db.meshploy(&dir, &["plan", "."]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert!(!plan.stdout.contains('\x1b'), "{}", plan.stdout);
    let lines: Vec<&str> = plan.stdout.lines().collect();
    let red = lines
        .iter()
        .position(|l| l.contains("\\x1b[31mred\\x1b[0m"))
        .unwrap_or_else(|| panic!("no escaped line in:\n{}", plan.stdout));
    assert!(lines[red - 1].contains("first line"), "{}", plan.stdout);
    assert!(lines[red + 1].contains("last line"), "{}", plan.stdout);
    let json = db.meshploy(&dir, &["plan", ".", "--format", "json"]).json();
    assert_eq!(
        json["changes"][0]["fields"][0]["after"],
        "first line\n\x1b[31mred\x1b[0m\nlast line"
    );
    // What git and the command line record is escaped too.
    let applied = db.meshploy_with(
        &dir,
        &["apply", "--auto-approve"],
        &[("MESHPLOY_ACTOR", "ops\x1b[8m hidden")],
    );
    assert_eq!(applied.code, 0, "{}", applied.stderr);
    assert!(!applied.stdout.contains('\x1b'), "{}", applied.stdout);
    for args in [&["history"][..], &["show", "2"]] {
        let run = db.meshploy(&dir, args);
        assert!(
            run.stdout.contains("ops\\x1b[8m hidden") && !run.stdout.contains('\x1b'),
            "{}",
            run.stdout
        );
    }
}

#[test]
fn status_shows_a_multi_line_reason_whole_and_in_order() {
    let (db, dir) = applied();
    deployment(
        &db,
        "failed",
        Some(
            "replica 0 exited with code 3 before it was healthy; its last lines:\n  one\n  two\n  three",
        ),
    );
    let status = db.meshploy(&dir, &["status"]);
    let at = status
        .stdout
        .find("its last lines:")
        .unwrap_or_else(|| panic!("{}", status.stdout));
    let after: Vec<&str> = status.stdout[at..].lines().skip(1).map(str::trim).collect();
    assert_eq!(after[..3], ["one", "two", "three"], "{}", status.stdout);
}

#[test]
fn history_has_a_header_and_status_names_sources_applied_from_a_directory() {
    let (db, dir) = applied();
    let history = db.meshploy(&dir, &["history"]);
    let mut lines = history.stdout.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["REVISION", "APPLIED", "CHANGES", "ACTOR", "SOURCE"],
        "{}",
        history.stdout
    );
    assert!(
        lines
            .next()
            .is_some_and(|l| l.trim_start().starts_with("1 "))
    );
    // Without USER or LOGNAME in the environment, the actor is still the user's name.
    dir.write("s1.yaml", service("s1", 2));
    let run = db
        .command(&dir, &["apply", "--auto-approve"])
        .env_remove("USER")
        .env_remove("LOGNAME")
        .output()
        .expect("apply");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let actor = db.psql("SELECT actor FROM revisions WHERE id = 2");
    assert!(!actor.starts_with("unknown@"), "{actor}");
    assert!(actor.starts_with(&format!("{}@", whoami())), "{actor}");

    // `apply DIR` (and `up DIR`) act as the directory's source, which status lists.
    let status = db.meshploy(&dir, &["status"]);
    assert_eq!(status.code, 0, "{}", status.stdout);
    let canonical = std::fs::canonicalize(dir.path()).expect("canonical");
    assert!(
        status.stdout.contains(&format!(
            "local:{}: applied from a directory (revision 2",
            canonical.display()
        )),
        "{}",
        status.stdout
    );
    assert!(
        !status.stdout.contains("No sources yet"),
        "{}",
        status.stdout
    );
}

/// The name of the user running the tests.
fn whoami() -> String {
    let output = std::process::Command::new("id")
        .arg("-un")
        .output()
        .expect("id -un");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}
