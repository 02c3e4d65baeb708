//! What the end-to-end tests share: starting the worker binary, reading its log, waiting for
//! the server to show a state. Waits poll with short pauses and fail after a generous bound;
//! the bound only ends a broken run, it is never what a test checks.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runnerbean_client::{Client, Error, JobId, JobStats};

pub const WORKER: &str = env!("CARGO_BIN_EXE_runnerbean-worker");

/// The longest a test waits for anything before it fails.
pub const WAIT_MAX: Duration = Duration::from_secs(60);

/// Pause between two looks.
const POLL: Duration = Duration::from_millis(20);

/// A worker process, killed (by its pid) if the test ends while it still runs.
pub struct Worker {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Worker {
    /// Starts `runnerbean-worker ARGS...` in `dir`, with `env` added to its environment.
    pub fn start(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Worker {
        let mut command = Command::new(WORKER);
        command.args(args).current_dir(dir).env_remove("BEANSTALK_ADDR");
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start runnerbean-worker");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let copy = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = copy.lock().expect("log");
                log.push_str(&line);
                log.push('\n');
            }
        });
        Worker { child, log }
    }

    /// Everything the worker logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal to the worker.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid, which it is until we wait for it.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// Waits for the worker to exit, and its log to be complete.
    pub async fn exit(&mut self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // The log thread reads until the pipe closes, which is now or very soon.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return status;
            }
            assert!(tokio::time::Instant::now() < deadline, "the worker did not exit; its log:\n{}", self.log());
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the log has a line containing `text`.
    pub async fn logged(&self, text: &str) {
        until(&format!("the log to show {text:?}"), || async { Ok(self.log().contains(text)) }).await;
        let _ = self;
    }

    /// Whether the worker is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `check` until it returns true; fails the test after [`WAIT_MAX`].
pub async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, Error>>,
{
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    loop {
        match check().await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => panic!("waiting for {what}: {e}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "waited too long for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// A job's stats, or `None` once it is deleted.
pub async fn job(client: &Client, id: JobId) -> Option<JobStats> {
    match client.stats_job(id).await {
        Ok(stats) => Some(stats),
        Err(Error::NotFound) => None,
        Err(e) => panic!("stats-job {id}: {e}"),
    }
}

/// Waits for a job to be deleted.
pub async fn deleted(client: &Client, id: JobId) {
    until(&format!("job {id} to be deleted"), || async { Ok(job(client, id).await.is_none()) }).await;
}

/// Builds a backq `BackQ\Message\Process` body the way PHP's serialize() writes one, from
/// values already in PHP's format (`s:2:"ab";`, `N;`, `d:2.5;`...). The unit tests check this
/// layout against bodies PHP wrote (tests/fixtures/backq).
pub fn backq_process(props: &[(&str, String)]) -> Vec<u8> {
    let class = "BackQ\\Message\\Process";
    let mut out = format!("O:{}:\"{class}\":{}:{{", class.len(), props.len()).into_bytes();
    for (name, value) in props {
        let mangled = format!("\0{class}\0{name}");
        out.extend(format!("s:{}:\"{mangled}\";{value}", mangled.len()).into_bytes());
    }
    out.push(b'}');
    out
}

/// A PHP-serialized string.
pub fn php_str(text: &str) -> String {
    format!("s:{}:\"{text}\";", text.len())
}
