//! `clear-tube` and `list-jobs`, and their peeking fallbacks, against real servers.
//!
//! The fallbacks are tested against C beanstalkd, which answers both commands
//! `UNKNOWN_COMMAND`, and against runnerbean as long as it does too. The commands themselves
//! are tested against runnerbean once it answers them; until then that test says it skipped.
//! It cannot skip for good: once docs/COMPAT.md lists `clear-tube` (which the server side of
//! the commands adds), a runnerbean that does not answer them fails it.

use runnerbean_client::{Client, Error, JobId, JobState, PutOptions};
use runnerbean_testserver::TestServer;

/// Puts a job into `tube` and buries it; returns its id.
async fn buried(client: &Client, tube: &str, body: &[u8], pri: u32) -> Result<JobId, Error> {
    let id = client.publish(tube, body, pri, 0, 60).await?;
    client.reserve_job(id).await?;
    client.bury(id, pri).await?;
    Ok(id)
}

/// Whether the server answers the commands; a runnerbean that should and does not fails.
async fn has_commands(client: &Client, server: &TestServer) -> bool {
    match client.list_jobs("default", JobState::Ready, JobId(0), 1).await {
        Ok(_) => true,
        Err(Error::UnknownCommand) => {
            let compat = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/COMPAT.md"))
                .expect("docs/COMPAT.md");
            assert!(
                server.name() != "runnerbean" || !compat.contains("clear-tube"),
                "docs/COMPAT.md lists clear-tube, but runnerbean answers list-jobs with UNKNOWN_COMMAND"
            );
            false
        }
        Err(e) => panic!("{}: list-jobs: {e:?}", server.name()),
    }
}

#[tokio::test]
async fn without_the_commands_listing_peeks_the_first_job_of_a_state() {
    for server in TestServer::both() {
        let name = server.name();
        let client = Client::connect(server.addr()).await.expect("connect");
        if has_commands(&client, &server).await {
            continue;
        }
        assert!(matches!(client.clear_tube("default", &[JobState::Ready]).await, Err(Error::UnknownCommand)));
        // This connection uses a tube of its own; the fallback must leave that as it is.
        client.use_tube("mine").await.expect("use");
        let later = client.publish("t", b"later", 20, 0, 60).await.expect("put");
        let first = client.publish("t", b"first", 10, 0, 60).await.expect("put");
        let soon = client.publish("t", b"soon", 0, 300, 60).await.expect("put");
        client.publish("t", b"sooner?", 0, 600, 60).await.expect("put");
        let old = buried(&client, "t", b"old", 5).await.expect("bury");
        buried(&client, "t", b"new", 5).await.expect("bury");
        client.use_tube("mine").await.expect("use");

        let list = |state, after| {
            let client = client.clone();
            async move { client.list_jobs_or_peek("t", state, JobId(after), 10).await }
        };
        let ready = list(JobState::Ready, 0).await.expect("ready");
        assert_eq!((ready.ids.as_slice(), ready.by_peeking), (&[first][..], true), "{name}");
        assert_eq!(list(JobState::Delayed, 0).await.expect("delayed").ids, [soon], "{name}");
        assert_eq!(list(JobState::Buried, 0).await.expect("buried").ids, [old], "{name}");
        // Past the first page a peek sees nothing.
        let page = list(JobState::Ready, first.0).await.expect("page 2");
        assert_eq!((page.ids.len(), page.by_peeking), (0, true), "{name}");
        let _ = later;

        assert!(matches!(
            client.list_jobs_or_peek("nothing", JobState::Ready, JobId(0), 10).await,
            Err(Error::NotFound)
        ));
        assert!(!client.list_tubes().await.expect("list-tubes").contains(&"nothing".to_owned()), "{name}");
        assert!(matches!(
            client.list_jobs_or_peek("t", JobState::Reserved, JobId(0), 10).await,
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(client.list_tube_used().await.expect("used"), "mine", "{name}");
    }
}

#[tokio::test]
async fn without_the_commands_clearing_deletes_job_by_job() {
    for server in TestServer::both() {
        let name = server.name();
        let client = Client::connect(server.addr()).await.expect("connect");
        if has_commands(&client, &server).await {
            continue;
        }
        for i in 0..3u32 {
            client.publish("t", format!("ready {i}").as_bytes(), i, 0, 60).await.expect("put");
            client.publish("t", b"delayed", i, 600, 60).await.expect("put");
            buried(&client, "t", b"buried", i).await.expect("bury");
            client.publish("other", b"stays", i, 0, 60).await.expect("put");
        }
        client.use_tube("default").await.expect("use");
        // Puts into the used tube from a clone, while the fallback peeks in "t" on the same
        // connection: every one must land in "default".
        let putter = client.clone();
        let puts = tokio::spawn(async move {
            for _ in 0..50 {
                putter.put(b"default", PutOptions::default()).await?;
            }
            Ok::<_, Error>(())
        });
        let cleared = client.clear_tube_or_delete("t", &[JobState::Ready, JobState::Buried]).await.expect("clear");
        puts.await.expect("join").expect("puts");
        assert_eq!((cleared.deleted, cleared.by_peeking), (6, true), "{name}");
        let t = client.stats_tube("t").await.expect("stats-tube");
        assert_eq!((t.current_jobs_ready, t.current_jobs_delayed, t.current_jobs_buried), (0, 3, 0), "{name}");
        assert_eq!(client.stats_tube("other").await.expect("other").current_jobs_ready, 3, "{name}");
        assert_eq!(client.stats_tube("default").await.expect("default").current_jobs_ready, 50, "{name}");

        let cleared = client.clear_tube_or_delete("t", &[JobState::Delayed]).await.expect("clear");
        assert_eq!(cleared.deleted, 3, "{name}");
        assert!(matches!(client.clear_tube_or_delete("nothing", &[JobState::Ready]).await, Err(Error::NotFound)));
        assert!(matches!(client.clear_tube_or_delete("t", &[]).await, Err(Error::InvalidArgument(_))));
        assert!(matches!(
            client.clear_tube_or_delete("default", &[JobState::Reserved]).await,
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(client.list_tube_used().await.expect("used"), "default", "{name}");
    }
}

#[tokio::test]
async fn with_the_commands_listing_pages_and_clearing_is_one_command() {
    let server = TestServer::runnerbean();
    let client = Client::connect(server.addr()).await.expect("connect");
    if !has_commands(&client, &server).await {
        eprintln!("note: runnerbean does not answer list-jobs yet; the test of the commands is skipped");
        return;
    }
    let b = client.publish("t", b"b", 2, 0, 60).await.expect("put");
    let a = client.publish("t", b"a", 1, 0, 60).await.expect("put");
    let c = client.publish("t", b"c", 3, 0, 60).await.expect("put");
    let late = client.publish("t", b"late", 0, 900, 60).await.expect("put");
    let early = client.publish("t", b"early", 0, 300, 60).await.expect("put");
    let first_buried = buried(&client, "t", b"x", 9).await.expect("bury");
    let second_buried = buried(&client, "t", b"y", 1).await.expect("bury");

    let ready = |after, count| client.list_jobs("t", JobState::Ready, JobId(after), count);
    assert_eq!(ready(0, 10).await.expect("list"), [a, b, c]);
    assert_eq!(ready(0, 2).await.expect("list"), [a, b]);
    assert_eq!(ready(b.0, 10).await.expect("list"), [c]);
    assert_eq!(ready(c.0, 10).await.expect("list"), []);
    assert_eq!(client.list_jobs("t", JobState::Delayed, JobId(0), 10).await.expect("list"), [early, late]);
    // Buried jobs are kicked oldest first, whatever their priority.
    assert_eq!(
        client.list_jobs("t", JobState::Buried, JobId(0), 10).await.expect("list"),
        [first_buried, second_buried]
    );
    assert!(matches!(client.list_jobs("nothing", JobState::Ready, JobId(0), 10).await, Err(Error::NotFound)));
    let list = client.list_jobs_or_peek("t", JobState::Ready, JobId(0), 10).await.expect("list");
    assert_eq!((list.ids, list.by_peeking), (vec![a, b, c], false));

    assert_eq!(client.clear_tube("t", &[JobState::Ready, JobState::Buried]).await.expect("clear"), 5);
    let t = client.stats_tube("t").await.expect("stats-tube");
    assert_eq!((t.current_jobs_ready, t.current_jobs_delayed, t.current_jobs_buried), (0, 2, 0));
    let cleared = client.clear_tube_or_delete("t", &[JobState::Delayed]).await.expect("clear");
    assert_eq!((cleared.deleted, cleared.by_peeking), (2, false));
    assert!(matches!(client.clear_tube("nothing", &[JobState::Ready]).await, Err(Error::NotFound)));
}
