//! API tokens: made by `meshploy token create`, stored as SHA-256 digests only, and checked
//! against every stored digest in constant time, so neither a token nor how much of one
//! matched leaks through timing.

use std::sync::{Arc, RwLock, Weak};

use reconciler::names::TokenScope;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

/// Every token starts with this, so a leaked one is easy to recognise and to scan for.
pub const PREFIX: &str = "mp_";

/// Who a request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (never the token), or `anonymous`.
    pub name: String,
    pub scope: TokenScope,
}

/// What a caller proved who they are with, kept with the request so that a long one (a log
/// stream) can check it again: a token or a console session, by digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// Nothing (anonymous reads): nothing to revoke.
    None,
    /// A bearer token: a stored one, or the server's `--api-token`.
    Token([u8; 32]),
    /// A console session's cookie.
    Session([u8; 32]),
}

impl Credential {
    pub fn token(presented: &str) -> Credential {
        Credential::Token(digest(presented))
    }

    pub fn session(cookie: &str) -> Credential {
        Credential::Session(digest(cookie))
    }
}

/// Whether a stored token or a session still holds: the token not revoked; the session
/// not ended or expired, and its token not revoked.
pub async fn still_valid(pool: &PgPool, credential: &Credential) -> Result<bool, TokenError> {
    let (sql, digest) = match credential {
        Credential::None => return Ok(true),
        Credential::Token(digest) => (
            "SELECT EXISTS (SELECT 1 FROM api_tokens WHERE sha256 = $1)",
            digest,
        ),
        Credential::Session(digest) => (
            "SELECT EXISTS (SELECT 1 FROM console_sessions s JOIN api_tokens t ON t.name = s.token \
             WHERE s.sha256 = $1 AND s.expires_at > now())",
            digest,
        ),
    };
    sqlx::query_scalar(sql)
        .bind(&digest[..])
        .fetch_one(pool)
        .await
        .map_err(db("checking a token again"))
}

/// A stored token, without its digest.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct Token {
    pub name: String,
    pub scope: TokenScope,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
}

/// Why a token cannot be made or revoked.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "`{0}` is not a token name: use letters, digits, `.`, `_` and `-`, starting with a letter or digit, at most 63 characters"
    )]
    BadName(String),
    #[error("a token named `{0}` exists already; revoke it first or pick another name")]
    Exists(String),
    #[error("no token is named `{0}`")]
    Unknown(String),
    #[error("database error while {operation}: {error}")]
    Database {
        operation: &'static str,
        error: sqlx::Error,
    },
}

fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> TokenError {
    move |error| TokenError::Database { operation, error }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Makes a token named `name` with `scope` and returns it: the only time it is shown.
pub async fn create(pool: &PgPool, name: &str, scope: TokenScope) -> Result<String, TokenError> {
    if !valid_name(name) {
        return Err(TokenError::BadName(name.to_owned()));
    }
    let token = format!("{PREFIX}{}", reconciler::secrets::generate_key());
    let inserted = sqlx::query(
        "INSERT INTO api_tokens (name, scope, sha256) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(scope)
    .bind(&digest(&token)[..])
    .execute(pool)
    .await
    .map_err(db("storing a token"))?;
    if inserted.rows_affected() == 0 {
        return Err(TokenError::Exists(name.to_owned()));
    }
    Ok(token)
}

pub async fn list(pool: &PgPool) -> Result<Vec<Token>, TokenError> {
    sqlx::query_as("SELECT name, scope, created_at, last_used_at FROM api_tokens ORDER BY name")
        .fetch_all(pool)
        .await
        .map_err(db("listing tokens"))
}

pub async fn revoke(pool: &PgPool, name: &str) -> Result<(), TokenError> {
    let deleted = sqlx::query("DELETE FROM api_tokens WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await
        .map_err(db("revoking a token"))?;
    if deleted.rows_affected() == 0 {
        return Err(TokenError::Unknown(name.to_owned()));
    }
    Ok(())
}

/// A stored token, as a check needs it.
#[derive(Clone, Debug, sqlx::FromRow)]
struct Stored {
    name: String,
    scope: TokenScope,
    sha256: Vec<u8>,
}

async fn stored(pool: &PgPool) -> Result<Vec<Stored>, TokenError> {
    sqlx::query_as("SELECT name, scope, sha256 FROM api_tokens")
        .fetch_all(pool)
        .await
        .map_err(db("checking a token"))
}

/// The caller of the token whose digest is `wanted`, if any. Every stored digest is compared,
/// each in constant time, whatever matches first.
fn matching(tokens: &[Stored], wanted: &[u8; 32]) -> Option<Caller> {
    let mut found = None;
    for token in tokens {
        if bool::from(token.sha256.as_slice().ct_eq(wanted)) && found.is_none() {
            found = Some(Caller {
                name: token.name.clone(),
                scope: token.scope,
            });
        }
    }
    found
}

/// The caller `presented` is the token of, if it is one, checked against the database (a
/// console login). [`Known::verify`] checks API requests.
pub async fn verify(pool: &PgPool, presented: &str) -> Result<Option<Caller>, TokenError> {
    let wanted = digest(presented);
    let found = matching(&stored(pool).await?, &wanted);
    record_use(pool, found.as_ref(), wanted).await?;
    Ok(found)
}

/// The channel a trigger on `api_tokens` notifies whenever a token is made, revoked or
/// changed (migration 0016).
const CHANNEL: &str = "meshploy_tokens";

/// The stored tokens, kept in memory by each API process so that checking a request's token
/// costs no query: loaded at start and again on every notification that a token changed
/// (and every few seconds, in case one was missed). A revoked token is refused as soon as
/// its notification arrives, within milliseconds of the revoke. Until the first load, and
/// whenever the notifications may have been missed, the database is asked instead; so is it
/// for a token not kept, which may have been made a moment ago.
#[derive(Clone, Debug, Default)]
pub struct Known {
    tokens: Arc<RwLock<Option<Arc<Vec<Stored>>>>>,
}

impl Known {
    /// Tokens followed on a task of their own, which ends with the last clone of this.
    pub fn follow(pool: PgPool) -> Known {
        let known = Known::default();
        let tokens = Arc::downgrade(&known.tokens);
        tokio::spawn(async move {
            loop {
                follow_once(&pool, &tokens).await;
                // The connection failed, or nothing needs the tokens any more.
                let Some(kept) = tokens.upgrade() else {
                    return;
                };
                *kept.write().unwrap_or_else(|e| e.into_inner()) = None;
                drop(kept);
                tokio::time::sleep(RELOAD_EVERY).await;
            }
        });
        known
    }

    /// The caller `presented` is the token of, if it is one.
    pub async fn verify(
        &self,
        pool: &PgPool,
        presented: &str,
    ) -> Result<Option<Caller>, TokenError> {
        let wanted = digest(presented);
        let kept = self
            .tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let found = match kept.and_then(|tokens| matching(&tokens, &wanted)) {
            Some(caller) => Some(caller),
            None => matching(&stored(pool).await?, &wanted),
        };
        record_use(pool, found.as_ref(), wanted).await?;
        Ok(found)
    }
}

/// How often the tokens are loaded again without a notification, and how often the follower
/// checks that someone still needs them.
const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Listens for changes to the tokens and keeps them loaded, until the connection fails or
/// nothing needs them any more.
async fn follow_once(pool: &PgPool, tokens: &Weak<RwLock<Option<Arc<Vec<Stored>>>>>) {
    let Ok(mut listener) = sqlx::postgres::PgListener::connect_with(pool).await else {
        return;
    };
    if listener.listen(CHANNEL).await.is_err() {
        return;
    }
    loop {
        // Loaded after listening: a change after the load is a notification still to come.
        let Some(kept) = tokens.upgrade() else {
            return;
        };
        let Ok(loaded) = stored(pool).await else {
            return;
        };
        *kept.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(loaded));
        drop(kept);
        tokio::select! {
            // A change, or a reconnection after which changes may have been missed: load.
            notified = listener.try_recv() => {
                if notified.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(RELOAD_EVERY) => {}
        }
    }
}

/// Records that the token `wanted` was used by `caller`, when it is due.
async fn record_use(
    pool: &PgPool,
    caller: Option<&Caller>,
    wanted: [u8; 32],
) -> Result<(), TokenError> {
    if let Some(caller) = caller
        && use_is_due(wanted)
    {
        sqlx::query(
            "UPDATE api_tokens SET last_used_at = now() WHERE name = $1 \
             AND (last_used_at IS NULL OR last_used_at < now() - make_interval(secs => $2))",
        )
        .bind(&caller.name)
        .bind(USE_RECORDED_EVERY.as_secs_f64())
        .execute(pool)
        .await
        .map_err(db("recording a token's use"))?;
    }
    Ok(())
}

/// How often a token's use is written: a write (and its commit) per request would cost more
/// than the request, so `last_used_at` is at most this late.
const USE_RECORDED_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether this process should record a use of the token with digest `token` now: its first
/// use, or the first since [`USE_RECORDED_EVERY`]. Other processes skip the write in the
/// database when it is not due there either.
fn use_is_due(token: [u8; 32]) -> bool {
    static RECORDED: std::sync::LazyLock<
        std::sync::Mutex<std::collections::HashMap<[u8; 32], std::time::Instant>>,
    > = std::sync::LazyLock::new(Default::default);
    let mut recorded = RECORDED.lock().unwrap_or_else(|e| e.into_inner());
    let now = std::time::Instant::now();
    match recorded.get(&token) {
        Some(at) if now.duration_since(*at) < USE_RECORDED_EVERY => false,
        _ => {
            recorded.insert(token, now);
            true
        }
    }
}

/// How long a console login lasts.
pub const SESSION_HOURS: i64 = 12;

/// Opens a console session for the token `name`: returns the cookie's value, the only
/// time it exists outside the browser (the database keeps its digest). Expired sessions
/// are removed on the way.
pub async fn open_session(pool: &PgPool, name: &str) -> Result<String, TokenError> {
    sqlx::query("DELETE FROM console_sessions WHERE expires_at < now()")
        .execute(pool)
        .await
        .map_err(db("removing expired sessions"))?;
    let session = reconciler::secrets::generate_key();
    sqlx::query(
        "INSERT INTO console_sessions (sha256, token, expires_at) \
         VALUES ($1, $2, now() + make_interval(hours => $3::int))",
    )
    .bind(&digest(&session)[..])
    .bind(name)
    .bind(i32::try_from(SESSION_HOURS).unwrap_or(12))
    .execute(pool)
    .await
    .map_err(db("opening a session"))?;
    Ok(session)
}

/// The caller a session cookie belongs to, while the session and its token last. The
/// lookup is by the digest of a random value, which tells an observer nothing about it.
pub async fn session(pool: &PgPool, cookie: &str) -> Result<Option<Caller>, TokenError> {
    sqlx::query_as(
        "SELECT t.name, t.scope FROM console_sessions s JOIN api_tokens t ON t.name = s.token \
         WHERE s.sha256 = $1 AND s.expires_at > now()",
    )
    .bind(&digest(cookie)[..])
    .fetch_optional(pool)
    .await
    .map(|row: Option<(String, TokenScope)>| row.map(|(name, scope)| Caller { name, scope }))
    .map_err(db("checking a session"))
}

/// Ends a session (logging out).
pub async fn close_session(pool: &PgPool, cookie: &str) -> Result<(), TokenError> {
    sqlx::query("DELETE FROM console_sessions WHERE sha256 = $1")
        .bind(&digest(cookie)[..])
        .execute(pool)
        .await
        .map_err(db("closing a session"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_names_are_short_plain_words() {
        for good in ["ci", "deploy-bot", "a.b_c", "X1"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "-x", "a b", "é", "x/y", &"a".repeat(64)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
