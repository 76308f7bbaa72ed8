//! The Service kind: what runs (an image, or a checkout and its build), its ports, replicas,
//! resources, environment and health check.

use std::collections::BTreeSet;

use crate::diagnostic::{Code, Diagnostic};
use crate::manifest::{BuildSpec, HealthCheckSpec, ServiceSpec, SourceSpec};
use crate::model::{
    Address, Build, Checkout, HealthCheck, Kind, Service, Spec, Strategy, Workload,
};
use crate::rules::{self, Problem, Quantity};
use crate::spanned::{Loc, Spanned};

use super::{Doc, Loader, Reference, non_empty};

impl Loader {
    pub(super) fn service(
        &mut self,
        doc: &Doc,
        address: &Address,
        spec: ServiceSpec,
    ) -> Option<Spec> {
        let workload = match (spec.image, spec.source) {
            (Some(image), None) => {
                if let Some(build) = &spec.build {
                    self.diagnostics.push(
                        Diagnostic::new(
                            doc.file,
                            build.loc.or(doc.fallback),
                            Code::Conflict,
                            "`build` applies only to a service with `source`",
                        )
                        .with_hint(Some(
                            "remove `build`, or replace `image` with `source`".into(),
                        )),
                    );
                }
                self.image(doc, &image).map(Workload::Image)
            }
            (None, Some(source)) => {
                let build = spec.build.map(|b| (b.value, b.loc)).unwrap_or_default();
                let source_value = self.source(doc, source.value);
                let build_value = self.build(doc, build.0, build.1);
                Some(Workload::Source {
                    source: source_value?,
                    build: build_value?,
                })
            }
            (Some(_), Some(source)) => {
                self.diagnostics.push(
                    Diagnostic::new(doc.file, source.loc.or(doc.fallback), Code::Conflict, format!("{address} has both `image` and `source`"))
                        .with_hint(Some("a service runs either a prebuilt `image` or builds its `source`; remove one".into())),
                );
                None
            }
            (None, None) => {
                self.diagnostics.push(
                    Diagnostic::new(
                        doc.file,
                        doc.fallback,
                        Code::MissingField,
                        format!("{address} has neither `image` nor `source`"),
                    )
                    .with_hint(Some(
                        "add `image: <registry/name:tag>` or a `source` with `git:`".into(),
                    )),
                );
                None
            }
        };
        let command = spec.command.and_then(|c| {
            self.check(
                doc,
                c.loc,
                Code::InvalidValue,
                non_empty("command", c.value),
            )
        });
        let port = self.port(doc, spec.port).unwrap_or(Service::DEFAULT_PORT);
        let additional_ports = spec
            .additional_ports
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| self.port(doc, Some(p)))
            .collect::<BTreeSet<u16>>()
            .into_iter()
            .filter(|p| *p != port)
            .collect();
        let replicas = self.int(doc, spec.replicas, "replicas", 1, (0, 1000));
        let resources = spec.resources.map(|r| r.value).unwrap_or_default();
        let cpu = self.quantity(doc, resources.cpu, Quantity::Cpu);
        let memory = self.quantity(doc, resources.memory, Quantity::Memory);
        let env = self.variables(doc, spec.env.unwrap_or_default());
        let mut variable_groups = Vec::new();
        for group in spec.variable_groups.unwrap_or_default() {
            if self
                .check(
                    doc,
                    group.loc,
                    Code::InvalidName,
                    rules::dns_label(&group.value),
                )
                .is_none()
            {
                continue;
            }
            if variable_groups.contains(&group.value) {
                self.push(
                    doc,
                    group.loc,
                    Code::Conflict,
                    format!("variable group `{}` is listed twice", group.value),
                );
                continue;
            }
            self.references.push(Reference {
                file: doc.file.to_owned(),
                loc: group.loc.or(doc.fallback),
                target: Address::new(Kind::VariableGroup, &address.project, &group.value),
            });
            variable_groups.push(group.value);
        }
        let health_check = spec.health_check.map(|h| self.health_check(doc, h.value));
        Some(Spec::Service(Box::new(Service {
            workload: workload?,
            command,
            port,
            additional_ports,
            replicas,
            cpu,
            memory,
            env,
            variable_groups,
            health_check: health_check.flatten(),
        })))
    }

    fn image(&mut self, doc: &Doc, image: &Spanned<String>) -> Option<String> {
        let result = non_empty("image", image.value.clone()).and_then(|i| {
            if i.chars().any(char::is_whitespace) {
                Err(Problem {
                    message: format!("image `{i}` contains white space"),
                    hint: None,
                })
            } else {
                Ok(i)
            }
        });
        self.check(doc, image.loc, Code::InvalidValue, result)
    }

    fn source(&mut self, doc: &Doc, source: SourceSpec) -> Option<Checkout> {
        let git = self.check(
            doc,
            source.git.loc,
            Code::InvalidUrl,
            rules::git_url(&source.git.value),
        );
        let git = match (git, rules::git_url_credentials(&source.git.value)) {
            (git, Ok(())) => git,
            (_, Err(problem)) => {
                // Redacted: the line holds the credentials, so it is never quoted.
                self.diagnostics.push(
                    Diagnostic::new(
                        doc.file,
                        source.git.loc.or(doc.fallback),
                        Code::CredentialsInUrl,
                        problem.message,
                    )
                    .with_hint(problem.hint)
                    .redacted(),
                );
                None
            }
        };
        let git_ref = match source.git_ref {
            Some(r) => self.check(doc, r.loc, Code::InvalidValue, non_empty("ref", r.value)),
            None => Some("main".to_owned()),
        };
        let path = match source.path {
            Some(p) => {
                let normal = p
                    .value
                    .trim_start_matches("./")
                    .trim_end_matches('/')
                    .to_owned();
                let checked = rules::repo_path(&normal).map(|()| normal);
                self.check(doc, p.loc, Code::InvalidPath, checked)
            }
            None => Some(String::new()),
        };
        Some(Checkout {
            git: git.map(|()| source.git.value)?,
            git_ref: git_ref?,
            path: path?,
        })
    }

    fn build(&mut self, doc: &Doc, build: BuildSpec, loc: Loc) -> Option<Build> {
        let strategy = build.strategy.unwrap_or(Spanned {
            value: Strategy::Auto.as_str().to_owned(),
            loc,
        });
        let only_for =
            |this: &mut Loader, field: &Option<Spanned<String>>, name: &str, wanted: &str| {
                if let Some(f) = field {
                    this.diagnostics.push(
                        Diagnostic::new(
                            doc.file,
                            f.loc.or(doc.fallback),
                            Code::Conflict,
                            format!("`build.{name}` applies only to `strategy: {wanted}`"),
                        )
                        .with_hint(Some(format!("remove `{name}` or set `strategy: {wanted}`"))),
                    );
                }
            };
        let result = match Strategy::from_name(&strategy.value) {
            Some(Strategy::Auto) => Some(Build::Auto),
            Some(Strategy::Nixpacks) => Some(Build::Nixpacks),
            Some(Strategy::Railpack) => Some(Build::Railpack),
            Some(Strategy::None) => Some(Build::None),
            Some(Strategy::Dockerfile) => {
                only_for(self, &build.command, "command", "command");
                let dockerfile = match build.dockerfile {
                    Some(d) => {
                        let checked = rules::repo_path(&d.value).map(|()| d.value);
                        self.check(doc, d.loc, Code::InvalidPath, checked)
                    }
                    None => Some("Dockerfile".to_owned()),
                };
                return dockerfile.map(|dockerfile| Build::Dockerfile { dockerfile });
            }
            Some(Strategy::Command) => {
                only_for(self, &build.dockerfile, "dockerfile", "dockerfile");
                let Some(command) = build.command else {
                    self.push(
                        doc,
                        strategy.loc,
                        Code::MissingField,
                        "`strategy: command` needs `build.command`",
                    );
                    return None;
                };
                return self
                    .check(
                        doc,
                        command.loc,
                        Code::InvalidValue,
                        non_empty("build.command", command.value),
                    )
                    .map(|command| Build::Command { command });
            }
            None => {
                let other = &strategy.value;
                let names = Strategy::ALL.map(Strategy::as_str);
                let hint = match rules::closest(other, names) {
                    Some(near) => format!("did you mean `{near}`?"),
                    None => format!("expected one of: {}", names.join(", ")),
                };
                self.diagnostics.push(
                    Diagnostic::new(
                        doc.file,
                        strategy.loc.or(doc.fallback),
                        Code::InvalidValue,
                        format!("unknown build strategy `{other}`"),
                    )
                    .with_hint(Some(hint)),
                );
                return None;
            }
        };
        only_for(self, &build.command, "command", "command");
        only_for(self, &build.dockerfile, "dockerfile", "dockerfile");
        result
    }

    fn health_check(&mut self, doc: &Doc, check: HealthCheckSpec) -> Option<HealthCheck> {
        let path = self.check(
            doc,
            check.path.loc,
            Code::InvalidPath,
            rules::request_path(&check.path.value),
        );
        let period_seconds = self.int(doc, check.period_seconds, "periodSeconds", 10, (1, 3600));
        let timeout_seconds = self.int(doc, check.timeout_seconds, "timeoutSeconds", 2, (1, 3600));
        let failure_threshold = self.int(
            doc,
            check.failure_threshold,
            "failureThreshold",
            3,
            (1, 100),
        );
        path.map(|()| HealthCheck {
            path: check.path.value,
            period_seconds,
            timeout_seconds,
            failure_threshold,
        })
    }

    fn quantity(
        &mut self,
        doc: &Doc,
        value: Option<Spanned<String>>,
        of: Quantity,
    ) -> Option<String> {
        let value = value?;
        let checked = rules::quantity(&value.value, of).map(|()| value.value);
        self.check(doc, value.loc, Code::InvalidQuantity, checked)
    }
}
