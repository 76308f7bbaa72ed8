//! This API described in OpenAPI 3.1, served at `/api/v1/openapi.json` and committed as
//! `api/openapi.json` (a test fails when the copy is stale). The schemas are generated from
//! the types the handlers answer with (schemars, JSON Schema 2020-12, which OpenAPI 3.1 uses
//! as it is); the operations are the table below, which a test walks against the router.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::read::{
    DeploymentItem, GroupItem, Page, ProjectItem, RevisionDetail, RollbackAnswer, RollbackRequest,
    RouteItem, ServiceDetail, ServiceItem,
};
use crate::{ErrorBody, Health, SyncAnswer};

/// Where a parameter goes.
#[derive(Clone, Copy, Debug)]
enum In {
    Path,
    Query,
    Header,
}

/// What a parameter holds, and so its schema.
#[derive(Clone, Copy, Debug)]
enum Holds {
    Text,
    Number,
    Limit,
    /// A cursor of a list keyed by names: any hex pairs.
    KeyCursor,
    /// A cursor of a list keyed by numbers: hex pairs of decimal digits.
    NumberCursor,
}

impl Holds {
    fn schema(self) -> Value {
        match self {
            Holds::Text => json!({ "type": "string" }),
            Holds::Number => json!({ "type": "integer", "format": "int64" }),
            Holds::Limit => json!({ "type": "integer", "minimum": 1, "maximum": 500 }),
            Holds::KeyCursor => json!({ "type": "string", "pattern": "^(?:[0-9a-f]{2}){1,300}$" }),
            Holds::NumberCursor => json!({ "type": "string", "pattern": "^(?:3[0-9]){1,18}$" }),
        }
    }
}

/// One operation: method, path, summary, the scope it needs (`None`: no token), its
/// parameters, and the schema of its success answer.
struct Operation {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    scope: Option<&'static str>,
    parameters: &'static [Param],
    status: &'static str,
    answer: Value,
    request: Option<Value>,
}

/// A parameter: where it goes, its name, what it holds, what it means.
type Param = (In, &'static str, Holds, &'static str);

const LIMIT: Param = (
    In::Query,
    "limit",
    Holds::Limit,
    "Items per page (default 50).",
);
const PROJECT: Param = (
    In::Query,
    "project",
    Holds::Text,
    "Only this project's items.",
);
const KEYED: &[Param] = &[
    LIMIT,
    (
        In::Query,
        "cursor",
        Holds::KeyCursor,
        "The `next_cursor` of the page before.",
    ),
    PROJECT,
];
const NUMBER_CURSOR: Param = (
    In::Query,
    "cursor",
    Holds::NumberCursor,
    "The `next_cursor` of the page before.",
);
const NUMBERED: &[Param] = &[LIMIT, NUMBER_CURSOR];
const DEPLOYMENTS: &[Param] = &[
    LIMIT,
    NUMBER_CURSOR,
    PROJECT,
    (
        In::Query,
        "service",
        Holds::Text,
        "Only this service's deployments.",
    ),
];
const LOGS: &[Param] = &[
    (In::Path, "id", Holds::Number, "The number."),
    LIMIT,
    NUMBER_CURSOR,
    (
        In::Header,
        "Last-Event-ID",
        Holds::Number,
        "With `Accept: text/event-stream`: resume after this line.",
    ),
];
const TAGGED: Param = (
    In::Header,
    "If-None-Match",
    Holds::Text,
    "An `ETag` from before: 304 when unchanged.",
);

fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Value {
    generator.subschema_for::<T>().to_value()
}

fn operations(g: &mut SchemaGenerator) -> Vec<Operation> {
    let op = |method, path, summary, scope, parameters, answer| Operation {
        method,
        path,
        summary,
        scope,
        parameters,
        status: "200",
        answer,
        request: None,
    };
    let one = |name| -> &'static [Param] {
        match name {
            "name" => &[(In::Path, "name", Holds::Text, "The source's name.")],
            _ => &[(In::Path, "id", Holds::Number, "The number.")],
        }
    };
    let service: &'static [Param] = &[
        (In::Path, "project", Holds::Text, "The service's project."),
        (In::Path, "name", Holds::Text, "The service's name."),
    ];
    vec![
        op(
            "get",
            "/healthz",
            "Whether the process runs, and its role.",
            None,
            &[],
            schema::<Health>(g),
        ),
        op(
            "get",
            "/readyz",
            "Whether the database answers.",
            None,
            &[],
            schema::<Health>(g),
        ),
        op(
            "get",
            "/api/v1/openapi.json",
            "This document.",
            None,
            &[],
            json!({"type": "object"}),
        ),
        op(
            "get",
            "/api/v1/sources",
            "Sources: state, commits, the last attempt.",
            Some("read"),
            KEYED,
            schema::<Page<reconciler::store::SourceStatus>>(g),
        ),
        op(
            "get",
            "/api/v1/sources/{name}",
            "One source.",
            Some("read"),
            one("name"),
            schema::<reconciler::store::SourceStatus>(g),
        ),
        op(
            "get",
            "/api/v1/projects",
            "Projects.",
            Some("read"),
            KEYED,
            schema::<Page<ProjectItem>>(g),
        ),
        op(
            "get",
            "/api/v1/services",
            "Services and what runs.",
            Some("read"),
            KEYED,
            schema::<Page<ServiceItem>>(g),
        ),
        op(
            "get",
            "/api/v1/services/{project}/{name}",
            "One service with its applied fields.",
            Some("read"),
            service,
            schema::<ServiceDetail>(g),
        ),
        op(
            "get",
            "/api/v1/routes",
            "Routes: host + path to target.",
            Some("read"),
            KEYED,
            schema::<Page<RouteItem>>(g),
        ),
        op(
            "get",
            "/api/v1/variable-groups",
            "Variable groups: variables, and secret names only.",
            Some("read"),
            KEYED,
            schema::<Page<GroupItem>>(g),
        ),
        op(
            "get",
            "/api/v1/revisions",
            "Revisions, newest first.",
            Some("read"),
            NUMBERED,
            schema::<Page<reconciler::store::Revision>>(g),
        ),
        op(
            "get",
            "/api/v1/revisions/{id}",
            "One revision and its plan.",
            Some("read"),
            one("id"),
            schema::<RevisionDetail>(g),
        ),
        op(
            "get",
            "/api/v1/deployments",
            "Deployments, newest first.",
            Some("read"),
            DEPLOYMENTS,
            schema::<Page<DeploymentItem>>(g),
        ),
        op(
            "get",
            "/api/v1/deployments/{id}/logs",
            "A deployment's captured lines, or their live stream.",
            Some("read"),
            LOGS,
            schema::<Page<builder::logs::LogLine>>(g),
        ),
        op(
            "get",
            "/api/v1/builds/{id}",
            "One build.",
            Some("read"),
            one("id"),
            schema::<builder::store::Build>(g),
        ),
        op(
            "get",
            "/api/v1/builds/{id}/logs",
            "A build's captured lines, or their live stream.",
            Some("read"),
            LOGS,
            schema::<Page<builder::logs::LogLine>>(g),
        ),
        Operation {
            status: "202",
            ..op(
                "post",
                "/api/v1/sources/{name}/sync",
                "Ask for a sync now.",
                Some("operate"),
                one("name"),
                schema::<SyncAnswer>(g),
            )
        },
        Operation {
            status: "202",
            request: Some(schema::<RollbackRequest>(g)),
            ..op(
                "post",
                "/api/v1/services/{project}/{name}/rollback",
                "Pin the service to an earlier healthy release.",
                Some("operate"),
                service,
                schema::<RollbackAnswer>(g),
            )
        },
    ]
}

/// The document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .into_generator();
    let error = schema::<ErrorBody>(&mut generator);
    let mut paths = Map::new();
    for operation in operations(&mut generator) {
        let tagged = operation.method == "get"
            && (operation.path.ends_with("}") || operation.path.ends_with("{name}"));
        let parameters: Vec<Value> = operation
            .parameters
            .iter()
            .chain(tagged.then_some(&TAGGED))
            .map(|(place, name, holds, description)| {
                let (place, required) = match place {
                    In::Path => ("path", true),
                    In::Query => ("query", false),
                    In::Header => ("header", false),
                };
                json!({ "name": name, "in": place, "required": required,
                        "description": description, "schema": holds.schema() })
            })
            .collect();
        let mut responses = Map::new();
        let mut content = json!({ "application/json": { "schema": operation.answer } });
        if operation.path.ends_with("/logs") {
            content["text/event-stream"] = json!({ "schema": { "type": "string" } });
        }
        responses.insert(
            operation.status.into(),
            json!({ "description": operation.summary, "content": content }),
        );
        if tagged {
            responses.insert(
                "304".into(),
                json!({ "description": "Unchanged since the ETag given in If-None-Match." }),
            );
        }
        let failures: &[(&str, &str)] = match operation.scope {
            None => &[("503", "The database is unavailable.")],
            Some(_) => &[
                ("400", "A bad parameter or body."),
                ("401", "No token, or not a valid one."),
                (
                    "403",
                    "The token's scope is too small, or a browser posted from another site.",
                ),
                ("404", "No such object."),
                (
                    "421",
                    "A host name this server does not answer to (see --allow-host).",
                ),
                ("503", "The database is unavailable."),
            ],
        };
        let streams: &[(&str, &str)] = if operation.path.ends_with("/logs") {
            &[(
                "429",
                "Too many log streams are open, in all or for this token.",
            )]
        } else {
            &[]
        };
        for (status, description) in failures.iter().chain(streams) {
            responses.insert(
                (*status).into(),
                json!({ "description": description,
                        "content": { "application/json": { "schema": error } } }),
            );
        }
        let mut value = json!({
            "summary": operation.summary,
            "operationId": format!("{} {}", operation.method, operation.path),
            "parameters": parameters,
            "responses": responses,
        });
        if let Some(scope) = operation.scope {
            value["security"] = json!([{ "bearer": [] }]);
            value["x-meshploy-scope"] = scope.into();
        }
        if let Some(request) = operation.request {
            value["requestBody"] = json!({ "required": false,
                "content": { "application/json": { "schema": request } } });
        }
        let path = paths.entry(operation.path).or_insert_with(|| json!({}));
        path[operation.method] = value;
    }
    let schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Meshploy API",
            "version": "1",
            "description": "Read what is declared, what runs and what changed; sync a source and roll a service back. Git is the way to change everything else."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer",
                "description": "A token from `meshploy token create`." } }
        }
    })
}
