//! API tokens: made by `meshploy token create`, stored as SHA-256 digests only, and checked
//! against every stored digest in constant time, so neither a token nor how much of one
//! matched leaks through timing.

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

/// The caller `presented` is the token of, if it is one. Every stored digest is compared,
/// each in constant time, whatever matches first.
pub async fn verify(pool: &PgPool, presented: &str) -> Result<Option<Caller>, TokenError> {
    let rows: Vec<(String, TokenScope, Vec<u8>)> =
        sqlx::query_as("SELECT name, scope, sha256 FROM api_tokens")
            .fetch_all(pool)
            .await
            .map_err(db("checking a token"))?;
    let wanted = digest(presented);
    let mut found = None;
    for (name, scope, stored) in rows {
        if bool::from(stored.as_slice().ct_eq(&wanted)) && found.is_none() {
            found = Some(Caller { name, scope });
        }
    }
    if let Some(caller) = &found {
        sqlx::query("UPDATE api_tokens SET last_used_at = now() WHERE name = $1")
            .bind(&caller.name)
            .execute(pool)
            .await
            .map_err(db("recording a token's use"))?;
    }
    Ok(found)
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
