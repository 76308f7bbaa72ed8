//! What crosses documents, checked once every file parsed: duplicate addresses, references
//! to projects, services and variable groups, and one route per host and path.

use std::collections::BTreeMap;

use crate::diagnostic::{Code, Diagnostic};
use crate::model::{Address, Kind, Resource, RouteTarget, Spec};
use crate::rules::{self};
use crate::spanned::Loc;

use super::Loader;

/// A reference from one resource to another, checked once everything is loaded.
pub(super) struct Reference {
    pub(super) file: String,
    pub(super) loc: Loc,
    pub(super) target: Address,
}

/// A route claiming a host and path; for a route to a service, also where the service is
/// named and the port it asks for.
pub(super) struct RouteClaim {
    pub(super) file: String,
    pub(super) host_loc: Loc,
    pub(super) address: Address,
    pub(super) service: Option<(Loc, Option<(u16, Loc)>)>,
}

impl Loader {
    /// Cross-document checks: references resolve, route ports exist, no two routes claim
    /// the same host and path.
    pub(super) fn check_references(&mut self) {
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
