//! Starts beanstalkd-protocol servers for tests: the runnerbean binary of this workspace, and C
//! beanstalkd when it is installed. The client library's tests and doctests and rbctl's tests
//! use it; nothing outside tests does.
//!
//! # Finding the runnerbean binary
//! Cargo gives `CARGO_BIN_EXE_runnerbean` only to the server package's own tests, and a
//! library's dependency on a binary ("artifact dependencies") is not stable Cargo. So the first
//! [`TestServer::runnerbean`] of a process asks Cargo for the binary: it runs
//! `cargo build -p runnerbean --bin runnerbean --message-format=json` in this workspace and
//! takes the path from the `compiler-artifact` message, which is right for any target
//! directory (`CARGO_TARGET_DIR`, `build.target-dir`). The build is a no-op when the binary is
//! fresh, and `cargo test` does not hold Cargo's build lock while tests run. Setting
//! `RUNNERBEAN_BIN` to a binary's path skips the build (for a release binary, or a machine
//! without Cargo).
//!
//! # C beanstalkd
//! [`TestServer::beanstalkd`] starts `beanstalkd` from `PATH`, or returns `None` when it is not
//! installed, unless `RUNNERBEAN_REQUIRE_LIVE=1` (CI sets it), which makes a missing
//! `beanstalkd` a test failure rather than a skipped comparison.
//!
//! # Invariants
//! * Servers listen on 127.0.0.1 with a port the kernel picks (or on a unix socket in a fresh
//!   temporary directory), so tests run in parallel without colliding.
//! * A server is killed (by its own pid) and waited for when its [`TestServer`] is dropped; its
//!   output is drained all along so that it never blocks on a full pipe.
//! * Failures panic with a message saying what to do: this is test code.

#![warn(missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a server may take to accept its first connection. Both servers start in
/// milliseconds; this only bounds a broken start on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Pause between connection attempts while a server starts (C beanstalkd prints its `bind` line
/// before it calls listen(2)).
const CONNECT_RETRY_PAUSE: Duration = Duration::from_millis(5);

/// Which server a [`TestServer`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// This workspace's runnerbean binary.
    Runnerbean,
    /// C beanstalkd from `PATH`.
    Beanstalkd,
}

/// A running server, killed when dropped.
pub struct TestServer {
    child: Child,
    kind: Kind,
    addr: String,
    socket_dir: Option<PathBuf>,
    log: Arc<Mutex<String>>,
}

impl TestServer {
    /// Starts runnerbean on 127.0.0.1 and a free port.
    pub fn runnerbean() -> TestServer {
        TestServer::runnerbean_with(&[])
    }

    /// Starts runnerbean on 127.0.0.1 and a free port, with more flags (such as `-z 100`).
    pub fn runnerbean_with(args: &[&str]) -> TestServer {
        let mut command = Command::new(runnerbean_binary());
        command.args(["-l", "127.0.0.1", "-p", "0", "-V"]).args(args);
        TestServer::start(command, Kind::Runnerbean, None)
    }

    /// Starts runnerbean on a unix socket in a fresh temporary directory; its address is
    /// `unix:PATH`.
    pub fn runnerbean_unix() -> TestServer {
        let dir = fresh_dir();
        let path = dir.join("beanstalk.sock");
        let mut command = Command::new(runnerbean_binary());
        command.arg("-V").arg("-l").arg(format!("unix:{}", path.display()));
        TestServer::start(command, Kind::Runnerbean, Some(dir))
    }

    /// Starts C beanstalkd on 127.0.0.1 and a free port, or returns `None` when `beanstalkd` is
    /// not on `PATH` (a failure instead when `RUNNERBEAN_REQUIRE_LIVE=1`). C beanstalkd prints its
    /// address before it listens, so the harness connects once to know it is up, and that
    /// connection shows in its `total-connections`.
    pub fn beanstalkd() -> Option<TestServer> {
        TestServer::beanstalkd_with(&[])
    }

    /// C beanstalkd with more flags, or `None` as for [`TestServer::beanstalkd`].
    pub fn beanstalkd_with(args: &[&str]) -> Option<TestServer> {
        let Some(binary) = beanstalkd_binary() else {
            assert!(
                std::env::var("RUNNERBEAN_REQUIRE_LIVE").as_deref() != Ok("1"),
                "RUNNERBEAN_REQUIRE_LIVE=1 but `beanstalkd` is not on PATH (apt-get install -y beanstalkd)"
            );
            eprintln!("note: `beanstalkd` is not on PATH; the run against C beanstalkd is skipped");
            return None;
        };
        let mut command = Command::new(binary);
        command.args(["-l", "127.0.0.1", "-p", "0", "-V"]).args(args);
        Some(TestServer::start(command, Kind::Beanstalkd, None))
    }

    /// runnerbean, then C beanstalkd when it is installed: the servers a test that must hold for
    /// both runs against.
    pub fn both() -> Vec<TestServer> {
        TestServer::both_with(&[])
    }

    /// [`TestServer::both`], each started with the same extra flags.
    pub fn both_with(args: &[&str]) -> Vec<TestServer> {
        let mut servers = vec![TestServer::runnerbean_with(args)];
        servers.extend(TestServer::beanstalkd_with(args));
        servers
    }

    /// A short name for test messages: `runnerbean` or `beanstalkd`.
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Runnerbean => "runnerbean",
            Kind::Beanstalkd => "beanstalkd",
        }
    }

    /// Sends a signal by name (`USR1`, `TERM`) to the server, by its pid.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{name} {} failed", self.pid());
    }

    /// The address to connect to: `127.0.0.1:PORT`, or `unix:PATH`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Which server this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server printed so far (it runs with `-V`).
    pub fn log(&self) -> String {
        self.log.lock().map(|log| log.clone()).unwrap_or_default()
    }

    /// Kills the server and waits for it; the address stops answering.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn start(mut command: Command, kind: Kind, socket_dir: Option<PathBuf>) -> TestServer {
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {kind:?}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let (bind_tx, bind_rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        drain(stdout, log.clone(), Some(bind_tx));
        drain(stderr, log.clone(), None);
        let mut server = TestServer { child, kind, addr: String::new(), socket_dir, log };
        let bound = match bind_rx.recv_timeout(START_TIMEOUT) {
            Ok(bound) => bound,
            Err(_) => panic!("{kind:?} printed no `bind` line; it printed:\n{}", server.log()),
        };
        // runnerbean's bind line for a unix socket is the bare path.
        server.addr = match &server.socket_dir {
            Some(_) => format!("unix:{bound}"),
            None => bound,
        };
        // runnerbean prints its bind line after listen(2); C beanstalkd prints it before, so
        // only C beanstalkd needs a probe (which it counts in total-connections).
        if kind == Kind::Beanstalkd {
            server.wait_until_accepting();
        }
        server
    }

    fn wait_until_accepting(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let connected = match self.addr.strip_prefix("unix:") {
                Some(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
                None => std::net::TcpStream::connect(&self.addr).is_ok(),
            };
            if connected {
                return;
            }
            assert!(Instant::now() < deadline, "{:?} never accepted on {}:\n{}", self.kind, self.addr, self.log());
            std::thread::sleep(CONNECT_RETRY_PAUSE);
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.socket_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Copies a server's output into `log`, and sends the address of its first
/// `bind <fd> <addr>` line to `bind`.
fn drain(
    output: impl std::io::Read + Send + 'static,
    log: Arc<Mutex<String>>,
    mut bind: Option<std::sync::mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("bind ")
                && let (Some(tx), Some((_, addr))) = (bind.take(), rest.split_once(' '))
            {
                let _ = tx.send(addr.trim().to_owned());
            }
            if let Ok(mut log) = log.lock() {
                log.push_str(&line);
                log.push('\n');
            }
        }
    });
}

/// The runnerbean binary: `RUNNERBEAN_BIN`, or the one `cargo build` reports (built once per
/// process).
pub fn runnerbean_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| match std::env::var_os("RUNNERBEAN_BIN") {
            Some(path) => PathBuf::from(path),
            None => build_runnerbean(),
        })
        .clone()
}

fn build_runnerbean() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the harness lives in the workspace");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(workspace)
        .args(["build", "--quiet", "-p", "runnerbean", "--bin", "runnerbean", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build runnerbean (set RUNNERBEAN_BIN?): {e}"));
    assert!(output.status.success(), "`cargo build -p runnerbean` failed");
    for line in output.stdout.split(|&b| b == b'\n') {
        let Ok(message) = serde_json::from_slice::<serde_json::Value>(line) else { continue };
        let is_server = message["reason"] == "compiler-artifact"
            && message["target"]["name"] == "runnerbean"
            && message["target"]["kind"].as_array().is_some_and(|kinds| kinds.iter().any(|k| k == "bin"));
        if let (true, Some(path)) = (is_server, message["executable"].as_str()) {
            return PathBuf::from(path);
        }
    }
    panic!("`cargo build -p runnerbean` reported no runnerbean executable")
}

fn beanstalkd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("beanstalkd")).find(|candidate| candidate.is_file())
}

/// A new empty directory under the system's temporary directory, for a unix socket.
fn fresh_dir() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("runnerbean-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}
