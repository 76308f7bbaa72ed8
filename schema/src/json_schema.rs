//! The JSON Schema of one manifest document, for editors (yaml-language-server) and tools.
//!
//! Field schemas come from the same raw types the loader parses, so the two cannot drift
//! apart; the document envelope (`oneOf` over kinds, `apiVersion`/`kind` constants and the
//! metadata rules) is written here because it depends on the kind.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Value, json};

use crate::manifest::{API_VERSION, ProjectSpec, RouteSpec, ServiceSpec, VariableGroupSpec};
use crate::model::Kind;

const NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// The schema as a JSON value (draft-07, which every yaml-language-server release reads).
pub fn document_schema() -> Value {
    let mut generator = SchemaGenerator::new(SchemaSettings::draft07());
    let one_of: Vec<Value> = Kind::ALL
        .into_iter()
        .map(|kind| kind_schema(kind, &mut generator))
        .collect();
    let definitions: serde_json::Map<String, Value> =
        generator.take_definitions(true).into_iter().collect();
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": "https://meshploy.dev/schemas/v1/manifest.json",
        "title": "Meshploy manifest",
        "description": "One Meshploy manifest document: a Project, Service, Route or VariableGroup.",
        "oneOf": one_of,
        "definitions": definitions,
    })
}

fn kind_schema(kind: Kind, generator: &mut SchemaGenerator) -> Value {
    let name = json!({
        "type": "string",
        "pattern": NAME_PATTERN,
        "maxLength": 63,
        "description": "A DNS-1123 label: lowercase letters, digits and `-`, at most 63 characters.",
    });
    let protect = json!({
        "type": "boolean",
        "description": "When true, plans refuse to destroy the resource, even after its document is deleted.",
    });
    let metadata = if kind == Kind::Project {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["name"],
            "properties": { "name": name, "protect": protect },
        })
    } else {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["name", "project"],
            "properties": {
                "name": name,
                "project": { "$ref": "#/definitions/ProjectName" },
                "protect": protect,
            },
        })
    };
    generator.definitions_mut().insert(
        "ProjectName".to_owned(),
        json!({
            "type": "string",
            "pattern": NAME_PATTERN,
            "maxLength": 63,
            "description": "Name of the project the resource belongs to.",
        }),
    );
    let spec = match kind {
        Kind::Project => subschema::<ProjectSpec>(generator),
        Kind::Service => subschema::<ServiceSpec>(generator),
        Kind::Route => subschema::<RouteSpec>(generator),
        Kind::VariableGroup => subschema::<VariableGroupSpec>(generator),
    };
    let mut required = vec!["apiVersion", "kind", "metadata"];
    if matches!(kind, Kind::Service | Kind::Route) {
        required.push("spec");
    }
    json!({
        "title": kind.name(),
        "type": "object",
        "additionalProperties": false,
        "required": required,
        "properties": {
            "apiVersion": { "const": API_VERSION },
            "kind": { "const": kind.name() },
            "metadata": metadata,
            "spec": spec,
        },
    })
}

fn subschema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Value {
    let schema: Schema = generator.subschema_for::<T>();
    schema.to_value()
}
