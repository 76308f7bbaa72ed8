//! The loader: manifest files in, a checked and normalised `DesiredState` (or every problem
//! found) out. Pure: the caller reads the files.

use std::collections::{BTreeMap, BTreeSet};

use serde_saphyr::{Budget, Options};

use crate::diagnostic::{Code, Diagnostic};
use crate::envelope::Envelope;
use crate::manifest::{
    self, API_VERSION, BuildSpec, HealthCheckSpec, Metadata, ProjectSpec, RawDocument, RawSpec,
    RouteSpec, ServiceSpec, SourceSpec, SpecSlot, VariableGroupSpec,
};
use crate::model::{
    Address, Build, Checkout, DesiredState, HealthCheck, Kind, Origin, Project, Resource, Route,
    RouteTarget, Service, Spec, VariableGroup, Workload,
};
use crate::rules::{self, Problem, Quantity};
use crate::spanned::{Int, Loc, Scalar, Spanned, SpannedMap};

/// One manifest file: its path as it should appear in messages, and its bytes.
#[derive(Clone, Debug)]
pub struct ManifestFile {
    pub path: String,
    pub bytes: Vec<u8>,
}

/// Bounds that keep a hostile repository from exhausting the process.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_file_bytes: usize,
    pub max_documents_per_file: usize,
    pub max_depth: usize,
    pub max_nodes_per_file: usize,
    /// Events that alias expansion may replay in one file; this is what stops a
    /// "billion laughs" file.
    pub max_alias_events_per_file: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_file_bytes: 1024 * 1024,
            max_documents_per_file: 1000,
            max_depth: 32,
            max_nodes_per_file: 250_000,
            max_alias_events_per_file: 20_000,
        }
    }
}

/// Parses, checks and normalises manifests. Every problem in every file is reported, except
/// that cross-document references are only checked once all files parse (a reference into
/// a broken file would otherwise be reported as dangling).
pub fn load(files: &[ManifestFile], limits: &Limits) -> Result<DesiredState, Vec<Diagnostic>> {
    let mut loader = Loader::default();
    let mut parse_failed = false;
    for (file, parsed) in files.iter().zip(parse_all(files, limits)) {
        match parsed {
            Ok(documents) => {
                for document in documents {
                    loader.document(&file.path, document);
                }
            }
            Err(diagnostic) => {
                parse_failed = true;
                loader.diagnostics.push(*diagnostic);
            }
        }
    }
    if !parse_failed {
        loader.check_references();
    }
    if loader.diagnostics.is_empty() {
        Ok(DesiredState {
            resources: loader.resources,
        })
    } else {
        loader
            .diagnostics
            .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        Err(loader.diagnostics)
    }
}

/// Parses every file, spreading files over the available cores: YAML parsing dominates the
/// loader's time and files are independent. Results come back in input order.
fn parse_all(files: &[ManifestFile], limits: &Limits) -> Vec<Parsed> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(8);
    if threads == 1 || files.len() < 2 * threads {
        return files.iter().map(|f| parse_file(f, limits)).collect();
    }
    let chunk = files.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|f| parse_file(f, limits))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

type Parsed = Result<Vec<Spanned<RawDocument>>, Box<Diagnostic>>;

fn parse_file(file: &ManifestFile, limits: &Limits) -> Parsed {
    let whole_file = Loc::default();
    if file.bytes.len() > limits.max_file_bytes {
        return Err(Box::new(
            Diagnostic::new(
                &file.path,
                whole_file,
                Code::FileTooLarge,
                format!(
                    "file is {} bytes; manifest files are limited to {} bytes",
                    file.bytes.len(),
                    limits.max_file_bytes
                ),
            )
            .with_hint(Some("split the manifests into several files".into())),
        ));
    }
    let text = std::str::from_utf8(&file.bytes).map_err(|e| {
        let valid = &file.bytes[..e.valid_up_to()];
        let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
        let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&valid[line_start..])
            .chars()
            .count()
            + 1;
        let loc = Loc {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            column: u32::try_from(column).unwrap_or(u32::MAX),
            len: 1,
        };
        Box::new(
            Diagnostic::new(
                &file.path,
                loc,
                Code::InvalidUtf8,
                "file is not valid UTF-8",
            )
            .with_hint(Some("save the file as UTF-8".into()))
            .redacted(),
        )
    })?;
    // Both option structs are non-exhaustive, so they are built by assignment.
    let mut budget = Budget::default();
    budget.max_documents = limits.max_documents_per_file;
    budget.max_depth = limits.max_depth;
    budget.max_nodes = limits.max_nodes_per_file;
    let mut options = Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = limits.max_alias_events_per_file;
    options.alias_limits.max_replay_stack_depth = 16;
    options.with_snippet = false;
    let documents: Vec<Option<Spanned<RawDocument>>> =
        serde_saphyr::from_multiple_with_options(text, options)
            .map_err(|e| Box::new(yaml_diagnostic(&file.path, &e, limits)))?;
    Ok(documents.into_iter().flatten().collect())
}

/// Turns a parser error into a diagnostic, with a suggestion for misspelt fields.
fn yaml_diagnostic(path: &str, error: &serde_saphyr::Error, limits: &Limits) -> Diagnostic {
    use serde_saphyr::Error as E;
    let mut inner = error.without_snippet();
    while let E::AliasError { error, .. } = inner {
        inner = error.without_snippet();
    }
    let loc = error.location().map(Loc::from_saphyr).unwrap_or_default();
    let message =
        serde_saphyr::MessageFormatter::format_message(&serde_saphyr::UserMessageFormatter, inner)
            .into_owned();
    let (code, message, hint) = match inner {
        E::SerdeUnknownField {
            field, expected, ..
        } => {
            let hint = match rules::closest(field, expected.iter().copied()) {
                Some(near) => format!("did you mean `{near}`?"),
                None if expected.is_empty() => "this mapping has no fields".to_owned(),
                None => format!("expected one of: {}", expected.join(", ")),
            };
            (
                Code::UnknownField,
                format!("unknown field `{field}`"),
                Some(hint),
            )
        }
        E::SerdeMissingField { field, .. } => {
            (Code::MissingField, format!("missing field `{field}`"), None)
        }
        E::Budget { .. }
        | E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. }
        | E::AliasReplayCounterOverflow { .. } => (
            Code::YamlLimit,
            message,
            Some(format!(
                "manifests are limited to {} documents, {} levels of nesting and {} alias-expanded nodes per file",
                limits.max_documents_per_file, limits.max_depth, limits.max_alias_events_per_file
            )),
        ),
        E::SerdeInvalidType { .. }
        | E::SerdeInvalidValue { .. }
        | E::InvalidScalar { .. }
        | E::InvalidBooleanStrict { .. }
        | E::NullIntoString { .. }
        | E::SerdeInvalidLength { .. }
        | E::Message { .. } => (Code::InvalidType, message, None),
        _ => (Code::YamlSyntax, message, None),
    };
    // A document count breach is its own code, so tools can tell it from an alias bomb.
    let code = if code == Code::YamlLimit && message.contains("documents") {
        Code::TooManyDocuments
    } else {
        code
    };
    Diagnostic::new(path, loc, code, message).with_hint(hint)
}

/// A reference from one resource to another, checked once everything is loaded.
struct Reference {
    file: String,
    loc: Loc,
    target: Address,
}

/// A route claiming a host and path; for a route to a service, also where the service is
/// named and the port it asks for.
struct RouteClaim {
    file: String,
    host_loc: Loc,
    address: Address,
    service: Option<(Loc, Option<(u16, Loc)>)>,
}

#[derive(Default)]
struct Loader {
    diagnostics: Vec<Diagnostic>,
    resources: BTreeMap<Address, Resource>,
    /// Where each address was declared: file and the location of its name.
    declared: BTreeMap<Address, (String, Loc)>,
    references: Vec<Reference>,
    routes: Vec<RouteClaim>,
}

/// Context for checking one document: its file and the location to blame for values
/// whose own location is unknown.
struct Doc<'a> {
    file: &'a str,
    fallback: Loc,
}

impl Loader {
    fn push(&mut self, doc: &Doc, loc: Loc, code: Code, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::new(
            doc.file,
            loc.or(doc.fallback),
            code,
            message,
        ));
    }

    /// Records a field rule's problem, if any, and passes the value through.
    fn check<T>(
        &mut self,
        doc: &Doc,
        loc: Loc,
        code: Code,
        result: Result<T, Problem>,
    ) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(problem) => {
                self.diagnostics.push(
                    Diagnostic::new(doc.file, loc.or(doc.fallback), code, problem.message)
                        .with_hint(problem.hint),
                );
                None
            }
        }
    }

    fn document(&mut self, file: &str, document: Spanned<RawDocument>) {
        let doc_loc = Loc {
            len: 1,
            ..document.loc
        };
        let mut doc = Doc {
            file,
            fallback: doc_loc,
        };
        let raw = document.value;
        let errors_before = self.diagnostics.len();
        match &raw.api_version {
            None => self.push(
                &doc,
                doc_loc,
                Code::MissingField,
                "document has no `apiVersion`",
            ),
            Some(v) if v.value != API_VERSION => {
                let message = format!("unsupported apiVersion `{}`", v.value);
                self.diagnostics.push(
                    Diagnostic::new(
                        file,
                        v.loc.or(doc_loc),
                        Code::UnsupportedApiVersion,
                        message,
                    )
                    .with_hint(Some(format!("use `apiVersion: {API_VERSION}`"))),
                );
            }
            Some(_) => {}
        }
        let Some(kind_field) = &raw.kind else {
            self.push(&doc, doc_loc, Code::MissingField, "document has no `kind`");
            return;
        };
        let Some(kind) = Kind::from_name(&kind_field.value) else {
            let names = Kind::ALL.map(Kind::name);
            let hint = match rules::closest(&kind_field.value, names) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!("expected one of: {}", names.join(", ")),
            };
            self.diagnostics.push(
                Diagnostic::new(
                    file,
                    kind_field.loc,
                    Code::UnknownKind,
                    format!("unknown kind `{}`", kind_field.value),
                )
                .with_hint(Some(hint)),
            );
            return;
        };
        let Some(metadata) = raw.metadata else {
            self.push(
                &doc,
                doc_loc,
                Code::MissingField,
                "document has no `metadata`",
            );
            return;
        };
        let spec = match raw.spec {
            SpecSlot::Absent | SpecSlot::Skipped => None,
            SpecSlot::Typed(loc, spec) => {
                doc.fallback = loc;
                Some(spec)
            }
            SpecSlot::Buffered(loc, value) => {
                doc.fallback = loc;
                match manifest::spec_from_value(kind, value) {
                    Ok(spec) => Some(spec),
                    Err(e) => {
                        self.push(&doc, loc, Code::InvalidType, format!("in `spec`: {e}"));
                        return;
                    }
                }
            }
        };
        let protect = metadata.value.protect.unwrap_or(false);
        let Some(address) = self.address(&doc, kind, metadata) else {
            return;
        };
        let converted = match spec {
            None => self.missing_spec(&doc, kind, doc_loc, &address),
            Some(RawSpec::Project(spec)) => Some(self.project(spec)),
            Some(RawSpec::Service(spec)) => self.service(&doc, &address, *spec),
            Some(RawSpec::Route(spec)) => self.route(&doc, &address, spec),
            Some(RawSpec::VariableGroup(spec)) => self.variable_group(&doc, spec),
        };
        if let Some(spec) = converted.filter(|_| self.diagnostics.len() == errors_before) {
            let origin = Origin {
                file: file.to_owned(),
                line: doc_loc.line,
            };
            self.resources.insert(
                address.clone(),
                Resource {
                    address,
                    origin,
                    protect,
                    spec,
                },
            );
        }
    }

    /// Kinds whose spec may be left out get their defaults; the others must have one.
    fn missing_spec(&mut self, doc: &Doc, kind: Kind, loc: Loc, address: &Address) -> Option<Spec> {
        match kind {
            Kind::Project => Some(self.project(ProjectSpec::default())),
            Kind::VariableGroup => self.variable_group(doc, VariableGroupSpec::default()),
            Kind::Service | Kind::Route => {
                self.push(
                    doc,
                    loc,
                    Code::MissingField,
                    format!("{address} has no `spec`"),
                );
                None
            }
        }
    }

    /// Checks names and records the declaration; `None` if the address is unusable.
    fn address(&mut self, doc: &Doc, kind: Kind, metadata: Spanned<Metadata>) -> Option<Address> {
        let Metadata { name, project, .. } = metadata.value;
        let address = if kind == Kind::Project {
            if let Some(project) = project {
                self.diagnostics.push(
                    Diagnostic::new(
                        doc.file,
                        project.loc,
                        Code::Conflict,
                        "a Project cannot belong to a project",
                    )
                    .with_hint(Some("remove `metadata.project`".into())),
                );
            }
            self.check(
                doc,
                name.loc,
                Code::InvalidName,
                rules::dns_label(&name.value),
            )?;
            let reserved = rules::project_name(&name.value);
            self.check(doc, name.loc, Code::ReservedName, reserved)?;
            Address::project(&name.value)
        } else {
            let name_ok = self
                .check(
                    doc,
                    name.loc,
                    Code::InvalidName,
                    rules::dns_label(&name.value),
                )
                .is_some();
            let Some(project) = project else {
                self.push(
                    doc,
                    metadata.loc,
                    Code::MissingField,
                    format!("{} `{}` has no `metadata.project`", kind.name(), name.value),
                );
                return None;
            };
            let project_ok = self
                .check(
                    doc,
                    project.loc,
                    Code::InvalidName,
                    rules::dns_label(&project.value),
                )
                .is_some();
            if !(name_ok && project_ok) {
                return None;
            }
            self.references.push(Reference {
                file: doc.file.to_owned(),
                loc: project.loc.or(doc.fallback),
                target: Address::project(&project.value),
            });
            Address::new(kind, &project.value, &name.value)
        };
        if let Some((first_file, first_loc)) = self.declared.get(&address) {
            self.diagnostics.push(
                Diagnostic::new(
                    doc.file,
                    name.loc,
                    Code::DuplicateResource,
                    format!("{address} is declared twice"),
                )
                .with_related(first_file, *first_loc, "first declared")
                .with_hint(Some("rename one of them or delete the duplicate".into())),
            );
            return None;
        }
        self.declared
            .insert(address.clone(), (doc.file.to_owned(), name.loc));
        Some(address)
    }

    fn project(&mut self, spec: ProjectSpec) -> Spec {
        Spec::Project(Project {
            description: spec.description,
        })
    }

    fn service(&mut self, doc: &Doc, address: &Address, spec: ServiceSpec) -> Option<Spec> {
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
        let resources = spec.resources.unwrap_or_default();
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
            value: "auto".to_owned(),
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
        let result = match strategy.value.as_str() {
            "auto" => Some(Build::Auto),
            "nixpacks" => Some(Build::Nixpacks),
            "railpack" => Some(Build::Railpack),
            "dockerfile" => {
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
            "command" => {
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
            other => {
                let hint = match rules::closest(other, Build::STRATEGIES.iter().copied()) {
                    Some(near) => format!("did you mean `{near}`?"),
                    None => format!("expected one of: {}", Build::STRATEGIES.join(", ")),
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

    fn port(&mut self, doc: &Doc, port: Option<Spanned<Int>>) -> Option<u16> {
        let port = port?;
        self.check(doc, port.loc, Code::InvalidPort, rules::port(port.value.0))
    }

    /// A bounded whole number with a default; an invalid value is reported and replaced by
    /// the default so that checking can go on.
    fn int(
        &mut self,
        doc: &Doc,
        value: Option<Spanned<Int>>,
        what: &str,
        default: u32,
        range: (u32, u32),
    ) -> u32 {
        let Some(value) = value else { return default };
        let checked = rules::in_range(what, value.value.0, range.0, range.1);
        self.check(doc, value.loc, Code::OutOfRange, checked)
            .unwrap_or(default)
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

    fn variables(&mut self, doc: &Doc, map: SpannedMap<Scalar>) -> BTreeMap<String, String> {
        map.0
            .into_iter()
            .filter_map(|(name, value)| {
                self.check(
                    doc,
                    name.loc,
                    Code::InvalidEnvName,
                    rules::env_name(&name.value),
                )?;
                Some((name.value, value.0))
            })
            .collect()
    }

    fn route(&mut self, doc: &Doc, address: &Address, spec: RouteSpec) -> Option<Spec> {
        let host = self.check(
            doc,
            spec.host.loc,
            Code::InvalidHost,
            rules::host(&spec.host.value),
        );
        let path = match &spec.path {
            Some(p) => self.check(doc, p.loc, Code::InvalidPath, rules::route_path(&p.value)),
            None => Some("/".to_owned()),
        };
        let port = match spec.port {
            Some(p) => Some((
                self.check(doc, p.loc, Code::InvalidPort, rules::port(p.value.0))?,
                p.loc,
            )),
            None => None,
        };
        let mut claim = RouteClaim {
            file: doc.file.to_owned(),
            host_loc: spec.host.loc.or(doc.fallback),
            address: address.clone(),
            service: None,
        };
        let target = match (spec.service, spec.upstream) {
            (Some(service), None) => {
                self.check(
                    doc,
                    service.loc,
                    Code::InvalidName,
                    rules::dns_label(&service.value),
                )?;
                claim.service = Some((service.loc.or(doc.fallback), port));
                // The port is settled in `check_references`, once the service is known.
                RouteTarget::Service {
                    name: service.value,
                    port: port.map_or(0, |p| p.0),
                }
            }
            (None, Some(upstream)) => {
                if let Some((_, loc)) = port {
                    self.diagnostics.push(
                        Diagnostic::new(
                            doc.file,
                            loc.or(doc.fallback),
                            Code::Conflict,
                            "`port` applies only to a route to a `service`",
                        )
                        .with_hint(Some("put the port in the upstream URL".into())),
                    );
                }
                self.check(
                    doc,
                    upstream.loc,
                    Code::InvalidUrl,
                    rules::upstream_url(&upstream.value),
                )?;
                RouteTarget::Upstream {
                    url: upstream.value,
                }
            }
            (Some(_), Some(upstream)) => {
                self.diagnostics.push(
                    Diagnostic::new(
                        doc.file,
                        upstream.loc.or(doc.fallback),
                        Code::Conflict,
                        format!("{address} has both `service` and `upstream`"),
                    )
                    .with_hint(Some(
                        "a route sends traffic to one target; remove one".into(),
                    )),
                );
                return None;
            }
            (None, None) => {
                self.diagnostics.push(
                    Diagnostic::new(
                        doc.file,
                        doc.fallback,
                        Code::MissingField,
                        format!("{address} has neither `service` nor `upstream`"),
                    )
                    .with_hint(Some(
                        "add `service: <name>` or `upstream: https://...`".into(),
                    )),
                );
                return None;
            }
        };
        self.routes.push(claim);
        Some(Spec::Route(Route {
            host: host?,
            path: path?,
            target,
            strip_prefix: spec.strip_prefix.unwrap_or(false),
        }))
    }

    fn variable_group(&mut self, doc: &Doc, spec: VariableGroupSpec) -> Option<Spec> {
        let variables = spec.variables.unwrap_or_default();
        let plain_names: BTreeMap<String, Loc> = variables
            .0
            .iter()
            .map(|(name, _)| (name.value.clone(), name.loc))
            .collect();
        let variables = self.variables(doc, variables);
        let mut secrets = BTreeMap::new();
        for (name, value) in spec.secrets.unwrap_or_default().0 {
            if self
                .check(
                    doc,
                    name.loc,
                    Code::InvalidEnvName,
                    rules::env_name(&name.value),
                )
                .is_none()
            {
                continue;
            }
            if let Some(plain_loc) = plain_names.get(&name.value) {
                self.diagnostics.push(
                    Diagnostic::new(
                        doc.file,
                        name.loc.or(doc.fallback),
                        Code::DuplicateVariable,
                        format!("`{}` is both a variable and a secret", name.value),
                    )
                    .with_related(doc.file, *plain_loc, "declared as a variable")
                    .with_hint(Some("keep one of them".into())),
                );
                continue;
            }
            match Envelope::parse(&value.value) {
                Ok(envelope) => {
                    secrets.insert(name.value, envelope);
                }
                Err(e) => self.diagnostics.push(
                    Diagnostic::new(doc.file, value.loc.or(doc.fallback), Code::InvalidSecret, format!("secret `{}`: {e}", name.value))
                        .with_hint(Some(format!("make an envelope with `meshploy secret encrypt --project P --group G --name {}`", name.value)))
                        .redacted(),
                ),
            }
        }
        Some(Spec::VariableGroup(VariableGroup { variables, secrets }))
    }

    /// Cross-document checks: references resolve, route ports exist, no two routes claim
    /// the same host and path.
    fn check_references(&mut self) {
        for reference in std::mem::take(&mut self.references) {
            if self.declared.contains_key(&reference.target) {
                continue;
            }
            let target = &reference.target;
            let (what, hint) = match target.kind {
                Kind::Project => (
                    "project",
                    format!("add a Project document named `{}`", target.name),
                ),
                _ => ("variable group", self.near_names(target)),
            };
            self.diagnostics.push(
                Diagnostic::new(
                    &reference.file,
                    reference.loc,
                    Code::UnknownReference,
                    format!("{what} `{}` is not declared", target.name),
                )
                .with_hint(Some(hint)),
            );
        }
        let mut claims: BTreeMap<(String, String), (String, Loc, Address)> = BTreeMap::new();
        let routes = std::mem::take(&mut self.routes);
        for claim in &routes {
            let Some(Resource {
                spec: Spec::Route(route),
                ..
            }) = self.resources.get(&claim.address)
            else {
                continue;
            };
            let key = (route.host.clone(), route.path.clone());
            if let Some((file, loc, owner)) = claims.get(&key) {
                self.diagnostics.push(
                    Diagnostic::new(&claim.file, claim.host_loc, Code::RouteConflict, format!("host `{}` path `{}` is already routed by {owner}", key.0, key.1))
                        .with_related(file, *loc, format!("{owner} claims it"))
                        .with_hint(Some("each host and path belongs to one route; change the host or path of one of them".into())),
                );
            } else {
                claims.insert(
                    key,
                    (claim.file.clone(), claim.host_loc, claim.address.clone()),
                );
            }
        }
        for claim in routes {
            self.resolve_route_port(claim);
        }
    }

    /// Points a route at its service's port, or reports the service or port as unknown.
    fn resolve_route_port(&mut self, claim: RouteClaim) {
        let Some(Resource {
            spec: Spec::Route(route),
            ..
        }) = self.resources.get(&claim.address)
        else {
            return;
        };
        let (RouteTarget::Service { name, .. }, Some((service_loc, wanted_port))) =
            (&route.target, claim.service)
        else {
            return;
        };
        let service_address = Address::new(Kind::Service, &claim.address.project, name);
        let service = match self.resources.get(&service_address) {
            Some(Resource {
                spec: Spec::Service(service),
                ..
            }) => service,
            _ if self.declared.contains_key(&service_address) => return,
            _ => {
                let hint = self.near_names(&service_address);
                self.diagnostics.push(
                    Diagnostic::new(
                        &claim.file,
                        service_loc,
                        Code::UnknownReference,
                        format!(
                            "service `{name}` is not declared in project `{}`",
                            claim.address.project
                        ),
                    )
                    .with_hint(Some(hint)),
                );
                return;
            }
        };
        let port = match wanted_port {
            None => service.port,
            Some((port, _)) if service.exposes(port) => port,
            Some((port, loc)) => {
                let mut ports = vec![service.port];
                ports.extend(&service.additional_ports);
                let list: Vec<String> = ports.iter().map(u16::to_string).collect();
                self.diagnostics.push(
                    Diagnostic::new(&claim.file, loc, Code::UnknownReference, format!("{service_address} does not expose port {port}"))
                        .with_hint(Some(format!("it exposes {}; add the port to the service's `additionalPorts` or use one of those", list.join(", ")))),
                );
                return;
            }
        };
        if let Some(Resource {
            spec: Spec::Route(route),
            ..
        }) = self.resources.get_mut(&claim.address)
            && let RouteTarget::Service {
                port: target_port, ..
            } = &mut route.target
        {
            *target_port = port;
        }
    }

    /// A hint naming the declared resource of the same kind and project closest to `target`.
    fn near_names(&self, target: &Address) -> String {
        let names = self
            .declared
            .keys()
            .filter(|a| a.kind == target.kind && a.project == target.project)
            .map(|a| a.name.as_str());
        match rules::closest(&target.name, names) {
            Some(near) => format!("did you mean `{near}`?"),
            None => format!(
                "declare a {} named `{}` in project `{}`",
                target.kind.name(),
                target.name,
                target.project
            ),
        }
    }
}

fn non_empty(what: &str, value: String) -> Result<String, Problem> {
    if value.trim().is_empty() {
        Err(Problem {
            message: format!("`{what}` is empty"),
            hint: None,
        })
    } else {
        Ok(value)
    }
}
