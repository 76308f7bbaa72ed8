//! Answers every request with a greeting from its environment; `/healthz` says it is alive.
//! It listens on `PORT`, as every service on Meshploy's local runtime does.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

fn main() -> std::io::Result<()> {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".into());
    let listener = TcpListener::bind(format!("127.0.0.1:{port}"))?;
    println!("hello: listening on port {port}");
    for stream in listener.incoming() {
        let mut stream = stream?;
        let greeting = greeting.clone();
        let port = port.clone();
        std::thread::spawn(move || {
            let mut request_line = String::new();
            let mut reader = BufReader::new(&stream);
            if reader.read_line(&mut request_line).is_err() {
                return;
            }
            // Read the rest of the head; bodies are not expected.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("/");
            let body = if path == "/healthz" {
                "ok\n".to_owned()
            } else {
                format!("{greeting} from the replica on port {port} (you asked for {path})\n")
            };
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        });
    }
    Ok(())
}
