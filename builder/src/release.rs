//! A service's release: everything that changes its running process, computed from the
//! applied state. Pure: fields in, a value and its digest out.
//!
//! A release is the workload (an image, or a source at its resolved commit with its build
//! settings), `command`, ports, replicas, resources, the health check and the environment
//! after the variable groups are merged. Routes and `protect` are not part of it, so a change
//! to them never redeploys. Secrets enter as `(group, name, digest)`: a release, and so a
//! deployment row, can tell that a secret changed without ever holding it.

use std::collections::BTreeMap;

use reconciler::plan::Value;
use schema::model::{Build, Checkout, HealthCheck, Strategy, Workload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A resource's applied fields, as the plan flattens them (`replicas`, `env.API_URL`).
pub type Fields = BTreeMap<String, Value>;

/// What the applied state asks a service to run, before its source is resolved to a commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub workload: Workload,
    pub command: Option<String>,
    pub port: u16,
    pub additional_ports: Vec<u16>,
    pub replicas: u32,
    pub cpu: Option<String>,
    pub memory: Option<String>,
    pub health_check: Option<HealthCheck>,
    pub env: BTreeMap<String, EnvValue>,
}

/// One environment variable of a release.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum EnvValue {
    Plain {
        value: String,
    },
    /// A secret of a variable group, by place and keyed digest; opened only at spawn time.
    Secret {
        group: String,
        name: String,
        digest: String,
    },
}

/// Where a release's code comes from once resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum Resolved {
    /// A prebuilt image: nothing to resolve.
    Image,
    /// The commit `source.ref` named when the release was made.
    Commit { commit: String },
    /// `source.ref` could not be resolved; the deployment fails with this reason.
    Unresolved { reason: String },
}

/// A release: the spec and the commit its source resolved to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Release {
    pub spec: Spec,
    pub resolved: Resolved,
}

impl Release {
    /// The release's identity: a new digest is a new deployment.
    pub fn digest(&self) -> String {
        digest("meshploy/release/v1", self)
    }
}

impl Spec {
    /// The spec's identity, which a rollback pin remembers: when the applied spec changes, the
    /// pin is released.
    pub fn digest(&self) -> String {
        digest("meshploy/spec/v1", self)
    }
}

/// SHA-256 of the value's JSON, which is canonical here: every map is a `BTreeMap` and every
/// struct serialises its fields in declaration order.
fn digest(domain: &str, value: &impl Serialize) -> String {
    let mut hasher = Sha256::new();
    hasher.update(domain.as_bytes());
    hasher.update([0]);
    hasher.update(serde_json::to_vec(value).unwrap_or_default());
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The spec of a service from its applied fields and those of its project's variable groups
/// (by name). The environment is built as documented: the service's `variableGroups` in the
/// order listed, a later group overriding an earlier one, then the service's own `env` over
/// them all. Fails with what is missing when the stored fields are not a service's.
pub fn spec(service: &Fields, groups: &BTreeMap<String, Fields>) -> Result<Spec, String> {
    let text = |path: &str| match service.get(path) {
        Some(Value::Text(t)) => Some(t.clone()),
        _ => None,
    };
    let int = |path: &str| match service.get(path) {
        Some(Value::Int(n)) => Some(*n),
        _ => None,
    };
    let list = |path: &str| match service.get(path) {
        Some(Value::List(items)) => items.clone(),
        _ => Vec::new(),
    };
    let required = |path: &str| format!("the applied service has no `{path}`");
    let workload = match (text("image"), text("source.git")) {
        (Some(image), _) => Workload::Image(image),
        (None, Some(git)) => {
            let strategy = text("build.strategy").unwrap_or_default();
            let build = match Strategy::from_name(&strategy) {
                Some(Strategy::Auto) => Build::Auto,
                Some(Strategy::Nixpacks) => Build::Nixpacks,
                Some(Strategy::Railpack) => Build::Railpack,
                Some(Strategy::None) => Build::None,
                Some(Strategy::Dockerfile) => Build::Dockerfile {
                    dockerfile: text("build.dockerfile").unwrap_or_else(|| "Dockerfile".into()),
                },
                Some(Strategy::Command) => Build::Command {
                    command: text("build.command").ok_or_else(|| required("build.command"))?,
                },
                None => return Err(format!("unknown build strategy `{strategy}`")),
            };
            let source = Checkout {
                git,
                git_ref: text("source.ref").ok_or_else(|| required("source.ref"))?,
                path: text("source.path").unwrap_or_default(),
            };
            Workload::Source { source, build }
        }
        (None, None) => return Err(required("image` or `source.git")),
    };
    let port = int("port").ok_or_else(|| required("port"))?;
    let mut env = BTreeMap::new();
    for group in list("variableGroups") {
        let Some(fields) = groups.get(&group) else {
            return Err(format!("variable group `{group}` is not applied"));
        };
        for (path, value) in fields {
            let entry = match (path.split_once('.'), value) {
                (Some(("variables", name)), Value::Text(value)) => (
                    name,
                    EnvValue::Plain {
                        value: value.clone(),
                    },
                ),
                (Some(("secrets", name)), Value::Sensitive(digest)) => (
                    name,
                    EnvValue::Secret {
                        group: group.clone(),
                        name: name.to_owned(),
                        digest: digest.clone(),
                    },
                ),
                _ => continue,
            };
            env.insert(entry.0.to_owned(), entry.1);
        }
    }
    for (path, value) in service {
        if let (Some(name), Value::Text(value)) = (path.strip_prefix("env."), value) {
            env.insert(
                name.to_owned(),
                EnvValue::Plain {
                    value: value.clone(),
                },
            );
        }
    }
    let health_check = match text("healthCheck.path") {
        Some(path) => Some(HealthCheck {
            path,
            period_seconds: small(int("healthCheck.periodSeconds"))?,
            timeout_seconds: small(int("healthCheck.timeoutSeconds"))?,
            failure_threshold: small(int("healthCheck.failureThreshold"))?,
        }),
        None => None,
    };
    Ok(Spec {
        workload,
        command: text("command"),
        port: u16::try_from(port).map_err(|_| format!("port {port} is out of range"))?,
        additional_ports: list("additionalPorts")
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect(),
        replicas: small(int("replicas"))?,
        cpu: text("resources.cpu"),
        memory: text("resources.memory"),
        health_check,
        env,
    })
}

fn small(value: Option<i64>) -> Result<u32, String> {
    let value = value.ok_or("the applied service lacks a health check or replica count")?;
    u32::try_from(value).map_err(|_| format!("{value} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, Value)]) -> Fields {
        pairs
            .iter()
            .map(|(path, value)| ((*path).to_owned(), value.clone()))
            .collect()
    }

    fn text(t: &str) -> Value {
        Value::Text(t.into())
    }

    fn web() -> Fields {
        fields(&[
            ("source.git", text("https://example.com/web.git")),
            ("source.ref", text("main")),
            ("source.path", text("")),
            ("build.strategy", text("command")),
            ("build.command", text("make")),
            ("command", text("./web")),
            ("port", Value::Int(8080)),
            ("replicas", Value::Int(2)),
            ("env.MODE", text("production")),
            (
                "variableGroups",
                Value::List(vec!["common".into(), "pay".into()]),
            ),
        ])
    }

    fn groups(stripe_digest: &str) -> BTreeMap<String, Fields> {
        BTreeMap::from([
            (
                "common".to_owned(),
                fields(&[
                    ("variables.MODE", text("staging")),
                    ("variables.REGION", text("eu")),
                ]),
            ),
            (
                "pay".to_owned(),
                fields(&[
                    ("variables.REGION", text("us")),
                    ("secrets.STRIPE", Value::Sensitive(stripe_digest.into())),
                ]),
            ),
        ])
    }

    fn release(service: &Fields, groups: &BTreeMap<String, Fields>) -> Release {
        Release {
            spec: spec(service, groups).expect("a valid service"),
            resolved: Resolved::Commit {
                commit: "a".repeat(40),
            },
        }
    }

    #[test]
    fn the_environment_merges_groups_in_order_then_the_services_own_env() {
        let spec = spec(&web(), &groups("d1")).expect("valid");
        let plain = |v: &str| EnvValue::Plain { value: v.into() };
        assert_eq!(
            spec.env["MODE"],
            plain("production"),
            "env wins over groups"
        );
        assert_eq!(spec.env["REGION"], plain("us"), "a later group wins");
        assert_eq!(
            spec.env["STRIPE"],
            EnvValue::Secret {
                group: "pay".into(),
                name: "STRIPE".into(),
                digest: "d1".into()
            }
        );
    }

    /// The digest of the release of service `web` declared in `yaml`, through the loader and
    /// the plan's flattening as an apply stores it.
    fn digest_of(yaml: &str) -> String {
        let files = [schema::ManifestFile::new(
            "a.yaml",
            yaml.as_bytes().to_vec(),
        )];
        let state = schema::load(&files, &schema::Limits::default()).expect("valid manifests");
        let service = state
            .resources
            .values()
            .find(|r| r.address.kind == schema::Kind::Service)
            .expect("a service");
        let entry = reconciler::plan::flatten(service, |_, _| Ok::<_, ()>(String::new()))
            .expect("flattened");
        let spec = spec(&entry.fields, &BTreeMap::new()).expect("a spec");
        Release {
            spec,
            resolved: Resolved::Image,
        }
        .digest()
    }

    const MANIFESTS: &str = "apiVersion: meshploy.dev/v1\nkind: Project\nmetadata:\n  name: shop\n---\n\
        apiVersion: meshploy.dev/v1\nkind: Service\nmetadata:\n  name: web\n  project: shop\nspec:\n  \
        image: nginx:1\n  env:\n    A: \"1\"\n    B: \"2\"\n---\n\
        apiVersion: meshploy.dev/v1\nkind: Route\nmetadata:\n  name: web\n  project: shop\nspec:\n  \
        host: shop.example.com\n  path: /app\n  service: web\n";

    #[test]
    fn a_route_change_is_not_a_new_release_and_an_env_change_is() {
        let base = digest_of(MANIFESTS);
        let route = MANIFESTS
            .replace("shop.example.com", "www.example.com")
            .replace("path: /app", "path: /");
        assert_eq!(base, digest_of(&route), "the route changed");
        let protected = MANIFESTS.replace(
            "  name: web\n  project: shop\nspec:\n  image",
            "  name: web\n  project: shop\n  protect: true\nspec:\n  image",
        );
        assert_ne!(protected, MANIFESTS);
        assert_eq!(base, digest_of(&protected), "protection changed");
        let reordered =
            MANIFESTS.replace("    A: \"1\"\n    B: \"2\"", "    B: \"2\"\n    A: \"1\"");
        assert_ne!(reordered, MANIFESTS);
        assert_eq!(base, digest_of(&reordered), "the env map was reordered");
        assert_ne!(base, digest_of(&MANIFESTS.replace("B: \"2\"", "B: \"3\"")));
        assert_ne!(base, digest_of(&MANIFESTS.replace("nginx:1", "nginx:2")));
    }

    #[test]
    fn a_reordered_environment_is_the_same_release() {
        let mut a = web();
        a.insert("env.A".into(), text("1"));
        a.insert("env.B".into(), text("2"));
        let mut b = Fields::new();
        for (path, value) in web().into_iter().rev() {
            b.insert(path, value);
        }
        b.insert("env.B".into(), text("2"));
        b.insert("env.A".into(), text("1"));
        let json_a = serde_json::to_string(&release(&a, &groups("d1"))).expect("json");
        assert_eq!(
            release(&a, &groups("d1")).digest(),
            release(&b, &groups("d1")).digest(),
            "{json_a}"
        );
    }

    #[test]
    fn a_changed_secret_env_value_commit_or_replica_count_is_a_new_release() {
        let base = release(&web(), &groups("d1"));
        let secret = release(&web(), &groups("d2"));
        assert_ne!(base.digest(), secret.digest(), "a changed secret");
        let mut env = web();
        env.insert("env.MODE".into(), text("debug"));
        assert_ne!(base.digest(), release(&env, &groups("d1")).digest());
        let mut replicas = web();
        replicas.insert("replicas".into(), Value::Int(3));
        assert_ne!(base.digest(), release(&replicas, &groups("d1")).digest());
        let mut commit = base.clone();
        commit.resolved = Resolved::Commit {
            commit: "b".repeat(40),
        };
        assert_ne!(base.digest(), commit.digest(), "a new commit of the source");
        assert_eq!(
            base.spec.digest(),
            commit.spec.digest(),
            "the spec is the same"
        );
    }

    #[test]
    fn a_release_holds_secret_digests_only() {
        let json = serde_json::to_string(&release(&web(), &groups("digest-only"))).expect("json");
        assert!(json.contains("digest-only"), "{json}");
        assert!(!json.contains("ciphertext") && !json.contains("meshploy:v1:"));
    }

    #[test]
    fn stored_fields_that_are_not_a_service_say_what_is_missing() {
        let mut broken = web();
        broken.remove("port");
        assert_eq!(
            spec(&broken, &groups("d")),
            Err("the applied service has no `port`".into())
        );
        assert_eq!(
            spec(&web(), &BTreeMap::new()),
            Err("variable group `common` is not applied".into())
        );
    }
}
