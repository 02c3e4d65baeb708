//! Creating the listening socket, as beanstalkd does: systemd's socket if
//! one was passed, else `unix:PATH`, else the first `getaddrinfo` result
//! (host from `-l`, port or service name from `-p`, passive, any family)
//! that can be set up, bound and put to listen.
//!
//! This runs on the main thread before privileges are dropped; the socket
//! is handed to the cores afterwards.
//!
//! A TCP bind that fails with EADDRINUSE is tried again for
//! [`BIND_RETRY_MS`] before the error is reported, for the restart of a
//! server that was killed (see there).

use std::ffi::{CStr, CString};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;

use socket2::{Domain, SockAddr, Socket, Type};

/// The listen backlog beanstalkd uses.
pub const LISTEN_BACKLOG: i32 = 1024;

/// Longest unix socket path (the size of `sun_path` less its NUL).
pub const UNIX_PATH_BYTES_MAX: usize = 107;

/// How long start-up keeps trying a TCP bind that fails with EADDRINUSE.
/// An io_uring server killed with SIGKILL cannot cancel its operations:
/// the kernel tears its ring down after the process is gone, and only then
/// lets go of the listening socket that a pending accept holds, about 6 ms
/// later (13 to 18 ms with thousands of connections open). A supervisor or
/// test suite that restarts it at once would otherwise fail; a port that is
/// really taken is still reported, this much later. On a loaded machine
/// (CI running the suites side by side) the teardown took more than 500 ms
/// once in many thousand restarts, hence the margin.
pub const BIND_RETRY_MS: u64 = 2_000;
/// The pause between two tries.
const BIND_RETRY_PAUSE_MS: u64 = 5;

/// A bound, listening socket.
pub enum BoundListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl BoundListener {
    pub fn local_tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            BoundListener::Tcp(l) => l.local_addr().ok(),
            BoundListener::Unix(_) => None,
        }
    }
}

/// The outcome of binding: the listener, and warnings to print.
pub struct Bound {
    pub listener: BoundListener,
    pub warnings: Vec<String>,
    /// The line `-V` prints (`bind <fd> <address>`).
    pub description: String,
}

/// Binds the listener for `-l addr` / `-p port`. Errors carry a message in
/// beanstalkd's words; the caller exits with 111.
pub fn bind(addr: Option<&str>, port: &str) -> Result<Bound, String> {
    if let Some(inherited) = systemd_listener(addr, port)? {
        return Ok(inherited);
    }
    match addr.and_then(|a| a.strip_prefix("unix:")) {
        Some(path) => bind_unix(path),
        None => bind_inet(addr, port),
    }
}

fn bind_unix(path: &str) -> Result<Bound, String> {
    use std::os::fd::AsRawFd;
    if path.len() > UNIX_PATH_BYTES_MAX {
        return Err(format!(
            "socket path {path} is too long ({} characters), where maximum allowed is {UNIX_PATH_BYTES_MAX}",
            path.len()
        ));
    }
    let mut warnings = Vec::new();
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            warnings.push("removing existing local socket to replace it".to_string());
            std::fs::remove_file(path).map_err(|e| format!("unlink: {e}"))?;
        }
        Ok(_) => return Err("another file already exists in the given path".to_string()),
        Err(_) => {}
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(|e| format!("socket(): {e}"))?;
    let address = SockAddr::unix(path).map_err(|e| format!("bind(): {e}"))?;
    socket.bind(&address).map_err(|e| format!("bind(): {e}"))?;
    socket.listen(LISTEN_BACKLOG).map_err(|e| format!("listen(): {e}"))?;
    let description = format!("bind {} {path}", socket.as_raw_fd());
    let listener = std::os::unix::net::UnixListener::from(OwnedFd::from(socket));
    Ok(Bound { listener: BoundListener::Unix(listener), warnings, description })
}

fn bind_inet(host: Option<&str>, port: &str) -> Result<Bound, String> {
    use std::os::fd::AsRawFd;
    let candidates = resolve_passive(host, port)?;
    let mut last_error = String::from("no usable address");
    let retry_until = std::time::Instant::now() + std::time::Duration::from_millis(BIND_RETRY_MS);
    for address in candidates {
        let attempt = || -> io::Result<Socket> {
            let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            socket.set_keepalive(true)?;
            socket.set_tcp_nodelay(true)?;
            if host.is_none() && address.is_ipv6() {
                socket.set_only_v6(false)?;
            }
            socket.bind(&address.into())?;
            socket.listen(LISTEN_BACKLOG)?;
            Ok(socket)
        };
        let attempt = || loop {
            match attempt() {
                Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) && std::time::Instant::now() < retry_until => {
                    std::thread::sleep(std::time::Duration::from_millis(BIND_RETRY_PAUSE_MS));
                }
                outcome => return outcome,
            }
        };
        match attempt() {
            Ok(socket) => {
                let local = socket.local_addr().ok().and_then(|a| a.as_socket()).unwrap_or(address);
                let description = match local {
                    SocketAddr::V6(v6) => format!("bind {} [{}]:{}", socket.as_raw_fd(), v6.ip(), v6.port()),
                    SocketAddr::V4(v4) => format!("bind {} {}:{}", socket.as_raw_fd(), v4.ip(), v4.port()),
                };
                let listener = std::net::TcpListener::from(OwnedFd::from(socket));
                return Ok(Bound { listener: BoundListener::Tcp(listener), warnings: Vec::new(), description });
            }
            Err(e) => last_error = format!("bind(): {e}"),
        }
    }
    Err(last_error)
}

/// `getaddrinfo(host, port, {AF_UNSPEC, SOCK_STREAM, AI_PASSIVE})`, in the
/// resolver's order.
fn resolve_passive(host: Option<&str>, port: &str) -> Result<Vec<SocketAddr>, String> {
    let bad = |_| "getaddrinfo(): invalid argument".to_string();
    let c_host = host.map(CString::new).transpose().map_err(bad)?;
    let c_port = CString::new(port).map_err(bad)?;
    // Safety: addrinfo is plain old data.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = libc::AF_UNSPEC;
    hints.ai_socktype = libc::SOCK_STREAM;
    hints.ai_flags = libc::AI_PASSIVE;
    let mut list: *mut libc::addrinfo = std::ptr::null_mut();
    let host_ptr = c_host.as_ref().map_or(std::ptr::null(), |h| h.as_ptr());
    // Safety: valid C strings and out-pointer; freed below.
    let rc = unsafe { libc::getaddrinfo(host_ptr, c_port.as_ptr(), &hints, &mut list) };
    if rc != 0 {
        // Safety: gai_strerror returns a static string.
        let reason = unsafe { CStr::from_ptr(libc::gai_strerror(rc)) }.to_string_lossy();
        return Err(format!("getaddrinfo(): {reason}"));
    }
    let mut out = Vec::new();
    let mut node = list;
    while !node.is_null() {
        // Safety: node walks the list getaddrinfo returned.
        let ai = unsafe { &*node };
        if let Some(address) = unsafe { sockaddr_to_std(ai.ai_addr, ai.ai_family) } {
            out.push(address);
        }
        node = ai.ai_next;
    }
    // Safety: list came from getaddrinfo.
    unsafe { libc::freeaddrinfo(list) };
    Ok(out)
}

/// Safety: `addr` must point to a sockaddr of the given family.
unsafe fn sockaddr_to_std(addr: *const libc::sockaddr, family: libc::c_int) -> Option<SocketAddr> {
    match family {
        libc::AF_INET => {
            let a = unsafe { &*addr.cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            let a = unsafe { &*addr.cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(a.sin6_port), a.sin6_flowinfo, a.sin6_scope_id)))
        }
        _ => None,
    }
}

/// First file descriptor systemd passes.
const SD_LISTEN_FDS_START: i32 = 3;

/// A listening socket passed by systemd socket activation (`LISTEN_PID` is
/// this process and `LISTEN_FDS` ≥ 1): fd 3 is used, the rest ignored.
fn systemd_listener(addr: Option<&str>, port: &str) -> Result<Option<Bound>, String> {
    let for_us = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<i32>().ok()).unwrap_or(0);
    if !for_us || count < 1 {
        return Ok(None);
    }
    let mut warnings = Vec::new();
    if count > 1 {
        warnings.push("inherited more than one listen socket; ignoring all but the first".to_string());
    }
    if let Some(a) = addr {
        warnings.push(format!("inherited listen fd; ignoring option: -l {a}"));
    }
    if port != crate::config::PORT_DEFAULT {
        warnings.push(format!("inherited listen fd; ignoring option: -p {port}"));
    }
    let fd = SD_LISTEN_FDS_START;
    let socket_type = sockopt_int(fd, libc::SO_TYPE).map_err(|e| format!("sd_is_socket: {e}"))?;
    let listening = sockopt_int(fd, libc::SO_ACCEPTCONN).map_err(|e| format!("sd_is_socket: {e}"))?;
    let domain = sockopt_int(fd, libc::SO_DOMAIN).map_err(|e| format!("sd_is_socket: {e}"))?;
    if socket_type != libc::SOCK_STREAM || listening == 0 {
        return Err("inherited fd is not a TCP or UNIX listening socket".to_string());
    }
    // Safety: systemd hands this fd to us; nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let listener = match domain {
        libc::AF_INET | libc::AF_INET6 => BoundListener::Tcp(std::net::TcpListener::from(owned)),
        libc::AF_UNIX => BoundListener::Unix(std::os::unix::net::UnixListener::from(owned)),
        _ => return Err("inherited fd is not a TCP or UNIX listening socket".to_string()),
    };
    Ok(Some(Bound { listener, warnings, description: format!("inherited listen fd {fd}") }))
}

fn sockopt_int(fd: i32, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // Safety: valid out-pointers of the right size.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, option, (&raw mut value).cast(), &mut len) };
    if rc == 0 { Ok(value) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_loopback_on_an_ephemeral_port() {
        let bound = bind(Some("127.0.0.1"), "0").unwrap();
        let addr = bound.listener.local_tcp_addr().unwrap();
        assert!(addr.ip().is_loopback() && addr.port() != 0);
        assert!(bound.description.ends_with(&format!(" 127.0.0.1:{}", addr.port())), "{}", bound.description);
    }

    /// A port that is taken is tried for BIND_RETRY_MS, and taken at once
    /// when it frees up meanwhile.
    #[test]
    fn a_taken_port_is_tried_again_for_a_while() {
        let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = holder.local_addr().unwrap().port().to_string();
        let err = bind(Some("127.0.0.1"), &port).err().expect("the port is taken");
        assert!(err.starts_with("bind(): ") && err.contains("(os error 98)"), "{err}");
        let freed = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(BIND_RETRY_MS / 5));
            drop(holder);
        });
        let bound = bind(Some("127.0.0.1"), &port).expect("bound once the port was free");
        assert_eq!(bound.listener.local_tcp_addr().unwrap().port().to_string(), port);
        freed.join().unwrap();
    }

    #[test]
    fn unix_socket_replaces_a_stale_one_but_not_a_file() {
        let dir = std::env::temp_dir().join(format!("rb-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let p = path.to_str().unwrap();
        let first = bind(Some(&format!("unix:{p}")), "0").unwrap();
        drop(first);
        let second = bind(Some(&format!("unix:{p}")), "0").unwrap();
        assert_eq!(second.warnings, vec!["removing existing local socket to replace it".to_string()]);
        drop(second);
        let file = dir.join("plain");
        std::fs::write(&file, b"x").unwrap();
        let err = bind(Some(&format!("unix:{}", file.to_str().unwrap())), "0").err().unwrap();
        assert_eq!(err, "another file already exists in the given path");
        let long = format!("unix:/{}", "a".repeat(200));
        assert!(bind(Some(&long), "0").err().unwrap().contains("is too long"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
