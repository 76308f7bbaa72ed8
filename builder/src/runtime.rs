//! The boundary between the controller, which decides, and a runtime, which executes.
//!
//! A runtime starts a release's replicas, says when they are healthy (or why they will not
//! be), stops them, and reports how running deployments fare. It knows nothing of rows,
//! revisions or pins; the controller knows nothing of processes or pods. The local runtime
//! ([`crate::local`]) runs child processes; a Kubernetes runtime runs Deployments behind the
//! same four calls.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use reconciler::secrets::Plaintext;

use crate::decide::ServiceKey;
use crate::lines::Redactor;
use crate::release::Release;

/// Everything needed to start one deployment's replicas.
#[derive(Debug)]
pub struct Launch {
    pub deployment: i64,
    pub service: ServiceKey,
    pub release: Release,
    /// The built checkout, for a source release.
    pub workdir: Option<PathBuf>,
    /// The merged environment, secrets opened: it exists only until the replicas are spawned.
    pub env: Vec<(String, Plaintext)>,
    /// Replaces every secret value of `env` in captured output.
    pub redactor: Arc<Redactor>,
}

/// Where one replica serves a service port, as the proxy's `endpoints` rows hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub port: u16,
    pub address: String,
}

/// How a running deployment fares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    pub service: ServiceKey,
    /// Why it is degraded (its replicas keep exiting), if it is.
    pub degraded: Option<String>,
}

pub trait Runtime: Send + Sync + 'static {
    /// Starts every replica of `launch`, or says why it cannot (the runtime does not run
    /// this kind of workload).
    fn start(&self, launch: Launch) -> impl Future<Output = Result<(), String>> + Send;

    /// Waits until every replica of `deployment` passes its health check and returns their
    /// endpoints; or, by `deadline` at the latest, says why they will not.
    fn ready(
        &self,
        deployment: i64,
        deadline: Instant,
    ) -> impl Future<Output = Result<Vec<Endpoint>, String>> + Send;

    /// Stops the replicas of `deployment`: asked to stop, then made to.
    fn stop(&self, deployment: i64) -> impl Future<Output = ()> + Send;

    /// Every deployment the runtime runs replicas of.
    fn running(&self) -> BTreeMap<i64, Running>;
}
