//! `meshploy validate`: every rule rejects bad input with its code, message and location.

use expect_test::expect;

use crate::util::{Dir, repo_root};

const PROJECT: &str = "apiVersion: meshploy.dev/v1\nkind: Project\nmetadata:\n  name: shop\n";

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
fn unknown_top_level_and_metadata_fields_are_errors() {
    rejects(
        &[
            (
                "a.yaml",
                &format!("{}status: {{}}\n", service("a", "  image: nginx\n")),
            ),
            (
                "b.yaml",
                "apiVersion: meshploy.dev/v1\nkind: Project\nmetadata:\n  name: b\n  labels: {}\n",
            ),
        ],
        &[
            ("a.yaml:8:1", "unknown-field", "unknown field `status`"),
            ("b.yaml:5:3", "unknown-field", "unknown field `labels`"),
        ],
    );
}

#[test]
fn wrong_types_name_the_expected_type() {
    rejects(
        &[(
            "web.yaml",
            &service("web", "  image: nginx\n  port: eighty\n  env: [A]\n"),
        )],
        &[("web.yaml:8:3", "invalid-type", "expected an integer")],
    );
}

#[test]
fn names_must_be_dns_labels() {
    let stderr = rejects(
        &[("web.yaml", &service("Web_1", "  image: nginx\n"))],
        &[(
            "web.yaml:4:9",
            "invalid-name",
            "`Web_1` is not a valid name",
        )],
    );
    assert!(stderr.contains("did you mean `web-1`?"), "{stderr}");
    rejects(
        &[("web.yaml", &service(&"a".repeat(64), "  image: nginx\n"))],
        &[("web.yaml:4:9", "invalid-name", "at most 63")],
    );
}

#[test]
fn reserved_project_names_are_refused() {
    rejects(
        &[(
            "system.yaml",
            "apiVersion: meshploy.dev/v1\nkind: Project\nmetadata:\n  name: kube-system\n",
        )],
        &[(
            "system.yaml:4:9",
            "reserved-name",
            "project name `kube-system` is reserved",
        )],
    );
}

#[test]
fn hosts_must_be_rfc1123_with_wildcards_only_leftmost() {
    rejects(
        &[
            (
                "a.yaml",
                &route(
                    "a",
                    "  host: shop.example.com:443\n  upstream: https://x.example\n",
                ),
            ),
            (
                "b.yaml",
                &route(
                    "b",
                    "  host: api.*.example.com\n  upstream: https://x.example\n",
                ),
            ),
            (
                "c.yaml",
                &route(
                    "c",
                    "  host: bad_host.example.com\n  upstream: https://x.example\n",
                ),
            ),
        ],
        &[
            ("a.yaml:7:9", "invalid-host", "includes a port"),
            ("b.yaml:7:9", "invalid-host", "wildcard"),
            ("c.yaml:7:9", "invalid-host", "label `bad_host`"),
        ],
    );
}

#[test]
fn route_paths_start_with_slash_without_dot_segments_or_empty_segments() {
    let spec = |path: &str| {
        format!("  host: x.example.com\n  path: {path}\n  upstream: https://x.example\n")
    };
    rejects(
        &[
            ("a.yaml", &route("a", &spec("api"))),
            ("b.yaml", &route("b", &spec("/a/../b"))),
            ("c.yaml", &route("c", &spec("/a//b"))),
        ],
        &[
            ("a.yaml:8:9", "invalid-path", "does not start with `/`"),
            ("b.yaml:8:9", "invalid-path", "`..`"),
            ("c.yaml:8:9", "invalid-path", "empty segment"),
        ],
    );
}

#[test]
fn ports_must_be_between_1_and_65535() {
    rejects(
        &[
            ("a.yaml", &service("a", "  image: nginx\n  port: 70000\n")),
            ("b.yaml", &service("b", "  image: nginx\n  port: 0\n")),
        ],
        &[
            (
                "a.yaml:8:9",
                "invalid-port",
                "port 70000 is out of range (1 to 65535)",
            ),
            ("b.yaml:8:9", "invalid-port", "port 0 is out of range"),
        ],
    );
}

#[test]
fn replicas_must_be_between_0_and_1000() {
    rejects(
        &[
            (
                "a.yaml",
                &service("a", "  image: nginx\n  replicas: 1001\n"),
            ),
            ("b.yaml", &service("b", "  image: nginx\n  replicas: -1\n")),
        ],
        &[
            (
                "a.yaml:8:13",
                "out-of-range",
                "replicas 1001 is out of range (0 to 1000)",
            ),
            ("b.yaml:8:13", "out-of-range", "replicas -1 is out of range"),
        ],
    );
}

#[test]
fn cpu_and_memory_must_be_kubernetes_quantities() {
    let stderr = rejects(
        &[(
            "a.yaml",
            &service(
                "a",
                "  image: nginx\n  resources:\n    cpu: lots\n    memory: 512MB\n",
            ),
        )],
        &[
            (
                "a.yaml:9:10",
                "invalid-quantity",
                "`lots` is not a Kubernetes quantity",
            ),
            (
                "a.yaml:10:13",
                "invalid-quantity",
                "`512MB` is not a Kubernetes quantity",
            ),
        ],
    );
    assert!(
        stderr.contains("did you mean `512M` or `512Mi`?"),
        "{stderr}"
    );
}

#[test]
fn env_var_names_must_be_portable() {
    let stderr = rejects(
        &[(
            "a.yaml",
            &service("a", "  image: nginx\n  env:\n    api-key: x\n    1ST: y\n"),
        )],
        &[
            (
                "a.yaml:9:5",
                "invalid-env-name",
                "`api-key` is not a valid environment variable name",
            ),
            ("a.yaml:10:5", "invalid-env-name", "`1ST`"),
        ],
    );
    assert!(stderr.contains("did you mean `API_KEY`?"), "{stderr}");
}

#[test]
fn a_service_has_exactly_one_of_image_and_source() {
    rejects(
        &[
            (
                "a.yaml",
                &service(
                    "a",
                    "  image: nginx\n  source:\n    git: https://example.com/a.git\n",
                ),
            ),
            ("b.yaml", &service("b", "  replicas: 2\n")),
        ],
        &[
            ("a.yaml:9:5", "conflict", "has both `image` and `source`"),
            (
                "b.yaml:6:1",
                "missing-field",
                "has neither `image` nor `source`",
            ),
        ],
    );
}

#[test]
fn build_settings_must_match_the_strategy() {
    let source = "  source:\n    git: https://example.com/a.git\n";
    rejects(
        &[
            (
                "a.yaml",
                &service("a", &format!("{source}  build:\n    strategy: nixpack\n")),
            ),
            (
                "b.yaml",
                &service("b", &format!("{source}  build:\n    strategy: command\n")),
            ),
            (
                "c.yaml",
                &service("c", "  image: nginx\n  build:\n    strategy: auto\n"),
            ),
        ],
        &[
            (
                "a.yaml:10:15",
                "invalid-value",
                "unknown build strategy `nixpack`",
            ),
            (
                "b.yaml:10:15",
                "missing-field",
                "`strategy: command` needs `build.command`",
            ),
            (
                "c.yaml:9:5",
                "conflict",
                "`build` applies only to a service with `source`",
            ),
        ],
    );
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
fn routes_must_reference_a_service_in_the_same_project() {
    let stderr = rejects(
        &[
            ("web.yaml", &service("web", "  image: nginx\n")),
            (
                "r.yaml",
                &route("r", "  host: x.example.com\n  service: wbe\n"),
            ),
        ],
        &[(
            "r.yaml:8:12",
            "unknown-reference",
            "service `wbe` is not declared in project `shop`",
        )],
    );
    assert!(stderr.contains("did you mean `web`?"), "{stderr}");
}

#[test]
fn services_must_reference_declared_variable_groups() {
    rejects(
        &[(
            "web.yaml",
            &service("web", "  image: nginx\n  variableGroups: [common]\n"),
        )],
        &[(
            "web.yaml:8:20",
            "unknown-reference",
            "variable group `common` is not declared",
        )],
    );
}

#[test]
fn resources_must_belong_to_a_declared_project() {
    let other = "apiVersion: meshploy.dev/v1\nkind: Service\nmetadata:\n  name: web\n  project: shoes\nspec:\n  image: nginx\n";
    let stderr = rejects(
        &[("web.yaml", other)],
        &[(
            "web.yaml:5:12",
            "unknown-reference",
            "project `shoes` is not declared",
        )],
    );
    assert!(
        stderr.contains("add a Project document named `shoes`"),
        "{stderr}"
    );
}

#[test]
fn a_route_port_must_be_one_the_service_exposes() {
    let stderr = rejects(
        &[
            (
                "web.yaml",
                &service(
                    "web",
                    "  image: nginx\n  port: 3000\n  additionalPorts: [9090]\n",
                ),
            ),
            (
                "r.yaml",
                &route("r", "  host: x.example.com\n  service: web\n  port: 9091\n"),
            ),
        ],
        &[(
            "r.yaml:9:9",
            "unknown-reference",
            "service/shop/web does not expose port 9091",
        )],
    );
    assert!(stderr.contains("it exposes 3000, 9090"), "{stderr}");
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
fn secrets_must_be_envelopes_and_are_never_echoed() {
    let group = "apiVersion: meshploy.dev/v1\nkind: VariableGroup\nmetadata:\n  name: db\n  project: shop\nspec:\n  secrets:\n    PASSWORD: hunter2-plaintext\n    TOKEN: meshploy:v1:k1:AAAA\n";
    let stderr = rejects(
        &[("db.yaml", group)],
        &[
            (
                "db.yaml:8:15",
                "invalid-secret",
                "secret `PASSWORD`: not a Meshploy secret envelope",
            ),
            (
                "db.yaml:9:12",
                "invalid-secret",
                "secret `TOKEN`: envelope payload is too short",
            ),
        ],
    );
    assert!(!stderr.contains("hunter2"), "plaintext leaked:\n{stderr}");
    assert!(stderr.contains("meshploy secret encrypt"), "{stderr}");
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
fn documents_need_a_known_kind_and_api_version() {
    let stderr = rejects(
        &[
            (
                "a.yaml",
                "apiVersion: meshploy.dev/v1\nmetadata:\n  name: a\n",
            ),
            (
                "b.yaml",
                "apiVersion: meshploy.dev/v1\nkind: Servce\nmetadata:\n  name: b\n",
            ),
            (
                "c.yaml",
                "apiVersion: apps/v1\nkind: Project\nmetadata:\n  name: c\n",
            ),
        ],
        &[
            ("a.yaml:1:1", "missing-field", "document has no `kind`"),
            ("b.yaml:2:7", "unknown-kind", "unknown kind `Servce`"),
            (
                "c.yaml:1:13",
                "unsupported-api-version",
                "unsupported apiVersion `apps/v1`",
            ),
        ],
    );
    assert!(stderr.contains("did you mean `Service`?"), "{stderr}");
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
fn a_spec_written_before_its_kind_is_still_checked() {
    let doc = "spec:\n  image: nginx\n  replica: 2\napiVersion: meshploy.dev/v1\nkind: Service\nmetadata:\n  name: web\n  project: shop\n";
    rejects(
        &[("web.yaml", doc)],
        &[("web.yaml:1:1", "invalid-type", "unknown field `replica`")],
    );
}

#[test]
fn yaml_syntax_errors_and_duplicate_keys_are_located() {
    rejects(
        &[
            (
                "a.yaml",
                "apiVersion: meshploy.dev/v1\nkind: Project\nmetadata:\n  name: \"unterminated\n",
            ),
            (
                "b.yaml",
                "apiVersion: meshploy.dev/v1\nkind: Project\nkind: Service\nmetadata:\n  name: b\n",
            ),
        ],
        &[
            ("a.yaml:4:9", "yaml-syntax", "unclosed quote"),
            ("b.yaml:3:1", "yaml-syntax", "duplicate mapping key"),
        ],
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
