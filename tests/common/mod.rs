//! Helpers for wire tests: start the real runnerbean binary on 127.0.0.1
//! with an ephemeral port, and talk to it byte for byte.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_runnerbean");

/// The I/O back ends every wire test runs against.
pub const BACKENDS: [&str; 2] = ["uring", "epoll"];

/// How long a reply may take before a test fails.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A running server, killed when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    pub backend: &'static str,
    /// Everything the server printed to stdout and stderr.
    pub log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `runnerbean -l 127.0.0.1 -p 0 -V <args>` on a back end.
    pub fn start(backend: &'static str, args: &[&str]) -> Server {
        Server::spawn(Server::command(backend, args), backend)
    }

    /// The same, allowed at most `files` open descriptors.
    pub fn start_with_files_limit(backend: &'static str, args: &[&str], files: u64) -> Server {
        Server::start_with_limit(backend, args, libc::RLIMIT_NOFILE, files)
    }

    /// The same, with at most `bytes` of address space (`ulimit -v`), so
    /// that allocations fail once it is used up.
    pub fn start_with_address_space_limit(backend: &'static str, args: &[&str], bytes: u64) -> Server {
        Server::start_with_limit(backend, args, libc::RLIMIT_AS, bytes)
    }

    fn start_with_limit(
        backend: &'static str,
        args: &[&str],
        resource: libc::__rlimit_resource_t,
        value: u64,
    ) -> Server {
        use std::os::unix::process::CommandExt;
        let mut command = Server::command(backend, args);
        // Safety: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
                if libc::setrlimit(resource, &limit) == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
            });
        }
        Server::spawn(command, backend)
    }

    fn command(backend: &'static str, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command.args(["-l", "127.0.0.1", "-p", "0", "-V"]).args(args);
        let cores = CORES.get();
        if cores > 1 && !args.contains(&"--cores") {
            command.args(["--cores", &cores.to_string()]);
        }
        command.env("RUNNERBEAN_IO", backend).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command
    }

    fn spawn(mut command: Command, backend: &'static str) -> Server {
        let mut child = command.spawn().expect("start runnerbean");
        let log = Arc::new(Mutex::new(String::new()));
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut port = None;
        let mut line = String::new();
        while port.is_none() {
            line.clear();
            if stdout.read_line(&mut line).unwrap() == 0 {
                let mut err = String::new();
                child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                panic!("server exited before binding: {err}");
            }
            log.lock().unwrap().push_str(&line);
            if let Some(rest) = line.trim_end().strip_prefix("bind ") {
                // A unix socket has no port; 0 stands for "none".
                port = Some(rest.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0));
            }
        }
        drain_into(stdout, log.clone());
        drain_into(BufReader::new(child.stderr.take().unwrap()), log.clone());
        Server { child, port: port.unwrap(), backend, log }
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// A line of the process's /proc status, such as `VmSize`, in KiB.
    pub fn status_kb(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in status"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the process to end and returns its exit code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("server did not exit");
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the server's output contains `needle` (stdout and stderr
    /// are read by separate threads, so a line may show up late).
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let log = self.log_text();
            if log.contains(needle) {
                return log;
            }
            assert!(Instant::now() < deadline, "{needle:?} never appeared in the server log:\n{log}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn drain_into(mut reader: impl BufRead + Send + 'static, log: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            log.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
}

/// A client connection speaking raw bytes.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        Client::try_connect(port).expect("connect")
    }

    pub fn try_connect(port: u16) -> std::io::Result<Client> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        Ok(Client { stream, buf: Vec::new() })
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads exactly `n` complete replies (a line, plus `<n>` bytes and CRLF
    /// after RESERVED, FOUND and OK) and returns their bytes.
    pub fn replies(&mut self, n: usize) -> Vec<u8> {
        self.replies_within(n, REPLY_TIMEOUT)
    }

    /// The same, waiting up to `wait` for them: for a test that makes the
    /// server work through a burst of many connections' commands first.
    pub fn replies_within(&mut self, n: usize, wait: Duration) -> Vec<u8> {
        let deadline = Instant::now() + wait;
        let mut taken = 0;
        let mut count = 0;
        while count < n {
            match reply_len(&self.buf[taken..]) {
                Some(len) => {
                    taken += len;
                    count += 1;
                }
                None => self.fill(deadline),
            }
        }
        self.buf.drain(..taken).collect()
    }

    /// Sends and returns the replies, as text.
    pub fn ask(&mut self, bytes: &[u8], replies: usize) -> String {
        self.send(bytes);
        String::from_utf8(self.replies(replies)).unwrap()
    }

    /// Asserts that nothing arrives for a while.
    pub fn assert_quiet(&mut self, wait: Duration) {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => panic!("connection closed"),
            Ok(n) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&chunk[..n])),
            Err(e) => assert!(matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        }
        assert!(self.buf.is_empty(), "unexpected buffered bytes");
    }

    /// Reads until the server closes the connection; returns what came first.
    pub fn read_to_eof(&mut self) -> Vec<u8> {
        self.stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        let mut rest = std::mem::take(&mut self.buf);
        self.stream.read_to_end(&mut rest).expect("read to end of stream");
        rest
    }

    fn fill(&mut self, deadline: Instant) {
        let now = Instant::now();
        assert!(now < deadline, "timed out waiting for replies; have {:?}", String::from_utf8_lossy(&self.buf));
        self.stream.set_read_timeout(Some(deadline - now)).unwrap();
        let mut chunk = [0u8; 65536];
        // A read with a timeout fails with EINTR when the whole process is
        // stopped and continued (signal(7)), which a paused test machine does.
        let n = loop {
            match self.stream.read(&mut chunk) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                read => break read.expect("read reply"),
            }
        };
        assert!(n > 0, "connection closed; have {:?}", String::from_utf8_lossy(&self.buf));
        self.buf.extend_from_slice(&chunk[..n]);
    }
}

/// The length of the first complete reply in `buf`, if there is one.
fn reply_len(buf: &[u8]) -> Option<usize> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[..line_end]).expect("reply line is text");
    let mut words = line.split(' ');
    let framed = matches!(words.next(), Some("RESERVED" | "FOUND" | "OK"));
    if !framed {
        return Some(line_end + 2);
    }
    let size: usize = words.next_back().and_then(|w| w.parse().ok()).expect("byte count");
    let total = line_end + 2 + size + 2;
    (buf.len() >= total).then_some(total)
}

/// Runs a test body once per back end.
pub fn on_both(test: impl Fn(&'static str)) {
    for backend in BACKENDS {
        test(backend);
    }
}

thread_local! {
    /// `--cores` for the servers this thread starts (see [`on_both_and_four_cores`]).
    static CORES: std::cell::Cell<u32> = const { std::cell::Cell::new(1) };
}

/// The `--cores` of the servers the calling test starts now: 1, or 4 in
/// the second pass of [`on_both_and_four_cores`].
pub fn cores() -> u32 {
    CORES.get()
}

/// Runs `f` with `--cores cores` added to the servers it starts, for a
/// test that starts servers on threads of its own (the setting is the
/// thread's).
pub fn with_cores<R>(cores: u32, f: impl FnOnce() -> R) -> R {
    let before = CORES.replace(cores);
    let r = f();
    CORES.set(before);
    r
}

/// Runs a test body once per back end with one core, then once per back end
/// with `--cores 4` added to every server it starts (four shards: every
/// command on a tube of another shard crosses between cores). Each run says
/// which it is on stderr, which a failing test shows.
pub fn on_both_and_four_cores(test: impl Fn(&'static str)) {
    for cores in [1, 4] {
        with_cores(cores, || {
            for backend in BACKENDS {
                eprintln!("-- {backend}, --cores {cores}");
                test(backend);
            }
        });
    }
}

/// The value of `key` in a YAML stats document.
pub fn stat<'a>(doc: &'a str, key: &str) -> &'a str {
    doc.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(": ")))
        .unwrap_or_else(|| panic!("no {key} in {doc}"))
}

/// Whether the tests that need something of the machine (C beanstalkd on
/// `PATH`, permission to mount a file system) must run: set in CI, where a
/// skip would hide a failure.
pub fn live_required() -> bool {
    std::env::var("RUNNERBEAN_REQUIRE_LIVE").is_ok_and(|v| v == "1")
}

/// The C beanstalkd on `PATH`, if there is one.
pub fn c_beanstalkd() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("beanstalkd")).find(|candidate| candidate.is_file())
}

/// A C beanstalkd on 127.0.0.1 and an ephemeral port, with `args` after
/// its address flags, killed when dropped. `start` returns once it accepts
/// connections (with `-b`, only after it has taken the directory's lock and
/// read its binlog).
pub struct CServer {
    child: Child,
    pub port: u16,
}

impl CServer {
    pub fn start(binary: &std::path::Path, args: &[&str]) -> CServer {
        let mut child = Command::new(binary)
            .args(["-l", "127.0.0.1", "-p", "0", "-V"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start beanstalkd");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let port = loop {
            line.clear();
            assert!(stdout.read_line(&mut line).expect("beanstalkd's output") > 0, "beanstalkd exited before binding");
            if let Some(port) = line.trim_end().strip_prefix("bind ").and_then(|r| r.rsplit(':').next()?.parse().ok()) {
                break port;
            }
        };
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let server = CServer { child, port };
        let deadline = Instant::now() + REPLY_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "beanstalkd never listened on {port}");
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }
}

impl Drop for CServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory under the system's temporary directory, removed on drop;
/// its name carries the test's name, the process and a counter, so tests
/// running at once never share one.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("rb-test-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    /// A new directory `name` in `parent` (on a file system a test
    /// mounted), removed on drop like the others.
    pub fn under(parent: &std::path::Path, name: &str) -> TempDir {
        let path = parent.join(name);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// The path as a command-line argument.
    pub fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }

    /// A new subdirectory, kept until the whole directory goes (C
    /// beanstalkd does not make its `-b` directory).
    pub fn dir(&self, name: &str) -> std::path::PathBuf {
        let dir = self.0.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
