//! The connection limit (`--connections-max`), on both back ends: at the
//! limit accepting pauses, the listener stays open so the kernel queues
//! new connections, they are served in order as others leave, and the
//! pause is logged at most once a second.

mod common;

use std::time::Duration;

use common::{Client, Server, on_both_and_four_cores, stat};

const USING: &str = "USING default\r\n";

#[test]
fn at_the_limit_new_connections_wait_and_are_served_as_others_leave() {
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &["--connections-max", "3"]);
        let mut served: Vec<Client> = (0..3).map(|_| server.connect()).collect();
        for c in &mut served {
            assert_eq!(c.ask(b"list-tube-used\r\n", 1), USING);
        }
        server.wait_for_log("runnerbean: 3 connections, the most allowed (--connections-max)");
        // The kernel completes these connections, but they are not served.
        let mut waiting: Vec<Client> = (0..2).map(|_| server.connect()).collect();
        for c in &mut waiting {
            c.send(b"list-tube-used\r\n");
        }
        waiting[0].assert_quiet(Duration::from_millis(100));
        let stats = served[0].ask(b"stats\r\n", 1);
        assert_eq!(stat(&stats, "current-connections"), "3");
        // One leaves: the first waiting connection takes its place, and
        // only that one.
        drop(served.pop());
        assert_eq!(String::from_utf8(waiting[0].replies(1)).unwrap(), USING);
        waiting[1].assert_quiet(Duration::from_millis(100));
        drop(served.pop());
        assert_eq!(String::from_utf8(waiting[1].replies(1)).unwrap(), USING);
        let stats = served[0].ask(b"stats\r\n", 1);
        assert_eq!(stat(&stats, "current-connections"), "3");
        assert_eq!(stat(&stats, "total-connections"), "5");
        // The limit was reached three times within moments: one line, or
        // two if a second passed meanwhile.
        let log = server.log_text();
        let lines = log.matches("the most allowed").count();
        assert!((1..=2).contains(&lines), "{lines} lines:\n{log}");
        // With room again, new connections are accepted at once.
        drop(waiting);
        let mut late = server.connect();
        assert_eq!(late.ask(b"list-tube-used\r\n", 1), USING);
    });
}
