//! TCP_NODELAY on Postgres connections over TCP.
//!
//! sqlx 0.9.0 opens its TCP sockets with Nagle's algorithm on and offers no
//! option to turn it off (fixed upstream after 0.9.0). A statement written
//! in more than one segment then waits for the server's delayed ACK, about
//! 40 ms; over the Unix socket the same statement takes a millisecond. sqlx
//! gives the new connection but not its socket, so the socket is found by
//! its address: the server says which client port it sees
//! (`inet_client_port()`), and the process's own socket bound to that local
//! port gets TCP_NODELAY. Behind a proxy or NAT the ports differ, nothing
//! matches, and the connection stays as sqlx made it (a debug line says so).

use sqlx::PgConnection;

/// Sets TCP_NODELAY on the socket under `conn`, if it is a TCP connection
/// this process can find. A Unix-socket connection is left alone.
pub(super) async fn set_nodelay(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    // NULL over a Unix socket.
    let port: Option<i32> = sqlx::query_scalar("SELECT inet_client_port()")
        .fetch_one(&mut *conn)
        .await?;
    let Some(port) = port.and_then(|p| u16::try_from(p).ok()) else {
        return Ok(());
    };
    let found = set_on_local_port(port);
    if found == 0 {
        tracing::debug!(
            port,
            "no socket of this process has the client port Postgres sees (a proxy between?): TCP_NODELAY not set"
        );
    }
    Ok(())
}

/// Sets TCP_NODELAY on every TCP socket of this process bound to local
/// `port`; returns how many.
#[cfg(unix)]
fn set_on_local_port(port: u16) -> usize {
    // Linux lists a process's descriptors in /proc/self/fd, the BSDs and
    // macOS in /dev/fd.
    let entries = std::fs::read_dir("/proc/self/fd").or_else(|_| std::fs::read_dir("/dev/fd"));
    let Ok(entries) = entries else {
        return 0;
    };
    let mut set = 0;
    for entry in entries.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::c_int>().ok())
        else {
            continue;
        };
        if local_tcp_port(fd) == Some(port) && nodelay(fd) {
            set += 1;
        }
    }
    set
}

#[cfg(not(unix))]
fn set_on_local_port(_port: u16) -> usize {
    0
}

/// The local port of `fd` when it is an IPv4 or IPv6 stream socket.
#[cfg(unix)]
fn local_tcp_port(fd: libc::c_int) -> Option<u16> {
    let mut kind: libc::c_int = 0;
    let mut kind_len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).ok()?;
    // SAFETY: `kind` and `kind_len` are valid for writes of the sizes given.
    // `fd` may have been closed (or reused) since it was listed: the call then
    // fails, or reads an unrelated descriptor's type, and nothing is written
    // through it.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&raw mut kind).cast(),
            &mut kind_len,
        )
    };
    if rc != 0 || kind != libc::SOCK_STREAM {
        return None;
    }
    // SAFETY: an all-zero `sockaddr_storage` is a valid value.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_storage>()).ok()?;
    // SAFETY: `addr` is large enough for any socket address, `len` says so.
    let rc = unsafe { libc::getsockname(fd, (&raw mut addr).cast(), &mut len) };
    if rc != 0 {
        return None;
    }
    match libc::c_int::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says `addr` holds a `sockaddr_in`, which
            // `sockaddr_storage` is sized and aligned for.
            let v4 = unsafe { &*(&raw const addr).cast::<libc::sockaddr_in>() };
            Some(u16::from_be(v4.sin_port))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for `sockaddr_in6`.
            let v6 = unsafe { &*(&raw const addr).cast::<libc::sockaddr_in6>() };
            Some(u16::from_be(v6.sin6_port))
        }
        _ => None,
    }
}

/// Turns Nagle's algorithm off on `fd`; false if the call failed.
#[cfg(unix)]
fn nodelay(fd: libc::c_int) -> bool {
    let on: libc::c_int = 1;
    let Ok(len) = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()) else {
        return false;
    };
    // SAFETY: `on` is a valid `c_int` for reads of `len` bytes; a stale `fd`
    // makes the call fail or set the option on another TCP socket, which is
    // harmless.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&raw const on).cast(),
            len,
        )
    };
    rc == 0
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_socket_found_by_its_local_port_gets_nodelay() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, _) = listener.accept().unwrap();
        assert!(!client.nodelay().unwrap(), "Nagle is on by default");
        let port = client.local_addr().unwrap().port();
        assert_eq!(set_on_local_port(port), 1);
        assert!(client.nodelay().unwrap());
    }
}
