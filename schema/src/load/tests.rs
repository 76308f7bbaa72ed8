//! The loader's rules, case by case: files in, exactly the expected diagnostics out
//! (location, code and message), checked on the loader itself and on its rendering. The
//! command's own output (`meshploy validate`) keeps a few end-to-end tests in `tests/`.

use super::{Limits, ManifestFile, load};

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

/// Loads `files` (plus a `shop` project, in path order as the readers give them) and checks
/// that exactly the `expected` diagnostics come out: `(location, code, message fragment)`,
/// with locations written as `file:line:column`. Returns every diagnostic rendered as
/// `meshploy validate` prints it, after checking that each names its location and message.
fn rejects(files: &[(&str, &str)], expected: &[(&str, &str, &str)]) -> String {
    let mut all = vec![ManifestFile::new("project.yaml", PROJECT.into())];
    all.extend(
        files
            .iter()
            .map(|(path, text)| ManifestFile::new(*path, text.as_bytes().to_vec())),
    );
    all.sort_by(|a, b| a.path.cmp(&b.path));
    let diagnostics = load(&all, &Limits::default()).expect_err("the files should be rejected");
    let found: Vec<(String, String, String)> = diagnostics
        .iter()
        .map(|d| {
            (
                format!("{}:{}:{}", d.file, d.line, d.column),
                d.code.to_string(),
                d.message.clone(),
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
    let text: String = diagnostics
        .iter()
        .map(|d| {
            let source = all
                .iter()
                .find(|f| f.path == d.file)
                .and_then(|f| std::str::from_utf8(&f.bytes).ok());
            d.render(source)
        })
        .collect();
    for (loc, _, fragment) in expected {
        assert!(
            text.contains(&format!("--> {loc}")),
            "no `--> {loc}` in:\n{text}"
        );
        assert!(text.contains(fragment), "no `{fragment}` in:\n{text}");
    }
    text
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
            (
                "d.yaml",
                &service(
                    "d",
                    &format!("{source}  build:\n    strategy: none\n    command: make\n"),
                ),
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
            (
                "d.yaml:11:14",
                "conflict",
                "`build.command` applies only to `strategy: command`",
            ),
        ],
    );
}

#[test]
fn a_source_may_run_as_checked_out_with_strategy_none() {
    let text = service(
        "a",
        "  source:\n    git: https://example.com/a.git\n  build:\n    strategy: none\n  command: ./run\n",
    );
    let files = [
        ManifestFile::new("project.yaml", PROJECT.into()),
        ManifestFile::new("a.yaml", text.into_bytes()),
    ];
    let state = load(&files, &Limits::default()).expect("strategy none is valid");
    let service = state.resources.values().find_map(|r| match &r.spec {
        crate::model::Spec::Service(s) => Some(s.clone()),
        _ => None,
    });
    let workload = service.expect("one service").workload;
    assert!(
        matches!(
            workload,
            crate::model::Workload::Source {
                build: crate::model::Build::None,
                ..
            }
        ),
        "{workload:?}"
    );
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
fn a_spec_written_before_its_kind_is_still_checked() {
    let doc = "spec:\n  image: nginx\n  replica: 2\napiVersion: meshploy.dev/v1\nkind: Service\nmetadata:\n  name: web\n  project: shop\n";
    rejects(
        &[("web.yaml", doc)],
        &[("web.yaml:1:1", "unknown-field", "unknown field `replica`")],
    );
}

#[test]
fn an_unknown_field_hides_none_of_the_other_problems() {
    let text = rejects(
        &[(
            "web.yaml",
            &(service(
                "web",
                "  image: nginx\n  replica: 3\n  port: 99999\n  resources:\n    memroy: 1Gi\n    cpu: lots\n",
            ) + "---\n"
                + &route("web", "  host: web.test\n  servic: web\n")),
        )],
        &[
            ("web.yaml:8:3", "unknown-field", "unknown field `replica`"),
            ("web.yaml:9:9", "invalid-port", "port 99999 is out of range"),
            ("web.yaml:11:5", "unknown-field", "unknown field `memroy`"),
            ("web.yaml:12:10", "invalid-quantity", "lots"),
            (
                "web.yaml:19:1",
                "missing-field",
                "has neither `service` nor `upstream`",
            ),
            ("web.yaml:21:3", "unknown-field", "unknown field `servic`"),
        ],
    );
    assert!(text.contains("did you mean `memory`?"), "{text}");
    assert!(text.contains("did you mean `service`?"), "{text}");
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
