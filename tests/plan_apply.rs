//! `meshploy plan` and `apply` against a real PostgreSQL: the plan/apply cycle, saved plans,
//! the apply lock, atomicity, the guards, history and state.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::fixtures::{PROJECT, route, service};
use crate::util::{Db, Dir};

/// A project with services `a` to `e` and a route to `a`: seven resources.
fn shop() -> Dir {
    let dir = Dir::new();
    dir.write("project.yaml", PROJECT);
    for name in ["a", "b", "c", "d", "e"] {
        dir.write(&format!("{name}.yaml"), service(name, 1));
    }
    dir.write("route.yaml", route("main", "/", "a"));
    dir
}

fn changes(run: &crate::util::Run) -> Vec<(String, String)> {
    run.json()["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            (
                c["action"].as_str().expect("action").to_owned(),
                c["address"].as_str().expect("address").to_owned(),
            )
        })
        .collect()
}

#[test]
fn plan_apply_then_no_changes_then_exactly_the_edit() {
    let (db, dir) = (Db::new(), shop());

    let plan = db.meshploy(&dir, &["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.stderr);
    assert!(
        plan.stdout.contains("+ service/shop/a {"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("Plan: 7 to add, 0 to change, 0 to destroy.")
    );
    let json = db.meshploy(&dir, &["plan", "--format", "json"]);
    assert_eq!(changes(&json).len(), 7);
    assert!(changes(&json).iter().all(|(action, _)| action == "create"));

    let apply = db.meshploy(&dir, &["apply", "--auto-approve", "--actor", "ana"]);
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    assert!(
        apply
            .stdout
            .contains("Apply complete! Resources: 7 added, 0 changed, 0 destroyed. Revision 1.")
    );
    assert_eq!(db.psql("SELECT count(*) FROM services"), "5");

    let again = db.meshploy(&dir, &["plan", "--detailed-exitcode"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.starts_with("No changes."), "{}", again.stdout);

    dir.write("b.yaml", service("b", 3));
    let edit = db.meshploy(&dir, &["plan", "--detailed-exitcode"]);
    assert_eq!(edit.code, 2);
    assert!(edit.stdout.contains("~ service/shop/b {"));
    assert!(
        edit.stdout.contains("~ replicas = 1 -> 3"),
        "{}",
        edit.stdout
    );
    assert!(
        edit.stdout
            .contains("Plan: 0 to add, 1 to change, 0 to destroy.")
    );
    let json = db.meshploy(&dir, &["plan", "--format", "json"]).json();
    let fields = &json["changes"][0]["fields"];
    assert_eq!(json["changes"].as_array().map(Vec::len), Some(1));
    assert_eq!(fields.as_array().map(Vec::len), Some(1), "{json}");
    assert_eq!(fields[0]["path"], "replicas");
    assert_eq!(
        (fields[0]["before"].clone(), fields[0]["after"].clone()),
        (1.into(), 3.into())
    );
    assert_eq!(db.meshploy(&dir, &["apply", "--auto-approve"]).code, 0);
    assert_eq!(
        db.psql("SELECT replicas FROM services WHERE name = 'b'"),
        "3"
    );

    std::fs::remove_file(dir.path().join("e.yaml")).expect("delete e.yaml");
    let delete = db.meshploy(&dir, &["plan", "--format", "json"]);
    assert_eq!(
        changes(&delete),
        [("delete".into(), "service/shop/e".into())]
    );
    assert_eq!(db.meshploy(&dir, &["apply", "--auto-approve"]).code, 0);

    std::fs::remove_file(dir.path().join("d.yaml")).expect("delete d.yaml");
    dir.write("d2.yaml", service("renamed", 1));
    let rename = db.meshploy(&dir, &["plan", "--format", "json"]);
    assert_eq!(
        changes(&rename),
        [
            ("delete".into(), "service/shop/d".into()),
            ("create".into(), "service/shop/renamed".into())
        ]
    );
    assert_eq!(db.meshploy(&dir, &["apply", "--auto-approve"]).code, 0);

    let history = db.meshploy(&dir, &["history", "--format", "json"]).json();
    let revisions = history.as_array().expect("revisions");
    assert_eq!(revisions.len(), 4);
    assert_eq!(revisions[3]["actor"], "ana");
    assert_eq!(
        (
            revisions[0]["added"].clone(),
            revisions[0]["destroyed"].clone()
        ),
        (1.into(), 1.into())
    );
    let show = db.meshploy(&dir, &["show", "2"]);
    assert!(
        show.stdout.starts_with("Revision 2 applied "),
        "{}",
        show.stdout
    );
    assert!(
        show.stdout.contains("~ replicas = 1 -> 3"),
        "{}",
        show.stdout
    );

    let state = db.meshploy(&dir, &["state", "list"]);
    let addresses: Vec<&str> = state
        .stdout
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    assert_eq!(
        addresses,
        [
            "project/shop",
            "service/shop/a",
            "service/shop/b",
            "service/shop/c",
            "service/shop/renamed",
            "route/shop/main"
        ]
    );
}

#[test]
fn a_saved_plan_applies_exactly_and_is_refused_once_stale() {
    let (db, dir) = (Db::new(), shop());
    assert_eq!(db.meshploy(&dir, &["apply", "--auto-approve"]).code, 0);

    dir.write("a.yaml", service("a", 2));
    let plan = db.meshploy(&dir, &["plan", "--out", "a.plan"]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    // Later edits to the manifests do not change what the saved plan does.
    dir.write("a.yaml", service("a", 9));
    let apply = db.meshploy(&dir, &["apply", "a.plan"]);
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    assert_eq!(
        db.psql("SELECT replicas FROM services WHERE name = 'a'"),
        "2"
    );
    dir.write("a.yaml", service("a", 2));

    // A plan made before another apply changed one of its resources is stale.
    dir.write("b.yaml", service("b", 2));
    assert_eq!(db.meshploy(&dir, &["plan", "--out", "b.plan"]).code, 0);
    dir.write("b.yaml", service("b", 5));
    assert_eq!(db.meshploy(&dir, &["apply", "--auto-approve"]).code, 0);
    let stale = db.meshploy(&dir, &["apply", "b.plan"]);
    stale.assert_fails_with("the saved plan is stale");
    assert!(
        stale
            .stderr
            .contains("service/shop/b changed after the plan was made"),
        "{}",
        stale.stderr
    );
    assert_eq!(
        db.psql("SELECT replicas FROM services WHERE name = 'b'"),
        "5"
    );

    // So is one that creates a resource someone else created meanwhile.
    dir.write("f.yaml", service("f", 1));
    assert_eq!(db.meshploy(&dir, &["plan", "--out", "f.plan"]).code, 0);
    assert_eq!(db.meshploy(&dir, &["apply", "--auto-approve"]).code, 0);
    db.meshploy(&dir, &["apply", "f.plan"])
        .assert_fails_with("service/shop/f was created by someone else after the plan was made");

    // Resources a saved plan does not touch may change freely.
    dir.write("c.yaml", service("c", 2));
    assert_eq!(db.meshploy(&dir, &["plan", "--out", "c.plan"]).code, 0);
    dir.write("c.yaml", service("c", 1));
    dir.write("d.yaml", service("d", 4));
    assert_eq!(db.meshploy(&dir, &["apply", "--auto-approve"]).code, 0);
    assert_eq!(db.meshploy(&dir, &["apply", "c.plan"]).code, 0);
    assert_eq!(
        db.psql("SELECT string_agg(replicas::text, ',' ORDER BY name) FROM services"),
        "2,5,2,4,1,1"
    );
}

#[test]
fn bad_plan_files_and_arguments_are_refused_clearly() {
    let (db, dir) = (Db::new(), shop());
    dir.write("notes.plan", "{\"hello\": 1}");
    db.meshploy(&dir, &["apply", "notes.plan"])
        .assert_fails_with("notes.plan is not a plan saved by `meshploy plan --out`");
    let without_tty = db.meshploy(&dir, &["apply"]);
    without_tty.assert_fails_with("apply needs confirmation, and standard input is not a terminal");
    assert_eq!(db.psql("SELECT count(*) FROM revisions"), "0");
    let timeout = db.meshploy(&dir, &["apply", "--lock-timeout", "soon"]);
    assert_eq!(timeout.code, 2);
    assert!(
        timeout.stderr.contains("`soon` is not a duration"),
        "{}",
        timeout.stderr
    );
    let url = db.meshploy_with(&dir, &["plan"], &[("DATABASE_URL", "not a url")]);
    url.assert_fails_with("--database-url is not a PostgreSQL URL");
    dir.write("broken.yaml", "apiVersion: meshploy.dev/v1\nkind: Service\nmetadata:\n  name: x\n  project: shop\nspec:\n  port: 80\n");
    let invalid = db.meshploy(&dir, &["plan"]);
    invalid.assert_fails_with("are invalid (1 problem); nothing was planned");
    assert!(
        invalid.stderr.contains("broken.yaml:"),
        "{}",
        invalid.stderr
    );
}

#[test]
fn two_concurrent_applies_in_two_processes_never_interleave() {
    let db = Db::new();
    // Two desired states that differ in every resource: 200 services each.
    let (left, right) = (Dir::new(), Dir::new());
    for (dir, replicas) in [(&left, 1), (&right, 2)] {
        dir.write("project.yaml", PROJECT);
        let services: Vec<String> = (0..200)
            .map(|i| service(&format!("s{i:03}"), replicas))
            .collect();
        dir.write("services.yaml", services.join("---\n"));
    }
    let spawn = |dir: &Dir| {
        // Both act as one source, so each may change what the other wrote.
        db.command(
            dir,
            &[
                "apply",
                "--auto-approve",
                "--lock-timeout",
                "60s",
                "--source",
                "shared",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn apply")
    };
    let (a, b) = (spawn(&left), spawn(&right));
    for child in [a, b] {
        let output = child.wait_with_output().expect("wait");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Each apply planned under the lock: the first created everything, the second changed
    // every replica count; the end state is exactly one side, never a mix.
    let counts = db.psql("SELECT added || ',' || changed FROM revisions ORDER BY id");
    assert_eq!(counts, "201,0\n0,200");
    let replicas = db.psql("SELECT string_agg(DISTINCT replicas::text, ',') FROM services");
    assert!(
        replicas == "1" || replicas == "2",
        "mixed state: {replicas}"
    );
}

#[test]
fn a_waiting_apply_gives_up_naming_the_lock_holder() {
    let (db, dir) = (Db::new(), shop());
    let mut holder = db
        .psql_command()
        .env("PGAPPNAME", "nightly migration job")
        .args([
            "-c",
            "BEGIN; SELECT pg_advisory_xact_lock(1835365224); SELECT pg_sleep(4); COMMIT;",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("psql holding the lock");
    // Wait until the holder has the lock.
    let started = Instant::now();
    let held = "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
                WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()";
    while db.psql(held) != "1" {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the holder never took the lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let waited = Instant::now();
    let run = db.meshploy(
        &dir,
        &["apply", "--auto-approve", "--lock-timeout", "500ms"],
    );
    run.assert_fails_with("another apply holds the lock: `nightly migration job`, for");
    assert!(
        run.stderr.contains("gave up after waiting 500 ms"),
        "{}",
        run.stderr
    );
    assert!(waited.elapsed() >= Duration::from_millis(500));
    assert_eq!(db.psql("SELECT count(*) FROM projects"), "0");
    // With a longer timeout the apply waits for the holder and then succeeds.
    let patient = db.meshploy(&dir, &["apply", "--auto-approve", "--lock-timeout", "20s"]);
    assert_eq!(patient.code, 0, "{}", patient.stderr);
    holder.wait().expect("holder finished");
}

#[test]
fn an_apply_failing_half_way_leaves_the_database_exactly_as_before() {
    let (db, dir) = (Db::new(), shop());
    assert_eq!(db.meshploy(&dir, &["apply", "--auto-approve"]).code, 0);
    // A constraint the manifests know nothing about, which the last write of the next
    // apply violates after the earlier writes went through.
    db.psql("ALTER TABLE routes ADD CONSTRAINT no_beta CHECK (path <> '/beta')");
    let before = db.dump();
    dir.write("a.yaml", service("a", 4));
    dir.write("g.yaml", service("g", 1));
    dir.write("beta.yaml", route("beta", "/beta", "g"));
    let run = db.meshploy(&dir, &["apply", "--auto-approve"]);
    run.assert_fails_with("violates check constraint \"no_beta\"");
    assert_eq!(without_sequences(&db.dump()), without_sequences(&before));
    assert_eq!(db.psql("SELECT count(*) FROM revisions"), "1");
}

/// A dump without sequence positions (PostgreSQL never rolls back `nextval`, so a failed
/// transaction moves sequences without changing any data) and without pg_dump's random
/// per-dump key.
fn without_sequences(dump: &str) -> String {
    dump.lines()
        .filter(|line| !line.starts_with("SELECT pg_catalog.setval("))
        // pg_dump brackets its output with a random key.
        .filter(|line| !line.starts_with("\\restrict") && !line.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_guard_refuses_mass_destruction_unless_allowed() {
    let (db, dir) = (Db::new(), shop());
    assert_eq!(db.meshploy(&dir, &["apply", "--auto-approve"]).code, 0);
    for name in ["c", "d", "e"] {
        std::fs::remove_file(dir.path().join(format!("{name}.yaml"))).expect("remove");
    }
    let plan = db.meshploy(&dir, &["plan"]);
    plan.assert_fails_with(
        "this plan destroys 3 of 7 managed resources (more than 25%); rerun with --allow-destroy",
    );
    db.meshploy(&dir, &["apply", "--auto-approve"])
        .assert_fails_with("the plan is refused, nothing was applied");
    assert_eq!(db.psql("SELECT count(*) FROM services"), "5");
    let threshold = db.meshploy(&dir, &["plan", "--max-destroy-percent", "50"]);
    assert_eq!(threshold.code, 0, "{}", threshold.stderr);
    let allowed = db.meshploy(&dir, &["apply", "--auto-approve", "--allow-destroy"]);
    assert_eq!(allowed.code, 0, "{}", allowed.stderr);
    assert_eq!(db.psql("SELECT count(*) FROM services"), "2");

    // The directory emptied would destroy the whole project: refused, not an empty state.
    for entry in std::fs::read_dir(dir.path()).expect("list") {
        std::fs::remove_file(entry.expect("entry").path()).expect("remove");
    }
    db.meshploy(&dir, &["apply", "--auto-approve"])
        .assert_fails_with("this plan destroys project/shop and everything in it");
    assert_eq!(db.psql("SELECT count(*) FROM projects"), "1");
}

#[test]
fn a_protected_resource_cannot_be_destroyed_until_protection_is_lifted() {
    let (db, dir) = (Db::new(), shop());
    let protected =
        service("c", 1).replace("  project: shop\n", "  project: shop\n  protect: true\n");
    dir.write("c.yaml", &protected);
    assert_eq!(db.meshploy(&dir, &["apply", "--auto-approve"]).code, 0);
    std::fs::remove_file(dir.path().join("c.yaml")).expect("remove");
    let refused = db.meshploy(&dir, &["apply", "--auto-approve", "--allow-destroy"]);
    refused.assert_fails_with(
        "service/shop/c is protected and cannot be destroyed; set `metadata.protect: false`",
    );
    assert_eq!(
        db.psql("SELECT count(*) FROM services WHERE name = 'c'"),
        "1"
    );

    dir.write("c.yaml", service("c", 1));
    let lift = db.meshploy(&dir, &["plan"]);
    assert!(
        lift.stdout.contains("~ protect = true -> false"),
        "{}",
        lift.stdout
    );
    assert_eq!(db.meshploy(&dir, &["apply", "--auto-approve"]).code, 0);
    std::fs::remove_file(dir.path().join("c.yaml")).expect("remove");
    assert_eq!(db.meshploy(&dir, &["apply", "--auto-approve"]).code, 0);
    assert_eq!(
        db.psql("SELECT count(*) FROM services WHERE name = 'c'"),
        "0"
    );
}

#[test]
fn an_apply_notifies_listeners_after_commit() {
    let (db, dir) = (Db::new(), shop());
    let listener = db
        .psql_command()
        .args([
            "-c",
            "LISTEN meshploy_revisions",
            "-c",
            "SELECT pg_sleep(3)",
            "-c",
            "SELECT 1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql listener");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(db.meshploy(&dir, &["apply", "--auto-approve"]).code, 0);
    let output = listener.wait_with_output().expect("listener output");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(
            "Asynchronous notification \"meshploy_revisions\" with payload \"{\"added\":7"
        ),
        "{text}"
    );
}

#[test]
fn apply_on_a_terminal_asks_and_only_yes_applies() {
    let (db, dir) = (Db::new(), shop());
    // `script` (util-linux) runs the command on a pseudo-terminal fed from our stdin.
    let on_terminal = |answer: &str| {
        let command = format!("{} apply", env!("CARGO_BIN_EXE_meshploy"));
        let mut child = std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .current_dir(dir.path())
            .env("DATABASE_URL", db.url())
            .env_remove("NO_COLOR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script");
        let mut stdin = child.stdin.take().expect("stdin");
        std::io::Write::write_all(&mut stdin, answer.as_bytes()).expect("answer");
        let output = child.wait_with_output().expect("wait");
        drop(stdin);
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (code, screen) = on_terminal("no\n");
    assert_eq!(code, Some(1), "{screen}");
    assert!(
        screen.contains("Only 'yes' will be accepted to approve."),
        "{screen}"
    );
    assert!(
        screen.contains("Apply cancelled; nothing was changed."),
        "{screen}"
    );
    assert!(
        screen.contains("\x1b[32m  +\x1b[0m project/shop"),
        "coloured on a terminal: {screen}"
    );
    assert_eq!(db.psql("SELECT count(*) FROM revisions"), "0");
    let (code, screen) = on_terminal("yes\n");
    assert_eq!(code, Some(0), "{screen}");
    assert!(
        screen.contains("Apply complete! Resources: 7 added"),
        "{screen}"
    );
}

#[test]
fn an_edited_saved_plan_is_refused_rather_than_applying_what_it_does_not_show() {
    let (db, dir) = (Db::new(), shop());
    assert_eq!(db.meshploy(&dir, &["apply", "--auto-approve"]).code, 0);
    dir.write("a.yaml", service("a", 2));
    assert_eq!(db.meshploy(&dir, &["plan", "--out", "a.plan"]).code, 0);
    let saved = std::fs::read_to_string(dir.path().join("a.plan")).expect("plan file");
    // Each edited file is refused as one that `plan --out` did not save. Whoever can write
    // to the database could record its digest; then the checks behind that one refuse it.
    let forge = |name: &str, text: &str| {
        dir.write(name, text);
        db.meshploy(&dir, &["apply", name])
            .assert_fails_with(&format!(
                "{name} is not a plan `meshploy plan --out` saved against this database"
            ));
        let digest = crate::util::sha256_hex(text.as_bytes());
        db.psql(&format!(
            "INSERT INTO saved_plans (sha256, source) VALUES (decode('{digest}', 'hex'), 'x')"
        ));
    };
    // The attack: what the file writes is edited, what it shows is not.
    let evil = saved.replace("registry.example.com/a:1", "evil.example.com/miner:6");
    assert_ne!(evil, saved, "the file holds what it writes");
    forge("evil.plan", &evil);
    db.meshploy(&dir, &["apply", "evil.plan"])
        .assert_fails_with(
            "the saved plan does not match the manifests saved with it (was the file edited?)",
        );
    // Editing what it shows instead is refused as well.
    let shown = saved.replace(
        "\"after\":{\"type\":\"int\",\"value\":2}",
        "\"after\":{\"type\":\"int\",\"value\":3}",
    );
    assert_ne!(shown, saved);
    forge("shown.plan", &shown);
    db.meshploy(&dir, &["apply", "shown.plan"])
        .assert_fails_with("It differs for:\n  - service/shop/a");
    // Manifests edited to break the rules are refused by the rules.
    let invalid = saved.replace("replicas: 2", "replicas: 5000");
    assert_ne!(invalid, saved);
    forge("invalid.plan", &invalid);
    db.meshploy(&dir, &["apply", "invalid.plan"])
        .assert_fails_with("the manifests saved in invalid.plan do not validate");
    assert_eq!(
        db.psql("SELECT image || ' ' || replicas FROM services WHERE name = 'a'"),
        "registry.example.com/a:1 1"
    );
    assert_eq!(db.psql("SELECT count(*) FROM revisions"), "1");
    // The file as saved applies.
    let apply = db.meshploy(&dir, &["apply", "a.plan"]);
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    assert_eq!(
        db.psql("SELECT image || ' ' || replicas FROM services WHERE name = 'a'"),
        "registry.example.com/a:1 2"
    );
}

#[test]
fn a_saved_plan_edited_consistently_is_refused_as_not_the_one_that_was_made() {
    let (db, dir) = (Db::new(), shop());
    assert_eq!(db.meshploy(&dir, &["apply", "--auto-approve"]).code, 0);
    dir.write("a.yaml", service("a", 2));
    let plan = db.meshploy(&dir, &["plan", "--out", "a.plan"]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let saved = std::fs::read_to_string(dir.path().join("a.plan")).expect("plan file");
    // The attack: the manifests it carries and the plan it shows, edited together, so that
    // the plan made again from the manifests is the plan shown.
    let (written, shown) = ("replicas: 2", "\"after\":{\"type\":\"int\",\"value\":2}");
    assert!(saved.contains(written) && saved.contains(shown), "{saved}");
    let edited = saved
        .replace(written, "replicas: 7")
        .replace(shown, "\"after\":{\"type\":\"int\",\"value\":7}");
    dir.write("edited.plan", &edited);
    let refused = db.meshploy(&dir, &["apply", "edited.plan"]);
    refused.assert_fails_with(
        "edited.plan is not a plan `meshploy plan --out` saved against this database",
    );
    assert!(
        refused.stderr.contains("changed since"),
        "{}",
        refused.stderr
    );
    // A plan made against another database is refused the same way.
    Db::new()
        .meshploy(&dir, &["apply", "a.plan"])
        .assert_fails_with(
            "a.plan is not a plan `meshploy plan --out` saved against this database",
        );
    assert_eq!(
        db.psql("SELECT replicas FROM services WHERE name = 'a'"),
        "1",
        "nothing of the edited plan was applied"
    );
    assert_eq!(db.psql("SELECT count(*) FROM revisions"), "1");
    // The file as it was saved applies.
    let apply = db.meshploy(&dir, &["apply", "a.plan"]);
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    assert_eq!(
        db.psql("SELECT replicas FROM services WHERE name = 'a'"),
        "2"
    );
}

#[test]
fn the_readme_examples_apply_side_by_side_in_one_database() {
    // The README's sections apply them one after another into the same embedded database.
    let (db, dir) = (Db::new(), Dir::new());
    let root = crate::util::repo_root();
    let keys = root.join("examples/shop/example.keys");
    for example in ["examples/local", "examples/shop", "examples/minimal"] {
        let path = root.join(example);
        let run = db.meshploy(
            &dir,
            &[
                "apply",
                &path.display().to_string(),
                "--auto-approve",
                "--secret-keys-file",
                &keys.display().to_string(),
            ],
        );
        assert_eq!(run.code, 0, "{example}: {}", run.stderr);
    }
    assert_eq!(db.psql("SELECT count(DISTINCT source) FROM routes"), "3");
}
