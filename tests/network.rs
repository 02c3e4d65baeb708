//! Wire tests of the network layer under the hostile tester's loads
//! (`scripts/abuse`), on both back ends: connections reset in the middle of
//! a command, and the descriptors they hold.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{REPLY_TIMEOUT, Server, on_both, stat};

/// Connections of each kind that reset: the harness's junk-connection
/// scenario left a few of every thousand open on io_uring.
const RESETS_PER_KIND: usize = 700;
/// Clients sending them at once, so that resets arrive while the server is
/// busy with other connections.
const CLIENTS: usize = 4;

/// The descriptors the server has open.
fn open_fds(server: &Server) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.pid())).expect("the server's descriptors").count()
}

/// What the server's descriptors are, for messages.
fn fd_targets(server: &Server) -> Vec<String> {
    let dir = std::fs::read_dir(format!("/proc/{}/fd", server.pid())).expect("the server's descriptors");
    dir.filter_map(|e| {
        let e = e.ok()?;
        Some(format!("{}: {}", e.file_name().to_string_lossy(), std::fs::read_link(e.path()).ok()?.display()))
    })
    .collect()
}

/// Connects, sends `bytes` and resets the connection (SO_LINGER 0), as a
/// client killed in the middle of a command does.
fn send_and_reset(server: &Server, bytes: &[u8]) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    stream.write_all(bytes).expect("send");
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
}

/// Connections reset after part of a put body (a small one, received
/// through the shared buffers, and a large one, received straight into
/// the job), or after pipelining commands whose replies they never read:
/// every one is closed, so the server's descriptors come back to what they
/// were and only the asking connection is left.
#[test]
fn connections_reset_in_the_middle_of_a_command_are_all_closed() {
    let mut large = b"put 0 0 10 60000\r\n".to_vec();
    large.resize(large.len() + 1000, b'x');
    let kinds: [&[u8]; 4] = [b"put 0 0 10 100\r\nabc", &large, &b"stats\r\n".repeat(50), b"put 0 0 1"];
    on_both(|backend| {
        let server = Server::start(backend, &[]);
        // Once it has answered, the server has everything of its own open.
        let mut asker = server.connect();
        assert_eq!(asker.ask(b"list-tube-used\r\n", 1), "USING default\r\n", "{backend}");
        let base = open_fds(&server);
        std::thread::scope(|scope| {
            for _ in 0..CLIENTS {
                scope.spawn(|| {
                    for _ in 0..RESETS_PER_KIND / CLIENTS {
                        for kind in kinds {
                            send_and_reset(&server, kind);
                        }
                    }
                });
            }
        });
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut open = open_fds(&server);
        while open > base && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            open = open_fds(&server);
        }
        assert_eq!(open, base, "{backend}: descriptors left open by reset connections: {:?}", fd_targets(&server));
        let doc = asker.ask(b"stats\r\n", 1);
        assert_eq!(stat(&doc, "current-connections"), "1", "{backend}");
        assert_eq!(stat(&doc, "current-jobs-ready"), "0", "{backend}");
    });
}
