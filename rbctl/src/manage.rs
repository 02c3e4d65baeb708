//! pause, clear and move: operations on a tube's jobs.
//!
//! clear uses runnerbean's `clear-tube` when the server has it. The beanstalkd protocol has no
//! "delete all" or "move", so on other servers clear, and move everywhere, work one job at a
//! time: peek the next job of a state, then act on its id. Other clients keep working meanwhile, so a
//! peeked job may be reserved (or deleted) before rbctl gets to it; such a job is skipped and
//! the next one peeked. Both stop after the number of jobs the tube had when they started, so
//! a producer that keeps putting cannot keep them running for ever.

use clap::Args;
use runnerbean_client::{Client, Error, Job, JobId, JobState, PutOptions};

use crate::out::{self, Progress};
use crate::{Failure, about, connect, exit, tube_name};

/// `rbctl pause`.
#[derive(Args, Debug)]
pub struct PauseArgs {
    /// The tube.
    tube: String,
    /// Seconds to pause for (0 ends a pause).
    seconds: u32,
}

/// `rbctl clear`.
#[derive(Args, Debug)]
pub struct ClearArgs {
    /// The tube.
    tube: String,
    /// Delete the ready jobs.
    #[arg(long)]
    ready: bool,
    /// Delete the delayed jobs.
    #[arg(long)]
    delayed: bool,
    /// Delete the buried jobs.
    #[arg(long)]
    buried: bool,
    /// Do not ask for confirmation (rbctl asks only when stdin is a terminal).
    #[arg(short, long)]
    yes: bool,
}

/// `rbctl move`.
#[derive(Args, Debug)]
pub struct MoveArgs {
    /// The tube the jobs are in.
    from: String,
    /// The tube they go to.
    to: String,
    /// Move the ready jobs (without --ready or --buried: both).
    #[arg(long)]
    ready: bool,
    /// Move the buried jobs.
    #[arg(long)]
    buried: bool,
}

/// Consecutive jobs that vanish between peek and action before clear or move give up: other
/// clients are taking the tube's jobs as fast as rbctl finds them, and it cannot finish.
const VANISHED_IN_A_ROW_MAX: u32 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Ready,
    Delayed,
    Buried,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::Delayed => "delayed",
            State::Buried => "buried",
        }
    }

    fn job_state(self) -> JobState {
        match self {
            State::Ready => JobState::Ready,
            State::Delayed => JobState::Delayed,
            State::Buried => JobState::Buried,
        }
    }

    async fn peek(self, client: &Client) -> Result<Job, Error> {
        match self {
            State::Ready => client.peek_ready().await,
            State::Delayed => client.peek_delayed().await,
            State::Buried => client.peek_buried().await,
        }
    }
}

pub async fn pause(addr: &str, args: PauseArgs) -> Result<(), Failure> {
    let client = connect(addr).await?;
    client.pause_tube(&args.tube, args.seconds).await.map_err(|e| about(&tube_name(&args.tube), e))?;
    if args.seconds == 0 {
        out::line(&format!("{} is no longer paused", tube_name(&args.tube)))
    } else {
        out::line(&format!("paused {} for {} s", tube_name(&args.tube), args.seconds))
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

pub async fn clear(addr: &str, args: ClearArgs) -> Result<(), Failure> {
    let mut states = Vec::new();
    for (chosen, state) in [(args.ready, State::Ready), (args.delayed, State::Delayed), (args.buried, State::Buried)] {
        if chosen {
            states.push(state);
        }
    }
    if states.is_empty() {
        states = vec![State::Ready, State::Delayed, State::Buried];
    }
    let client = connect(addr).await?;
    let tube = &args.tube;
    let stats = client.stats_tube(tube).await.map_err(|e| about(&tube_name(tube), e))?;
    let count = |state| match state {
        State::Ready => stats.current_jobs_ready,
        State::Delayed => stats.current_jobs_delayed,
        State::Buried => stats.current_jobs_buried,
    };
    let total: u64 = states.iter().map(|&s| count(s)).sum();
    let names: Vec<&str> = states.iter().map(|s| s.name()).collect();
    if total == 0 {
        return out::line(&format!("no {} jobs in {}", names.join(" or "), tube_name(tube)));
    }
    if !args.yes && out::stdin_is_terminal() {
        let question = format!("delete {total} job{} ({}) from {}?", plural(total), names.join(", "), tube_name(tube));
        if !out::confirm(&question)? {
            return Err(Failure::new(exit::CANCELLED, "nothing deleted"));
        }
    }
    // runnerbean deletes them all in one command; other servers answer UNKNOWN_COMMAND, and
    // rbctl deletes them one by one instead, with a progress bar.
    let job_states: Vec<JobState> = states.iter().map(|s| s.job_state()).collect();
    match client.clear_tube(tube, &job_states).await {
        Ok(deleted) => {
            return out::line(&format!("deleted {deleted} job{} from {}", plural(deleted), tube_name(tube)));
        }
        Err(Error::UnknownCommand) => {}
        Err(e) => return Err(about(&tube_name(tube), e)),
    }
    client.use_tube(tube).await.map_err(|e| about(&tube_name(tube), e))?;
    let mut progress = Progress::new("deleted", total);
    let mut deleted = 0;
    for state in states {
        let mut left = count(state);
        let mut vanished = 0;
        while left > 0 {
            let job = match state.peek(&client).await {
                Ok(job) => job,
                Err(Error::NotFound) => break,
                Err(e) => return Err(about(&tube_name(tube), e)),
            };
            match client.delete(job.id).await {
                Ok(()) => {
                    deleted += 1;
                    left -= 1;
                    vanished = 0;
                    progress.update(deleted);
                }
                // A worker reserved it between the peek and the delete.
                Err(Error::NotFound) => {
                    vanished += 1;
                    if vanished == VANISHED_IN_A_ROW_MAX {
                        break;
                    }
                }
                Err(e) => return Err(about(&format!("job {}", job.id), e)),
            }
        }
    }
    progress.finish();
    out::line(&format!("deleted {deleted} job{} from {}", plural(deleted), tube_name(tube)))
}

pub async fn move_jobs(addr: &str, args: MoveArgs) -> Result<(), Failure> {
    if args.from == args.to {
        return Err(Failure::new(exit::USAGE, "the two tubes are the same"));
    }
    let states = match (args.ready, args.buried) {
        (true, false) => vec![State::Ready],
        (false, true) => vec![State::Buried],
        _ => vec![State::Ready, State::Buried],
    };
    // One connection peeks and deletes in the source tube, the other puts into the target.
    let source = connect(addr).await?;
    let target = connect(addr).await?;
    let stats = source.stats_tube(&args.from).await.map_err(|e| about(&tube_name(&args.from), e))?;
    source.use_tube(&args.from).await.map_err(|e| about(&tube_name(&args.from), e))?;
    target.use_tube(&args.to).await.map_err(|e| about(&tube_name(&args.to), e))?;
    let total = stats.current_jobs_ready * u64::from(states.contains(&State::Ready))
        + stats.current_jobs_buried * u64::from(states.contains(&State::Buried));
    let mut progress = Progress::new("moved", total);
    let mut moved = 0;
    for state in states {
        let mut left = if state == State::Ready { stats.current_jobs_ready } else { stats.current_jobs_buried };
        let mut vanished = 0;
        while left > 0 {
            let peeked = match state.peek(&source).await {
                Ok(job) => job,
                Err(Error::NotFound) => break,
                Err(e) => return Err(about(&tube_name(&args.from), e)),
            };
            // Reserving the job first keeps workers from taking it while it moves.
            match source.reserve_job(peeked.id).await {
                Ok(_) => vanished = 0,
                Err(Error::NotFound) => {
                    vanished += 1;
                    if vanished == VANISHED_IN_A_ROW_MAX {
                        break;
                    }
                    continue;
                }
                Err(e) => return Err(about(&format!("job {}", peeked.id), e)),
            }
            move_one(&source, &target, &peeked, state).await?;
            moved += 1;
            left -= 1;
            progress.update(moved);
        }
    }
    progress.finish();
    out::line(&format!("moved {moved} job{} from {} to {}", plural(moved), tube_name(&args.from), tube_name(&args.to)))
}

/// Puts a copy of a job that `source` holds reserved into the target tube, then deletes the
/// original. If the put fails, the original goes back to the state it was in.
async fn move_one(source: &Client, target: &Client, job: &Job, state: State) -> Result<(), Failure> {
    let what = format!("job {}", job.id);
    let stats = source.stats_job(job.id).await.map_err(|e| about(&what, e))?;
    let ttr = u32::try_from(stats.ttr).unwrap_or(u32::MAX);
    let options = PutOptions { pri: stats.pri, delay: 0, ttr };
    if let Err(e) = target.put(&job.body, options).await {
        give_back(source, job.id, stats.pri, state).await;
        return Err(about(&what, e));
    }
    source.delete(job.id).await.map_err(|e| about(&what, e))
}

/// Returns a job rbctl reserved to the state it was found in.
async fn give_back(source: &Client, id: JobId, pri: u32, state: State) {
    let _ = match state {
        State::Buried => source.bury(id, pri).await,
        _ => source.release(id, pri, 0).await,
    };
}
