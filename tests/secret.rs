//! `meshploy secret`: keys and envelopes made by the CLI work with `validate`, and the
//! plaintext never comes back out.

use std::io::Write;
use std::process::Stdio;

use crate::util::{Dir, Run, meshploy};

pub fn encrypt(keys: &str, args: &[&str], stdin: &[u8]) -> Run {
    let mut child = meshploy()
        .args(["secret", "encrypt"])
        .args(args)
        .env("MESHPLOY_SECRET_KEYS", keys)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    Run::new(child.wait_with_output())
}

pub fn keygen(id: &str) -> String {
    let run = Run::new(meshploy().args(["secret", "keygen", "--id", id]).output());
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.stdout.trim().to_owned()
}

#[test]
fn an_encrypted_secret_validates_and_never_shows_its_plaintext() {
    let key = keygen("ops");
    assert!(key.starts_with("ops:") && key.len() == 4 + 43, "{key}");
    let place = ["--project", "shop", "--group", "db", "--name", "PASSWORD"];
    let run = encrypt(&key, &place, b"correct horse battery staple\n");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let envelope = run.stdout.trim();
    assert!(envelope.starts_with("meshploy:v1:ops:"), "{envelope}");
    assert!(!run.stdout.contains("horse") && !run.stderr.contains("horse"));

    let dir = Dir::new();
    dir.write(
        "shop.yaml",
        format!("apiVersion: meshploy.dev/v1\nkind: Project\nmetadata:\n  name: shop\n---\napiVersion: meshploy.dev/v1\nkind: VariableGroup\nmetadata:\n  name: db\n  project: shop\nspec:\n  secrets:\n    PASSWORD: {envelope}\n"),
    );
    let validate = dir.meshploy(&["validate"]);
    assert_eq!(validate.code, 0, "{}", validate.stderr);
}

#[test]
fn encrypt_refuses_missing_keys_bad_names_and_empty_input() {
    let place = ["--project", "shop", "--group", "db", "--name", "PASSWORD"];
    let run = encrypt("", &place, b"x");
    run.assert_fails_with("no secret keys configured");

    let key = keygen("k1");
    let run = encrypt(
        &key,
        &["--project", "Shop", "--group", "db", "--name", "P"],
        b"x",
    );
    run.assert_fails_with("--project: `Shop` is not a valid name");

    let run = encrypt(
        &key,
        &["--project", "shop", "--group", "db", "--name", "api-key"],
        b"x",
    );
    run.assert_fails_with("--name: `api-key` is not a valid environment variable name");

    let run = encrypt(&key, &place, b"\n");
    run.assert_fails_with("is empty");

    let run = encrypt("k1:not-a-key", &place, b"x");
    run.assert_fails_with("secret key `k1` is not 32 bytes");
    assert!(!run.stderr.contains("not-a-key"), "{}", run.stderr);

    let run = Run::new(
        meshploy()
            .args(["secret", "keygen", "--id", "Bad_Id"])
            .output(),
    );
    run.assert_fails_with("key id `Bad_Id` is not valid");
}
