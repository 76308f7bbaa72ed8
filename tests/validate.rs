//! `meshploy validate`: every rule rejects bad input with its code, message and location.

use expect_test::expect;

use crate::fixtures::PROJECT;
use crate::util::{Dir, repo_root};

/// A service document; `spec` lines follow `spec:` on line 6, so the first one is line 7.
fn service(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: meshploy.dev/v1\nkind: Service\nmetadata:\n  name: {name}\n  project: shop\nspec:\n{spec}"
    )
}

/// A route document; its `spec` lines start on line 7.
fn route(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: meshploy.dev/v1\nkind: Route\nmetadata:\n  name: {name}\n  project: shop\nspec:\n{spec}"
    )
}

/// Validates `files` (plus a `shop` project) and checks that exactly the `expected`
/// diagnostics come out: `(location, code, message fragment)`, with locations written as
/// `file:line:column`. Checks the JSON report, then the text report and its exit code.
fn rejects(files: &[(&str, &str)], expected: &[(&str, &str, &str)]) -> String {
    let dir = Dir::new();
    dir.write("project.yaml", PROJECT);
    for (name, contents) in files {
        dir.write(name, contents);
    }
    let json = dir.meshploy(&["validate", ".", "--format", "json"]);
    assert_eq!(
        json.code, 1,
        "json run should fail:\n{}{}",
        json.stdout, json.stderr
    );
    let report = json.json();
    assert_eq!(report["valid"], false);
    let found: Vec<(String, String, String)> = report["diagnostics"]
        .as_array()
        .expect("diagnostics")
        .iter()
        .map(|d| {
            let file = d["file"].as_str().expect("file").trim_start_matches("./");
            (
                format!("{file}:{}:{}", d["line"], d["column"]),
                d["code"].as_str().expect("code").to_owned(),
                d["message"].as_str().expect("message").to_owned(),
            )
        })
        .collect();
    assert_eq!(found.len(), expected.len(), "diagnostics: {found:#?}");
    for ((loc, code, message), (want_loc, want_code, fragment)) in found.iter().zip(expected) {
        assert_eq!(
            (loc.as_str(), code.as_str()),
            (*want_loc, *want_code),
            "{message}"
        );
        assert!(
            message.contains(fragment),
            "`{message}` should contain `{fragment}`"
        );
    }
    let text = dir.meshploy(&["validate", "."]);
    assert_eq!(text.code, 1, "{}", text.stderr);
    for (loc, _, fragment) in expected {
        assert!(
            text.stderr.contains(&format!("--> ./{loc}")),
            "no `--> ./{loc}` in:\n{}",
            text.stderr
        );
        assert!(
            text.stderr.contains(fragment),
            "no `{fragment}` in:\n{}",
            text.stderr
        );
    }
    text.stderr
}

#[test]
fn the_examples_are_valid() {
    for example in ["examples/shop", "examples/minimal"] {
        let dir = repo_root().join(example);
        let run = crate::util::Run::new(crate::util::meshploy().arg("validate").arg(&dir).output());
        assert_eq!(run.code, 0, "{example}: {}", run.stderr);
        assert!(run.stdout.starts_with("ok: "), "{}", run.stdout);
    }
}

#[test]
fn a_valid_directory_reports_what_it_found() {
    let dir = Dir::new();
    dir.write("project.yaml", PROJECT);
    dir.write("nested/web.yml", service("web", "  image: nginx\n"));
    let run = dir.meshploy(&["validate"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout.trim(),
        "ok: 2 resources in 2 files (1 Project, 0 VariableGroups, 1 Service, 0 Routes)"
    );
    let json = dir.meshploy(&["validate", "--format", "json"]).json();
    assert_eq!(json["valid"], true);
    assert_eq!(json["resources"], 2);
}

#[test]
fn unknown_fields_suggest_the_nearest_field() {
    let stderr = rejects(
        &[(
            "web.yaml",
            &service("web", "  image: nginx\n  replica: 3\n"),
        )],
        &[("web.yaml:8:3", "unknown-field", "unknown field `replica`")],
    );
    expect![[r#"
        error[unknown-field]: unknown field `replica`
         --> ./web.yaml:8:3
          |
        8 |   replica: 3
          |   ^^^^^^^
          = help: did you mean `replicas`?

        error: 1 problem in 1 file
    "#]]
    .assert_eq(&stderr);
}

#[test]
fn the_same_address_twice_names_both_places() {
    let stderr = rejects(
        &[
            ("a.yaml", &service("web", "  image: nginx\n")),
            ("b.yaml", &service("web", "  image: httpd\n")),
        ],
        &[(
            "b.yaml:4:9",
            "duplicate-resource",
            "service/shop/web is declared twice",
        )],
    );
    assert!(
        stderr.contains("first declared at ./a.yaml:4:9"),
        "{stderr}"
    );
}

#[test]
fn one_host_and_path_belongs_to_one_route_across_projects() {
    let other_project = "apiVersion: meshploy.dev/v1\nkind: Project\nmetadata:\n  name: blog\n---\napiVersion: meshploy.dev/v1\nkind: Route\nmetadata:\n  name: home\n  project: blog\nspec:\n  host: WWW.example.com\n  path: /docs/\n  upstream: https://blog.example\n";
    let stderr = rejects(
        &[
            (
                "a.yaml",
                &route(
                    "home",
                    "  host: www.example.com\n  path: /docs\n  upstream: https://a.example\n",
                ),
            ),
            ("b.yaml", other_project),
        ],
        &[(
            "b.yaml:12:9",
            "route-conflict",
            "host `www.example.com` path `/docs` is already routed by route/shop/home",
        )],
    );
    assert!(
        stderr.contains("route/shop/home claims it at ./a.yaml:7:9"),
        "{stderr}"
    );
}

#[test]
fn a_name_is_either_a_variable_or_a_secret() {
    let envelope = std::fs::read_to_string(repo_root().join("examples/shop/variables.yaml"))
        .expect("example")
        .lines()
        .find_map(|l| l.trim().strip_prefix("STRIPE_API_KEY: ").map(str::to_owned))
        .expect("example envelope");
    let group = format!(
        "apiVersion: meshploy.dev/v1\nkind: VariableGroup\nmetadata:\n  name: db\n  project: shop\nspec:\n  variables:\n    KEY: a\n  secrets:\n    KEY: {envelope}\n"
    );
    rejects(
        &[("db.yaml", &group)],
        &[(
            "db.yaml:10:5",
            "duplicate-variable",
            "`KEY` is both a variable and a secret",
        )],
    );
}

#[test]
fn multi_document_files_skip_empty_documents() {
    let dir = Dir::new();
    let web = service("web", "  image: nginx\n");
    dir.write(
        "all.yaml",
        format!("---\n{PROJECT}---\n# only a comment\n---\n{web}---\n"),
    );
    dir.write("empty.yaml", "# nothing here yet\n");
    let run = dir.meshploy(&["validate"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("ok: 2 resources in 2 files"),
        "{}",
        run.stdout
    );
}

#[test]
fn all_problems_are_reported_at_once() {
    let stderr = rejects(
        &[
            (
                "a.yaml",
                &service("a", "  image: nginx\n  replicas: 5000\n  port: 0\n"),
            ),
            ("b.yaml", &service("b", "  image: nginx\n  colour: red\n")),
        ],
        &[
            ("a.yaml:8:13", "out-of-range", "replicas 5000"),
            ("a.yaml:9:9", "invalid-port", "port 0"),
            ("b.yaml:8:3", "unknown-field", "unknown field `colour`"),
        ],
    );
    assert!(
        stderr.ends_with("error: 3 problems in 2 files\n"),
        "{stderr}"
    );
}

#[test]
fn non_utf8_files_are_rejected_by_name() {
    let dir = Dir::new();
    dir.write("project.yaml", PROJECT);
    dir.write(
        "latin1.yaml",
        b"apiVersion: meshploy.dev/v1\nkind: Project\nmetadata:\n  name: caf\xe9\n",
    );
    let run = dir.meshploy(&["validate", "--format", "json"]);
    assert_eq!(run.code, 1);
    let d = &run.json()["diagnostics"][0];
    assert_eq!(
        (d["file"].as_str(), d["code"].as_str()),
        (Some("./latin1.yaml"), Some("invalid-utf8"))
    );
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64()),
        (Some(4), Some(12))
    );
}

#[test]
fn oversized_files_and_too_many_documents_are_refused() {
    let dir = Dir::new();
    dir.write("project.yaml", PROJECT);
    dir.write("huge.yaml", format!("# {}\n", "x".repeat(1024 * 1024)));
    dir.write("many.yaml", "---\n{}\n".repeat(1001));
    let run = dir.meshploy(&["validate", "--format", "json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let codes: Vec<String> = run.json()["diagnostics"]
        .as_array()
        .expect("diagnostics")
        .iter()
        .map(|d| {
            format!(
                "{} {}",
                d["file"].as_str().unwrap_or_default(),
                d["code"].as_str().unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        codes,
        [
            "./huge.yaml file-too-large",
            "./many.yaml too-many-documents"
        ]
    );
}

#[test]
fn alias_bombs_and_deep_nesting_hit_the_limits() {
    let bomb = crate::yaml_bomb::billion_laughs();
    assert!(bomb.len() <= 1024, "{} bytes", bomb.len());
    let deep = format!("spec:\n  x: {}{}\n", "[".repeat(200), "]".repeat(200));
    let dir = Dir::new();
    dir.write("project.yaml", PROJECT);
    dir.write("bomb.yaml", &bomb);
    dir.write("deep.yaml", deep);
    let run = dir.meshploy(&["validate", "--format", "json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let found: Vec<(String, String)> = run.json()["diagnostics"]
        .as_array()
        .expect("diagnostics")
        .iter()
        .map(|d| {
            (
                d["file"].as_str().unwrap_or_default().into(),
                d["code"].as_str().unwrap_or_default().into(),
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            ("./bomb.yaml".into(), "yaml-limit".into()),
            ("./deep.yaml".into(), "yaml-limit".into())
        ]
    );
}

#[test]
fn hidden_directories_and_other_files_are_ignored() {
    let dir = Dir::new();
    dir.write("project.yaml", PROJECT);
    dir.write(".github/workflows/ci.yaml", "on: push\n");
    dir.write("README.md", "# not a manifest\n");
    dir.write("web.yml", service("web", "  image: nginx\n"));
    let run = dir.meshploy(&["validate"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("ok: 2 resources in 2 files"),
        "{}",
        run.stdout
    );
}

#[test]
fn symlinks_out_of_the_directory_are_an_error() {
    let outside = Dir::new();
    let secret = outside.write("passwd.yaml", PROJECT);
    let dir = Dir::new();
    dir.write("project.yaml", PROJECT);
    std::os::unix::fs::symlink(&secret, dir.path().join("link.yaml")).expect("symlink");
    let run = dir.meshploy(&["validate"]);
    run.assert_fails_with("link.yaml links to");
    assert!(
        run.stderr.contains("outside the manifest directory"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_missing_directory_is_an_error_not_an_empty_state() {
    let dir = Dir::new();
    let run = dir.meshploy(&["validate", "does-not-exist"]);
    run.assert_fails_with("cannot read manifest directory does-not-exist");
}

#[test]
fn a_fifo_named_like_a_manifest_is_an_error_not_skipped() {
    let dir = Dir::new();
    dir.write("project.yaml", PROJECT);
    let status = std::process::Command::new("mkfifo")
        .arg(dir.path().join("pipe.yaml"))
        .status()
        .expect("mkfifo");
    assert!(status.success());
    let run = dir.meshploy(&["validate", "."]);
    run.assert_fails_with("pipe.yaml is a FIFO; manifests must be regular files");
}

#[test]
fn plain_text_pasted_under_secrets_is_never_echoed_by_any_error() {
    let dir = Dir::new();
    dir.write("project.yaml", PROJECT);
    let values = [
        "@hunter2-at",
        "\"hunter2-open-quote",
        "'hunter2-single",
        "%hunter2-percent",
        "*hunter2-alias",
        "[hunter2-flow",
        "{hunter2-brace",
        "hunter2: colon x",
        "!!binary aHVudGVyMg==-hunter2",
        "&hunter2-anchor",
        "meshploy:v1:HUNTER2_KEY:aGVsbG8",
        "`hunter2-backtick",
        "|hunter2-pipe",
    ];
    for (i, value) in values.iter().enumerate() {
        dir.write(
            &format!("g{i}.yaml"),
            format!(
                "apiVersion: meshploy.dev/v1\nkind: VariableGroup\nmetadata:\n  name: g{i}\n  project: shop\nspec:\n  secrets:\n    PASSWORD: {value}\n"
            ),
        );
    }
    let text = dir.meshploy(&["validate", "."]);
    assert_eq!(text.code, 1, "{}", text.stderr);
    let json = dir.meshploy(&["validate", ".", "--format", "json"]);
    for (form, output) in [("text", &text.stderr), ("json", &json.stdout)] {
        let lower = output.to_lowercase();
        assert!(
            !lower.contains("hunter2"),
            "{form} output echoes a secret:\n{output}"
        );
    }
    // Every file is reported, each at its own place.
    for i in 0..values.len() {
        assert!(
            text.stderr.contains(&format!("g{i}.yaml")),
            "g{i}.yaml:\n{}",
            text.stderr
        );
    }
}

#[test]
fn credentials_in_a_services_git_url_are_refused_without_being_echoed() {
    const TOKEN: &str = "ghp_k33pth1s0utofg1t";
    for (url, part) in [
        (
            format!("https://bot:{TOKEN}@github.com/acme/shop.git"),
            "user information",
        ),
        (
            format!("https://{TOKEN}@github.com/acme/shop.git"),
            "user information",
        ),
        (
            format!("ssh://git:{TOKEN}@github.com/acme/shop.git"),
            "user information",
        ),
        (
            format!("https://github.com/acme/shop.git?access_token={TOKEN}"),
            "query",
        ),
    ] {
        let spec =
            format!("  source:\n    git: {url}\n  build:\n    strategy: none\n  command: ./run\n");
        let stderr = rejects(
            &[("web.yaml", &service("web", &spec))],
            &[("web.yaml:8:10", "credentials-in-url", part)],
        );
        assert!(
            !stderr.contains(TOKEN),
            "{url}: the token was echoed:\n{stderr}"
        );
        assert!(
            stderr.contains("credential helper"),
            "{url}: the diagnostic points at the supported way:\n{stderr}"
        );
    }
    // A user name alone is how ssh and scp-like URLs name their login, not a credential.
    let dir = Dir::new();
    dir.write("project.yaml", PROJECT);
    for (i, url) in [
        "git@github.com:acme/shop.git",
        "ssh://git@github.com/acme/shop.git",
    ]
    .iter()
    .enumerate()
    {
        let spec =
            format!("  source:\n    git: {url}\n  build:\n    strategy: none\n  command: ./run\n");
        dir.write(&format!("web{i}.yaml"), service(&format!("web{i}"), &spec));
    }
    let run = dir.meshploy(&["validate"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn every_problem_of_a_document_is_reported_at_once() {
    // An unknown field no longer hides the rest: the port after it, a misspelt field deeper
    // down, and the next document's problems are reported in the same run.
    rejects(
        &[(
            "web.yaml",
            &(service(
                "web",
                "  image: nginx\n  replica: 3\n  port: 99999\n  healthCheck:\n    path: /healthz\n    periodSecond: 5\n",
            ) + "---\n"
                + &route(
                    "web",
                    "  host: shop.example.com:80\n  servic: web\n  service: web\n",
                )),
        )],
        &[
            ("web.yaml:8:3", "unknown-field", "unknown field `replica`"),
            ("web.yaml:9:9", "invalid-port", "99999"),
            (
                "web.yaml:12:5",
                "unknown-field",
                "unknown field `periodSecond`",
            ),
            ("web.yaml:20:9", "invalid-host", "includes a port"),
            ("web.yaml:21:3", "unknown-field", "unknown field `servic`"),
        ],
    );
}

#[test]
fn the_readme_shows_what_validate_says_of_examples_broken() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let shown = readme
        .split("`validate` prints every problem at once")
        .nth(1)
        .and_then(|rest| rest.split("```text\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("the README's example output");
    let run = crate::util::Run::new(
        crate::util::meshploy()
            .current_dir(repo_root())
            .args(["validate", "examples/broken"])
            .output(),
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.stderr, shown);
}
