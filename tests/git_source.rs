//! `meshploy plan` and `apply` reading a commit's tree (`--repo`), from a local repository,
//! file:// and a real `git daemon`; and ownership between sources.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::fixtures::{PROJECT, Process, listening, route, service, shop_remote};
use crate::util::{Db, Dir, Remote, closed_port, git};

#[test]
fn apply_reads_the_commit_not_the_working_tree_and_records_it() {
    let (remote, first) = shop_remote();
    let db = Db::new();
    let work = remote.work();
    let repo = work.to_str().expect("utf-8 path");
    remote.write("deploy/b.yaml", &service("b", 2));
    let second = remote.commit("b to 2 replicas");
    // Uncommitted: never read.
    remote.write("deploy/c.yaml", &service("c", 9));
    let dir = Dir::new();
    let older = db.meshploy(
        &dir,
        &[
            "apply",
            "--auto-approve",
            "--repo",
            repo,
            "--ref",
            "HEAD~1",
            "--path",
            "deploy",
        ],
    );
    assert_eq!(older.code, 0, "{}", older.stderr);
    assert!(older.stdout.contains("Plan: 5 to add"), "{}", older.stdout);
    let plan = db.meshploy(
        &dir,
        &[
            "plan", "--repo", repo, "--path", "deploy", "--format", "json",
        ],
    );
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let changes = plan.json()["changes"].clone();
    assert_eq!(changes.as_array().map(Vec::len), Some(1), "{changes}");
    assert_eq!(changes[0]["address"], "service/shop/b");
    assert_eq!(changes[0]["fields"][0]["after"], 2);
    let applied = db.meshploy(
        &dir,
        &[
            "apply",
            "--auto-approve",
            "--repo",
            repo,
            "--ref",
            "main",
            "--path",
            "deploy/",
        ],
    );
    assert_eq!(applied.code, 0, "{}", applied.stderr);
    assert_eq!(
        db.psql("SELECT string_agg(commit_id, ',' ORDER BY id) FROM revisions"),
        format!("{first},{second}")
    );
    assert_eq!(
        db.psql("SELECT replicas FROM services WHERE name = 'c'"),
        "1"
    );
    let state = db.meshploy(&dir, &["state", "list"]);
    let line = state
        .stdout
        .lines()
        .find(|l| l.starts_with("service/shop/b "))
        .expect("service b listed");
    assert!(
        line.contains(&format!("commit {}", &second[..12])),
        "{line}"
    );
    assert!(line.contains(&format!("{repo}//deploy")), "{line}");
}

/// A `git daemon` serving the parent of `bare` on a loopback port; killed on drop.
pub struct Daemon {
    _process: Process,
    pub port: u16,
}

impl Daemon {
    /// git daemon cannot bind port 0 and say which port it got, so it is given a port that
    /// was free a moment ago, and started again on another if something took that one.
    pub fn start(remote: &Remote) -> Daemon {
        let base = remote.bare().parent().expect("a parent").to_path_buf();
        for _ in 0..5 {
            let port = closed_port();
            let mut process = Process::spawn(
                Command::new("git")
                    .args([
                        "daemon",
                        "--reuseaddr",
                        "--export-all",
                        "--listen=127.0.0.1",
                    ])
                    .arg(format!("--port={port}"))
                    .arg(format!("--base-path={}", base.display()))
                    .arg(&base)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            );
            if listening(port, Duration::from_secs(10)) && !process.exited() {
                return Daemon {
                    _process: process,
                    port,
                };
            }
        }
        panic!("git daemon did not start on any of five ports");
    }
}

#[test]
fn remote_repositories_are_fetched_over_file_and_git_protocols() {
    let (remote, first) = shop_remote();
    let daemon = Daemon::start(&remote);
    let file_url = format!("file://{}", remote.bare().display());
    let git_url = format!("git://127.0.0.1:{}/bare.git", daemon.port);
    let dir = Dir::new();
    for url in [&file_url, &git_url] {
        let db = Db::new();
        let run = db.meshploy(
            &dir,
            &[
                "apply",
                "--auto-approve",
                "--repo",
                url,
                "--ref",
                "main",
                "--path",
                "deploy",
            ],
        );
        assert_eq!(run.code, 0, "{url}: {}", run.stderr);
        assert_eq!(db.psql("SELECT commit_id FROM revisions"), first, "{url}");
    }
    // A push (here a force-push that rewrites history) is fetched on the next run.
    let db = Db::new();
    remote.write("deploy/c.yaml", &service("c", 4));
    git(
        &remote.work(),
        &["commit", "-q", "--amend", "-a", "-m", "rewritten"],
    );
    git(&remote.work(), &["push", "-q", "-f", "origin", "HEAD:main"]);
    let rewritten = git(&remote.work(), &["rev-parse", "HEAD"]);
    for url in [&git_url, &file_url] {
        let run = db.meshploy(
            &dir,
            &[
                "apply",
                "--auto-approve",
                "--repo",
                url,
                "--ref",
                "main",
                "--path",
                "deploy",
                "--source",
                "shop",
            ],
        );
        assert_eq!(run.code, 0, "{url}: {}", run.stderr);
    }
    assert_eq!(
        db.psql("SELECT string_agg(commit_id, ',') FROM revisions"),
        rewritten
    );
    assert_eq!(
        db.psql("SELECT replicas FROM services WHERE name = 'c'"),
        "4"
    );
}

#[test]
fn unreadable_sources_fail_with_what_and_where() {
    let (remote, commit) = shop_remote();
    let db = Db::new();
    let dir = Dir::new();
    let bare = remote.bare();
    let repo = bare.to_str().expect("utf-8 path");
    let plan = |extra: &[&str]| {
        let mut args = vec!["plan", "--repo", repo];
        args.extend_from_slice(extra);
        db.meshploy(&dir, &args)
    };
    plan(&["--ref", "nope", "--path", "deploy"])
        .assert_fails_with(&format!("`nope` is not a branch, tag or commit in {repo}"));
    plan(&["--path", "missing"]).assert_fails_with(&format!(
        "`missing` does not exist in commit {commit} of {repo}"
    ));
    plan(&["--path", "README.md"]).assert_fails_with("`README.md` in commit");
    plan(&["--path", "README.md"]).assert_fails_with("is not a directory");
    db.meshploy(&dir, &["plan", "--repo", "/nonexistent/repo.git"])
        .assert_fails_with("cannot read git repository /nonexistent/repo.git");
    db.meshploy(&dir, &["plan", "--repo", "file:///nonexistent/repo.git"])
        .assert_fails_with("--ref is required with a repository URL");
    // Credentials in a URL never reach an error message.
    let port = closed_port();
    let url = format!("git://deploy-bot:hunter2-token@127.0.0.1:{port}/bare.git");
    let refused = db.meshploy(&dir, &["plan", "--repo", &url, "--ref", "main"]);
    refused.assert_fails_with(&format!("cannot fetch git://***@127.0.0.1:{port}/bare.git"));
    assert!(!refused.stderr.contains("hunter2"), "{}", refused.stderr);
    // A manifest that does not validate is reported at its path in the repository.
    remote.write(
        "deploy/broken.yaml",
        &service("d", 1).replace("replicas: 1", "replica: 1"),
    );
    let broken = remote.push("broken");
    let invalid = plan(&["--path", "deploy"]);
    invalid.assert_fails_with("deploy/broken.yaml:9:3");
    invalid.assert_fails_with(&format!(
        "the manifests in {repo}@{} are invalid (1 problem)",
        &broken[..12]
    ));
    // A manifest that is a symbolic link is refused rather than skipped.
    remote.remove("deploy/broken.yaml");
    std::os::unix::fs::symlink("a.yaml", remote.work().join("deploy/link.yaml")).expect("symlink");
    remote.push("a link");
    plan(&["--path", "deploy"]).assert_fails_with("deploy/link.yaml` in commit");
    plan(&["--path", "deploy"]).assert_fails_with("is a symbolic link");
}

#[test]
fn a_route_may_not_serve_the_host_and_path_of_another_sources_route() {
    let db = Db::new();
    let (first, second) = (Dir::new(), Dir::new());
    first.write("project.yaml", PROJECT);
    first.write("a.yaml", service("a", 1));
    first.write("route.yaml", route("web", "/api", "a"));
    assert_eq!(db.meshploy(&first, &["apply", "--auto-approve"]).code, 0);
    // Project `blog` routes the same host and path: refused before anything is written, with
    // both routes named (not as a database error).
    let blog = |text: String| {
        text.replace("shop", "blog")
            .replace("blog.example", "shop.example")
    };
    second.write("project.yaml", blog(PROJECT.to_owned()));
    second.write("a.yaml", blog(service("a", 1)));
    second.write("route.yaml", blog(route("web", "/api", "a")));
    let owner = format!(
        "local:{}",
        first.path().canonicalize().expect("canonical").display()
    );
    let expected = format!(
        "route/blog/web routes host `shop.example.com` path `/api`, which route/shop/web of source `{owner}` already routes"
    );
    let refused = db.meshploy(&second, &["apply", "--auto-approve"]);
    refused.assert_fails_with(&expected);
    assert!(!refused.stderr.contains("database"), "{}", refused.stderr);
    db.meshploy(&second, &["plan"]).assert_fails_with(&expected);
    assert_eq!(db.psql("SELECT count(*) FROM revisions"), "1");
    assert_eq!(
        db.psql("SELECT string_agg(project, ',') FROM routes"),
        "shop"
    );
    // Another path on the same host is the blog's to take.
    second.write("route.yaml", blog(route("web", "/blog", "a")));
    assert_eq!(db.meshploy(&second, &["apply", "--auto-approve"]).code, 0);
    assert_eq!(
        db.psql("SELECT string_agg(project || path, ',' ORDER BY path) FROM routes"),
        "shop/api,blog/blog"
    );
}

#[test]
fn a_source_never_touches_what_another_owns() {
    let db = Db::new();
    let (first, second) = (Dir::new(), Dir::new());
    first.write("project.yaml", PROJECT);
    first.write("a.yaml", service("a", 1));
    assert_eq!(db.meshploy(&first, &["apply", "--auto-approve"]).code, 0);
    // The same project declared by a second source: refused, both named, nothing written.
    second.write("project.yaml", PROJECT);
    second.write("b.yaml", service("b", 1));
    let conflict = db.meshploy(&second, &["apply", "--auto-approve"]);
    let owner = format!(
        "local:{}",
        first.path().canonicalize().expect("canonical").display()
    );
    let claimant = format!(
        "local:{}",
        second.path().canonicalize().expect("canonical").display()
    );
    conflict.assert_fails_with(&format!(
        "source `{claimant}` declares resources that another source owns"
    ));
    conflict.assert_fails_with(&format!("project/shop is owned by source `{owner}`"));
    db.meshploy(&second, &["plan"])
        .assert_fails_with("project/shop is owned by source");
    assert_eq!(db.psql("SELECT count(*) FROM revisions"), "1");
    assert_eq!(db.psql("SELECT string_agg(name, ',') FROM services"), "a");
    // A project of its own is fine, and neither source's applies touch the other's.
    second.write("project.yaml", PROJECT.replace("shop", "blog"));
    second.write(
        "b.yaml",
        service("b", 1).replace("project: shop", "project: blog"),
    );
    assert_eq!(db.meshploy(&second, &["apply", "--auto-approve"]).code, 0);
    first.write("a.yaml", service("a", 2));
    let again = db.meshploy(&first, &["apply", "--auto-approve"]);
    assert!(
        again
            .stdout
            .contains("Plan: 0 to add, 1 to change, 0 to destroy."),
        "{}",
        again.stdout
    );
    assert_eq!(
        db.psql("SELECT string_agg(project || '/' || name, ',' ORDER BY name) FROM services"),
        "shop/a,blog/b"
    );
}

#[test]
fn tokens_in_query_strings_and_passwords_with_slashes_never_reach_a_message() {
    let db = Db::new();
    let dir = Dir::new();
    let port = closed_port();
    for (url, shown) in [
        (
            format!("http://127.0.0.1:{port}/x.git?access_token=hunter2-token"),
            format!("http://127.0.0.1:{port}/x.git?***"),
        ),
        (
            format!("http://deploy-bot:pass/word-hunter2@127.0.0.1:{port}/x.git"),
            format!("http://***@127.0.0.1:{port}/x.git"),
        ),
    ] {
        let refused = db.meshploy(&dir, &["plan", "--repo", &url, "--ref", "main"]);
        refused.assert_fails_with(&format!("cannot fetch {shown}"));
        assert!(!refused.stderr.contains("hunter2"), "{}", refused.stderr);
    }
}

#[test]
fn the_cache_of_fetched_repositories_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let (remote, _) = shop_remote();
    let db = Db::new();
    let url = format!("file://{}", remote.bare().display());
    let run = db.meshploy(
        &Dir::new(),
        &["plan", "--repo", &url, "--ref", "main", "--path", "deploy"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mode = std::fs::metadata(db.home().join("git"))
        .expect("the cache")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "cache mode {mode:o}");
}

#[test]
fn a_route_inside_another_sources_route_cannot_take_its_traffic() {
    let db = Db::new();
    let (first, second) = (Dir::new(), Dir::new());
    first.write("project.yaml", PROJECT);
    first.write("a.yaml", service("a", 1));
    first.write("route.yaml", route("web", "/app", "a"));
    let wildcard = route("wild", "/", "a").replace("shop.example.com", "\"*.wild.test\"");
    first.write("wild.yaml", wildcard);
    assert_eq!(db.meshploy(&first, &["apply", "--auto-approve"]).code, 0);
    let owner = format!(
        "local:{}",
        first.path().canonicalize().expect("canonical").display()
    );
    let blog = |text: String| {
        text.replace("shop", "blog")
            .replace("blog.example", "shop.example")
    };
    second.write("project.yaml", blog(PROJECT.to_owned()));
    second.write("a.yaml", blog(service("a", 1)));
    // A longer prefix on the same host would win `/app/login` from the shop's `/app`.
    second.write("route.yaml", blog(route("login", "/app/login", "a")));
    db.meshploy(&second, &["apply", "--auto-approve"]).assert_fails_with(&format!(
        "route/blog/login routes host `shop.example.com` path `/app/login`, inside host `shop.example.com` path `/app` that route/shop/web of source `{owner}` routes"
    ));
    // An exact host under the shop's wildcard would win all of that host.
    second.write(
        "route.yaml",
        blog(route("x", "/", "a")).replace("shop.example.com", "x.wild.test"),
    );
    db.meshploy(&second, &["apply", "--auto-approve"]).assert_fails_with(&format!(
        "route/blog/x routes host `x.wild.test` path `/`, inside host `*.wild.test` path `/` that route/shop/wild of source `{owner}` routes"
    ));
    assert_eq!(db.psql("SELECT count(*) FROM revisions"), "1");
    // Within one source, nesting is how routes are written.
    first.write("login.yaml", route("login", "/app/login", "a"));
    assert_eq!(db.meshploy(&first, &["apply", "--auto-approve"]).code, 0);
}

/// A repository whose `main` holds `entries` manifest names all pointing at one blob of
/// `blob_bytes` bytes, made with git plumbing (no work tree holds the copies).
fn repeated_blob_repo(entries: usize, blob_bytes: usize) -> tempfile::TempDir {
    let dir = crate::util::open_tempdir();
    let repo = dir.path();
    git(repo, &["init", "-q", "-b", "main"]);
    let blob = repo.join("blob");
    std::fs::write(&blob, format!("# {}\n", "x".repeat(blob_bytes - 3))).expect("blob");
    let id = git(repo, &["hash-object", "-w", "blob"]);
    let listing: String = (0..entries)
        .map(|i| format!("100644 blob {id}\tm{i:05}.yaml\n"))
        .collect();
    std::fs::write(repo.join("listing"), listing).expect("listing");
    let output = std::process::Command::new("sh")
        .current_dir(repo)
        .args(["-c", "git mktree < listing"])
        .output()
        .expect("git mktree");
    assert!(output.status.success(), "{output:?}");
    let tree = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let commit = git(repo, &["commit-tree", &tree, "-m", "hostile"]);
    git(repo, &["update-ref", "refs/heads/main", &commit]);
    dir
}

#[test]
fn a_hostile_repository_is_refused_by_size_before_its_blobs_are_read() {
    let db = Db::new();
    let dir = Dir::new();
    // 3,000 names for one 1 MiB blob: 3 GB if read; refused from the object headers.
    let many = repeated_blob_repo(3_000, 1024 * 1024);
    let repo = many.path().to_str().expect("utf-8 path");
    db.meshploy(&dir, &["plan", "--repo", repo, "--ref", "main"])
        .assert_fails_with("holds 3145728000 bytes of manifests; one read is limited to 67108864");
    // One blob of 5 MB: reported at its real size, never inflated.
    let big = repeated_blob_repo(1, 5 * 1024 * 1024);
    let repo = big.path().to_str().expect("utf-8 path");
    db.meshploy(&dir, &["plan", "--repo", repo, "--ref", "main"])
        .assert_fails_with("file is 5242880 bytes; manifest files are limited to 1048576 bytes");
}

#[test]
fn a_directory_in_a_clone_is_owned_by_its_repository_and_moves_only_by_adoption() {
    let (db, dir, remote) = (Db::new(), Dir::new(), Remote::new());
    remote.write("deploy/project.yaml", PROJECT);
    remote.write("deploy/a.yaml", &service("a", 1));
    remote.push("shop");
    let deploy = remote.work().join("deploy").display().to_string();
    let applied = db.meshploy(&dir, &["apply", &deploy, "--auto-approve"]);
    assert_eq!(applied.code, 0, "{}", applied.stderr);
    // The identity is the clone's remote and the path in it, whoever cloned it where.
    let identity = format!("{}//deploy", remote.bare().display());
    assert_eq!(
        db.psql("SELECT DISTINCT source FROM services"),
        identity,
        "the owner is the repository, not the directory"
    );
    let other = dir.path().join("elsewhere");
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            &remote.bare().display().to_string(),
            "elsewhere",
        ],
    );
    let plan = db.meshploy(&dir, &["plan", &other.join("deploy").display().to_string()]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert!(plan.stdout.contains("No changes."), "{}", plan.stdout);

    // A copy outside any work tree is another source: refused, with the way to take over.
    let copy = Dir::new();
    copy.write("project.yaml", PROJECT);
    copy.write("a.yaml", service("a", 2));
    let refused = db.meshploy(&copy, &["plan"]);
    refused.assert_fails_with(&format!("project/shop is owned by source `{identity}`"));
    refused.assert_fails_with("--adopt-from SOURCE");
    db.meshploy(&copy, &["plan", "--adopt-from", "nobody"])
        .assert_fails_with("source `nobody` owns nothing to adopt");
    let adopting = db.meshploy(&copy, &["plan", "--adopt-from", &identity]);
    assert_eq!(adopting.code, 0, "{}", adopting.stderr);
    assert!(
        adopting
            .stdout
            .contains(&format!("# adopted from source {identity}:"))
            && adopting.stdout.contains("> service/shop/a")
            && adopting.stdout.contains(&format!(
                "Plan: 0 to add, 1 to change, 0 to destroy. 2 adopted from {identity}."
            )),
        "{}",
        adopting.stdout
    );
    let json = db
        .meshploy(
            &copy,
            &["plan", "--adopt-from", &identity, "--format", "json"],
        )
        .json();
    assert_eq!(json["adoption"]["from"], identity.as_str());
    assert_eq!(json["adoption"]["resources"][0], "project/shop");
    // Nothing moved until applied; then everything did, and the old owner holds nothing.
    assert_eq!(db.psql("SELECT DISTINCT source FROM projects"), identity);
    let took = db.meshploy(
        &copy,
        &["apply", "--auto-approve", "--adopt-from", &identity],
    );
    assert_eq!(took.code, 0, "{}", took.stderr);
    let owner = format!(
        "local:{}",
        copy.path().canonicalize().expect("canonical").display()
    );
    assert_eq!(
        db.psql("SELECT string_agg(DISTINCT source, ',') FROM (SELECT source FROM projects UNION ALL SELECT source FROM services) s"),
        owner
    );
    assert_eq!(db.psql("SELECT replicas FROM services"), "2");
    let back = db.meshploy(&dir, &["plan", &other.join("deploy").display().to_string()]);
    back.assert_fails_with(&format!("project/shop is owned by source `{owner}`"));
}
