//! What the pipeline plans and writes: `prepare` flattens the desired state (secrets become
//! keyed digests), `write` turns a checked plan into one batch of rows inside the pipeline's
//! locked transaction, and `reseal` re-seals stored secrets. Nothing here commits or takes a
//! lock: [`crate::pipeline`] does, so an error anywhere leaves the database as it was.

use std::collections::BTreeMap;

use schema::model::Spec;
use schema::{Address, DesiredState, Envelope, Kind};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

use crate::Error;
use crate::error::db;
use crate::plan::{self, Action, Entry, Plan, State, Value};
use crate::secrets::{Digester, Keyring, Place, SecretError};
use crate::store::RevisionMeta;
use crate::store::revisions;
use crate::store::secrets::{self as stored_secrets, SealedSecret};
use crate::store::writes::{
    self as table, GroupRow, Key, ProjectRow, RouteRow, SecretKey, SecretRow, ServiceGroupRow,
    ServiceRow, Writes,
};

/// The desired side of a plan: flattened entries, and the sealed secrets from git (by
/// `project/group/name`) that an apply re-seals for the database.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    pub entries: State,
    pub envelopes: BTreeMap<String, Sealed>,
}

/// A secret as git holds it: the envelope and the project it was sealed for, which is its
/// resource's project except in a pull request's preview (`shop-pr-7` holds `shop`'s).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub project: String,
    pub envelope: Envelope,
}

/// The projects whose secrets were sealed for another project: a preview's copies, by their
/// name, with the name of the project they copy.
pub type Copies = BTreeMap<String, String>;

/// A plan saved by `meshploy plan --out`, applied by `meshploy apply FILE`: the plan and the
/// manifests it was made from (sealed secrets only, never a plaintext). Applying validates
/// those manifests again and recomputes the plan from them against the locked state; any
/// difference from the saved plan refuses the file, so an edited file cannot apply changes
/// it does not show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SavedPlan {
    /// Always [`SavedPlan::FORMAT`].
    pub format: String,
    /// The source that owns what the plan writes, recorded in the revision.
    pub source: String,
    /// The git commit the manifests were read from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The source whose resources the plan adopts, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt_from: Option<String>,
    pub plan: Plan,
    pub files: Vec<SavedFile>,
}

/// One manifest file as the plan was made from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedFile {
    pub path: String,
    pub text: String,
}

impl SavedPlan {
    pub const FORMAT: &str = "meshploy-plan/2";

    /// The saved manifests, ready for `schema::load`.
    pub fn manifest_files(&self) -> Vec<schema::ManifestFile> {
        self.files
            .iter()
            .map(|f| schema::ManifestFile::new(f.path.clone(), f.text.clone().into_bytes()))
            .collect()
    }
}

/// Whether any resource holds a secret (and so keys and a digester are needed).
pub fn has_secrets(state: &DesiredState) -> bool {
    state
        .resources
        .values()
        .any(|r| matches!(&r.spec, Spec::VariableGroup(g) if !g.secrets.is_empty()))
}

/// Flattens the desired state. Each secret is opened (proving the envelope belongs where it
/// sits: its project, or for a copy in `copies` the project copied) and enters the plan only
/// as its keyed digest.
pub fn prepare(
    state: &DesiredState,
    copies: &Copies,
    secrets: Option<(&Keyring, &Digester)>,
) -> Result<Desired, Error> {
    let mut desired = Desired::default();
    for (address, resource) in &state.resources {
        let sealed_for = copies.get(&address.project).unwrap_or(&address.project);
        let entry = plan::flatten(resource, |name, envelope| {
            let (keys, digester) = secrets.ok_or(SecretError::NoKeys)?;
            let place = Place::new(sealed_for, &address.name, name);
            let plaintext = keys
                .open(&place, envelope)
                .map_err(|error| Error::ManifestSecret {
                    file: resource.origin.file.clone(),
                    line: resource.origin.line,
                    name: name.to_owned(),
                    error,
                })?;
            desired.envelopes.insert(
                format!("{}/{}/{name}", address.project, address.name),
                Sealed {
                    project: sealed_for.clone(),
                    envelope: envelope.clone(),
                },
            );
            let stored = Place::stored(&address.project, &address.name, name);
            Ok::<_, Error>(digester.digest(&stored, &plaintext))
        })?;
        desired.entries.insert(address.clone(), entry);
    }
    Ok(desired)
}

/// Flattens the desired state against this database's digest key, which needs keys only
/// when some variable group holds secrets.
pub async fn prepare_for(
    pool: &PgPool,
    state: &DesiredState,
    keys: Option<&Keyring>,
) -> Result<Desired, Error> {
    prepare_copies_for(pool, state, &Copies::new(), keys).await
}

/// [`prepare_for`] with projects that copy others (a pull request's preview).
pub async fn prepare_copies_for(
    pool: &PgPool,
    state: &DesiredState,
    copies: &Copies,
    keys: Option<&Keyring>,
) -> Result<Desired, Error> {
    if !has_secrets(state) {
        return prepare(state, copies, None);
    }
    let keys = keys.ok_or(SecretError::NoKeys)?;
    let digester = digester(pool, keys).await?;
    prepare(state, copies, Some((keys, &digester)))
}

/// The digester of this database, made and stored (sealed) on first use.
pub async fn digester(pool: &PgPool, keys: &Keyring) -> Result<Digester, Error> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(db("connecting for the secret digest key"))?;
    if stored_secrets::digest_key(&mut conn).await?.is_none() {
        let (_, sealed) = Digester::generate(keys);
        stored_secrets::insert_digest_key(&mut conn, &sealed.to_string()).await?;
    }
    let sealed = stored_secrets::digest_key(&mut conn)
        .await?
        .unwrap_or_default();
    let envelope = Envelope::parse(&sealed).map_err(|e| Error::CorruptState {
        address: "the secret digest key".into(),
        detail: e.to_string(),
    })?;
    Ok(Digester::open(keys, &envelope)?)
}

/// Writes `plan` inside the pipeline's locked transaction and records a revision; returns
/// its id. `actual` is the state the plan was checked against in the same transaction.
pub(crate) async fn write(
    conn: &mut PgConnection,
    plan: &Plan,
    desired: &Desired,
    actual: &State,
    keys: Option<&Keyring>,
    meta: &RevisionMeta,
) -> Result<i64, Error> {
    let writes = rows(plan, desired, actual, keys)?;
    let summary = plan.summary();
    let counts = (
        count(summary.add),
        count(summary.change),
        count(summary.destroy),
    );
    // Plans hold strings, numbers and string-keyed maps only, which always serialise.
    let plan_json = serde_json::to_string(plan).expect("a plan serialises to JSON");
    let revision = revisions::insert_revision(conn, meta, counts, &plan_json).await?;
    tracing::debug!(revision, changes = plan.changes.len(), "writing plan");
    table::write(conn, &writes, &meta.source, revision).await?;
    let payload = serde_json::json!({
        "revision": revision,
        "added": summary.add,
        "changed": summary.change,
        "destroyed": summary.destroy,
        "kinds": plan.changes.iter().map(|c| c.address.kind.name()).collect::<std::collections::BTreeSet<_>>(),
    });
    revisions::notify(conn, &payload.to_string()).await?;
    Ok(revision)
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The rows for `plan`. Secrets whose digest is unchanged keep their stored ciphertext;
/// changed ones are opened from git and sealed for their row.
fn rows(
    plan: &Plan,
    desired: &Desired,
    actual: &State,
    keys: Option<&Keyring>,
) -> Result<Writes, Error> {
    let mut writes = Writes::default();
    for change in &plan.changes {
        let address = &change.address;
        let key = Key {
            project: address.project.clone(),
            name: address.name.clone(),
        };
        if change.action == Action::Delete {
            writes.delete.entry(address.kind).or_default().push(key);
            continue;
        }
        let entry = desired
            .entries
            .get(address)
            .ok_or_else(|| Error::CorruptPlan {
                address: address.to_string(),
            })?;
        let fields = fields_json(entry);
        match address.kind {
            Kind::Project => writes.projects.push(ProjectRow {
                name: key.name,
                fields,
                protect: entry.protect,
            }),
            Kind::VariableGroup => {
                writes.groups.push(GroupRow {
                    project: key.project,
                    name: key.name,
                    fields,
                    protect: entry.protect,
                });
                group_secrets(
                    &mut writes,
                    address,
                    entry,
                    desired,
                    actual.get(address),
                    keys,
                )?;
            }
            Kind::Service => {
                if let Some(Value::List(groups)) = entry.fields.get("variableGroups") {
                    for group in groups {
                        writes.service_groups.push(ServiceGroupRow {
                            project: key.project.clone(),
                            service: key.name.clone(),
                            group: group.clone(),
                        });
                    }
                }
                writes.services.push(ServiceRow {
                    project: key.project,
                    name: key.name,
                    image: text(entry, "image"),
                    source_git: text(entry, "source.git"),
                    port: int(entry, "port").unwrap_or_default(),
                    replicas: int(entry, "replicas").unwrap_or_default(),
                    fields,
                    protect: entry.protect,
                });
            }
            Kind::Route => writes.routes.push(RouteRow {
                project: key.project,
                name: key.name,
                host: text(entry, "host").unwrap_or_default(),
                path: text(entry, "path").unwrap_or_default(),
                service: text(entry, "service"),
                service_port: int(entry, "port"),
                upstream: text(entry, "upstream"),
                strip_prefix: entry.fields.get("stripPrefix") == Some(&Value::Bool(true)),
                fields,
                protect: entry.protect,
            }),
        }
    }
    Ok(writes)
}

fn group_secrets(
    writes: &mut Writes,
    address: &Address,
    entry: &Entry,
    desired: &Desired,
    stored: Option<&Entry>,
    keys: Option<&Keyring>,
) -> Result<(), Error> {
    for (path, digest) in &entry.fields {
        let (Some(name), Value::Sensitive(digest)) = (path.strip_prefix("secrets."), digest) else {
            continue;
        };
        let (project, group) = (&address.project, &address.name);
        let secret = SecretKey {
            project: project.clone(),
            group: group.clone(),
            name: name.to_owned(),
        };
        writes.kept_secrets.push(secret.clone());
        if stored.and_then(|s| s.fields.get(path)) == entry.fields.get(path) {
            continue;
        }
        let key = format!("{project}/{group}/{name}");
        let sealed = desired
            .envelopes
            .get(&key)
            .ok_or_else(|| Error::MissingEnvelope { place: key.clone() })?;
        let keys = keys.ok_or(SecretError::NoKeys)?;
        let plaintext = keys.open(&Place::new(&sealed.project, group, name), &sealed.envelope)?;
        let sealed = keys.seal(&Place::stored(project, group, name), &plaintext);
        writes.secrets.push(SecretRow {
            key: secret,
            ciphertext: sealed.to_string(),
            digest: digest.clone(),
        });
    }
    Ok(())
}

/// The stored `fields` column: every field but secrets, as plain JSON.
fn fields_json(entry: &Entry) -> String {
    let object: serde_json::Map<String, serde_json::Value> = entry
        .fields
        .iter()
        .filter(|(_, v)| !matches!(v, Value::Sensitive(_)))
        .map(|(path, value)| (path.clone(), value.to_json()))
        .collect();
    serde_json::Value::Object(object).to_string()
}

fn text(entry: &Entry, path: &str) -> Option<String> {
    match entry.fields.get(path) {
        Some(Value::Text(t)) => Some(t.clone()),
        _ => None,
    }
}

fn int(entry: &Entry, path: &str) -> Option<i32> {
    match entry.fields.get(path) {
        Some(Value::Int(n)) => i32::try_from(*n).ok(),
        _ => None,
    }
}

/// Re-seals every stored secret, and the digest key, under the primary key. Returns how
/// many secrets were re-sealed. Runs in the caller's locked transaction.
pub async fn reseal(conn: &mut PgConnection, keys: &Keyring) -> Result<usize, Error> {
    if let Some(sealed) = stored_secrets::digest_key(conn).await? {
        let place = Place::digest_key();
        let envelope = parse_stored(&sealed, "the secret digest key")?;
        let key = keys.open(&place, &envelope)?;
        stored_secrets::update_digest_key(conn, &keys.seal(&place, &key).to_string()).await?;
    }
    let rows = stored_secrets::sealed_secrets(conn).await?;
    for secret @ SealedSecret {
        project,
        group_name,
        name,
        ciphertext,
    } in &rows
    {
        let place = Place::stored(project, group_name, name);
        let envelope = parse_stored(ciphertext, &format!("secret {place}"))?;
        let plaintext = keys.open(&place, &envelope)?;
        let sealed = keys.seal(&place, &plaintext).to_string();
        stored_secrets::update_secret_ciphertext(conn, secret, &sealed).await?;
    }
    Ok(rows.len())
}

fn parse_stored(text: &str, what: &str) -> Result<Envelope, Error> {
    Envelope::parse(text).map_err(|e| Error::CorruptState {
        address: what.to_owned(),
        detail: e.to_string(),
    })
}
