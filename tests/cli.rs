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
fn refuses_more_cores_than_it_takes() {
    let out = run(&["--cores", "65", "-l", "127.0.0.1", "-p", "0"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(text(&out.stderr).starts_with(&format!("{BIN}: invalid number of cores: 65 (at most 64)\n")));
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
    server.wait_for_log("maximum job size was set to 1073741824");
}

#[test]
fn removed_flags_warn_and_carry_on() {
    let server = Server::start("epoll", &["-c", "-n", "-s", "4096", "-f", "10", "-F"]);
    let stats = server.connect().ask(b"stats\r\n", 1);
    assert_eq!(stat(&stats, "binlog-max-size"), "4096");
    server.wait_for_log("-c flag was removed. binlog is always compacted.");
    server.wait_for_log("-n flag was removed. binlog is always compacted.");
}

#[test]
fn binlog_size_beyond_a_c_int_shows_as_given() {
    // beanstalkd 1.12 keeps -s in an int: it would show 1 here (COMPAT 13).
    let server = Server::start("epoll", &["-s", "4294967297"]);
    let stats = server.connect().ask(b"stats\r\n", 1);
    assert_eq!(stat(&stats, "binlog-max-size"), "4294967297");
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

/// Runs the server with io_uring_setup refused (EPERM), as Docker's default
/// seccomp profile does, by installing a seccomp filter in the child before
/// exec.
#[test]
fn falls_back_to_epoll_when_io_uring_is_refused() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;

    let mut command = Command::new(BIN);
    command.args(["-l", "127.0.0.1", "-p", "0", "-V"]).env_remove("RUNNERBEAN_IO");
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    // Safety: the hook only makes two prctl calls, which are async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            refuse_io_uring_setup();
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut port = 0u16;
    let mut line = String::new();
    while port == 0 {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "server exited");
        if let Some(rest) = line.trim_end().strip_prefix("bind ") {
            port = rest.rsplit(':').next().unwrap().parse().unwrap();
        }
    }
    let mut c = common::Client::connect(port);
    let stats = c.ask(b"stats\r\n", 1);
    assert_eq!(stat(&stats, "runnerbean-io"), "\"epoll\"");
    assert_eq!(c.ask(b"put 0 0 1 1\r\nx\r\nreserve\r\n", 2), "INSERTED 1\r\nRESERVED 1 1\r\nx\r\n");
    child.kill().unwrap();
    child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(err.lines().filter(|l| l.contains("io_uring unavailable")).count(), 1, "{err}");
    assert!(err.contains("Operation not permitted"), "{err}");

    // Insisting on io_uring where it is refused is an error, not a fallback.
    let mut command = Command::new(BIN);
    command.args(["-l", "127.0.0.1", "-p", "0", "--io", "uring"]);
    // Safety: as above.
    unsafe {
        command.pre_exec(|| {
            refuse_io_uring_setup();
            Ok(())
        });
    }
    let out = command.output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("cannot start the event loop"), "{}", text(&out.stderr));
}

/// Installs a seccomp filter: io_uring_setup fails with EPERM, everything
/// else is allowed.
fn refuse_io_uring_setup() {
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let nr = libc::SYS_io_uring_setup as u32;
    let program = [
        // Load the system call number (offset 0 of struct seccomp_data).
        libc::sock_filter { code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, jt: 0, jf: 0, k: 0 },
        libc::sock_filter { code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16, jt: 0, jf: 1, k: nr },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter { code: (libc::BPF_RET | libc::BPF_K) as u16, jt: 0, jf: 0, k: SECCOMP_RET_ALLOW },
    ];
    let fprog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr().cast_mut() };
    // Safety: plain prctl calls with a valid filter program.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &fprog as *const libc::sock_fprog);
    }
}

#[test]
fn takes_a_listening_socket_from_systemd() {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let fd = listener.as_raw_fd();
    let mut command = Command::new("sh");
    // LISTEN_PID must be the server's pid: the shell's, which exec keeps.
    command.arg("-c").arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" -l 0.0.0.0 -p 1234").arg(BIN);
    command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    // Safety: dup2 and fcntl are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec set.
            let ok = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
            if ok < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let mut c = common::Client::connect(port);
    c.send(b"put 0 0 1 2\r\nhi\r\n");
    assert_eq!(c.replies(1), b"INSERTED 1\r\n");
    c.stream.flush().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("inherited listen fd; ignoring option: -l 0.0.0.0"), "{err}");
    assert!(err.contains("inherited listen fd; ignoring option: -p 1234"), "{err}");
}
