//! What every worker thread and connection shares: the configuration, the route table, the
//! database pool (driven by the control thread), metrics, lookup guards and request ids.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use sqlx::PgPool;

use crate::config::Config;
use crate::db::Lookups;
use crate::metrics::Metrics;
use crate::table::Table;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every worker and connection shares.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub table: ArcSwap<Table>,
    pub pool: PgPool,
    /// The runtime of the control thread, where every database query runs: the connections
    /// of the pool belong to its IO driver, which outlives the workers.
    pub control: tokio::runtime::Handle,
    pub metrics: Metrics,
    pub lookups: Lookups,
    pub ids: RequestIds,
}

/// Request ids for requests that come without one: a random per-process prefix and a counter,
/// unique across replicas without coordination.
#[derive(Debug)]
pub struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> RequestIds {
        RequestIds {
            prefix: RandomState::new().build_hasher().finish(),
            next: AtomicU64::new(0),
        }
    }
}

impl RequestIds {
    pub fn keep_or_make(&self, headers: &HeaderMap) -> HeaderValue {
        let given = headers.get(&X_REQUEST_ID).filter(|v| {
            !v.is_empty() && v.len() <= 200 && v.as_bytes().iter().all(u8::is_ascii_graphic)
        });
        match given {
            Some(value) => value.clone(),
            None => {
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                HeaderValue::try_from(format!("{:016x}{n:016x}", self.prefix))
                    .unwrap_or(HeaderValue::from_static("0"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let ids = RequestIds::default();
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("req-42"));
        assert_eq!(ids.keep_or_make(&headers), "req-42");
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        let made = ids.keep_or_make(&headers);
        assert_eq!(made.len(), 32);
        assert_ne!(made, ids.keep_or_make(&HeaderMap::new()));
    }
}
