//! The publisher's calls (`publish`, `has_workers`, `has_waiting_workers`) against the real
//! runnerbean binary and, when it is installed, C beanstalkd.

use std::time::Duration;

use runnerbean_client::{Client, Error, JobState};
use runnerbean_testserver::TestServer;

/// How long a test waits for the server to notice a connection's change (a close, a reserve
/// that starts waiting) before it fails. Servers notice in microseconds; this only bounds a
/// broken run.
const NOTICE_WAIT: Duration = Duration::from_secs(10);

/// Polls `check` until it is true, failing the test after [`NOTICE_WAIT`].
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> Result<bool, Error>) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + NOTICE_WAIT;
    while !check().await? {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_from_many_tasks_lands_each_job_in_its_own_tube() {
    for server in TestServer::both() {
        let publisher = Client::connect(server.addr()).await.expect("connect");
        let tubes = ["mail", "thumbnails", "default"];
        let tasks: Vec<_> = (0..300u32)
            .map(|n| {
                let publisher = publisher.clone();
                let tube = tubes[n as usize % tubes.len()];
                tokio::spawn(async move {
                    let id = publisher.publish(tube, format!("job {n}").as_bytes(), n, 0, 30 + n).await?;
                    Ok::<_, Error>((n, tube, id))
                })
            })
            .collect();
        for task in tasks {
            let (n, tube, id) = task.await.expect("join").expect("publish");
            let stats = publisher.stats_job(id).await.expect("stats-job");
            assert_eq!((stats.tube.as_str(), stats.pri, stats.ttr), (tube, n, u64::from(30 + n)), "{}", server.name());
            assert_eq!(publisher.peek(id).await.expect("peek").body, format!("job {n}").as_bytes());
        }
        for tube in tubes {
            assert_eq!(publisher.stats_tube(tube).await.expect("stats-tube").current_jobs_ready, 100);
        }
        let delayed = publisher.publish("later", b"x", 1024, 600, 60).await.expect("publish");
        assert_eq!(publisher.stats_job(delayed).await.expect("stats-job").state, JobState::Delayed);
        assert_eq!(publisher.list_tube_used().await.expect("list-tube-used"), "later");
    }
}

#[tokio::test]
async fn a_refused_tube_name_leaves_no_job_behind() {
    for server in TestServer::both() {
        let publisher = Client::connect(server.addr()).await.expect("connect");
        let refused = publisher.publish("a*b", b"lost?", 0, 0, 60).await;
        assert!(matches!(refused, Err(Error::BadFormat)), "{}: {refused:?}", server.name());
        let unsendable = publisher.publish("a b", b"lost?", 0, 0, 60).await;
        assert!(matches!(unsendable, Err(Error::InvalidArgument(_))), "{unsendable:?}");
        // The put that followed the refused `use` went to `default` and was taken back.
        let default = publisher.stats_tube("default").await.expect("stats-tube");
        let counts = (default.total_jobs, default.current_jobs_ready, default.cmd_delete);
        assert_eq!(counts, (1, 0, 1), "{}", server.name());
        assert_eq!(publisher.list_tube_used().await.expect("list-tube-used"), "default");
    }
}

#[tokio::test]
async fn has_workers_counts_watchers_and_waiting_counts_idle_ones() {
    for server in TestServer::both() {
        let name = server.name();
        let publisher = Client::connect(server.addr()).await.expect("connect");
        // Nobody watches a tube that does not exist, and the publisher's own watch of
        // `default` does not make it a worker.
        assert!(!publisher.has_workers("mail").await.expect("has_workers"), "{name}");
        assert!(!publisher.has_workers("default").await.expect("has_workers"), "{name}");
        assert!(!publisher.has_waiting_workers("mail").await.expect("has_waiting_workers"));

        let worker = Client::connect(server.addr()).await.expect("connect");
        worker.watch("mail").await.expect("watch");
        worker.ignore("default").await.expect("ignore");
        assert!(publisher.has_workers("mail").await.expect("has_workers"), "{name}");
        assert!(!publisher.has_waiting_workers("mail").await.expect("has_waiting_workers"), "{name}");
        assert!(!publisher.has_workers("default").await.expect("has_workers"), "{name}");

        // Waiting in a reserve: a worker, and an idle one.
        let waiting = tokio::spawn({
            let worker = worker.clone();
            async move { worker.reserve_with_timeout(10).await }
        });
        eventually("the worker waits", async || publisher.has_waiting_workers("mail").await).await.expect("poll");
        let id = publisher.publish("mail", b"hello", 0, 0, 60).await.expect("publish");
        assert_eq!(waiting.await.expect("join").expect("reserve").id, id);
        // Busy with the job: still a worker, no longer waiting.
        assert!(publisher.has_workers("mail").await.expect("has_workers"), "{name}");
        assert!(!publisher.has_waiting_workers("mail").await.expect("has_waiting_workers"), "{name}");

        worker.quit().await.expect("quit");
        eventually("the worker is gone", async || Ok(!publisher.has_workers("mail").await?)).await.expect("poll");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_publishers_than_command_slots_all_finish() {
    let server = TestServer::runnerbean();
    let publisher = Client::connect(server.addr()).await.expect("connect");
    // Each publish needs two of the client's command slots; far more tasks than slots must
    // not end with every task holding one slot and waiting for another.
    let count = 2 * runnerbean_client::COMMANDS_IN_FLIGHT_MAX;
    let tasks: Vec<_> = (0..count)
        .map(|n| {
            let publisher = publisher.clone();
            tokio::spawn(async move { publisher.publish(&format!("t{}", n % 7), b"x", 0, 0, 60).await })
        })
        .collect();
    let all = async {
        for task in tasks {
            task.await.expect("join").expect("publish");
        }
    };
    tokio::time::timeout(NOTICE_WAIT * 6, all).await.expect("every publish finished");
    assert_eq!(publisher.stats().await.expect("stats").total_jobs, count as u64);
}
