//! Who holds a port Meshploy wants: a listening socket found in `/proc/net/tcp{,6}` and the
//! process whose file descriptors hold it, so a "port in use" error can name the process
//! (a leftover of an earlier run, say) rather than leave the user to find it.

use std::net::SocketAddr;

/// Why Meshploy cannot listen on `address` (given by `flag`): the error, who holds the port
/// when it is in use, and what to do.
pub fn cannot_listen(address: SocketAddr, flag: &str, error: &std::io::Error) -> String {
    let mut text = format!("cannot listen on {address} ({flag}): {error}");
    if error.kind() == std::io::ErrorKind::AddrInUse
        && let Some(holder) = holder(address)
    {
        text.push_str(&format!("; {holder} holds it"));
    }
    text.push_str(&format!(
        "; give another address with {flag} (port 0 picks a free one)"
    ));
    text
}

/// The process listening on `address`'s port, as `pid N (command line)`, if this process
/// may see it.
pub fn holder(address: SocketAddr) -> Option<String> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .find_map(|table| listening_inode(&table, address.port()))?;
    let socket = format!("socket:[{inode}]");
    let pid = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let fds = std::fs::read_dir(entry.path().join("fd")).ok()?;
            fds.flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == socket.as_str())
                })
                .then_some(pid)
        })?;
    let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let command: Vec<String> = command
        .split(|b| *b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect();
    Some(format!("pid {pid} ({})", command.join(" ")))
}

/// The inode of the socket listening on `port` in one `/proc/net/tcp` table.
fn listening_inode(table: &str, port: u16) -> Option<String> {
    // Fields: sl local_address rem_address st ... uid timeout inode; addresses are
    // `HEXADDR:HEXPORT`, and state 0A is LISTEN.
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = fields.get(1)?.rsplit_once(':')?.1;
        let listening = *fields.get(3)? == "0A";
        (listening && u16::from_str_radix(local_port, 16).ok()? == port)
            .then(|| fields.get(9).map(|inode| (*inode).to_owned()))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_port_is_named_with_its_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let held = holder(address).expect("a holder");
        assert!(
            held.starts_with(&format!("pid {} (", std::process::id())),
            "{held}"
        );
        drop(listener);
        assert_eq!(holder(address), None);
    }

    #[test]
    fn only_listening_sockets_of_the_port_count() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
             0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0\n   \
             1: 0100007F:1F41 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0 100 0 0 10 0\n";
        assert_eq!(listening_inode(table, 8000).as_deref(), Some("111"));
        assert_eq!(
            listening_inode(table, 8001),
            None,
            "established, not listening"
        );
        assert_eq!(listening_inode(table, 9), None);
    }
}
