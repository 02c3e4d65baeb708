//! Every rbctl subcommand end to end: the real rbctl binary against the real runnerbean
//! binary and, when it is installed, C beanstalkd. Outputs are compared exactly where they do
//! not depend on the clock or on process ids.

use std::io::Write;
use std::process::{Command, Stdio};

use runnerbean_testserver::{Kind, TestServer};

const RBCTL: &str = env!("CARGO_BIN_EXE_rbctl");

/// What one run of rbctl printed and returned.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `rbctl --addr ADDR ARGS...` with `stdin` as its input (stdin, stdout and stderr are
/// pipes, so rbctl sees no terminal).
fn rbctl(addr: &str, args: &[&str], stdin: &[u8]) -> Run {
    let mut child = Command::new(RBCTL)
        .arg("--addr")
        .arg(addr)
        .args(args)
        .env_remove("BEANSTALK_ADDR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rbctl");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("write stdin");
    drop(input);
    let output = child.wait_with_output().expect("rbctl output");
    Run {
        code: output.status.code().expect("exit code, not a signal"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs rbctl and asserts that it succeeded with nothing on stderr; returns stdout.
fn ok(addr: &str, args: &[&str]) -> String {
    let run = rbctl(addr, args, b"");
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "rbctl {args:?}: {run:?}");
    run.stdout
}

/// Runs rbctl and asserts its exit code and its one line on stderr.
fn fails(addr: &str, args: &[&str], code: i32, stderr: &str) {
    let run = rbctl(addr, args, b"");
    assert_eq!((run.code, run.stderr.as_str(), run.stdout.as_str()), (code, stderr, ""), "rbctl {args:?}");
}

/// A tube's `stats --json` line; `using` connections also watch it (rbctl's own connection
/// uses and watches `default`).
fn tube_json(name: &str, counts: [u64; 5], total: u64, using: u64, deletes: u64) -> String {
    let [urgent, ready, reserved, delayed, buried] = counts;
    format!(
        "{{\"name\":\"{name}\",\"current-jobs-urgent\":{urgent},\"current-jobs-ready\":{ready},\
         \"current-jobs-reserved\":{reserved},\"current-jobs-delayed\":{delayed},\"current-jobs-buried\":{buried},\
         \"total-jobs\":{total},\"current-using\":{using},\"current-watching\":{using},\"current-waiting\":0,\
         \"cmd-delete\":{deletes},\"cmd-pause-tube\":0,\"pause\":0,\"pause-time-left\":0}}"
    )
}

#[test]
fn put_peek_reserve_delete() {
    for server in TestServer::both() {
        let addr = server.addr();
        assert_eq!(ok(addr, &["put", "from an argument", "--tube", "t", "--pri", "5", "--ttr", "30"]), "1\n");
        let file = std::env::temp_dir().join(format!("rbctl-test-body-{}", std::process::id()));
        std::fs::write(&file, b"from a file\n\0binary").expect("write body");
        assert_eq!(ok(addr, &["put", "-f", file.to_str().expect("path"), "-t", "t"]), "2\n");
        let _ = std::fs::remove_file(&file);
        let run = rbctl(addr, &["put", "-t", "t", "--delay", "600"], b"from stdin");
        assert_eq!((run.code, run.stdout.as_str()), (0, "3\n"), "{run:?}");

        // Not a terminal: the body exactly, nothing more.
        assert_eq!(ok(addr, &["peek", "2"]), "from a file\n\0binary");
        assert_eq!(ok(addr, &["peek", "--ready", "-t", "t"]), "from an argument");
        assert_eq!(ok(addr, &["peek", "--delayed", "-t", "t"]), "from stdin");
        fails(addr, &["peek", "--buried", "-t", "t"], 1, "rbctl: no buried job in tube \"t\"\n");
        fails(addr, &["peek", "99"], 1, "rbctl: job 99 not found\n");

        // Without --delete the job goes back when rbctl's connection closes.
        assert_eq!(ok(addr, &["reserve", "-t", "t"]), "from an argument");
        assert_eq!(ok(addr, &["reserve", "-t", "t", "--timeout", "0", "--delete"]), "from an argument");
        assert_eq!(ok(addr, &["reserve", "-t", "t", "--timeout", "0", "--delete"]), "from a file\n\0binary");
        fails(addr, &["reserve", "-t", "t", "--timeout", "0"], 1, "rbctl: no job within 0 s\n");
        assert_eq!(ok(addr, &["delete", "3"]), "deleted job 3\n");
        let run = rbctl(addr, &["delete", "1", "3"], b"");
        assert_eq!(
            (run.code, run.stdout.as_str(), run.stderr.as_str()),
            (1, "", "rbctl: job 1 not found\nrbctl: job 3 not found\n"),
            "{}",
            server.name()
        );
    }
}

#[test]
fn put_lines_pipelines_one_job_per_line() {
    for server in TestServer::both() {
        let addr = server.addr();
        let input: String = (0..3000).map(|i| format!("line {i}\n")).collect();
        let run = rbctl(addr, &["put", "--lines", "-t", "bulk", "--pri", "7"], input.as_bytes());
        assert_eq!((run.code, run.stdout.as_str(), run.stderr.as_str()), (0, "put 3000 jobs into tube \"bulk\"\n", ""));
        assert_eq!(ok(addr, &["peek", "1"]), "line 0");
        assert_eq!(ok(addr, &["peek", "3000"]), "line 2999");
        let json = ok(addr, &["stats", "--job", "3000", "--json"]);
        assert!(json.contains("\"tube\":\"bulk\",\"state\":\"ready\",\"pri\":7,"), "{json}");
        let run = rbctl(addr, &["put", "--lines"], b"a\r\n\nb");
        assert_eq!(run.stdout, "put 3 jobs into tube \"default\"\n");
        assert_eq!(ok(addr, &["peek", "3001"]), "a");
        assert_eq!(ok(addr, &["peek", "3002"]), "");
        assert_eq!(ok(addr, &["peek", "3003"]), "b");
    }
}

#[test]
fn put_require_workers_refuses_a_tube_nobody_watches() {
    use std::io::{BufRead, BufReader};
    for server in TestServer::both() {
        let addr = server.addr();
        let refusal = "rbctl: no worker watches tube \"mail\"; nothing was put\n";
        fails(addr, &["put", "hello", "-t", "mail", "--require-workers"], 6, refusal);
        // rbctl's own connection watches `default`; that does not make it a worker.
        let refusal = "rbctl: no worker watches tube \"default\"; nothing was put\n";
        fails(addr, &["put", "hello", "--require-workers"], 6, refusal);
        fails(addr, &["stats", "--tube", "mail"], 1, "rbctl: tube \"mail\" not found\n");

        // A worker: a connection that watches the tube (without waiting in a reserve).
        let mut worker = std::net::TcpStream::connect(addr).expect("connect worker");
        worker.write_all(b"watch mail\r\n").expect("send watch");
        let mut reply = String::new();
        BufReader::new(&worker).read_line(&mut reply).expect("read reply");
        assert_eq!(reply, "WATCHING 2\r\n");
        assert_eq!(ok(addr, &["put", "hello", "-t", "mail", "--require-workers"]), "1\n");
        assert_eq!(ok(addr, &["peek", "1"]), "hello");
        let run = rbctl(addr, &["put", "--lines", "-t", "mail", "--require-workers"], b"a\nb\n");
        assert_eq!((run.code, run.stdout.as_str()), (0, "put 2 jobs into tube \"mail\"\n"), "{run:?}");
    }
}

#[test]
fn bury_kick_touch_release() {
    for server in TestServer::both() {
        let addr = server.addr();
        for body in ["a", "b", "c"] {
            ok(addr, &["put", body, "-t", "k", "--pri", "9"]);
        }
        assert_eq!(ok(addr, &["bury", "1"]), "buried job 1\n");
        assert_eq!(ok(addr, &["bury", "2", "--pri", "3"]), "buried job 2\n");
        let job2 = ok(addr, &["stats", "--job", "2", "--json"]);
        assert!(job2.contains("\"state\":\"buried\",\"pri\":3,"), "{job2}");
        assert_eq!(ok(addr, &["peek", "--buried", "-t", "k"]), "a");
        assert_eq!(ok(addr, &["kick", "-t", "k"]), "kicked 1 job in tube \"k\"\n");
        assert_eq!(ok(addr, &["kick", "10", "-t", "k"]), "kicked 1 job in tube \"k\"\n");
        assert_eq!(ok(addr, &["kick", "10", "-t", "k"]), "kicked 0 jobs in tube \"k\"\n");

        assert_eq!(ok(addr, &["release", "3", "--delay", "600", "--pri", "1"]), "released job 3\n");
        let job3 = ok(addr, &["stats", "--job", "3", "--json"]);
        assert!(job3.contains("\"state\":\"delayed\",\"pri\":1,"), "{job3}");
        assert_eq!(ok(addr, &["kick", "--job", "3"]), "kicked job 3\n");
        fails(addr, &["kick", "--job", "3"], 1, "rbctl: job 3 not found (or not buried or delayed)\n");
        assert_eq!(ok(addr, &["touch", "3"]), "touched job 3\n");
        let job3 = ok(addr, &["stats", "--job", "3", "--json"]);
        assert!(job3.contains("\"state\":\"ready\",\"pri\":1,"), "{job3}");
        fails(addr, &["touch", "99"], 1, "rbctl: job 99 not found (or reserved by another client)\n");
        fails(addr, &["bury", "99"], 1, "rbctl: job 99 not found (or reserved by another client)\n");
    }
}

#[test]
fn stats_as_json_and_as_a_table() {
    for server in TestServer::both() {
        let addr = server.addr();
        ok(addr, &["put", "x", "-t", "s", "--pri", "1"]);
        ok(addr, &["put", "y", "-t", "s", "--delay", "600"]);
        assert_eq!(ok(addr, &["stats", "--tube", "s", "--json"]), tube_json("s", [1, 1, 0, 1, 0], 2, 0, 0) + "\n");

        let table = ok(addr, &["stats", "--tube", "s"]);
        let expected = "name:                  s\n\
                        current-jobs-urgent:   1\n\
                        current-jobs-ready:    1\n\
                        current-jobs-reserved: 0\n\
                        current-jobs-delayed:  1\n\
                        current-jobs-buried:   0\n\
                        total-jobs:            2\n\
                        current-using:         0\n\
                        current-watching:      0\n\
                        current-waiting:       0\n\
                        cmd-delete:            0\n\
                        cmd-pause-tube:        0\n\
                        pause:                 0\n\
                        pause-time-left:       0\n";
        assert_eq!(table, expected);

        // A job's stats: exact but for the age, which is whole seconds since the put.
        let text = ok(addr, &["stats", "--job", "1", "--json"]);
        let job: serde_json::Value = serde_json::from_str(&text).expect("json");
        let age = job["age"].as_u64().expect("age is a number");
        let expected = format!(
            "{{\"id\":1,\"tube\":\"s\",\"state\":\"ready\",\"pri\":1,\"age\":{age},\"delay\":0,\"ttr\":60,\
             \"time-left\":0,\"file\":0,\"reserves\":0,\"timeouts\":0,\"releases\":0,\"buries\":0,\"kicks\":0}}\n"
        );
        assert_eq!(text, expected);

        // The server's stats: every key in the server's order, numbers as numbers.
        let text = ok(addr, &["stats", "--json"]);
        let stats: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).expect("json");
        let keys: Vec<&str> = stats.keys().map(String::as_str).collect();
        assert_eq!(
            keys[..5],
            [
                "current-jobs-urgent",
                "current-jobs-ready",
                "current-jobs-reserved",
                "current-jobs-delayed",
                "current-jobs-buried"
            ]
        );
        assert_eq!(keys[36..38], ["pid", "version"]);
        assert_eq!(keys[47..51], ["id", "hostname", "os", "platform"]);
        assert_eq!(stats["current-jobs-delayed"], 1);
        assert_eq!(stats["cmd-put"], 2);
        assert_eq!(stats["pid"], server.pid());
        assert_eq!(stats["draining"], false);
        assert!(stats["rusage-utime"].is_f64() && stats["version"].is_string() && stats["os"].is_string());
        match server.kind() {
            Kind::Runnerbean => {
                assert_eq!(keys.len(), 54);
                assert_eq!(stats["version"], "1.13");
                assert_eq!(stats["runnerbean-cores"], 1);
            }
            Kind::Beanstalkd => assert_eq!(keys.len(), 51),
        }
        let table = ok(addr, &["stats"]);
        assert!(table.lines().any(|l| l == "current-jobs-delayed:     1"), "{table}");
        assert!(table.lines().any(|l| l == format!("pid:                      {}", server.pid())), "{table}");
        assert_eq!(table.lines().count(), keys.len());

        fails(addr, &["stats", "--tube", "nope"], 1, "rbctl: tube \"nope\" not found\n");
        fails(addr, &["stats", "--job", "42"], 1, "rbctl: job 42 not found\n");
    }
}

#[test]
fn tubes_table_and_json() {
    for server in TestServer::both() {
        let addr = server.addr();
        for _ in 0..3 {
            ok(addr, &["put", "r", "-t", "alpha", "--pri", "2000"]);
        }
        ok(addr, &["put", "d", "-t", "beta", "--delay", "600"]);
        ok(addr, &["bury", "1"]);
        let expected = "TUBE     READY  RESERVED  DELAYED  BURIED  WAITING  PUT/S  DELETE/S  PAUSED\n\
                        default      0         0        0       0        0      -         -       0\n\
                        alpha        2         0        0       1        0      -         -       0\n\
                        beta         0         0        1       0        0      -         -       0\n";
        assert_eq!(ok(addr, &["tubes", "--interval", "0"]), expected, "{}", server.name());
        let json = ok(addr, &["tubes", "--interval", "0", "--json"]);
        let expected = format!(
            "[{},{},{}]\n",
            tube_json("default", [0; 5], 0, 1, 0),
            tube_json("alpha", [0, 2, 0, 0, 1], 3, 0, 0),
            tube_json("beta", [0, 0, 0, 1, 0], 1, 0, 0)
        );
        assert_eq!(json, expected);

        // With an interval, rates come from two samples; jobs put in between show as a rate.
        let sampling = Command::new(RBCTL)
            .args(["--addr", addr, "tubes", "--interval", "1", "--json"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start rbctl");
        // The first sample is taken once the sampler has sent its three stats-tube commands
        // (after the six of the two runs above).
        let started = std::time::Instant::now();
        loop {
            let stats: serde_json::Value = serde_json::from_str(&ok(addr, &["stats", "--json"])).expect("json");
            if stats["cmd-stats-tube"].as_u64() >= Some(9) {
                break;
            }
            assert!(started.elapsed() < std::time::Duration::from_secs(10), "the sampler never sampled");
        }
        for _ in 0..5 {
            ok(addr, &["put", "r", "-t", "alpha"]);
        }
        let output = sampling.wait_with_output().expect("output");
        let tubes: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).expect("json");
        let alpha = tubes.iter().find(|t| t["name"] == "alpha").expect("alpha");
        assert!(alpha["puts-per-second"].as_f64().expect("rate") > 0.0, "{alpha}");
        assert_eq!(alpha["deletes-per-second"], 0.0);
    }
}

#[test]
fn jobs_lists_a_state_in_the_servers_order() {
    for server in TestServer::both() {
        let addr = server.addr();
        ok(addr, &["put", "b", "-t", "l", "--pri", "2"]);
        ok(addr, &["put", "a", "-t", "l", "--pri", "1"]);
        ok(addr, &["put", "c", "-t", "l", "--pri", "3"]);
        ok(addr, &["put", "d", "-t", "l", "--delay", "600"]);
        let run = rbctl(addr, &["jobs", "l"], b"");
        assert_eq!(run.code, 0, "{run:?}");
        if run.stderr.is_empty() {
            assert_eq!(run.stdout, "2\n1\n3\n", "{}", server.name());
            assert_eq!(ok(addr, &["jobs", "l", "--after", "2"]), "1\n3\n");
            assert_eq!(ok(addr, &["jobs", "l", "-n", "2"]), "2\n1\n");
        } else {
            // Without list-jobs only the first can be seen, and rbctl says so.
            assert_eq!(run.stdout, "2\n", "{}", server.name());
            assert_eq!(run.stderr, "rbctl: the server has no list-jobs: only the first of 3 ready jobs can be seen\n");
            assert_eq!(ok(addr, &["jobs", "l", "-n", "1"]), "2\n");
        }
        assert_eq!(ok(addr, &["jobs", "l", "--delayed"]), "4\n");
        assert_eq!(ok(addr, &["jobs", "l", "--buried"]), "");
        fails(addr, &["jobs", "nothing"], 1, "rbctl: tube \"nothing\" not found\n");
    }
}

#[test]
fn pause_clear_and_move() {
    for server in TestServer::both() {
        let addr = server.addr();
        assert_eq!(ok(addr, &["pause", "default", "60"]), "paused tube \"default\" for 60 s\n");
        assert!(ok(addr, &["stats", "--tube", "default", "--json"]).contains("\"cmd-pause-tube\":1,\"pause\":60,"));
        assert_eq!(ok(addr, &["pause", "default", "0"]), "tube \"default\" is no longer paused\n");
        fails(addr, &["pause", "nope", "1"], 1, "rbctl: tube \"nope\" not found\n");

        for i in 0..4 {
            ok(addr, &["put", &format!("ready {i}"), "-t", "c"]);
        }
        ok(addr, &["put", "delayed", "-t", "c", "--delay", "600"]);
        ok(addr, &["bury", "1"]);
        ok(addr, &["bury", "2"]);
        // stdin is not a terminal, so nothing asks for confirmation.
        assert_eq!(ok(addr, &["clear", "c", "--buried"]), "deleted 2 jobs from tube \"c\"\n");
        assert_eq!(ok(addr, &["clear", "c", "--buried"]), "no buried jobs in tube \"c\"\n");
        assert_eq!(ok(addr, &["clear", "c", "--ready", "--yes"]), "deleted 2 jobs from tube \"c\"\n");
        // runnerbean clears with one clear-tube command, which does not count as deletes
        // (docs/COMPAT.md); C beanstalkd has no such command, and rbctl deletes one job at a
        // time there.
        let deletes = if server.kind() == Kind::Runnerbean { 0 } else { 4 };
        assert_eq!(
            ok(addr, &["stats", "--tube", "c", "--json"]),
            tube_json("c", [0, 0, 0, 1, 0], 5, 0, deletes) + "\n"
        );
        assert_eq!(ok(addr, &["clear", "c"]), "deleted 1 job from tube \"c\"\n");
        fails(addr, &["clear", "gone"], 1, "rbctl: tube \"gone\" not found\n");

        ok(addr, &["put", "m1", "-t", "from", "--pri", "3", "--ttr", "77"]);
        ok(addr, &["put", "m2", "-t", "from", "--pri", "4"]);
        ok(addr, &["put", "m3", "-t", "from", "--delay", "600"]);
        ok(addr, &["bury", "7"]);
        assert_eq!(ok(addr, &["move", "from", "to"]), "moved 2 jobs from tube \"from\" to tube \"to\"\n");
        // The delayed job stays; the moved ones are ready in the target with their priority,
        // time-to-run and body, under new ids.
        assert_eq!(
            ok(addr, &["stats", "--tube", "from", "--json"]),
            tube_json("from", [0, 0, 0, 1, 0], 3, 0, 2) + "\n"
        );
        assert_eq!(ok(addr, &["peek", "--ready", "-t", "to"]), "m1");
        let moved: serde_json::Value =
            serde_json::from_str(&ok(addr, &["stats", "--job", "9", "--json"])).expect("json");
        assert_eq!(
            (moved["tube"].as_str(), moved["pri"].as_u64(), moved["ttr"].as_u64()),
            (Some("to"), Some(3), Some(77))
        );
        assert_eq!(ok(addr, &["peek", "10"]), "m2");
        assert!(
            ok(addr, &["stats", "--job", "10", "--json"]).contains("\"tube\":\"to\",\"state\":\"ready\",\"pri\":4,")
        );
        fails(addr, &["move", "to", "to"], 2, "rbctl: the two tubes are the same\n");
    }
}

#[test]
fn tail_prints_jobs_and_gives_them_back_or_consumes_them() {
    for server in TestServer::both() {
        let addr = server.addr();
        ok(addr, &["put", "first", "-t", "log", "--pri", "5"]);
        ok(addr, &["put", "second\n", "-t", "log", "--pri", "6"]);
        let tail = Command::new(RBCTL)
            .args(["--addr", addr, "tail", "log", "-n", "3"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tail");
        // Each job is printed once although it goes back to ready after every sweep; the third
        // arrives while tail follows the tube.
        let started = std::time::Instant::now();
        while !ok(addr, &["stats", "--tube", "log", "--json"]).contains("\"current-watching\":1") {
            assert!(started.elapsed() < std::time::Duration::from_secs(10), "tail never watched the tube");
        }
        ok(addr, &["put", "third", "-t", "log", "--pri", "1"]);
        let output = tail.wait_with_output().expect("tail output");
        assert_eq!(String::from_utf8_lossy(&output.stdout), "first\nsecond\nthird\n", "{}", server.name());
        assert!(output.status.success());
        // All three are still there, ready, with their priorities.
        assert_eq!(ok(addr, &["stats", "--tube", "log", "--json"]), tube_json("log", [3, 3, 0, 0, 0], 3, 0, 0) + "\n");
        assert_eq!(ok(addr, &["peek", "--ready", "-t", "log"]), "third");

        let run = rbctl(addr, &["tail", "log", "--delete", "-n", "3"], b"");
        assert_eq!((run.code, run.stdout.as_str()), (0, "third\nfirst\nsecond\n"));
        // Empty and unused, the tube is gone.
        fails(addr, &["stats", "--tube", "log"], 1, "rbctl: tube \"log\" not found\n");
    }
}

#[test]
fn top_prints_plain_lines_when_not_on_a_terminal() {
    for server in TestServer::both() {
        let addr = server.addr();
        ok(addr, &["put", "x", "-t", "zeta"]);
        ok(addr, &["put", "y", "-t", "alpha", "--pri", "1"]);
        ok(addr, &["put", "z", "-t", "alpha", "--delay", "600"]);
        let expected = "server ready=2 reserved=0 delayed=1 buried=0 connections=1 producers=0 workers=0 waiting=0 put/s=- reserve/s=- delete/s=-\n\
                        tube alpha ready=1 reserved=0 delayed=1 buried=0 waiting=0 put/s=- delete/s=-\n\
                        tube default ready=0 reserved=0 delayed=0 buried=0 waiting=0 put/s=- delete/s=-\n\
                        tube zeta ready=1 reserved=0 delayed=0 buried=0 waiting=0 put/s=- delete/s=-\n";
        assert_eq!(ok(addr, &["top", "-n", "1"]), expected, "{}", server.name());
        let sorted = ok(addr, &["top", "-n", "1", "--sort", "ready", "--filter", "a"]);
        let tubes: Vec<&str> = sorted.lines().skip(1).map(|l| l.split(' ').nth(1).unwrap_or_default()).collect();
        // Largest first, names breaking ties; "zeta" and "alpha" contain an "a", as does "default".
        assert_eq!(tubes, ["alpha", "zeta", "default"]);
        // Two refreshes: the second has rates.
        let two = ok(addr, &["top", "-n", "2", "--interval", "0.1"]);
        assert_eq!(two.lines().count(), 8);
        assert!(two.lines().nth(4).is_some_and(|l| l.starts_with("server ") && l.contains(" put/s=0.0 ")), "{two}");
    }
}

#[test]
fn raw_session_from_a_pipe() {
    for server in TestServer::both() {
        let script = b"use chat\nput 0 0 10 5\nhello\nreserve-with-timeout 0\nwatch chat\nreserve\nbogus\nstats-tube chat\nquit\n";
        let run = rbctl(server.addr(), &["raw"], script);
        let expected = "USING chat\nINSERTED 1\nTIMED_OUT\nWATCHING 2\nRESERVED 1 5\nhello\nUNKNOWN_COMMAND\n";
        assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
        assert!(run.stdout.starts_with(expected), "{}", run.stdout);
        let doc = &run.stdout[expected.len()..];
        assert!(doc.starts_with("OK ") && doc.contains("current-jobs-reserved: 1\n"), "{doc}");
    }
}

#[test]
fn errors_are_one_line_with_an_exit_code() {
    fails("127.0.0.1:1", &["stats"], 3, "rbctl: cannot connect to 127.0.0.1:1: connection refused\n");
    fails(
        "unix:/nonexistent/sock",
        &["tubes"],
        3,
        "rbctl: cannot connect to unix:/nonexistent/sock: no such file or directory\n",
    );
    fails("host:port", &["stats"], 2, "rbctl: invalid argument: \"host:port\" has no valid port\n");
    let server = TestServer::runnerbean_with(&["-z", "4"]);
    fails(server.addr(), &["put", "too big"], 1, "rbctl: job too big for the server's max-job-size\n");
    fails(server.addr(), &["put", "x", "-t", "bad*name"], 1, "rbctl: tube \"bad*name\": server replied BAD_FORMAT\n");
    fails(server.addr(), &["top", "--interval", "0"], 2, "rbctl: --interval must be at least 0.1 seconds\n");
    let run = rbctl(server.addr(), &["peek"], b"");
    assert_eq!(run.code, 2);
    assert!(run.stderr.starts_with("error: the following required arguments were not provided"), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"));
}

#[test]
fn every_subcommand_has_help() {
    let subcommands = [
        "put", "reserve", "peek", "jobs", "delete", "bury", "kick", "touch", "release", "stats", "tubes", "pause",
        "clear", "move", "tail", "top", "raw", "web",
    ];
    let top = rbctl("127.0.0.1:1", &["--help"], b"");
    assert_eq!(top.code, 0);
    assert!(top.stdout.contains("Exit codes:"), "{}", top.stdout);
    for sub in subcommands {
        assert!(top.stdout.contains(&format!("\n  {sub} ")), "{sub} missing from --help");
        let help = rbctl("127.0.0.1:1", &[sub, "--help"], b"");
        assert_eq!(help.code, 0, "{sub}");
        assert!(help.stdout.contains(&format!("Usage: rbctl {sub}")), "{sub}: {}", help.stdout);
    }
}

#[test]
fn unix_socket_and_the_address_variable() {
    let server = TestServer::runnerbean_unix();
    let output = Command::new(RBCTL)
        .args(["put", "over unix"])
        .env("BEANSTALK_ADDR", server.addr())
        .output()
        .expect("run rbctl");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "1\n");
    assert_eq!(ok(server.addr(), &["peek", "1"]), "over unix");
}
