//! The console in a real browser: headless Chromium, driven through WebDriver (Debian's
//! `chromium` and `chromium-driver`), clicks through every action on the page and checks what
//! the page shows and what the servers hold afterwards, against runnerbean and, when it is
//! installed, C beanstalkd, both shown by one console.
//!
//! Screenshots of each screen go to `target/ci-artifacts/console/` (CI keeps them).
//!
//! Without `chromedriver` on PATH the test says it skipped, unless `RBCTL_REQUIRE_BROWSER=1`
//! (CI sets it), which makes that a failure. Waits for the page's polling are short polls
//! with a generous overall limit: nothing here depends on how fast the machine is.

mod console;

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};
use runnerbean_client::{Client, Error, JobId, JobState};
use runnerbean_testserver::TestServer;
use serde_json::{Value, json};

/// How long any one thing may take to show on the page before the test fails: far beyond the
/// page's 1 or 2 s polling, for a loaded machine.
const WAIT_MAX: Duration = Duration::from_secs(30);

/// Pause between two looks at the page while waiting.
const POLL_PAUSE: Duration = Duration::from_millis(50);

/// A process killed (by its pid) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// chromedriver, in a process group of its own with the browsers it starts, which is
/// killed whole when dropped: killing chromedriver alone left each run's Chromium
/// processes behind, running.
struct DriverGroup(Child);

impl Drop for DriverGroup {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `rbctl web` for these servers; returns it and its URL.
fn console(addrs: &[&str], flags: &[&str]) -> (Process, String) {
    let (child, url) = console::start(addrs, flags);
    (Process(child), url)
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

/// The directory screenshots go to: `ci-artifacts/console` in the target directory.
fn artifacts() -> PathBuf {
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = target.parent().expect("the target directory").join("ci-artifacts").join("console");
    std::fs::create_dir_all(&dir).expect("create the artifact directory");
    dir
}

/// A browser session on its own chromedriver.
struct Browser {
    page: fantoccini::Client,
    _driver: DriverGroup,
    shots: PathBuf,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium; `None` when there is no chromedriver.
    async fn start() -> Option<Browser> {
        let Some(driver) = on_path("chromedriver") else {
            assert!(
                std::env::var("RBCTL_REQUIRE_BROWSER").as_deref() != Ok("1"),
                "RBCTL_REQUIRE_BROWSER=1 but chromedriver is not on PATH (apt-get install chromium chromium-driver)"
            );
            eprintln!("note: chromedriver is not on PATH; the browser test of the console is skipped");
            return None;
        };
        // chromedriver takes a port, not port 0: take a free one from the kernel.
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        use std::os::unix::process::CommandExt;
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = DriverGroup(child);
        let mut options = json!({
            // Root (CI) needs --no-sandbox; /dev/shm may be small in containers.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"],
        });
        if let Some(chromium) = on_path("chromium") {
            options["binary"] = json!(chromium);
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".to_owned(), json!("chrome"));
        capabilities.insert("goog:chromeOptions".to_owned(), options);
        let started = Instant::now();
        let page = loop {
            let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
            match builder.capabilities(capabilities.clone()).connect(&format!("http://127.0.0.1:{port}")).await {
                Ok(page) => break page,
                Err(e) => {
                    assert!(started.elapsed() < WAIT_MAX, "no WebDriver session: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Some(Browser { page, _driver: driver, shots: artifacts() })
    }

    async fn screenshot(&self, name: &str) {
        let png = self.page.screenshot().await.expect("screenshot");
        std::fs::write(self.shots.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// Polls `probe` until it gives a value; fails (with a screenshot) after [`WAIT_MAX`].
    async fn until<T, F, Fut>(&self, what: &str, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let started = Instant::now();
        loop {
            if let Some(value) = probe().await {
                return value;
            }
            if started.elapsed() > WAIT_MAX {
                let shot = format!("failure-{}", std::thread::current().name().unwrap_or("test"));
                self.screenshot(&shot).await;
                let notice = self.text("#notice").await;
                panic!("the page never showed {what} (notice: {notice:?}; see {shot}.png)");
            }
            tokio::time::sleep(POLL_PAUSE).await;
        }
    }

    /// The text of the first element `css` matches, read in the page (no element handle to
    /// go stale when the page redraws).
    async fn text(&self, css: &str) -> Option<String> {
        let script = "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;";
        match self.page.execute(script, vec![json!(css)]).await {
            Ok(Value::String(text)) => Some(text),
            _ => None,
        }
    }

    /// Waits until the element's text satisfies `test`, and returns it.
    async fn text_until(&self, css: &str, what: &str, test: impl Fn(&str) -> bool) -> String {
        self.until(what, || async { self.text(css).await.filter(|t| test(t)) }).await
    }

    /// Clicks the element through WebDriver, again if the page redrew it in between.
    async fn click(&self, css: &str) {
        self.until(&format!("a clickable {css}"), || async {
            let element = self.page.find(Locator::Css(css)).await.ok()?;
            element.click().await.ok()
        })
        .await
    }

    /// Replaces an input's value by typing into it.
    async fn type_into(&self, css: &str, text: &str) {
        let element = self.page.find(Locator::Css(css)).await.expect("input");
        element.clear().await.expect("clear");
        element.send_keys(text).await.expect("type");
    }

    /// Waits for the notice to say something starting with `start`.
    async fn notice(&self, start: &str) -> String {
        self.text_until("#notice", &format!("the notice {start:?}"), |t| t.starts_with(start)).await
    }
}

async fn bury(client: &Client, tube: &str, body: &[u8]) -> JobId {
    let id = client.publish(tube, body, 50, 0, 60).await.expect("put");
    client.reserve_job(id).await.expect("reserve-job");
    client.bury(id, 50).await.expect("bury");
    id
}

#[tokio::test]
async fn clicking_through_every_action() {
    let Some(browser) = Browser::start().await else { return };
    let servers = TestServer::both();
    let addrs: Vec<&str> = servers.iter().map(|s| s.addr()).collect();
    let (_console, url) = console(&addrs, &[]);

    for (index, server) in servers.iter().enumerate() {
        let name = server.name();
        let client = Client::connect(server.addr()).await.expect("connect");
        let delayed = client.publish("emails", b"tomorrow", 100, 3600, 60).await.expect("put");
        client.publish("emails", b"hello", 100, 0, 60).await.expect("put");
        let buried = bury(&client, "emails", b"broken").await;
        client.publish("thumbnails", b"resize", 100, 0, 60).await.expect("put");
        let section = format!("section.server[data-server=\"{index}\"]");

        // The overview: the servers, their tubes and counts, live.
        browser.page.goto(&format!("{url}/#/")).await.expect("open the overview");
        let row = format!("{section} tr.tube[data-tube=\"emails\"]");
        browser.text_until(&format!("{row} td.ready"), "emails' ready count", |t| t == "1").await;
        browser.text_until(&format!("{row} td.buried"), "emails' buried count", |t| t == "1").await;
        browser.text_until(&format!("{section} h2"), "the server's kind", |t| t.contains(name)).await;
        // Rates need two samples: from the second refresh on, a number per second.
        browser.text_until(&format!("{row} td.puts"), "a put rate", |t| t.parse::<f64>().is_ok()).await;

        // The filter keeps only tubes whose name matches.
        browser.type_into("#filter", "ema").await;
        let rows = "return Array.from(document.querySelectorAll(arguments[0] + ' tr.tube')).map(r => r.dataset.tube);";
        browser
            .until("only emails listed", || async {
                let shown = browser.page.execute(rows, vec![json!(section)]).await.ok()?;
                (shown == json!(["emails"])).then_some(())
            })
            .await;
        browser.screenshot(&format!("{name}-1-overview-filtered")).await;

        // A tube's page, from its link.
        browser.click(&format!("{row} td.name a")).await;
        browser.text_until("#tube-name", "the tube's name", |t| t == "emails").await;
        browser.text_until("#tube-summary .count-ready", "the ready count", |t| t == "ready1").await;

        // Put a JSON job, most urgent so that even a peek shows it first.
        browser.type_into("#put-body", r#"{"to": "ops@example.com", "n": 7}"#).await;
        browser.type_into("#put-pri", "1").await;
        browser.click("#put-button").await;
        let notice = browser.notice("put job ").await;
        let put: u64 = notice.split(' ').nth(2).and_then(|id| id.parse().ok()).expect("the new job's id");
        assert_eq!(client.stats_job(JobId(put)).await.expect("stats-job").pri, 1, "{name}");
        let card = format!(".state[data-state=\"ready\"] .job[data-id=\"{put}\"]");
        let pretty = "{\n  \"to\": \"ops@example.com\",\n  \"n\": 7\n}";
        browser.text_until(&format!("{card} pre"), "the body as JSON", |t| t == pretty).await;
        browser.click(&format!("{card} .format-hex")).await;
        browser
            .text_until(&format!("{card} pre"), "the body as hex", |t| t.starts_with("00000000  7b 22 74 6f 22"))
            .await;
        browser.screenshot(&format!("{name}-2-tube-hex")).await;
        browser.click(&format!("{card} .format-text")).await;
        browser
            .text_until(&format!("{card} pre"), "the body as text", |t| t == r#"{"to": "ops@example.com", "n": 7}"#)
            .await;

        // Kick one job: the delayed one.
        browser.click(&format!(".state[data-state=\"delayed\"] .job[data-id=\"{delayed}\"] .kick")).await;
        browser.notice(&format!("kicked job {delayed}")).await;
        assert_eq!(client.stats_job(delayed).await.expect("stats-job").state, JobState::Ready, "{name}");

        // Kick N (1): the buried one.
        browser.type_into("#kick-count", "1").await;
        browser.click("#kick-button").await;
        browser.notice("kicked 1 job(s) in emails").await;
        assert_eq!(client.stats_job(buried).await.expect("stats-job").state, JobState::Ready, "{name}");

        // Delete one job.
        browser.click(&format!("{card} .delete")).await;
        browser.notice(&format!("deleted job {put}")).await;
        assert!(matches!(client.peek(JobId(put)).await, Err(Error::NotFound)), "{name}");

        // Pause and unpause.
        browser.type_into("#pause-seconds", "90").await;
        browser.click("#pause-button").await;
        browser.notice("paused emails for 90 s").await;
        browser.text_until("#tube-summary .paused", "the pause", |t| t.ends_with("s left")).await;
        assert_eq!(client.stats_tube("emails").await.expect("stats-tube").pause, 90, "{name}");
        browser.click("#unpause-button").await;
        browser.notice("emails is no longer paused").await;
        browser.text_until("#tube-summary .paused", "no pause", |t| t == "pausedno").await;

        // Move one job by its button, then every ready and buried job.
        let urgent = client.publish("emails", b"urgent", 0, 0, 60).await.expect("put");
        bury(&client, "emails", b"broken too").await;
        browser.type_into("#move-to", "archive").await;
        browser.click(&format!(".state[data-state=\"ready\"] .job[data-id=\"{urgent}\"] .move")).await;
        browser.notice(&format!("moved job {urgent} to archive")).await;
        assert_eq!(client.stats_tube("archive").await.expect("archive").current_jobs_ready, 1, "{name}");
        browser.click("#move-button").await;
        browser.notice("moved 4 job(s) from emails to archive").await;
        let emails = client.stats_tube("emails").await.expect("emails");
        assert_eq!((emails.current_jobs_ready, emails.current_jobs_buried), (0, 0), "{name}");
        assert_eq!(client.stats_tube("archive").await.expect("archive").current_jobs_ready, 5, "{name}");
        browser.screenshot(&format!("{name}-3-moved")).await;

        // Delete every ready job of a tube, confirmed by a second click.
        browser.page.goto(&format!("{url}/#/s/{index}/t/archive")).await.expect("open archive");
        browser.text_until("#tube-summary .count-ready", "archive's ready count", |t| t == "ready5").await;
        let clear = ".state[data-state=\"ready\"] .clear";
        browser.click(clear).await;
        browser.text_until(clear, "the question", |t| t.ends_with("click again to confirm")).await;
        browser.click(clear).await;
        browser.notice("deleted 5 ready job(s) from archive").await;
        // With no job left and nobody using it, the tube is gone.
        assert!(matches!(client.stats_tube("archive").await, Err(Error::NotFound)), "{name}");
        browser
            .text_until("#tube-summary .gone", "the tube gone", |t| t.starts_with("There is no tube archive now"))
            .await;
        browser.screenshot(&format!("{name}-4-cleared")).await;

        browser.page.goto(&format!("{url}/#/")).await.expect("back to the overview");
        browser.type_into("#filter", "").await;
    }
}

#[tokio::test]
async fn logging_in_with_the_token() {
    let Some(browser) = Browser::start().await else { return };
    let server = TestServer::runnerbean();
    let token = "a long enough token";
    let (_console, url) = console(&[server.addr()], &["--token", token]);
    browser.page.goto(&format!("{url}/")).await.expect("open the console");
    browser.until("the login form", || async { browser.page.find(Locator::Css("#token")).await.ok() }).await;
    browser.type_into("#token", "wrong").await;
    browser.click("#login-button").await;
    browser.text_until("#login-error", "the refusal", |t| t == "That is not the token.").await;
    browser.screenshot("login-refused").await;
    browser.type_into("#token", token).await;
    browser.click("#login-button").await;
    let row = "section.server[data-server=\"0\"] tr.tube[data-tube=\"default\"] td.ready";
    browser.text_until(row, "the overview", |t| t == "0").await;
    browser.text_until("#status", "a refresh", |t| t.starts_with("updated")).await;
    browser.screenshot("logged-in").await;
}
