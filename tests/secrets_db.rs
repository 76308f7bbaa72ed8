//! Secrets through plan and apply: stored only as ciphertext, compared by keyed digest,
//! never printed, and re-sealed on key rotation.

use crate::secret::{encrypt, keygen};
use crate::util::{Db, Dir};

const SECRET: &str = "sk_live_do_not_leak_7f3a9c";

fn group(name: &str, envelope: &str) -> String {
    format!(
        "apiVersion: meshploy.dev/v1\nkind: Project\nmetadata:\n  name: shop\n---\napiVersion: meshploy.dev/v1\nkind: VariableGroup\nmetadata:\n  name: payments\n  project: shop\nspec:\n  variables:\n    MODE: live\n  secrets:\n    {name}: {envelope}\n"
    )
}

fn seal(keys: &str, name: &str, value: &str) -> String {
    let place = ["--project", "shop", "--group", "payments", "--name", name];
    let run = encrypt(keys, &place, value.as_bytes());
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.stdout.trim().to_owned()
}

#[test]
fn no_secret_plaintext_in_plans_the_database_or_debug_logs() {
    let (db, dir) = (Db::new(), Dir::new());
    let keys = keygen("k1");
    dir.write(
        "shop.yaml",
        group("STRIPE_KEY", &seal(&keys, "STRIPE_KEY", SECRET)),
    );
    let env = [
        ("MESHPLOY_SECRET_KEYS", keys.as_str()),
        ("RUST_LOG", "debug"),
    ];

    let mut seen = String::new();
    for format in ["text", "json", "markdown"] {
        let plan = db.meshploy_with(&dir, &["plan", "--format", format], &env);
        assert_eq!(plan.code, 0, "{}", plan.stderr);
        assert!(plan.stdout.contains("STRIPE_KEY"), "{}", plan.stdout);
        seen.push_str(&plan.stdout);
        seen.push_str(&plan.stderr);
    }
    assert_eq!(
        db.meshploy_with(&dir, &["plan", "--out", "saved.plan"], &env)
            .code,
        0
    );
    seen.push_str(&std::fs::read_to_string(dir.path().join("saved.plan")).expect("plan file"));
    let apply = db.meshploy_with(&dir, &["apply", "--auto-approve"], &env);
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    assert!(
        apply.stderr.contains("DEBUG"),
        "debug logging is on: {}",
        apply.stderr
    );
    seen.push_str(&apply.stdout);
    seen.push_str(&apply.stderr);
    for args in [
        &["show", "1", "--format", "json"][..],
        &["state", "list"],
        &["history"],
    ] {
        let run = db.meshploy_with(&dir, args, &env);
        seen.push_str(&run.stdout);
        seen.push_str(&run.stderr);
    }
    let dump = db.dump();
    assert!(
        dump.contains("meshploy:v1:k1:"),
        "the secret is stored sealed"
    );
    seen.push_str(&dump);
    assert!(!seen.contains(SECRET), "the plaintext leaked");
    // Not even a fragment long enough to identify it.
    assert!(!seen.contains(&SECRET[8..20]));

    // The stored ciphertext is sealed for its row, not a copy of the git envelope.
    let stored = db.psql("SELECT ciphertext FROM secrets");
    assert!(
        !std::fs::read_to_string(dir.path().join("shop.yaml"))
            .expect("yaml")
            .contains(&stored)
    );
    let again = db.meshploy_with(&dir, &["plan", "--detailed-exitcode"], &env);
    assert_eq!(
        again.code, 0,
        "equal secrets compare equal: {}",
        again.stdout
    );

    dir.write(
        "shop.yaml",
        group("STRIPE_KEY", &seal(&keys, "STRIPE_KEY", "sk_live_rotated")),
    );
    let changed = db.meshploy_with(&dir, &["plan", "--detailed-exitcode"], &env);
    assert_eq!(changed.code, 2, "a changed secret is a change");
    assert!(
        changed
            .stdout
            .contains("~ secrets.STRIPE_KEY = (sensitive value)"),
        "{}",
        changed.stdout
    );
}

#[test]
fn tampered_truncated_foreign_and_moved_envelopes_are_refused_clearly() {
    let (db, dir) = (Db::new(), Dir::new());
    let keys = keygen("k1");
    let envelope = seal(&keys, "STRIPE_KEY", SECRET);
    let env = [("MESHPLOY_SECRET_KEYS", keys.as_str())];

    // One character of the ciphertext changed.
    let mut tampered = envelope.clone().into_bytes();
    let last = tampered.len() - 5;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    dir.write("shop.yaml", group("STRIPE_KEY", &tampered));
    db.meshploy_with(&dir, &["plan"], &env).assert_fails_with(
        "shop.yaml:6: spec.secrets.STRIPE_KEY: secret `shop/payments/STRIPE_KEY` cannot be opened with key `k1`: the envelope was altered",
    );

    // Cut so the payload's length is 1 more than a multiple of 4, which no base64 text has, so
    // the envelope fails when it is read. (A cut that leaves valid base64, which depends on the
    // random payload's last bits, fails when it is opened instead; both name file and line.)
    let payload = envelope.rsplit(':').next().map_or(0, str::len);
    let cut = (28..32)
        .find(|cut| (payload - cut) % 4 == 1)
        .expect("a cut");
    dir.write(
        "shop.yaml",
        group("STRIPE_KEY", &envelope[..envelope.len() - cut]),
    );
    let truncated = db.meshploy_with(&dir, &["plan"], &env);
    truncated.assert_fails_with("shop.yaml:");
    assert!(truncated.stderr.contains("secret"), "{}", truncated.stderr);

    // The same key id with a different key, and a key id that is not configured.
    dir.write("shop.yaml", group("STRIPE_KEY", &envelope));
    let other = keygen("k1");
    db.meshploy_with(&dir, &["plan"], &[("MESHPLOY_SECRET_KEYS", other.as_str())])
        .assert_fails_with("cannot be opened with key `k1`");
    let unknown = keygen("k9");
    db.meshploy_with(
        &dir,
        &["plan"],
        &[("MESHPLOY_SECRET_KEYS", unknown.as_str())],
    )
    .assert_fails_with("was sealed with key `k1`, which is not configured (configured: k9)");
    db.meshploy(&dir, &["plan"])
        .assert_fails_with("no secret keys configured");

    // An envelope copied to another secret name does not open there.
    dir.write("shop.yaml", group("OTHER_KEY", &envelope));
    db.meshploy_with(&dir, &["plan"], &env)
        .assert_fails_with("secret `shop/payments/OTHER_KEY` cannot be opened");
    assert_eq!(db.psql("SELECT count(*) FROM revisions"), "0");
}

#[test]
fn rotating_keys_keeps_plans_stable_and_reseal_retires_the_old_key() {
    let (db, dir) = (Db::new(), Dir::new());
    let old = keygen("old");
    dir.write(
        "shop.yaml",
        group("STRIPE_KEY", &seal(&old, "STRIPE_KEY", SECRET)),
    );
    let apply = db.meshploy_with(
        &dir,
        &["apply", "--auto-approve"],
        &[("MESHPLOY_SECRET_KEYS", &old)],
    );
    assert_eq!(apply.code, 0, "{}", apply.stderr);

    let new = keygen("new");
    let both = format!("{new},{old}");
    let plan = db.meshploy_with(
        &dir,
        &["plan", "--detailed-exitcode"],
        &[("MESHPLOY_SECRET_KEYS", &both)],
    );
    assert_eq!(
        plan.code, 0,
        "a new primary key changes no digest: {}",
        plan.stdout
    );

    let reseal = db.meshploy_with(
        &dir,
        &["secret", "reseal"],
        &[("MESHPLOY_SECRET_KEYS", &both)],
    );
    assert_eq!(reseal.code, 0, "{}", reseal.stderr);
    assert!(
        reseal
            .stdout
            .contains("Re-sealed 1 stored secret under key `new`."),
        "{}",
        reseal.stdout
    );
    assert!(
        db.psql("SELECT ciphertext FROM secrets")
            .starts_with("meshploy:v1:new:")
    );
    assert!(
        db.psql("SELECT sealed FROM secret_digest_key")
            .starts_with("meshploy:v1:new:")
    );

    // The old key can go: stored values and the digest key open with the new one alone.
    let only_new = [("MESHPLOY_SECRET_KEYS", new.as_str())];
    dir.write(
        "shop.yaml",
        group("STRIPE_KEY", &seal(&new, "STRIPE_KEY", SECRET)),
    );
    let plan = db.meshploy_with(&dir, &["plan", "--detailed-exitcode"], &only_new);
    assert_eq!(plan.code, 0, "{}{}", plan.stdout, plan.stderr);
    let reseal = db.meshploy_with(&dir, &["secret", "reseal"], &only_new);
    assert_eq!(reseal.code, 0, "{}", reseal.stderr);

    // Without the key that sealed the stored values, re-sealing refuses and changes nothing.
    let stranger = keygen("x");
    let before = db.psql("SELECT ciphertext FROM secrets");
    db.meshploy_with(
        &dir,
        &["secret", "reseal"],
        &[("MESHPLOY_SECRET_KEYS", &stranger)],
    )
    .assert_fails_with("was sealed with key `new`, which is not configured (configured: x)");
    assert_eq!(db.psql("SELECT ciphertext FROM secrets"), before);
}
