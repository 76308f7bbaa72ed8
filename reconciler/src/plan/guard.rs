//! Guards that refuse dangerous plans: protected resources and mass destruction.

use std::collections::{BTreeMap, BTreeSet};

use schema::Kind;
use serde::Serialize;

use schema::Address;

use super::{Action, Entry, Plan, State, Value};

/// Limits on what one plan may destroy without `--allow-destroy`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Guard {
    /// Largest share of the managed resources one plan may destroy, from 0 to 1.
    pub max_destroy_fraction: f64,
    /// Whether the operator allowed mass destruction for this plan.
    pub allow_destroy: bool,
}

impl Default for Guard {
    fn default() -> Guard {
        Guard {
            max_destroy_fraction: 0.25,
            allow_destroy: false,
        }
    }
}

/// Why a plan may not be applied, with what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "reason")]
pub enum Refusal {
    /// A protected resource would be destroyed.
    Protected { address: String },
    /// A whole project would be destroyed.
    ProjectDestroyed { address: String },
    /// More than the allowed share of resources would be destroyed.
    TooManyDestroyed {
        destroy: usize,
        managed: usize,
        max_percent: u32,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Refusal::Protected { address } => write!(
                f,
                "{address} is protected and cannot be destroyed; set `metadata.protect: false` in its manifest and apply that first"
            ),
            Refusal::ProjectDestroyed { address } => write!(
                f,
                "this plan destroys {address} and everything in it; rerun with --allow-destroy if that is intended"
            ),
            Refusal::TooManyDestroyed {
                destroy,
                managed,
                max_percent,
            } => write!(
                f,
                "this plan destroys {destroy} of {managed} managed resources (more than {max_percent}%); rerun with --allow-destroy if that is intended"
            ),
        }
    }
}

impl Guard {
    /// The guard of a pull request's preview, whose source owns nothing but the preview:
    /// it may destroy all of it (the plan is made against that source's own resources
    /// only, so nothing else is in reach). Protection still holds.
    pub fn preview() -> Guard {
        Guard {
            max_destroy_fraction: 1.0,
            allow_destroy: true,
        }
    }

    /// Every reason to refuse `plan` against `actual`. Protection cannot be overridden;
    /// the mass-destroy checks can, with `allow_destroy`.
    pub fn check(&self, plan: &Plan, actual: &State) -> Vec<Refusal> {
        let destroyed: Vec<_> = plan
            .changes
            .iter()
            .filter(|c| matches!(c.action, Action::Delete | Action::Replace))
            .collect();
        let mut refusals: Vec<Refusal> = destroyed
            .iter()
            .filter(|c| actual.get(&c.address).is_some_and(|e| e.protect))
            .map(|c| Refusal::Protected {
                address: c.address.to_string(),
            })
            .collect();
        if self.allow_destroy {
            return refusals;
        }
        let deleted_projects: BTreeSet<String> = destroyed
            .iter()
            .filter(|c| c.address.kind == Kind::Project && c.action == Action::Delete)
            .map(|c| c.address.to_string())
            .collect();
        refusals.extend(
            deleted_projects
                .into_iter()
                .map(|address| Refusal::ProjectDestroyed { address }),
        );
        let destroy = destroyed.len();
        let managed = actual.len();
        if managed > 0 && destroy as f64 > self.max_destroy_fraction * managed as f64 {
            refusals.push(Refusal::TooManyDestroyed {
                destroy,
                managed,
                max_percent: (self.max_destroy_fraction * 100.0).round() as u32,
            });
        }
        refusals
    }
}

/// A change whose resource is no longer as it was when the plan was made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stale {
    pub address: Address,
    /// The version the plan saw (`None`: the plan creates the resource).
    pub planned: Option<i64>,
    /// The version now (`None`: the resource is gone).
    pub current: Option<i64>,
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match (self.planned, self.current) {
            (None, Some(_)) => write!(
                f,
                "{} was created by someone else after the plan was made",
                self.address
            ),
            (Some(_), None) => write!(f, "{} was destroyed after the plan was made", self.address),
            (Some(planned), Some(current)) => write!(
                f,
                "{} changed after the plan was made (version {planned}, now {current})",
                self.address
            ),
            (None, None) => write!(f, "{} is unchanged", self.address),
        }
    }
}

/// The changes of `plan` whose resources changed in `actual` since the plan was made: a
/// different version, a resource gone, or one that appeared where the plan creates one.
/// Resources the plan does not touch may have changed freely.
pub fn stale(plan: &Plan, actual: &State) -> Vec<Stale> {
    plan.changes
        .iter()
        .filter_map(|change| {
            // Stored resources always have a version; `None` means absent.
            let current = actual.get(&change.address).and_then(|e| e.version);
            (current != change.version).then(|| Stale {
                address: change.address.clone(),
                planned: change.version,
                current,
            })
        })
        .collect()
}

/// Something one source declares that another source already has: an address it owns, or
/// for a route, the host and path one of its routes serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Conflict {
    pub address: String,
    pub owner: String,
    /// Set when the clash is a route's host and path rather than its address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteClaim>,
}

/// A host and path that a route of another source serves already: the same host and path,
/// or one the route would take from it (a longer prefix on its host, or an exact host under
/// its wildcard).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteClaim {
    pub host: String,
    pub path: String,
    /// The other source's route, and the host and path it routes.
    pub serving: String,
    pub serving_host: String,
    pub serving_path: String,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match &self.route {
            None => write!(
                f,
                "{} is owned by source `{}`; remove it from one of the two sources",
                self.address, self.owner
            ),
            Some(claim)
                if (&claim.host, &claim.path) == (&claim.serving_host, &claim.serving_path) =>
            {
                write!(
                    f,
                    "{} routes host `{}` path `{}`, which {} of source `{}` already routes; remove one of the two routes",
                    self.address, claim.host, claim.path, claim.serving, self.owner
                )
            }
            Some(claim) => write!(
                f,
                "{} routes host `{}` path `{}`, inside host `{}` path `{}` that {} of source `{}` routes, and would take those requests from it; remove one of the two routes",
                self.address,
                claim.host,
                claim.path,
                claim.serving_host,
                claim.serving_path,
                claim.serving,
                self.owner
            ),
        }
    }
}

/// What other sources own, as one source sees it.
#[derive(Clone, Debug, Default)]
pub struct Foreign {
    /// Every address another source owns, with that source.
    pub owners: BTreeMap<Address, String>,
    /// Their routes by host and path: one host and path has one route across all sources.
    pub routes: BTreeMap<(String, String), Address>,
}

impl Foreign {
    pub fn insert(&mut self, address: Address, owner: String, entry: &Entry) {
        if let Some(key) = route_key(&address, entry) {
            self.routes.insert(key, address.clone());
        }
        self.owners.insert(address, owner);
    }

    /// The route of another source whose requests a route on `host` and `path` would serve or
    /// take: the same host and path; the same host with a path that `path` is inside (the
    /// proxy picks the longest prefix); or, for an exact host, the wildcard that covers it
    /// (the proxy picks an exact host over a wildcard).
    fn served(&self, host: &str, path: &str) -> Option<(&(String, String), &Address)> {
        let same = |key: &&(String, String)| key.0 == host;
        let on_host = self
            .routes
            .range((host.to_owned(), String::new())..)
            .take_while(|(key, _)| same(key));
        let mut nested = None;
        for (key, address) in on_host {
            if key.1 == path {
                return Some((key, address));
            }
            if nested.is_none() && inside(path, &key.1) {
                nested = Some((key, address));
            }
        }
        if nested.is_some() {
            return nested;
        }
        let parent = host.split_once('.').map(|(_, rest)| format!("*.{rest}"))?;
        if host.starts_with("*.") {
            return None;
        }
        self.routes
            .range((parent.clone(), String::new())..)
            .take_while(|(key, _)| key.0 == parent)
            .next()
    }
}

/// Whether `path` lies inside the prefix `outer` on a segment boundary (`/app/login` inside
/// `/app`; everything inside `/`), and is not `outer` itself.
fn inside(path: &str, outer: &str) -> bool {
    path != outer
        && (outer == "/"
            || path
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('/')))
}

/// A route's host and path, as stored; `None` for any other resource.
fn route_key(address: &Address, entry: &Entry) -> Option<(String, String)> {
    if address.kind != Kind::Route {
        return None;
    }
    match (entry.fields.get("host"), entry.fields.get("path")) {
        (Some(Value::Text(host)), Some(Value::Text(path))) => Some((host.clone(), path.clone())),
        _ => None,
    }
}

/// Everything `desired` declares that another source has: addresses it owns, and routes whose
/// host and path its routes serve. A source never changes or deletes what another owns, so
/// any conflict refuses the whole plan.
pub fn conflicts(desired: &State, foreign: &Foreign) -> Vec<Conflict> {
    desired
        .iter()
        .filter_map(|(address, entry)| {
            if let Some(owner) = foreign.owners.get(address) {
                return Some(Conflict {
                    address: address.to_string(),
                    owner: owner.clone(),
                    route: None,
                });
            }
            let (host, path) = route_key(address, entry)?;
            let ((serving_host, serving_path), serving) = foreign.served(&host, &path)?;
            Some(Conflict {
                address: address.to_string(),
                owner: foreign.owners.get(serving).cloned().unwrap_or_default(),
                route: Some(RouteClaim {
                    host,
                    path,
                    serving: serving.to_string(),
                    serving_host: serving_host.clone(),
                    serving_path: serving_path.clone(),
                }),
            })
        })
        .collect()
}
