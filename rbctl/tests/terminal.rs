//! rbctl on a terminal: each test runs it in a pseudo-terminal, rebuilds its screen from the
//! bytes it writes (with the vt100 crate's terminal emulator) and asserts what a person would
//! see. `top` after jobs are put and reserved, with keys that sort, filter and quit; `clear`'s
//! confirmation prompt; `raw`'s line-edited session.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runnerbean_testserver::TestServer;

const RBCTL: &str = env!("CARGO_BIN_EXE_rbctl");

const ROWS: u16 = 30;
const COLS: u16 = 120;

/// How long the screen may take to show what a step expects; the view refreshes every 0.2 s.
const SCREEN_TIMEOUT: Duration = Duration::from_secs(10);

/// rbctl running on the slave side of a pseudo-terminal, with its screen emulated.
struct Tty {
    child: Child,
    master: File,
    screen: Arc<Mutex<vt100::Parser>>,
}

impl Tty {
    fn start(args: &[&str]) -> Tty {
        let (mut master_fd, mut slave_fd) = (0, 0);
        let size = libc::winsize { ws_row: ROWS, ws_col: COLS, ws_xpixel: 0, ws_ypixel: 0 };
        // Safety: openpty writes two descriptors it opened into the two integers.
        let status =
            unsafe { libc::openpty(&mut master_fd, &mut slave_fd, std::ptr::null_mut(), std::ptr::null(), &size) };
        assert_eq!(status, 0, "openpty: {}", std::io::Error::last_os_error());
        // Safety: both descriptors were just opened and are owned here alone.
        let (master, slave) = unsafe { (File::from_raw_fd(master_fd), OwnedFd::from_raw_fd(slave_fd)) };
        let mut command = Command::new(RBCTL);
        command
            .args(args)
            .env("TERM", "xterm-256color")
            .stdin(Stdio::from(slave.try_clone().expect("dup")))
            .stdout(Stdio::from(slave.try_clone().expect("dup")))
            .stderr(Stdio::from(slave));
        // Safety: setsid and ioctl are async-signal-safe; the child makes the terminal its
        // controlling one, as a shell would.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start rbctl");
        let screen = Arc::new(Mutex::new(vt100::Parser::new(ROWS, COLS, 0)));
        let mut reader = master.try_clone().expect("dup master");
        let parser = screen.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            // EIO once the child has exited and the slave side is closed.
            while let Ok(n @ 1..) = reader.read(&mut chunk) {
                parser.lock().expect("screen").process(&chunk[..n]);
            }
        });
        Tty { child, master, screen }
    }

    fn contents(&self) -> String {
        self.screen.lock().expect("screen").screen().contents()
    }

    /// Waits until every one of `rows` begins a row of the screen (compared with runs of
    /// spaces collapsed), and returns the screen.
    fn wait_for_rows(&self, rows: &[&str]) -> String {
        let deadline = Instant::now() + SCREEN_TIMEOUT;
        loop {
            let contents = self.contents();
            let shown: Vec<String> = contents.lines().map(collapse).collect();
            if rows.iter().all(|row| shown.iter().any(|s| s.starts_with(&collapse(row)))) {
                return contents;
            }
            assert!(Instant::now() < deadline, "never showed {rows:?}; the screen is:\n{contents}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn type_keys(&mut self, keys: &[u8]) {
        self.master.write_all(keys).expect("type");
    }

    /// Waits until `text` is somewhere on the screen, and returns the screen.
    fn wait_for_text(&self, text: &str) -> String {
        self.wait_until(text, |screen| screen.contains(text))
    }

    /// Waits until the screen passes `test` (described by `what` in the failure).
    fn wait_until(&self, what: &str, test: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + SCREEN_TIMEOUT;
        loop {
            let contents = self.contents();
            if test(&contents) {
                return contents;
            }
            assert!(Instant::now() < deadline, "never showed {what:?}; the screen is:\n{contents}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_for_exit(&mut self) -> i32 {
        let deadline = Instant::now() + SCREEN_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code().expect("exit code");
            }
            assert!(Instant::now() < deadline, "rbctl did not exit; the screen is:\n{}", self.contents());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A screen row with its box-drawing borders removed and runs of spaces made one.
fn collapse(row: &str) -> String {
    row.trim_matches(|c: char| c == '│' || c.is_whitespace()).split_whitespace().collect::<Vec<_>>().join(" ")
}

fn rbctl(addr: &str, args: &[&str]) {
    let status = Command::new(RBCTL).arg("--addr").arg(addr).args(args).stdout(Stdio::null()).status().expect("rbctl");
    assert!(status.success(), "rbctl {args:?}");
}

#[test]
fn top_shows_tubes_and_server_totals_live() {
    let server = TestServer::runnerbean();
    let addr = server.addr();
    let mut top = Tty::start(&["--addr", addr, "top", "--interval", "0.2"]);
    top.wait_for_rows(&["TUBE▲ READY RESERVED DELAYED BURIED WAITING PUT/S DELETE/S", "default 0 0 0 0 0 0.0 0.0"]);

    // Put jobs, reserve one and hold it, and leave a worker waiting on another tube.
    for body in ["a", "b", "c"] {
        rbctl(addr, &["put", body, "-t", "emails"]);
    }
    rbctl(addr, &["put", "later", "-t", "emails", "--delay", "600"]);
    let mut holder = std::process::Command::new(RBCTL)
        .args(["--addr", addr, "raw"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("raw");
    let mut holder_in = holder.stdin.take().expect("stdin");
    holder_in.write_all(b"watch emails\nreserve\nwatch idle\nignore emails\nignore default\nreserve\n").expect("write");
    let screen = top.wait_for_rows(&["emails 2 1 1 0 0", "idle 0 0 0 0 1 0.0 0.0"]);
    assert!(screen.contains("jobs: ready 2  reserved 1  delayed 1  buried 0"), "{screen}");
    assert!(screen.contains("connections 2  producers 0  workers 1  waiting 1"), "{screen}");
    assert!(screen.contains("runnerbean"), "{screen}");
    let emails = screen.lines().map(collapse).find(|l| l.starts_with("emails ")).expect("emails row");
    assert!(emails.starts_with("emails 2 1 1 0 0 "), "{emails}");

    // `s` sorts by ready, largest first: emails above default.
    top.type_keys(b"s");
    let screen = top.wait_for_rows(&["TUBE READY▼ RESERVED DELAYED BURIED WAITING PUT/S DELETE/S"]);
    let order: Vec<String> =
        screen.lines().map(collapse).filter_map(|l| l.split(' ').next().map(str::to_owned)).collect();
    let at = |name: &str| order.iter().position(|n| n == name).expect(name);
    assert!(at("emails") < at("default") && at("emails") < at("idle"), "{screen}");

    // `/` filters by name.
    top.type_keys(b"/idl\r");
    let screen = top.wait_for_rows(&["idle 0 0 0 0 1 0.0 0.0", "q quit s sort (READY) r reverse / filter: idl"]);
    assert!(!screen.lines().map(collapse).any(|l| l.starts_with("emails ") || l.starts_with("default ")), "{screen}");

    top.type_keys(b"q");
    assert_eq!(top.wait_for_exit(), 0);
    drop(holder_in);
    let _ = holder.kill();
    let _ = holder.wait();
}

#[test]
fn clear_asks_before_deleting_on_a_terminal() {
    let server = TestServer::runnerbean();
    let addr = server.addr();
    rbctl(addr, &["put", "a", "-t", "c"]);
    rbctl(addr, &["put", "b", "-t", "c", "--delay", "600"]);

    let mut no = Tty::start(&["--addr", addr, "clear", "c"]);
    no.wait_for_text("delete 2 jobs (ready, delayed, buried) from tube \"c\"? [y/N]");
    no.type_keys(b"n\r");
    assert_eq!(no.wait_for_exit(), 5);
    no.wait_for_text("rbctl: nothing deleted");

    let mut yes = Tty::start(&["--addr", addr, "clear", "c", "--delayed"]);
    yes.wait_for_text("delete 1 job (delayed) from tube \"c\"? [y/N]");
    yes.type_keys(b"y\r");
    assert_eq!(yes.wait_for_exit(), 0);
    yes.wait_for_text("deleted 1 job from tube \"c\"");
    let output = Command::new(RBCTL).args(["--addr", addr, "peek", "--ready", "-t", "c"]).output().expect("peek");
    assert_eq!(output.stdout, b"a");
}

#[test]
fn raw_edits_lines_on_a_terminal() {
    let server = TestServer::runnerbean();
    let mut raw = Tty::start(&["--addr", server.addr(), "raw"]);
    raw.wait_for_text("beanstalk> ");
    // A typo fixed with backspace before the line is sent.
    raw.type_keys(b"use tubx\x7fe\r");
    raw.wait_for_text("USING tube");
    raw.type_keys(b"put 0 0 10 2\r");
    raw.wait_for_text("body> ");
    raw.type_keys(b"hi\r");
    raw.wait_for_text("INSERTED 1");
    raw.type_keys(b"peek 1\r");
    raw.wait_for_text("FOUND 1 2");
    // Up-arrow three times brings back the use line from the session's history (bodies are not
    // kept in it).
    raw.type_keys(b"\x1b[A\x1b[A\x1b[A\r");
    let screen = raw
        .wait_until("a second USING tube", |screen| screen.matches("beanstalk> use tube\nUSING tube\n").count() == 2);
    assert!(
        screen.contains("beanstalk> put 0 0 10 2\nbody> hi\nINSERTED 1\nbeanstalk> peek 1\nFOUND 1 2\nhi\n"),
        "{screen}"
    );
    raw.type_keys(b"quit\r");
    assert_eq!(raw.wait_for_exit(), 0);
}
