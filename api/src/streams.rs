//! Following a log as server-sent events, for the API and the console's live log. A stream
//! holds a connection for as long as it runs, so it takes a stream slot (see
//! [`crate::server`]: a quarter of the connections in all, a few per token) or is refused with
//! 429; and it ends with its credentials: every [`RECHECK`] it checks its token or console
//! session again and ends once that is revoked or expired.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::sse::Event;
use futures_util::Stream;
use sqlx::PgPool;
use subtle::ConstantTimeEq;

use crate::server::{Slot, Streams};
use crate::tokens::{self, Caller, Credential};
use crate::{ApiError, AppState};

/// How often a stream checks its token or session again.
pub const RECHECK: Duration = Duration::from_secs(10);

/// How long a stream waits before reading a log that had nothing new.
const POLL: Duration = Duration::from_millis(250);

/// Who follows a log: the caller and the credential it proved itself with (both put there by
/// the API's or the console's authentication), and the server's stream slots (absent when the
/// router is driven without [`crate::serve`], as in tests).
pub struct Watcher {
    caller: Caller,
    credential: Credential,
    streams: Option<Streams>,
}

impl<S: Send + Sync> FromRequestParts<S> for Watcher {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Watcher, ApiError> {
        let unauthenticated = || ApiError::Unauthorized("this request was not authenticated");
        Ok(Watcher {
            caller: parts
                .extensions
                .get::<Caller>()
                .cloned()
                .ok_or_else(unauthenticated)?,
            credential: parts
                .extensions
                .get::<Credential>()
                .cloned()
                .ok_or_else(unauthenticated)?,
            streams: parts.extensions.get::<Streams>().cloned(),
        })
    }
}

/// A running stream's hold on its slot and what it checks again.
struct Held {
    pool: PgPool,
    credential: Credential,
    /// The server's own `--api-token`, which holds as long as the server runs.
    api_token: Option<[u8; 32]>,
    checked: Instant,
    _slot: Option<Slot<String>>,
}

impl Held {
    /// Whether the stream may go on: its credential was checked within [`RECHECK`], or
    /// holds now. A database that cannot say ends it too.
    async fn may_go_on(&mut self) -> bool {
        if self.checked.elapsed() < RECHECK {
            return true;
        }
        self.checked = Instant::now();
        if let (Credential::Token(digest), Some(server)) = (&self.credential, &self.api_token)
            && bool::from(digest.ct_eq(server))
        {
            return true;
        }
        tokens::still_valid(&self.pool, &self.credential)
            .await
            .unwrap_or(false)
    }
}

/// The lines of `selection` after `after`, as events, as they are captured, for `watcher`;
/// refused when the watcher's token (or everyone, in all) holds as many streams as allowed.
pub fn follow(
    state: &AppState,
    watcher: Watcher,
    selection: builder::logs::Selection,
    after: i64,
) -> Result<impl Stream<Item = Result<Event, Infallible>> + use<>, ApiError> {
    // A token's streams are counted together, whichever session or client holds them.
    let key = (watcher.credential != Credential::None).then(|| watcher.caller.name.clone());
    let slot = match &watcher.streams {
        Some(streams) => Some(streams.take(key).ok_or_else(|| {
            ApiError::TooMany(format!(
                "too many log streams are open (at most {} per token); close one, or read the log as pages",
                crate::server::STREAMS_PER_TOKEN
            ))
        })?),
        None => None,
    };
    let held = Held {
        pool: state.pool.clone(),
        credential: watcher.credential,
        api_token: state.api_token_sha256,
        checked: Instant::now(),
        _slot: slot,
    };
    Ok(futures_util::stream::unfold(
        (held, selection, after, Vec::new().into_iter()),
        |(mut held, selection, mut after, mut pending)| async move {
            loop {
                if !held.may_go_on().await {
                    return None;
                }
                if let Some(line) = pending.next() {
                    let line: builder::logs::LogLine = line;
                    after = line.seq;
                    let event = Event::default()
                        .id(line.seq.to_string())
                        .json_data(&line)
                        .unwrap_or_default();
                    return Some((Ok(event), (held, selection, after, pending)));
                }
                match builder::logs::read(&held.pool, &selection, after, 500, false).await {
                    Ok(lines) if !lines.is_empty() => pending = lines.into_iter(),
                    Ok(_) => tokio::time::sleep(POLL).await,
                    Err(_) => return None,
                }
            }
        },
    ))
}
