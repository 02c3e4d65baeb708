//! tail: print a tube's jobs as they arrive.
//!
//! With `--delete` it is a worker that prints and deletes every job it reserves.
//!
//! Without it, jobs must go back unchanged, and beanstalkd has no way to wait for "a job I have
//! not seen": a released job is ready again at once and the next reserve would return it. So
//! tail polls the tube's counters (every [`POLL`]) and, when the number of jobs put or ready
//! has changed, sweeps: it reserves every ready job with `reserve-with-timeout 0`, prints the
//! ones it has not printed before (by id, in id order), and releases them all with their own
//! priority and no delay. Workers lose the swept jobs for the moment of a round trip. What a
//! sweep changes: each job's `reserves` and `releases` counters, and its place among jobs of
//! equal priority (ties are broken by id, so none). Delayed and buried jobs are printed when
//! they become ready.

use std::collections::HashSet;
use std::time::Duration;

use clap::Args;
use runnerbean_client::{Client, Error, Job};

use crate::jobs::watch_only;
use crate::out;
use crate::{Failure, about, connect, tube_name};

/// How often tail looks at the tube's counters for new jobs: often enough to feel live, while
/// costing the server one stats-tube command per tick.
const POLL: Duration = Duration::from_millis(200);

/// The most jobs one sweep holds at once; a tube with more ready jobs is swept in parts, so
/// rbctl never holds a large share of a busy tube.
const SWEEP_JOBS_MAX: usize = 1000;

/// `rbctl tail`.
#[derive(Args, Debug)]
pub struct TailArgs {
    /// The tube.
    tube: String,
    /// Consume the jobs: delete each one once printed.
    #[arg(long)]
    delete: bool,
    /// Stop after this many jobs.
    #[arg(short = 'n', long)]
    count: Option<u64>,
}

pub async fn tail(addr: &str, args: TailArgs) -> Result<(), Failure> {
    let client = connect(addr).await?;
    watch_only(&client, std::slice::from_ref(&args.tube)).await?;
    tokio::select! {
        result = follow(&client, &args) => result,
        // Ctrl-C is how tail is meant to stop; jobs it holds go back when the connection closes.
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

async fn follow(client: &Client, args: &TailArgs) -> Result<(), Failure> {
    let mut printed = 0u64;
    let done = |printed: u64| args.count.is_some_and(|count| printed >= count);
    if args.delete {
        while !done(printed) {
            let job = client.reserve().await.map_err(|e| about(&tube_name(&args.tube), e))?;
            print(&job)?;
            client.delete(job.id).await.map_err(|e| about(&format!("job {}", job.id), e))?;
            printed += 1;
        }
        return Ok(());
    }
    let mut seen = HashSet::new();
    let mut last = None;
    while !done(printed) {
        let stats = client.stats_tube(&args.tube).await.map_err(|e| about(&tube_name(&args.tube), e))?;
        let marker = (stats.total_jobs, stats.current_jobs_ready);
        if last == Some(marker) {
            tokio::time::sleep(POLL).await;
            continue;
        }
        last = Some(marker);
        let mut held = sweep(client, &args.tube).await?;
        held.sort_by_key(|job| job.id);
        for job in &held {
            if !done(printed) && seen.insert(job.id) {
                print(job)?;
                printed += 1;
            }
        }
        give_back(client, &held).await?;
    }
    Ok(())
}

/// Reserves every ready job of the watched tube, up to [`SWEEP_JOBS_MAX`].
async fn sweep(client: &Client, tube: &str) -> Result<Vec<Job>, Failure> {
    let mut held = Vec::new();
    while held.len() < SWEEP_JOBS_MAX {
        match client.reserve_with_timeout(0).await {
            Ok(job) => held.push(job),
            // No ready job left; or one we hold is about to time out, and giving them all back
            // now is the answer to that.
            Err(Error::TimedOut | Error::DeadlineSoon) => break,
            Err(e) => return Err(about(&tube_name(tube), e)),
        }
    }
    Ok(held)
}

/// Releases held jobs with their own priority, ready at once.
async fn give_back(client: &Client, held: &[Job]) -> Result<(), Failure> {
    for job in held {
        let what = format!("job {}", job.id);
        let stats = client.stats_job(job.id).await.map_err(|e| about(&what, e))?;
        client.release(job.id, stats.pri, 0).await.map_err(|e| about(&what, e))?;
    }
    Ok(())
}

/// A job's body and a newline, unless the body ends in one.
fn print(job: &Job) -> Result<(), Failure> {
    let mut bytes = job.body.clone();
    if !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    out::write(&bytes)
}
