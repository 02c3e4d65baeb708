//! The command line as a user meets it: messages, exit codes, and the flags
//! runnerbean refuses rather than half-honour.

mod common;

use std::process::{Command, Output};

use common::{BIN, Server, stat};

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run runnerbean")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_and_version() {
    let out = run(&["-h"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    let help = text(&out.stderr);
    assert!(help.starts_with(&format!("Use: {BIN} [OPTIONS]\n")), "{help}");
    for flag in ["-b DIR", "-f MS", "-F", "-l ADDR", "-p PORT", "-u USER", "-z BYTES", "-s BYTES", "-v", "-V", "-h"] {
        assert!(help.contains(&format!(" {flag} ")), "{flag} missing from help");
    }
    let out = run(&["-v"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), format!("runnerbean {} (beanstalkd 1.13 protocol)\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn usage_errors_exit_5_with_beanstalkd_messages() {
    for (args, message) in [
        (&["-x"][..], "unknown flag: -x"),
        (&["-Vx"][..], "unknown flag: Vx"),
        (&["-p"][..], "flag requires an argument: -p"),
        (&["-z", "12abc"][..], "invalid size: 12abc"),
        (&["stray"][..], "unknown argument: stray"),
        (&["--cores"][..], "flag requires an argument: --cores"),
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(5), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.starts_with(&format!("{BIN}: {message}\nUse: {BIN} [OPTIONS]\n")), "{args:?}: {err}");
    }
}

#[test]
fn refuses_what_it_cannot_do_yet() {
    let out = run(&["-b", "/nonexistent", "-l", "127.0.0.1", "-p", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("-b: the write-ahead log is not available"), "{}", text(&out.stderr));
    let out = run(&["--cores", "2", "-l", "127.0.0.1", "-p", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--cores"));
}

#[test]
fn unknown_user_exits_33() {
    let out = run(&["-l", "127.0.0.1", "-p", "0", "-u", "no-such-user-here"]);
    assert_eq!(out.status.code(), Some(33));
    assert_eq!(text(&out.stderr), format!("{BIN}: getpwnam(\"no-such-user-here\"): no such user\n"));
}

#[test]
fn socket_errors_exit_111() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = run(&["-l", "127.0.0.1", "-p", &port]);
    assert_eq!(out.status.code(), Some(111), "{}", text(&out.stderr));
    let long = format!("unix:/tmp/{}", "s".repeat(120));
    let out = run(&["-l", &long]);
    assert_eq!(out.status.code(), Some(111));
    assert!(text(&out.stderr).contains("is too long"));
}

#[test]
fn job_size_limit_is_capped_at_one_gibibyte() {
    let server = Server::start("epoll", &["-z", "5000000000"]);
    let stats = server.connect().ask(b"stats\r\n", 1);
    assert_eq!(stat(&stats, "max-job-size"), "1073741824");
    assert!(server.log_text().contains("maximum job size was set to 1073741824"));
}

#[test]
fn removed_flags_warn_and_carry_on() {
    let server = Server::start("epoll", &["-c", "-n", "-s", "4096", "-f", "10", "-F"]);
    let stats = server.connect().ask(b"stats\r\n", 1);
    assert_eq!(stat(&stats, "binlog-max-size"), "4096");
    let log = server.log_text();
    assert!(log.contains("-c flag was removed. binlog is always compacted."), "{log}");
    assert!(log.contains("-n flag was removed. binlog is always compacted."), "{log}");
}

#[test]
fn dash_u_drops_to_the_user_and_its_group_only() {
    // Needs root to change users; CI and the development machines run as
    // root. Elsewhere there is nothing to drop to, and the test says so.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    if !status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")) {
        eprintln!("skipped: not running as root");
        return;
    }
    let server = Server::start("epoll", &["-u", "nobody"]);
    // The server answers after dropping privileges...
    assert_eq!(server.connect().ask(b"list-tube-used\r\n", 1), "USING default\r\n");
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.split_whitespace().collect::<Vec<_>>()).unwrap()
    };
    // ...as nobody (65534 on Debian), with no supplementary group but its own.
    assert_eq!(field("Uid:"), vec!["65534"; 4]);
    assert_eq!(field("Gid:"), vec!["65534"; 4]);
    assert_eq!(field("Groups:"), vec!["65534"]);
}
