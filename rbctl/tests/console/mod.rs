//! Starting `rbctl web` for the console's tests (the HTTP API's and the browser's).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const RBCTL: &str = env!("CARGO_BIN_EXE_rbctl");

/// Starts `rbctl web` on a free loopback port for these servers, with more flags, and
/// returns it with the URL its first line gives (no trailing `/`).
pub fn start(addrs: &[&str], flags: &[&str]) -> (Child, String) {
    let mut command = Command::new(RBCTL);
    for addr in addrs {
        command.arg("--addr").arg(addr);
    }
    let mut child = command
        .args(["web", "--listen", "127.0.0.1:0"])
        .args(flags)
        .env_remove("BEANSTALK_ADDR")
        .env_remove("RBCTL_WEB_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start rbctl web");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read the first line");
    let url = line.trim().rsplit(' ').next().expect("a URL").trim_end_matches('/').to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "first line: {line:?}");
    (child, url)
}
