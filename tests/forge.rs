//! Plan comments and commit statuses against an in-process fake forge over real HTTP (axum on
//! loopback) that keeps comments and statuses as GitHub or Gitea does, enforces GitHub's
//! limits (422 for a body over 65,536 characters or a status description over 140), pages
//! comments with `Link` headers (GitHub) or answers them all at once (Gitea), and records
//! every call. Driven through `meshploy plan --comment`, as a CI job would.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::{Value, json};

use crate::fixtures::{PROJECT, route, service};
use crate::util::{Db, Dir, Run};

const TOKEN: &str = "forge-token-9d7c1e";

/// What the fake forge keeps.
#[derive(Debug, Default)]
pub struct Forge {
    /// Comments by pull request (`owner/name#N`), oldest first: (id, body).
    pub comments: BTreeMap<String, Vec<(u64, String)>>,
    /// Statuses by commit, oldest first.
    pub statuses: BTreeMap<String, Vec<StatusSet>>,
    /// Every call: `METHOD path`.
    pub calls: Vec<String>,
    next_id: u64,
    /// Comments per page (GitHub flavour).
    pub per_page: usize,
    /// Gitea flavour: comments in one answer with `X-Total-Count`, no `Link`.
    pub gitea: bool,
    /// Pull requests closed on the forge (every other one is open).
    pub closed: std::collections::BTreeSet<u64>,
    /// Who wrote each comment, by id; comments made through the API are the token's user's.
    pub authors: BTreeMap<u64, String>,
    /// Comments nobody may edit any more (GitHub answers 403), by id.
    pub locked: std::collections::BTreeSet<u64>,
    /// The bare repository whose `refs/pull/N/head` is each pull request's head, as a forge
    /// keeps it.
    pub repository: Option<std::path::PathBuf>,
    /// Pull requests' authors and their association with the repository (GitHub's
    /// `author_association`); anyone not listed is `alice`, a `MEMBER`.
    pub pull_authors: BTreeMap<u64, (String, String)>,
    /// Pull requests' labels.
    pub labels: BTreeMap<u64, Vec<String>>,
    /// Pull requests whose head is in another repository (a fork: its name, or `None` when
    /// the fork was deleted).
    pub forks: BTreeMap<u64, Option<String>>,
}

/// The login of the user the fake forge's token belongs to.
pub const BOT: &str = "meshploy-bot";

/// A status as set: (context, state, description, target URL).
#[derive(Debug)]
pub struct StatusSet(String, String, String, Option<String>);

type Shared = Arc<Mutex<Forge>>;

/// A fake forge on a loopback port, served until the test ends.
pub struct FakeForge {
    pub state: Shared,
    pub address: SocketAddr,
}

impl FakeForge {
    pub async fn start(gitea: bool, per_page: usize) -> FakeForge {
        let state: Shared = Arc::new(Mutex::new(Forge {
            per_page,
            gitea,
            next_id: 100,
            ..Forge::default()
        }));
        let app = axum::Router::new()
            .route(
                "/repos/{owner}/{name}/issues/{number}/comments",
                get(list_comments).post(create_comment),
            )
            .route(
                "/repos/{owner}/{name}/issues/comments/{id}",
                patch(edit_comment),
            )
            .route("/repos/{owner}/{name}/statuses/{sha}", post(set_status))
            .route("/repos/{owner}/{name}/pulls/{number}", get(pull_state))
            .route(
                "/repos/{owner}/{name}/collaborators/{user}/permission",
                get(permission),
            )
            .route(
                "/user",
                get(|| async { Json(json!({"login": BOT, "id": 1})) }),
            )
            .layer(axum::middleware::from_fn_with_state(state.clone(), record))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake forge");
        let address = listener.local_addr().expect("its address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeForge { state, address }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn forge(&self) -> std::sync::MutexGuard<'_, Forge> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Someone else's comment on `pr`; returns its id.
    pub fn add_comment(&self, pr: &str, body: &str) -> u64 {
        self.forge().add(pr, body, "someone")
    }

    /// Pull requests' heads are read from `repository`'s `refs/pull/N/head`.
    pub fn keep_heads_of(&self, repository: std::path::PathBuf) {
        self.forge().repository = Some(repository);
    }
}

impl Forge {
    /// A new comment on `pr` by `author`; returns its id.
    fn add(&mut self, pr: &str, body: &str, author: &str) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.comments
            .entry(pr.to_owned())
            .or_default()
            .push((id, body.to_owned()));
        self.authors.insert(id, author.to_owned());
        id
    }

    fn author(&self, id: u64) -> &str {
        self.authors.get(&id).map_or("someone", String::as_str)
    }
}

/// Records each call and refuses a missing or wrong token, as a forge would.
async fn record(
    State(state): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let line = format!("{} {}", request.method(), request.uri());
    let gitea = {
        let mut forge = state.lock().unwrap_or_else(|e| e.into_inner());
        forge.calls.push(line);
        forge.gitea
    };
    let expected = if gitea {
        format!("token {TOKEN}")
    } else {
        format!("Bearer {TOKEN}")
    };
    let presented = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if presented != Some(expected.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Bad credentials"})),
        )
            .into_response();
    }
    next.run(request).await
}

fn unprocessable(message: &str) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({"message": "Validation Failed", "errors": [{"message": message}]})),
    )
        .into_response()
}

async fn list_comments(
    State(state): State<Shared>,
    Path((owner, name, number)): Path<(String, String, u64)>,
    Query(query): Query<BTreeMap<String, String>>,
    request_headers: HeaderMap,
) -> Response {
    let host = request_headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let forge = state.lock().unwrap_or_else(|e| e.into_inner());
    let key = format!("{owner}/{name}#{number}");
    let all: Vec<Value> = forge
        .comments
        .get(&key)
        .map(|c| {
            c.iter()
                .map(|(id, body)| {
                    json!({"id": id, "body": body, "user": {"login": forge.author(*id)}})
                })
                .collect()
        })
        .unwrap_or_default();
    if forge.gitea {
        let count = all.len().to_string();
        return ([("x-total-count", count)], Json(all)).into_response();
    }
    let per_page = forge.per_page;
    let page: usize = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    let pages = all.len().div_ceil(per_page).max(1);
    let items: Vec<Value> = all
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    let mut headers = HeaderMap::new();
    if page < pages {
        let link = format!(
            "</repos/{owner}/{name}/issues/{number}/comments?per_page=100&page={}>; rel=\"next\", </repos/{owner}/{name}/issues/{number}/comments?per_page=100&page={pages}>; rel=\"last\"",
            page + 1
        );
        // GitHub's links are absolute.
        headers.insert(
            "link",
            link.replace('<', &format!("<http://{host}"))
                .parse()
                .expect("a header value"),
        );
    }
    (headers, Json(items)).into_response()
}

/// The comment body of a request, unless it is over GitHub's limit.
fn body_of(request: &Value) -> Option<String> {
    let body = request["body"].as_str().unwrap_or_default().to_owned();
    (body.chars().count() <= 65_536).then_some(body)
}

const TOO_LONG: &str = "body is too long (maximum is 65536 characters)";

async fn create_comment(
    State(state): State<Shared>,
    Path((owner, name, number)): Path<(String, String, u64)>,
    Json(request): Json<Value>,
) -> Response {
    let Some(body) = body_of(&request) else {
        return unprocessable(TOO_LONG);
    };
    let id = state.lock().unwrap_or_else(|e| e.into_inner()).add(
        &format!("{owner}/{name}#{number}"),
        &body,
        BOT,
    );
    (
        StatusCode::CREATED,
        Json(json!({"id": id, "body": body, "user": {"login": BOT}})),
    )
        .into_response()
}

async fn edit_comment(
    State(state): State<Shared>,
    Path((owner, name, id)): Path<(String, String, u64)>,
    Json(request): Json<Value>,
) -> Response {
    let Some(body) = body_of(&request) else {
        return unprocessable(TOO_LONG);
    };
    let mut forge = state.lock().unwrap_or_else(|e| e.into_inner());
    // As GitHub: only the author edits a comment (the token is an ordinary user's), and not
    // one that is locked.
    if forge.author(id) != BOT || forge.locked.contains(&id) {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"message": "Resource not accessible by integration"})),
        )
            .into_response();
    }
    let prefix = format!("{owner}/{name}#");
    let found = forge
        .comments
        .iter_mut()
        .filter(|(pr, _)| pr.starts_with(&prefix))
        .flat_map(|(_, comments)| comments.iter_mut())
        .find(|(c, _)| *c == id);
    match found {
        Some(comment) => {
            comment.1 = body.clone();
            Json(json!({"id": id, "body": body})).into_response()
        }
        None => (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"}))).into_response(),
    }
}

/// A pull request as the forge has it: its state, its head (from the repository's
/// `refs/pull/N/head`), where the head lives, its author and labels.
async fn pull_state(
    State(state): State<Shared>,
    Path((owner, name, number)): Path<(String, String, u64)>,
) -> Response {
    let forge = state.lock().unwrap_or_else(|e| e.into_inner());
    let head = forge.repository.as_ref().and_then(|repository| {
        let output = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(repository)
            .args([
                "rev-parse",
                "--verify",
                "-q",
                &format!("refs/pull/{number}/head"),
            ])
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    });
    let Some(head) = head else {
        return (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"}))).into_response();
    };
    let open = if forge.closed.contains(&number) {
        "closed"
    } else {
        "open"
    };
    let base = format!("{owner}/{name}");
    let head_repo = match forge.forks.get(&number) {
        Some(fork) => fork.clone(),
        None => Some(base),
    };
    let (login, association) = forge
        .pull_authors
        .get(&number)
        .cloned()
        .unwrap_or_else(|| ("alice".into(), "MEMBER".into()));
    let labels: Vec<Value> = forge
        .labels
        .get(&number)
        .into_iter()
        .flatten()
        .map(|l| json!({"name": l}))
        .collect();
    let mut pull = json!({
        "number": number,
        "state": open,
        "head": {"sha": head, "repo": head_repo.map(|r| json!({"full_name": r}))},
        "base": {"ref": "main"},
        "user": {"login": login},
        "labels": labels,
    });
    // Gitea has no `author_association`: it is asked for the author's permission instead.
    if !forge.gitea {
        pull["author_association"] = association.into();
    }
    Json(pull).into_response()
}

/// Gitea's permission of a user on the repository, from the association the fake keeps.
async fn permission(
    State(state): State<Shared>,
    Path((_owner, _name, user)): Path<(String, String, String)>,
) -> Response {
    let forge = state.lock().unwrap_or_else(|e| e.into_inner());
    let association = forge
        .pull_authors
        .values()
        .find(|(login, _)| *login == user)
        .map_or("MEMBER", |(_, a)| a.as_str());
    let permission = match association {
        "OWNER" => "owner",
        "MEMBER" | "COLLABORATOR" => "write",
        _ => "read",
    };
    Json(json!({"permission": permission, "user": {"login": user}})).into_response()
}

async fn set_status(
    State(state): State<Shared>,
    Path((_owner, _name, sha)): Path<(String, String, String)>,
    Json(request): Json<Value>,
) -> Response {
    let description = request["description"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if description.chars().count() > 140 {
        return unprocessable("description is too long (maximum is 140 characters)");
    }
    let state_name = request["state"].as_str().unwrap_or_default().to_owned();
    if !["pending", "success", "failure", "error"].contains(&state_name.as_str()) {
        return unprocessable("state is not included in the list");
    }
    let mut forge = state.lock().unwrap_or_else(|e| e.into_inner());
    forge.statuses.entry(sha).or_default().push(StatusSet(
        request["context"].as_str().unwrap_or_default().to_owned(),
        state_name,
        description,
        request["target_url"].as_str().map(str::to_owned),
    ));
    (StatusCode::CREATED, Json(request)).into_response()
}

/// `meshploy plan DIR --source shop --comment acme/deploy#7 --head HEAD` against the fake forge.
fn comment(db: &Db, dir: &Dir, forge: &FakeForge, head: &str, extra: &[&str]) -> Run {
    let base = forge.base();
    let mut args = vec![
        "plan",
        ".",
        "--source",
        "shop",
        "--comment",
        "acme/deploy#7",
        "--head",
        head,
        "--forge-api",
        &base,
    ];
    args.extend_from_slice(extra);
    let mut command = db.command(dir, &args);
    command
        .env("MESHPLOY_FORGE_TOKEN", TOKEN)
        .env_remove("GITHUB_TOKEN");
    Run::new(command.output())
}

fn ours(forge: &Forge) -> Vec<(u64, String)> {
    forge
        .comments
        .get("acme/deploy#7")
        .map(|c| {
            c.iter()
                .filter(|(id, b)| {
                    b.starts_with("<!-- meshploy:plan source=shop ") && forge.author(*id) == BOT
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_comment_per_pull_request_is_created_then_edited_and_left_alone_when_unchanged() {
    let (db, dir) = (Db::new(), Dir::new());
    let forge = FakeForge::start(false, 2).await;
    // Five comments of other people: three pages of two, ours last.
    for i in 0..5 {
        forge.add_comment("acme/deploy#7", &format!("review {i}"));
    }
    dir.write("project.yaml", PROJECT);
    dir.write("web.yaml", service("web", 2));
    // `plan --comment` at `head`, which succeeds saying `says`.
    let post = |head: &str, says: &str| {
        let run = tokio::task::block_in_place(|| comment(&db, &dir, &forge, head, &[]));
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(run.stderr.contains(says), "{}", run.stderr);
        run
    };
    let patches = |f: &Forge| f.calls.iter().filter(|c| c.starts_with("PATCH")).count();
    let opened = post("a1a1a1a1a1a1a1a1", "posted comment");
    {
        let f = forge.forge();
        let mine = ours(&f);
        assert_eq!(mine.len(), 1, "{:#?}", f.comments);
        let body = &mine[0].1;
        assert!(body.contains("head=a1a1a1a1a1a1a1a1 manifests="));
        assert!(body.contains("Meshploy plan for source `shop` at `a1a1a1a1a1a1`"));
        assert!(
            body.contains("Plan: 2 to add, 0 to change, 0 to destroy."),
            "{body}"
        );
        assert!(body.contains("+   service/shop/web {"), "{body}");
        let status = &f.statuses["a1a1a1a1a1a1a1a1"][0];
        assert_eq!(
            (status.0.as_str(), status.1.as_str()),
            ("meshploy/plan/shop", "success")
        );
        assert_eq!(status.2, "Plan: 2 to add, 0 to change, 0 to destroy.");
        assert_eq!(status.3, None, "a CI job has no console page to link to");
        // Three pages of comments were read, by the `Link` header.
        let pages = f
            .calls
            .iter()
            .filter(|c| c.starts_with("GET /repos/acme/deploy/issues/7/comments"))
            .count();
        assert_eq!(
            pages, 6,
            "three pages, read twice (outdated check, publish): {:#?}",
            f.calls
        );
        assert!(!f.calls.iter().any(|c| c.contains(TOKEN)));
    }
    assert!(!opened.stderr.contains(TOKEN) && !opened.stdout.contains(TOKEN));

    // A new commit: the same comment is first marked outdated, then replaced.
    dir.write("web.yaml", service("web", 3));
    post("b2b2b2b2b2b2b2b2", "updated comment");
    {
        let f = forge.forge();
        let mine = ours(&f);
        assert_eq!(mine.len(), 1);
        assert!(mine[0].1.contains("head=b2b2b2b2b2b2b2b2 manifests="));
        assert!(!mine[0].1.contains("Outdated"), "replaced after the mark");
        assert_eq!(
            patches(&f),
            2,
            "marked outdated, then replaced: {:#?}",
            f.calls
        );
    }

    // A new commit that changes no manifest: the comment stays as it is (still naming the
    // commit it was made for); the new commit gets its status.
    post("c3c3c3c3c3c3c3c3", "is up to date");
    {
        let f = forge.forge();
        assert_eq!(patches(&f), 2);
        assert!(ours(&f)[0].1.contains("head=b2b2b2b2b2b2b2b2 "));
        assert_eq!(f.statuses["c3c3c3c3c3c3c3c3"][0].1, "success");
    }

    // The same head and manifests again: nothing is edited.
    post("b2b2b2b2b2b2b2b2", "is up to date");
    let f = forge.forge();
    assert_eq!(patches(&f), 2);
    assert_eq!(
        f.calls
            .iter()
            .filter(|c| c.starts_with("POST /repos/acme/deploy/issues"))
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_manifests_and_refused_plans_fail_the_status_with_the_reason() {
    let (db, dir) = (Db::new(), Dir::new());
    let forge = FakeForge::start(false, 30).await;
    dir.write("project.yaml", PROJECT);
    dir.write("web.yaml", "apiVersion: meshploy.dev/v1\nkind: Service\nmetadata:\n  name: web\n  project: shop\nspec:\n  image: x:1\n  replica: 2\n");
    let invalid =
        tokio::task::block_in_place(|| comment(&db, &dir, &forge, "c3c3c3c3c3c3c3c3", &[]));
    assert_eq!(invalid.code, 1, "{}", invalid.stderr);
    assert!(
        invalid.stderr.contains("web.yaml:8:3"),
        "{}",
        invalid.stderr
    );
    {
        let f = forge.forge();
        let body = &ours(&f)[0].1;
        assert!(
            body.contains("The manifests are invalid (1 problem)"),
            "{body}"
        );
        assert!(
            body.contains("web.yaml:8:3: unknown field `replica`"),
            "{body}"
        );
        let status = &f.statuses["c3c3c3c3c3c3c3c3"][0];
        assert_eq!(status.1, "failure");
        assert!(
            status
                .2
                .starts_with("Invalid manifests (1 problem): ./web.yaml:8:3"),
            "{}",
            status.2
        );
    }

    // Applied, then a head that deletes the whole project: the guard would refuse it.
    dir.write("web.yaml", service("web", 1));
    let applied = db.meshploy(&dir, &["apply", "--source", "shop", "--auto-approve"]);
    assert_eq!(applied.code, 0, "{}", applied.stderr);
    let empty = Dir::new();
    empty.write("README.md", "nothing here");
    let refused =
        tokio::task::block_in_place(|| comment(&db, &empty, &forge, "d4d4d4d4d4d4d4d4", &[]));
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    let f = forge.forge();
    let body = &ours(&f)[0].1;
    assert!(
        body.contains("This plan would be refused when applied"),
        "{body}"
    );
    assert!(body.contains("destroys project/shop"), "{body}");
    let status = &f.statuses["d4d4d4d4d4d4d4d4"][0];
    assert_eq!(status.1, "failure");
    assert!(
        status
            .2
            .starts_with("Refused: this plan destroys project/shop"),
        "{}",
        status.2
    );
    assert!(status.2.chars().count() <= 140);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5000_resource_plan_fits_one_comment_and_gitea_is_spoken_too() {
    let (db, dir) = (Db::new(), Dir::new());
    let forge = FakeForge::start(true, 0).await;
    forge.add_comment("acme/deploy#7", "first!");
    dir.write("project.yaml", PROJECT);
    // 2,500 services and their routes, 500 documents a file.
    for file in 0..10 {
        let mut documents = String::new();
        for i in file * 250..(file + 1) * 250 {
            documents.push_str("---\n");
            documents.push_str(&service(&format!("s{i}"), 1));
            documents.push_str("---\n");
            documents.push_str(&route(
                &format!("r{i}"),
                &format!("/r{i}"),
                &format!("s{i}"),
            ));
        }
        dir.write(&format!("many{file}.yaml"), documents);
    }
    let big = tokio::task::block_in_place(|| {
        comment(&db, &dir, &forge, "e5e5e5e5e5e5e5e5", &["--forge", "gitea"])
    });
    assert_eq!(big.code, 0, "{}", big.stderr);
    let f = forge.forge();
    let body = &ours(&f)[0].1;
    assert!(body.chars().count() <= 65_536, "{}", body.len());
    assert!(body.contains("Plan: 5001 to add"), "{}", &body[..400]);
    assert!(body.contains("<details>"), "folded");
    assert!(
        body.contains("more changes are not shown"),
        "cut at a resource boundary"
    );
    // Gitea answers comments at once: one read per step, no page parameter.
    assert!(
        f.calls
            .iter()
            .filter(|c| c.starts_with("GET"))
            .all(|c| !c.contains("page")),
        "{:#?}",
        f.calls
    );
    assert_eq!(f.statuses["e5e5e5e5e5e5e5e5"][0].1, "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_or_a_bad_pull_request_is_a_clear_error() {
    let (db, dir) = (Db::new(), Dir::new());
    let forge = FakeForge::start(false, 30).await;
    dir.write("project.yaml", PROJECT);
    let base = forge.base();
    // `meshploy plan . ARGS` with `token` as the forge token, which fails with `code`
    // saying `says`.
    let fails = |args: &[&str], token: Option<&str>, code: i32, says: &str| {
        let mut command = db.command(&dir, &[&["plan", "."][..], args].concat());
        command
            .env_remove("MESHPLOY_FORGE_TOKEN")
            .env_remove("GITHUB_TOKEN");
        if let Some(token) = token {
            command.env("MESHPLOY_FORGE_TOKEN", token);
        }
        let run = tokio::task::block_in_place(|| Run::new(command.output()));
        assert_eq!(run.code, code, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
        run
    };
    let pr = [
        "--comment",
        "acme/deploy#7",
        "--head",
        "f6f6",
        "--forge-api",
        &base,
    ];
    let wrong = fails(
        &pr,
        Some("not-the-token"),
        1,
        "the forge answered 401: Bad credentials",
    );
    assert!(!wrong.stderr.contains("not-the-token"));
    fails(&pr, None, 1, "no forge token");
    fails(
        &["--comment", "acme#7"],
        Some(TOKEN),
        2,
        "owner/name#NUMBER",
    );
    fails(
        &["--comment", "acme/deploy#7", "--forge-api", &base],
        Some(TOKEN),
        1,
        "give --head SHA",
    );
    fails(
        &[
            "--comment",
            "acme/deploy#7",
            "--head",
            "f6",
            "--forge",
            "gitea",
        ],
        Some(TOKEN),
        1,
        "give --forge-api",
    );
    assert!(forge.forge().comments.is_empty(), "nothing was posted");
}

/// Sends a pull_request webhook as GitHub does, with `signature` (GitHub's form) as its
/// signature, to the `serve` listening on `port`: the status and body of the answer.
pub fn github_pull_request(
    port: u16,
    delivery: &str,
    signature: &str,
    body: &[u8],
) -> (u16, String) {
    let headers = [
        ("X-GitHub-Event", "pull_request"),
        ("X-GitHub-Delivery", delivery),
        ("X-Hub-Signature-256", signature),
    ];
    crate::util::http(port, "POST", "/api/v1/webhooks/github", &headers, body)
}

/// Waits up to a minute for our comment on `acme/deploy#number` to describe `head` and
/// contain `text`, and for `head`'s status (set after the comment); returns the comment.
pub fn comment_saying(forge: &FakeForge, number: u64, head: &str, text: &str) -> String {
    let key = format!("acme/deploy#{number}");
    let marker = format!("head={head} ");
    crate::util::wait_for(std::time::Duration::from_secs(60), || {
        let f = forge.forge();
        f.statuses.get(head)?;
        f.comments
            .get(&key)?
            .iter()
            .find(|(_, b)| b.contains(&marker) && b.contains(text))
            .map(|(_, b)| b.clone())
    })
    .unwrap_or_else(|| {
        panic!(
            "no comment on #{number} for {head} saying `{text}`: {:#?}",
            forge.forge().comments.get(&key)
        )
    })
}

/// `meshploy serve` of source `shop` (manifests under `deploy/` of `url`) with the fake
/// forge, its token in the environment, `more` added to the source's configuration and
/// `args` to the command.
pub fn serve_command(
    db: &Db,
    dir: &Dir,
    url: &str,
    forge: &FakeForge,
    more: &str,
    args: &[&str],
) -> std::process::Command {
    let config = dir.write(
        "sources.yaml",
        format!(
            "sources:\n  - name: shop\n    url: {url}\n    path: deploy\n    pollInterval: 1h\n    forge:\n      kind: github\n      api: {}\n      tokenEnv: SHOP_FORGE_TOKEN\n{more}",
            forge.base()
        ),
    );
    let mut command = db.command(
        dir,
        &[
            "serve",
            "--config",
            &config.display().to_string(),
            "--listen",
            "127.0.0.1:0",
            "--webhook-secret",
            crate::serve::SECRET,
        ],
    );
    command.args(args).env("SHOP_FORGE_TOKEN", TOKEN);
    command
}

/// A signed pull_request event for `acme/deploy#number` against `main` of `url`.
pub fn pull_event(
    url: &str,
    action: &str,
    number: u64,
    head: &str,
    head_repo: Option<&str>,
) -> Vec<u8> {
    json!({
        "action": action,
        "number": number,
        "pull_request": {
            "number": number,
            "head": {"sha": head, "repo": head_repo.map(|name| json!({"full_name": name}))},
            "base": {"ref": "main"},
        },
        "repository": {"full_name": "acme/deploy", "clone_url": url},
    })
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_reviews_pull_requests_from_signed_webhooks_of_github_and_gitea() {
    use crate::serve::signature;
    let (db, dir) = (Db::new(), Dir::new());
    let forge = FakeForge::start(false, 30).await;
    let repo = crate::util::Remote::new();
    repo.write("deploy/project.yaml", PROJECT);
    repo.write("deploy/web.yaml", &service("web", 1));
    repo.push("the shop");
    forge.keep_heads_of(repo.bare());
    // A pull request's head, kept by the forge as refs/pull/N/head of the base repository.
    let pull_head = |text: &str, number: u64| {
        repo.write("deploy/web.yaml", text);
        let commit = repo.commit("a change");
        repo.push_pull(number);
        commit
    };
    let url = format!("file://{}", repo.bare().display());
    let mut command = serve_command(
        &db,
        &dir,
        &url,
        &forge,
        "",
        &[
            "--public-url",
            "https://meshploy.example.com",
            "--anonymous-read",
        ],
    );
    let (_serve, addresses) =
        crate::fixtures::Process::announced(&mut command, "meshploy serve: API and console on");
    let port = addresses[0].port();
    let applied = crate::util::wait_for(std::time::Duration::from_secs(30), || {
        (db.psql("SELECT count(*) FROM services") == "1").then_some(())
    });
    assert!(applied.is_some(), "the main branch was applied");
    let github = |delivery: &str, signature: &str, body: &[u8]| {
        tokio::task::block_in_place(|| github_pull_request(port, delivery, signature, body))
    };
    let comment_of = |number: u64, head: &str| comment_saying(&forge, number, head, "");

    // Opened: one comment with the plan, and a success status linking to the console.
    let first = pull_head(&service("web", 3), 7);
    let body = pull_event(&url, "opened", 7, &first, Some("acme/deploy"));
    let signed = signature(&body);
    let (code, answer) = github("pr-1", &signed, &body);
    assert_eq!(code, 202, "{answer}");
    let text = tokio::task::block_in_place(|| comment_of(7, &first));
    assert!(
        text.contains("Plan: 0 to add, 1 to change, 0 to destroy."),
        "{text}"
    );
    assert!(text.contains("replicas = 1 -> 3"), "{text}");
    {
        let f = forge.forge();
        let status = &f.statuses[&first][0];
        assert_eq!(
            (status.0.as_str(), status.1.as_str()),
            ("meshploy/plan/shop", "success")
        );
        assert_eq!(
            status.3.as_deref(),
            Some("https://meshploy.example.com/sources/shop/pulls/7")
        );
    }
    // Nothing was applied: the live state is main's.
    assert_eq!(db.psql("SELECT fields->>'replicas' FROM services"), "1");

    // A replayed delivery and a forged signature do nothing.
    let (code, answer) = github("pr-1", &signed, &body);
    assert_eq!(code, 200, "{answer}");
    assert!(answer.contains("already processed"), "{answer}");
    // Signed but malformed: a clear 400, never a database error.
    let broken = b"{\"action\": \"opened\", \"number\": 7}";
    let (code, answer) = github("pr-5", &signature(broken), broken);
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer.contains("the pull_request event cannot be read"),
        "{answer}"
    );
    let negative = pull_event(&url, "opened", 7, &first, None);
    let negative = String::from_utf8_lossy(&negative).replace("\"number\":7", "\"number\":-7");
    let (code, answer) = github("pr-6", &signature(negative.as_bytes()), negative.as_bytes());
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("must be positive, not -7"), "{answer}");
    let forged = signature(b"something else");
    let (code, _) = github("pr-2", &forged, &body);
    assert_eq!(code, 401);

    // Gitea's flavour: `synchronized`, its own headers and a bare hex signature. The head is
    // invalid: the same comment shows the diagnostic, and the status fails.
    let second = pull_head(
        "apiVersion: meshploy.dev/v1\nkind: Service\nmetadata:\n  name: web\n  project: shop\nspec:\n  image: x:1\n  replica: 2\n",
        7,
    );
    let body = pull_event(&url, "synchronized", 7, &second, Some("acme/deploy"));
    let hex = signature(&body).trim_start_matches("sha256=").to_owned();
    let (code, answer) = tokio::task::block_in_place(|| {
        crate::util::http(
            port,
            "POST",
            "/api/v1/webhooks/gitea",
            &[
                ("X-Gitea-Event", "pull_request"),
                ("X-Gitea-Delivery", "pr-3"),
                ("X-Gitea-Signature", &hex),
            ],
            &body,
        )
    });
    assert_eq!(code, 202, "{answer}");
    let text = tokio::task::block_in_place(|| comment_of(7, &second));
    assert!(
        text.contains("deploy/web.yaml:8:3: unknown field `replica`"),
        "{text}"
    );
    {
        let f = forge.forge();
        assert_eq!(ours(&f).len(), 1, "one comment, edited");
        assert_eq!(f.statuses[&second][0].1, "failure");
    }

    // A fork whose repository was deleted (`head.repo` is null): planned and commented.
    let fork = pull_head(&service("web", 2), 8);
    forge.forge().forks.insert(8, None);
    let body = pull_event(&url, "opened", 8, &fork, None);
    let signed = signature(&body);
    let (code, _) = github("pr-4", &signed, &body);
    assert_eq!(code, 202);
    let text = tokio::task::block_in_place(|| comment_of(8, &fork));
    assert!(text.contains("replicas = 1 -> 2"), "{text}");
    assert_eq!(
        db.psql("SELECT fork FROM pull_requests WHERE number = 8"),
        "t"
    );

    // The console's page of the pull request, which the status links to.
    let (code, page) = tokio::task::block_in_place(|| {
        crate::util::http(port, "GET", "/sources/shop/pulls/7", &[], b"")
    });
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("acme/deploy#7"), "{page}");
    assert!(page.contains("unknown field"), "{page}");
    let (code, _) = tokio::task::block_in_place(|| {
        crate::util::http(port, "GET", "/sources/shop/pulls/99", &[], b"")
    });
    assert_eq!(code, 404);
    // The source's page lists its pull requests, the failed plan and the forked one.
    let (code, page) =
        tokio::task::block_in_place(|| crate::util::http(port, "GET", "/sources/shop", &[], b""));
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("href=\"/sources/shop/pulls/7\""), "{page}");
    assert!(page.contains("href=\"/sources/shop/pulls/8\""), "{page}");
    assert!(
        page.contains("plan failed") && page.contains("plan ok"),
        "{page}"
    );
    assert!(!forge.forge().calls.iter().any(|c| c.contains(TOKEN)));
}

#[test]
fn a_bad_forge_configuration_is_refused_at_start_naming_the_file_and_source() {
    let (db, dir) = (Db::new(), Dir::new());
    let source = |forge: &str| {
        format!("sources:\n  - name: shop\n    url: /nowhere.git\n    forge:\n{forge}")
    };
    for (forge, says) in [
        (
            "      kind: github\n      tokenEnv: NOT_SET_ANYWHERE_4242\n",
            "source `shop`: forge.tokenEnv: the environment variable NOT_SET_ANYWHERE_4242 is not set",
        ),
        (
            "      kind: github\n",
            "source `shop`: forge: give exactly one of tokenFile and tokenEnv",
        ),
        (
            "      kind: gitea\n      tokenFile: token.txt\n",
            "source `shop`: forge.api is required for gitea",
        ),
        (
            "      kind: github\n      tokenFile: missing.txt\n",
            "source `shop`: forge.tokenFile: cannot read missing.txt",
        ),
        ("      kind: gitlab\n      tokenFile: token.txt\n", "gitlab"),
        (
            "      kind: github\n      token: ghp_inline\n",
            "unknown field `token`",
        ),
        (
            "      kind: github\n      tokenFile: token.txt\n    previews:\n      enabled: true\n      host: preview.{host}\n",
            "source `shop`: previews.host: `preview.{host}` has no `{number}`",
        ),
        (
            "      kind: github\n      tokenFile: token.txt\n    previews:\n      enabled: true\n      ttl: 3 days\n",
            "source `shop`: previews.ttl: `3 days` has an unknown unit",
        ),
        (
            "      kind: github\n      tokenFile: token.txt\n    previews:\n      enabled: true\n      scheme: ftp\n",
            "source `shop`: previews.scheme: `ftp` is neither http nor https",
        ),
        (
            "      kind: github\n      tokenFile: token.txt\n    previews:\n      enabled: true\n      maxActive: -1\n",
            "sources.yaml: line 9 column 18: invalid u32",
        ),
        (
            "    previews:\n      enabled: true\n",
            "source `shop`: previews need a `forge` to learn of pull requests",
        ),
        (
            "      kind: github\n      tokenFile: token.txt\n    previews:\n      enabled: true\n      trustedAuthors: [OWNER, member]\n",
            "source `shop`: previews.trustedAuthors: `member` is not an author association",
        ),
        (
            "      kind: github\n      tokenFile: token.txt\n    previews:\n      enabled: true\n      approvalLabel: ' '\n",
            "source `shop`: previews.approvalLabel: is empty",
        ),
        (
            "      kind: github\n      tokenFile: token.txt\n    previews:\n      enabled: true\n      secrets:\n        creds: creds\n",
            "source `shop`: previews.secrets.creds: write `inherit` to give previews the group's own secrets",
        ),
        (
            "      kind: github\n      tokenFile: token.txt\n    previews:\n      enabled: true\n      secrets:\n        creds: Creds_Preview\n",
            "source `shop`: previews.secrets: `Creds_Preview` is not a variable group's name",
        ),
    ] {
        dir.write("token.txt", "t0ken\n");
        let config = dir.write("sources.yaml", source(forge));
        let run = Run::new(
            db.command(
                &dir,
                &[
                    "serve",
                    "--config",
                    &config.display().to_string(),
                    "--listen",
                    "127.0.0.1:0",
                ],
            )
            .output(),
        );
        assert_eq!(run.code, 1, "{forge}: {}", run.stderr);
        assert!(
            run.stderr.contains("sources.yaml"),
            "{forge}: {}",
            run.stderr
        );
        assert!(run.stderr.contains(says), "{forge}: {}", run.stderr);
        assert!(!run.stderr.contains("t0ken") && !run.stderr.contains("ghp_inline"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_changed_in_a_pull_request_shows_as_a_sensitive_value_only() {
    use crate::secret::{encrypt, keygen};
    const PLAINTEXT: &str = "pr-secret-61c0ffee";
    let (db, dir) = (Db::new(), Dir::new());
    let forge = FakeForge::start(false, 30).await;
    let keys = keygen("k1");
    let place = ["--project", "shop", "--group", "creds", "--name", "TOKEN"];
    let sealed = encrypt(&keys, &place, PLAINTEXT.as_bytes());
    assert_eq!(sealed.code, 0, "{}", sealed.stderr);
    dir.write("project.yaml", PROJECT);
    dir.write(
        "creds.yaml",
        format!(
            "apiVersion: meshploy.dev/v1\nkind: VariableGroup\nmetadata:\n  name: creds\n  project: shop\nspec:\n  secrets:\n    TOKEN: {}\n",
            sealed.stdout.trim()
        ),
    );
    let base = forge.base();
    let mut command = db.command(
        &dir,
        &[
            "plan",
            ".",
            "--source",
            "shop",
            "--comment",
            "acme/deploy#7",
            "--head",
            "a7a7a7a7",
            "--forge-api",
            &base,
        ],
    );
    command
        .env("MESHPLOY_FORGE_TOKEN", TOKEN)
        .env("MESHPLOY_SECRET_KEYS", &keys);
    let run = tokio::task::block_in_place(|| Run::new(command.output()));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let f = forge.forge();
    let body = &ours(&f)[0].1;
    assert!(body.contains("secrets.TOKEN = (sensitive value)"), "{body}");
    assert!(!body.contains(PLAINTEXT) && !body.contains(sealed.stdout.trim()));
    let everything = format!("{:?}{:?}{}{}", f.comments, f.calls, run.stdout, run.stderr);
    assert!(
        !everything.contains(PLAINTEXT),
        "the secret reached the forge or the output"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_pushes_is_reviewed_once_for_the_newest_head() {
    use std::sync::atomic::AtomicBool;
    let (db, dir) = (Db::new(), Dir::new());
    let forge = FakeForge::start(false, 30).await;
    let repo = crate::util::Remote::new();
    repo.write("deploy/project.yaml", PROJECT);
    repo.push("the shop");
    let mut heads = Vec::new();
    for replicas in 1..=3 {
        repo.write("deploy/web.yaml", &service("web", replicas));
        heads.push(repo.commit("a push"));
    }
    repo.push_pull(5);
    forge.keep_heads_of(repo.bare());
    let url = repo.bare().display().to_string();
    let source = reconciler::sync::Source {
        name: "shop".into(),
        url: url.clone(),
        branch: "main".into(),
        path: "deploy".into(),
        policy: reconciler::names::Policy::Auto,
    };
    let pool = sqlx::PgPool::connect(&db.url()).await.expect("connect");
    reconciler::store::MIGRATOR
        .run(&pool)
        .await
        .expect("migrate");
    source.register(&pool).await.expect("register the source");
    // Three webhooks of one burst, oldest first: the row keeps the newest head.
    for head in &heads {
        forge::store::announce(
            &pool,
            &forge::store::Pull {
                source: "shop".into(),
                number: 5,
                repo: "acme/deploy".into(),
                head: head.clone(),
                fork: false,
            },
            false,
        )
        .await
        .expect("announce");
    }
    let worker = forge::worker::Worker {
        pool: pool.clone(),
        sources: vec![forge::worker::PullSource {
            source,
            forge: forge::Client::new(forge::Kind::GitHub, &forge.base(), TOKEN).expect("a client"),
            previews: None,
        }],
        cache: dir.path().join("cache"),
        keys: None,
        guard: reconciler::plan::Guard::default(),
        lock_timeout_ms: 30_000,
        public_url: None,
        leading: Arc::new(AtomicBool::new(true)),
    };
    worker.pass().await;
    {
        let f = forge.forge();
        assert_eq!(
            f.statuses.keys().collect::<Vec<_>>(),
            [&heads[2]],
            "only the newest head"
        );
        let mine = f.comments["acme/deploy#5"].clone();
        assert_eq!(mine.len(), 1);
        assert!(mine[0].1.contains("replicas = 3"), "{}", mine[0].1);
    }
    assert_eq!(
        db.psql("SELECT reviewed = head FROM pull_requests WHERE number = 5"),
        "t"
    );
    // Nothing is pending any more: another pass calls the forge no more.
    let calls = forge.forge().calls.len();
    worker.pass().await;
    assert_eq!(forge.forge().calls.len(), calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comment_of_someone_else_that_looks_like_ours_is_left_alone_and_ours_is_posted() {
    let (db, dir) = (Db::new(), Dir::new());
    let forge = FakeForge::start(false, 30).await;
    dir.write("project.yaml", PROJECT);
    dir.write("web.yaml", service("web", 2));
    // Someone writes a comment that begins with our marker and gives a verdict.
    let fake = "<!-- meshploy:plan source=shop head=b0b0b0b0 manifests=0000000000000000 -->\n\
                #### Meshploy plan for source `shop`\n\nNo changes. Safe to merge.\n";
    let theirs = forge.add_comment("acme/deploy#7", fake);
    let run = tokio::task::block_in_place(|| comment(&db, &dir, &forge, "b0b0b0b0", &[]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("posted comment"), "{}", run.stderr);
    {
        let f = forge.forge();
        let all = &f.comments["acme/deploy#7"];
        assert_eq!(
            all[0],
            (theirs, fake.to_owned()),
            "their comment is untouched"
        );
        let mine = ours(&f);
        assert_eq!(mine.len(), 1, "{all:#?}");
        assert!(mine[0].1.contains("Plan: 2 to add"), "{}", mine[0].1);
        assert_eq!(f.statuses["b0b0b0b0"][0].1, "success", "the status is set");
        assert!(
            !f.calls.iter().any(|c| c.starts_with("PATCH")),
            "no edit of their comment was tried: {:?}",
            f.calls
        );
        assert!(f.calls.iter().any(|c| c == "GET /user"), "{:?}", f.calls);
    }
    // Our own comment that can no longer be edited (locked, say): a new one is posted
    // instead of trying again and again, and the status is set.
    let locked = ours(&forge.forge())[0].0;
    forge.forge().locked.insert(locked);
    dir.write("web.yaml", service("web", 3));
    let run = tokio::task::block_in_place(|| comment(&db, &dir, &forge, "c1c1c1c1", &[]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("posted comment"), "{}", run.stderr);
    let f = forge.forge();
    let mine = ours(&f);
    assert_eq!(mine.len(), 2, "{:#?}", f.comments);
    assert!(mine[1].1.contains("head=c1c1c1c1 "), "{}", mine[1].1);
    assert_eq!(f.statuses["c1c1c1c1"][0].1, "success");
}

/// `meshploy serve` of the shop (`deploy/` of a bare repository) whose pull requests get
/// previews (applied, not run: `--runtime none`), with the fake forge keeping their heads.
struct Reviewed {
    db: Db,
    forge: FakeForge,
    repo: crate::util::Remote,
    url: String,
    port: u16,
    _serve: crate::fixtures::Process,
    _dir: Dir,
}

impl Reviewed {
    async fn start(previews: &str) -> Reviewed {
        let (db, dir) = (Db::new(), Dir::new());
        let forge = FakeForge::start(false, 30).await;
        let repo = crate::util::Remote::new();
        repo.write("deploy/project.yaml", PROJECT);
        repo.write("deploy/web.yaml", &service("web", 1));
        repo.push("the shop");
        forge.keep_heads_of(repo.bare());
        let url = format!("file://{}", repo.bare().display());
        let more = format!("    previews:\n      enabled: true\n{previews}");
        let mut command = serve_command(&db, &dir, &url, &forge, &more, &[]);
        let (serve, addresses) =
            crate::fixtures::Process::announced(&mut command, "meshploy serve: API and console on");
        let applied = crate::util::wait_for(std::time::Duration::from_secs(30), || {
            (db.psql("SELECT count(*) FROM services") == "1").then_some(())
        });
        assert!(applied.is_some(), "the main branch was applied");
        Reviewed {
            db,
            forge,
            repo,
            url,
            port: addresses[0].port(),
            _serve: serve,
            _dir: dir,
        }
    }

    /// Pushes pull request `number`'s head, in which `web` has `replicas`; returns it.
    fn head(&self, number: u64, replicas: u32) -> String {
        self.repo
            .write("deploy/web.yaml", &service("web", replicas));
        let commit = self.repo.commit(&format!("{replicas} replicas"));
        self.repo.push_pull(number);
        commit
    }

    /// Sends `body`, signed, as delivery `delivery`: the answer's status and body.
    fn send(&self, delivery: &str, body: &[u8]) -> (u16, String) {
        let signed = crate::serve::signature(body);
        tokio::task::block_in_place(|| github_pull_request(self.port, delivery, &signed, body))
    }

    /// The replicas of `web` in pull request `number`'s preview (empty: there is none).
    fn preview(&self, number: u64) -> String {
        self.db.psql(&format!(
            "SELECT coalesce(max(fields->>'replicas'), '') FROM services WHERE project = 'shop-pr-{number}'"
        ))
    }

    /// Waits up to a minute for `sql` to answer `expected`.
    fn wait_until(&self, sql: &str, expected: &str) {
        let reached = tokio::task::block_in_place(|| {
            crate::util::wait_for(std::time::Duration::from_secs(60), || {
                (self.db.psql(sql) == expected).then_some(())
            })
        });
        assert!(
            reached.is_some(),
            "`{sql}` never answered `{expected}`; last: `{}`",
            self.db.psql(sql)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_or_forged_pull_request_event_moves_nothing_back_and_closes_nothing() {
    let shop = Reviewed::start("").await;
    let comment_of = |head: &str| {
        tokio::task::block_in_place(|| comment_saying(&shop.forge, 7, head, "#### Preview"))
    };
    // Opened at `first`: planned, and its preview made.
    let first = shop.head(7, 2);
    let opened = pull_event(&shop.url, "opened", 7, &first, Some("acme/deploy"));
    assert_eq!(shop.send("d-1", &opened).0, 202);
    comment_of(&first);
    shop.wait_until(
        "SELECT count(*) FROM projects WHERE name = 'shop-pr-7'",
        "1",
    );
    assert_eq!(shop.preview(7), "2");
    // Closed, then reopened with a fix pushed: the preview runs the fix.
    shop.forge.forge().closed.insert(7);
    let closed = pull_event(&shop.url, "closed", 7, &first, Some("acme/deploy"));
    assert_eq!(shop.send("d-2", &closed).0, 202);
    shop.wait_until(
        "SELECT count(*) FROM projects WHERE name = 'shop-pr-7'",
        "0",
    );
    shop.forge.forge().closed.remove(&7);
    let fixed = shop.head(7, 3);
    let pushed = pull_event(&shop.url, "synchronize", 7, &fixed, Some("acme/deploy"));
    assert_eq!(shop.send("d-3", &pushed).0, 202);
    comment_of(&fixed);
    shop.wait_until(
        "SELECT coalesce(max(fields->>'replicas'), '') FROM services WHERE project = 'shop-pr-7'",
        "3",
    );

    // The `opened` body replayed under a new delivery id (which the signature does not
    // cover) is recognised by its signed body.
    let (code, answer) = shop.send("d-4", &opened);
    assert_eq!(code, 200, "{answer}");
    assert!(answer.contains("already processed"), "{answer}");
    // A signed event the server never saw, claiming the old head: a trigger only. The forge
    // says the head is `fixed`, so nothing goes back.
    let mut claimed: Value = serde_json::from_slice(&opened).expect("json");
    claimed["sender"] = json!({"login": "mallory"});
    let claimed = claimed.to_string().into_bytes();
    assert_eq!(shop.send("d-5", &claimed).0, 202);
    shop.wait_until(
        "SELECT head || ' ' || coalesce(reviewed, '') FROM pull_requests WHERE number = 7",
        &format!("{fixed} {fixed}"),
    );
    {
        let f = shop.forge.forge();
        assert_eq!(
            f.statuses[&first].len(),
            1,
            "no second status for the old head"
        );
        let mine: Vec<&(u64, String)> = f.comments["acme/deploy#7"].iter().collect();
        assert_eq!(mine.len(), 1, "{mine:#?}");
        assert!(
            mine[0].1.contains(&format!("head={fixed} ")),
            "{}",
            mine[0].1
        );
    }
    assert_eq!(shop.preview(7), "3", "the preview still runs the fix");

    // The `closed` body replayed: recognised. A close the forge does not confirm: ignored.
    let (code, answer) = shop.send("d-6", &closed);
    assert_eq!(code, 200, "{answer}");
    assert!(answer.contains("already processed"), "{answer}");
    let mut claimed: Value = serde_json::from_slice(&closed).expect("json");
    claimed["sender"] = json!({"login": "mallory"});
    assert_eq!(shop.send("d-7", claimed.to_string().as_bytes()).0, 202);
    shop.wait_until("SELECT state FROM pull_requests WHERE number = 7", "open");
    assert_eq!(shop.preview(7), "3", "the preview was not destroyed");
    // A close the forge confirms destroys it.
    shop.forge.forge().closed.insert(7);
    claimed["sender"] = json!({"login": "alice"});
    assert_eq!(shop.send("d-8", claimed.to_string().as_bytes()).0, 202);
    shop.wait_until(
        "SELECT count(*) FROM projects WHERE name = 'shop-pr-7'",
        "0",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_authors_pull_request_is_planned_but_not_built_until_a_maintainer_approves() {
    let shop = Reviewed::start("").await;
    shop.forge
        .forge()
        .pull_authors
        .insert(9, ("mallory".into(), "CONTRIBUTOR".into()));
    let head = shop.head(9, 4);
    let opened = pull_event(&shop.url, "opened", 9, &head, Some("acme/deploy"));
    assert_eq!(shop.send("u-1", &opened).0, 202);
    let text = tokio::task::block_in_place(|| comment_saying(&shop.forge, 9, &head, ""));
    assert!(text.contains("replicas = 1 -> 4"), "planned: {text}");
    assert!(
        text.contains("No preview: its author `mallory` (CONTRIBUTOR) is not trusted to have code built and run here"),
        "{text}"
    );
    assert!(
        text.contains("adding the label `preview-approved`"),
        "the comment says how to approve: {text}"
    );
    assert_eq!(
        shop.preview(9),
        "",
        "nothing of the head was applied to run"
    );
    // A maintainer labels it: the preview is made.
    shop.forge
        .forge()
        .labels
        .insert(9, vec!["preview-approved".into()]);
    let labeled = pull_event(&shop.url, "labeled", 9, &head, Some("acme/deploy"));
    assert_eq!(shop.send("u-2", &labeled).0, 202);
    tokio::task::block_in_place(|| {
        comment_saying(&shop.forge, 9, &head, "This pull request's preview runs")
    });
    assert_eq!(shop.preview(9), "4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_requests_head_state_and_author_come_from_the_forge_on_github_and_gitea() {
    use forge::Forge;
    let repo = crate::util::Remote::new();
    repo.write("deploy/project.yaml", PROJECT);
    repo.push("the shop");
    let head = repo.commit("a change");
    repo.push_pull(3);
    for gitea in [false, true] {
        let fake = FakeForge::start(gitea, 30).await;
        fake.keep_heads_of(repo.bare());
        let kind = if gitea {
            forge::Kind::Gitea
        } else {
            forge::Kind::GitHub
        };
        let client = forge::Client::new(kind, &fake.base(), TOKEN).expect("a client");
        let pr: forge::PullRef = "acme/deploy#3".parse().expect("a pull request");
        for (login, association, trusted) in [
            ("olivia", "OWNER", true),
            ("mia", "MEMBER", true),
            ("carl", "COLLABORATOR", true),
            ("mallory", "CONTRIBUTOR", false),
            ("nobody", "NONE", false),
        ] {
            fake.forge()
                .pull_authors
                .insert(3, (login.into(), association.into()));
            let pull = client.pull(&pr).await.expect("the pull request");
            assert_eq!(pull.head, head, "gitea {gitea}");
            assert!(pull.open);
            assert!(!pull.fork);
            assert_eq!(pull.author, login);
            let trust = forge::Trust::default();
            assert_eq!(
                trust.trusts(&pull),
                trusted,
                "gitea {gitea}: {login} {association}"
            );
        }
        fake.forge()
            .labels
            .insert(3, vec![forge::Trust::default().label]);
        let pull = client.pull(&pr).await.expect("the pull request");
        assert!(
            forge::Trust::default().trusts(&pull),
            "a maintainer's label approves"
        );
        fake.forge().closed.insert(3);
        fake.forge().forks.insert(3, Some("mallory/deploy".into()));
        let pull = client.pull(&pr).await.expect("the pull request");
        assert!(!pull.open && pull.fork);
        assert_eq!(client.me().await.expect("the token's user"), BOT);
    }
}
