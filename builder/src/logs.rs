//! Captured output into PostgreSQL as it arrives, and read back.
//!
//! One writer task per stream (a build, or one replica of a deployment) batches lines for at
//! most 200 ms or 500 lines, so a crash loses at most the last moment. Three bounds keep one
//! noisy service from growing the database ([`Budget`]):
//! - a rate per stream: output past it is dropped where it arrives, and one marker line says
//!   how many lines were dropped once output slows down;
//! - a byte budget per service (all its deployments and replicas; a build has its own): past
//!   it the oldest lines go, down to three quarters of it, each stream's loss said by a
//!   marker;
//! - a line limit per stream: past it the oldest go, and one marker line says how many.
//!
//! The channel into the writer is bounded, so a process that writes faster than the
//! database stores (but within its rate) waits on its pipe rather than growing memory.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, PgPool};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::Error;
use crate::error::db;

/// Whose output a stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    Build(i64),
    Replica { deployment: i64, replica: i32 },
}

impl Owner {
    /// The stream's rows, as a condition on `$1` and `$2`.
    fn condition(self) -> &'static str {
        match self {
            Owner::Build(_) => "build_id = $1 AND $2::integer IS NULL",
            Owner::Replica { .. } => "deployment_id = $1 AND replica = $2",
        }
    }

    /// The columns that `$1, NULL, $2` fill in an insert.
    fn columns(self) -> &'static str {
        match self {
            Owner::Build(_) => "build_id, deployment_id, replica",
            Owner::Replica { .. } => "deployment_id, build_id, replica",
        }
    }

    fn binds(self) -> (i64, Option<i32>) {
        match self {
            Owner::Build(id) => (id, None),
            Owner::Replica {
                deployment,
                replica,
            } => (deployment, Some(replica)),
        }
    }
}

/// How much output is kept, and how fast it may come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Lines kept per stream (a build, or one replica of a deployment).
    pub lines: u64,
    /// Bytes kept per service, across its deployments and replicas; and per build.
    pub bytes: u64,
    /// Bytes per second one stream may write; what comes faster is dropped.
    pub rate: u64,
}

/// The sending end of a stream's writer.
#[derive(Debug)]
pub struct LogWriter {
    lines: mpsc::Sender<(OffsetDateTime, String)>,
    task: JoinHandle<()>,
    rate: Mutex<Bucket>,
}

/// A token bucket in bytes: `rate` per second, at most a second's worth saved up.
#[derive(Debug)]
struct Bucket {
    rate: u64,
    tokens: f64,
    at: Instant,
    /// Lines dropped since the last one that passed.
    dropped: u64,
}

impl Bucket {
    /// Whether a line of `bytes` may pass now; if it may, how many lines were dropped
    /// before it.
    fn take(&mut self, bytes: usize) -> Option<u64> {
        let now = Instant::now();
        let rate = self.rate as f64;
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(rate);
        self.at = now;
        if self.tokens < bytes as f64 {
            self.dropped += 1;
            return None;
        }
        self.tokens -= bytes as f64;
        Some(std::mem::take(&mut self.dropped))
    }
}

fn rate_marker(dropped: u64, rate: u64) -> String {
    format!(
        "[meshploy] {dropped} lines dropped: the output came faster than {} per second (--log-rate)",
        report::bytes(rate)
    )
}

/// Lines per batch, and the longest a line waits to be stored: short, so that a console
/// following the log shows a line well within a second of its being written.
const BATCH: usize = 500;
const FLUSH_EVERY: Duration = Duration::from_millis(200);

impl LogWriter {
    /// Starts the writer of `owner`'s stream within `budget`.
    pub fn start(pool: PgPool, owner: Owner, budget: Budget) -> LogWriter {
        let (lines, received) = mpsc::channel(BATCH * 2);
        let rate = Mutex::new(Bucket {
            rate: budget.rate,
            tokens: budget.rate as f64,
            at: Instant::now(),
            dropped: 0,
        });
        let task = tokio::spawn(write(pool, owner, budget, received));
        LogWriter { lines, task, rate }
    }

    /// Queues one line of Meshploy's own (never dropped); waits while the writer is behind.
    pub async fn line(&self, line: String) {
        let _ = self.lines.send((OffsetDateTime::now_utc(), line)).await;
    }

    /// Queues one line of the process's output, or drops it when the stream is past its
    /// rate; waits while the writer is behind.
    pub async fn output(&self, line: String) {
        let passed = self.rate.lock().ok().and_then(|mut b| b.take(line.len()));
        match passed {
            None => {}
            Some(0) => self.line(line).await,
            Some(dropped) => {
                self.line(rate_marker(dropped, self.rate())).await;
                self.line(line).await;
            }
        }
    }

    fn rate(&self) -> u64 {
        self.rate.lock().map(|b| b.rate).unwrap_or_default()
    }

    /// Stores what is queued (and says how many lines were dropped at the end) and ends the
    /// stream.
    pub async fn close(self) {
        let dropped = self
            .rate
            .lock()
            .map(|mut b| std::mem::take(&mut b.dropped))
            .unwrap_or_default();
        if dropped > 0 {
            self.line(rate_marker(dropped, self.rate())).await;
        }
        drop(self.lines);
        let _ = self.task.await;
    }
}

async fn write(
    pool: PgPool,
    owner: Owner,
    budget: Budget,
    mut received: mpsc::Receiver<(OffsetDateTime, String)>,
) {
    let scope = Scope::of(&pool, owner).await;
    let mut stream = Stream {
        pool,
        owner,
        scope,
        limit: budget.lines.max(2),
        bytes: budget.bytes,
        kept: 0,
        dropped: 0,
        marked: false,
    };
    // A replica restarted within one deployment appends to its stream.
    stream.kept = stream.count().await.unwrap_or(0);
    let mut pending = Vec::new();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    loop {
        tokio::select! {
            line = received.recv() => match line {
                Some(line) => {
                    pending.push(line);
                    if pending.len() >= BATCH {
                        stream.flush(&mut pending).await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => stream.flush(&mut pending).await,
        }
    }
    stream.flush(&mut pending).await;
}

/// What a byte budget covers: a service's every stream, or one build's.
#[derive(Clone, Debug)]
enum Scope {
    Service {
        project: String,
        service: String,
    },
    Build(i64),
    /// A deployment that has no row (it cannot happen; its lines are then not budgeted).
    Unknown,
}

impl Scope {
    async fn of(pool: &PgPool, owner: Owner) -> Scope {
        match owner {
            Owner::Build(id) => Scope::Build(id),
            Owner::Replica { deployment, .. } => {
                let row: Option<(String, String)> =
                    sqlx::query_as("SELECT project, service FROM deployments WHERE id = $1")
                        .bind(deployment)
                        .fetch_optional(pool)
                        .await
                        .ok()
                        .flatten();
                row.map_or(Scope::Unknown, |(project, service)| Scope::Service {
                    project,
                    service,
                })
            }
        }
    }

    /// The key of its `log_usage` row.
    fn key(&self) -> Option<String> {
        match self {
            Scope::Service { project, service } => Some(format!("service/{project}/{service}")),
            Scope::Build(id) => Some(format!("build/{id}")),
            Scope::Unknown => None,
        }
    }

    /// Its lines, as a condition on `$1` (a build) or `$2` and `$3` (a service).
    fn binds(&self) -> (&'static str, Option<i64>, Option<&str>, Option<&str>) {
        match self {
            Scope::Service { project, service } => (
                "deployment_id IN (SELECT id FROM deployments WHERE project = $2 AND service = $3) AND $1::bigint IS NULL",
                None,
                Some(project),
                Some(service),
            ),
            Scope::Build(id) => (
                "build_id = $1 AND $2::text IS NULL AND $3::text IS NULL",
                Some(*id),
                None,
                None,
            ),
            Scope::Unknown => ("false", None, None, None),
        }
    }
}

/// A line dropped past the budget: whose stream it was, and where.
#[derive(sqlx::FromRow)]
struct Dropped {
    build_id: Option<i64>,
    deployment_id: Option<i64>,
    replica: Option<i32>,
    seq: i64,
}

/// A stream as its rows name it: a build, or a deployment's replica.
type StreamKey = (Option<i64>, Option<i64>, Option<i32>);

struct Stream {
    pool: PgPool,
    owner: Owner,
    scope: Scope,
    limit: u64,
    /// The scope's byte budget.
    bytes: u64,
    kept: u64,
    dropped: u64,
    /// Whether the oldest stored line is this writer's marker.
    marked: bool,
}

impl Stream {
    async fn count(&self) -> Result<u64, Error> {
        let (first, second) = self.owner.binds();
        let query = format!(
            "SELECT count(*) FROM log_lines WHERE {}",
            self.owner.condition()
        );
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(query))
            .bind(first)
            .bind(second)
            .fetch_one(&self.pool)
            .await
            .map_err(db("counting log lines"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn flush(&mut self, pending: &mut Vec<(OffsetDateTime, String)>) {
        if pending.is_empty() {
            return;
        }
        let (at, lines): (Vec<OffsetDateTime>, Vec<String>) = pending.drain(..).unzip();
        let n = lines.len() as u64;
        let size: usize = lines.iter().map(String::len).sum();
        if let Err(error) = self.insert(&at, &lines).await {
            tracing::warn!(%error, "captured output was not stored");
            return;
        }
        self.kept += n;
        match self.spend(size).await {
            Ok(used) if used > self.bytes => {
                if let Err(error) = self.trim_bytes().await {
                    tracing::warn!(%error, "old log lines past the budget were not dropped");
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "the log budget was not counted"),
        }
        if self.kept > self.limit
            && let Err(error) = self.trim().await
        {
            tracing::warn!(%error, "old log lines were not dropped");
        }
    }

    async fn insert(&self, at: &[OffsetDateTime], lines: &[String]) -> Result<(), Error> {
        let (first, second) = self.owner.binds();
        let query = format!(
            "INSERT INTO log_lines ({}, at, line) \
             SELECT $1, NULL, $2, at, line FROM UNNEST($3::timestamptz[], $4::text[]) AS t(at, line)",
            self.owner.columns()
        );
        sqlx::query(AssertSqlSafe(query))
            .bind(first)
            .bind(second)
            .bind(at)
            .bind(lines)
            .execute(&self.pool)
            .await
            .map_err(db("storing log lines"))?;
        Ok(())
    }

    /// Adds `size` bytes to the scope's usage; returns the usage. An estimate from above:
    /// lines that went with their deployment still count until the next trim recounts.
    async fn spend(&self, size: usize) -> Result<u64, Error> {
        let Some(key) = self.scope.key() else {
            return Ok(0);
        };
        let used: i64 = sqlx::query_scalar(
            "INSERT INTO log_usage (scope, bytes) VALUES ($1, $2) \
             ON CONFLICT (scope) DO UPDATE SET bytes = log_usage.bytes + EXCLUDED.bytes \
             RETURNING bytes",
        )
        .bind(key)
        .bind(i64::try_from(size).unwrap_or(i64::MAX))
        .fetch_one(&self.pool)
        .await
        .map_err(db("counting the log budget"))?;
        Ok(u64::try_from(used).unwrap_or(0))
    }

    /// Drops the scope's oldest lines until the newest ones fit in three quarters of its
    /// budget, puts a marker where each stream lost lines, and recounts the usage.
    async fn trim_bytes(&mut self) -> Result<(), Error> {
        let (condition, build, project, service) = self.scope.binds();
        let keep = i64::try_from(self.bytes / 4 * 3).unwrap_or(i64::MAX);
        let query = format!(
            "WITH ranked AS (\
               SELECT seq, sum(octet_length(line)) OVER (ORDER BY seq DESC) AS newer \
               FROM log_lines WHERE {condition}) \
             DELETE FROM log_lines l USING ranked r WHERE l.seq = r.seq AND r.newer > $4 \
             RETURNING l.build_id, l.deployment_id, l.replica, l.seq"
        );
        let deleted: Vec<Dropped> = sqlx::query_as(AssertSqlSafe(query))
            .bind(build)
            .bind(project)
            .bind(service)
            .bind(keep)
            .fetch_all(&self.pool)
            .await
            .map_err(db("dropping log lines past the budget"))?;
        // One marker per stream that lost lines, where its newest lost line was.
        let mut streams: std::collections::BTreeMap<StreamKey, (i64, u64)> =
            std::collections::BTreeMap::new();
        for line in deleted {
            let key = (line.build_id, line.deployment_id, line.replica);
            let entry = streams.entry(key).or_insert((line.seq, 0));
            entry.0 = entry.0.max(line.seq);
            entry.1 += 1;
        }
        for ((build, deployment, replica), (seq, n)) in streams {
            let marker = format!(
                "[meshploy] {n} earlier lines dropped: {} keeps at most {} of logs (--log-budget)",
                self.scope.key().unwrap_or_default(),
                report::bytes(self.bytes)
            );
            sqlx::query(
                "INSERT INTO log_lines (seq, build_id, deployment_id, replica, line) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (seq) DO NOTHING",
            )
            .bind(seq)
            .bind(build)
            .bind(deployment)
            .bind(replica)
            .bind(marker)
            .execute(&self.pool)
            .await
            .map_err(db("marking log lines past the budget"))?;
        }
        let query = format!(
            "UPDATE log_usage SET bytes = \
               (SELECT coalesce(sum(octet_length(line)), 0) FROM log_lines WHERE {condition}) \
             WHERE scope = $4"
        );
        sqlx::query(AssertSqlSafe(query))
            .bind(build)
            .bind(project)
            .bind(service)
            .bind(self.scope.key())
            .execute(&self.pool)
            .await
            .map_err(db("recounting the log budget"))?;
        // This stream's own count may have fallen; it is counted again before it trims.
        self.kept = self.count().await?;
        // The space of the dropped lines is reused from now on, rather than after the next
        // autovacuum (a minute or more): a flood grows the table by its budget, not its rate.
        sqlx::query("VACUUM log_lines")
            .execute(&self.pool)
            .await
            .map_err(db("vacuuming log lines"))?;
        Ok(())
    }

    /// Drops the oldest lines past the limit, and puts the marker in their place (with the
    /// newest dropped line's sequence number, so it sorts before every kept line).
    async fn trim(&mut self) -> Result<(), Error> {
        let excess = self.kept - self.limit + 1;
        let (first, second) = self.owner.binds();
        let query = format!(
            "DELETE FROM log_lines WHERE seq IN \
               (SELECT seq FROM log_lines WHERE {} ORDER BY seq LIMIT $3) \
             RETURNING seq",
            self.owner.condition()
        );
        let deleted: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(query))
            .bind(first)
            .bind(second)
            .bind(i64::try_from(excess).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db("dropping old log lines"))?;
        let Some(last) = deleted.iter().max() else {
            return Ok(());
        };
        let removed = deleted.len() as u64;
        self.dropped += removed - u64::from(self.marked);
        let marker = format!(
            "[meshploy] {} earlier lines dropped: a stream keeps its last {} lines",
            self.dropped, self.limit
        );
        let query = format!(
            "INSERT INTO log_lines (seq, {}, line) VALUES ($3, $1, NULL, $2, $4)",
            self.owner.columns()
        );
        sqlx::query(AssertSqlSafe(query))
            .bind(first)
            .bind(second)
            .bind(last)
            .bind(marker)
            .execute(&self.pool)
            .await
            .map_err(db("marking dropped log lines"))?;
        self.marked = true;
        self.kept = self.kept - removed + 1;
        Ok(())
    }
}

/// One stored line.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize, schemars::JsonSchema)]
pub struct LogLine {
    pub seq: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub at: OffsetDateTime,
    pub deployment_id: Option<i64>,
    pub replica: Option<i32>,
    pub line: String,
}

/// Which lines to read.
#[derive(Clone, Debug)]
pub enum Selection {
    Build(i64),
    /// Every replica of a deployment, interleaved in the order they were captured.
    Deployment(i64),
    /// Every replica of every deployment of a service: what a follower sees across rollouts.
    Service {
        project: String,
        name: String,
    },
}

/// Up to `limit` lines of `selection` after sequence number `after`, oldest first; or, with
/// `last`, the newest `limit` lines.
pub async fn read(
    pool: &PgPool,
    selection: &Selection,
    after: i64,
    limit: i64,
    last: bool,
) -> Result<Vec<LogLine>, Error> {
    let (condition, id, service) = match selection {
        Selection::Build(id) => ("build_id = $1", Some(*id), None),
        Selection::Deployment(id) => ("deployment_id = $1", Some(*id), None),
        Selection::Service { project, name } => (
            "deployment_id IN (SELECT id FROM deployments WHERE project = $2 AND service = $3)",
            None,
            Some((project.as_str(), name.as_str())),
        ),
    };
    let order = if last { "DESC" } else { "ASC" };
    // The SQL text is built from this function's constants only; every value is bound (the
    // parameters a condition does not use are sent typed, and ignored).
    let query = format!(
        "SELECT seq, at, deployment_id, replica, line FROM log_lines \
         WHERE {condition} AND seq > $4 ORDER BY seq {order} LIMIT $5"
    );
    let mut lines: Vec<LogLine> = sqlx::query_as(AssertSqlSafe(query))
        .bind(id)
        .bind(service.map(|s| s.0))
        .bind(service.map(|s| s.1))
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(db("reading log lines"))?;
    if last {
        lines.reverse();
    }
    Ok(lines)
}
