//! The proxy crate's one error type.

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] sqlx::Error),
    #[error(
        "the database has no Meshploy tables (routes, endpoints): run `meshploy migrate` against it first"
    )]
    NoSchema,
    #[error("cannot load the route table: {0}")]
    Load(#[source] sqlx::Error),
    #[error("cannot start a worker thread: {0}")]
    Worker(#[source] std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}
