//! The rows one apply writes, and the batched statements that write them. Crate only: the
//! pipeline writes them inside the transaction that holds the apply lock.

use std::collections::BTreeMap;

use schema::Kind;
use sqlx::PgConnection;

use super::column;
use crate::Error;
use crate::error::db;

/// The rows one apply writes, gathered per table so each table takes one statement.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    pub delete: BTreeMap<Kind, Vec<Key>>,
    pub projects: Vec<ProjectRow>,
    pub groups: Vec<GroupRow>,
    pub services: Vec<ServiceRow>,
    pub service_groups: Vec<ServiceGroupRow>,
    pub routes: Vec<RouteRow>,
    /// Secrets to insert or replace.
    pub secrets: Vec<SecretRow>,
    /// Every secret the written groups keep. Others in those groups go.
    pub kept_secrets: Vec<SecretKey>,
}

/// A resource's key within its kind: the project (for a project, its own name) and name.
#[derive(Debug)]
pub(crate) struct Key {
    pub project: String,
    pub name: String,
}

#[derive(Debug)]
pub(crate) struct ProjectRow {
    pub name: String,
    pub fields: String,
    pub protect: bool,
}

#[derive(Debug)]
pub(crate) struct GroupRow {
    pub project: String,
    pub name: String,
    pub fields: String,
    pub protect: bool,
}

/// A variable group a service uses.
#[derive(Debug)]
pub(crate) struct ServiceGroupRow {
    pub project: String,
    pub service: String,
    pub group: String,
}

/// Where a secret lives: its project, variable group and name.
#[derive(Clone, Debug)]
pub(crate) struct SecretKey {
    pub project: String,
    pub group: String,
    pub name: String,
}

#[derive(Debug)]
pub(crate) struct SecretRow {
    pub key: SecretKey,
    pub ciphertext: String,
    pub digest: String,
}

#[derive(Debug)]
pub(crate) struct ServiceRow {
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
pub(crate) struct RouteRow {
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
pub(crate) async fn write(
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

async fn delete(conn: &mut PgConnection, kind: Kind, keys: &[Key]) -> Result<(), Error> {
    let projects = column(keys, |k| k.project.as_str());
    let names = column(keys, |k| k.name.as_str());
    let query = match kind {
        Kind::Project => {
            sqlx::query("DELETE FROM projects WHERE name = ANY($1)")
                .bind(names)
                .execute(conn)
                .await
                .map_err(db("deleting resources"))?;
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
        .await
        .map_err(db("deleting resources"))?;
    Ok(())
}

async fn upsert_projects(
    conn: &mut PgConnection,
    rows: &[ProjectRow],
    source: &str,
    revision: i64,
) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let names = column(rows, |r| r.name.as_str());
    let fields = column(rows, |r| r.fields.as_str());
    let protect = column(rows, |r| r.protect);
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
    .await.map_err(db("writing projects"))?;
    Ok(())
}

async fn upsert_groups(
    conn: &mut PgConnection,
    rows: &[GroupRow],
    source: &str,
    revision: i64,
) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let projects = column(rows, |r| r.project.as_str());
    let names = column(rows, |r| r.name.as_str());
    let fields = column(rows, |r| r.fields.as_str());
    let protect = column(rows, |r| r.protect);
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
    .await
    .map_err(db("writing variable groups"))?;
    Ok(())
}

async fn write_secrets(conn: &mut PgConnection, writes: &Writes) -> Result<(), Error> {
    if writes.groups.is_empty() {
        return Ok(());
    }
    let groups = &writes.groups;
    let kept = &writes.kept_secrets;
    sqlx::query(
        "DELETE FROM secrets s \
         WHERE (s.project, s.group_name) IN (SELECT * FROM UNNEST($1::text[], $2::text[])) \
           AND NOT EXISTS (SELECT 1 FROM UNNEST($3::text[], $4::text[], $5::text[]) AS k(p, g, n) \
                           WHERE (k.p, k.g, k.n) = (s.project, s.group_name, s.name))",
    )
    .bind(column(groups, |g| g.project.as_str()))
    .bind(column(groups, |g| g.name.as_str()))
    .bind(column(kept, |k| k.project.as_str()))
    .bind(column(kept, |k| k.group.as_str()))
    .bind(column(kept, |k| k.name.as_str()))
    .execute(&mut *conn)
    .await
    .map_err(db("writing secrets"))?;
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
    .bind(column(rows, |r| r.key.project.as_str()))
    .bind(column(rows, |r| r.key.group.as_str()))
    .bind(column(rows, |r| r.key.name.as_str()))
    .bind(column(rows, |r| r.ciphertext.as_str()))
    .bind(column(rows, |r| r.digest.as_str()))
    .execute(conn)
    .await
    .map_err(db("writing secrets"))?;
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
    .await.map_err(db("writing services"))?;
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
    .await
    .map_err(db("writing service variable groups"))?;
    let rows = &writes.service_groups;
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO service_variable_groups (project, service, group_name) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])",
    )
    .bind(column(rows, |r| r.project.as_str()))
    .bind(column(rows, |r| r.service.as_str()))
    .bind(column(rows, |r| r.group.as_str()))
    .execute(conn)
    .await
    .map_err(db("writing service variable groups"))?;
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
    .await.map_err(db("writing routes"))?;
    Ok(())
}

/// Makes `to` the owner of every resource `from` owns: an adoption, written with the apply
/// that shows it.
pub(crate) async fn transfer(conn: &mut PgConnection, from: &str, to: &str) -> Result<(), Error> {
    for (table, operation) in [
        ("projects", "adopting projects"),
        ("variable_groups", "adopting variable groups"),
        ("services", "adopting services"),
        ("routes", "adopting routes"),
    ] {
        let query = format!("UPDATE {table} SET source = $2 WHERE source = $1");
        sqlx::query(sqlx::AssertSqlSafe(query))
            .bind(from)
            .bind(to)
            .execute(&mut *conn)
            .await
            .map_err(db(operation))?;
    }
    Ok(())
}
