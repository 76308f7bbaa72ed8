//! The console in a real headless Chromium (Debian's, driven through ChromeDriver with
//! fantoccini), against `meshploy serve` running real services with the local runtime: a
//! healthy service holding a sealed canary secret, a service whose release fails its health
//! check, and a source whose manifests do not validate. Screenshots of every page go to
//! `target/console-screenshots/`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::fixtures::Process;
use crate::runtime::{Up, app_repo, get};
use crate::secret::{encrypt, keygen};
use crate::util::{Db, Dir, Remote, chromedriver, closed_port, http, repo_root, wait_for};

/// A secret's plaintext that must appear in no page and no API answer.
const CANARY: &str = "canary-7e1f0c93b2a4-never-shown";

/// Project `shop`: service `web` (the app, holding the canary as `TOKEN`), service `broken`
/// (the same app, whose health check answers 503), and a route to `web`.
fn shop_manifests(app: &std::path::Path, sealed: &str) -> String {
    let service = |name: &str, extra: &str| {
        format!(
            "apiVersion: meshploy.dev/v1\nkind: Service\nmetadata:\n  name: {name}\n  project: shop\nspec:\n  \
             source:\n    git: {}\n    ref: main\n    path: app\n  build:\n    strategy: command\n    command: \"true\"\n  \
             command: python3 server.py\n  replicas: 1\n  variableGroups: [creds]\n{extra}",
            app.display()
        )
    };
    [
        "apiVersion: meshploy.dev/v1\nkind: Project\nmetadata:\n  name: shop\nspec:\n  description: The shop\n".to_owned(),
        format!(
            "apiVersion: meshploy.dev/v1\nkind: VariableGroup\nmetadata:\n  name: creds\n  project: shop\nspec:\n  \
             variables:\n    REGION: eu\n  secrets:\n    TOKEN: {sealed}\n"
        ),
        service("web", "  env:\n    MESSAGE: hello\n"),
        service(
            "broken",
            "  env:\n    HEALTH_STATUS: \"503\"\n  healthCheck:\n    path: /healthz\n    periodSeconds: 1\n    failureThreshold: 2\n",
        ),
        "apiVersion: meshploy.dev/v1\nkind: Route\nmetadata:\n  name: web\n  project: shop\nspec:\n  host: web.test\n  service: web\n".to_owned(),
    ]
    .join("---\n")
}

/// ChromeDriver on a free port, and a session of headless Chromium through it, with the
/// flags this machine's closed network needs.
struct Browser {
    client: Client,
    _driver: Process,
    _profile: tempfile::TempDir,
}

async fn open_browser(javascript: bool) -> Browser {
    let port = closed_port();
    let driver = Process::spawn_group(
        std::process::Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null()),
    );
    wait_for(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .expect("chromedriver listens");
    let profile = tempfile::tempdir().expect("a profile directory");
    let mut options = json!({
        "binary": "/usr/bin/chromium",
        "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--window-size=1280,900",
            format!("--user-data-dir={}", profile.path().display()),
        ],
    });
    if !javascript {
        options["prefs"] = json!({"profile.managed_default_content_settings.javascript": 2});
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".into(), options);
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session");
    Browser {
        client,
        _driver: driver,
        _profile: profile,
    }
}

/// Everything the test fetched, to grep for the canary at the end.
#[derive(Default)]
struct Seen(Vec<(String, String)>);

impl Seen {
    /// The current page's HTML, kept; and its screenshot saved as `name`.
    async fn page(&mut self, client: &Client, name: &str) -> String {
        let html = client.source().await.expect("the page's source");
        let png = client.screenshot().await.expect("a screenshot");
        let dir = screenshots();
        std::fs::create_dir_all(&dir).expect("the screenshot directory");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("save the screenshot");
        self.0.push((name.to_owned(), html.clone()));
        html
    }
}

fn screenshots() -> PathBuf {
    repo_root().join("target/console-screenshots")
}

async fn click(client: &Client, css: &str) {
    let at = path(client).await;
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no `{css}` on {at}: {e}"))
        .click()
        .await
        .expect("click");
}

/// Whether the text of `css` on the page comes to contain `wanted` within `within`, looked
/// at every 20 ms.
async fn shows(client: &Client, css: &str, wanted: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let text = match client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if text.contains(wanted) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Types `token` into the login form on the page and submits it.
async fn log_in(client: &Client, token: &str) {
    client
        .find(Locator::Css("#token"))
        .await
        .expect("the token field")
        .send_keys(token)
        .await
        .expect("type the token");
    click(client, "form.login button").await;
}

/// The page's path once it is `wanted`, or after 10 s, whatever it is then: a form's
/// submission may still be under way when the click returns.
async fn arrives_at(client: &Client, wanted: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let at = path(client).await;
        if at == wanted || Instant::now() > deadline {
            return at;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn path(client: &Client) -> String {
    client
        .current_url()
        .await
        .expect("the URL")
        .path()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_walked_in_a_real_browser_from_login_to_every_page() {
    let (db, dir, app) = (Db::new(), Dir::new(), app_repo());
    let keys = keygen("k1");
    let place = ["--project", "shop", "--group", "creds", "--name", "TOKEN"];
    let sealed = encrypt(&keys, &place, CANARY.as_bytes());
    assert_eq!(sealed.code, 0, "{}", sealed.stderr);
    let sealed = sealed.stdout.trim().to_owned();
    let shop = Remote::new();
    shop.write("deploy/shop.yaml", &shop_manifests(&app.bare(), &sealed));
    shop.push("the shop");
    let blog = Remote::new();
    blog.write(
        "deploy/blog.yaml",
        "apiVersion: meshploy.dev/v1\nkind: Project\nmetadata:\n  name: blog\n  colour: red\n",
    );
    let typo = blog.push("a typo");
    let sources = dir.write(
        "sources.yaml",
        format!(
            "sources:\n  - name: shop\n    url: {}\n    path: deploy\n  - name: blog\n    url: {}\n    path: deploy\n",
            shop.bare().display(),
            blog.bare().display()
        ),
    );
    let mut command = db.command(
        &dir,
        &[
            "serve",
            "--config",
            &sources.display().to_string(),
            "--listen",
            "127.0.0.1:0",
            "--runtime",
            "local",
            "--stop-grace",
            "1s",
        ],
    );
    command.env("MESHPLOY_SECRET_KEYS", &keys);
    let serve = Up::announcing(&mut command, "meshploy serve: API and console on");
    let base = format!("http://{}", serve.address());
    let newest = |service: &str| {
        db.psql(&format!(
            "SELECT state FROM deployments WHERE service = '{service}' ORDER BY id DESC LIMIT 1"
        ))
    };
    let settled = wait_for(Duration::from_secs(120), || {
        (newest("web") == "healthy"
            && newest("broken") == "failed"
            && db.psql("SELECT state FROM sources WHERE name = 'blog'") == "failed")
            .then_some(())
    });
    assert!(
        settled.is_some(),
        "web {}, broken {}, blog {}",
        newest("web"),
        newest("broken"),
        db.psql("SELECT state FROM sources WHERE name = 'blog'")
    );
    let token = crate::api::token(&db, &dir, "browser", "read");
    let mut seen = Seen::default();
    let browser = open_browser(true).await;
    let client = &browser.client;

    // Every page sends a visitor without a session to the login form.
    client
        .goto(&format!("{base}/projects/shop"))
        .await
        .expect("goto");
    assert_eq!(path(client).await, "/login");
    seen.page(client, "login").await;
    log_in(client, &token).await;
    assert_eq!(arrives_at(client, "/").await, "/");
    let cookies = client.get_all_cookies().await.expect("cookies");
    let session = cookies
        .iter()
        .find(|c| c.name() == "meshploy_session")
        .expect("a session cookie");
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(
        session.same_site().map(|s| format!("{s:?}")).as_deref(),
        Some("Strict")
    );
    let overview = seen.page(client, "overview").await;
    assert!(overview.contains("href=\"/sources/blog\""), "{overview}");
    assert!(overview.contains("<span class=\"state bad\">failed</span>"));
    assert!(overview.contains("<span class=\"state ok\">synced</span>"));
    assert!(
        overview.contains("<span class=\"state ok\">1</span>"),
        "one healthy"
    );
    assert!(
        overview.contains("<span class=\"state bad\">1</span>"),
        "one failed"
    );

    // The failed source: its attempt with the diagnostic at file:line:col.
    click(client, "a[href=\"/sources/blog\"]").await;
    let source = seen.page(client, "source").await;
    assert!(
        source.contains("deploy/blog.yaml:5:3: unknown field `colour`"),
        "{source}"
    );
    assert!(source.contains(&typo[..12]), "the commit");
    client.back().await.expect("back");

    // The project: both services with their state, and the route as host + path → target.
    click(client, "a[href=\"/projects/shop\"]").await;
    let project = seen.page(client, "project").await;
    assert!(project.contains("The shop"));
    assert!(project.contains("<code>web.test/</code>"), "{project}");
    assert!(project.contains("service web:"), "{project}");

    // The failed deployment, with the health check's answer as its reason.
    click(client, "a[href=\"/services/shop/broken\"]").await;
    let broken = seen.page(client, "service-failed").await;
    assert!(
        broken.contains("failed its health check 2 times in a row: GET /healthz answered 503"),
        "{broken}"
    );
    client.back().await.expect("back");

    // The healthy service: its log follows live. A line the replica prints appears on the
    // page within a second.
    click(client, "a[href=\"/services/shop/web\"]").await;
    let live = shows(
        client,
        "#live",
        "Following the log live",
        Duration::from_secs(10),
    )
    .await;
    assert!(live, "the page never connected to the log's events");
    let replica: std::net::SocketAddr = db
        .psql("SELECT address FROM endpoints WHERE service = 'web' LIMIT 1")
        .parse()
        .expect("web's endpoint");
    let mut delays = Vec::new();
    for n in 0..5 {
        let marker = format!("console-marker-{n}");
        let asked = Instant::now();
        let answered = tokio::task::spawn_blocking(move || {
            get(replica, "web.test", &format!("/say/{marker}"))
        })
        .await
        .expect("the request");
        assert!(answered.is_some(), "the replica answers");
        let marker = format!("console-marker-{n}");
        let appeared = shows(client, "#logs", &marker, Duration::from_secs(5)).await;
        assert!(appeared, "{marker} never appeared on the page");
        delays.push(asked.elapsed());
    }
    eprintln!("log line to page: {delays:?}");
    assert!(
        delays.iter().all(|d| *d < Duration::from_secs(1)),
        "{delays:?}"
    );
    let web = seen.page(client, "service").await;
    assert!(web.contains("[replica 0] starting on"), "{web}");
    assert!(
        web.contains("with token (redacted)"),
        "captured lines are redacted"
    );
    assert!(web.contains("<span class=\"state ok\">healthy</span>"));

    // Revisions, by the header's link; the first one's plan, coloured.
    click(client, "header a[href=\"/revisions\"]").await;
    seen.page(client, "revisions").await;
    click(client, "a[href=\"/revisions/1\"]").await;
    let plan = seen.page(client, "revision").await;
    assert!(
        plan.contains("<span class=\"add\">  + service/shop/web {"),
        "{plan}"
    );
    assert!(plan.contains("(sensitive value)"), "the secret is masked");
    let colour = client
        .execute(
            "return getComputedStyle(document.querySelector('.plan .add')).color",
            vec![],
        )
        .await
        .expect("a computed style");
    assert_eq!(colour, json!("rgb(63, 185, 80)"), "added lines are green");

    // A phone's width: nothing but tables scrolls sideways.
    client.set_window_size(390, 844).await.expect("resize");
    client.goto(&format!("{base}/")).await.expect("goto");
    seen.page(client, "overview-phone").await;
    let overflow = client
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
            vec![],
        )
        .await
        .expect("widths");
    assert_eq!(overflow, json!(0), "the page is wider than a phone");

    // Logging out ends the session.
    click(client, "header form button").await;
    assert_eq!(arrives_at(client, "/login").await, "/login");
    client.goto(&format!("{base}/")).await.expect("goto");
    assert_eq!(path(client).await, "/login");
    let _ = browser.client.clone().close().await;

    // With JavaScript off, the same walk works by links and forms alone.
    let plain = open_browser(false).await;
    let client = &plain.client;
    client.goto(&format!("{base}/login")).await.expect("goto");
    log_in(client, &token).await;
    for link in [
        "a[href=\"/projects/shop\"]",
        "a[href=\"/services/shop/web\"]",
    ] {
        click(client, link).await;
    }
    let web = seen.page(client, "service-no-javascript").await;
    assert!(
        web.contains("[replica 0] starting on"),
        "the log is on the page without JavaScript"
    );
    let _ = plain.client.clone().close().await;

    // The API's answers about the same state, fetched with the same token.
    let port = serve.address().port();
    let bearer = format!("Bearer {token}");
    for path in [
        "/api/v1/sources",
        "/api/v1/sources/blog",
        "/api/v1/projects",
        "/api/v1/services",
        "/api/v1/services/shop/web",
        "/api/v1/variable-groups",
        "/api/v1/routes",
        "/api/v1/revisions",
        "/api/v1/revisions/1",
        "/api/v1/deployments",
    ] {
        let (status, body) = http(port, "GET", path, &[("authorization", &bearer)], b"");
        assert_eq!(status, 200, "{path}: {body}");
        seen.0.push((path.to_owned(), body));
    }
    let deployment = db.psql("SELECT max(id) FROM deployments WHERE service = 'web'");
    let logs = format!("/api/v1/deployments/{deployment}/logs");
    let (_, body) = http(port, "GET", &logs, &[("authorization", &bearer)], b"");
    assert!(body.contains("(redacted)"), "{body}");
    seen.0.push((logs, body));

    // The canary, and its sealed envelope, are in nothing the browser or the API was sent.
    let leaks: Vec<&str> = seen
        .0
        .iter()
        .filter(|(_, body)| body.contains(CANARY) || body.contains(&sealed))
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(
        leaks,
        Vec::<&str>::new(),
        "the secret reached these answers"
    );
    assert!(seen.0.len() >= 20, "{} bodies fetched", seen.0.len());
    drop(serve);
    let _ = dir;
}
