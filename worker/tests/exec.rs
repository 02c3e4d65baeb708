//! `runnerbean-worker exec` end to end: the real worker binary against the real runnerbean
//! binary, with jobs put by the client library's publisher and the processes' files checked.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Worker, backq_process, deleted, job, php_str, until};
use runnerbean_client::{Client, JobState};
use runnerbean_testserver::TestServer;
use serde_json::json;

async fn publisher(server: &TestServer) -> Client {
    Client::connect(server.addr()).await.expect("connect")
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn body(value: serde_json::Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

#[tokio::test]
async fn runs_json_backq_and_plain_text_jobs() {
    for server in TestServer::both() {
        runs_every_kind_of_job(&server).await;
    }
}

async fn runs_every_kind_of_job(server: &TestServer) {
    let p = publisher(server).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8 path");
    let tube = "process";
    let mut ids = Vec::new();
    let argv = body(json!({"argv": ["sh", "-c", "echo from-argv > argv.txt"], "cwd": d}));
    ids.push(p.publish(tube, &argv, 10, 0, 60).await.expect("publish"));
    let shell = json!({
        "shell": "printf '%s %s %s' \"$X\" \"${HOME-unset}\" \"$(cat)\" > shell.txt",
        "cwd": d, "env": {"X": "env-value", "HOME": null}, "stdin": "stdin-value", "timeout_s": 30,
    });
    ids.push(p.publish(tube, &body(shell), 10, 0, 60).await.expect("publish"));
    let text = format!("cd '{d}' && echo plain-output && echo from-text > text.txt");
    ids.push(p.publish(tube, text.as_bytes(), 10, 0, 60).await.expect("publish"));
    // backq's own bytes, as PHP's serialize() wrote them: `touch made-by-backq` in the
    // worker's directory.
    let argv_fixture = include_bytes!("fixtures/backq/argv.ser");
    ids.push(p.publish(tube, argv_fixture, 10, 0, 60).await.expect("publish"));
    // And a backq shell command with a directory, environment and input of the test's.
    let backq = backq_process(&[
        ("commandline", php_str("printf \"%s:%s:%s\" \"$GREETING\" \"${DROPPED-gone}\" \"$(cat)\" > backq.txt")),
        ("cwd", php_str(d)),
        ("env", "a:2:{s:8:\"GREETING\";s:5:\"hello\";s:7:\"DROPPED\";b:0;}".to_owned()),
        ("input", php_str("from stdin")),
        ("timeout", "d:30;".to_owned()),
        ("until", "i:0;".to_owned()),
    ]);
    ids.push(p.publish(tube, &backq, 10, 0, 60).await.expect("publish"));

    let mut worker =
        Worker::start(&["exec", "--addr", server.addr(), "--max-jobs", "5"], dir.path(), &[("DROPPED", "present")]);
    let status = worker.exit().await;
    let log = worker.log();
    assert!(status.success(), "{}: {status:?}\n{log}", server.name());
    assert_eq!(read(dir.path(), "argv.txt"), "from-argv\n");
    assert_eq!(read(dir.path(), "shell.txt"), "env-value unset stdin-value");
    assert_eq!(read(dir.path(), "text.txt"), "from-text\n");
    assert!(dir.path().join("made-by-backq").exists(), "{log}");
    assert_eq!(read(dir.path(), "backq.txt"), "hello:gone:from stdin");
    for id in &ids {
        assert_eq!(job(&p, *id).await, None, "job {id} should be deleted\n{log}");
    }
    let stats = p.stats_tube(tube).await.expect("stats-tube");
    assert_eq!((stats.total_jobs, stats.cmd_delete, stats.current_jobs_buried), (5, 5, 0));
    // Output goes to the log with the job's id; each job's end is logged.
    assert!(log.contains(&format!("info job {} stdout: plain-output\n", ids[2])), "{log}");
    assert!(log.contains(&format!("info job {}: exited with status 0 after ", ids[0])), "{log}");
    assert!(log.contains("(backq job, pid "), "{log}");
    assert!(log.contains("info processed 5 jobs: taking no more jobs; running jobs finish\n"), "{log}");
}

#[tokio::test]
async fn a_job_three_times_its_ttr_is_never_given_to_a_second_worker() {
    for server in TestServer::both() {
        never_twice(&server).await;
    }
}

async fn never_twice(server: &TestServer) {
    let p = publisher(server).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ["exec", "--addr", server.addr(), "--tube", "slow", "--max-jobs", "1"];
    let _first = Worker::start(&args, dir.path(), &[]);
    let _second = Worker::start(&args, dir.path(), &[]);
    until("both workers wait", || async {
        Ok(p.stats_tube("slow").await.map(|s| s.current_waiting).unwrap_or(0) == 2)
    })
    .await;
    let id = p.publish("slow", b"sleep 3; echo ran >> runs.txt", 0, 0, 1).await.expect("publish");
    // Watch the job until it is gone: one reserve, never a timeout.
    let mut seen_reserved = false;
    while let Some(stats) = job(&p, id).await {
        assert_eq!(stats.timeouts, 0, "{}: the job's time-to-run ran out", server.name());
        assert!(stats.reserves <= 1, "reserved {} times", stats.reserves);
        seen_reserved |= stats.state == JobState::Reserved;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen_reserved);
    assert_eq!(read(dir.path(), "runs.txt"), "ran\n");
    assert_eq!(p.stats().await.expect("stats").job_timeouts, 0);
    // One of the two ran it and exited after its one job; the other still waits.
    until("one worker to exit", || async {
        Ok(p.stats_tube("slow").await.map(|s| s.current_watching).unwrap_or(0) == 1)
    })
    .await;
}

#[tokio::test]
async fn a_failing_job_is_retried_with_growing_delays_then_buried() {
    let server = TestServer::runnerbean();
    let p = publisher(&server).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let id = p.publish("flaky", b"echo trying >> tries.txt; exit 3", 0, 0, 60).await.expect("publish");
    let args = ["exec", "--addr", server.addr(), "-t", "flaky", "--tries", "3", "--backoff", "1", "--max-jobs", "3"];
    let mut worker = Worker::start(&args, dir.path(), &[]);
    // Each release is seen while the job is delayed: the delays the worker chose.
    let mut delays = Vec::new();
    let mut releases = 0;
    loop {
        let stats = job(&p, id).await.expect("the job stays");
        if stats.state == JobState::Buried {
            break;
        }
        if stats.state == JobState::Delayed && stats.releases > releases {
            releases = stats.releases;
            delays.push(stats.delay);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(worker.exit().await.success());
    let log = worker.log();
    assert_eq!(delays, [1, 2], "{log}");
    let stats = job(&p, id).await.expect("buried");
    assert_eq!((stats.state, stats.releases, stats.reserves, stats.buries), (JobState::Buried, 2, 3, 1));
    assert_eq!(read(dir.path(), "tries.txt"), "trying\ntrying\ntrying\n");
    assert!(log.contains(&format!("warn job {id}: failed (exited with status 3 after ")), "{log}");
    assert!(log.contains("; attempt 1 of 3: released, ready again in 1s\n"), "{log}");
    assert!(log.contains("; attempt 2 of 3: released, ready again in 2s\n"), "{log}");
    assert!(log.contains("; attempt 3 of 3: buried\n"), "{log}");

    // The count is the server's: kicked, the job gets one more attempt from a new worker, and
    // that attempt is its last.
    p.kick_job(id).await.expect("kick");
    let mut worker = Worker::start(&args, dir.path(), &[("UNUSED", "")]);
    until("the job to be buried again", || async { Ok(job(&p, id).await.is_some_and(|s| s.buries == 2)) }).await;
    worker.signal(libc::SIGTERM);
    assert!(worker.exit().await.success());
    assert!(worker.log().contains("; attempt 3 of 3: buried\n"), "{}", worker.log());
}

#[tokio::test]
async fn max_jobs_counts_jobs_and_idle_timeout_ends_an_idle_worker() {
    let server = TestServer::runnerbean();
    let p = publisher(&server).await;
    let dir = tempfile::tempdir().expect("tempdir");
    for n in 0..3 {
        p.publish("batch", format!("echo {n} >> done.txt").as_bytes(), 0, 0, 60).await.expect("publish");
    }
    let mut worker =
        Worker::start(&["exec", "--addr", server.addr(), "-t", "batch", "--max-jobs", "2"], dir.path(), &[]);
    assert!(worker.exit().await.success(), "{}", worker.log());
    assert_eq!(read(dir.path(), "done.txt"), "0\n1\n");
    assert_eq!(p.stats_tube("batch").await.expect("stats-tube").current_jobs_ready, 1);

    // The last job, then nothing for a second: the worker exits 0.
    let mut worker =
        Worker::start(&["exec", "--addr", server.addr(), "-t", "batch", "--idle-timeout", "1"], dir.path(), &[]);
    assert!(worker.exit().await.success(), "{}", worker.log());
    assert_eq!(read(dir.path(), "done.txt"), "0\n1\n2\n");
    assert!(worker.log().contains("info no job for 1s (--idle-timeout): taking no more jobs"), "{}", worker.log());

    // A worker that never sees a job exits after the idle timeout too.
    let mut worker =
        Worker::start(&["exec", "--addr", server.addr(), "-t", "empty", "--idle-timeout", "0.2"], dir.path(), &[]);
    assert!(worker.exit().await.success(), "{}", worker.log());
}

#[tokio::test]
async fn concurrency_runs_jobs_side_by_side() {
    let server = TestServer::runnerbean();
    let p = publisher(&server).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Each job waits for a file that the test writes once all four are running.
    for n in 0..4 {
        let line = format!("while [ ! -e go ]; do sleep 0.05; done; echo {n} > ran-{n}");
        p.publish("wide", line.as_bytes(), 0, 0, 60).await.expect("publish");
    }
    let args = ["exec", "--addr", server.addr(), "-t", "wide", "-c", "4", "--max-jobs", "4"];
    let mut worker = Worker::start(&args, dir.path(), &[]);
    until("four jobs reserved at once", || async { Ok(p.stats_tube("wide").await?.current_jobs_reserved == 4) }).await;
    std::fs::write(dir.path().join("go"), b"").expect("go");
    assert!(worker.exit().await.success(), "{}", worker.log());
    for n in 0..4 {
        assert_eq!(read(dir.path(), &format!("ran-{n}")), format!("{n}\n"));
    }
}

#[tokio::test]
async fn sigterm_lets_a_running_job_finish_within_the_grace_period() {
    let server = TestServer::runnerbean();
    let p = publisher(&server).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let id = p
        .publish("t", b"touch started; while [ ! -e go ]; do sleep 0.05; done; echo finished > f", 0, 0, 60)
        .await
        .expect("publish");
    let mut worker = Worker::start(&["exec", "--addr", server.addr(), "-t", "t", "--grace", "30"], dir.path(), &[]);
    until("the job to start", || async { Ok(dir.path().join("started").exists()) }).await;
    worker.signal(libc::SIGTERM);
    worker.logged("SIGTERM (running jobs have 30s, --grace): taking no more jobs").await;
    // Once signalled the worker takes no more jobs, but the running one goes on.
    let later = p.publish("t", b"touch should-not-run", 0, 0, 60).await.expect("publish");
    std::fs::write(dir.path().join("go"), b"").expect("go");
    assert!(worker.exit().await.success(), "{}", worker.log());
    assert_eq!(read(dir.path(), "f"), "finished\n");
    assert_eq!(job(&p, id).await, None);
    assert_eq!(job(&p, later).await.map(|s| s.state), Some(JobState::Ready));
    assert!(!dir.path().join("should-not-run").exists());
}

#[tokio::test]
async fn sigterm_stops_a_job_past_the_grace_period_and_gives_it_back() {
    let server = TestServer::runnerbean();
    let p = publisher(&server).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // A shell with a child of its own: the whole process group is stopped.
    let line = b"sleep 60 & echo $! > child.pid; echo $$ > shell.pid; wait";
    let id = p.publish("t", line, 0, 0, 60).await.expect("publish");
    let mut worker = Worker::start(&["exec", "--addr", server.addr(), "-t", "t", "--grace", "0.3"], dir.path(), &[]);
    until("the job to start", || async { Ok(dir.path().join("shell.pid").exists()) }).await;
    let pids: Vec<i32> =
        ["child.pid", "shell.pid"].iter().map(|name| read(dir.path(), name).trim().parse().expect("pid")).collect();
    worker.signal(libc::SIGTERM);
    assert!(worker.exit().await.success(), "{}", worker.log());
    let log = worker.log();
    assert!(log.contains("info the grace period is over: stopping running jobs\n"), "{log}");
    assert!(log.contains(&format!("info job {id}: stopped; back to ready for another worker\n")), "{log}");
    // Back to ready at once, and without a release: the interrupted run is not an attempt.
    let stats = job(&p, id).await.expect("the job stays");
    assert_eq!((stats.state, stats.releases, stats.reserves), (JobState::Ready, 0, 1));
    for pid in pids {
        // Gone, or a zombie until its new parent (the job's shell is gone) reaps it.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let state = status.lines().find_map(|line| line.strip_prefix("State:")).unwrap_or("gone").trim().to_owned();
        assert!(state == "gone" || state.starts_with('Z'), "process {pid} of the job still runs: {state}");
    }
}

#[tokio::test]
async fn bodies_that_cannot_be_understood_are_buried_and_past_deadlines_deleted() {
    let server = TestServer::runnerbean();
    let p = publisher(&server).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let malformed = p.publish("t", b"{\"argv\": [\"touch\", \"x\"", 0, 0, 60).await.expect("publish");
    let not_utf8 = p.publish("t", b"touch \xff\xfe", 0, 0, 60).await.expect("publish");
    let other = p.publish("t", include_bytes!("fixtures/backq/other-class.ser"), 0, 0, 60).await.expect("publish");
    let expired = p.publish("t", include_bytes!("fixtures/backq/deadline.ser"), 0, 0, 60).await.expect("publish");
    let mut worker = Worker::start(&["exec", "--addr", server.addr(), "-t", "t", "--max-jobs", "4"], dir.path(), &[]);
    assert!(worker.exit().await.success(), "{}", worker.log());
    let log = worker.log();
    for (id, reason) in [
        (malformed, "malformed JSON job: EOF while parsing a list at line 1 column 22"),
        (not_utf8, "the body is not UTF-8 (at byte 6)"),
        (other, "unknown serialized class \"ArrayObject\""),
    ] {
        assert_eq!(job(&p, id).await.map(|s| (s.state, s.releases)), Some((JobState::Buried, 0)), "{log}");
        assert!(log.contains(&format!("error job {id}: {reason}: buried\n")), "{reason}\n{log}");
    }
    assert_eq!(job(&p, expired).await, None);
    assert!(
        log.contains(&format!("info job {expired}: backq deadline 1600000000 has passed; not run; deleted\n")),
        "{log}"
    );
    assert!(!dir.path().join("should-not-exist").exists());
}

#[tokio::test]
async fn a_job_keeps_running_while_the_server_restarts_and_is_deleted_after() {
    let wal = tempfile::tempdir().expect("tempdir");
    let wal_dir = wal.path().to_str().expect("utf-8 path");
    let mut server = TestServer::runnerbean_with(&["-b", wal_dir]);
    let port = server.addr().rsplit_once(':').expect("port").1.to_owned();
    let p = publisher(&server).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let id = p
        .publish("t", b"touch started; while [ ! -e go ]; do sleep 0.05; done; echo ran >> runs.txt", 0, 0, 60)
        .await
        .expect("publish");
    let args = ["exec", "--addr", server.addr(), "-t", "t", "--max-jobs", "1"];
    let mut worker = Worker::start(&args, dir.path(), &[]);
    until("the job to start", || async { Ok(dir.path().join("started").exists()) }).await;
    server.kill();
    worker.logged("warn lost the connection to the queue server").await;
    // The same port and log: the job comes back ready, and the worker takes it again.
    let server = TestServer::runnerbean_with(&["-b", wal_dir, "-p", &port]);
    worker.logged(&format!("info job {id}: reserved again after reconnecting")).await;
    std::fs::write(dir.path().join("go"), b"").expect("go");
    assert!(worker.exit().await.success(), "{}", worker.log());
    assert_eq!(read(dir.path(), "runs.txt"), "ran\n");
    let p = publisher(&server).await;
    deleted(&p, id).await;
}

#[tokio::test]
async fn timeouts_max_time_and_memory() {
    let server = TestServer::runnerbean();
    let p = publisher(&server).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // A job over its own limit is stopped, and counts as a failed attempt (the last, here).
    let body = body(json!({"shell": "touch started; exec sleep 30", "timeout_s": 0.2}));
    let slow = p.publish("t", &body, 0, 0, 60).await.expect("publish");
    // The worker's --timeout covers jobs that set none.
    let plain = p.publish("t", b"exec sleep 30", 0, 0, 60).await.expect("publish");
    let args = ["exec", "--addr", server.addr(), "-t", "t", "--tries", "1", "--timeout", "0.2", "--max-jobs", "2"];
    let mut worker = Worker::start(&args, dir.path(), &[]);
    assert!(worker.exit().await.success(), "{}", worker.log());
    let log = worker.log();
    assert!(dir.path().join("started").exists());
    for id in [slow, plain] {
        assert_eq!(job(&p, id).await.map(|s| s.state), Some(JobState::Buried), "{log}");
        let line = format!("error job {id}: failed (timed out after 0.2s and was stopped); attempt 1 of 1: buried\n");
        assert!(log.contains(&line), "{log}");
    }

    let mut worker = Worker::start(&["exec", "--addr", server.addr(), "--max-time", "0.2"], dir.path(), &[]);
    assert!(worker.exit().await.success(), "{}", worker.log());
    assert!(worker.log().contains("info ran for 0.2s (--max-time): taking no more jobs"), "{}", worker.log());

    // Any process is over one MiB.
    let mut worker = Worker::start(&["exec", "--addr", server.addr(), "--memory-mb", "1"], dir.path(), &[]);
    assert!(worker.exit().await.success(), "{}", worker.log());
    assert!(worker.log().contains(" MiB is over --memory-mb: taking no more jobs"), "{}", worker.log());
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    for args in [&["exec", "--tube", "a*b"][..], &["exec", "--tries", "0"], &["exec", "--backoff", "-1"], &["nothing"]]
    {
        let mut worker = Worker::start(args, dir.path(), &[]);
        let status = worker.exit().await;
        assert_eq!(status.code(), Some(2), "{args:?}: {}", worker.log());
    }
    let mut worker = Worker::start(&["exec", "--tube", "a*b"], dir.path(), &[]);
    worker.exit().await;
    assert!(worker.log().starts_with("error: \"a*b\" is not a tube name"), "{}", worker.log());
}

#[tokio::test]
async fn signals_end_an_idle_worker() {
    let server = TestServer::runnerbean();
    let p = publisher(&server).await;
    let dir = tempfile::tempdir().expect("tempdir");
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT"), (libc::SIGHUP, "SIGHUP")] {
        let mut worker = Worker::start(&["exec", "--addr", server.addr(), "-t", "idle"], dir.path(), &[]);
        until("the worker waits", || async {
            Ok(p.stats_tube("idle").await.map(|s| s.current_waiting).unwrap_or(0) == 1)
        })
        .await;
        worker.signal(signal);
        assert!(worker.exit().await.success(), "{name}: {}", worker.log());
        assert!(
            worker.log().contains(&format!("info {name} (running jobs have 30s, --grace): taking no more jobs")),
            "{}",
            worker.log()
        );
    }
}

#[tokio::test]
async fn over_a_unix_socket() {
    let server = TestServer::runnerbean_unix();
    let p = publisher(&server).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let id = p.publish("process", b"echo over-unix > unix.txt", 0, 0, 60).await.expect("publish");
    let mut worker = Worker::start(&["exec", "--max-jobs", "1"], dir.path(), &[("BEANSTALK_ADDR", server.addr())]);
    assert!(worker.exit().await.success(), "{}", worker.log());
    assert_eq!(read(dir.path(), "unix.txt"), "over-unix\n");
    assert_eq!(job(&p, id).await, None);
}
