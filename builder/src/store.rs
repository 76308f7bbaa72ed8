//! The runtime's rows: one small function per query, every value bound. The applied state is
//! only read here; deployments, builds, pins and endpoints are written.

use std::collections::BTreeMap;

use reconciler::names::{BuildState, DeployTrigger, DeploymentState};
use reconciler::plan::Value;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;

use crate::Error;
use crate::decide::{Deployed, Pin, ServiceKey};
use crate::error::db;
use crate::release::{Fields, Release};
use crate::runtime::Endpoint;

/// The channel that wakes the controller besides applies (`meshploy_revisions`): a pin was
/// set by `meshploy rollback`.
pub const CHANNEL: &str = "meshploy_runtime";

/// An applied service.
#[derive(Debug)]
pub struct Applied {
    pub key: ServiceKey,
    pub fields: Fields,
    pub revision_id: i64,
    /// The source that owns it (`local:/path` for a directory).
    pub source: String,
}

#[derive(sqlx::FromRow)]
struct FieldsRow {
    project: String,
    name: String,
    fields: Json<serde_json::Map<String, serde_json::Value>>,
    revision_id: i64,
    source: String,
}

fn fields(json: &serde_json::Map<String, serde_json::Value>) -> Fields {
    json.iter()
        .filter_map(|(path, value)| Some((path.clone(), Value::from_json(value)?)))
        .collect()
}

/// Every applied service. Its revision is the newest that wrote the service or a variable
/// group it reads: the one its release comes from.
pub async fn applied_services(pool: &PgPool) -> Result<Vec<Applied>, Error> {
    let rows: Vec<FieldsRow> = sqlx::query_as(
        "SELECT s.project, s.name, s.fields, s.source, GREATEST(s.revision_id, \
             (SELECT max(g.revision_id) FROM service_variable_groups sg \
              JOIN variable_groups g ON g.project = sg.project AND g.name = sg.group_name \
              WHERE sg.project = s.project AND sg.service = s.name)) AS revision_id \
         FROM services s",
    )
    .fetch_all(pool)
    .await
    .map_err(db("reading the applied services"))?;
    Ok(rows
        .into_iter()
        .map(|row| Applied {
            fields: fields(&row.fields),
            key: ServiceKey {
                project: row.project,
                name: row.name,
            },
            revision_id: row.revision_id,
            source: row.source,
        })
        .collect())
}

/// The directory each source was last applied from, for sources applied from one: where a
/// relative `source.git` is taken from.
pub async fn source_directories(pool: &PgPool) -> Result<BTreeMap<String, String>, Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (source) source, directory FROM revisions \
         WHERE directory IS NOT NULL ORDER BY source, id DESC",
    )
    .fetch_all(pool)
    .await
    .map_err(db("reading where sources were applied from"))?;
    Ok(rows.into_iter().collect())
}

/// The directory the source of an applied service was last applied from.
pub async fn directory_of(pool: &PgPool, service: &ServiceKey) -> Result<Option<String>, Error> {
    sqlx::query_scalar(
        "SELECT r.directory FROM services s JOIN revisions r ON r.source = s.source \
         WHERE s.project = $1 AND s.name = $2 AND r.directory IS NOT NULL \
         ORDER BY r.id DESC LIMIT 1",
    )
    .bind(&service.project)
    .bind(&service.name)
    .fetch_optional(pool)
    .await
    .map_err(db("reading where a service's source was applied from"))
}

/// Every applied variable group's fields by project and name, with each secret as its
/// keyed digest (`secrets.NAME`).
pub async fn applied_groups(
    pool: &PgPool,
) -> Result<BTreeMap<String, BTreeMap<String, Fields>>, Error> {
    let rows: Vec<FieldsRow> =
        sqlx::query_as("SELECT project, name, fields, revision_id, source FROM variable_groups")
            .fetch_all(pool)
            .await
            .map_err(db("reading the applied variable groups"))?;
    let mut groups: BTreeMap<String, BTreeMap<String, Fields>> = BTreeMap::new();
    for row in rows {
        groups
            .entry(row.project)
            .or_default()
            .insert(row.name, fields(&row.fields));
    }
    let digests: Vec<(String, String, String, String)> =
        sqlx::query_as("SELECT project, group_name, name, digest FROM secrets")
            .fetch_all(pool)
            .await
            .map_err(db("reading the secret digests"))?;
    for (project, group, name, digest) in digests {
        if let Some(fields) = groups.get_mut(&project).and_then(|g| g.get_mut(&group)) {
            fields.insert(format!("secrets.{name}"), Value::Sensitive(digest));
        }
    }
    Ok(groups)
}

/// A stored secret's ciphertext and digest.
pub async fn sealed_secret(
    pool: &PgPool,
    project: &str,
    group: &str,
    name: &str,
) -> Result<Option<(String, String)>, Error> {
    sqlx::query_as(
        "SELECT ciphertext, digest FROM secrets WHERE project = $1 AND group_name = $2 AND name = $3",
    )
    .bind(project)
    .bind(group)
    .bind(name)
    .fetch_optional(pool)
    .await
    .map_err(db("reading a sealed secret"))
}

/// A deployment row.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct Deployment {
    pub id: i64,
    pub project: String,
    pub service: String,
    pub release_digest: String,
    pub release: Json<Release>,
    pub revision_id: Option<i64>,
    pub trigger: DeployTrigger,
    pub state: DeploymentState,
    pub reason: Option<String>,
    pub build_id: Option<i64>,
    #[serde(with = "time::serde::rfc3339")]
    pub queued_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub building_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub deploying_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    pub degraded: Option<String>,
}

const DEPLOYMENT: &str = "SELECT id, project, service, release_digest, release, revision_id, \
     trigger, state, reason, build_id, queued_at, building_at, deploying_at, finished_at, degraded \
     FROM deployments";

pub async fn deployment(pool: &PgPool, id: i64) -> Result<Deployment, Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{DEPLOYMENT} WHERE id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(db("reading a deployment"))?
        .ok_or(Error::NoDeployment(id))
}

/// The newest `limit` deployments, of one service or of all.
pub async fn deployments(
    pool: &PgPool,
    service: Option<&ServiceKey>,
    limit: i64,
) -> Result<Vec<Deployment>, Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{DEPLOYMENT} WHERE ($1::text IS NULL OR (project = $1 AND service = $2)) \
         ORDER BY id DESC LIMIT $3"
    )))
    .bind(service.map(|s| &s.project))
    .bind(service.map(|s| &s.name))
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(db("listing deployments"))
}

/// Per service, its newest deployment and, when that is not the one serving, the healthy one
/// too: what `meshploy status` shows.
pub async fn current(pool: &PgPool) -> Result<Vec<Deployment>, Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM (SELECT DISTINCT ON (project, service) * FROM ({DEPLOYMENT}) d \
           ORDER BY project, service, id DESC) newest \
         UNION SELECT * FROM (SELECT DISTINCT ON (project, service) * FROM ({DEPLOYMENT}) d \
           WHERE state = 'healthy' ORDER BY project, service, id DESC) serving \
         ORDER BY project, service, id DESC"
    )))
    .fetch_all(pool)
    .await
    .map_err(db("reading the current deployments"))
}

pub async fn insert_deployment(
    pool: &PgPool,
    service: &ServiceKey,
    release: &Release,
    revision_id: Option<i64>,
    trigger: DeployTrigger,
) -> Result<i64, Error> {
    sqlx::query_scalar(
        "INSERT INTO deployments (project, service, release_digest, release, revision_id, trigger, state) \
         VALUES ($1, $2, $3, $4, $5, $6, 'queued') RETURNING id",
    )
    .bind(&service.project)
    .bind(&service.name)
    .bind(release.digest())
    .bind(Json(release))
    .bind(revision_id)
    .bind(trigger)
    .fetch_one(pool)
    .await
    .map_err(db("recording a deployment"))
}

/// Moves a deployment to `building` or `deploying`, stamping the phase's start.
pub async fn advance(
    pool: &PgPool,
    id: i64,
    state: DeploymentState,
    build: Option<i64>,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE deployments SET state = $2, build_id = COALESCE($3, build_id), \
           building_at = CASE WHEN $2 = 'building' THEN now() ELSE building_at END, \
           deploying_at = CASE WHEN $2 = 'deploying' THEN now() ELSE deploying_at END \
         WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(build)
    .execute(pool)
    .await
    .map_err(db("advancing a deployment"))?;
    Ok(())
}

pub async fn fail(pool: &PgPool, id: i64, reason: &str) -> Result<(), Error> {
    sqlx::query(
        "UPDATE deployments SET state = 'failed', reason = $2, finished_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(reason)
    .execute(pool)
    .await
    .map_err(db("recording a failed deployment"))?;
    Ok(())
}

/// Makes deployment `id` the one that serves its service, in one transaction: its endpoints
/// replace the service's, it becomes `healthy`, and the one it replaces becomes `replaced`
/// (`superseded`, or `rolled-back` for a rollback). Returns the replaced deployment's id.
pub async fn promote(
    pool: &PgPool,
    id: i64,
    service: &ServiceKey,
    endpoints: &[Endpoint],
    replaced: DeploymentState,
) -> Result<Option<i64>, Error> {
    let mut tx = pool
        .begin()
        .await
        .map_err(db("starting to switch endpoints"))?;
    replace_endpoints(&mut tx, service, endpoints).await?;
    let previous: Option<i64> = sqlx::query_scalar(
        "UPDATE deployments SET state = $4, degraded = NULL \
         WHERE project = $1 AND service = $2 AND state = 'healthy' AND id <> $3 RETURNING id",
    )
    .bind(&service.project)
    .bind(&service.name)
    .bind(id)
    .bind(replaced)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db("retiring the replaced deployment"))?;
    sqlx::query("UPDATE deployments SET state = 'healthy', finished_at = now() WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db("marking a deployment healthy"))?;
    tx.commit()
        .await
        .map_err(db("committing the switch of endpoints"))?;
    Ok(previous)
}

async fn replace_endpoints(
    conn: &mut PgConnection,
    service: &ServiceKey,
    endpoints: &[Endpoint],
) -> Result<(), Error> {
    sqlx::query("DELETE FROM endpoints WHERE project = $1 AND service = $2")
        .bind(&service.project)
        .bind(&service.name)
        .execute(&mut *conn)
        .await
        .map_err(db("removing the old endpoints"))?;
    let ports: Vec<i32> = endpoints.iter().map(|e| i32::from(e.port)).collect();
    let addresses: Vec<&str> = endpoints.iter().map(|e| e.address.as_str()).collect();
    // The service may have been deleted since: then there is nothing to route to.
    sqlx::query(
        "INSERT INTO endpoints (project, service, port, address) \
         SELECT $1, $2, port, address FROM UNNEST($3::integer[], $4::text[]) AS e(port, address) \
         WHERE EXISTS (SELECT 1 FROM services WHERE project = $1 AND name = $2)",
    )
    .bind(&service.project)
    .bind(&service.name)
    .bind(ports)
    .bind(addresses)
    .execute(&mut *conn)
    .await
    .map_err(db("storing the new endpoints"))?;
    Ok(())
}

/// Removes a service's endpoints: nothing runs behind them.
pub async fn unroute(pool: &PgPool, service: &ServiceKey) -> Result<(), Error> {
    replace_endpoints(
        &mut *pool
            .acquire()
            .await
            .map_err(db("removing stale endpoints"))?,
        service,
        &[],
    )
    .await
}

/// A deployment that no longer serves because its service was deleted.
pub async fn retire(pool: &PgPool, id: i64) -> Result<(), Error> {
    sqlx::query(
        "UPDATE deployments SET state = 'superseded', degraded = NULL WHERE id = $1 AND state = 'healthy'",
    )
    .bind(id)
    .execute(pool)
    .await
    .map_err(db("retiring a deployment"))?;
    Ok(())
}

/// After a crash or a leader change: deployments that were under way fail with the reason,
/// and the controller decides again. Returns how many.
pub async fn interrupt_active(pool: &PgPool) -> Result<u64, Error> {
    let done = sqlx::query(
        "UPDATE deployments SET reason = 'interrupted: the controller stopped while it was ' || state, \
           state = 'failed', finished_at = now() \
         WHERE state IN ('queued', 'building', 'deploying')",
    )
    .execute(pool)
    .await
    .map_err(db("failing interrupted deployments"))?;
    sqlx::query(
        "UPDATE builds SET state = 'failed', reason = 'interrupted: the controller stopped during the build', \
           finished_at = now() WHERE state = 'building'",
    )
    .execute(pool)
    .await
    .map_err(db("failing interrupted builds"))?;
    Ok(done.rows_affected())
}

pub async fn set_degraded(pool: &PgPool, id: i64, degraded: Option<&str>) -> Result<(), Error> {
    sqlx::query(
        "UPDATE deployments SET degraded = $2 WHERE id = $1 AND degraded IS DISTINCT FROM $2",
    )
    .bind(id)
    .bind(degraded)
    .execute(pool)
    .await
    .map_err(db("recording a degraded deployment"))?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct DeployedRow {
    id: i64,
    project: String,
    service: String,
    release_digest: String,
    state: DeploymentState,
}

fn by_service(rows: Vec<DeployedRow>) -> BTreeMap<ServiceKey, Deployed> {
    rows.into_iter()
        .map(|r| {
            let key = ServiceKey {
                project: r.project,
                name: r.service,
            };
            let deployed = Deployed {
                id: r.id,
                release_digest: r.release_digest,
                state: r.state,
            };
            (key, deployed)
        })
        .collect()
}

/// The newest deployment of each service.
pub async fn latest(pool: &PgPool) -> Result<BTreeMap<ServiceKey, Deployed>, Error> {
    let rows = sqlx::query_as(
        "SELECT DISTINCT ON (project, service) id, project, service, release_digest, state \
         FROM deployments ORDER BY project, service, id DESC",
    )
    .fetch_all(pool)
    .await
    .map_err(db("reading the latest deployments"))?;
    Ok(by_service(rows))
}

/// The newest deployment of each service that tried a release: restarts left out.
pub async fn tried(pool: &PgPool) -> Result<BTreeMap<ServiceKey, Deployed>, Error> {
    let rows = sqlx::query_as(
        "SELECT DISTINCT ON (project, service) id, project, service, release_digest, state \
         FROM deployments WHERE trigger <> 'restart' ORDER BY project, service, id DESC",
    )
    .fetch_all(pool)
    .await
    .map_err(db("reading the releases tried last"))?;
    Ok(by_service(rows))
}

/// The healthy deployment of each service.
pub async fn healthy(pool: &PgPool) -> Result<BTreeMap<ServiceKey, Deployed>, Error> {
    let rows = sqlx::query_as(
        "SELECT DISTINCT ON (project, service) id, project, service, release_digest, state \
         FROM deployments WHERE state = 'healthy' ORDER BY project, service, id DESC",
    )
    .fetch_all(pool)
    .await
    .map_err(db("reading the healthy deployments"))?;
    Ok(by_service(rows))
}

pub async fn pins(pool: &PgPool) -> Result<BTreeMap<ServiceKey, Pin>, Error> {
    let rows: Vec<(String, String, i64, String, String)> = sqlx::query_as(
        "SELECT p.project, p.service, p.deployment_id, d.release_digest, p.spec_digest \
         FROM pins p JOIN deployments d ON d.id = p.deployment_id",
    )
    .fetch_all(pool)
    .await
    .map_err(db("reading the pins"))?;
    Ok(rows
        .into_iter()
        .map(|(project, name, deployment, release_digest, spec_digest)| {
            let pin = Pin {
                deployment,
                release_digest,
                spec_digest,
            };
            (ServiceKey { project, name }, pin)
        })
        .collect())
}

/// Pins `service` to `deployment`'s release and wakes the controller.
pub async fn pin(
    pool: &PgPool,
    service: &ServiceKey,
    deployment: i64,
    spec_digest: &str,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO pins (project, service, deployment_id, spec_digest) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (project, service) DO UPDATE SET deployment_id = EXCLUDED.deployment_id, \
           spec_digest = EXCLUDED.spec_digest, pinned_at = now()",
    )
    .bind(&service.project)
    .bind(&service.name)
    .bind(deployment)
    .bind(spec_digest)
    .execute(pool)
    .await
    .map_err(db("pinning a service"))?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(pool)
        .await
        .map_err(db("waking the controller"))?;
    Ok(())
}

pub async fn unpin(pool: &PgPool, service: &ServiceKey) -> Result<(), Error> {
    sqlx::query("DELETE FROM pins WHERE project = $1 AND service = $2")
        .bind(&service.project)
        .bind(&service.name)
        .execute(pool)
        .await
        .map_err(db("releasing a pin"))?;
    Ok(())
}

/// The pin of one service: the deployment it holds.
pub async fn pinned(pool: &PgPool, service: &ServiceKey) -> Result<Option<i64>, Error> {
    sqlx::query_scalar("SELECT deployment_id FROM pins WHERE project = $1 AND service = $2")
        .bind(&service.project)
        .bind(&service.name)
        .fetch_optional(pool)
        .await
        .map_err(db("reading a pin"))
}

/// A build row.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct Build {
    pub id: i64,
    pub git: String,
    pub commit_id: String,
    pub strategy: String,
    pub state: BuildState,
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub finished_at: Option<OffsetDateTime>,
}

pub async fn build(pool: &PgPool, id: i64) -> Result<Option<Build>, Error> {
    sqlx::query_as(
        "SELECT id, git, commit_id, strategy, state, reason, started_at, finished_at \
         FROM builds WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(db("reading a build"))
}

/// The newest successful build with this cache key.
pub async fn cached_build(pool: &PgPool, cache_key: &str) -> Result<Option<i64>, Error> {
    sqlx::query_scalar(
        "SELECT id FROM builds WHERE cache_key = $1 AND state = 'succeeded' ORDER BY id DESC LIMIT 1",
    )
    .bind(cache_key)
    .fetch_optional(pool)
    .await
    .map_err(db("looking up the build cache"))
}

/// What a new build row records.
#[derive(Debug)]
pub struct NewBuild<'a> {
    pub service: &'a ServiceKey,
    pub git: &'a str,
    pub commit: &'a str,
    pub strategy: &'a str,
    pub cache_key: &'a str,
}

pub async fn insert_build(pool: &PgPool, build: &NewBuild<'_>) -> Result<i64, Error> {
    sqlx::query_scalar(
        "INSERT INTO builds (project, service, git, commit_id, strategy, cache_key, state) \
         VALUES ($1, $2, $3, $4, $5, $6, 'building') RETURNING id",
    )
    .bind(&build.service.project)
    .bind(&build.service.name)
    .bind(build.git)
    .bind(build.commit)
    .bind(build.strategy)
    .bind(build.cache_key)
    .fetch_one(pool)
    .await
    .map_err(db("recording a build"))
}

pub async fn finish_build(pool: &PgPool, id: i64, failure: Option<&str>) -> Result<(), Error> {
    let state = match failure {
        Some(_) => BuildState::Failed,
        None => BuildState::Succeeded,
    };
    sqlx::query("UPDATE builds SET state = $2, reason = $3, finished_at = now() WHERE id = $1")
        .bind(id)
        .bind(state)
        .bind(failure)
        .execute(pool)
        .await
        .map_err(db("recording the end of a build"))?;
    Ok(())
}

/// Keeps the replica logs of a service's newest `keep` deployments and drops older ones.
pub async fn prune_logs(pool: &PgPool, service: &ServiceKey, keep: i64) -> Result<(), Error> {
    sqlx::query(
        "DELETE FROM log_lines WHERE deployment_id IN \
           (SELECT id FROM deployments WHERE project = $1 AND service = $2 ORDER BY id DESC OFFSET $3)",
    )
    .bind(&service.project)
    .bind(&service.name)
    .bind(keep)
    .execute(pool)
    .await
    .map_err(db("dropping old deployments' logs"))?;
    Ok(())
}

/// The service `text` names: `project/name`, or `name` when one project has a service (applied
/// or deployed before) of that name.
pub async fn find_service(pool: &PgPool, text: &str) -> Result<ServiceKey, Error> {
    let (project, name) = match text.split_once('/') {
        Some((project, name)) => (Some(project), name),
        None => (None, text),
    };
    let found: Vec<String> = sqlx::query_scalar(
        "SELECT project FROM services WHERE name = $2 AND ($1::text IS NULL OR project = $1) \
         UNION SELECT project FROM deployments WHERE service = $2 AND ($1::text IS NULL OR project = $1) \
         ORDER BY 1",
    )
    .bind(project)
    .bind(name)
    .fetch_all(pool)
    .await
    .map_err(db("looking up a service"))?;
    match found.as_slice() {
        [project] => Ok(ServiceKey {
            project: project.clone(),
            name: name.to_owned(),
        }),
        [] => Err(Error::NoService {
            name: text.to_owned(),
            near: near_service(pool, project.is_some(), text).await?,
        }),
        several => Err(Error::Ambiguous {
            name: name.to_owned(),
            projects: several.join(", "),
        }),
    }
}

/// The service name nearest to a misspelt `text`, written as `text` was: with its project
/// when `qualified`.
async fn near_service(pool: &PgPool, qualified: bool, text: &str) -> Result<Option<String>, Error> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT CASE WHEN $1 THEN project || '/' || name ELSE name END FROM services \
         UNION SELECT CASE WHEN $1 THEN project || '/' || service ELSE service END FROM deployments",
    )
    .bind(qualified)
    .fetch_all(pool)
    .await
    .map_err(db("looking up a service"))?;
    Ok(schema::rules::closest(text, names.iter().map(String::as_str)).map(str::to_owned))
}

/// Every route's name, host and path, for printing where services are reachable.
pub async fn routes(pool: &PgPool) -> Result<Vec<(String, String, String)>, Error> {
    sqlx::query_as("SELECT project || '/' || name, host, path FROM routes ORDER BY 2, 3")
        .fetch_all(pool)
        .await
        .map_err(db("listing the routes"))
}
