//! The plan core: desired and actual state as flat fields, their difference as a `Plan`, and
//! the guards that refuse dangerous plans. Pure: values in, values out.
//!
//! Every resource is flattened into fields named as in the manifest (`replicas`,
//! `env.API_URL`, `secrets.STRIPE_API_KEY`), so a change reads like the YAML that caused it.
//! Secret values enter only as keyed digests ([`Value::Sensitive`]); a plan never holds a
//! secret, sealed or not.

mod diff;
mod flatten;
mod guard;
pub mod render;

use std::collections::BTreeMap;

use schema::Address;
use serde::{Deserialize, Serialize};

pub use diff::diff;
pub use flatten::flatten;
pub use guard::{Conflict, Foreign, Guard, Refusal, RouteClaim, Stale, conflicts, stale};

/// One field's value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type", content = "value")]
pub enum Value {
    Text(String),
    Int(i64),
    Bool(bool),
    List(Vec<String>),
    /// A keyed digest of a secret. Two digests are equal exactly when the secrets are, under
    /// the same digest key; the digest reveals nothing else and is never shown.
    Sensitive(String),
}

impl Value {
    /// The plain JSON form: strings, numbers, booleans and arrays of strings. A sensitive
    /// value has none and becomes `null`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as Json;
        match self {
            Value::Text(t) => Json::String(t.clone()),
            Value::Int(n) => Json::from(*n),
            Value::Bool(b) => Json::Bool(*b),
            Value::List(items) => Json::from(items.clone()),
            Value::Sensitive(_) => Json::Null,
        }
    }

    /// The inverse of [`Value::to_json`] for everything but sensitive values.
    pub fn from_json(json: &serde_json::Value) -> Option<Value> {
        use serde_json::Value as Json;
        Some(match json {
            Json::String(t) => Value::Text(t.clone()),
            Json::Number(n) => Value::Int(n.as_i64()?),
            Json::Bool(b) => Value::Bool(*b),
            Json::Array(items) => Value::List(
                items
                    .iter()
                    .map(|i| i.as_str().map(str::to_owned))
                    .collect::<Option<_>>()?,
            ),
            Json::Null | Json::Object(_) => return None,
        })
    }
}

/// A resource as the plan sees it: its fields, whether it is protected, and (for actual
/// state) the version of its stored row, which saved plans use to detect staleness.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub fields: BTreeMap<String, Value>,
    pub protect: bool,
    pub version: Option<i64>,
}

/// Every resource of one side of a diff, by address.
pub type State = BTreeMap<Address, Entry>;

/// What a plan does to one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    Create,
    Update,
    /// Destroy and create again: a change that cannot be made in place.
    Replace,
    Delete,
}

/// One field that differs. `before` is absent for a new field, `after` for a removed one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldChange {
    pub path: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub forces_replacement: bool,
}

/// The change to one resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub address: Address,
    pub action: Action,
    pub fields: Vec<FieldChange>,
    /// The resource's protection after the change (for deletes: as it stands).
    pub protect: bool,
    /// Version of the stored resource the change was planned against; `None` for creates.
    pub version: Option<i64>,
}

/// Counts in Terraform's terms: a replacement is one add and one destroy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub destroy: usize,
}

/// The difference between desired and actual state, one change per address, sorted by
/// address. The same value is rendered by `plan`, saved by `plan --out`, applied by `apply`,
/// posted on pull requests and served by the API.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub changes: Vec<Change>,
    /// Resources another source owns that this plan takes over (`--adopt-from`): they
    /// become the planning source's, changed as `changes` say or kept as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adoption: Option<Adoption>,
}

/// A takeover of every resource of another source, shown before it is applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adoption {
    pub from: String,
    pub resources: Vec<Address>,
}

impl Plan {
    /// Whether applying the plan would change nothing: no change and no adoption.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.adoption.is_none()
    }

    pub fn summary(&self) -> Summary {
        let mut summary = Summary::default();
        for change in &self.changes {
            match change.action {
                Action::Create => summary.add += 1,
                Action::Update => summary.change += 1,
                Action::Replace => {
                    summary.add += 1;
                    summary.destroy += 1;
                }
                Action::Delete => summary.destroy += 1,
            }
        }
        summary
    }

    /// The changes in the order they must be applied: deletes first, children before
    /// parents, then everything else, parents before children.
    pub fn apply_order(&self) -> impl Iterator<Item = &Change> {
        let deletes = self
            .changes
            .iter()
            .rev()
            .filter(|c| c.action == Action::Delete);
        let others = self.changes.iter().filter(|c| c.action != Action::Delete);
        deletes.chain(others)
    }
}

#[cfg(test)]
mod tests;
