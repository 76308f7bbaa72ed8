//! Command-line arguments. Parsing only validates; the commands do the work.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Meshploy: a GitOps platform. Projects, services, routes and variable groups are YAML in a
/// git repository; every change is a reviewable plan.
#[derive(Debug, Parser)]
#[command(name = "meshploy", version, propagate_version = true)]
pub struct Cli {
    /// Log as JSON lines instead of text (logs go to standard error; RUST_LOG sets the level).
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check manifests: syntax, fields, names, references. Exits 0 when valid, 1 when not.
    Validate {
        /// Directory holding the manifests (`*.yaml`, `*.yml`, searched recursively).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Show what applying the manifests would change in the platform's state.
    Plan(PlanArgs),
    /// Apply the manifests (or a plan saved with `plan --out`) in one transaction.
    Apply(ApplyArgs),
    /// List applied revisions, newest first.
    History {
        /// How many revisions to list.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Show one revision: who applied what, when, and its plan.
    Show {
        /// Revision number, as listed by `meshploy history`.
        revision: i64,
        #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
        format: PlanFormat,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Inspect the state stored in PostgreSQL.
    #[command(subcommand)]
    State(StateCommand),
    /// Run the database migrations (they also run before every command that uses the database).
    Migrate {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Manage the embedded PostgreSQL server used when no --database-url is given.
    Db {
        #[command(subcommand)]
        command: DbCommand,
        /// Meshploy's data directory; the embedded database lives in its `postgres` directory.
        /// Default: ~/.local/share/meshploy (/var/lib/meshploy when run as root).
        #[arg(long, env = "MESHPLOY_HOME")]
        home: Option<PathBuf>,
    },
    /// Run the reconciler: follow git sources and apply each new commit, with the HTTP API
    /// (health, push webhooks, sync requests). Several may run against one database; one leads.
    Serve(ServeArgs),
    /// Run the reverse proxy: route requests by host and path to services' endpoints or
    /// upstream URLs, with the route table kept in memory and followed from PostgreSQL.
    Proxy(ProxyArgs),
    /// Run the whole platform on this machine: the embedded database, DIR applied on every
    /// edit (or --repo followed), builds and deployments as local processes, the proxy and
    /// the API. Ctrl-C stops it all.
    Up(Box<UpArgs>),

    /// List deployments, newest first: state, trigger, release, timings and failure reasons.
    Deployments {
        /// A service, as `project/name` (or `name` when only one project has it).
        service: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Print a service's logs: its serving deployment's replicas, or a build's.
    Logs(LogsArgs),
    /// Deploy an earlier healthy release of a service and pin it there until the next change
    /// to the service in git.
    Rollback {
        /// The service, as `project/name` (or `name` when only one project has it).
        service: String,
        /// The deployment to return to. Default: the newest healthy one before the current.
        #[arg(long, value_name = "DEPLOYMENT")]
        to: Option<i64>,
        /// How long to wait for the rollback to be healthy (0 to return at once).
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        wait: Duration,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Show each git source's sync status: last seen and applied commits, state, errors.
    Status {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Manage sources: forget one that no longer exists.
    #[command(subcommand)]
    Source(SourceCommand),
    /// Ask the running reconciler to sync a source now, and wait for the outcome.
    Sync {
        /// The source's name, as `meshploy status` lists it.
        source: String,
        /// How long to wait for the attempt to finish.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        wait: Duration,
        /// Return once the request is sent.
        #[arg(long, conflicts_with = "wait")]
        no_wait: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Print the JSON Schema of a manifest document, for editors and tools.
    Schema,
    /// Print the API's OpenAPI 3.1 document (also served at /api/v1/openapi.json).
    Openapi,
    /// Make keys and seal secrets for variable groups.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Make, list and revoke API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// Where the state lives.
#[derive(Debug, Args)]
pub struct DbArgs {
    /// PostgreSQL connection URL. Without it, Meshploy uses its embedded database, starting it
    /// on first use.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Meshploy's data directory; the embedded database lives in its `postgres` directory.
    /// Default: ~/.local/share/meshploy (/var/lib/meshploy when run as root).
    #[arg(long, env = "MESHPLOY_HOME")]
    pub home: Option<PathBuf>,
}

/// The keys that open secrets: `id:key` pairs, primary first.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// Keys as `id:key[,id:key...]`; the first one seals.
    #[arg(long, env = "MESHPLOY_SECRET_KEYS", hide_env_values = true)]
    pub secret_keys: Option<String>,
    /// A file holding the keys, one `id:key` per line (instead of --secret-keys).
    #[arg(
        long,
        env = "MESHPLOY_SECRET_KEYS_FILE",
        conflicts_with = "secret_keys"
    )]
    pub secret_keys_file: Option<PathBuf>,
}

/// What may be destroyed without asking.
#[derive(Debug, Args)]
pub struct GuardArgs {
    /// Allow a plan that destroys a whole project or more than --max-destroy-percent of the
    /// managed resources. Protected resources can never be destroyed.
    #[arg(long)]
    pub allow_destroy: bool,
    /// Largest share of the managed resources one plan may destroy without --allow-destroy.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub max_destroy_percent: u8,
}

/// Where the manifests come from when they are not a directory, and who owns what they
/// declare.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Read the manifests from a git repository's commit instead of a directory: a local
    /// path (bare or not), or a file://, git://, https:// or ssh:// URL (fetched into a cache
    /// under MESHPLOY_HOME).
    #[arg(long, value_name = "PATH|URL")]
    pub repo: Option<String>,
    /// Branch, tag or commit to read from --repo. Default: HEAD of a local repository;
    /// required for a URL.
    #[arg(long = "ref", value_name = "REF", requires = "repo")]
    pub reference: Option<String>,
    /// Directory inside --repo that holds the manifests. Default: the repository's root.
    #[arg(long, value_name = "DIR", requires = "repo", default_value = "")]
    pub path: String,
    /// The source that owns what this writes; a source never changes what another owns.
    /// Default: for a directory in a git work tree, its remote's URL and `//PATH` in the
    /// repository (the same for every clone); for another directory, `local:<directory>`;
    /// with --repo, the repository URL (and `//DIR`). Use the name of a `meshploy serve`
    /// source to act as that source.
    #[arg(long, value_name = "NAME")]
    pub source: Option<String>,
    /// Take over every resource SOURCE owns (a renamed or moved source): the plan lists
    /// them, and the apply makes them this source's, deleting those it no longer declares.
    #[arg(long, value_name = "SOURCE")]
    pub adopt_from: Option<String>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Directory holding the manifests.
    #[arg(default_value = ".", conflicts_with = "repo")]
    pub dir: PathBuf,
    #[command(flatten)]
    pub from: SourceArgs,
    /// Exit 0 when there are no changes, 2 when there are, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Save the plan to FILE, for `meshploy apply FILE`.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    pub format: PlanFormat,
    #[command(flatten)]
    pub guard: GuardArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub comment: CommentArgs,
}

/// Posting the plan to a pull request from CI, as the server does for webhooks.
#[derive(Debug, Args)]
pub struct CommentArgs {
    /// Post the plan as the pull request's plan comment (created once, then edited in place)
    /// and set the commit status `meshploy/plan/SOURCE`.
    #[arg(long, value_name = "OWNER/NAME#N")]
    pub comment: Option<forge::PullRef>,
    /// The pull request's head commit, which the status is set on. Default: the commit the
    /// manifests were read from (with --repo).
    #[arg(long, value_name = "SHA", requires = "comment")]
    pub head: Option<String>,
    #[arg(long, value_enum, default_value_t = ForgeKind::Github, requires = "comment")]
    pub forge: ForgeKind,
    /// The forge's API base URL. Default for GitHub: `GITHUB_API_URL`, else
    /// https://api.github.com; Gitea needs it (`https://HOST/api/v1`).
    #[arg(long, value_name = "URL", requires = "comment")]
    pub forge_api: Option<String>,
    /// A file holding the forge token. Default: MESHPLOY_FORGE_TOKEN, else GITHUB_TOKEN.
    #[arg(long, value_name = "FILE", requires = "comment")]
    pub forge_token_file: Option<PathBuf>,
    /// The token's user, whose comments are Meshploy's; for tokens that may not ask the
    /// forge who they are, such as GitHub Actions' GITHUB_TOKEN (`github-actions[bot]`).
    /// Default: asked of the forge (`GET /user`).
    #[arg(
        long,
        value_name = "LOGIN",
        env = "MESHPLOY_FORGE_USER",
        requires = "comment"
    )]
    pub forge_user: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ForgeKind {
    /// GitHub or GitHub Enterprise.
    Github,
    /// Gitea or Forgejo.
    Gitea,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A directory of manifests, or a plan file saved with `meshploy plan --out`.
    #[arg(default_value = ".", conflicts_with = "repo")]
    pub target: PathBuf,
    #[command(flatten)]
    pub from: SourceArgs,
    /// Apply without asking for confirmation.
    #[arg(long)]
    pub auto_approve: bool,
    /// How long to wait for another apply to finish, such as `30s`, `500ms` or `2m`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
    /// Who applies, recorded in the revision. Default: USER@hostname.
    #[arg(long, env = "MESHPLOY_ACTOR")]
    pub actor: Option<String>,
    #[command(flatten)]
    pub guard: GuardArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A YAML file listing the sources to track (see the README); instead of --repo.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "repo",
        required_unless_present = "repo"
    )]
    pub config: Option<PathBuf>,
    /// The one repository to track: a local path or a file://, git://, https:// or ssh:// URL.
    #[arg(long, value_name = "PATH|URL")]
    pub repo: Option<String>,
    /// Name of the source (owns what it declares). Default: the repository's name.
    #[arg(long, requires = "repo")]
    pub name: Option<String>,
    /// Branch to follow.
    #[arg(long, default_value = "main", requires = "repo")]
    pub branch: String,
    /// Directory inside the repository holding the manifests. Default: the root.
    #[arg(long, default_value = "", requires = "repo")]
    pub path: String,
    /// `auto` applies each new commit; `manual` only plans and reports out-of-sync.
    #[arg(long, default_value_t = reconciler::names::Policy::Auto, requires = "repo")]
    pub policy: reconciler::names::Policy,
    /// How often to check sources when no webhook or file change says so.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Address for the HTTP API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// How long a client may take to send a request head; it also bounds how long an idle
    /// kept-alive connection stays open.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// How long a request may take, body included, before it is answered with 408.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Connections the API keeps open at once; past it, new ones are closed at once, so idle
    /// clients cannot exhaust the file descriptors that reconciling needs.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Connections one client address may keep open at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_ip: u32,
    /// Secret GitHub signs push webhooks with (X-Hub-Signature-256). Without it, webhooks
    /// are refused.
    #[arg(long, env = "MESHPLOY_WEBHOOK_SECRET", hide_env_values = true, value_parser = secret_value)]
    pub webhook_secret: Option<String>,
    /// A bearer token with scope `operate` besides those of `meshploy token create` (for
    /// `POST /api/v1/sources/NAME/sync` from CI).
    #[arg(long, env = "MESHPLOY_API_TOKEN", hide_env_values = true, value_parser = secret_value)]
    pub api_token: Option<String>,
    /// Let requests without a token read the API (never write).
    #[arg(long)]
    pub anonymous_read: bool,
    /// The console's address as people reach it (`https://meshploy.example.com`): pull
    /// requests' commit statuses link to their page there, and its host is one the API and
    /// console answer to.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Another host name the API and console answer to (repeat, or comma-separate). Without
    /// it they answer only `localhost`, IP addresses and --public-url's host, so that no
    /// other site's page can reach them through a name it points here (DNS rebinding).
    #[arg(
        long,
        value_name = "NAME",
        value_delimiter = ',',
        env = "MESHPLOY_ALLOW_HOSTS"
    )]
    pub allow_host: Vec<String>,
    /// How long a sync waits for another apply to finish.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
    /// What runs the applied services: `none` (another process does), or `local`: the
    /// leader builds and runs them as processes on its machine, as `meshploy up` does.
    #[arg(long, value_enum, default_value_t = RuntimeKind::None)]
    pub runtime: RuntimeKind,
    #[command(flatten)]
    pub runtime_options: RuntimeOptions,
    #[command(flatten)]
    pub guard: GuardArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    None,
    Local,
}

/// How builds and deployments run; `up` and `serve --runtime local` share them.
#[derive(Debug, Args)]
pub struct RuntimeOptions {
    /// The longest a build may run.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub build_timeout: Duration,
    /// The longest a new release may take to be healthy before it fails.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub rollout_timeout: Duration,
    /// How long replaced replicas keep serving requests already sent to them.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub drain: Duration,
    /// From SIGTERM to SIGKILL when a replica is stopped.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub stop_grace: Duration,
    /// Lines kept per build log and per replica log (the oldest go first).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(2..))]
    pub log_lines: u64,
    /// Bytes of logs kept per service, over all its deployments and replicas, and per build
    /// (the oldest go first).
    #[arg(long, default_value = "64MiB", value_parser = log_budget)]
    pub log_budget: u64,
    /// Bytes per second one replica or build may log; faster output is dropped, and a line
    /// says how much.
    #[arg(long, default_value = "256KiB", value_parser = log_rate)]
    pub log_rate: u64,
    /// When Meshploy runs as root, who replicas run as: `auto` (a uid of their own per
    /// deployment, with no /etc/passwd entry) or the name of an unprivileged user.
    #[arg(long, env = "MESHPLOY_RUN_AS", value_name = "auto|USER")]
    pub run_as: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Directory holding the manifests; edits are applied as they are saved.
    #[arg(default_value = ".", conflicts_with = "repo")]
    pub dir: PathBuf,
    /// Follow a repository's branch instead, as `meshploy serve --repo` does.
    #[arg(long, value_name = "PATH|URL")]
    pub repo: Option<String>,
    /// Name of the --repo source. Default: `up`.
    #[arg(long, requires = "repo")]
    pub name: Option<String>,
    /// Branch of --repo to follow.
    #[arg(long, default_value = "main", requires = "repo")]
    pub branch: String,
    /// Directory inside --repo holding the manifests.
    #[arg(long, default_value = "", requires = "repo")]
    pub path: String,
    /// Take over every resource SOURCE owns with the first apply of DIR (see `apply`).
    #[arg(long, value_name = "SOURCE", conflicts_with = "repo")]
    pub adopt_from: Option<String>,
    /// How often to fetch --repo, and remote service sources, for new commits.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Address for the HTTP API.
    #[arg(long, default_value = "127.0.0.1:8001")]
    pub api_listen: std::net::SocketAddr,
    /// Let requests without a token read the API (never write).
    #[arg(long)]
    pub anonymous_read: bool,
    #[command(flatten)]
    pub runtime: RuntimeOptions,
    #[command(flatten)]
    pub proxy: ProxyOptions,
    #[command(flatten)]
    pub guard: GuardArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The service, as `project/name` (or `name` when only one project has it).
    pub service: String,
    /// Keep printing new lines as they are captured.
    #[arg(long, short)]
    pub follow: bool,
    /// A deployment of the service. Default: the healthy one, else the newest.
    #[arg(long, value_name = "N")]
    pub deployment: Option<i64>,
    /// The deployment's build log instead of its replicas'.
    #[arg(long)]
    pub build: bool,
    /// How many of the last lines to print first.
    #[arg(long, default_value_t = 200)]
    pub tail: i64,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    #[command(flatten)]
    pub proxy: ProxyOptions,
    #[command(flatten)]
    pub db: DbArgs,
}

/// How the proxy listens, times out and forwards; `proxy` and `up` share them.
#[derive(Debug, Args)]
pub struct ProxyOptions {
    /// Address for traffic (HTTP/1.1 and h2c).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: std::net::SocketAddr,
    /// Address for `/metrics` (Prometheus) and `/healthz`, apart from traffic.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub admin_listen: std::net::SocketAddr,
    /// Reload the whole route table this often, even without change notifications.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub resync_interval: Duration,
    /// How long connecting to an upstream or endpoint may take.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// How long an upstream may take to send its response headers (then 504).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,
    /// How long a client may take to send a request's headers, and to start the next
    /// request on a kept-alive connection.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Close a connection after this long without a byte either way.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// On SIGTERM, how long open requests may take to finish.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// How long an endpoint that refused a connection or timed out is skipped.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub eject_for: Duration,
    /// Largest request head (request line and headers), in bytes; larger gets 431.
    #[arg(long, default_value_t = 32 * 1024, value_parser = clap::value_parser!(u32).range(8192..=1_048_576))]
    pub max_header_size: u32,
    /// Log every request (method, URI, status, duration, request id) at info level.
    #[arg(long)]
    pub access_log: bool,
    /// Threads serving traffic (default: one per core).
    #[arg(long)]
    pub workers: Option<std::num::NonZeroUsize>,
    /// Load balancers in front (addresses or networks, comma-separated, like 10.0.0.0/8):
    /// their Forwarded, X-Real-IP and X-Forwarded-Port headers are kept. From other clients
    /// they are dropped, and X-Real-IP is set to the client's address.
    #[arg(long, value_delimiter = ',', env = "MESHPLOY_TRUSTED_PROXIES")]
    pub trusted_proxies: Vec<proxy::Cidr>,
    /// Networks a route's `upstream` may reach although they are not public (comma-separated,
    /// like 10.20.0.0/16): without it, an upstream resolving to a loopback, link-local,
    /// private or unspecified address is refused (502), since everyone who reaches the proxy
    /// would reach it. The platform's own ports are refused even then.
    #[arg(long, value_delimiter = ',', env = "MESHPLOY_ALLOW_UPSTREAMS")]
    pub allow_upstream: Vec<proxy::Cidr>,
    /// Upgrade protocols spliced through to backends (comma-separated). Other upgrades, h2c
    /// among them, are forwarded as plain requests.
    #[arg(long, value_delimiter = ',', default_value = "websocket")]
    pub upgrade_protocols: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum SourceCommand {
    /// Forget a source (one `meshploy serve` registered, or one that applied a directory)
    /// with its sync history. A source that still owns resources is refused unless
    /// --destroy says to destroy them; to keep them, let another source take them over
    /// first (`meshploy apply DIR --adopt-from NAME`).
    Remove {
        /// The source's name, as `meshploy status` lists it.
        name: String,
        /// Destroy every resource the source owns, in one applied revision (whole projects
        /// included; a protected resource still refuses).
        #[arg(long)]
        destroy: bool,
        /// How long to wait for another apply to finish.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        lock_timeout: Duration,
        /// Who removes it, recorded in the revision. Default: USER@hostname.
        #[arg(long, env = "MESHPLOY_ACTOR")]
        actor: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// List every stored resource with its version, the revision that wrote it and its owner.
    List {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum DbCommand {
    /// Create the embedded database if needed and start it.
    Start,
    /// Stop the embedded database.
    Stop,
    /// Say whether the embedded database exists and runs.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Print a new random key as `ID:KEY`, ready for MESHPLOY_SECRET_KEYS.
    Keygen {
        /// Key id, recorded in every envelope sealed with the key.
        #[arg(long, default_value = "k1")]
        id: String,
    },
    /// Seal a secret read from standard input and print the envelope to paste into a
    /// VariableGroup's `secrets`. One trailing newline is removed from the input.
    Encrypt {
        /// Project of the variable group.
        #[arg(long)]
        project: String,
        /// Variable group the secret belongs to.
        #[arg(long)]
        group: String,
        /// Name of the secret (an environment variable name).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Re-seal every secret stored in PostgreSQL under the primary (first) key, so older
    /// keys can be retired.
    Reseal {
        #[command(flatten)]
        keys: KeyArgs,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it; it is shown this once (only its SHA-256 digest is kept).
    Create {
        /// A name for the token, shown in logs and `token list` (letters, digits, `.`, `_`,
        /// `-`).
        #[arg(long)]
        name: String,
        /// `read` sees everything the API shows; `operate` also syncs and rolls back;
        /// `admin` may do everything.
        #[arg(long)]
        scope: reconciler::names::TokenScope,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List the tokens: name, scope, when made and last used.
    List {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revoke a token: it stops working at once.
    Revoke {
        /// The token's name.
        name: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// Machine-readable JSON.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    /// Terraform-style text, coloured on a terminal.
    Text,
    /// The documented JSON form (`formatVersion` 1).
    Json,
    /// Markdown for a pull-request comment.
    Markdown,
}

/// `30s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |i| text.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 30s, 500ms or 2m"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("`{text}` has an unknown unit (use ms, s, m or h)")),
    }
}

/// A log budget: at least 64 KiB, so that a few lines always fit.
fn log_budget(text: &str) -> Result<u64, String> {
    at_least(text, 64 << 10)
}

/// A log rate: at least 8 KiB per second, the longest line Meshploy keeps.
fn log_rate(text: &str) -> Result<u64, String> {
    at_least(text, builder::MAX_LINE as u64)
}

fn at_least(text: &str, floor: u64) -> Result<u64, String> {
    let n = report::parse_bytes(text)?;
    if n < floor {
        return Err(format!(
            "is below the least allowed, {}",
            report::bytes(floor)
        ));
    }
    Ok(n)
}

/// A secret or token: anything but empty, since an empty key would let anyone sign or
/// authenticate. (Leave the option out to turn the feature off.)
fn secret_value(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        Err("is empty; give a secret, or leave the option (and its variable) unset to turn this off".into())
    } else {
        Ok(text.to_owned())
    }
}
