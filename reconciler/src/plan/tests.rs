//! Tests of the plan core with plain data: snapshots of the renderings, the diff's
//! round-trip property, ordering and guards.

use expect_test::expect;
use proptest::prelude::*;
use schema::{Address, Kind, ManifestFile};

use super::*;

const BEFORE: &str = r#"
apiVersion: meshploy.dev/v1
kind: Project
metadata: {name: shop}
---
apiVersion: meshploy.dev/v1
kind: VariableGroup
metadata: {name: payments, project: shop}
spec:
  secrets:
    STRIPE_API_KEY: meshploy:v1:k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
---
apiVersion: meshploy.dev/v1
kind: Service
metadata: {name: web, project: shop}
spec:
  image: ghcr.io/acme/web:1.4.2
  replicas: 2
  command: |
    ./server
    --verbose
  env: {OLD_FLAG: "1", LOG_LEVEL: info}
---
apiVersion: meshploy.dev/v1
kind: Service
metadata: {name: api, project: shop}
spec:
  image: ghcr.io/acme/api:2.0.0
---
apiVersion: meshploy.dev/v1
kind: Route
metadata: {name: legacy, project: shop}
spec: {host: old.example.com, upstream: "https://legacy.example.com"}
"#;

const AFTER: &str = r#"
apiVersion: meshploy.dev/v1
kind: Project
metadata: {name: shop}
---
apiVersion: meshploy.dev/v1
kind: VariableGroup
metadata: {name: payments, project: shop}
spec:
  secrets:
    STRIPE_API_KEY: meshploy:v1:k1:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB
---
apiVersion: meshploy.dev/v1
kind: Service
metadata: {name: web, project: shop}
spec:
  image: ghcr.io/acme/web:1.4.2
  replicas: 3
  command: |
    ./server
    --quiet
  env: {LOG_LEVEL: debug, NEW_FLAG: "on"}
---
apiVersion: meshploy.dev/v1
kind: Service
metadata: {name: api, project: shop}
spec:
  source: {git: "https://github.com/acme/api.git"}
---
apiVersion: meshploy.dev/v1
kind: Route
metadata: {name: web, project: shop}
spec: {host: shop.example.com, service: web}
"#;

/// Loads manifests and flattens them, with a stand-in digest that depends only on the
/// envelope (a real digest is keyed; the plan only compares digests).
fn state(yaml: &str, version: Option<i64>) -> State {
    let files = [ManifestFile::new("test.yaml", yaml.as_bytes().to_vec())];
    let desired = schema::load(&files, &schema::Limits::default()).expect("valid manifests");
    desired
        .resources
        .values()
        .map(|resource| {
            let mut entry = flatten(resource, |_, envelope| {
                Ok::<_, std::convert::Infallible>(format!(
                    "digest-of-{}",
                    envelope.ciphertext().len() + envelope.nonce()[0] as usize
                ))
            })
            .expect("flatten");
            entry.version = version;
            (resource.address.clone(), entry)
        })
        .collect()
}

fn representative() -> Plan {
    diff(&state(AFTER, None), &state(BEFORE, Some(7)))
}

#[test]
fn text_rendering() {
    let rendered = text(&representative());
    expect![[r#"
        Meshploy will perform the following actions:

          # variablegroup/shop/payments will be updated in-place
          ~ variablegroup/shop/payments {
              ~ secrets.STRIPE_API_KEY = (sensitive value)
            }

          # service/shop/api must be replaced
        -/+ service/shop/api {
              + build.strategy = "auto"
              - image          = "ghcr.io/acme/api:2.0.0" -> null # forces replacement
              + source.git     = "https://github.com/acme/api.git" # forces replacement
              + source.path    = ""
              + source.ref     = "main"
            }

          # service/shop/web will be updated in-place
          ~ service/shop/web {
              ~ command       = <<-EOT
                  @@ -1,2 +1,2 @@
                   ./server
                  ---verbose
                  +--quiet
                EOT
              ~ env.LOG_LEVEL = "info" -> "debug"
              + env.NEW_FLAG  = "on"
              - env.OLD_FLAG  = "1" -> null
              ~ replicas      = 2 -> 3
            }

          # route/shop/legacy will be destroyed
          - route/shop/legacy {
              - host        = "old.example.com"
              - path        = "/"
              - stripPrefix = false
              - upstream    = "https://legacy.example.com"
            }

          # route/shop/web will be created
          + route/shop/web {
              + host        = "shop.example.com"
              + path        = "/"
              + port        = 8080
              + service     = "web"
              + stripPrefix = false
            }

        Plan: 2 to add, 2 to change, 2 to destroy.
    "#]]
    .assert_eq(&rendered);
}

fn text(plan: &Plan) -> String {
    render::text(plan, false)
}

#[test]
fn json_rendering_hides_sensitive_values() {
    let json = render::json(&representative());
    let text = serde_json::to_string(&json).expect("serialise");
    assert!(!text.contains("digest-of"), "a digest leaked: {text}");
    expect![[r#"
        {
          "action": "update",
          "address": "variablegroup/shop/payments",
          "fields": [
            {
              "forcesReplacement": false,
              "path": "secrets.STRIPE_API_KEY",
              "sensitive": true
            }
          ],
          "kind": "VariableGroup",
          "name": "payments",
          "project": "shop",
          "protect": false,
          "version": 7
        }"#]]
    .assert_eq(&serde_json::to_string_pretty(&json["changes"][0]).expect("json"));
    assert_eq!(
        json["summary"],
        serde_json::json!({"add": 2, "change": 2, "destroy": 2})
    );
    assert_eq!(json["changes"][1]["action"], "replace");
    assert_eq!(json["changes"][1]["version"], 7);
}

#[test]
fn markdown_rendering() {
    expect![[r#####"
        #### Meshploy plan for shop

        Plan: 2 to add, 2 to change, 2 to destroy.

        ```diff
           # variablegroup/shop/payments will be updated in-place
        !   variablegroup/shop/payments {
        !       secrets.STRIPE_API_KEY = (sensitive value)
             }

           # service/shop/api must be replaced
        !   service/shop/api {
        +       build.strategy = "auto"
        -       image          = "ghcr.io/acme/api:2.0.0" -> null # forces replacement
        +       source.git     = "https://github.com/acme/api.git" # forces replacement
        +       source.path    = ""
        +       source.ref     = "main"
             }

           # service/shop/web will be updated in-place
        !   service/shop/web {
        !       command       = <<-EOT
                   @@ -1,2 +1,2 @@
                    ./server
        -          --verbose
        +          --quiet
                 EOT
        !       env.LOG_LEVEL = "info" -> "debug"
        +       env.NEW_FLAG  = "on"
        -       env.OLD_FLAG  = "1" -> null
        !       replicas      = 2 -> 3
             }

           # route/shop/legacy will be destroyed
        -   route/shop/legacy {
        -       host        = "old.example.com"
        -       path        = "/"
        -       stripPrefix = false
        -       upstream    = "https://legacy.example.com"
             }

           # route/shop/web will be created
        +   route/shop/web {
        +       host        = "shop.example.com"
        +       path        = "/"
        +       port        = 8080
        +       service     = "web"
        +       stripPrefix = false
             }

        ```
    "#####]]
    .assert_eq(&render::markdown(
        &representative(),
        "Meshploy plan for shop",
    ));
}

#[test]
fn markdown_folds_long_plans_and_stays_under_githubs_limit() {
    let desired: State = (0..5000)
        .map(|i| {
            let mut entry = Entry::default();
            entry.fields.insert(
                "image".into(),
                Value::Text(format!("registry.example.com/team/service-{i}:1.0.0")),
            );
            entry.fields.insert("replicas".into(), Value::Int(2));
            (
                Address::new(Kind::Service, "big", &format!("svc{i:04}")),
                entry,
            )
        })
        .collect();
    let plan = diff(&desired, &State::new());
    let md = render::markdown(&plan, "Meshploy plan");
    assert!(md.len() < 65_536, "{} characters", md.len());
    assert!(md.contains("<details><summary>Show the plan (5000 changes)</summary>"));
    assert!(
        md.contains("more changes are not shown"),
        "no truncation note"
    );
    assert!(
        md.trim_end()
            .ends_with("run `meshploy plan` to see the whole plan.")
    );
    let small = render::markdown(&representative(), "Meshploy plan");
    assert!(!small.contains("<details>"));
}

#[test]
fn no_changes() {
    let same = state(AFTER, Some(1));
    let plan = diff(&state(AFTER, None), &same);
    assert!(plan.is_empty(), "{plan:#?}");
    assert_eq!(
        text(&plan),
        "No changes. The platform's state matches the manifests.\n"
    );
}

#[test]
fn apply_order_deletes_children_first_then_creates_parents_first() {
    let desired = state(AFTER, None);
    let plan = diff(&State::new(), &desired);
    let deletes: Vec<String> = plan.apply_order().map(|c| c.address.to_string()).collect();
    assert_eq!(deletes.first().map(String::as_str), Some("route/shop/web"));
    assert_eq!(deletes.last().map(String::as_str), Some("project/shop"));
    let plan = diff(&desired, &State::new());
    let creates: Vec<String> = plan.apply_order().map(|c| c.address.to_string()).collect();
    assert_eq!(creates.first().map(String::as_str), Some("project/shop"));
    assert_eq!(creates.last().map(String::as_str), Some("route/shop/web"));
}

fn entries(n: usize, project: &str, protect: bool) -> State {
    let mut state: State = (0..n)
        .map(|i| {
            (
                Address::new(Kind::Service, project, &format!("s{i}")),
                Entry {
                    protect,
                    ..Entry::default()
                },
            )
        })
        .collect();
    state.insert(Address::project(project), Entry::default());
    state
}

#[test]
fn protected_resources_are_never_destroyed_even_with_allow_destroy() {
    let actual = entries(3, "shop", true);
    let mut desired = actual.clone();
    desired.remove(&Address::new(Kind::Service, "shop", "s0"));
    let plan = diff(&desired, &actual);
    let guard = Guard {
        allow_destroy: true,
        ..Guard::default()
    };
    let refusals = guard.check(&plan, &actual);
    assert_eq!(
        refusals,
        [Refusal::Protected {
            address: "service/shop/s0".into()
        }]
    );
    assert!(
        refusals[0]
            .to_string()
            .contains("set `metadata.protect: false`")
    );
}

#[test]
fn lifting_protection_is_an_update_that_the_guard_allows() {
    let actual = entries(3, "shop", true);
    let desired = entries(3, "shop", false);
    let plan = diff(&desired, &actual);
    assert_eq!(plan.summary().change, 3);
    assert!(Guard::default().check(&plan, &actual).is_empty());
}

#[test]
fn destroying_a_project_or_over_a_quarter_of_resources_is_refused() {
    let mut actual = entries(10, "shop", false);
    actual.extend(entries(2, "blog", false));
    // Deleting the blog project: 3 of 14 resources, under 25%, but a whole project.
    let mut desired = actual.clone();
    desired.retain(|a, _| a.project != "blog");
    let refusals = Guard::default().check(&diff(&desired, &actual), &actual);
    assert_eq!(
        refusals,
        [Refusal::ProjectDestroyed {
            address: "project/blog".into()
        }]
    );
    // Deleting 4 services of 14: over 25%.
    let mut desired = actual.clone();
    for i in 0..4 {
        desired.remove(&Address::new(Kind::Service, "shop", &format!("s{i}")));
    }
    let plan = diff(&desired, &actual);
    let refusals = Guard::default().check(&plan, &actual);
    assert_eq!(
        refusals,
        [Refusal::TooManyDestroyed {
            destroy: 4,
            managed: 14,
            max_percent: 25
        }]
    );
    let allowed = Guard {
        allow_destroy: true,
        ..Guard::default()
    };
    assert!(allowed.check(&plan, &actual).is_empty());
    // Three services (21%) is within the limit.
    desired.insert(Address::new(Kind::Service, "shop", "s0"), Entry::default());
    assert!(
        Guard::default()
            .check(&diff(&desired, &actual), &actual)
            .is_empty()
    );
}

#[test]
fn another_sources_addresses_and_route_hosts_and_paths_are_conflicts() {
    let mut foreign = Foreign::default();
    for (address, entry) in state(BEFORE, Some(1)) {
        foreign.insert(address, "git:other".into(), &entry);
    }
    let claims = |yaml: &str| -> Vec<String> {
        conflicts(&state(yaml, None), &foreign)
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    // The same address: owned by the other source.
    assert_eq!(
        claims(AFTER).first().map(String::as_str),
        Some("project/shop is owned by source `git:other`; remove it from one of the two sources")
    );
    // Another project, but a route serving the other source's host and path.
    let blog = "apiVersion: meshploy.dev/v1\nkind: Project\nmetadata: {name: blog}\n---\n\
        apiVersion: meshploy.dev/v1\nkind: Route\nmetadata: {name: old, project: blog}\n\
        spec: {host: old.example.com, upstream: \"https://blog.example.com\"}\n";
    assert_eq!(
        claims(blog),
        [
            "route/blog/old routes host `old.example.com` path `/`, which route/shop/legacy of \
          source `git:other` already routes; remove one of the two routes"
        ]
    );
    // A longer path on that host would take requests the other source's `/` serves: a
    // conflict too (this was allowed before the takeover review, issue 12).
    assert_eq!(
        claims(&blog.replace("old.example.com,", "old.example.com, path: /blog,")),
        [
            "route/blog/old routes host `old.example.com` path `/blog`, inside host \
          `old.example.com` path `/` that route/shop/legacy of source `git:other` routes, and \
          would take those requests from it; remove one of the two routes"
        ]
    );
    // Another host is free.
    assert!(claims(&blog.replace("old.example.com,", "new.example.com,")).is_empty());
}

#[test]
fn a_route_nested_in_another_sources_route_is_a_conflict_within_one_source_it_is_not() {
    let route = |name: &str, project: &str, host: &str, path: &str| {
        format!(
            "apiVersion: meshploy.dev/v1\nkind: Route\nmetadata: {{name: {name}, project: {project}}}\n\
             spec: {{host: \"{host}\", path: {path}, upstream: \"https://up.example.com\"}}\n---\n"
        )
    };
    let project = |name: &str| {
        format!("apiVersion: meshploy.dev/v1\nkind: Project\nmetadata: {{name: {name}}}\n---\n")
    };
    let theirs = [
        project("shop"),
        route("app", "shop", "svc.test", "/app"),
        route("wild", "shop", "*.wild.test", "/"),
    ]
    .concat();
    let mut foreign = Foreign::default();
    for (address, entry) in state(&theirs, Some(1)) {
        foreign.insert(address, "git:a".into(), &entry);
    }
    let serving = |yaml: String| -> Vec<(String, String)> {
        conflicts(&state(&yaml, None), &foreign)
            .into_iter()
            .filter_map(|c| c.route.map(|r| (c.address, r.serving)))
            .collect()
    };
    let ours = |host: &str, path: &str| [project("blog"), route("r", "blog", host, path)].concat();
    let taken = |by: &str| vec![("route/blog/r".to_owned(), format!("route/shop/{by}"))];
    assert_eq!(serving(ours("svc.test", "/app/login")), taken("app"));
    assert_eq!(serving(ours("svc.test", "/app")), taken("app"));
    assert_eq!(serving(ours("x.wild.test", "/")), taken("wild"));
    assert_eq!(serving(ours("x.wild.test", "/api")), taken("wild"));
    assert_eq!(serving(ours("*.wild.test", "/api")), taken("wild"));
    // Not inside: a sibling path, a shorter prefix (the longer one still wins), another
    // wildcard level, another host.
    for (host, path) in [
        ("svc.test", "/application"),
        ("svc.test", "/"),
        ("a.b.wild.test", "/"),
        ("other.test", "/app/login"),
    ] {
        assert!(serving(ours(host, path)).is_empty(), "{host} {path}");
    }
    // Within one source, nesting is how routes are meant to be written.
    assert!(
        conflicts(
            &state(
                &[
                    theirs.clone(),
                    route("login", "shop", "svc.test", "/app/login")
                ]
                .concat(),
                None
            ),
            &Foreign::default()
        )
        .is_empty()
    );
}

/// Applies a plan to a state the way the database apply does: creates and updates set
/// fields and protection, deletes remove.
fn apply(plan: &Plan, mut state: State) -> State {
    for change in plan.apply_order() {
        match change.action {
            Action::Delete => {
                state.remove(&change.address);
            }
            Action::Create | Action::Update | Action::Replace => {
                let entry = state.entry(change.address.clone()).or_default();
                for field in &change.fields {
                    match (&field.path[..], &field.after) {
                        ("protect", _) => {}
                        (path, Some(value)) => {
                            entry.fields.insert(path.to_owned(), value.clone());
                        }
                        (path, None) => {
                            entry.fields.remove(path);
                        }
                    }
                }
                entry.protect = change.protect;
                entry.version = None;
            }
        }
    }
    state
}

fn arb_value() -> impl Strategy<Value = super::Value> {
    prop_oneof![
        "[a-c]{0,3}".prop_map(super::Value::Text),
        (0i64..3).prop_map(super::Value::Int),
        any::<bool>().prop_map(super::Value::Bool),
        prop::collection::vec("[a-b]", 0..3).prop_map(super::Value::List),
        "[x-y]".prop_map(super::Value::Sensitive),
    ]
}

fn arb_state() -> impl Strategy<Value = State> {
    let kinds = prop_oneof![
        Just(Kind::Project),
        Just(Kind::Service),
        Just(Kind::Route),
        Just(Kind::VariableGroup)
    ];
    let address = (kinds, 0..2u8, 0..3u8).prop_map(|(kind, p, n)| match kind {
        Kind::Project => Address::project(&format!("p{p}")),
        kind => Address::new(kind, &format!("p{p}"), &format!("n{n}")),
    });
    let fields = prop::collection::btree_map(
        prop_oneof![
            Just("image"),
            Just("replicas"),
            Just("source.git"),
            Just("env.A"),
            Just("secrets.K")
        ]
        .prop_map(str::to_owned),
        arb_value(),
        0..5,
    );
    let entry = (fields, any::<bool>()).prop_map(|(fields, protect)| Entry {
        fields,
        protect,
        version: None,
    });
    prop::collection::btree_map(address, entry, 0..12)
}

proptest! {
    #[test]
    fn applying_a_plan_reaches_the_desired_state(desired in arb_state(), actual in arb_state()) {
        let versioned: State = actual.into_iter().map(|(a, mut e)| { e.version = Some(1); (a, e) }).collect();
        let plan = diff(&desired, &versioned);
        // Versions belong to stored rows; the property is about content and protection.
        let content: State = apply(&plan, versioned)
            .into_iter()
            .map(|(a, e)| (a, Entry { version: None, ..e }))
            .collect();
        prop_assert_eq!(content, desired);
    }

    #[test]
    fn a_state_has_no_changes_against_itself(state in arb_state()) {
        prop_assert!(diff(&state, &state).is_empty());
    }
}

#[test]
fn credentials_in_a_url_never_reach_a_rendering() {
    // A plan stored before credentials in URLs were refused still holds them.
    let text = |t: &str| Some(super::Value::Text(t.to_owned()));
    let field = |path: &str, before: Option<super::Value>, after| FieldChange {
        path: path.to_owned(),
        before,
        after,
        forces_replacement: false,
    };
    let plan = Plan {
        changes: vec![
            Change {
                address: Address::new(Kind::Service, "shop", "web"),
                action: Action::Update,
                fields: vec![field(
                    "source.git",
                    text("https://bot:ghp_0ld70k3n@git.example.com/acme/web.git"),
                    text("https://ghp_n3w70k3n@git.example.com/acme/web.git"),
                )],
                protect: false,
                version: Some(3),
            },
            Change {
                address: Address::new(Kind::Route, "shop", "legacy"),
                action: Action::Create,
                fields: vec![field(
                    "upstream",
                    None,
                    text("https://legacy.example.com/v1?api_key=k3y5ecr3t"),
                )],
                protect: false,
                version: None,
            },
        ],
        adoption: None,
    };
    let renderings = [
        render::text(&plan, false),
        render::json(&plan).to_string(),
        render::markdown(&plan, "Meshploy plan"),
        plan.changes
            .iter()
            .map(|c| render::block(c, false))
            .collect(),
    ];
    for shown in renderings {
        for secret in ["ghp_0ld70k3n", "ghp_n3w70k3n", "k3y5ecr3t"] {
            assert!(!shown.contains(secret), "{secret} in:\n{shown}");
        }
        assert!(
            shown.contains("https://***@git.example.com/acme/web.git"),
            "{shown}"
        );
        assert!(
            shown.contains("https://legacy.example.com/v1?***"),
            "{shown}"
        );
    }
}
