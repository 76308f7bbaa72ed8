//! The Route kind: a host and path prefix, and a service or an external upstream.

use crate::diagnostic::{Code, Diagnostic};
use crate::manifest::RouteSpec;
use crate::model::{Address, Route, RouteTarget, Spec};
use crate::rules::{self};

use super::{Doc, Loader, RouteClaim};

impl Loader {
    pub(super) fn route(&mut self, doc: &Doc, address: &Address, spec: RouteSpec) -> Option<Spec> {
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
}
