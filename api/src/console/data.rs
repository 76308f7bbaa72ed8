//! The queries only the console asks; the rest it shares with the API's endpoints.

use sqlx::PgPool;

use crate::ApiError;
use crate::read::ProjectItem;

/// A project with how its services' newest deployments stand.
#[derive(Debug, sqlx::FromRow)]
pub struct ProjectHealth {
    pub name: String,
    pub source: String,
    pub services: i64,
    pub healthy: i64,
    pub deploying: i64,
    pub failed: i64,
}

fn unavailable(error: sqlx::Error) -> ApiError {
    ApiError::Unavailable(error.to_string())
}

/// Up to `limit` projects after `after` by name, each with its services counted by the
/// state of their newest deployment.
pub async fn project_health(
    pool: &PgPool,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<ProjectHealth>, ApiError> {
    sqlx::query_as(
        "SELECT p.name, p.source, count(s.name) AS services, \
           count(*) FILTER (WHERE d.state = 'healthy') AS healthy, \
           count(*) FILTER (WHERE d.state IN ('queued', 'building', 'deploying')) AS deploying, \
           count(*) FILTER (WHERE d.state = 'failed') AS failed \
         FROM (SELECT name, source FROM projects WHERE $1::text IS NULL OR name > $1 \
               ORDER BY name LIMIT $2) p \
         LEFT JOIN services s ON s.project = p.name \
         LEFT JOIN LATERAL (SELECT state FROM deployments \
           WHERE project = s.project AND service = s.name ORDER BY id DESC LIMIT 1) d ON true \
         GROUP BY p.name, p.source ORDER BY p.name",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(unavailable)
}

/// One applied project.
pub async fn project(pool: &PgPool, name: &str) -> Result<ProjectItem, ApiError> {
    sqlx::query_as(
        "SELECT name, fields->>'description' AS description, source, revision_id AS revision \
         FROM projects WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .map_err(unavailable)?
    .ok_or_else(|| ApiError::NotFound(format!("no project {name} is applied")))
}
