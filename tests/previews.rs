//! Pull requests' preview environments: `meshploy serve` with a forge (the fake one of
//! `forge`), previews on, the local runtime and the real proxy. A pull request's manifests are
//! applied as `<project>-pr-<n>`, built from the pull request's head and served at the
//! rewritten host; closing it, its time running out, or the forge saying it is closed
//! destroys all of it and nothing else.

use std::time::Duration;

use crate::fixtures::Process;
use crate::forge::{FakeForge, comment_saying, github_pull_request, pull_event, serve_command};
use crate::runtime::{APP, Up, get, manifests};
use crate::secret::{encrypt, keygen};
use crate::serve::signature;
use crate::util::{Db, Dir, Remote, git, wait_for};

const SECRET_VALUE: &str = "tok_preview_51c2";

/// A repository holding both the app (`app/`) and its manifests (`deploy/`), as a monorepo
/// does; the service is built from this same repository, so a preview runs the pull
/// request's code.
struct Shop {
    repo: Remote,
    keys: String,
    main: String,
}

impl Shop {
    fn new() -> Shop {
        let repo = Remote::new();
        let keys = keygen("k1");
        let place = ["--project", "shop", "--group", "creds", "--name", "TOKEN"];
        let sealed = encrypt(&keys, &place, SECRET_VALUE.as_bytes());
        assert_eq!(sealed.code, 0, "{}", sealed.stderr);
        repo.write("app/server.py", APP);
        repo.write("app/built.txt", "main\n");
        repo.write(
            "deploy/creds.yaml",
            &format!(
                "apiVersion: meshploy.dev/v1\nkind: VariableGroup\nmetadata:\n  name: creds\n  project: shop\nspec:\n  secrets:\n    TOKEN: {}\n",
                sealed.stdout.trim()
            ),
        );
        let mut shop = Shop {
            repo,
            keys,
            main: String::new(),
        };
        shop.write("live");
        shop.main = shop.repo.push("the shop");
        shop
    }

    fn url(&self) -> String {
        format!("file://{}", self.repo.bare().display())
    }

    /// The shop's manifests, its service answering `message`.
    fn write(&self, message: &str) {
        self.write_running(message, "python3 server.py");
    }

    /// The shop's manifests, its service running `command` and answering `message`.
    fn write_running(&self, message: &str, command: &str) {
        self.repo.write(
            "deploy/shop.yaml",
            &manifests(
                &self.repo.bare(),
                "true",
                &format!("  env:\n    MESSAGE: {message}\n  variableGroups: [creds]\n"),
            )
            .replace("replicas: 2", "replicas: 1")
            .replace("command: python3 server.py", &format!("command: {command}")),
        );
    }

    /// Pull request `number`'s head on top of main, kept as `refs/pull/N/head` of the base
    /// repository as forges do: its service answers `message` and its code says `pull-N`.
    fn pull(&self, number: u64, message: &str) -> String {
        self.pull_running(number, message, "python3 server.py")
    }

    /// [`Shop::pull`], with the service running `command`.
    fn pull_running(&self, number: u64, message: &str, command: &str) -> String {
        self.write_running(message, command);
        self.repo
            .write("app/built.txt", &format!("pull-{number} {message}\n"));
        let head = self.repo.commit(&format!("pull request {number}"));
        self.repo.push_pull(number);
        git(&self.repo.work(), &["reset", "-q", "--hard", &self.main]);
        head
    }

    /// `meshploy serve` on this repository with previews configured by `previews`, and
    /// `args` added.
    fn serve(&self, db: &Db, dir: &Dir, forge: &FakeForge, previews: &str, args: &[&str]) -> Up {
        forge.keep_heads_of(self.repo.bare());
        let previews = format!("    previews:\n{previews}");
        let mut command = serve_command(db, dir, &self.url(), forge, &previews, args);
        command.env("MESHPLOY_SECRET_KEYS", &self.keys);
        Up::announcing(&mut command, "meshploy serve: API and console on")
    }

    /// Sends a signed pull_request webhook for `#number` at `head` to `serve`, from the base
    /// repository itself.
    fn event(&self, serve: &Up, delivery: &str, action: &str, number: u64, head: &str) {
        self.event_from(serve, delivery, (action, number, head), Some("acme/deploy"));
    }

    /// [`Shop::event`] from the head repository `from` (another: a fork; `None`: a deleted
    /// fork).
    fn event_from(
        &self,
        serve: &Up,
        delivery: &str,
        (action, number, head): (&str, u64, &str),
        from: Option<&str>,
    ) {
        let body = pull_event(&self.url(), action, number, head, from);
        let port = serve.address().port();
        let (code, answer) = github_pull_request(port, delivery, &signature(&body), &body);
        assert_eq!(code, 202, "{answer}");
    }
}

/// `meshploy proxy` on the test's database, reloading every second.
fn proxy(db: &Db, dir: &Dir) -> (Process, std::net::SocketAddr) {
    let mut command = db.command(
        dir,
        &[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--resync-interval",
            "1s",
        ],
    );
    let (process, addresses) = Process::announced(&mut command, "meshploy proxy: listening");
    (process, addresses[0])
}

/// Options that run the services, stopping them quickly.
const RUNTIME: [&str; 6] = [
    "--runtime",
    "local",
    "--stop-grace",
    "1s",
    "--drain",
    "200ms",
];

/// `meshploy state list`, as a user compares it.
fn state_list(db: &Db, dir: &Dir) -> String {
    let run = crate::util::Run::new(db.command(dir, &["state", "list"]).output());
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.stdout
}

/// The proxy's answer for `host` and `path`, once it is `expected` (status 200).
fn served(proxy: std::net::SocketAddr, host: &str, path: &str, expected: &str) {
    let answer = wait_for(Duration::from_secs(90), || {
        get(proxy, host, path).filter(|(status, body)| *status == 200 && body == expected)
    });
    assert!(
        answer.is_some(),
        "{host}{path} never answered `{expected}`; last: {:?}",
        get(proxy, host, path)
    );
}

/// The proxy's status for `host` once it no longer answers 200.
fn not_served(proxy: std::net::SocketAddr, host: &str) -> Option<u16> {
    wait_for(Duration::from_secs(30), || {
        get(proxy, host, "/")
            .filter(|(status, _)| *status != 200)
            .map(|(status, _)| status)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_is_built_from_the_pull_request_served_and_destroyed_leaving_live_projects_alone()
{
    let (db, dir, shop) = (Db::new(), Dir::new(), Shop::new());
    let forge = FakeForge::start(false, 30).await;
    // Previews inherit the production secrets of `creds`, by choice.
    let previews = "      enabled: true\n      host: pr-{number}.{host}\n      maxActive: 1\n      scheme: http\n      secrets:\n        creds: inherit\n";
    let serve = shop.serve(&db, &dir, &forge, previews, &RUNTIME);
    let (_proxy, proxy) = proxy(&db, &dir);
    tokio::task::block_in_place(|| {
        served(proxy, "web.test", "/", "live");
        let before = state_list(&db, &dir);

        // Opened: the preview is applied as its own project and source, built from the pull
        // request's head, and served at the rewritten host; the comment lists it.
        let head = shop.pull(7, "preview");
        shop.event(&serve, "p-1", "opened", 7, &head);
        let text = comment_saying(&forge, 7, &head, "#### Preview");
        assert!(
            text.contains("This pull request's preview runs at:\n\n- <http://pr-7.web.test/>\n"),
            "{text}"
        );
        served(proxy, "pr-7.web.test", "/", "preview");
        served(proxy, "pr-7.web.test", "/built", "pull-7 preview");
        // The secret was sealed for `shop` in git and still reaches the copy's process, since
        // the source lets previews inherit it.
        let digest = crate::util::sha256_hex(SECRET_VALUE.as_bytes());
        served(proxy, "pr-7.web.test", "/secret", &digest);
        // The live service still runs main's code.
        served(proxy, "web.test", "/built", "main");
        let during = state_list(&db, &dir);
        assert!(during.contains("project/shop-pr-7"), "{during}");
        assert!(during.contains("shop#pr-7"), "{during}");
        assert!(!during.contains(SECRET_VALUE) && !text.contains(SECRET_VALUE));

        // Over maxActive: the next pull request gets a comment saying why it has none.
        let second = shop.pull(8, "second");
        shop.event(&serve, "p-2", "opened", 8, &second);
        let text = comment_saying(&forge, 8, &second, "No preview:");
        assert!(
            text.contains("source `shop` already runs 1 previews, its `maxActive`"),
            "{text}"
        );
        assert_eq!(
            db.psql("SELECT count(*) FROM projects WHERE name = 'shop-pr-8'"),
            "0"
        );

        // Closed (on the forge, which the server asks before it believes the event):
        // everything of the preview goes, and the live projects are as they were.
        forge.forge().closed.insert(7);
        shop.event(&serve, "p-3", "closed", 7, &head);
        let gone = wait_for(Duration::from_secs(60), || {
            (state_list(&db, &dir) == before).then_some(())
        });
        assert!(
            gone.is_some(),
            "before:\n{before}\nnow:\n{}",
            state_list(&db, &dir)
        );
        assert_eq!(
            not_served(proxy, "pr-7.web.test"),
            Some(404),
            "the preview's host is no longer served"
        );
        served(proxy, "web.test", "/", "live");
        assert_eq!(db.psql("SELECT count(*) FROM previews"), "0");
    });
    drop(serve);

    // A close event that never arrived: on its next start the server asks the forge, which
    // says #8 is closed, so the preview #8 got after #7 closed goes.
    let serve = shop.serve(&db, &dir, &forge, previews, &RUNTIME);
    tokio::task::block_in_place(|| {
        let head = shop.pull(8, "third");
        shop.event(&serve, "p-4", "synchronize", 8, &head);
        comment_saying(&forge, 8, &head, "- <http://pr-8.web.test/>");
        served(proxy, "pr-8.web.test", "/", "third");
    });
    drop(serve);
    forge.forge().closed.insert(8);
    let _serve = shop.serve(&db, &dir, &forge, previews, &RUNTIME);
    tokio::task::block_in_place(|| {
        let gone = wait_for(Duration::from_secs(60), || {
            (db.psql("SELECT count(*) FROM projects WHERE name = 'shop-pr-8'") == "0").then_some(())
        });
        assert!(
            gone.is_some(),
            "the preview of a closed pull request stayed"
        );
        assert_eq!(
            db.psql("SELECT state FROM pull_requests WHERE number = 8"),
            "closed"
        );
        assert!(
            forge
                .forge()
                .calls
                .iter()
                .any(|c| c == "GET /repos/acme/deploy/pulls/8"),
            "the forge was asked"
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_expires_after_its_ttl_until_the_next_push_and_forks_get_none() {
    let (db, dir, shop) = (Db::new(), Dir::new(), Shop::new());
    let forge = FakeForge::start(false, 30).await;
    // Long enough for the preview to be built and served first.
    let previews = "      enabled: true\n      ttl: 20s\n      scheme: http\n";
    let serve = shop.serve(&db, &dir, &forge, previews, &RUNTIME);
    let (_proxy, proxy) = proxy(&db, &dir);
    tokio::task::block_in_place(|| {
        let head = shop.pull(3, "short-lived");
        shop.event(&serve, "t-1", "opened", 3, &head);
        let text = comment_saying(&forge, 3, &head, "- <http://pr-3.web.test/>");
        assert!(text.contains("or after 20s without a push"), "{text}");
        assert_eq!(
            db.psql("SELECT source FROM projects WHERE name = 'shop-pr-3'"),
            "shop#pr-3"
        );
        served(proxy, "pr-3.web.test", "/", "short-lived");
        // Its time runs out: it is destroyed, and the comment says so.
        let text = comment_saying(&forge, 3, &head, "No preview: it was destroyed after 20s");
        assert!(text.contains("push a commit to make it again"), "{text}");
        assert_eq!(
            db.psql("SELECT count(*) FROM projects WHERE name = 'shop-pr-3'"),
            "0"
        );
        assert_eq!(db.psql("SELECT state FROM previews"), "expired");
        assert_eq!(not_served(proxy, "pr-3.web.test"), Some(404));
        served(proxy, "web.test", "/", "live");
        // The next push makes it again.
        let again = shop.pull(3, "again");
        shop.event(&serve, "t-2", "synchronize", 3, &again);
        comment_saying(&forge, 3, &again, "- <http://pr-3.web.test/>");
        served(proxy, "pr-3.web.test", "/", "again");
        assert_eq!(
            db.psql("SELECT fields->>'env.MESSAGE' FROM services WHERE project = 'shop-pr-3'"),
            "again"
        );
        // A head that cannot be planned makes no preview, and leaves the one there is.
        shop.repo.write("deploy/broken.yaml", "kind: [");
        let broken = shop.pull(3, "broken");
        shop.event(&serve, "t-4", "synchronize", 3, &broken);
        let text = comment_saying(
            &forge,
            3,
            &broken,
            "No preview: this commit could not be planned",
        );
        assert!(text.contains("deploy/broken.yaml:1:"), "{text}");
        assert_eq!(
            db.psql("SELECT fields->>'env.MESSAGE' FROM services WHERE project = 'shop-pr-3'"),
            "again"
        );

        // A fork's pull request is planned, but gets no preview: its code would run here. So
        // is one whose fork was deleted (`head.repo` is null).
        for (number, from) in [(4, Some("mallory/deploy")), (5, None)] {
            let fork = shop.pull(number, "from-a-fork");
            forge.forge().forks.insert(number, from.map(str::to_owned));
            let delivery = format!("t-fork-{number}");
            shop.event_from(&serve, &delivery, ("opened", number, &fork), from);
            let text = comment_saying(&forge, number, &fork, "No preview:");
            assert!(
                text.contains("pull requests from forks get no preview"),
                "{text}"
            );
            assert!(text.contains("Plan: "), "the fork is planned: {text}");
        }
        assert_eq!(
            db.psql("SELECT count(*) FROM projects WHERE name IN ('shop-pr-4', 'shop-pr-5')"),
            "0"
        );
    });
}

/// What a pull request's service runs to print the secret `TOKEN` base64-encoded before it
/// serves: what anyone who can push a branch would try.
const LEAK: &str = "echo leak=$(printf %s \"$TOKEN\" | base64) && exec python3 server.py";

/// The captured lines of the newest deployment of `project`'s service, as the API gives
/// them to any reader (`--anonymous-read`), once they hold `expected`.
fn deployment_log(db: &Db, serve: &Up, project: &str, expected: &str) -> String {
    let port = serve.address().port();
    let read = || {
        let id = db.psql(&format!(
            "SELECT coalesce(max(id), 0) FROM deployments WHERE project = '{project}'"
        ));
        let path = format!("/api/v1/deployments/{id}/logs");
        let (code, body) = crate::util::http(port, "GET", &path, &[], b"");
        (code == 200 && body.contains(expected)).then_some(body)
    };
    wait_for(Duration::from_secs(60), read)
        .unwrap_or_else(|| panic!("the log of {project} never held `{expected}`"))
}

fn base64(bytes: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_request_cannot_read_production_secrets_through_its_preview() {
    let (db, dir, shop) = (Db::new(), Dir::new(), Shop::new());
    let forge = FakeForge::start(false, 30).await;
    let previews = "      enabled: true\n      scheme: http\n";
    let mut args = RUNTIME.to_vec();
    args.push("--anonymous-read");
    let serve = shop.serve(&db, &dir, &forge, previews, &args);
    let (_proxy, proxy) = proxy(&db, &dir);
    tokio::task::block_in_place(|| {
        let production = crate::util::sha256_hex(SECRET_VALUE.as_bytes());
        served(proxy, "web.test", "/secret", &production);
        // Someone who can push a branch has the preview print the secret, encoded.
        let head = shop.pull_running(7, "leak", LEAK);
        shop.event(&serve, "l-1", "opened", 7, &head);
        comment_saying(&forge, 7, &head, "- <http://pr-7.web.test/>");
        served(proxy, "pr-7.web.test", "/", "leak");
        let log = deployment_log(&db, &serve, "shop-pr-7", "leak=");
        let encoded = base64(SECRET_VALUE.as_bytes());
        assert!(
            !log.contains(&encoded[..16]) && !log.contains(SECRET_VALUE),
            "the production secret reached the preview's log: {log}"
        );
        // The preview's process has no production secret at all.
        served(
            proxy,
            "pr-7.web.test",
            "/secret",
            &crate::util::sha256_hex(b""),
        );
        served(proxy, "web.test", "/secret", &production);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_gets_the_preview_only_secrets_its_source_names_and_none_of_their_encodings_reach_its_log()
 {
    const PREVIEW_VALUE: &str = "tok_only_for_previews_93";
    let (db, dir, mut shop) = (Db::new(), Dir::new(), Shop::new());
    let place = [
        "--project",
        "shop",
        "--group",
        "creds-preview",
        "--name",
        "TOKEN",
    ];
    let sealed = encrypt(&shop.keys, &place, PREVIEW_VALUE.as_bytes());
    assert_eq!(sealed.code, 0, "{}", sealed.stderr);
    shop.repo.write(
        "deploy/creds-preview.yaml",
        &format!(
            "apiVersion: meshploy.dev/v1\nkind: VariableGroup\nmetadata:\n  name: creds-preview\n  project: shop\nspec:\n  secrets:\n    TOKEN: {}\n",
            sealed.stdout.trim()
        ),
    );
    shop.main = shop.repo.push("a group for previews");
    let forge = FakeForge::start(false, 30).await;
    let previews =
        "      enabled: true\n      scheme: http\n      secrets:\n        creds: creds-preview\n";
    let mut args = RUNTIME.to_vec();
    args.push("--anonymous-read");
    let serve = shop.serve(&db, &dir, &forge, previews, &args);
    let (_proxy, proxy) = proxy(&db, &dir);
    tokio::task::block_in_place(|| {
        let head = shop.pull_running(7, "preview-only", LEAK);
        shop.event(&serve, "o-1", "opened", 7, &head);
        comment_saying(&forge, 7, &head, "- <http://pr-7.web.test/>");
        let preview_only = crate::util::sha256_hex(PREVIEW_VALUE.as_bytes());
        served(proxy, "pr-7.web.test", "/secret", &preview_only);
        // The value it printed, base64-encoded, is redacted like the value itself.
        let log = deployment_log(&db, &serve, "shop-pr-7", "leak=");
        assert!(log.contains("leak=(redacted)"), "{log}");
        let encoded = base64(PREVIEW_VALUE.as_bytes());
        assert!(
            !log.contains(&encoded[..16]) && !log.contains(PREVIEW_VALUE),
            "{log}"
        );
        // Production keeps its own.
        let production = crate::util::sha256_hex(SECRET_VALUE.as_bytes());
        served(proxy, "web.test", "/secret", &production);
    });
}
