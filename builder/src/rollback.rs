//! Rollback: pin a service to the release of an earlier deployment that was healthy. The
//! controller deploys the pinned release, and releases the pin when the service's applied
//! spec changes (the next commit that touches it), so git stays the truth.

use std::collections::BTreeMap;

use reconciler::names::DeploymentState;
use sqlx::PgPool;

use crate::Error;
use crate::decide::ServiceKey;
use crate::release;
use crate::store::{self, Deployment};

/// Pins `service` to deployment `to`, or by default to the newest deployment before the
/// serving one that was healthy with another release. Returns the deployment pinned.
pub async fn pin(
    pool: &PgPool,
    service: &ServiceKey,
    to: Option<i64>,
) -> Result<Deployment, Error> {
    let history = store::deployments(pool, Some(service), 1000).await?;
    let serving = history.iter().find(|d| d.state == DeploymentState::Healthy);
    let was_healthy = |d: &Deployment| {
        matches!(
            d.state,
            DeploymentState::Healthy | DeploymentState::Superseded | DeploymentState::RolledBack
        )
    };
    let target = match to {
        Some(id) => {
            let row = store::deployment(pool, id).await?;
            if row.project != service.project || row.service != service.name {
                return Err(Error::OtherService {
                    deployment: id,
                    service: service.to_string(),
                    actual: format!("service/{}/{}", row.project, row.service),
                });
            }
            if !was_healthy(&row) {
                return Err(Error::NeverHealthy {
                    deployment: id,
                    service: service.to_string(),
                });
            }
            row
        }
        None => history
            .iter()
            .filter(|d| serving.is_none_or(|s| d.id < s.id && d.release_digest != s.release_digest))
            .find(|d| was_healthy(d))
            .cloned()
            .ok_or_else(|| Error::NothingToRollBackTo {
                service: service.to_string(),
            })?,
    };
    let spec_digest = applied_spec_digest(pool, service).await?;
    store::pin(pool, service, target.id, &spec_digest).await?;
    Ok(target)
}

/// The digest of the service's applied spec, which the pin remembers.
async fn applied_spec_digest(pool: &PgPool, service: &ServiceKey) -> Result<String, Error> {
    let applied = store::applied_services(pool)
        .await?
        .into_iter()
        .find(|a| &a.key == service)
        .ok_or_else(|| Error::NoService {
            name: service.to_string(),
            near: None,
        })?;
    let groups = store::applied_groups(pool).await?;
    let none = BTreeMap::new();
    let project_groups = groups.get(&service.project).unwrap_or(&none);
    release::spec(&applied.fields, project_groups)
        .map(|spec| spec.digest())
        .map_err(|reason| Error::Unreadable {
            service: service.to_string(),
            reason,
        })
}
