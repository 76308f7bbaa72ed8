//! Turns a normalised resource into fields named as in the manifest.

use std::collections::BTreeMap;

use schema::model::{Build, RouteTarget, Spec, Workload};
use schema::{Envelope, Resource};

use super::{Entry, Value};

/// Flattens a declared resource. `digest` turns a secret's envelope into its keyed digest;
/// it is given the secret's name and envelope and is the only way secrets enter a plan.
pub fn flatten<E>(
    resource: &Resource,
    mut digest: impl FnMut(&str, &Envelope) -> Result<String, E>,
) -> Result<Entry, E> {
    let mut f = Fields::default();
    match &resource.spec {
        Spec::Project(project) => f.opt_text("description", project.description.as_deref()),
        Spec::VariableGroup(group) => {
            for (name, value) in &group.variables {
                f.text(&format!("variables.{name}"), value);
            }
            for (name, envelope) in &group.secrets {
                let value = Value::Sensitive(digest(name, envelope)?);
                f.0.insert(format!("secrets.{name}"), value);
            }
        }
        Spec::Service(service) => {
            match &service.workload {
                Workload::Image(image) => f.text("image", image),
                Workload::Source { source, build } => {
                    f.text("source.git", &source.git);
                    f.text("source.ref", &source.git_ref);
                    f.text("source.path", &source.path);
                    let detail = match build {
                        Build::Auto | Build::Nixpacks | Build::Railpack | Build::None => None,
                        Build::Dockerfile { dockerfile } => Some(("build.dockerfile", dockerfile)),
                        Build::Command { command } => Some(("build.command", command)),
                    };
                    f.text("build.strategy", build.strategy().as_str());
                    if let Some((path, value)) = detail {
                        f.text(path, value);
                    }
                }
            }
            f.opt_text("command", service.command.as_deref());
            f.int("port", i64::from(service.port));
            if !service.additional_ports.is_empty() {
                let ports = service
                    .additional_ports
                    .iter()
                    .map(u16::to_string)
                    .collect();
                f.0.insert("additionalPorts".into(), Value::List(ports));
            }
            f.int("replicas", i64::from(service.replicas));
            f.opt_text("resources.cpu", service.cpu.as_deref());
            f.opt_text("resources.memory", service.memory.as_deref());
            for (name, value) in &service.env {
                f.text(&format!("env.{name}"), value);
            }
            if !service.variable_groups.is_empty() {
                let groups = service.variable_groups.clone();
                f.0.insert("variableGroups".into(), Value::List(groups));
            }
            if let Some(check) = &service.health_check {
                f.text("healthCheck.path", &check.path);
                f.int("healthCheck.periodSeconds", i64::from(check.period_seconds));
                f.int(
                    "healthCheck.timeoutSeconds",
                    i64::from(check.timeout_seconds),
                );
                f.int(
                    "healthCheck.failureThreshold",
                    i64::from(check.failure_threshold),
                );
            }
        }
        Spec::Route(route) => {
            f.text("host", &route.host);
            f.text("path", &route.path);
            match &route.target {
                RouteTarget::Service { name, port } => {
                    f.text("service", name);
                    f.int("port", i64::from(*port));
                }
                RouteTarget::Upstream { url } => f.text("upstream", url),
            }
            f.0.insert("stripPrefix".into(), Value::Bool(route.strip_prefix));
        }
    }
    Ok(Entry {
        fields: f.0,
        protect: resource.protect,
        version: None,
    })
}

#[derive(Default)]
struct Fields(BTreeMap<String, Value>);

impl Fields {
    fn text(&mut self, path: &str, value: &str) {
        self.0
            .insert(path.to_owned(), Value::Text(value.to_owned()));
    }

    fn opt_text(&mut self, path: &str, value: Option<&str>) {
        if let Some(value) = value {
            self.text(path, value);
        }
    }

    fn int(&mut self, path: &str, value: i64) {
        self.0.insert(path.to_owned(), Value::Int(value));
    }
}

/// Fields whose change cannot be made in place. A service that switches between a
/// prebuilt `image` and a built `source` gets a new build pipeline and a new identity at
/// runtime, so it is replaced.
pub(super) fn forces_replacement(
    path: &str,
    before: Option<&Value>,
    after: Option<&Value>,
) -> bool {
    (path == "image" || path == "source.git") && (before.is_none() != after.is_none())
}
