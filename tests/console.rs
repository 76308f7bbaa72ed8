//! The console's pages through `api::app` with `oneshot`: logging in and out with a token,
//! what each page shows, its refusals as pages, and its headers. The walk in a real browser
//! is in `browser.rs`.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::api::{Seeded, app, seeded};

/// An answer: status, headers and body text.
struct Page {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Page {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

async fn fetch(
    app: &axum::Router,
    method: &str,
    uri: &str,
    cookie: Option<&str>,
    form: &str,
) -> Page {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    if !form.is_empty() {
        request = request.header("content-type", "application/x-www-form-urlencoded");
    }
    let request = request.body(Body::from(form.to_owned())).expect("request");
    let response = app.clone().oneshot(request).await.expect("a response");
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Page {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// Logs in with `token` and returns the session cookie as the browser sends it back.
async fn log_in(app: &axum::Router, token: &str) -> String {
    let answer = fetch(app, "POST", "/login", None, &format!("token={token}")).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    assert_eq!(answer.header("location"), "/");
    let cookie = answer.header("set-cookie").to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
    }
    assert!(!cookie.contains(token), "the cookie is not the token");
    cookie.split(';').next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_token_logs_in_to_a_session_that_logging_out_or_revoking_ends() {
    let Seeded { db, dir, read, .. } = seeded(2);
    let app = app(&db, false).await;

    // Without a session every page sends you to the login form.
    for uri in [
        "/",
        "/projects/shop",
        "/services/shop/s0",
        "/revisions",
        "/revisions/1",
    ] {
        let answer = fetch(&app, "GET", uri, None, "").await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{uri}");
        assert_eq!(answer.header("location"), "/login", "{uri}");
    }
    let form = fetch(&app, "GET", "/login", None, "").await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.body.contains("name=\"token\""), "{}", form.body);
    assert!(form.body.contains("type=\"password\""));

    // Wrong tokens are refused on the form, which never repeats them.
    for wrong in [format!("{read}x"), "mp_nothing".to_owned(), String::new()] {
        let answer = fetch(&app, "POST", "/login", None, &format!("token={wrong}")).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{wrong}");
        assert!(answer.body.contains("not a valid token"), "{}", answer.body);
        assert!(answer.header("set-cookie").is_empty());
        if !wrong.is_empty() {
            assert!(!answer.body.contains(&wrong), "the form echoed the token");
        }
    }
    let garbled = fetch(&app, "POST", "/login", None, "nothing=here").await;
    assert_eq!(garbled.status, StatusCode::BAD_REQUEST);
    assert!(garbled.body.contains("Paste an API token"));
    // A forged or stale cookie is no session.
    let forged = fetch(&app, "GET", "/", Some("meshploy_session=abc"), "").await;
    assert_eq!(forged.status, StatusCode::SEE_OTHER);

    let session = log_in(&app, &read).await;
    let overview = fetch(&app, "GET", "/", Some(&session), "").await;
    assert_eq!(overview.status, StatusCode::OK);
    assert!(
        overview.body.contains("href=\"/projects/shop\""),
        "{}",
        overview.body
    );
    assert!(
        overview.body.contains("reader"),
        "the header names the token"
    );
    assert!(!overview.body.contains(&read));

    // Logging out ends the session on the server, not only in the browser.
    let out = fetch(&app, "POST", "/logout", Some(&session), "").await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(out.header("set-cookie").contains("Max-Age=0"));
    let after = fetch(&app, "GET", "/", Some(&session), "").await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);

    // Revoking the token ends every session it opened.
    let session = log_in(&app, &read).await;
    assert_eq!(
        fetch(&app, "GET", "/", Some(&session), "").await.status,
        StatusCode::OK
    );
    let revoked = db.meshploy(&dir, &["token", "revoke", "reader"]);
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    let after = fetch(&app, "GET", "/", Some(&session), "").await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
    assert_eq!(db.psql("SELECT count(*) FROM console_sessions"), "0");
}

#[tokio::test]
async fn anonymous_read_needs_no_login_and_pages_carry_a_strict_policy() {
    let Seeded { db, .. } = seeded(1);
    let app = app(&db, true).await;
    let overview = fetch(&app, "GET", "/", None, "").await;
    assert_eq!(overview.status, StatusCode::OK);
    assert!(overview.body.contains("anonymous"));
    assert!(!overview.body.contains("Log out"), "nothing to log out of");
    let policy = overview.header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(directive), "{policy}");
    }
    assert_eq!(overview.header("x-content-type-options"), "nosniff");
    assert_eq!(overview.header("cache-control"), "no-store");
    let login = fetch(&app, "GET", "/login", None, "").await;
    assert!(login.body.contains("--anonymous-read"), "{}", login.body);
    for (uri, kind) in [
        ("/static/console.css", "text/css"),
        ("/static/console.js", "text/javascript"),
    ] {
        let asset = fetch(&app, "GET", uri, None, "").await;
        assert_eq!(asset.status, StatusCode::OK, "{uri}");
        assert!(asset.header("content-type").starts_with(kind), "{uri}");
    }
}

#[tokio::test]
async fn unknown_things_and_bad_queries_answer_as_pages_that_say_what_is_wrong() {
    let Seeded { db, .. } = seeded(1);
    let app = app(&db, true).await;
    for (uri, status, says) in [
        (
            "/projects/blog",
            StatusCode::NOT_FOUND,
            "no project blog is applied",
        ),
        (
            "/services/shop/nope",
            StatusCode::NOT_FOUND,
            "no service shop/nope is applied",
        ),
        ("/revisions/99", StatusCode::NOT_FOUND, "no revision 99"),
        (
            "/revisions/x1",
            StatusCode::BAD_REQUEST,
            "`x1` is not a revision number",
        ),
        (
            "/revisions/1?page=9",
            StatusCode::BAD_REQUEST,
            "page must be a number from 1 to 1",
        ),
        (
            "/revisions/1?page=zero",
            StatusCode::BAD_REQUEST,
            "not `zero`",
        ),
        (
            "/sources/nope",
            StatusCode::NOT_FOUND,
            "no source named `nope`",
        ),
        (
            "/?cursor=zz",
            StatusCode::BAD_REQUEST,
            "the cursor is not one this API gave",
        ),
        (
            "/revisions?cursor=6",
            StatusCode::BAD_REQUEST,
            "the cursor is not one this API gave",
        ),
        (
            "/projects/shop?routes=%00",
            StatusCode::BAD_REQUEST,
            "the cursor is not one",
        ),
    ] {
        let page = fetch(&app, "GET", uri, None, "").await;
        assert_eq!(page.status, status, "{uri}: {}", page.body);
        assert!(
            page.header("content-type").starts_with("text/html"),
            "{uri}"
        );
        assert!(
            page.body.contains(&says.replace('`', "&#96;")) || page.body.contains(says),
            "{uri}: {}",
            page.body
        );
        assert!(page.body.contains("href=\"/\""), "{uri}: a way back");
    }
}

#[tokio::test]
async fn pages_list_what_is_applied_and_page_long_lists_and_plans() {
    // 120 services: the project page shows 50 and links to the next 50; the first revision's
    // plan (122 changes) is shown a hundred changes at a time.
    let Seeded { db, .. } = seeded(120);
    let app = app(&db, true).await;
    let project = fetch(&app, "GET", "/projects/shop", None, "").await;
    assert_eq!(project.status, StatusCode::OK);
    assert_eq!(project.body.matches("href=\"/services/shop/").count(), 50);
    assert!(
        project.body.contains("<code>shop.example.com/</code>"),
        "the route's host and path"
    );
    assert!(
        project.body.contains("service s0:8080"),
        "the route's target"
    );
    let next = project
        .body
        .split("href=\"?cursor=")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a link to the next services");
    let second = fetch(
        &app,
        "GET",
        &format!("/projects/shop?cursor={next}"),
        None,
        "",
    )
    .await;
    assert_eq!(second.body.matches("href=\"/services/shop/").count(), 50);
    assert!(!second.body.contains("href=\"/services/shop/s0\""));

    let service = fetch(&app, "GET", "/services/shop/s0", None, "").await;
    assert!(
        service.body.contains("registry.example.com/s0:1"),
        "the applied image"
    );
    assert!(service.body.contains("not deployed"), "{}", service.body);

    let revisions = fetch(&app, "GET", "/revisions", None, "").await;
    assert!(revisions.body.contains("+122"), "{}", revisions.body);
    let first = fetch(&app, "GET", "/revisions/1", None, "").await;
    assert!(
        first
            .body
            .contains("Plan: 122 to add, 0 to change, 0 to destroy.")
    );
    assert!(
        first.body.contains("Changes 1–100 of 122"),
        "{}",
        first.body
    );
    assert!(
        first
            .body
            .contains("<span class=\"add\">  + project/shop {")
    );
    let last = fetch(&app, "GET", "/revisions/1?page=2", None, "").await;
    assert!(last.body.contains("Changes 101–122 of 122"));
    assert!(last.body.contains("href=\"?page=1\""));
    for page in [&project, &second, &service, &revisions, &first, &last] {
        assert!(page.body.len() < 200_000, "{} bytes", page.body.len());
    }
}

#[tokio::test]
async fn a_multi_line_failure_keeps_its_lines_and_the_log_marks_each_deployment() {
    let Seeded { db, .. } = seeded(1);
    db.psql(
        "INSERT INTO sources (name, url, branch, path, policy, state, message) \
         VALUES ('shop', '/srv/shop.git', 'main', '', 'auto', 'failed', \
         E'the manifests are invalid (2 problems); nothing was applied:\\ndeploy/a.yaml:9:3: unknown field replica\\ndeploy/b.yaml:7:9: port 99999 is out of range')",
    );
    for (id, line) in [(1, "from the first"), (2, "from the second")] {
        db.psql(&format!(
            "INSERT INTO deployments (id, project, service, release_digest, release, trigger, state) \
             VALUES ({id}, 'shop', 's0', repeat('a', 64), '{{}}'::jsonb, 'revision', 'superseded'); \
             INSERT INTO log_lines (deployment_id, replica, line) VALUES ({id}, 0, '{line}')"
        ));
    }
    let app = app(&db, true).await;
    let overview = fetch(&app, "GET", "/", None, "").await;
    assert!(
        overview.body.contains(
            "<pre>the manifests are invalid (2 problems); nothing was applied:\n\
             deploy/a.yaml:9:3: unknown field replica\n\
             deploy/b.yaml:7:9: port 99999 is out of range</pre>"
        ),
        "{}",
        overview.body
    );
    let service = fetch(&app, "GET", "/services/shop/s0", None, "").await;
    let log = service
        .body
        .split("id=\"logs\"")
        .nth(1)
        .and_then(|rest| rest.split("</pre>").next())
        .unwrap_or_else(|| panic!("{}", service.body));
    let lines: Vec<&str> = log
        .split("<span>")
        .skip(1)
        .map(|l| l.trim_end_matches("</span>").trim_end())
        .collect();
    assert_eq!(
        lines,
        [
            "[meshploy] deployment 1:",
            "[replica 0] from the first",
            "[meshploy] deployment 2:",
            "[replica 0] from the second"
        ],
        "{log}"
    );
    assert!(
        log.contains("data-deployment=\"2\""),
        "where the live lines go on: {log}"
    );
}
