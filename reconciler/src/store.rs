//! The state in PostgreSQL: one small function per query. Every value is a bound parameter;
//! writes go in batches (`UNNEST` of arrays), so applying 10,000 resources takes a handful of
//! statements rather than 10,000 round trips.

use std::collections::BTreeMap;

use schema::{Address, Kind};
use sqlx::migrate::Migrator;
use sqlx::{PgConnection, PgPool};

use crate::Error;
use crate::plan::{Entry, Foreign, State, Value};

/// The versioned SQL under `migrations/`.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// The channel a committed apply notifies, with the revision as JSON payload.
pub const CHANNEL: &str = "meshploy_revisions";

/// The advisory lock every apply holds ("mesh" in ASCII). Below 2^31, so `pg_locks` shows it
/// whole in `objid`.
const APPLY_LOCK: i64 = 0x6d65_7368;

/// Tries to take the apply lock for the current transaction, waiting up to `timeout_ms`.
/// Returns false when the wait timed out; the transaction is then aborted.
pub async fn try_apply_lock(conn: &mut PgConnection, timeout_ms: u64) -> Result<bool, Error> {
    // `SET` takes no parameters; `set_config` does.
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(format!("{timeout_ms}ms"))
        .execute(&mut *conn)
        .await?;
    match sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(APPLY_LOCK)
        .execute(&mut *conn)
        .await
    {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    sqlx::query("SELECT set_config('lock_timeout', '0', true)")
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

/// Who holds the apply lock: the holder's application name, role, and how long it has held
/// it, as one line.
pub async fn apply_lock_holder(pool: &PgPool) -> Result<Option<String>, Error> {
    let row: Option<(String, String, f64)> = sqlx::query_as(
        "SELECT a.application_name, coalesce(a.usename::text, ''), \
                extract(epoch FROM now() - coalesce(a.xact_start, a.backend_start))::float8 \
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         JOIN pg_database d ON d.oid = l.database AND d.datname = current_database() \
         WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 \
           AND l.objid = $1::bigint::oid AND l.objsubid = 1",
    )
    .bind(APPLY_LOCK)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(application, role, seconds)| {
        let who = if application.is_empty() {
            format!("a session of role `{role}`")
        } else {
            format!("`{application}`")
        };
        format!("{who}, for {seconds:.1} s")
    }))
}

/// The state as one source sees it: what it owns, and who owns every other address.
#[derive(Clone, Debug, Default)]
pub struct Live {
    /// The resources `source` owns, which its plans may change and delete.
    pub state: State,
    /// Every other resource's owner, and the other sources' routes by host and path. A plan
    /// never touches these.
    pub foreign: Foreign,
}

/// Everything PostgreSQL holds, as `source` sees it.
pub async fn load_state(conn: &mut PgConnection, source: &str) -> Result<Live, Error> {
    let mut live = Live::default();
    let mut keep = |address: Address, owner: String, entry: Entry| {
        if owner == source {
            live.state.insert(address, entry);
        } else {
            live.foreign.insert(address, owner, &entry);
        }
    };
    let projects: Vec<(String, String, bool, i64, String)> =
        sqlx::query_as("SELECT name, fields::text, protect, version, source FROM projects")
            .fetch_all(&mut *conn)
            .await?;
    for (name, fields, protect, version, owner) in projects {
        let address = Address::project(&name);
        let entry = entry(&address, &fields, protect, version)?;
        keep(address, owner, entry);
    }
    for (kind, query) in [
        (
            Kind::VariableGroup,
            "SELECT project, name, fields::text, protect, version, source FROM variable_groups",
        ),
        (
            Kind::Service,
            "SELECT project, name, fields::text, protect, version, source FROM services",
        ),
        (
            Kind::Route,
            "SELECT project, name, fields::text, protect, version, source FROM routes",
        ),
    ] {
        let rows: Vec<(String, String, String, bool, i64, String)> =
            sqlx::query_as(query).fetch_all(&mut *conn).await?;
        for (project, name, fields, protect, version, owner) in rows {
            let address = Address::new(kind, &project, &name);
            let entry = entry(&address, &fields, protect, version)?;
            keep(address, owner, entry);
        }
    }
    for (project, group, name, digest) in secret_digests(conn).await? {
        let address = Address::new(Kind::VariableGroup, &project, &group);
        if let Some(entry) = live.state.get_mut(&address) {
            entry
                .fields
                .insert(format!("secrets.{name}"), Value::Sensitive(digest));
        }
    }
    Ok(live)
}

fn entry(address: &Address, fields: &str, protect: bool, version: i64) -> Result<Entry, Error> {
    let corrupt = |detail: String| Error::CorruptState {
        address: address.to_string(),
        detail,
    };
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(fields).map_err(|e| corrupt(e.to_string()))?;
    let fields = object
        .iter()
        .map(|(path, json)| {
            Value::from_json(json)
                .map(|value| (path.clone(), value))
                .ok_or_else(|| corrupt(format!("field `{path}` holds {json}")))
        })
        .collect::<Result<_, _>>()?;
    Ok(Entry {
        fields,
        protect,
        version: Some(version),
    })
}

async fn secret_digests(
    conn: &mut PgConnection,
) -> Result<Vec<(String, String, String, String)>, Error> {
    Ok(
        sqlx::query_as("SELECT project, group_name, name, digest FROM secrets")
            .fetch_all(conn)
            .await?,
    )
}

/// Every stored secret with its ciphertext, for re-sealing.
pub async fn sealed_secrets(
    conn: &mut PgConnection,
) -> Result<Vec<(String, String, String, String)>, Error> {
    Ok(
        sqlx::query_as(
            "SELECT project, group_name, name, ciphertext FROM secrets ORDER BY 1, 2, 3",
        )
        .fetch_all(conn)
        .await?,
    )
}

pub async fn update_secret_ciphertext(
    conn: &mut PgConnection,
    (project, group, name): (&str, &str, &str),
    ciphertext: &str,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE secrets SET ciphertext = $4 WHERE project = $1 AND group_name = $2 AND name = $3",
    )
    .bind(project)
    .bind(group)
    .bind(name)
    .bind(ciphertext)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn digest_key(conn: &mut PgConnection) -> Result<Option<String>, Error> {
    Ok(sqlx::query_scalar("SELECT sealed FROM secret_digest_key")
        .fetch_optional(conn)
        .await?)
}

/// Stores the sealed digest key unless one exists already (a concurrent first use may have
/// stored its own; the caller reads back whichever won).
pub async fn insert_digest_key(conn: &mut PgConnection, sealed: &str) -> Result<(), Error> {
    sqlx::query("INSERT INTO secret_digest_key (sealed) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(sealed)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn update_digest_key(conn: &mut PgConnection, sealed: &str) -> Result<(), Error> {
    sqlx::query("UPDATE secret_digest_key SET sealed = $1")
        .bind(sealed)
        .execute(conn)
        .await?;
    Ok(())
}

/// What a revision records about itself.
#[derive(Clone, Debug)]
pub struct RevisionMeta {
    pub actor: String,
    pub source: String,
    pub commit: Option<String>,
}

pub async fn insert_revision(
    conn: &mut PgConnection,
    meta: &RevisionMeta,
    (added, changed, destroyed): (i32, i32, i32),
    plan: &str,
) -> Result<i64, Error> {
    Ok(sqlx::query_scalar(
        "INSERT INTO revisions (actor, source, commit_id, added, changed, destroyed, plan) \
         VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb) RETURNING id",
    )
    .bind(&meta.actor)
    .bind(&meta.source)
    .bind(&meta.commit)
    .bind(added)
    .bind(changed)
    .bind(destroyed)
    .bind(plan)
    .fetch_one(conn)
    .await?)
}

pub async fn notify(conn: &mut PgConnection, payload: &str) -> Result<(), Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(())
}

/// One row of `meshploy history`.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct Revision {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub applied_at: time::OffsetDateTime,
    pub actor: String,
    pub source: String,
    pub commit_id: Option<String>,
    pub added: i32,
    pub changed: i32,
    pub destroyed: i32,
}

pub async fn revisions(pool: &PgPool, limit: i64) -> Result<Vec<Revision>, Error> {
    Ok(sqlx::query_as(
        "SELECT id, applied_at, actor, source, commit_id, added, changed, destroyed \
         FROM revisions ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// A revision and its plan (as stored JSON text).
#[derive(Debug, sqlx::FromRow)]
pub struct RevisionPlan {
    #[sqlx(flatten)]
    pub revision: Revision,
    pub plan: String,
}

pub async fn revision(pool: &PgPool, id: i64) -> Result<Option<RevisionPlan>, Error> {
    Ok(sqlx::query_as(
        "SELECT id, applied_at, actor, source, commit_id, added, changed, destroyed, \
                plan::text AS plan \
         FROM revisions WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// One row of `meshploy state list`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Stored {
    pub address: Address,
    pub version: i64,
    pub revision: i64,
    pub source: String,
    /// The git commit of the revision that last wrote it, if it came from git.
    pub commit: Option<String>,
}

pub async fn stored_resources(pool: &PgPool) -> Result<Vec<Stored>, Error> {
    type Row = (String, String, String, i64, i64, String, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT r.kind, r.project, r.name, r.version, r.revision_id, r.source, v.commit_id \
         FROM (SELECT 'project' AS kind, name AS project, name, version, revision_id, source FROM projects \
               UNION ALL SELECT 'variablegroup', project, name, version, revision_id, source FROM variable_groups \
               UNION ALL SELECT 'service', project, name, version, revision_id, source FROM services \
               UNION ALL SELECT 'route', project, name, version, revision_id, source FROM routes) r \
         JOIN revisions v ON v.id = r.revision_id",
    )
    .fetch_all(pool)
    .await?;
    let mut stored: Vec<Stored> = rows
        .into_iter()
        .filter_map(|(kind, project, name, version, revision, source, commit)| {
            let kind = Kind::ALL.into_iter().find(|k| k.slug() == kind)?;
            Some(Stored {
                address: Address::new(kind, &project, &name),
                version,
                revision,
                source,
                commit,
            })
        })
        .collect();
    stored.sort_by(|a, b| a.address.cmp(&b.address));
    Ok(stored)
}

/// The rows one apply writes, gathered per table so each table takes one statement.
#[derive(Debug, Default)]
pub struct Writes {
    pub delete: BTreeMap<Kind, Vec<(String, String)>>,
    pub projects: Vec<(String, String, bool)>,
    pub groups: Vec<(String, String, String, bool)>,
    pub services: Vec<ServiceRow>,
    pub service_groups: Vec<(String, String, String)>,
    pub routes: Vec<RouteRow>,
    /// Secrets to insert or replace: project, group, name, ciphertext, digest.
    pub secrets: Vec<(String, String, String, String, String)>,
    /// Every secret the written groups keep: project, group, name. Others in those groups go.
    pub kept_secrets: Vec<(String, String, String)>,
}

#[derive(Debug)]
pub struct ServiceRow {
    pub project: String,
    pub name: String,
    pub image: Option<String>,
    pub source_git: Option<String>,
    pub port: i32,
    pub replicas: i32,
    pub fields: String,
    pub protect: bool,
}

#[derive(Debug)]
pub struct RouteRow {
    pub project: String,
    pub name: String,
    pub host: String,
    pub path: String,
    pub service: Option<String>,
    pub service_port: Option<i32>,
    pub upstream: Option<String>,
    pub strip_prefix: bool,
    pub fields: String,
    pub protect: bool,
}

/// Runs the writes: deletes children first, then inserts and updates parents first.
/// References are checked at commit, so an error here or there rolls everything back.
pub async fn write(
    conn: &mut PgConnection,
    writes: &Writes,
    source: &str,
    revision: i64,
) -> Result<(), Error> {
    for kind in [
        Kind::Route,
        Kind::Service,
        Kind::VariableGroup,
        Kind::Project,
    ] {
        if let Some(keys) = writes.delete.get(&kind) {
            delete(conn, kind, keys).await?;
        }
    }
    upsert_projects(conn, &writes.projects, source, revision).await?;
    upsert_groups(conn, &writes.groups, source, revision).await?;
    write_secrets(conn, writes).await?;
    upsert_services(conn, &writes.services, source, revision).await?;
    write_service_groups(conn, writes).await?;
    upsert_routes(conn, &writes.routes, source, revision).await
}

async fn delete(
    conn: &mut PgConnection,
    kind: Kind,
    keys: &[(String, String)],
) -> Result<(), Error> {
    let (projects, names): (Vec<&str>, Vec<&str>) =
        keys.iter().map(|(p, n)| (p.as_str(), n.as_str())).unzip();
    let query = match kind {
        Kind::Project => {
            sqlx::query("DELETE FROM projects WHERE name = ANY($1)")
                .bind(names)
                .execute(conn)
                .await?;
            return Ok(());
        }
        Kind::VariableGroup => {
            "DELETE FROM variable_groups WHERE (project, name) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))"
        }
        Kind::Service => {
            "DELETE FROM services WHERE (project, name) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))"
        }
        Kind::Route => {
            "DELETE FROM routes WHERE (project, name) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))"
        }
    };
    sqlx::query(query)
        .bind(projects)
        .bind(names)
        .execute(conn)
        .await?;
    Ok(())
}

async fn upsert_projects(
    conn: &mut PgConnection,
    rows: &[(String, String, bool)],
    source: &str,
    revision: i64,
) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let fields: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    let protect: Vec<bool> = rows.iter().map(|r| r.2).collect();
    sqlx::query(
        "INSERT INTO projects (name, fields, protect, source, revision_id) \
         SELECT n, f::jsonb, p, $4, $5 FROM UNNEST($1::text[], $2::text[], $3::bool[]) AS t(n, f, p) \
         ON CONFLICT (name) DO UPDATE SET fields = EXCLUDED.fields, protect = EXCLUDED.protect, \
           source = EXCLUDED.source, revision_id = EXCLUDED.revision_id, \
           version = nextval('resource_version')",
    )
    .bind(names)
    .bind(fields)
    .bind(protect)
    .bind(source)
    .bind(revision)
    .execute(conn)
    .await?;
    Ok(())
}

async fn upsert_groups(
    conn: &mut PgConnection,
    rows: &[(String, String, String, bool)],
    source: &str,
    revision: i64,
) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let projects: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let names: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    let fields: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    let protect: Vec<bool> = rows.iter().map(|r| r.3).collect();
    sqlx::query(
        "INSERT INTO variable_groups (project, name, fields, protect, source, revision_id) \
         SELECT pr, n, f::jsonb, p, $5, $6 \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bool[]) AS t(pr, n, f, p) \
         ON CONFLICT (project, name) DO UPDATE SET fields = EXCLUDED.fields, \
           protect = EXCLUDED.protect, source = EXCLUDED.source, \
           revision_id = EXCLUDED.revision_id, version = nextval('resource_version')",
    )
    .bind(projects)
    .bind(names)
    .bind(fields)
    .bind(protect)
    .bind(source)
    .bind(revision)
    .execute(conn)
    .await?;
    Ok(())
}

async fn write_secrets(conn: &mut PgConnection, writes: &Writes) -> Result<(), Error> {
    if writes.groups.is_empty() {
        return Ok(());
    }
    let groups: (Vec<&str>, Vec<&str>) = writes
        .groups
        .iter()
        .map(|g| (g.0.as_str(), g.1.as_str()))
        .unzip();
    let kept = &writes.kept_secrets;
    sqlx::query(
        "DELETE FROM secrets s \
         WHERE (s.project, s.group_name) IN (SELECT * FROM UNNEST($1::text[], $2::text[])) \
           AND NOT EXISTS (SELECT 1 FROM UNNEST($3::text[], $4::text[], $5::text[]) AS k(p, g, n) \
                           WHERE (k.p, k.g, k.n) = (s.project, s.group_name, s.name))",
    )
    .bind(groups.0)
    .bind(groups.1)
    .bind(column(kept, |k| k.0.as_str()))
    .bind(column(kept, |k| k.1.as_str()))
    .bind(column(kept, |k| k.2.as_str()))
    .execute(&mut *conn)
    .await?;
    if writes.secrets.is_empty() {
        return Ok(());
    }
    let rows = &writes.secrets;
    sqlx::query(
        "INSERT INTO secrets (project, group_name, name, ciphertext, digest) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) \
         ON CONFLICT (project, group_name, name) DO UPDATE \
           SET ciphertext = EXCLUDED.ciphertext, digest = EXCLUDED.digest",
    )
    .bind(column(rows, |r| r.0.as_str()))
    .bind(column(rows, |r| r.1.as_str()))
    .bind(column(rows, |r| r.2.as_str()))
    .bind(column(rows, |r| r.3.as_str()))
    .bind(column(rows, |r| r.4.as_str()))
    .execute(conn)
    .await?;
    Ok(())
}

async fn upsert_services(
    conn: &mut PgConnection,
    rows: &[ServiceRow],
    source: &str,
    revision: i64,
) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO services (project, name, image, source_git, port, replicas, fields, protect, source, revision_id) \
         SELECT pr, n, i, g, po, r, f::jsonb, p, $9, $10 \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::int4[], $7::text[], $8::bool[]) \
           AS t(pr, n, i, g, po, r, f, p) \
         ON CONFLICT (project, name) DO UPDATE SET image = EXCLUDED.image, \
           source_git = EXCLUDED.source_git, port = EXCLUDED.port, replicas = EXCLUDED.replicas, \
           fields = EXCLUDED.fields, protect = EXCLUDED.protect, source = EXCLUDED.source, \
           revision_id = EXCLUDED.revision_id, version = nextval('resource_version')",
    )
    .bind(column(rows, |r| r.project.as_str()))
    .bind(column(rows, |r| r.name.as_str()))
    .bind(column(rows, |r| r.image.as_deref()))
    .bind(column(rows, |r| r.source_git.as_deref()))
    .bind(column(rows, |r| r.port))
    .bind(column(rows, |r| r.replicas))
    .bind(column(rows, |r| r.fields.as_str()))
    .bind(column(rows, |r| r.protect))
    .bind(source)
    .bind(revision)
    .execute(conn)
    .await?;
    Ok(())
}

async fn write_service_groups(conn: &mut PgConnection, writes: &Writes) -> Result<(), Error> {
    if writes.services.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "DELETE FROM service_variable_groups \
         WHERE (project, service) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))",
    )
    .bind(column(&writes.services, |r| r.project.as_str()))
    .bind(column(&writes.services, |r| r.name.as_str()))
    .execute(&mut *conn)
    .await?;
    let rows = &writes.service_groups;
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO service_variable_groups (project, service, group_name) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])",
    )
    .bind(column(rows, |r| r.0.as_str()))
    .bind(column(rows, |r| r.1.as_str()))
    .bind(column(rows, |r| r.2.as_str()))
    .execute(conn)
    .await?;
    Ok(())
}

async fn upsert_routes(
    conn: &mut PgConnection,
    rows: &[RouteRow],
    source: &str,
    revision: i64,
) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO routes (project, name, host, path, service, service_port, upstream, strip_prefix, fields, protect, source, revision_id) \
         SELECT pr, n, h, pa, s, sp, u, st, f::jsonb, p, $11, $12 \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::text[], $8::bool[], $9::text[], $10::bool[]) \
           AS t(pr, n, h, pa, s, sp, u, st, f, p) \
         ON CONFLICT (project, name) DO UPDATE SET host = EXCLUDED.host, path = EXCLUDED.path, \
           service = EXCLUDED.service, service_port = EXCLUDED.service_port, \
           upstream = EXCLUDED.upstream, strip_prefix = EXCLUDED.strip_prefix, \
           fields = EXCLUDED.fields, protect = EXCLUDED.protect, source = EXCLUDED.source, \
           revision_id = EXCLUDED.revision_id, version = nextval('resource_version')",
    )
    .bind(column(rows, |r| r.project.as_str()))
    .bind(column(rows, |r| r.name.as_str()))
    .bind(column(rows, |r| r.host.as_str()))
    .bind(column(rows, |r| r.path.as_str()))
    .bind(column(rows, |r| r.service.as_deref()))
    .bind(column(rows, |r| r.service_port))
    .bind(column(rows, |r| r.upstream.as_deref()))
    .bind(column(rows, |r| r.strip_prefix))
    .bind(column(rows, |r| r.fields.as_str()))
    .bind(column(rows, |r| r.protect))
    .bind(source)
    .bind(revision)
    .execute(conn)
    .await?;
    Ok(())
}

/// One column of a batch, for binding as an array.
fn column<'a, T, U>(rows: &'a [T], value: impl Fn(&'a T) -> U) -> Vec<U> {
    rows.iter().map(value).collect()
}

/// The channel that asks the active reconciler to sync one source now; the payload is
/// `{"source": NAME, "trigger": TRIGGER}`.
pub const SYNC_CHANNEL: &str = "meshploy_sync";

/// A tracked source as registered by `meshploy serve`.
#[derive(Clone, Debug)]
pub struct SourceRow<'a> {
    pub name: &'a str,
    pub url: &'a str,
    pub branch: &'a str,
    pub path: &'a str,
    pub policy: &'a str,
}

/// Registers a source, or updates where it points; its sync history is kept.
pub async fn upsert_source(pool: &PgPool, source: &SourceRow<'_>) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO sources (name, url, branch, path, policy) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (name) DO UPDATE SET url = $2, branch = $3, path = $4, policy = $5, \
             updated_at = now() \
         WHERE (sources.url, sources.branch, sources.path, sources.policy) \
               IS DISTINCT FROM ($2, $3, $4, $5)",
    )
    .bind(source.name)
    .bind(source.url)
    .bind(source.branch)
    .bind(source.path)
    .bind(source.policy)
    .execute(pool)
    .await?;
    Ok(())
}

/// Where a source stands, as `meshploy status` shows it.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct SourceStatus {
    pub name: String,
    pub url: String,
    pub branch: String,
    pub path: String,
    pub policy: String,
    pub state: String,
    pub last_seen_commit: Option<String>,
    pub last_applied_commit: Option<String>,
    pub last_revision: Option<i64>,
    pub message: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub checked_at: Option<time::OffsetDateTime>,
    /// The newest attempt, if any.
    pub attempt_id: Option<i64>,
    pub trigger: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<time::OffsetDateTime>,
    pub rewritten_from: Option<String>,
    pub fetch_ms: Option<i32>,
    pub total_ms: Option<i32>,
}

/// Every registered source with its newest attempt, by name.
pub async fn source_statuses(pool: &PgPool) -> Result<Vec<SourceStatus>, Error> {
    Ok(sqlx::query_as(
        "SELECT s.name, s.url, s.branch, s.path, s.policy, s.state, s.last_seen_commit, \
                s.last_applied_commit, s.last_revision, s.message, s.checked_at, \
                a.id AS attempt_id, a.trigger, a.finished_at, a.rewritten_from, \
                a.fetch_ms, a.total_ms \
         FROM sources s LEFT JOIN LATERAL \
             (SELECT * FROM sync_attempts WHERE source = s.name ORDER BY id DESC LIMIT 1) a \
             ON true \
         ORDER BY s.name",
    )
    .fetch_all(pool)
    .await?)
}

/// The state and last applied commit of one source.
pub async fn source_position(
    pool: &PgPool,
    name: &str,
) -> Result<Option<(String, Option<String>)>, Error> {
    Ok(
        sqlx::query_as("SELECT state, last_applied_commit FROM sources WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?,
    )
}

/// Records that a source was checked and found unchanged (no attempt row: polls every
/// minute would bury the attempts that did something).
pub async fn touch_source(pool: &PgPool, name: &str) -> Result<(), Error> {
    sqlx::query("UPDATE sources SET checked_at = now() WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await?;
    Ok(())
}

/// Marks a source as applying `commit`.
pub async fn mark_applying(pool: &PgPool, name: &str, commit: &str) -> Result<(), Error> {
    sqlx::query(
        "UPDATE sources SET state = 'applying', last_seen_commit = $2, checked_at = now(), \
             updated_at = now() WHERE name = $1",
    )
    .bind(name)
    .bind(commit)
    .execute(pool)
    .await?;
    Ok(())
}

/// One finished sync attempt.
#[derive(Clone, Debug)]
pub struct Attempt<'a> {
    pub source: &'a str,
    pub trigger: &'a str,
    pub started_at: time::OffsetDateTime,
    pub commit: Option<&'a str>,
    pub rewritten_from: Option<&'a str>,
    /// `synced`, `out-of-sync` or `failed`.
    pub outcome: &'a str,
    pub message: Option<&'a str>,
    pub revision: Option<i64>,
    pub fetch_ms: i32,
    pub total_ms: i32,
}

/// Records an attempt and moves the source to its outcome, in one statement. The last
/// applied commit moves only when the attempt synced.
pub async fn record_attempt(pool: &PgPool, attempt: &Attempt<'_>) -> Result<i64, Error> {
    Ok(sqlx::query_scalar(
        "WITH a AS ( \
             INSERT INTO sync_attempts (source, trigger, started_at, commit_id, rewritten_from, \
                 outcome, message, revision_id, fetch_ms, total_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id), \
         s AS ( \
             UPDATE sources SET state = $6, message = $7, checked_at = now(), updated_at = now(), \
                 last_seen_commit = coalesce($4, last_seen_commit), \
                 last_applied_commit = CASE WHEN $6 = 'synced' THEN $4 ELSE last_applied_commit END, \
                 last_revision = coalesce($8, last_revision) \
             WHERE name = $1) \
         SELECT id FROM a",
    )
    .bind(attempt.source)
    .bind(attempt.trigger)
    .bind(attempt.started_at)
    .bind(attempt.commit)
    .bind(attempt.rewritten_from)
    .bind(attempt.outcome)
    .bind(attempt.message)
    .bind(attempt.revision)
    .bind(attempt.fetch_ms)
    .bind(attempt.total_ms)
    .fetch_one(pool)
    .await?)
}

/// The newest attempt of a source: id, outcome and message.
pub async fn latest_attempt(
    pool: &PgPool,
    source: &str,
) -> Result<Option<(i64, String, Option<String>)>, Error> {
    Ok(sqlx::query_as(
        "SELECT id, outcome, message FROM sync_attempts WHERE source = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(source)
    .fetch_optional(pool)
    .await?)
}

/// Asks the active reconciler, whichever process it is, to sync `source` now.
pub async fn request_sync(pool: &PgPool, source: &str, trigger: &str) -> Result<(), Error> {
    let payload = serde_json::json!({ "source": source, "trigger": trigger }).to_string();
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(SYNC_CHANNEL)
        .bind(payload)
        .execute(pool)
        .await?;
    Ok(())
}

/// Remembers a webhook delivery id; false when it was seen before (a replay). Deliveries
/// older than 30 days are forgotten, as GitHub redelivers only recent ones.
pub async fn remember_delivery(pool: &PgPool, id: &str) -> Result<bool, Error> {
    sqlx::query("DELETE FROM webhook_deliveries WHERE received_at < now() - interval '30 days'")
        .execute(pool)
        .await?;
    let inserted =
        sqlx::query("INSERT INTO webhook_deliveries (id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(id)
            .execute(pool)
            .await?;
    Ok(inserted.rows_affected() == 1)
}
