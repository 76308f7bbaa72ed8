//! The API's read endpoints, tokens and rollback, through `api::app` with `oneshot` on a real
//! database that the `meshploy` binary applied and made tokens in.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use crate::fixtures::{PROJECT, route, service};
use crate::util::{Db, Dir};

/// `shop` with services `s0`..`s{n-1}` and a route, applied; a `read` and an `operate`
/// token made with the CLI.
pub struct Seeded {
    pub db: Db,
    pub dir: Dir,
    pub read: String,
    pub operate: String,
}

pub fn seeded(services: usize) -> Seeded {
    let (db, dir) = (Db::new(), Dir::new());
    dir.write("project.yaml", PROJECT);
    for i in 0..services {
        dir.write(&format!("s{i}.yaml"), service(&format!("s{i}"), 1));
    }
    dir.write("route.yaml", route("main", "/", "s0"));
    let applied = db.meshploy(&dir, &["apply", "--auto-approve"]);
    assert_eq!(applied.code, 0, "{}", applied.stderr);
    let read = token(&db, &dir, "reader", "read");
    let operate = token(&db, &dir, "operator", "operate");
    Seeded {
        db,
        dir,
        read,
        operate,
    }
}

/// A new token made with the CLI.
pub fn token(db: &Db, dir: &Dir, name: &str, scope: &str) -> String {
    let made = db.meshploy(dir, &["token", "create", "--name", name, "--scope", scope]);
    assert_eq!(made.code, 0, "{}", made.stderr);
    made.stdout.trim().to_owned()
}

pub async fn app(db: &Db, anonymous_read: bool) -> axum::Router {
    let pool = sqlx::PgPool::connect(&db.url()).await.expect("connect");
    api::app(api::AppState {
        pool,
        sources: Arc::new(Vec::new()),
        webhook_secret: None,
        api_token_sha256: None,
        leading: Arc::new(AtomicBool::new(true)),
        anonymous_read,
        hosts: api::Hosts::default(),
    })
}

/// One request: the status, the ETag if any, and the body as JSON (`null` when empty).
async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, Option<String>, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Body::from(body.to_owned())).expect("request");
    let response = app.clone().oneshot(request).await.expect("a response");
    let status = response.status();
    let etag = response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, etag, json)
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn tokens_are_required_checked_scoped_and_revocable() {
    let seeded = seeded(1);
    let app = app(&seeded.db, false).await;
    let (status, _, body) = call(&app, "GET", "/api/v1/services", None, &[], "").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("meshploy token create")
    );
    let wrong = format!("{}x", seeded.read);
    for token in [wrong.as_str(), "", "mp_"] {
        let (status, _, body) = call(&app, "GET", "/api/v1/services", Some(token), &[], "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token}: {body}");
    }
    let (status, _, body) =
        call(&app, "GET", "/api/v1/services", Some(&seeded.read), &[], "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["items"][0]["name"], "s0");
    // A read token cannot write.
    for (uri, body) in [
        ("/api/v1/services/shop/s0/rollback", ""),
        ("/api/v1/sources/shop/sync", ""),
    ] {
        let (status, _, answer) = call(&app, "POST", uri, Some(&seeded.read), &[], body).await;
        assert_eq!(
            (status, error_code(&answer)),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{uri}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("`reader` has scope read")
        );
    }
    // A token made while the API runs is accepted at once.
    let late = token(&seeded.db, &seeded.dir, "late", "read");
    let (status, _, _) = call(&app, "GET", "/api/v1/services", Some(&late), &[], "").await;
    assert_eq!(status, StatusCode::OK);
    // The list shows names and scopes, never a token or its digest.
    let listed = seeded
        .db
        .meshploy(&seeded.dir, &["token", "list", "--format", "json"]);
    assert!(listed.stdout.contains("\"reader\"") && listed.stdout.contains("\"operate\""));
    assert!(!listed.stdout.contains(&seeded.read) && !listed.stdout.contains("sha256"));
    // A token's use is recorded (at most once a minute, so requests need not write).
    let used: Vec<(String, bool)> = listed
        .json()
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["name"].as_str().unwrap_or_default().to_owned(),
                t["last_used_at"].is_string(),
            )
        })
        .collect();
    assert_eq!(
        used,
        [
            ("late".to_owned(), true),
            ("operator".to_owned(), false),
            ("reader".to_owned(), true)
        ]
    );
    let revoked = seeded
        .db
        .meshploy(&seeded.dir, &["token", "revoke", "reader"]);
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    // Each API process keeps the tokens in memory and is told of the revoke through
    // PostgreSQL: the token is refused within moments.
    let revoked_at = std::time::Instant::now();
    loop {
        let (status, _, _) =
            call(&app, "GET", "/api/v1/services", Some(&seeded.read), &[], "").await;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            revoked_at.elapsed() < std::time::Duration::from_secs(1),
            "a revoked token still answers {status} after {:?}",
            revoked_at.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // The CLI refuses bad input clearly.
    let again = seeded.db.meshploy(
        &seeded.dir,
        &["token", "create", "--name", "operator", "--scope", "read"],
    );
    again.assert_fails_with("a token named `operator` exists already");
    let bad = seeded.db.meshploy(
        &seeded.dir,
        &["token", "create", "--name", "a b", "--scope", "read"],
    );
    bad.assert_fails_with("`a b` is not a token name");
    let scope = seeded.db.meshploy(
        &seeded.dir,
        &["token", "create", "--name", "x", "--scope", "root"],
    );
    assert_eq!(scope.code, 2, "a usage error");
    assert!(
        scope
            .stderr
            .contains("unknown TokenScope `root`; expected one of: read, operate, admin"),
        "{}",
        scope.stderr
    );
    let unknown = seeded
        .db
        .meshploy(&seeded.dir, &["token", "revoke", "nobody"]);
    unknown.assert_fails_with("no token is named `nobody`");
    // Anonymous reading is opt-in, and never writes.
    let open = app_with_anonymous(&seeded.db).await;
    let (status, _, _) = call(&open, "GET", "/api/v1/projects", None, &[], "").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(
        &open,
        "POST",
        "/api/v1/services/shop/s0/rollback",
        None,
        &[],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

async fn app_with_anonymous(db: &Db) -> axum::Router {
    app(db, true).await
}

#[tokio::test]
async fn lists_page_with_cursors_and_refuse_bad_queries() {
    let seeded = seeded(7);
    let app = app(&seeded.db, false).await;
    let token = Some(seeded.read.as_str());
    let mut seen = Vec::new();
    let mut uri = "/api/v1/services?limit=3".to_owned();
    loop {
        let (status, _, body) = call(&app, "GET", &uri, token, &[], "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let items = body["items"].as_array().cloned().unwrap_or_default();
        assert!(items.len() <= 3);
        seen.extend(
            items
                .iter()
                .map(|i| i["name"].as_str().unwrap_or_default().to_owned()),
        );
        match body["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/api/v1/services?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ["s0", "s1", "s2", "s3", "s4", "s5", "s6"]);
    let (_, _, body) = call(&app, "GET", "/api/v1/services?project=blog", token, &[], "").await;
    assert_eq!(body["items"], serde_json::json!([]));
    let (_, _, body) = call(&app, "GET", "/api/v1/projects", token, &[], "").await;
    assert_eq!(body["items"][0]["name"], "shop");
    for bad in [
        "/api/v1/services?limit=0",
        "/api/v1/services?limit=501",
        "/api/v1/services?limit=abc",
        "/api/v1/services?cursor=%%%",
        "/api/v1/projects?cursor=not*base64",
        "/api/v1/deployments?cursor=eHl6",
    ] {
        let (status, _, body) = call(&app, "GET", bad, token, &[], "").await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{bad}: {body}"
        );
    }
    let (status, _, body) = call(&app, "GET", "/api/v1/nothing", token, &[], "").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

#[tokio::test]
async fn a_service_has_an_etag_and_unknown_ones_are_404() {
    let seeded = seeded(1);
    let app = app(&seeded.db, false).await;
    let token = Some(seeded.read.as_str());
    let (status, etag, body) = call(&app, "GET", "/api/v1/services/shop/s0", token, &[], "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["spec"]["replicas"], 1);
    assert_eq!(body["deployment"], Value::Null, "nothing deployed yet");
    let etag = etag.expect("an ETag");
    let (status, _, _) = call(
        &app,
        "GET",
        "/api/v1/services/shop/s0",
        token,
        &[("if-none-match", &etag)],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    let (status, _, _) = call(
        &app,
        "GET",
        "/api/v1/services/shop/s0",
        token,
        &[("if-none-match", "\"other\"")],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = call(&app, "GET", "/api/v1/services/shop/nope", token, &[], "").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (_, _, body) = call(&app, "GET", "/api/v1/deployments", token, &[], "").await;
    assert_eq!(body["items"], serde_json::json!([]));
}

#[tokio::test]
async fn a_rollback_needs_a_known_service_and_an_earlier_healthy_release() {
    let seeded = seeded(1);
    let app = app(&seeded.db, false).await;
    let token = Some(seeded.operate.as_str());
    let rollback = "/api/v1/services/shop/s0/rollback";
    let (status, _, body) = call(
        &app,
        "POST",
        "/api/v1/services/shop/nope/rollback",
        token,
        &[],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _, body) = call(&app, "POST", rollback, token, &[], "{\"to\": \"x\"}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, body) = call(&app, "POST", rollback, token, &[], "{\"into\": 1}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, body) = call(&app, "POST", rollback, token, &[], "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no deployment that was healthy")
    );
    let (status, _, body) = call(&app, "POST", rollback, token, &[], "{\"to\": 99}").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn routes_groups_revisions_and_sources_are_read_without_any_secret() {
    const SECRET: &str = "hunter2-never-shown";
    let seeded = seeded(1);
    let keys = crate::secret::keygen("k1");
    let place = ["--project", "shop", "--group", "pay", "--name", "STRIPE"];
    let sealed = crate::secret::encrypt(&keys, &place, SECRET.as_bytes());
    let envelope = sealed.stdout.trim().to_owned();
    seeded.dir.write(
        "pay.yaml",
        format!(
            "apiVersion: meshploy.dev/v1\nkind: VariableGroup\nmetadata:\n  name: pay\n  project: shop\nspec:\n  variables:\n    MODE: live\n  secrets:\n    STRIPE: {envelope}\n"
        ),
    );
    let applied = seeded.db.meshploy_with(
        &seeded.dir,
        &["apply", "--auto-approve"],
        &[("MESHPLOY_SECRET_KEYS", keys.as_str())],
    );
    assert_eq!(applied.code, 0, "{}", applied.stderr);
    let app = app(&seeded.db, false).await;
    let token = Some(seeded.read.as_str());
    let mut bodies = String::new();
    let (_, _, body) = call(&app, "GET", "/api/v1/routes", token, &[], "").await;
    assert_eq!(body["items"][0]["host"], "shop.example.com");
    assert_eq!(body["items"][0]["service"], "s0");
    assert_eq!(body["items"][0]["port"], 8080);
    bodies.push_str(&body.to_string());
    let (_, _, body) = call(&app, "GET", "/api/v1/variable-groups", token, &[], "").await;
    assert_eq!(body["items"][0]["variables"]["MODE"], "live");
    assert_eq!(body["items"][0]["secrets"], serde_json::json!(["STRIPE"]));
    bodies.push_str(&body.to_string());
    let (_, _, body) = call(&app, "GET", "/api/v1/revisions", token, &[], "").await;
    assert_eq!(body["items"][0]["id"], 2, "newest first");
    let (status, etag, body) = call(&app, "GET", "/api/v1/revisions/2", token, &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(etag.is_some());
    assert_eq!(
        body["plan"]["changes"][0]["address"],
        "variablegroup/shop/pay"
    );
    bodies.push_str(&body.to_string());
    for (uri, status) in [
        ("/api/v1/revisions/99", StatusCode::NOT_FOUND),
        ("/api/v1/revisions/abc", StatusCode::BAD_REQUEST),
        ("/api/v1/builds/99", StatusCode::NOT_FOUND),
        ("/api/v1/builds/x", StatusCode::BAD_REQUEST),
        ("/api/v1/sources/nope", StatusCode::NOT_FOUND),
        (
            "/api/v1/deployments/1/logs?cursor=zz",
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (got, _, body) = call(&app, "GET", uri, token, &[], "").await;
        assert_eq!(got, status, "{uri}: {body}");
    }
    let (_, _, body) = call(&app, "GET", "/api/v1/sources", token, &[], "").await;
    assert_eq!(
        body["items"],
        serde_json::json!([]),
        "apply registers no source"
    );
    for secret in [SECRET, &envelope, "meshploy:v1:"] {
        assert!(!bodies.contains(secret), "{secret} leaked: {bodies}");
    }
    let digest: String = seeded.db.psql("SELECT digest FROM secrets");
    assert!(!bodies.contains(&digest), "a digest leaked");
}

#[tokio::test]
async fn logs_stream_as_server_sent_events_and_resume_after_the_last_event() {
    let seeded = seeded(1);
    let db = &seeded.db;
    db.psql(
        "INSERT INTO deployments (id, project, service, release_digest, release, trigger, state) \
         VALUES (1, 'shop', 's0', 'r', '{}', 'revision', 'healthy'); \
         INSERT INTO log_lines (seq, deployment_id, replica, line) VALUES \
         (10, 1, 0, 'first'), (11, 1, 1, 'second')",
    );
    let app = app(db, false).await;
    let token = Some(seeded.read.as_str());
    let (_, _, body) = call(
        &app,
        "GET",
        "/api/v1/deployments/1/logs?limit=1",
        token,
        &[],
        "",
    )
    .await;
    assert_eq!(body["items"][0]["line"], "first");
    let cursor = body["next_cursor"]
        .as_str()
        .expect("another page")
        .to_owned();
    let uri = format!("/api/v1/deployments/1/logs?cursor={cursor}");
    let (_, _, body) = call(&app, "GET", &uri, token, &[], "").await;
    assert_eq!(body["items"][0]["line"], "second");

    let request = Request::builder()
        .uri("/api/v1/deployments/1/logs")
        .header("authorization", format!("Bearer {}", seeded.read))
        .header("accept", "text/event-stream")
        .header("last-event-id", "10")
        .body(Body::empty())
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"]
            .to_str()
            .unwrap_or_default(),
        "text/event-stream"
    );
    let mut body = response.into_body();
    let mut received = String::new();
    let mut next = async |received: &mut String| {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(1), body.frame())
            .await
            .expect("an event within a second")
            .expect("a frame")
            .expect("no error");
        if let Some(data) = frame.data_ref() {
            received.push_str(&String::from_utf8_lossy(data));
        }
    };
    next(&mut received).await;
    assert!(
        received.contains("id: 11") && received.contains("second"),
        "{received}"
    );
    assert!(
        !received.contains("first"),
        "resumed after event 10: {received}"
    );
    db.psql("INSERT INTO log_lines (seq, deployment_id, replica, line) VALUES (12, 1, 0, 'live')");
    while !received.contains("live") {
        next(&mut received).await;
    }
    assert!(received.contains("id: 12"), "{received}");
}

#[tokio::test]
async fn credentials_in_a_source_url_never_reach_an_answer() {
    let seeded = seeded(1);
    let built = |git: &str| {
        format!(
            "apiVersion: meshploy.dev/v1\nkind: Service\nmetadata:\n  name: built\n  project: shop\nspec:\n  source:\n    git: {git}\n"
        )
    };
    // A manifest with credentials in its URL is refused without quoting them...
    seeded.dir.write(
        "built.yaml",
        built("https://bot:tok3n-secret@example.com/a.git"),
    );
    let refused = seeded
        .db
        .meshploy(&seeded.dir, &["apply", "--auto-approve"]);
    refused.assert_fails_with("credentials-in-url");
    assert!(!refused.stderr.contains("tok3n"), "{}", refused.stderr);
    // ...but a service stored before they were refused may still hold them.
    seeded
        .dir
        .write("built.yaml", built("https://example.com/a.git"));
    let applied = seeded
        .db
        .meshploy(&seeded.dir, &["apply", "--auto-approve"]);
    assert_eq!(applied.code, 0, "{}", applied.stderr);
    seeded.db.psql(
        "UPDATE services SET source_git = 'https://bot:tok3n-secret@example.com/a.git', \
         fields = jsonb_set(fields, '{source.git}', '\"https://bot:tok3n-secret@example.com/a.git\"') \
         WHERE name = 'built'",
    );
    let app = app(&seeded.db, false).await;
    let token = Some(seeded.read.as_str());
    let (_, _, list) = call(&app, "GET", "/api/v1/services", token, &[], "").await;
    let (_, _, one) = call(&app, "GET", "/api/v1/services/shop/built", token, &[], "").await;
    assert_eq!(list["items"][0]["git"], "https://***@example.com/a.git");
    assert_eq!(one["spec"]["source.git"], "https://***@example.com/a.git");
    for body in [list, one] {
        assert!(!body.to_string().contains("tok3n"), "{body}");
    }
}

#[test]
fn the_committed_openapi_document_is_current() {
    let run = crate::util::Run::new(crate::util::meshploy().arg("openapi").output());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let committed = std::fs::read_to_string(crate::util::repo_root().join("api/openapi.json"))
        .expect("api/openapi.json");
    assert_eq!(
        run.stdout, committed,
        "api/openapi.json is stale: run `cargo run -- openapi > api/openapi.json`"
    );
}

/// A validator of `document`'s component schema `name`.
fn component(document: &Value, name: &str) -> jsonschema::Validator {
    let schema = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": format!("#/components/schemas/{name}"),
        "components": document["components"],
    });
    jsonschema::validator_for(&schema).expect("a valid schema")
}

#[tokio::test]
async fn every_documented_operation_is_served_and_answers_as_documented() {
    let seeded = seeded(2);
    let app = app(&seeded.db, false).await;
    let (status, _, document) = call(&app, "GET", "/api/v1/openapi.json", None, &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().expect("paths");
    assert_eq!(paths.len(), 18);
    let mut checked = 0;
    for (path, methods) in paths {
        for (method, operation) in methods.as_object().expect("methods") {
            let uri = path
                .replace("{name}", "s0")
                .replace("{project}", "shop")
                .replace("{id}", "1");
            let token = Some(seeded.operate.as_str());
            let (status, _, body) = call(&app, &method.to_uppercase(), &uri, token, &[], "").await;
            assert_ne!(
                body["error"]["message"], "no such endpoint",
                "{method} {path} is documented but not routed"
            );
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            let code = status.as_str().to_owned();
            let documented =
                &operation["responses"][&code]["content"]["application/json"]["schema"];
            assert!(
                !documented.is_null(),
                "{method} {path} answered an undocumented {code}"
            );
            if let Some(reference) = documented["$ref"].as_str() {
                let name = reference.trim_start_matches("#/components/schemas/");
                let validator = component(&document, name);
                let errors: Vec<String> = validator
                    .iter_errors(&body)
                    .map(|e| e.to_string())
                    .collect();
                assert!(
                    errors.is_empty(),
                    "{method} {path} ({code}): {errors:?} in {body}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 17, "{checked} answers checked");
}

#[test]
fn schemathesis_finds_no_server_error_and_every_answer_matches_the_openapi_document() {
    let program = crate::util::python_tool("schemathesis", "schemathesis==4.32.5");
    // The examples and a generated repository, applied, plus a read token.
    let (db, dir) = (Db::new(), Dir::new());
    let shop = crate::util::repo_root().join("examples/shop");
    let applied = db.meshploy(
        &dir,
        &[
            "apply",
            &shop.display().to_string(),
            "--auto-approve",
            "--secret-keys-file",
            &shop.join("example.keys").display().to_string(),
        ],
    );
    assert_eq!(applied.code, 0, "{}", applied.stderr);
    let generated = Dir::new();
    crate::generate::write_repo(generated.path(), 200).expect("generate");
    let applied = db.meshploy(&generated, &["apply", "--auto-approve"]);
    assert_eq!(applied.code, 0, "{}", applied.stderr);
    let read = token(&db, &dir, "schemathesis", "read");

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let (address, stop) = runtime.block_on(async {
        let router = app(&db, false).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(api::serve(
            listener,
            router,
            api::Limits::default(),
            async {
                let _ = stopped.await;
            },
        ));
        (address, stop)
    });
    let output = std::process::Command::new(program)
        .args(["run", &format!("http://{address}/api/v1/openapi.json")])
        .args(["--header", &format!("Authorization: Bearer {read}")])
        .args(["--max-examples", "25", "--seed", "1", "--no-color"])
        .output()
        .expect("run schemathesis");
    let _ = stop.send(());
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{report}"
    );
    assert!(report.contains("Tested: 17"), "{report}");
}
