//! The VariableGroup kind: plain variables and sealed secrets, shared by services.

use std::collections::BTreeMap;

use crate::diagnostic::{Code, Diagnostic};
use crate::envelope::Envelope;
use crate::manifest::VariableGroupSpec;
use crate::model::{Spec, VariableGroup};
use crate::rules::{self};
use crate::spanned::Loc;

use super::{Doc, Loader};

impl Loader {
    pub(super) fn variable_group(&mut self, doc: &Doc, spec: VariableGroupSpec) -> Option<Spec> {
        let variables = spec.variables.unwrap_or_default();
        let plain_names: BTreeMap<String, Loc> = variables
            .0
            .iter()
            .map(|(name, _)| (name.value.clone(), name.loc))
            .collect();
        let variables = self.variables(doc, variables);
        let mut secrets = BTreeMap::new();
        for (name, value) in spec.secrets.unwrap_or_default().0 {
            if self
                .check(
                    doc,
                    name.loc,
                    Code::InvalidEnvName,
                    rules::env_name(&name.value),
                )
                .is_none()
            {
                continue;
            }
            if let Some(plain_loc) = plain_names.get(&name.value) {
                self.diagnostics.push(
                    Diagnostic::new(
                        doc.file,
                        name.loc.or(doc.fallback),
                        Code::DuplicateVariable,
                        format!("`{}` is both a variable and a secret", name.value),
                    )
                    .with_related(doc.file, *plain_loc, "declared as a variable")
                    .with_hint(Some("keep one of them".into())),
                );
                continue;
            }
            match Envelope::parse(&value.value) {
                Ok(envelope) => {
                    secrets.insert(name.value, envelope);
                }
                Err(e) => self.diagnostics.push(
                    Diagnostic::new(doc.file, value.loc.or(doc.fallback), Code::InvalidSecret, format!("secret `{}`: {e}", name.value))
                        .with_hint(Some(format!("make an envelope with `meshploy secret encrypt --project P --group G --name {}`", name.value)))
                        .redacted(),
                ),
            }
        }
        Some(Spec::VariableGroup(VariableGroup { variables, secrets }))
    }
}
