//! `runnerbean-worker exec`: each job is a process (see [`crate::body`] for the formats).
//!
//! The process runs in a process group of its own, with its output read line by line into
//! the log (prefixed with the job id and the stream), its standard input fed from the job or
//! empty, and the worker's environment with the job's changes. Exit status 0 deletes the job;
//! any other exit, a signal, a timeout or a failure to start counts as a failed attempt.
//! When it times out, or the worker is stopping, the whole group gets SIGTERM, and SIGKILL
//! [`STOP_KILL_AFTER_MS`] later if it is still there.
//!
//! What this never does: kill processes that the job left running in the background after
//! its own process exited (they may be meant to outlive it), or wait for their output.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::body::{self, Format, Program, Spec};
use crate::log;
use crate::runner::{Handler, Job, Outcome};

/// The shell for command lines.
const SHELL: &str = "/bin/sh";

/// How long a process group has between SIGTERM and SIGKILL, when it times out or the worker
/// stops: backq's (Symfony's `stop(2)`) two seconds, enough to flush and exit cleanly.
pub const STOP_KILL_AFTER_MS: u64 = 2000;

/// How long output is still read after the process exited: a background process that keeps
/// the pipes open must not hold up the job, and a second is plenty for the pipes' last bytes.
const OUTPUT_DRAIN_MS: u64 = 1000;

/// The longest line of a process's output written to the log as one line; longer ones are
/// split. It bounds the memory a process that never writes a newline can make the worker use.
const LOG_LINE_BYTES_MAX: usize = 4096;

/// How much of a command is shown in the log when it starts.
const COMMAND_SHOWN_CHARS_MAX: usize = 200;

/// The `exec` handler.
pub struct Exec {
    /// `--timeout`: the limit for jobs that set none.
    pub timeout: Option<Duration>,
}

impl Handler for Exec {
    async fn handle(&self, job: &Job) -> Outcome {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| i64::try_from(since.as_secs()).unwrap_or(i64::MAX));
        match body::parse(&job.body, now) {
            Err(reason) => Outcome::Bury(reason),
            Ok((_, body::Job::Expired(until))) => {
                Outcome::Delete(format!("backq deadline {until} has passed; not run"))
            }
            Ok((format, body::Job::Run(spec))) => run(job, format, spec, self.timeout).await,
        }
    }
}

/// How the process ended.
enum Ending {
    Exited(std::io::Result<std::process::ExitStatus>),
    TimedOut(Duration),
    Stopped,
}

async fn run(job: &Job, format: Format, spec: Spec, default_timeout: Option<Duration>) -> Outcome {
    let id = job.id;
    let shown = show(&spec.program);
    let mut command = match &spec.program {
        Program::Argv(argv) => {
            let mut command = Command::new(&argv[0]);
            command.args(&argv[1..]);
            command
        }
        Program::Shell(line) => {
            let mut command = Command::new(SHELL);
            command.arg("-c").arg(line);
            command
        }
    };
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    for (name, value) in &spec.env {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    let stdin = if spec.stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() };
    command.stdin(stdin).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    // A group of its own, so that a timeout or a stop reaches the processes it starts too
    // (a shell's children), and so that a ^C at the worker's terminal reaches only the worker.
    command.process_group(0);
    // Only if this future is dropped unfinished, which the runner never does.
    command.kill_on_drop(true);
    let timeout = spec.timeout.or(if spec.unlimited { None } else { default_timeout });
    let started = Instant::now();
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return Outcome::Retry(format!("cannot start {shown}: {}", describe_io(&e))),
    };
    let pid = child.id().and_then(|pid| i32::try_from(pid).ok());
    let kind = match format {
        Format::Json => "JSON",
        Format::Backq => "backq",
        Format::Text => "text",
    };
    log::info(&format!("job {id}: attempt {}: running {shown} ({kind} job, pid {})", job.attempt, pid.unwrap_or(0)));

    let feeder = match (spec.stdin, child.stdin.take()) {
        (Some(input), Some(mut pipe)) => Some(tokio::spawn(async move {
            // A process that exits without reading its input closes the pipe: not an error.
            let _ = pipe.write_all(&input).await;
        })),
        _ => None,
    };
    let mut readers: Vec<_> = [
        child.stdout.take().map(|pipe| tokio::spawn(pump(pipe, id.0, "stdout"))),
        child.stderr.take().map(|pipe| tokio::spawn(pump(pipe, id.0, "stderr"))),
    ]
    .into_iter()
    .flatten()
    .collect();

    let ending = tokio::select! {
        status = child.wait() => Ending::Exited(status),
        () = sleep(timeout) => Ending::TimedOut(timeout.unwrap_or_default()),
        () = job.life.stopping() => Ending::Stopped,
    };
    let ending = match ending {
        Ending::Exited(status) => Ending::Exited(status),
        other => {
            stop(&mut child, pid).await;
            other
        }
    };
    let took = started.elapsed().as_secs_f64();
    if let Some(feeder) = feeder {
        feeder.abort();
    }
    let drained = tokio::time::timeout(Duration::from_millis(OUTPUT_DRAIN_MS), async {
        for reader in readers.iter_mut() {
            let _ = reader.await;
        }
    })
    .await;
    if drained.is_err() {
        for reader in &readers {
            reader.abort();
        }
        log::info(&format!("job {id}: a background process keeps its output open; the rest is not logged"));
    }
    match ending {
        Ending::Exited(Ok(status)) if status.success() => {
            Outcome::Delete(format!("exited with status 0 after {took:.2}s"))
        }
        Ending::Exited(Ok(status)) => match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
            (Some(code), _) => Outcome::Retry(format!("exited with status {code} after {took:.2}s")),
            (None, Some(signal)) => Outcome::Retry(format!("killed by signal {signal} after {took:.2}s")),
            (None, None) => Outcome::Retry(format!("ended after {took:.2}s ({status})")),
        },
        Ending::Exited(Err(e)) => Outcome::Retry(format!("cannot wait for the process: {}", describe_io(&e))),
        Ending::TimedOut(limit) => Outcome::Retry(format!("timed out after {}s and was stopped", limit.as_secs_f64())),
        Ending::Stopped => Outcome::Interrupted,
    }
}

/// Stops the process group: SIGTERM, then SIGKILL if the process is still there after
/// [`STOP_KILL_AFTER_MS`]. Waits for the process, so it is reaped.
async fn stop(child: &mut Child, pid: Option<i32>) {
    let Some(pid) = pid else { return };
    // The group's leader is not reaped yet (only `wait` below reaps it), so the group id
    // cannot have been reused.
    signal_group(pid, libc::SIGTERM);
    if tokio::time::timeout(Duration::from_millis(STOP_KILL_AFTER_MS), child.wait()).await.is_err() {
        signal_group(pid, libc::SIGKILL);
        let _ = child.wait().await;
    }
}

fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals that process group; it has no memory
    // effects. A group that is already gone gives ESRCH, which is what we wanted anyway.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

async fn sleep(limit: Option<Duration>) {
    match limit {
        Some(limit) => tokio::time::sleep(limit).await,
        None => std::future::pending().await,
    }
}

/// Copies a process's output into the log, one log line per line of output.
async fn pump(mut pipe: impl tokio::io::AsyncRead + Unpin, id: u64, stream: &'static str) {
    let mut line: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 8192];
    let emit = |line: &[u8]| log::info(&format!("job {id} {stream}: {}", String::from_utf8_lossy(line)));
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &byte in &chunk[..n] {
            if byte == b'\n' {
                emit(line.strip_suffix(b"\r").unwrap_or(&line));
                line.clear();
            } else {
                line.push(byte);
                if line.len() == LOG_LINE_BYTES_MAX {
                    emit(&line);
                    line.clear();
                }
            }
        }
    }
    if !line.is_empty() {
        emit(&line);
    }
}

/// A command for the log: the shell line, or the arguments, shortened.
fn show(program: &Program) -> String {
    let text = match program {
        Program::Shell(line) => format!("sh -c {:?}", line.to_string_lossy()),
        Program::Argv(argv) => format!("{:?}", argv.iter().map(|arg| arg.to_string_lossy()).collect::<Vec<_>>()),
    };
    match text.char_indices().nth(COMMAND_SHOWN_CHARS_MAX) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text,
    }
}

/// An I/O error as one lower-case phrase without "(os error N)".
pub fn describe_io(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or_default();
    let mut chars = text.chars();
    chars.next().map(|first| first.to_lowercase().chain(chars).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_shown_short() {
        assert_eq!(show(&Program::Shell("echo hi".into())), "sh -c \"echo hi\"");
        assert_eq!(show(&Program::Argv(vec!["ls".into(), "-l".into()])), "[\"ls\", \"-l\"]");
        let long = show(&Program::Shell("x".repeat(500).into()));
        assert_eq!(long.chars().count(), COMMAND_SHOWN_CHARS_MAX + 3);
    }
}
