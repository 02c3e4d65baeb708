//! stats and tubes: the server's counters as aligned tables for people and JSON for scripts.
//!
//! JSON objects carry the server's own keys in the server's order, with numbers as JSON
//! numbers and `draining` as a JSON boolean; keys the client library does not know are
//! strings, as the server wrote them.

use std::time::{Duration, Instant};

use clap::Args;
use runnerbean_client::{Client, JobId, TubeStats, Value};
use serde_json::{Map, Number, Value as Json};

use crate::out;
use crate::{Failure, about, connect, exit, tube_name};

/// `rbctl stats`.
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// A tube's statistics instead of the server's.
    #[arg(long, conflicts_with = "job")]
    tube: Option<String>,
    /// A job's statistics instead of the server's.
    #[arg(long)]
    job: Option<u64>,
    /// Print one JSON object with the server's keys.
    #[arg(long)]
    json: bool,
}

/// `rbctl tubes`.
#[derive(Args, Debug)]
pub struct TubesArgs {
    /// Seconds between the two samples the rates come from (0: no rates, one sample).
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Print a JSON array: each tube's stats-tube keys, plus the rates.
    #[arg(long)]
    json: bool,
}

/// The longest sampling interval `tubes` accepts: rates over longer spans are what `top` is for.
const TUBES_INTERVAL_SECS_MAX: f64 = 3600.0;

pub async fn stats(addr: &str, args: StatsArgs) -> Result<(), Failure> {
    let client = connect(addr).await?;
    if let Some(tube) = &args.tube {
        let stats = client.stats_tube(tube).await.map_err(|e| about(&tube_name(tube), e))?;
        render(stats.fields(), args.json)
    } else if let Some(id) = args.job {
        let stats = client.stats_job(JobId(id)).await.map_err(|e| about(&format!("job {id}"), e))?;
        render(stats.fields(), args.json)
    } else {
        let stats = client.stats().await.map_err(|e| about("stats", e))?;
        render(stats.fields(), args.json)
    }
}

/// Prints stats fields as one JSON object, or as `key: value` lines with the values aligned.
fn render(fields: Vec<(&str, Value<'_>)>, as_json: bool) -> Result<(), Failure> {
    if as_json {
        return out::line(&Json::Object(json_object(fields.into_iter())).to_string());
    }
    let width = fields.iter().map(|(key, _)| key.len() + 1).max().unwrap_or(0);
    let mut table = String::new();
    for (key, value) in fields {
        table.push_str(&format!("{:width$} {}\n", format!("{key}:"), text(value)));
    }
    out::write(table.as_bytes())
}

/// A stats value as a table cell.
pub fn text(value: Value<'_>) -> String {
    match value {
        Value::Count(n) => n.to_string(),
        Value::Real(x) => format!("{x:.6}"),
        Value::Flag(b) => b.to_string(),
        Value::Text(t) => t.to_owned(),
    }
}

/// A stats value as JSON.
pub fn json(value: Value<'_>) -> Json {
    match value {
        Value::Count(n) => Json::Number(n.into()),
        Value::Real(x) => Number::from_f64(x).map_or(Json::Null, Json::Number),
        Value::Flag(b) => Json::Bool(b),
        Value::Text(t) => Json::String(t.to_owned()),
    }
}

/// Fields as a JSON object in their order.
pub fn json_object<'a>(fields: impl Iterator<Item = (&'a str, Value<'a>)>) -> Map<String, Json> {
    fields.map(|(key, value)| (key.to_owned(), json(value))).collect()
}

/// Every tube's stats, fetched pipelined. A tube that disappears between the list and its
/// stats (the last client stopped using it) is left out.
pub async fn all_tubes(client: &Client) -> Result<Vec<TubeStats>, Failure> {
    let names = client.list_tubes().await.map_err(|e| about("list-tubes", e))?;
    match stats_of(client, names).await {
        Ok(tubes) => Ok(tubes),
        Err(None) => Err(Failure::new(exit::BUG, "a stats-tube task failed")),
        Err(Some(e)) => Err(e.into()),
    }
}

/// The stats of the tubes named, fetched pipelined, in the order of the names; a tube gone
/// meanwhile is left out. `Err(None)`: a task of this process failed.
pub async fn stats_of(client: &Client, names: Vec<String>) -> Result<Vec<TubeStats>, Option<runnerbean_client::Error>> {
    let tasks: Vec<_> = names
        .into_iter()
        .map(|name| {
            let client = client.clone();
            tokio::spawn(async move { client.stats_tube(&name).await })
        })
        .collect();
    let mut tubes = Vec::new();
    for task in tasks {
        match task.await.map_err(|_| None)? {
            Ok(stats) => tubes.push(stats),
            Err(runnerbean_client::Error::NotFound) => {}
            Err(e) => return Err(Some(e)),
        }
    }
    Ok(tubes)
}

/// Per-second rates of a tube between two samples: (puts, deletes).
pub fn rates(before: Option<&TubeStats>, after: &TubeStats, elapsed: Duration) -> Option<(f64, f64)> {
    let before = before?;
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        return None;
    }
    let puts = after.total_jobs.saturating_sub(before.total_jobs) as f64 / seconds;
    let deletes = after.cmd_delete.saturating_sub(before.cmd_delete) as f64 / seconds;
    Some((puts, deletes))
}

pub async fn tubes(addr: &str, args: TubesArgs) -> Result<(), Failure> {
    if !(0.0..=TUBES_INTERVAL_SECS_MAX).contains(&args.interval) {
        return Err(Failure::new(
            exit::USAGE,
            format!("--interval must be between 0 and {TUBES_INTERVAL_SECS_MAX} seconds"),
        ));
    }
    let client = connect(addr).await?;
    let mut first = None;
    let mut started = Instant::now();
    if args.interval > 0.0 {
        first = Some(all_tubes(&client).await?);
        started = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(args.interval)).await;
    }
    let tubes = all_tubes(&client).await?;
    let elapsed = started.elapsed();
    let before = |name: &str| first.as_ref().and_then(|first| first.iter().find(|t| t.name == name));

    if args.json {
        let array: Vec<Json> = tubes
            .iter()
            .map(|tube| {
                let mut object = json_object(tube.fields().into_iter());
                if let Some((puts, deletes)) = rates(before(&tube.name), tube, elapsed) {
                    object.insert("puts-per-second".to_owned(), rate_json(puts));
                    object.insert("deletes-per-second".to_owned(), rate_json(deletes));
                }
                Json::Object(object)
            })
            .collect();
        return out::line(&Json::Array(array).to_string());
    }

    let mut rows = vec![
        ["TUBE", "READY", "RESERVED", "DELAYED", "BURIED", "WAITING", "PUT/S", "DELETE/S", "PAUSED"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for tube in &tubes {
        let rates = rates(before(&tube.name), tube, elapsed);
        rows.push(vec![
            tube.name.clone(),
            tube.current_jobs_ready.to_string(),
            tube.current_jobs_reserved.to_string(),
            tube.current_jobs_delayed.to_string(),
            tube.current_jobs_buried.to_string(),
            tube.current_waiting.to_string(),
            rates.map_or("-".to_owned(), |(puts, _)| format!("{puts:.1}")),
            rates.map_or("-".to_owned(), |(_, deletes)| format!("{deletes:.1}")),
            tube.pause_time_left.to_string(),
        ]);
    }
    out::write(out::table(&rows).as_bytes())
}

/// A rate rounded to a tenth, as JSON.
fn rate_json(rate: f64) -> Json {
    Number::from_f64((rate * 10.0).round() / 10.0).map_or(Json::Null, Json::Number)
}
