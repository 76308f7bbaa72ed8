//! The loader: manifest files in, a checked and normalised `DesiredState` (or every problem
//! found) out. Pure: the caller reads the files.
//!
//! `parse` turns bytes into raw documents; [`Loader::document`] checks the fields every kind
//! shares and hands the spec to its kind's module (`service`, `route`, `group`); once every
//! file parsed, `references` checks what crosses documents (duplicates, references, routes'
//! hosts and paths). Each rule returns a problem without a location; the loader adds the
//! location and goes on, so one run reports everything.

mod group;
mod parse;
mod references;
mod route;
mod service;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use crate::diagnostic::{Code, Diagnostic};
use crate::manifest::{
    self, API_VERSION, Metadata, ProjectSpec, RawDocument, RawSpec, SpecSlot, VariableGroupSpec,
};
use crate::model::{Address, DesiredState, Kind, Origin, Project, Resource, Spec};
use crate::rules::{self, Problem};
use crate::spanned::{Int, Loc, Scalar, Spanned, SpannedMap};

use references::{Reference, RouteClaim};

/// One manifest file: its path as it should appear in messages, its size, and its bytes. A
/// file larger than the per-file limit is not read at all: its bytes are empty and only its
/// size says why it is refused.
#[derive(Clone, Debug)]
pub struct ManifestFile {
    pub path: String,
    pub size: u64,
    pub bytes: Vec<u8>,
}

impl ManifestFile {
    /// A file read whole.
    pub fn new(path: impl Into<String>, bytes: Vec<u8>) -> ManifestFile {
        ManifestFile {
            path: path.into(),
            size: bytes.len() as u64,
            bytes,
        }
    }

    /// A file too large to read, known by its size.
    pub fn unread(path: impl Into<String>, size: u64) -> ManifestFile {
        ManifestFile {
            path: path.into(),
            size,
            bytes: Vec::new(),
        }
    }
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
    /// Manifest files one read (a directory, or a path in a commit) may hold.
    pub max_files: usize,
    /// Bytes all the manifest files of one read may hold together.
    pub max_total_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_file_bytes: 1024 * 1024,
            max_documents_per_file: 1000,
            max_depth: 32,
            max_nodes_per_file: 250_000,
            max_alias_events_per_file: 20_000,
            max_files: 20_000,
            max_total_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Parses, checks and normalises manifests. Every problem in every file is reported, except
/// that cross-document references are only checked once all files parse (a reference into
/// a broken file would otherwise be reported as dangling).
pub fn load(files: &[ManifestFile], limits: &Limits) -> Result<DesiredState, Vec<Diagnostic>> {
    let mut loader = Loader::default();
    let mut parse_failed = false;
    for (file, parsed) in files.iter().zip(parse::parse_all(files, limits)) {
        parse_failed |= parsed.incomplete;
        loader.diagnostics.extend(parsed.diagnostics);
        for document in parsed.documents {
            loader.document(&file.path, document);
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
                let (spec, unknown) =
                    crate::unknown::collecting(|| manifest::spec_from_value(kind, value));
                for u in unknown {
                    let at = u.loc.or(loc);
                    self.diagnostics
                        .push(parse::unknown_field(file, at, &u.field, u.expected));
                }
                match spec {
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
