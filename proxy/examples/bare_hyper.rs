//! A baseline for `proxy/bench/run.sh`: hyper 1 on both sides and nothing else, to tell how
//! much of `meshploy proxy`'s distance to nginx is hyper's and how much is its own work. No
//! routing, header rewriting, timeouts, pooling or metrics: each client connection gets its
//! own upstream connection, and a worker thread per core accepts from a shared listener.
//!
//!   cargo run --release -p meshploy-proxy --example bare_hyper -- LISTEN UPSTREAM [WORKERS]

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use hyper::Request;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bare_hyper LISTEN UPSTREAM [WORKERS]";
    let listen: SocketAddr = args.next().context(usage)?.parse()?;
    let upstream: SocketAddr = args.next().context(usage)?.parse()?;
    let workers = match args.next() {
        Some(n) => n.parse()?,
        None => std::thread::available_parallelism()?.get(),
    };
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    let threads = (0..workers)
        .map(|_| {
            let listener = listener.try_clone()?;
            Ok(std::thread::spawn(move || serve(listener, upstream)))
        })
        .collect::<Result<Vec<_>>>()?;
    for thread in threads {
        if let Ok(Err(error)) = thread.join() {
            eprintln!("bare_hyper: {error:#}");
        }
    }
    Ok(())
}

fn serve(listener: std::net::TcpListener, upstream: SocketAddr) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        loop {
            let (client, _) = listener.accept().await?;
            // A relay ends with an error when its client closes mid-request, as wrk does at
            // the end of every run: nothing worth reporting.
            tokio::spawn(relay(client, upstream));
        }
    })
}

/// Serves one client connection, every request going out on one upstream connection (a new
/// one when the upstream has closed it, as nginx does after 1,000 requests).
async fn relay(client: TcpStream, upstream: SocketAddr) -> Result<()> {
    client.set_nodelay(true)?;
    let sender: Arc<Mutex<Option<http1::SendRequest<Incoming>>>> = Arc::new(Mutex::new(None));
    let service = service_fn(move |mut request: Request<Incoming>| {
        let sender = Arc::clone(&sender);
        async move {
            let mut sender = sender.lock().await;
            loop {
                let ready = match sender.as_mut() {
                    Some(open) => open.ready().await.is_ok(),
                    None => false,
                };
                if !ready {
                    *sender = Some(connect(upstream).await?);
                }
                let open = sender.as_mut().context("no upstream connection")?;
                match open.try_send_request(request).await {
                    Ok(response) => return Ok::<_, anyhow::Error>(response),
                    // Closed before the request went out: again, on a new connection.
                    Err(mut error) => match error.take_message() {
                        Some(unsent) => {
                            request = unsent;
                            *sender = None;
                        }
                        None => return Err(error.into_error().into()),
                    },
                }
            }
        }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .await?;
    Ok(())
}

async fn connect(upstream: SocketAddr) -> Result<http1::SendRequest<Incoming>> {
    let stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}
