//! Health probes of a replica on this machine: `healthCheck.path` over HTTP, or without a
//! health check, the port accepting connections.

use std::time::Duration;

use schema::model::HealthCheck;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Nothing listens yet.
    Refused,
    Healthy,
    /// Something listens, and the check failed: why, in words.
    Unhealthy(String),
}

/// Probes `127.0.0.1:port`.
pub async fn probe(port: u16, check: Option<&HealthCheck>) -> Probe {
    let timeout = Duration::from_secs(check.map_or(1, |c| u64::from(c.timeout_seconds.max(1))));
    let connect = tokio::time::timeout(timeout, TcpStream::connect(("127.0.0.1", port))).await;
    let Ok(Ok(mut stream)) = connect else {
        return Probe::Refused;
    };
    let Some(check) = check else {
        return Probe::Healthy;
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: meshploy-health\r\nConnection: close\r\n\r\n",
        check.path
    );
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::new();
        let mut buffer = [0u8; 256];
        while !head.contains(&b'\n') && head.len() < 4096 {
            let n = stream.read(&mut buffer).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buffer[..n]);
        }
        Ok::<_, std::io::Error>(head)
    };
    let path = &check.path;
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Probe::Unhealthy(format!(
            "GET {path} timed out after {} s",
            timeout.as_secs()
        )),
        Ok(Err(error)) => Probe::Unhealthy(format!("GET {path} failed: {error}")),
        Ok(Ok(head)) => match status(&head) {
            Some(code) if (200..400).contains(&code) => Probe::Healthy,
            Some(code) => Probe::Unhealthy(format!("GET {path} answered {code}")),
            None => Probe::Unhealthy(format!("GET {path} did not get an HTTP answer")),
        },
    }
}

/// The status code of an HTTP/1 response head.
fn status(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_read_and_anything_else_is_not() {
        assert_eq!(status(b"HTTP/1.1 503 Service Unavailable\r\n"), Some(503));
        assert_eq!(status(b"HTTP/1.0 200 OK\r\nx"), Some(200));
        assert_eq!(status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status(b""), None);
    }
}
