//! The manifest format as written by users: raw, span-carrying types.
//!
//! These types mirror the YAML exactly (camelCase fields, optional values, no defaults
//! applied) and reject unknown fields. They exist to be parsed and then checked and
//! normalised by `load` into the `model` types; nothing outside this crate sees them except
//! through the exported JSON Schema, which is generated from the same definitions.

use std::fmt;

use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::model::Kind;
use crate::spanned::{Int, Loc, Scalar, Spanned, SpannedMap};
use crate::unknown::{self, Checked, checked, unwrap};

/// The only `apiVersion` this release understands.
pub const API_VERSION: &str = "meshploy.dev/v1";

/// Fields of a manifest document, in the order users conventionally write them.
pub(crate) const DOCUMENT_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec"];

/// Identity of a resource within the platform.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// Name of the resource: a DNS-1123 label (lowercase letters, digits and `-`, at most 63).
    pub name: Spanned<String>,
    /// Project the resource belongs to. Required for every kind except `Project`.
    pub project: Option<Spanned<String>>,
    /// When true, plans refuse to destroy the resource, even after its document is deleted
    /// from git. Set it to false (and apply) before removing the resource.
    pub protect: Option<bool>,
}

/// `spec` of a `Project`. A project groups services, routes and variable groups and maps to
/// a Kubernetes namespace.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProjectSpec {
    /// Free text shown in the console.
    pub description: Option<String>,
}

/// `spec` of a `Service`: what runs, from a prebuilt `image` or built from a git `source`.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    /// A prebuilt container image, such as `ghcr.io/acme/web:1.4.2`. Exactly one of `image`
    /// and `source` is required.
    pub image: Option<Spanned<String>>,
    /// Where to build the service from. Exactly one of `image` and `source` is required.
    #[serde(default, deserialize_with = "checked")]
    pub source: Option<Spanned<SourceSpec>>,
    /// How to build `source`. Only valid with `source`; defaults to `strategy: auto`.
    #[serde(default, deserialize_with = "checked")]
    pub build: Option<Spanned<BuildSpec>>,
    /// Command that starts the service, run by a shell. Defaults to the image's entrypoint.
    pub command: Option<Spanned<String>>,
    /// The port the service listens on; also given to the process as `PORT`. Default 8080.
    pub port: Option<Spanned<Int>>,
    /// Further ports the service listens on, which routes may target with `port`.
    pub additional_ports: Option<Vec<Spanned<Int>>>,
    /// How many copies run. 0 to 1000, default 1.
    pub replicas: Option<Spanned<Int>>,
    /// CPU and memory for each replica, as Kubernetes quantities.
    #[serde(default, deserialize_with = "checked")]
    pub resources: Option<Spanned<ResourcesSpec>>,
    /// Environment variables. These override variables from `variableGroups`.
    pub env: Option<SpannedMap<Scalar>>,
    /// Names of variable groups in the same project, applied in order (later groups win).
    pub variable_groups: Option<Vec<Spanned<String>>>,
    /// An HTTP check that decides when a replica is ready for traffic.
    #[serde(default, deserialize_with = "checked")]
    pub health_check: Option<Spanned<HealthCheckSpec>>,
}

/// A git source for a service.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SourceSpec {
    /// URL of the repository (`https://`, `ssh://`, `git://`, `file://` or a local path).
    pub git: Spanned<String>,
    /// Branch, tag or commit to build. Default `main`.
    #[serde(rename = "ref")]
    pub git_ref: Option<Spanned<String>>,
    /// Directory within the repository to build from. Default: the repository root.
    pub path: Option<Spanned<String>>,
}

/// How a service's source is built.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BuildSpec {
    /// `auto` (detect), `dockerfile`, `nixpacks`, `railpack`, `command` or `none` (run the checkout as it is). Default `auto`.
    pub strategy: Option<Spanned<String>>,
    /// Path of the Dockerfile for `strategy: dockerfile`. Default `Dockerfile`.
    pub dockerfile: Option<Spanned<String>>,
    /// Build command for `strategy: command`, run by a shell in the source directory.
    pub command: Option<Spanned<String>>,
}

/// Compute resources of one replica.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourcesSpec {
    /// CPU as a Kubernetes quantity: `500m`, `1`, `2.5`.
    pub cpu: Option<Spanned<String>>,
    /// Memory as a Kubernetes quantity: `256Mi`, `1Gi`, `512M`.
    pub memory: Option<Spanned<String>>,
}

/// An HTTP readiness check.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheckSpec {
    /// Path requested on the service's port; a 2xx or 3xx answer means ready.
    pub path: Spanned<String>,
    /// Seconds between checks. 1 to 3600, default 10.
    pub period_seconds: Option<Spanned<Int>>,
    /// Seconds before a check counts as failed. 1 to 3600, default 2.
    pub timeout_seconds: Option<Spanned<Int>>,
    /// Consecutive failures before a replica is taken out of rotation. 1 to 100, default 3.
    pub failure_threshold: Option<Spanned<Int>>,
}

/// `spec` of a `Route`: which requests go where.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteSpec {
    /// Host name to match, exactly (`shop.example.com`) or by wildcard (`*.example.com`).
    pub host: Spanned<String>,
    /// Path prefix to match on segment boundaries. Default `/`.
    pub path: Option<Spanned<String>>,
    /// Service in the same project that receives the traffic. Exactly one of `service` and
    /// `upstream` is required.
    pub service: Option<Spanned<String>>,
    /// Port of `service` to send traffic to. Default: the service's `port`.
    pub port: Option<Spanned<Int>>,
    /// External `http://` or `https://` URL that receives the traffic.
    pub upstream: Option<Spanned<String>>,
    /// Remove the matched path prefix before forwarding. Default false.
    pub strip_prefix: Option<bool>,
}

/// `spec` of a `VariableGroup`: variables shared by the services that list the group.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VariableGroupSpec {
    /// Plain variables, by environment variable name.
    pub variables: Option<SpannedMap<Scalar>>,
    /// Encrypted variables: envelopes made by `meshploy secret encrypt`.
    pub secrets: Option<SpannedMap<Spanned<String>>>,
}

/// The `spec` of a document, typed by its `kind`.
#[derive(Clone, Debug)]
pub enum RawSpec {
    Project(ProjectSpec),
    Service(Box<ServiceSpec>),
    Route(RouteSpec),
    VariableGroup(VariableGroupSpec),
}

/// The `spec` as parsed so far.
#[derive(Debug)]
pub(crate) enum SpecSlot {
    /// No `spec` key in the document.
    Absent,
    /// A spec typed by a `kind` that came before it.
    Typed(Loc, RawSpec),
    /// A spec that came before `kind`, buffered without inner locations.
    Buffered(Loc, serde_json::Value),
    /// The `kind` was not recognised; the spec was skipped.
    Skipped,
}

/// One YAML document as written. Presence of required fields is checked by the loader so
/// that it can report them all with the document's location.
#[derive(Debug)]
pub(crate) struct RawDocument {
    pub api_version: Option<Spanned<String>>,
    pub kind: Option<Spanned<String>>,
    pub metadata: Option<Spanned<Metadata>>,
    pub spec: SpecSlot,
}

impl<'de> serde::Deserialize<'de> for RawDocument {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(DocumentVisitor)
    }
}

struct DocumentVisitor;

impl<'de> Visitor<'de> for DocumentVisitor {
    type Value = RawDocument;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a manifest document (a mapping with apiVersion, kind, metadata and spec)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawDocument, A::Error> {
        let mut doc = RawDocument {
            api_version: None,
            kind: None,
            metadata: None,
            spec: SpecSlot::Absent,
        };
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            match key.value.as_str() {
                "apiVersion" => doc.api_version = Some(map.next_value()?),
                "kind" => doc.kind = Some(map.next_value()?),
                "metadata" => {
                    doc.metadata = Some(unwrap(map.next_value::<Spanned<Checked<Metadata>>>()?));
                }
                // Deserialising the spec straight into the kind's type keeps every field's
                // location. Only a spec written before its kind has to be buffered.
                "spec" => {
                    doc.spec = match doc.kind.as_ref().map(|k| Kind::from_name(&k.value)) {
                        Some(Some(kind)) => SpecSlot::Typed(key.loc, next_spec(&mut map, kind)?),
                        Some(None) => {
                            map.next_value::<IgnoredAny>()?;
                            SpecSlot::Skipped
                        }
                        None => SpecSlot::Buffered(key.loc, map.next_value()?),
                    }
                }
                _ => {
                    unknown::record(key, DOCUMENT_FIELDS)?;
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(doc)
    }
}

fn next_spec<'de, A: MapAccess<'de>>(map: &mut A, kind: Kind) -> Result<RawSpec, A::Error> {
    Ok(match kind {
        Kind::Project => RawSpec::Project(map.next_value::<Checked<_>>()?.0),
        Kind::Service => RawSpec::Service(Box::new(map.next_value::<Checked<_>>()?.0)),
        Kind::Route => RawSpec::Route(map.next_value::<Checked<_>>()?.0),
        Kind::VariableGroup => RawSpec::VariableGroup(map.next_value::<Checked<_>>()?.0),
    })
}

/// Types a spec that was buffered because it came before `kind`.
pub(crate) fn spec_from_value(kind: Kind, value: serde_json::Value) -> serde_json::Result<RawSpec> {
    Ok(match kind {
        Kind::Project => RawSpec::Project(Checked::deserialize(value)?.0),
        Kind::Service => RawSpec::Service(Box::new(Checked::deserialize(value)?.0)),
        Kind::Route => RawSpec::Route(Checked::deserialize(value)?.0),
        Kind::VariableGroup => RawSpec::VariableGroup(Checked::deserialize(value)?.0),
    })
}
