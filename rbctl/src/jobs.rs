//! The job commands: put, reserve, peek, jobs, delete, bury, kick, touch, release.
//!
//! beanstalkd lets only the connection that reserved a job bury, release or touch it, and
//! rbctl's connection lives for one command. So bury, release and touch first take the job
//! with `reserve-job` (which works on ready, delayed and buried jobs in any tube) and then act
//! on it; a job that another client holds is reported as not found, as the server reports it.

use std::collections::VecDeque;
use std::io::Read;
use std::path::PathBuf;

use clap::{ArgGroup, Args};
use runnerbean_client::{
    COMMANDS_IN_FLIGHT_MAX, Client, DEFAULT_PRI, DEFAULT_TTR_SECS, Error, JobId, JobState, PutOptions,
};

use crate::out::{self, Progress};
use crate::{Failure, TubeArg, about, connect, exit, tube_name};

/// `rbctl put`.
#[derive(Args, Debug)]
pub struct PutArgs {
    /// The body (without it, the body is read from --file or stdin).
    #[arg(conflicts_with = "file")]
    body: Option<String>,
    /// Read the body from this file.
    #[arg(short, long)]
    file: Option<PathBuf>,
    #[command(flatten)]
    tube: TubeArg,
    /// Priority: lower is more urgent; below 1024 is urgent.
    #[arg(short, long, default_value_t = DEFAULT_PRI)]
    pri: u32,
    /// Seconds before the job becomes ready.
    #[arg(short, long, default_value_t = 0)]
    delay: u32,
    /// Seconds a worker may hold the job.
    #[arg(long, default_value_t = DEFAULT_TTR_SECS)]
    ttr: u32,
    /// Put one job per line of the input (without its line end), pipelined; prints how many
    /// were put.
    #[arg(long)]
    lines: bool,
    /// Put nothing, and exit with status 6, unless some connection watches the tube (a worker,
    /// busy or idle: `current-watching` of `stats-tube`, not counting rbctl's own).
    #[arg(long)]
    require_workers: bool,
}

/// `rbctl reserve`.
#[derive(Args, Debug)]
pub struct ReserveArgs {
    /// Tubes to reserve from (repeatable; default: the default tube).
    #[arg(short, long = "tube")]
    tubes: Vec<String>,
    /// Give up after this many seconds (exit code 1); without it, wait as long as it takes.
    #[arg(long)]
    timeout: Option<u32>,
    /// Delete the job once printed.
    #[arg(long)]
    delete: bool,
}

/// `rbctl peek`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("which").required(true).args(["id", "ready", "delayed", "buried"])))]
pub struct PeekArgs {
    /// The job's id.
    id: Option<u64>,
    /// The ready job of the tube that would be reserved next.
    #[arg(long)]
    ready: bool,
    /// The delayed job of the tube that becomes ready first.
    #[arg(long)]
    delayed: bool,
    /// The oldest buried job of the tube.
    #[arg(long)]
    buried: bool,
    #[command(flatten)]
    tube: TubeArg,
}

/// `rbctl jobs`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("state").args(["delayed", "buried"])))]
pub struct JobsArgs {
    /// The tube.
    tube: String,
    /// The delayed jobs, the one whose delay ends first first (default: the ready jobs, in the
    /// order reserves take them).
    #[arg(long)]
    delayed: bool,
    /// The buried jobs, in the order kicks take them.
    #[arg(long)]
    buried: bool,
    /// Start after this job (its place in the order, not its id's size).
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// Print at most this many ids (default: all of them).
    #[arg(short = 'n', long)]
    count: Option<u64>,
}

/// Ids `jobs` asks the server for at a time: a reply of 1000 ids is about 10 KB, few round
/// trips for a large tube. A server that sends fewer per page is asked again until it sends
/// none.
const LIST_PAGE_IDS: u32 = 1000;

/// One job id.
#[derive(Args, Debug)]
pub struct IdArgs {
    /// The job's id.
    id: u64,
}

/// One or more job ids.
#[derive(Args, Debug)]
pub struct IdsArgs {
    /// The jobs' ids.
    #[arg(required = true)]
    ids: Vec<u64>,
}

/// `rbctl bury`.
#[derive(Args, Debug)]
pub struct BuryArgs {
    /// The job's id.
    id: u64,
    /// New priority (default: the job's own).
    #[arg(short, long)]
    pri: Option<u32>,
}

/// `rbctl kick`.
#[derive(Args, Debug)]
pub struct KickArgs {
    /// How many jobs to kick at most.
    #[arg(default_value_t = 1, conflicts_with = "job")]
    count: u32,
    #[command(flatten)]
    tube: TubeArg,
    /// Kick this one job (buried or delayed, in any tube) instead.
    #[arg(long)]
    job: Option<u64>,
}

/// `rbctl release`.
#[derive(Args, Debug)]
pub struct ReleaseArgs {
    /// The job's id.
    id: u64,
    /// New priority (default: the job's own).
    #[arg(short, long)]
    pri: Option<u32>,
    /// Seconds before it is ready again.
    #[arg(short, long, default_value_t = 0)]
    delay: u32,
}

fn job_name(id: u64) -> String {
    format!("job {id}")
}

/// Uses the tube unless it is the default one (every connection starts there).
async fn use_tube(client: &Client, tube: &str) -> Result<(), Failure> {
    if tube != "default" {
        client.use_tube(tube).await.map_err(|e| about(&tube_name(tube), e))?;
    }
    Ok(())
}

pub async fn put(addr: &str, args: PutArgs) -> Result<(), Failure> {
    let input = match (&args.body, &args.file) {
        (Some(body), _) => body.clone().into_bytes(),
        (None, Some(path)) => std::fs::read(path).map_err(|e| Failure::local(&path.display().to_string(), e))?,
        (None, None) => {
            let mut input = Vec::new();
            std::io::stdin().lock().read_to_end(&mut input).map_err(|e| Failure::local("stdin", e))?;
            input
        }
    };
    let client = connect(addr).await?;
    if args.require_workers && !client.has_workers(&args.tube.tube).await.map_err(Failure::from)? {
        return Err(Failure::new(
            exit::NO_WORKERS,
            format!("no worker watches {}; nothing was put", tube_name(&args.tube.tube)),
        ));
    }
    use_tube(&client, &args.tube.tube).await?;
    let options = PutOptions { pri: args.pri, delay: args.delay, ttr: args.ttr };
    if !args.lines {
        let id = client.put(&input, options).await.map_err(Failure::from)?;
        return out::line(&id.to_string());
    }
    let lines = split_lines(&input);
    let mut progress = Progress::new("put", lines.len() as u64);
    // Up to the client's in-flight limit of puts are pipelined; each task owns its body.
    let mut in_flight = VecDeque::new();
    let mut done = 0u64;
    for line in lines {
        if in_flight.len() == COMMANDS_IN_FLIGHT_MAX {
            finish_put(&mut in_flight, &mut done).await?;
            progress.update(done);
        }
        let client = client.clone();
        let body = line.to_vec();
        in_flight.push_back(tokio::spawn(async move { client.put(&body, options).await }));
    }
    while !in_flight.is_empty() {
        finish_put(&mut in_flight, &mut done).await?;
        progress.update(done);
    }
    progress.finish();
    out::line(&format!("put {done} job{} into {}", if done == 1 { "" } else { "s" }, tube_name(&args.tube.tube)))
}

async fn finish_put(
    in_flight: &mut VecDeque<tokio::task::JoinHandle<Result<JobId, Error>>>,
    done: &mut u64,
) -> Result<(), Failure> {
    if let Some(task) = in_flight.pop_front() {
        let result = task.await.map_err(|_| Failure::new(exit::BUG, "a put task failed"))?;
        result.map_err(|e| about(&format!("line {}", *done + 1), e))?;
        *done += 1;
    }
    Ok(())
}

/// The lines of the input without their line ends (`\n` or `\r\n`); a last line without one
/// counts, an empty input has none.
fn split_lines(input: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
    if input.is_empty() || input.ends_with(b"\n") {
        lines.pop();
    }
    lines.into_iter().map(|line| line.strip_suffix(b"\r").unwrap_or(line)).collect()
}

pub async fn reserve(addr: &str, args: ReserveArgs) -> Result<(), Failure> {
    let client = connect(addr).await?;
    watch_only(&client, &args.tubes).await?;
    let job = match args.timeout {
        Some(seconds) => client.reserve_with_timeout(seconds).await,
        None => client.reserve().await,
    };
    let job = job.map_err(|e| match e {
        Error::TimedOut => Failure::new(exit::REFUSED, format!("no job within {} s", args.timeout.unwrap_or(0))),
        e => about("reserve", e),
    })?;
    out::job(job.id, &job.body)?;
    if args.delete {
        client.delete(job.id).await.map_err(|e| about(&job_name(job.id.0), e))?;
    }
    Ok(())
}

/// Watches exactly these tubes (none given: the default tube only).
pub async fn watch_only(client: &Client, tubes: &[String]) -> Result<(), Failure> {
    for tube in tubes {
        client.watch(tube).await.map_err(|e| about(&tube_name(tube), e))?;
    }
    if !tubes.is_empty() && !tubes.iter().any(|t| t == "default") {
        client.ignore("default").await.map_err(|e| about(&tube_name("default"), e))?;
    }
    Ok(())
}

pub async fn peek(addr: &str, args: PeekArgs) -> Result<(), Failure> {
    let client = connect(addr).await?;
    let tube = &args.tube.tube;
    let (job, what) = match args.id {
        Some(id) => (client.peek(JobId(id)).await, job_name(id)),
        None => {
            use_tube(&client, tube).await?;
            let (job, state) = if args.ready {
                (client.peek_ready().await, "ready")
            } else if args.delayed {
                (client.peek_delayed().await, "delayed")
            } else {
                (client.peek_buried().await, "buried")
            };
            (job, format!("{state} job in {}", tube_name(tube)))
        }
    };
    let job = job.map_err(|e| match e {
        Error::NotFound if args.id.is_none() => Failure::new(exit::REFUSED, format!("no {what}")),
        e => about(&what, e),
    })?;
    out::job(job.id, &job.body)
}

pub async fn jobs(addr: &str, args: JobsArgs) -> Result<(), Failure> {
    let state = if args.delayed {
        JobState::Delayed
    } else if args.buried {
        JobState::Buried
    } else {
        JobState::Ready
    };
    let client = connect(addr).await?;
    let mut left = args.count.unwrap_or(u64::MAX);
    let mut after = JobId(args.after);
    while left > 0 {
        let page = u32::try_from(left).unwrap_or(LIST_PAGE_IDS).min(LIST_PAGE_IDS);
        let list = client
            .list_jobs_or_peek(&args.tube, state, after, page)
            .await
            .map_err(|e| about(&tube_name(&args.tube), e))?;
        let Some(&last) = list.ids.last() else { break };
        let mut text = String::new();
        for id in &list.ids {
            text.push_str(&format!("{id}\n"));
        }
        out::write(text.as_bytes())?;
        left = left.saturating_sub(list.ids.len() as u64);
        if list.by_peeking {
            // Say so when the peek hid some: the state has more jobs than the one shown.
            let stats = client.stats_tube(&args.tube).await.map_err(|e| about(&tube_name(&args.tube), e))?;
            let count = match state {
                JobState::Ready => stats.current_jobs_ready,
                JobState::Delayed => stats.current_jobs_delayed,
                _ => stats.current_jobs_buried,
            };
            if left > 0 && count > 1 {
                eprintln!(
                    "rbctl: the server has no list-jobs: only the first of {count} {} jobs can be seen",
                    state.as_str()
                );
            }
            break;
        }
        after = last;
    }
    Ok(())
}

pub async fn delete(addr: &str, args: IdsArgs) -> Result<(), Failure> {
    let client = connect(addr).await?;
    // All deletes are pipelined; each reports on its own line.
    let tasks: Vec<_> = args
        .ids
        .iter()
        .map(|&id| {
            let client = client.clone();
            tokio::spawn(async move { (id, client.delete(JobId(id)).await) })
        })
        .collect();
    let mut first_failure = None;
    for task in tasks {
        let (id, result) = task.await.map_err(|_| Failure::new(exit::BUG, "a delete task failed"))?;
        match result {
            Ok(()) => out::line(&format!("deleted {}", job_name(id)))?,
            Err(e) => {
                let failure = about(&job_name(id), e);
                if failure.code == exit::REFUSED {
                    eprintln!("rbctl: {}", failure.message);
                    first_failure.get_or_insert(failure);
                } else {
                    return Err(failure);
                }
            }
        }
    }
    // The refusals were printed as they came; the exit code says there were some.
    match first_failure {
        Some(failure) => Err(Failure::new(failure.code, "")),
        None => Ok(()),
    }
}

/// Reserves a job by id for bury, release or touch, and returns its priority.
async fn take(client: &Client, id: u64) -> Result<u32, Failure> {
    let not_held = |e| match e {
        Error::NotFound => {
            Failure::new(exit::REFUSED, format!("{} not found (or reserved by another client)", job_name(id)))
        }
        e => about(&job_name(id), e),
    };
    client.reserve_job(JobId(id)).await.map_err(not_held)?;
    let stats = client.stats_job(JobId(id)).await.map_err(|e| about(&job_name(id), e))?;
    Ok(stats.pri)
}

pub async fn bury(addr: &str, args: BuryArgs) -> Result<(), Failure> {
    let client = connect(addr).await?;
    let pri = take(&client, args.id).await?;
    client.bury(JobId(args.id), args.pri.unwrap_or(pri)).await.map_err(|e| about(&job_name(args.id), e))?;
    out::line(&format!("buried {}", job_name(args.id)))
}

pub async fn kick(addr: &str, args: KickArgs) -> Result<(), Failure> {
    let client = connect(addr).await?;
    if let Some(id) = args.job {
        client.kick_job(JobId(id)).await.map_err(|e| match e {
            Error::NotFound => {
                Failure::new(exit::REFUSED, format!("{} not found (or not buried or delayed)", job_name(id)))
            }
            e => about(&job_name(id), e),
        })?;
        return out::line(&format!("kicked {}", job_name(id)));
    }
    let tube = &args.tube.tube;
    use_tube(&client, tube).await?;
    let kicked = client.kick(args.count).await.map_err(|e| about(&tube_name(tube), e))?;
    out::line(&format!("kicked {kicked} job{} in {}", if kicked == 1 { "" } else { "s" }, tube_name(tube)))
}

pub async fn touch(addr: &str, args: IdArgs) -> Result<(), Failure> {
    let client = connect(addr).await?;
    let pri = take(&client, args.id).await?;
    let id = JobId(args.id);
    client.touch(id).await.map_err(|e| about(&job_name(args.id), e))?;
    client.release(id, pri, 0).await.map_err(|e| about(&job_name(args.id), e))?;
    out::line(&format!("touched {}", job_name(args.id)))
}

pub async fn release(addr: &str, args: ReleaseArgs) -> Result<(), Failure> {
    let client = connect(addr).await?;
    let pri = take(&client, args.id).await?;
    client
        .release(JobId(args.id), args.pri.unwrap_or(pri), args.delay)
        .await
        .map_err(|e| about(&job_name(args.id), e))?;
    out::line(&format!("released {}", job_name(args.id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_without_their_ends() {
        assert_eq!(split_lines(b"a\nb\r\n\nc"), [&b"a"[..], b"b", b"", b"c"]);
        assert_eq!(split_lines(b"a\n"), [&b"a"[..]]);
        assert!(split_lines(b"").is_empty());
        assert_eq!(split_lines(b"\n"), [&b""[..]]);
    }
}
