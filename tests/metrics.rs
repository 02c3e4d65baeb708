//! `--metrics ADDR` at the wire: the real binary on both back ends, with
//! one core and with four, scraped over HTTP and read with a Prometheus
//! text-format parser (`prometheus-parse`), every figure of `stats` and
//! `stats-tube` compared with what the metrics say after known work (the
//! per-core figures for every core); the log's latencies with `-b`; the
//! cap on tubes; and bad input: a metrics address that cannot be bound
//! stops the start, unknown paths get 404, and clients of the metrics port
//! that misbehave never stop the server.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Client, REPLY_TIMEOUT, Server, TempDir, cores, on_both_and_four_cores};
use prometheus_parse::{LineInfo, Scrape, Value};

/// How long a test waits for the metrics to catch up with the server (a
/// core publishes within 250 ms of a change, `METRICS_PUBLISH_MS`).
const CATCH_UP: Duration = Duration::from_secs(10);

/// Starts runnerbean with `--metrics` on an ephemeral port, and returns it
/// with the port, which `-V` logs, once the metrics are served.
fn start(backend: &'static str, args: &[&str]) -> (Server, u16) {
    let server = Server::start(backend, &[&["--metrics", "127.0.0.1:0"], args].concat());
    let log = server.wait_for_log("metrics http://127.0.0.1:");
    let port = log
        .lines()
        .find_map(|l| l.strip_prefix("metrics http://127.0.0.1:")?.strip_suffix("/metrics")?.parse().ok())
        .unwrap_or_else(|| panic!("no metrics port in\n{log}"));
    (server, port)
}

/// One HTTP request on a connection of its own: the status and the body.
fn http(port: u16, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read the response");
    let response = String::from_utf8(response).expect("a text response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {response:?}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{head}"));
    (status, head.to_string(), body.to_string())
}

fn get(port: u16, path: &str) -> (u16, String, String) {
    http(port, &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"))
}

/// The metrics as Prometheus reads them: every sample by its name and
/// labels (`name{a="1",b="2"}`, labels sorted); histograms by their name.
/// Every line of the body must be one the parser understands.
struct Metrics {
    samples: BTreeMap<String, Value>,
    text: String,
}

impl Metrics {
    fn scrape(port: u16) -> Metrics {
        let (status, head, text) = get(port, "/metrics");
        assert_eq!(status, 200, "{head}\n{text}");
        assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
        for line in text.lines() {
            let info = LineInfo::parse(line);
            assert!(!matches!(info, LineInfo::Ignored | LineInfo::Empty), "a line Prometheus cannot read: {line:?}");
        }
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse the metrics");
        let mut samples = BTreeMap::new();
        for sample in scrape.samples {
            let labels: BTreeMap<&String, &String> = sample.labels.iter().collect();
            let key = if labels.is_empty() {
                sample.metric.clone()
            } else {
                let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                format!("{}{{{}}}", sample.metric, labels.join(","))
            };
            assert!(samples.insert(key.clone(), sample.value).is_none(), "{key} twice");
        }
        Metrics { samples, text }
    }

    /// The value of a counter or gauge; fails if it is not there or is of
    /// another type.
    fn value(&self, key: &str, counter: bool) -> f64 {
        match self.samples.get(key) {
            Some(Value::Counter(v)) if counter => *v,
            Some(Value::Gauge(v)) if !counter => *v,
            other => panic!("{key}: {other:?} (a {}) in\n{}", if counter { "counter" } else { "gauge" }, self.text),
        }
    }

    fn gauge(&self, key: &str) -> f64 {
        self.value(key, false)
    }

    fn counter(&self, key: &str) -> f64 {
        self.value(key, true)
    }

    /// The count of a histogram's observations.
    fn histogram_count(&self, key: &str) -> f64 {
        match self.samples.get(key) {
            Some(Value::Histogram(buckets)) => {
                let mut buckets = buckets.clone();
                buckets.sort_by(|a, b| a.less_than.total_cmp(&b.less_than));
                // Cumulative: never fewer in a wider bucket, +Inf last.
                assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count), "{key}: {buckets:?}");
                let inf = buckets.last().filter(|b| b.less_than.is_infinite()).expect("a +Inf bucket");
                inf.count
            }
            other => panic!("{key}: {other:?} in\n{}", self.text),
        }
    }

    /// Scrapes until `ready` holds (the cores publish within a quarter of
    /// a second of a change), and returns that scrape.
    fn when(port: u16, ready: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + CATCH_UP;
        loop {
            let m = Metrics::scrape(port);
            if ready(&m) {
                return m;
            }
            assert!(Instant::now() < deadline, "the metrics never caught up:\n{}", m.text);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A YAML document of a reply as key → value.
fn doc(reply: &str) -> BTreeMap<String, String> {
    reply.lines().skip(2).filter_map(|l| l.split_once(": ")).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// `stats` keys and the metric each is exported as (the names of
/// davidtannock/beanstalkd_exporter and their extensions), `true` for a
/// counter. Process figures that move by themselves (uptime, CPU time) are
/// compared apart.
const STATS: &[(&str, &str, bool)] = &[
    ("current-jobs-urgent", "beanstalkd_current_jobs_urgent_count", false),
    ("current-jobs-ready", "beanstalkd_current_jobs_ready_count", false),
    ("current-jobs-reserved", "beanstalkd_current_jobs_reserved_count", false),
    ("current-jobs-delayed", "beanstalkd_current_jobs_delayed_count", false),
    ("current-jobs-buried", "beanstalkd_current_jobs_buried_count", false),
    ("cmd-put", "beanstalkd_cmd_put_total", true),
    ("cmd-peek", "beanstalkd_cmd_peek_total", true),
    ("cmd-peek-ready", "beanstalkd_cmd_peek_ready_total", true),
    ("cmd-peek-delayed", "beanstalkd_cmd_peek_delayed_total", true),
    ("cmd-peek-buried", "beanstalkd_cmd_peek_buried_total", true),
    ("cmd-reserve", "beanstalkd_cmd_reserve_total", true),
    ("cmd-reserve-with-timeout", "beanstalkd_cmd_reserve_with_timeout_total", true),
    ("cmd-delete", "beanstalkd_cmd_delete_total", true),
    ("cmd-release", "beanstalkd_cmd_release_total", true),
    ("cmd-use", "beanstalkd_cmd_use_total", true),
    ("cmd-watch", "beanstalkd_cmd_watch_total", true),
    ("cmd-ignore", "beanstalkd_cmd_ignore_total", true),
    ("cmd-bury", "beanstalkd_cmd_bury_total", true),
    ("cmd-kick", "beanstalkd_cmd_kick_total", true),
    ("cmd-touch", "beanstalkd_cmd_touch_total", true),
    ("cmd-stats", "beanstalkd_cmd_stats_total", true),
    ("cmd-stats-job", "beanstalkd_cmd_stats_job_total", true),
    ("cmd-stats-tube", "beanstalkd_cmd_stats_tube_total", true),
    ("cmd-list-tubes", "beanstalkd_cmd_list_tubes_total", true),
    ("cmd-list-tube-used", "beanstalkd_cmd_list_tube_used_total", true),
    ("cmd-list-tubes-watched", "beanstalkd_cmd_list_tubes_watched_total", true),
    ("cmd-pause-tube", "beanstalkd_cmd_pause_tube_total", true),
    ("job-timeouts", "beanstalkd_job_timeouts_count", true),
    ("total-jobs", "beanstalkd_total_jobs_count", true),
    ("max-job-size", "beanstalkd_max_job_size_bytes", false),
    ("current-tubes", "beanstalkd_current_tubes_count", false),
    ("current-connections", "beanstalkd_current_connections_count", false),
    ("current-producers", "beanstalkd_current_producers_count", false),
    ("current-workers", "beanstalkd_current_workers_count", false),
    ("current-waiting", "beanstalkd_current_waiting_count", false),
    ("total-connections", "beanstalkd_total_connections_count", true),
    ("binlog-oldest-index", "beanstalkd_binlog_oldest_index", false),
    ("binlog-current-index", "beanstalkd_binlog_current_index", false),
    ("binlog-records-migrated", "beanstalkd_binlog_records_migrated_total", true),
    ("binlog-records-written", "beanstalkd_binlog_records_written_total", true),
    ("binlog-max-size", "beanstalkd_binlog_max_size_bytes", false),
];

/// `stats-tube` keys and their metrics, all labelled with the tube.
const TUBE_STATS: &[(&str, &str, bool)] = &[
    ("current-jobs-urgent", "beanstalkd_tube_current_jobs_urgent_count", false),
    ("current-jobs-ready", "beanstalkd_tube_current_jobs_ready_count", false),
    ("current-jobs-reserved", "beanstalkd_tube_current_jobs_reserved_count", false),
    ("current-jobs-delayed", "beanstalkd_tube_current_jobs_delayed_count", false),
    ("current-jobs-buried", "beanstalkd_tube_current_jobs_buried_count", false),
    ("total-jobs", "beanstalkd_tube_total_jobs_count", true),
    ("current-using", "beanstalkd_tube_current_using_count", false),
    ("current-watching", "beanstalkd_tube_current_watching_count", false),
    ("current-waiting", "beanstalkd_tube_current_waiting_count", false),
    ("cmd-delete", "beanstalkd_tube_cmd_delete_total", true),
    ("cmd-pause-tube", "beanstalkd_tube_cmd_pause_tube_total", true),
    ("pause", "beanstalkd_tube_pause_seconds_total", false),
    ("pause-time-left", "beanstalkd_tube_pause_time_left_seconds_total", false),
];

/// Known work on two connections: puts of every kind into `work`, a
/// reserve and delete, a bury, a release with a delay, a kick, a pause, a
/// clear and a listing; one connection waits in a reserve on `idle`.
fn known_work(server: &Server) -> (Client, Client) {
    let mut a = server.connect();
    let mut w = server.connect();
    let replies = a.ask(
        b"use work\r\nput 0 0 60 1\r\na\r\nput 2000 0 60 1\r\nb\r\nput 5 100 60 1\r\nc\r\n\
put 1 0 60 1\r\nd\r\nput 1 0 60 1\r\ne\r\n",
        6,
    );
    assert_eq!(replies, "USING work\r\nINSERTED 1\r\nINSERTED 2\r\nINSERTED 3\r\nINSERTED 4\r\nINSERTED 5\r\n");
    let replies = a.ask(
        b"watch work\r\nreserve\r\ndelete 1\r\nreserve\r\nbury 4 7\r\nreserve-with-timeout 0\r\n\
release 5 3 50\r\nkick 1\r\npeek-ready\r\npause-tube work 0\r\nlist-jobs work ready 0 9\r\n\
clear-tube work delayed\r\nreserve-job 2\r\n",
        13,
    );
    assert_eq!(
        replies,
        "WATCHING 2\r\nRESERVED 1 1\r\na\r\nDELETED\r\nRESERVED 4 1\r\nd\r\nBURIED\r\n\
RESERVED 5 1\r\ne\r\nRELEASED\r\nKICKED 1\r\nFOUND 4 1\r\nd\r\nPAUSED\r\nOK 12\r\n---\n- 4\n- 2\n\r\n\
CLEARED 2\r\nRESERVED 2 1\r\nb\r\n"
    );
    w.send(b"watch idle\r\nignore default\r\nreserve\r\n");
    assert_eq!(String::from_utf8(w.replies(2)).unwrap(), "WATCHING 2\r\nWATCHING 1\r\n");
    (a, w)
}

#[test]
fn every_figure_of_stats_and_stats_tube_is_exported_as_stats_reports_it() {
    on_both_and_four_cores(|backend| {
        let (server, port) = start(backend, &[]);
        let (mut a, _waiting) = known_work(&server);
        // The figures as stats reports them; nothing runs after these two,
        // and the second counts the first. With several cores the waiting
        // reserve may reach its tube's shard after this connection's
        // `stats`, so the pair is asked again until it counts the waiter.
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let (tube, stats) = loop {
            let tube = doc(&a.ask(b"stats-tube work\r\n", 1));
            let stats = doc(&a.ask(b"stats\r\n", 1));
            if stats["current-waiting"] == "1" || Instant::now() >= deadline {
                break (tube, stats);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(stats["current-waiting"], "1");
        // Each core publishes its own snapshot, so with several cores one
        // may still be a moment behind: wait until every figure has caught
        // up (or CATCH_UP passes and the assertions below name the first
        // that did not).
        let caught_up = |m: &Metrics| {
            STATS.iter().all(|&(key, metric, counter)| {
                let want = Some(if counter {
                    Value::Counter(stats[key].parse().unwrap_or(f64::NAN))
                } else {
                    Value::Gauge(stats[key].parse().unwrap_or(f64::NAN))
                });
                m.samples.get(metric) == want.as_ref()
            })
        };
        let deadline = Instant::now() + CATCH_UP;
        let m = loop {
            let m = Metrics::scrape(port);
            if caught_up(&m) || Instant::now() >= deadline {
                break m;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for &(key, metric, counter) in STATS {
            let want: f64 = stats[key].parse().unwrap_or_else(|_| panic!("{key}: {}", stats[key]));
            assert_eq!(m.value(metric, counter), want, "{key} as {metric}");
        }
        for &(key, metric, counter) in TUBE_STATS {
            let want: f64 = tube[key].parse().unwrap();
            assert_eq!(m.value(&format!("{metric}{{tube=\"work\"}}"), counter), want, "stats-tube {key} as {metric}");
        }
        // Every tube is there (fewer than the cap): default, work, idle.
        for name in ["default", "idle"] {
            assert_eq!(m.gauge(&format!("beanstalkd_tube_current_watching_count{{tube=\"{name}\"}}")), 1.0);
        }
        assert_eq!(m.gauge("runnerbean_metrics_tubes_omitted"), 0.0);
        // The figures that move by themselves, within reason.
        let uptime = m.gauge("beanstalkd_uptime_seconds");
        assert!((uptime - stats["uptime"].parse::<f64>().unwrap()).abs() <= 2.0, "uptime {uptime}");
        assert!(m.counter("beanstalkd_rusage_utime_seconds_total") >= stats["rusage-utime"].parse::<f64>().unwrap());
        assert_eq!(m.gauge("beanstalkd_draining"), 0.0);
        assert_eq!(m.gauge("beanstalkd_up"), 1.0);
        let info_key = m.samples.keys().find(|k| k.starts_with("beanstalkd_info{")).expect("beanstalkd_info");
        for label in [
            format!("id=\"{}\"", stats["id"]),
            format!("hostname={}", stats["hostname"]),
            format!("pid=\"{}\"", stats["pid"]),
            "version=\"1.13\"".to_string(),
            format!("runnerbean_io={}", stats["runnerbean-io"]),
        ] {
            assert!(info_key.contains(&label), "{label} in {info_key}");
        }
        // What only runnerbean knows: its own commands' counters (one each
        // of reserve-job, kick and clear-tube, list-jobs; kick-job none),
        // and every core's loop.
        assert_eq!(m.counter("runnerbean_cmd_reserve_job_total"), 1.0);
        assert_eq!(m.counter("runnerbean_cmd_kick_job_total"), 0.0);
        assert_eq!(m.counter("runnerbean_cmd_clear_tube_total"), 1.0);
        assert_eq!(m.counter("runnerbean_cmd_list_jobs_total"), 1.0);
        let n = cores();
        assert_eq!(m.gauge("runnerbean_cores"), f64::from(n));
        for core in 0..n {
            // The two connections went to the cores with the fewest: the
            // first to core 0, the second to core 1 (or 0 again).
            let connections = (0..2).filter(|i| i % n == core).count() as f64;
            assert_eq!(m.gauge(&format!("runnerbean_connections{{core=\"{core}\"}}")), connections, "core {core}");
            // A core with a connection turned for its commands; every core
            // at least for its part of `stats`.
            let turns = m.counter(&format!("runnerbean_loop_turns_total{{core=\"{core}\"}}"));
            assert!(turns >= if connections > 0.0 { 3.0 } else { 1.0 }, "core {core}: {turns} turns");
            let busy = m.counter(&format!("runnerbean_loop_busy_seconds_total{{core=\"{core}\"}}"));
            assert!(busy > 0.0 && busy < uptime + 1.0, "core {core}: busy {busy}");
            let pending = m.gauge(&format!("runnerbean_pending_reply_bytes{{core=\"{core}\"}}"));
            assert_eq!(pending, 0.0, "core {core}: every reply was read");
            assert!(m.gauge(&format!("runnerbean_metrics_snapshot_age_seconds{{core=\"{core}\"}}")) >= 0.0);
        }
        assert!(!m.text.contains(&format!("core=\"{n}\"")), "no core beyond --cores");
        assert!(!m.text.contains("runnerbean_wal_"), "no log, no log figures");
        // A scrape counts itself, and changes nothing the clients see.
        let scrapes = m.counter("beanstalkd_exporter_scrapes_total");
        assert!(Metrics::scrape(port).counter("beanstalkd_exporter_scrapes_total") > scrapes);
        assert_eq!(doc(&a.ask(b"stats\r\n", 1))["cmd-stats"], "2");
    });
}

#[test]
fn with_the_log_write_and_sync_latencies_are_exported() {
    on_both_and_four_cores(|backend| {
        let dir = TempDir::new("metrics-wal");
        let (server, port) = start(backend, &["-b", dir.arg(), "-f", "1"]);
        let mut c = server.connect();
        for i in 0..20 {
            assert!(c.ask(format!("put 0 0 60 3\r\nj{i:02}\r\n").as_bytes(), 1).starts_with("INSERTED "));
        }
        // The jobs are in `default`, on its shard's core, which writes
        // and syncs them in its own log.
        let n = cores();
        let home = runnerbean::engine::shard_of_tube("default", n);
        let sync = format!("runnerbean_wal_sync_seconds{{core=\"{home}\"}}");
        let write = format!("runnerbean_wal_write_seconds{{core=\"{home}\"}}");
        // -f 1: every write is followed by a sync within a millisecond.
        Metrics::when(port, |m| {
            m.samples.contains_key(&sync) && m.histogram_count(&sync) >= 1.0 && m.histogram_count(&write) >= 1.0
        });
        let stats = doc(&c.ask(b"stats\r\n", 1));
        let written: f64 = stats["binlog-records-written"].parse().unwrap();
        assert!(written >= 20.0, "{written}");
        let m = Metrics::when(port, |m| m.counter("beanstalkd_binlog_records_written_total") == written);
        assert_eq!(m.gauge("beanstalkd_binlog_current_index"), stats["binlog-current-index"].parse::<f64>().unwrap());
        // Every core keeps a log of its own; only the home core's holds jobs.
        for core in 0..n {
            assert!(m.gauge(&format!("runnerbean_wal_disk_bytes{{core=\"{core}\"}}")) > 0.0, "core {core}");
            let live = m.gauge(&format!("runnerbean_wal_live_bytes{{core=\"{core}\"}}"));
            assert_eq!(live > 0.0, core == home, "core {core}: {live} live bytes");
            assert!(m.gauge(&format!("runnerbean_wal_segments{{core=\"{core}\"}}")) >= 1.0, "core {core}");
            assert!(
                m.text.contains(&format!("runnerbean_wal_write_seconds_bucket{{core=\"{core}\",le=\"0.000025\"}} "))
            );
        }
        assert!(m.text.contains("# TYPE runnerbean_wal_sync_seconds histogram\n"));
    });
}

#[test]
fn beyond_the_cap_the_busiest_tubes_are_exported_and_the_rest_counted() {
    on_both_and_four_cores(|backend| {
        let (server, port) = start(backend, &["--metrics-tubes-max", "2"]);
        let mut c = server.connect();
        for (tube, jobs) in [("one", 1), ("three", 3), ("two", 2), ("four", 4)] {
            c.ask(format!("use {tube}\r\n").as_bytes(), 1);
            for _ in 0..jobs {
                c.ask(b"put 0 0 60 1\r\nx\r\n", 1);
            }
        }
        let m = Metrics::when(port, |m| m.samples.get("runnerbean_metrics_tubes_omitted") == Some(&Value::Gauge(3.0)));
        let exported: Vec<&String> =
            m.samples.keys().filter(|k| k.starts_with("beanstalkd_tube_current_jobs_ready_count{")).collect();
        assert_eq!(
            exported,
            [
                "beanstalkd_tube_current_jobs_ready_count{tube=\"four\"}",
                "beanstalkd_tube_current_jobs_ready_count{tube=\"three\"}"
            ]
        );
        assert_eq!(m.gauge("runnerbean_metrics_tubes_max"), 2.0);
        assert_eq!(m.gauge("beanstalkd_current_tubes_count"), 5.0);
        // The line is written by the first scrape over the cap; with several
        // cores that scrape may see a shard's snapshot of a moment before,
        // so the count it names is not asserted.
        server.wait_for_log("tubes, more than --metrics-tubes-max (2): the 2 with the most jobs are exported");
        // Emptied and no longer used, `four` and `three` go: of the three
        // tubes left, `two` and `one` have the most jobs.
        c.ask(b"clear-tube four ready\r\nclear-tube three ready\r\n", 2);
        c.ask(b"use default\r\n", 1);
        let m = Metrics::when(port, |m| m.samples.get("runnerbean_metrics_tubes_omitted") == Some(&Value::Gauge(1.0)));
        assert_eq!(m.gauge("beanstalkd_tube_current_jobs_ready_count{tube=\"two\"}"), 2.0);
        assert_eq!(m.gauge("beanstalkd_tube_current_jobs_ready_count{tube=\"one\"}"), 1.0);
        c.ask(b"clear-tube one ready\r\n", 1);
        Metrics::when(port, |m| m.samples.get("runnerbean_metrics_tubes_omitted") == Some(&Value::Gauge(0.0)));
        server.wait_for_log("metrics: all 2 tubes are exported again");
    });
}

#[test]
fn unknown_paths_get_404_and_other_methods_405() {
    let (_server, port) = start("epoll", &[]);
    let (status, _, body) = get(port, "/");
    assert_eq!((status, body.as_str()), (404, "not found: the metrics are at /metrics\n"));
    assert_eq!(get(port, "/metrics/extra").0, 404);
    assert_eq!(get(port, "/metricsx").0, 404);
    let (status, head, _) =
        http(port, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 405);
    assert!(head.to_ascii_lowercase().contains("allow: get"), "{head}");
    // The query string is not part of the path.
    assert_eq!(get(port, "/metrics?x=1").0, 200);
    let huge = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n", "y".repeat(9000));
    assert_eq!(http(port, &huge).0, 431);
    // A request that never ends is answered 408 after 2 s
    // (METRICS_REQUEST_MS), and closed.
    assert_eq!(http(port, "GET /metrics HTTP/1.1\r\n").0, 408);
    assert_eq!(get(port, "/metrics").0, 200);
}

/// Clients of the metrics port that send garbage, stop half way or never
/// send anything hold at most the metrics server's few places; the server
/// goes on serving its clients, and scrapes work again once they leave.
#[test]
fn misbehaving_metrics_clients_never_stop_the_server() {
    on_both_and_four_cores(|backend| {
        let (server, port) = start(backend, &[]);
        let mut c = server.connect();
        let (status, _, _) = http(port, "NOT HTTP AT ALL\r\n\r\n");
        assert_eq!(status, 400);
        let mut idle: Vec<TcpStream> = (0..16).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
        for s in idle.iter_mut().take(4) {
            s.write_all(b"GET /metr").unwrap();
        }
        // The queue is served while every place of the metrics is held.
        for i in 0..50 {
            assert_eq!(
                c.ask(format!("put 0 0 60 1\r\n{}\r\n", i % 10).as_bytes(), 1),
                format!("INSERTED {}\r\n", i + 1)
            );
        }
        assert!(c.ask(b"stats\r\n", 1).starts_with("OK "));
        drop(idle);
        let m = Metrics::when(port, |m| m.counter("beanstalkd_cmd_put_total") == 50.0);
        assert_eq!(m.gauge("beanstalkd_current_jobs_ready_count"), 50.0);
        assert!(server.log_text().contains("metrics http://"), "{}", server.log_text());
    });
}

#[test]
fn a_metrics_address_that_cannot_be_bound_stops_the_start() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for (addr, message) in [
        (format!("127.0.0.1:{port}"), format!("--metrics 127.0.0.1:{port}: cannot listen: Address already in use")),
        ("nonsense".to_string(), "--metrics nonsense: ".to_string()),
        ("127.0.0.1:99999".to_string(), "--metrics 127.0.0.1:99999: ".to_string()),
    ] {
        // Before any core starts, with one core or several.
        for cores in ["1", "4"] {
            let mut child = Command::new(BIN)
                .args(["-l", "127.0.0.1", "-p", "0", "--cores", cores, "--metrics", &addr])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + REPLY_TIMEOUT;
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                assert!(Instant::now() < deadline, "runnerbean --metrics {addr} did not exit");
                std::thread::sleep(Duration::from_millis(10));
            };
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            assert_eq!(status.code(), Some(111), "{addr}, --cores {cores}: {err}");
            assert!(err.contains(&message), "{addr}, --cores {cores}: {err}");
        }
    }
}
