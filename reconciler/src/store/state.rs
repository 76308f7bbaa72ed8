//! The live state: every resource row as the plan core sees it, split into what one source
//! owns and what others own.

use schema::{Address, Kind};
use sqlx::{PgConnection, PgPool};

use crate::Error;
use crate::error::db;
use crate::plan::{Entry, Foreign, State, Value};

/// The state as one source sees it: what it owns, and who owns every other address.
#[derive(Clone, Debug, Default)]
pub struct Live {
    /// The resources `source` owns, which its plans may change and delete.
    pub state: State,
    /// Every other resource's owner, and the other sources' routes by host and path. A plan
    /// never touches these.
    pub foreign: Foreign,
    /// Of `state`, the resources another source owns that `source` adopts.
    pub adopted: Vec<Address>,
}

/// Everything PostgreSQL holds, as `source` sees it; with `adopt`, the resources of that
/// source count as `source`'s own (and are listed in `adopted`).
pub async fn load_state(
    conn: &mut PgConnection,
    source: &str,
    adopt: Option<&str>,
) -> Result<Live, Error> {
    let mut live = Live::default();
    let mut keep = |address: Address, owner: String, entry: Entry| {
        if owner == source {
            live.state.insert(address, entry);
        } else if adopt == Some(owner.as_str()) {
            live.adopted.push(address.clone());
            live.state.insert(address, entry);
        } else {
            live.foreign.insert(address, owner, &entry);
        }
    };
    for (kind, query) in [
        (
            Kind::Project,
            "SELECT name AS project, name, fields::text, protect, version, source FROM projects",
        ),
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
        let rows: Vec<ResourceRow> = sqlx::query_as(query)
            .fetch_all(&mut *conn)
            .await
            .map_err(db("reading the live state"))?;
        for row in rows {
            let address = match kind {
                Kind::Project => Address::project(&row.name),
                _ => Address::new(kind, &row.project, &row.name),
            };
            let entry = entry(&address, &row)?;
            keep(address, row.source, entry);
        }
    }
    for secret in secret_digests(conn).await? {
        let address = Address::new(Kind::VariableGroup, &secret.project, &secret.group_name);
        if let Some(entry) = live.state.get_mut(&address) {
            entry.fields.insert(
                format!("secrets.{}", secret.name),
                Value::Sensitive(secret.digest),
            );
        }
    }
    Ok(live)
}

/// One resource row of any kind; a project's `project` is its own name.
#[derive(Debug, sqlx::FromRow)]
struct ResourceRow {
    project: String,
    name: String,
    fields: String,
    protect: bool,
    version: i64,
    /// The source that owns it.
    source: String,
}

fn entry(address: &Address, row: &ResourceRow) -> Result<Entry, Error> {
    let corrupt = |detail: String| Error::CorruptState {
        address: address.to_string(),
        detail,
    };
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&row.fields).map_err(|e| corrupt(e.to_string()))?;
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
        protect: row.protect,
        version: Some(row.version),
    })
}

/// A stored secret's keyed digest, which plans compare.
#[derive(Debug, sqlx::FromRow)]
struct SecretDigest {
    project: String,
    group_name: String,
    name: String,
    digest: String,
}

async fn secret_digests(conn: &mut PgConnection) -> Result<Vec<SecretDigest>, Error> {
    sqlx::query_as("SELECT project, group_name, name, digest FROM secrets")
        .fetch_all(conn)
        .await
        .map_err(db("reading the secret digests"))
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
    #[derive(sqlx::FromRow)]
    struct Row {
        kind: String,
        project: String,
        name: String,
        version: i64,
        revision_id: i64,
        source: String,
        commit_id: Option<String>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT r.kind, r.project, r.name, r.version, r.revision_id, r.source, v.commit_id \
         FROM (SELECT 'project' AS kind, name AS project, name, version, revision_id, source FROM projects \
               UNION ALL SELECT 'variablegroup', project, name, version, revision_id, source FROM variable_groups \
               UNION ALL SELECT 'service', project, name, version, revision_id, source FROM services \
               UNION ALL SELECT 'route', project, name, version, revision_id, source FROM routes) r \
         JOIN revisions v ON v.id = r.revision_id",
    )
    .fetch_all(pool)
    .await.map_err(db("listing the stored resources"))?;
    let mut stored: Vec<Stored> = rows
        .into_iter()
        .filter_map(|row| {
            let kind = Kind::ALL.into_iter().find(|k| k.slug() == row.kind)?;
            Some(Stored {
                address: Address::new(kind, &row.project, &row.name),
                version: row.version,
                revision: row.revision_id,
                source: row.source,
                commit: row.commit_id,
            })
        })
        .collect();
    stored.sort_by(|a, b| a.address.cmp(&b.address));
    Ok(stored)
}
