//! Every command of the library against the real runnerbean binary and, when it is installed,
//! C beanstalkd: the same assertions hold for both servers.

use std::time::Duration;

use runnerbean_client::{Client, Error, JobId, JobState, Options, PutOptions, Value};
use runnerbean_testserver::{Kind, TestServer};

/// What a test body knows of the server it runs against (the server itself stays with
/// `on_both`, which stops it when the body is done).
#[derive(Clone)]
struct Server {
    addr: String,
    pid: u32,
    kind: Kind,
}

impl Server {
    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill").arg(format!("-{name}")).arg(self.pid.to_string()).status();
        assert!(status.is_ok_and(|s| s.success()));
    }
}

/// Runs `test` once per server, on a fresh connection, naming the server when it fails.
async fn on_both<F, Fut>(args: &[&str], test: F)
where
    F: Fn(Client, Server) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    for server in TestServer::both_with(args) {
        let name = server.name();
        let client = Client::connect(server.addr()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let info = Server { addr: server.addr().to_owned(), pid: server.pid(), kind: server.kind() };
        if let Err(e) = test(client, info).await {
            panic!("{name}: {e:?}");
        }
        drop(server);
    }
}

#[tokio::test]
async fn put_peek_reserve_delete() {
    on_both(&[], |c, _| async move {
        let first = c.put(b"one", PutOptions::default().pri(5)).await?;
        let second = c.put(b"two\r\nwith CRLF and \0", PutOptions::default().pri(1)).await?;
        assert!(second > first);
        assert_eq!(c.peek(first).await?.body, b"one");
        assert_eq!(c.peek_ready().await?.id, second);
        let job = c.reserve().await?;
        assert_eq!((job.id, job.body.as_slice()), (second, &b"two\r\nwith CRLF and \0"[..]));
        assert_eq!(c.stats_job(second).await?.state, JobState::Reserved);
        c.delete(second).await?;
        assert!(matches!(c.peek(second).await, Err(Error::NotFound)));
        let job = c.reserve_with_timeout(0).await?;
        assert_eq!(job.id, first);
        c.delete(first).await?;
        assert!(matches!(c.reserve_with_timeout(0).await, Err(Error::TimedOut)));
        assert!(matches!(c.delete(JobId(1_000_000)).await, Err(Error::NotFound)));
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn empty_and_large_bodies() {
    on_both(&[], |c, _| async move {
        let empty = c.put(b"", PutOptions::default()).await?;
        assert_eq!(c.peek(empty).await?.body, b"");
        let large: Vec<u8> = (0..65535u32).map(|i| (i % 251) as u8).collect();
        let id = c.put(&large, PutOptions::default()).await?;
        assert_eq!(c.peek(id).await?.body, large);
        assert!(matches!(c.put(&vec![b'x'; 65536], PutOptions::default()).await, Err(Error::JobTooBig)));
        // The connection is still in step after the refused body.
        assert_eq!(c.list_tube_used().await?, "default");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn tubes_use_watch_ignore_and_lists() {
    on_both(&[], |c, _| async move {
        assert_eq!(c.use_tube("emails").await?, "emails");
        assert_eq!(c.list_tube_used().await?, "emails");
        assert_eq!(c.watch("emails").await?, 2);
        assert_eq!(c.watch("123").await?, 3);
        assert_eq!(c.ignore("default").await?, 2);
        assert_eq!(c.ignore("never-existed").await?, 2);
        let mut watched = c.list_tubes_watched().await?;
        watched.sort();
        assert_eq!(watched, ["123", "emails"]);
        let mut tubes = c.list_tubes().await?;
        tubes.sort();
        assert_eq!(tubes, ["123", "default", "emails"]);
        c.ignore("123").await?;
        assert!(matches!(c.ignore("emails").await, Err(Error::NotIgnored)));
        assert!(matches!(c.use_tube("bad*name").await, Err(Error::BadFormat)));
        assert!(matches!(c.watch("-starts-with-dash").await, Err(Error::BadFormat)));
        assert!(matches!(c.use_tube("").await, Err(Error::InvalidArgument(_))));
        assert!(matches!(c.use_tube("two words").await, Err(Error::InvalidArgument(_))));
        assert!(matches!(c.use_tube(&"x".repeat(201)).await, Err(Error::InvalidArgument(_))));
        assert_eq!(c.use_tube(&"x".repeat(200)).await?.len(), 200);
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn release_bury_kick_touch() {
    on_both(&[], |c, _| async move {
        let id = c.put(b"work", PutOptions::default().pri(10).ttr(100)).await?;
        assert!(matches!(c.release(id, 1, 0).await, Err(Error::NotFound)));
        assert!(matches!(c.bury(id, 1).await, Err(Error::NotFound)));
        let job = c.reserve().await?;
        c.touch(job.id).await?;
        c.release(job.id, 3, 0).await?;
        let stats = c.stats_job(id).await?;
        assert_eq!((stats.state, stats.pri, stats.releases, stats.reserves), (JobState::Ready, 3, 1, 1));

        c.reserve().await?;
        c.bury(id, 4).await?;
        let stats = c.stats_job(id).await?;
        assert_eq!((stats.state, stats.pri, stats.buries), (JobState::Buried, 4, 1));
        assert_eq!(c.peek_buried().await?.id, id);
        assert_eq!(c.kick(10).await?, 1);
        assert_eq!(c.kick(10).await?, 0);
        assert_eq!(c.stats_job(id).await?.kicks, 1);

        let later = c.put(b"later", PutOptions::default().delay(3600)).await?;
        assert_eq!(c.peek_delayed().await?.id, later);
        let stats = c.stats_job(later).await?;
        assert_eq!((stats.state, stats.delay), (JobState::Delayed, 3600));
        c.kick_job(later).await?;
        assert!(matches!(c.kick_job(later).await, Err(Error::NotFound)));
        assert!(matches!(c.peek_delayed().await, Err(Error::NotFound)));

        let held = c.reserve_job(later).await?;
        assert_eq!(held.body, b"later");
        assert!(matches!(c.reserve_job(later).await, Err(Error::NotFound)));
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn deadline_soon() {
    on_both(&[], |c, _| async move {
        // With a time-to-run of one second the job is inside the server's one-second safety
        // margin as soon as it is reserved.
        c.put(b"short", PutOptions::default().ttr(1)).await?;
        c.reserve().await?;
        assert!(matches!(c.reserve_with_timeout(5).await, Err(Error::DeadlineSoon)));
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn stats_documents_have_every_key() {
    on_both(&[], |c, server| async move {
        c.use_tube("t").await?;
        let id = c.put(b"x", PutOptions::default().pri(1023)).await?;
        let stats = c.stats().await?;
        assert_eq!((stats.current_jobs_urgent, stats.current_jobs_ready, stats.cmd_put), (1, 1, 1));
        assert_eq!(stats.pid, u64::from(server.pid));
        assert!(stats.other.is_empty(), "{:?}", stats.other);
        assert!(!stats.os.is_empty() && !stats.hostname.is_empty() && !stats.id.is_empty());
        let names: Vec<&str> = stats.fields().iter().map(|(k, _)| *k).collect();
        match server.kind {
            Kind::Runnerbean => {
                assert_eq!(stats.version, "1.13");
                assert_eq!(names.len(), 54);
                assert_eq!(stats.runnerbean_cores, Some(1));
                assert_eq!(names[51..], ["runnerbean-version", "runnerbean-io", "runnerbean-cores"]);
            }
            Kind::Beanstalkd => {
                assert!(stats.version.starts_with("1."));
                assert_eq!(names.len(), 51);
                assert_eq!(stats.runnerbean_version, None);
            }
        }

        let tube = c.stats_tube("t").await?;
        assert_eq!((tube.name.as_str(), tube.current_jobs_urgent, tube.total_jobs, tube.current_using), ("t", 1, 1, 1));
        assert!(tube.other.is_empty());
        assert_eq!(tube.fields().len(), 14);
        assert!(matches!(c.stats_tube("nope").await, Err(Error::NotFound)));

        let job = c.stats_job(id).await?;
        assert_eq!((job.id, job.tube.as_str(), job.state, job.pri, job.ttr), (id, "t", JobState::Ready, 1023, 60));
        assert_eq!(job.fields()[2], ("state", Value::Text("ready")));
        assert_eq!(job.fields().len(), 14);
        assert!(matches!(c.stats_job(JobId(999_999)).await, Err(Error::NotFound)));
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn pause_tube() {
    on_both(&[], |c, _| async move {
        c.put(b"x", PutOptions::default()).await?;
        c.pause_tube("default", 30).await?;
        let tube = c.stats_tube("default").await?;
        assert_eq!((tube.pause, tube.cmd_pause_tube), (30, 1));
        assert!(tube.pause_time_left <= 30);
        // Paused: nothing is reserved even though a job is ready.
        assert!(matches!(c.reserve_with_timeout(0).await, Err(Error::TimedOut)));
        c.pause_tube("default", 0).await?;
        c.reserve_with_timeout(0).await?;
        assert!(matches!(c.pause_tube("missing", 1).await, Err(Error::NotFound)));
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn drain_mode_refuses_puts() {
    on_both(&[], |c, server| async move {
        c.put(b"before", PutOptions::default()).await?;
        server.signal("USR1");
        // The signal is handled asynchronously; the stats show when it has been.
        for _ in 0..500 {
            if c.stats().await?.draining {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(matches!(c.put(b"after", PutOptions::default()).await, Err(Error::Draining)));
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn max_job_size_from_the_server_flag() {
    on_both(&["-z", "10"], |c, _| async move {
        assert_eq!(c.stats().await?.max_job_size, 10);
        c.put(b"0123456789", PutOptions::default()).await?;
        assert!(matches!(c.put(b"0123456789a", PutOptions::default()).await, Err(Error::JobTooBig)));
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn pipelined_commands_get_their_own_replies() {
    on_both(&[], |c, _| async move {
        // 2000 puts from as many tasks, more than the in-flight limit, on one connection.
        let mut tasks = Vec::new();
        for i in 0..2000u32 {
            let c = c.clone();
            tasks.push(tokio::spawn(
                async move { (i, c.put(format!("job {i}").as_bytes(), PutOptions::default()).await) },
            ));
        }
        let mut ids = Vec::new();
        for task in tasks {
            let (i, id) = task.await.expect("task");
            ids.push((i, id?));
        }
        for &(i, id) in &ids {
            assert_eq!(c.peek(id).await?.body, format!("job {i}").as_bytes());
        }
        let mut distinct: Vec<JobId> = ids.iter().map(|(_, id)| *id).collect();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 2000);

        // Futures polled together go out in order, so their ids come in order.
        let (a, b, used, d) = tokio::join!(
            c.put(b"a", PutOptions::default()),
            c.put(b"b", PutOptions::default()),
            c.list_tube_used(),
            c.put(b"d", PutOptions::default())
        );
        let (a, b, d) = (a?, b?, d?);
        assert!(a < b && b < d, "{a} {b} {d}");
        assert_eq!(used?, "default");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn commands_behind_a_waiting_reserve_are_answered_after_it() {
    on_both(&[], |c, server| async move {
        let producer = Client::connect(&server.addr).await?;
        c.watch("w").await?;
        let (job, used, _) = tokio::join!(c.reserve(), c.list_tube_used(), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            producer.use_tube("w").await?;
            producer.put(b"wake", PutOptions::default()).await
        });
        assert_eq!(job?.body, b"wake");
        assert_eq!(used?, "default");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn reserve_with_timeout_outlasts_the_read_timeout() {
    for server in TestServer::both() {
        let options = Options::default().read_timeout(Duration::from_millis(200));
        let c = Client::connect_with(server.addr(), options).await.expect("connect");
        // The server holds the reply for a second, five read timeouts; the wait it was asked
        // for is added to the timeout.
        assert!(matches!(c.reserve_with_timeout(1).await, Err(Error::TimedOut)), "{}", server.name());
        assert!(!c.is_closed());
    }
}

#[tokio::test]
async fn reconnect_restores_the_tubes() {
    on_both(&[], |c, _| async move {
        c.use_tube("orders").await?;
        c.watch("orders").await?;
        c.watch("audit").await?;
        c.ignore("default").await?;
        c.quit().await?;
        assert!(matches!(c.stats().await, Err(Error::ClosedByServer)));
        let c = c.reconnect().await?;
        assert_eq!(c.list_tube_used().await?, "orders");
        let mut watched = c.list_tubes_watched().await?;
        watched.sort();
        assert_eq!(watched, ["audit", "orders"]);
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_server_that_stops_fails_pending_and_later_commands() {
    for mut server in TestServer::both() {
        let c = Client::connect(server.addr()).await.expect("connect");
        let waiting = tokio::spawn({
            let c = c.clone();
            async move { c.reserve().await }
        });
        // Let the reserve reach the server, then stop it.
        c.list_tube_used().await.expect("list-tube-used");
        server.kill();
        let error = waiting.await.expect("task").unwrap_err();
        assert!(error.is_disconnect(), "{}: {error:?}", server.name());
        let later = c.stats().await.unwrap_err();
        assert!(later.is_disconnect(), "{later:?}");
        assert!(c.is_closed());
        let again = c.reconnect().await.unwrap_err();
        assert!(matches!(again, Error::Connect { .. }), "{again:?}");
    }
}

#[tokio::test]
async fn unix_socket() {
    let server = TestServer::runnerbean_unix();
    assert!(server.addr().starts_with("unix:"));
    let c = Client::connect(server.addr()).await.expect("connect");
    let id = c.put(b"over a unix socket", PutOptions::default()).await.expect("put");
    assert_eq!(c.reserve().await.expect("reserve").id, id);
    let missing = Client::connect("unix:/nonexistent/beanstalk.sock").await.unwrap_err();
    assert_eq!(missing.to_string(), "cannot connect to unix:/nonexistent/beanstalk.sock: no such file or directory");
}
