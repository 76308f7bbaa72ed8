//! The controller's decisions: a pure function of the desired releases and what the
//! controller observes (the deployment rows, the pins, what the runtime runs, what is under
//! way). The controller calls it on every wake-up and carries the decisions out, so running
//! it twice on the same observation decides the same thing (level-triggered).

use std::collections::{BTreeMap, BTreeSet};

use reconciler::names::{DeployTrigger, DeploymentState};

/// A service, by project and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub project: String,
    pub name: String,
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "service/{}/{}", self.project, self.name)
    }
}

/// What the applied state asks one service to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub spec_digest: String,
    pub release_digest: String,
}

/// A deployment row, as far as decisions go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployed {
    pub id: i64,
    pub release_digest: String,
    pub state: DeploymentState,
}

/// A rollback pin: the service runs `deployment`'s release until its spec changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    pub deployment: i64,
    pub release_digest: String,
    pub spec_digest: String,
}

/// Everything the controller observed, at one moment.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The newest deployment of each service.
    pub latest: BTreeMap<ServiceKey, Deployed>,
    /// The newest deployment of each service that tried a release (a revision or a
    /// rollback): restarts left out, so that a release which failed stays failed through
    /// restarts of the one before it.
    pub tried: BTreeMap<ServiceKey, Deployed>,
    /// The deployment in state `healthy` of each service (at most one).
    pub healthy: BTreeMap<ServiceKey, Deployed>,
    pub pins: BTreeMap<ServiceKey, Pin>,
    /// The deployments the runtime runs replicas of, with their service.
    pub running: BTreeMap<i64, ServiceKey>,
    /// Services with a deployment under way in this controller.
    pub in_flight: BTreeSet<ServiceKey>,
}

/// What to run for a deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The release the applied state asks for.
    Desired,
    /// The release of an earlier deployment: a rollback's pin, or the healthy release a
    /// restart runs again when a newer one failed.
    Earlier { deployment: i64 },
}

/// One thing to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Deploy {
        service: ServiceKey,
        target: Target,
        trigger: DeployTrigger,
    },
    /// The applied spec changed since the rollback: git is the truth again.
    Unpin { service: ServiceKey },
    /// A running deployment nothing wants (its service was deleted, or a newer release
    /// replaced it and it was left running by a crash).
    Stop {
        service: ServiceKey,
        deployment: i64,
    },
    /// The service's endpoints point at replicas nothing runs (the runtime restarted): the
    /// proxies should stop trying them until a deployment serves again.
    Unroute { service: ServiceKey },
    /// The healthy deployment of a deleted service: it no longer serves.
    Retire {
        service: ServiceKey,
        deployment: i64,
    },
}

/// Decides what to do for `desired` (every applied service) given `observed`.
pub fn decide(desired: &BTreeMap<ServiceKey, Desired>, observed: &Observed) -> Vec<Decision> {
    let mut decisions = Vec::new();
    for (service, wanted) in desired {
        if observed.in_flight.contains(service) {
            continue;
        }
        let pin = observed.pins.get(service);
        let (target, digest, trigger) = match pin {
            Some(pin) if pin.spec_digest != wanted.spec_digest => {
                decisions.push(Decision::Unpin {
                    service: service.clone(),
                });
                (Target::Desired, &wanted.release_digest, None)
            }
            Some(pin) => (
                Target::Earlier {
                    deployment: pin.deployment,
                },
                &pin.release_digest,
                Some(DeployTrigger::Rollback),
            ),
            None => (Target::Desired, &wanted.release_digest, None),
        };
        let healthy = observed.healthy.get(service);
        let serving = healthy.filter(|h| observed.running.contains_key(&h.id));
        if healthy.is_some() && serving.is_none() {
            decisions.push(Decision::Unroute {
                service: service.clone(),
            });
        }
        if serving.is_some_and(|s| &s.release_digest == digest) {
            continue;
        }
        // A release that failed stays failed until something changes: retrying it on every
        // wake-up would only fail again and bury the reason. What served before it serves
        // on, and is started again if nothing runs it (after a crash).
        let failed = |digest: &str| {
            [observed.latest.get(service), observed.tried.get(service)]
                .into_iter()
                .flatten()
                .any(|d| d.release_digest == digest && d.state == DeploymentState::Failed)
        };
        if failed(digest) {
            if let Some(healthy) =
                healthy.filter(|h| serving.is_none() && !failed(&h.release_digest))
            {
                decisions.push(Decision::Deploy {
                    service: service.clone(),
                    target: Target::Earlier {
                        deployment: healthy.id,
                    },
                    trigger: DeployTrigger::Restart,
                });
            }
            continue;
        }
        let trigger = trigger.unwrap_or_else(|| {
            if healthy.is_some_and(|h| &h.release_digest == digest) {
                DeployTrigger::Restart
            } else {
                DeployTrigger::Revision
            }
        });
        decisions.push(Decision::Deploy {
            service: service.clone(),
            target,
            trigger,
        });
    }
    for (deployment, service) in &observed.running {
        if observed.in_flight.contains(service) {
            continue;
        }
        let serving = observed.healthy.get(service).map(|h| h.id);
        if !desired.contains_key(service) || serving != Some(*deployment) {
            decisions.push(Decision::Stop {
                service: service.clone(),
                deployment: *deployment,
            });
        }
    }
    for (service, healthy) in &observed.healthy {
        if !desired.contains_key(service) && !observed.in_flight.contains(service) {
            decisions.push(Decision::Retire {
                service: service.clone(),
                deployment: healthy.id,
            });
        }
    }
    decisions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ServiceKey {
        ServiceKey {
            project: "shop".into(),
            name: name.into(),
        }
    }

    fn desired(pairs: &[(&str, &str)]) -> BTreeMap<ServiceKey, Desired> {
        pairs
            .iter()
            .map(|(name, digest)| {
                let wanted = Desired {
                    spec_digest: format!("spec-{digest}"),
                    release_digest: (*digest).to_owned(),
                };
                (key(name), wanted)
            })
            .collect()
    }

    fn deployed(id: i64, digest: &str, state: DeploymentState) -> Deployed {
        Deployed {
            id,
            release_digest: digest.into(),
            state,
        }
    }

    fn serving(observed: &mut Observed, name: &str, id: i64, digest: &str) {
        let row = deployed(id, digest, DeploymentState::Healthy);
        observed.latest.insert(key(name), row.clone());
        observed.healthy.insert(key(name), row);
        observed.running.insert(id, key(name));
    }

    fn deploy(name: &str, target: Target, trigger: DeployTrigger) -> Decision {
        Decision::Deploy {
            service: key(name),
            target,
            trigger,
        }
    }

    #[test]
    fn a_new_service_is_deployed_and_a_serving_one_is_left_alone() {
        let mut observed = Observed::default();
        serving(&mut observed, "api", 1, "r1");
        let decisions = decide(&desired(&[("api", "r1"), ("web", "w1")]), &observed);
        assert_eq!(
            decisions,
            [deploy("web", Target::Desired, DeployTrigger::Revision)]
        );
    }

    #[test]
    fn a_new_release_is_deployed_and_deciding_again_while_it_runs_does_nothing() {
        let mut observed = Observed::default();
        serving(&mut observed, "api", 1, "r1");
        let wanted = desired(&[("api", "r2")]);
        assert_eq!(
            decide(&wanted, &observed),
            [deploy("api", Target::Desired, DeployTrigger::Revision)]
        );
        observed.in_flight.insert(key("api"));
        assert_eq!(decide(&wanted, &observed), []);
    }

    #[test]
    fn a_failed_release_is_not_retried_until_the_release_changes() {
        let mut observed = Observed::default();
        serving(&mut observed, "api", 1, "r1");
        observed
            .latest
            .insert(key("api"), deployed(2, "r2", DeploymentState::Failed));
        assert_eq!(decide(&desired(&[("api", "r2")]), &observed), []);
        assert_eq!(
            decide(&desired(&[("api", "r3")]), &observed),
            [deploy("api", Target::Desired, DeployTrigger::Revision)]
        );
    }

    #[test]
    fn after_a_crash_the_last_healthy_release_runs_again_when_a_newer_one_failed() {
        let mut observed = Observed::default();
        serving(&mut observed, "api", 1, "r1");
        let failed = deployed(2, "r2", DeploymentState::Failed);
        observed.latest.insert(key("api"), failed.clone());
        observed.tried.insert(key("api"), failed);
        observed.running.clear();
        let wanted = desired(&[("api", "r2")]);
        assert_eq!(
            decide(&wanted, &observed),
            [
                Decision::Unroute {
                    service: key("api")
                },
                deploy(
                    "api",
                    Target::Earlier { deployment: 1 },
                    DeployTrigger::Restart
                )
            ]
        );
        // Restarted and serving: the failed release is still not tried again.
        serving(&mut observed, "api", 3, "r1");
        assert_eq!(decide(&wanted, &observed), []);
        // A restart that fails is not repeated either.
        observed.running.clear();
        observed
            .latest
            .insert(key("api"), deployed(3, "r1", DeploymentState::Failed));
        observed
            .healthy
            .insert(key("api"), deployed(1, "r1", DeploymentState::Healthy));
        assert_eq!(
            decide(&wanted, &observed),
            [Decision::Unroute {
                service: key("api")
            }]
        );
    }

    #[test]
    fn a_healthy_release_that_nothing_runs_is_restarted() {
        let mut observed = Observed::default();
        serving(&mut observed, "api", 1, "r1");
        observed.running.clear();
        assert_eq!(
            decide(&desired(&[("api", "r1")]), &observed),
            [
                Decision::Unroute {
                    service: key("api")
                },
                deploy("api", Target::Desired, DeployTrigger::Restart)
            ]
        );
    }

    #[test]
    fn a_pin_holds_the_old_release_until_the_spec_changes() {
        let mut observed = Observed::default();
        serving(&mut observed, "api", 2, "r2");
        observed.pins.insert(
            key("api"),
            Pin {
                deployment: 1,
                release_digest: "r1".into(),
                spec_digest: "spec-r2".into(),
            },
        );
        assert_eq!(
            decide(&desired(&[("api", "r2")]), &observed),
            [deploy(
                "api",
                Target::Earlier { deployment: 1 },
                DeployTrigger::Rollback
            )]
        );
        // Serving the pinned release: nothing to do, even though git asks for r2.
        serving(&mut observed, "api", 3, "r1");
        observed.running.remove(&2);
        assert_eq!(decide(&desired(&[("api", "r2")]), &observed), []);
        // A new commit changes the spec: the pin goes and the new release is deployed.
        assert_eq!(
            decide(&desired(&[("api", "r4")]), &observed),
            [
                Decision::Unpin {
                    service: key("api")
                },
                deploy("api", Target::Desired, DeployTrigger::Revision)
            ]
        );
    }

    #[test]
    fn a_deleted_service_is_stopped_and_retired() {
        let mut observed = Observed::default();
        serving(&mut observed, "api", 1, "r1");
        assert_eq!(
            decide(&BTreeMap::new(), &observed),
            [
                Decision::Stop {
                    service: key("api"),
                    deployment: 1
                },
                Decision::Retire {
                    service: key("api"),
                    deployment: 1
                }
            ]
        );
    }

    #[test]
    fn a_replaced_deployment_left_running_is_stopped() {
        let mut observed = Observed::default();
        serving(&mut observed, "api", 2, "r2");
        observed.running.insert(1, key("api"));
        assert_eq!(
            decide(&desired(&[("api", "r2")]), &observed),
            [Decision::Stop {
                service: key("api"),
                deployment: 1
            }]
        );
    }
}
