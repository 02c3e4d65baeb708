//! runnerbean's own commands, `clear-tube` and `list-jobs` (docs/COMPAT.md,
//! "Commands beanstalkd does not have"), at the wire: exact reply bytes on
//! both back ends, their deletes kept by the write-ahead log across a
//! restart, and `--strict`, which answers them as C beanstalkd does (checked
//! against C beanstalkd when it is installed, and required in CI).

mod common;

use std::time::Duration;

use common::{CServer, Client, Server, TempDir, on_both_and_four_cores, stat};

/// How long a stopped server may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Puts a job with a one-byte body and returns its id.
fn put(c: &mut Client, pri: u32, delay_s: u32) -> u64 {
    let reply = c.ask(format!("put {pri} {delay_s} 60 1\r\nx\r\n").as_bytes(), 1);
    reply.trim_end().strip_prefix("INSERTED ").and_then(|id| id.parse().ok()).unwrap_or_else(|| panic!("{reply}"))
}

/// A list reply of these ids, byte for byte.
fn ids_reply(ids: &[u64]) -> String {
    let doc: String = std::iter::once("---\n".to_string()).chain(ids.iter().map(|id| format!("- {id}\n"))).collect();
    format!("OK {}\r\n{doc}\r\n", doc.len())
}

#[test]
fn clear_tube_and_list_jobs_answer_byte_for_byte() {
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &[]);
        let mut c = server.connect();
        assert_eq!(
            c.ask(b"use jobs\r\nwatch jobs\r\nignore default\r\n", 3),
            "USING jobs\r\nWATCHING 2\r\nWATCHING 1\r\n"
        );
        // Ready with priorities 7, 2, 7; two delayed; two buried; one
        // reserved.
        let (r1, r2, r3) = (put(&mut c, 7, 0), put(&mut c, 2, 0), put(&mut c, 7, 0));
        let (d1, d2) = (put(&mut c, 0, 300), put(&mut c, 0, 200));
        let (b1, b2, held) = (put(&mut c, 0, 0), put(&mut c, 0, 0), put(&mut c, 0, 0));
        for id in [b1, b2] {
            assert_eq!(c.ask(b"reserve\r\n", 1), format!("RESERVED {id} 1\r\nx\r\n"));
            assert_eq!(c.ask(format!("bury {id} 0\r\n").as_bytes(), 1), "BURIED\r\n");
        }
        assert_eq!(c.ask(b"reserve\r\n", 1), format!("RESERVED {held} 1\r\nx\r\n"));

        // Reserve order, kick order, and the order delays end in.
        assert_eq!(c.ask(b"list-jobs jobs ready 0 100\r\n", 1), ids_reply(&[r2, r1, r3]));
        assert_eq!(c.ask(format!("list-jobs jobs ready {r2} 1\r\n").as_bytes(), 1), ids_reply(&[r1]));
        assert_eq!(c.ask(b"list-jobs jobs delayed 0 100\r\n", 1), ids_reply(&[d2, d1]));
        assert_eq!(c.ask(b"list-jobs jobs buried 0 1\r\n", 1), ids_reply(&[b1]));
        assert_eq!(c.ask(format!("list-jobs jobs buried {b2} 5\r\n").as_bytes(), 1), "OK 4\r\n---\n\r\n");
        // A cursor that is not a job of that state starts from the front.
        assert_eq!(c.ask(format!("list-jobs jobs buried {held} 5\r\n").as_bytes(), 1), ids_reply(&[b1, b2]));
        assert_eq!(c.ask(b"list-jobs nope ready 0 1\r\n", 1), "NOT_FOUND\r\n");
        for bad in [
            "list-jobs jobs reserved 0 1",
            "list-jobs jobs ready 0",
            "list-jobs jobs ready 0 1 ",
            "list-jobs jobs ready -1 1",
            "list-jobs  jobs ready 0 1",
            "clear-tube jobs",
            "clear-tube jobs ready,",
            "clear-tube jobs reserved",
            "clear-tube -jobs ready",
        ] {
            assert_eq!(c.ask(format!("{bad}\r\n").as_bytes(), 1), "BAD_FORMAT\r\n", "{bad:?}");
        }
        assert_eq!(c.ask(b"clear-tube nope ready\r\n", 1), "NOT_FOUND\r\n");

        assert_eq!(c.ask(b"clear-tube jobs buried,delayed\r\n", 1), "CLEARED 4\r\n");
        for id in [b1, b2, d1, d2] {
            assert_eq!(c.ask(format!("peek {id}\r\n").as_bytes(), 1), "NOT_FOUND\r\n");
        }
        assert_eq!(c.ask(b"clear-tube jobs ready,delayed,buried\r\n", 1), "CLEARED 3\r\n");
        assert_eq!(c.ask(b"clear-tube jobs ready,delayed,buried\r\n", 1), "CLEARED 0\r\n");
        // The reserved job is untouched; deletes moved every count but
        // `cmd-delete`, which counts delete commands.
        let tube = c.ask(b"stats-tube jobs\r\n", 1);
        let figures = ["current-jobs-ready", "current-jobs-delayed", "current-jobs-buried", "current-jobs-reserved"];
        assert_eq!(figures.map(|k| stat(&tube, k)), ["0", "0", "0", "1"], "{tube}");
        assert_eq!((stat(&tube, "cmd-delete"), stat(&tube, "total-jobs")), ("0", "8"), "{tube}");
        let stats = c.ask(b"stats\r\n", 1);
        assert_eq!(figures.map(|k| stat(&stats, k)), ["0", "0", "0", "1"], "{stats}");
        assert_eq!((stat(&stats, "cmd-delete"), stat(&stats, "current-jobs-urgent")), ("0", "0"), "{stats}");
        assert_eq!(c.ask(format!("delete {held}\r\n").as_bytes(), 1), "DELETED\r\n");
        // The tube goes once nothing holds it, as after deletes.
        assert_eq!(
            c.ask(b"use default\r\nwatch default\r\nignore jobs\r\n", 3),
            "USING default\r\nWATCHING 2\r\nWATCHING 1\r\n"
        );
        assert_eq!(c.ask(b"list-jobs jobs ready 0 1\r\n", 1), "NOT_FOUND\r\n");
    });
}

/// A page is at most 1,000 ids (`LIST_JOBS_COUNT_MAX`), whatever the count
/// asked for, and paging by the last id of each page lists every job once.
#[test]
fn pages_are_capped_and_page_through_everything() {
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &[]);
        let mut c = server.connect();
        let jobs = 2500u64;
        let puts: Vec<u8> = (0..jobs).flat_map(|i| format!("put {} 0 60 1\r\nx\r\n", i % 7).into_bytes()).collect();
        c.send(&puts);
        c.replies(jobs as usize);
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            let reply = c.ask(format!("list-jobs default ready {after} 4294967295\r\n").as_bytes(), 1);
            let page: Vec<u64> = reply.lines().filter_map(|l| l.strip_prefix("- ")?.parse().ok()).collect();
            assert!(page.len() <= 1000, "a page of {}", page.len());
            let Some(&last) = page.last() else { break };
            seen.extend(page);
            after = last;
        }
        // Reserve order: priority, then id.
        let mut want: Vec<(u64, u64)> = (1..=jobs).map(|id| ((id - 1) % 7, id)).collect();
        want.sort();
        assert_eq!(seen, want.into_iter().map(|(_, id)| id).collect::<Vec<_>>());
        assert_eq!(c.ask(b"clear-tube default ready\r\n", 1), format!("CLEARED {jobs}\r\n"));
        assert_eq!(stat(&c.ask(b"stats\r\n", 1), "current-jobs-ready"), "0");
    });
}

/// With `-b`, clear-tube writes a delete record for each job, so the jobs
/// it cleared stay gone after a restart and the others come back.
#[test]
fn cleared_jobs_stay_deleted_after_a_restart() {
    on_both_and_four_cores(|backend| {
        let dir = TempDir::new("clear-restart");
        let args = ["-b", dir.arg()];
        let mut server = Server::start(backend, &args);
        let mut c = server.connect();
        assert_eq!(c.ask(b"use t\r\n", 1), "USING t\r\n");
        let kept_ready = put(&mut c, 0, 0);
        let cleared: Vec<u64> = (0..3).map(|_| put(&mut c, 0, 100)).collect();
        let before = stat(&c.ask(b"stats\r\n", 1), "binlog-records-written").parse::<u64>().unwrap();
        assert_eq!(c.ask(b"clear-tube t delayed\r\n", 1), "CLEARED 3\r\n");
        let after = stat(&c.ask(b"stats\r\n", 1), "binlog-records-written").parse::<u64>().unwrap();
        assert_eq!(after, before + 3, "one delete record per job");
        drop(c);
        server.signal("TERM");
        assert_eq!(server.wait(EXIT_TIMEOUT), Some(0), "{}", server.log_text());

        let server = Server::start(backend, &args);
        let mut c = server.connect();
        assert_eq!(c.ask(format!("peek {kept_ready}\r\n").as_bytes(), 1), format!("FOUND {kept_ready} 1\r\nx\r\n"));
        for id in cleared {
            assert_eq!(c.ask(format!("peek {id}\r\n").as_bytes(), 1), "NOT_FOUND\r\n");
        }
        let tube = c.ask(b"stats-tube t\r\n", 1);
        assert_eq!((stat(&tube, "current-jobs-ready"), stat(&tube, "current-jobs-delayed")), ("1", "0"));
    });
}

/// Lines a client might send, runnerbean's own commands among them, well
/// formed or not, with an ordinary command after each to show that the
/// connection goes on.
const STRICT_SCRIPT: &[&str] = &[
    "list-jobs default ready 0 10",
    "clear-tube default ready",
    "clear-tube default",
    "clear-tube",
    "list-jobs",
    "list-jobs x y z",
    "clear-tubes default ready",
    "peek 1",
    "list-tubes",
];

fn strict_transcript(port: u16) -> String {
    let mut c = Client::connect(port);
    let mut out = c.ask(b"put 0 0 60 1\r\nx\r\n", 1);
    for line in STRICT_SCRIPT {
        out += &c.ask(format!("{line}\r\n").as_bytes(), 1);
    }
    let tube = c.ask(b"stats-tube default\r\n", 1);
    out + tube.lines().find(|l| l.starts_with("current-jobs-ready")).unwrap()
}

#[test]
fn strict_answers_runnerbean_s_own_commands_as_c_beanstalkd_does() {
    let expected = "INSERTED 1\r\nUNKNOWN_COMMAND\r\nUNKNOWN_COMMAND\r\nUNKNOWN_COMMAND\r\nUNKNOWN_COMMAND\r\n\
UNKNOWN_COMMAND\r\nUNKNOWN_COMMAND\r\nUNKNOWN_COMMAND\r\nFOUND 1 1\r\nx\r\nOK 14\r\n---\n- default\n\r\n\
current-jobs-ready: 1";
    on_both_and_four_cores(|backend| {
        let server = Server::start(backend, &["--strict"]);
        assert_eq!(strict_transcript(server.port), expected);
    });
    let Some(beanstalkd) = common::c_beanstalkd() else {
        assert!(!common::live_required(), "RUNNERBEAN_REQUIRE_LIVE=1 but `beanstalkd` is not on PATH");
        eprintln!("strict: C beanstalkd part skipped, `beanstalkd` is not on PATH");
        return;
    };
    let c = CServer::start(&beanstalkd, &[]);
    assert_eq!(strict_transcript(c.port), expected, "C beanstalkd");
}
