//! The idle watchdog: a connection with no bytes read or written for the idle timeout is
//! closed, at the cost of one counter increment per read or write instead of a clock read.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Waits until a connection has been idle (no bytes either way) for the idle timeout, give
/// or take a quarter, and returns true; returns false as soon as it sees the connection has
/// ended. It looks at the connection's activity count four times per timeout, which costs
/// the request path one counter increment instead of a clock reading per read.
pub async fn idle(
    timeout: Duration,
    activity: &AtomicU64,
    connection: &tokio::task::AbortHandle,
) -> bool {
    const LOOKS: u32 = 4;
    let mut seen = activity.load(Ordering::Relaxed);
    let mut quiet = 0;
    while quiet < LOOKS {
        tokio::time::sleep(timeout / LOOKS).await;
        if connection.is_finished() {
            return false;
        }
        let now = activity.load(Ordering::Relaxed);
        quiet = if now == seen { quiet + 1 } else { 0 };
        seen = now;
    }
    true
}

/// A client connection that counts its reads and writes, for the idle timeout.
pub struct Tracked {
    pub stream: TcpStream,
    pub activity: Arc<AtomicU64>,
}

impl Tracked {
    fn touch(&self) {
        // Only this connection's task writes the count, so a plain load and store will do.
        let count = self.activity.load(Ordering::Relaxed);
        self.activity
            .store(count.wrapping_add(1), Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        poll
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
