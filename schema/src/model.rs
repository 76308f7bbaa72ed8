//! The normalised desired state: plain values with every default applied.
//!
//! This is what the plan core diffs and what PostgreSQL stores. Two manifests that mean the
//! same thing (a default written out or left implicit, `Shop.Example.com` or
//! `shop.example.com`) produce equal values here, so a plan never shows a change that is
//! not one.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;

/// The kinds of resource, in the order parents come before children.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Project,
    VariableGroup,
    Service,
    Route,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Project,
        Kind::VariableGroup,
        Kind::Service,
        Kind::Route,
    ];

    /// The `kind:` value written in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Project => "Project",
            Kind::VariableGroup => "VariableGroup",
            Kind::Service => "Service",
            Kind::Route => "Route",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The lowercase form used in addresses (`service/shop/web`).
    pub fn slug(self) -> &'static str {
        match self {
            Kind::Project => "project",
            Kind::VariableGroup => "variablegroup",
            Kind::Service => "service",
            Kind::Route => "route",
        }
    }
}

/// The identity of a resource: `kind/project/name`, or `project/name` for a project.
///
/// Addresses order by project, then kind (parents first), then name, so iterating a
/// `DesiredState` visits each project's resources together and in creation order.
/// It serialises as that string, so it can key a JSON object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    pub project: String,
    pub kind: Kind,
    pub name: String,
}

impl Address {
    pub fn new(kind: Kind, project: &str, name: &str) -> Address {
        Address {
            project: project.to_owned(),
            kind,
            name: name.to_owned(),
        }
    }

    pub fn project(name: &str) -> Address {
        Address::new(Kind::Project, name, name)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.kind {
            Kind::Project => write!(f, "project/{}", self.name),
            kind => write!(f, "{}/{}/{}", kind.slug(), self.project, self.name),
        }
    }
}

/// Error returned when an address string is not `kind/project/name` or `project/name`.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}` is not a resource address (expected `kind/project/name`, such as `service/shop/web`, or `project/NAME`)"
)]
pub struct AddressParseError(String);

impl FromStr for Address {
    type Err = AddressParseError;

    fn from_str(s: &str) -> Result<Address, AddressParseError> {
        let err = || AddressParseError(s.to_owned());
        let parts: Vec<&str> = s.split('/').collect();
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.slug() == parts[0])
            .ok_or_else(err)?;
        match (kind, parts.as_slice()) {
            (Kind::Project, [_, name]) if !name.is_empty() => Ok(Address::project(name)),
            (Kind::Project, _) => Err(err()),
            (kind, [_, project, name]) if !project.is_empty() && !name.is_empty() => {
                Ok(Address::new(kind, project, name))
            }
            _ => Err(err()),
        }
    }
}

impl Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Address, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a resource was declared, for messages that point back to the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub file: String,
    pub line: u32,
}

/// One declared resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub address: Address,
    pub origin: Origin,
    /// `metadata.protect`: the resource may not be destroyed while this is set.
    pub protect: bool,
    pub spec: Spec,
}

/// The normalised content of a resource, by kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Spec {
    Project(Project),
    VariableGroup(VariableGroup),
    Service(Box<Service>),
    Route(Route),
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Project(_) => Kind::Project,
            Spec::VariableGroup(_) => Kind::VariableGroup,
            Spec::Service(_) => Kind::Service,
            Spec::Route(_) => Kind::Route,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Project {
    pub description: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub workload: Workload,
    pub command: Option<String>,
    pub port: u16,
    pub additional_ports: Vec<u16>,
    pub replicas: u32,
    pub cpu: Option<String>,
    pub memory: Option<String>,
    pub env: BTreeMap<String, String>,
    pub variable_groups: Vec<String>,
    pub health_check: Option<HealthCheck>,
}

impl Service {
    pub const DEFAULT_PORT: u16 = 8080;

    /// Whether the service listens on `port`.
    pub fn exposes(&self, port: u16) -> bool {
        self.port == port || self.additional_ports.contains(&port)
    }
}

/// What a service runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Workload {
    Image(String),
    Source { source: Checkout, build: Build },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkout {
    pub git: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub path: String,
}

/// How a source is turned into something runnable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "camelCase")]
pub enum Build {
    Auto,
    Dockerfile {
        dockerfile: String,
    },
    Nixpacks,
    Railpack,
    Command {
        command: String,
    },
    /// Run the checkout as it is, without a build step.
    None,
}

impl Build {
    pub fn strategy(&self) -> Strategy {
        match self {
            Build::Auto => Strategy::Auto,
            Build::Dockerfile { .. } => Strategy::Dockerfile,
            Build::Nixpacks => Strategy::Nixpacks,
            Build::Railpack => Strategy::Railpack,
            Build::Command { .. } => Strategy::Command,
            Build::None => Strategy::None,
        }
    }
}

/// The build strategies, by the names manifests use for them (`build.strategy`). This is the
/// one mapping between the names and the strategies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    Auto,
    Dockerfile,
    Nixpacks,
    Railpack,
    Command,
    None,
}

impl Strategy {
    pub const ALL: [Strategy; 6] = [
        Strategy::Auto,
        Strategy::Dockerfile,
        Strategy::Nixpacks,
        Strategy::Railpack,
        Strategy::Command,
        Strategy::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Auto => "auto",
            Strategy::Dockerfile => "dockerfile",
            Strategy::Nixpacks => "nixpacks",
            Strategy::Railpack => "railpack",
            Strategy::Command => "command",
            Strategy::None => "none",
        }
    }

    pub fn from_name(name: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    pub path: String,
    pub period_seconds: u32,
    pub timeout_seconds: u32,
    pub failure_threshold: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Lowercase host, possibly with a leading `*.` wildcard label.
    pub host: String,
    /// Path prefix, starting with `/` and without a trailing `/` (except the root itself).
    pub path: String,
    pub target: RouteTarget,
    pub strip_prefix: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RouteTarget {
    /// A service in the route's project, on the given port.
    Service { name: String, port: u16 },
    /// An external `http(s)://` URL.
    Upstream { url: String },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VariableGroup {
    pub variables: BTreeMap<String, String>,
    /// Encrypted values, still sealed for their place in git.
    pub secrets: BTreeMap<String, Envelope>,
}

/// Everything the manifests declare, keyed by address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub resources: BTreeMap<Address, Resource>,
}

impl DesiredState {
    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// Number of resources of each kind, in `Kind` order.
    pub fn counts(&self) -> [(Kind, usize); 4] {
        Kind::ALL.map(|kind| {
            let n = self.resources.keys().filter(|a| a.kind == kind).count();
            (kind, n)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_text() {
        for text in [
            "project/shop",
            "service/shop/web",
            "variablegroup/shop/common",
        ] {
            let address: Address = text.parse().expect("valid address");
            assert_eq!(address.to_string(), text);
        }
    }

    #[test]
    fn malformed_addresses_are_rejected() {
        for text in [
            "",
            "service/shop",
            "project/a/b",
            "svc/shop/web",
            "route//x",
            "project/",
        ] {
            assert!(text.parse::<Address>().is_err(), "{text} should not parse");
        }
    }

    #[test]
    fn addresses_order_parents_first_within_a_project() {
        let mut addresses = [
            Address::new(Kind::Route, "a", "r"),
            Address::new(Kind::Service, "a", "s"),
            Address::project("b"),
            Address::project("a"),
            Address::new(Kind::VariableGroup, "a", "v"),
        ];
        addresses.sort();
        let text: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "project/a",
                "variablegroup/a/v",
                "service/a/s",
                "route/a/r",
                "project/b"
            ]
        );
    }
}
