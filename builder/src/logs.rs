//! Captured output into PostgreSQL as it arrives, and read back.
//!
//! One writer task per stream (a build, or one replica of a deployment) batches lines for at
//! most a second or 500 lines, so a crash loses at most the last second. A stream keeps at
//! most `limit` lines: past it the oldest go, and one marker line in their place says how
//! many. The channel into the writer is bounded, so a process that writes faster than the
//! database stores waits on its pipe rather than growing memory.

use std::time::Duration;

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

/// The sending end of a stream's writer.
#[derive(Debug)]
pub struct LogWriter {
    lines: mpsc::Sender<(OffsetDateTime, String)>,
    task: JoinHandle<()>,
}

/// Lines per batch, and the longest a line waits to be stored: short, so that a console
/// following the log shows a line well within a second of its being written.
const BATCH: usize = 500;
const FLUSH_EVERY: Duration = Duration::from_millis(200);

impl LogWriter {
    /// Starts the writer of `owner`'s stream, keeping at most `limit` lines.
    pub fn start(pool: PgPool, owner: Owner, limit: u64) -> LogWriter {
        let (lines, received) = mpsc::channel(BATCH * 2);
        let task = tokio::spawn(write(pool, owner, limit.max(2), received));
        LogWriter { lines, task }
    }

    /// Queues one line; waits while the writer is behind.
    pub async fn line(&self, line: String) {
        let _ = self.lines.send((OffsetDateTime::now_utc(), line)).await;
    }

    /// Stores what is queued and ends the stream.
    pub async fn close(self) {
        drop(self.lines);
        let _ = self.task.await;
    }
}

async fn write(
    pool: PgPool,
    owner: Owner,
    limit: u64,
    mut received: mpsc::Receiver<(OffsetDateTime, String)>,
) {
    let mut stream = Stream {
        pool,
        owner,
        limit,
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

struct Stream {
    pool: PgPool,
    owner: Owner,
    limit: u64,
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
        if let Err(error) = self.insert(&at, &lines).await {
            tracing::warn!(%error, "captured output was not stored");
            return;
        }
        self.kept += n;
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
