//! `diff(desired, actual)`: the one function that decides what a plan does.

use std::collections::BTreeSet;

use super::flatten::forces_replacement;
use super::{Action, Change, Entry, FieldChange, Plan, State};

/// Compares desired with actual state. Resources only in `desired` are created, only in
/// `actual` deleted, in both and different updated (or replaced when a field cannot change
/// in place). Equal resources produce no change. The result is sorted by address.
pub fn diff(desired: &State, actual: &State) -> Plan {
    let addresses: BTreeSet<_> = desired.keys().chain(actual.keys()).collect();
    let changes = addresses
        .into_iter()
        .filter_map(|address| {
            let change = match (desired.get(address), actual.get(address)) {
                (Some(want), None) => Change {
                    address: address.clone(),
                    action: Action::Create,
                    fields: field_changes(&Entry::default(), want),
                    protect: want.protect,
                    version: None,
                },
                (None, Some(have)) => Change {
                    address: address.clone(),
                    action: Action::Delete,
                    fields: field_changes(have, &Entry::default()),
                    protect: have.protect,
                    version: have.version,
                },
                (Some(want), Some(have)) => {
                    // Only an update can turn into a replacement: it is the one case with a
                    // value on both sides of a field's removal or addition.
                    let mut fields: Vec<FieldChange> = field_changes(have, want)
                        .into_iter()
                        .map(|f| FieldChange {
                            forces_replacement: forces_replacement(
                                &f.path,
                                f.before.as_ref(),
                                f.after.as_ref(),
                            ),
                            ..f
                        })
                        .collect();
                    if have.protect != want.protect {
                        fields.push(FieldChange {
                            path: "protect".into(),
                            before: Some(super::Value::Bool(have.protect)),
                            after: Some(super::Value::Bool(want.protect)),
                            forces_replacement: false,
                        });
                    }
                    if fields.is_empty() {
                        return None;
                    }
                    let replace = fields.iter().any(|f| f.forces_replacement);
                    Change {
                        address: address.clone(),
                        action: if replace {
                            Action::Replace
                        } else {
                            Action::Update
                        },
                        fields,
                        protect: want.protect,
                        version: have.version,
                    }
                }
                (None, None) => return None,
            };
            Some(change)
        })
        .collect();
    Plan {
        changes,
        adoption: None,
    }
}

/// The fields that differ between `before` and `after`, sorted by path; none forces a
/// replacement (the caller decides that for updates).
fn field_changes(before: &Entry, after: &Entry) -> Vec<FieldChange> {
    let paths: BTreeSet<&String> = before.fields.keys().chain(after.fields.keys()).collect();
    paths
        .into_iter()
        .filter_map(|path| {
            let (old, new) = (before.fields.get(path), after.fields.get(path));
            (old != new).then(|| FieldChange {
                path: path.clone(),
                forces_replacement: false,
                before: old.cloned(),
                after: new.cloned(),
            })
        })
        .collect()
}
