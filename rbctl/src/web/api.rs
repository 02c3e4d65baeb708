//! The console's JSON API: what the page reads and the actions it takes, over the client
//! library.
//!
//! Stats come as objects with the server's own keys in the server's order (as `rbctl stats
//! --json` prints them), so whatever a server adds shows up. Job bodies come base64-encoded
//! (they are any bytes); the page shows them as text, JSON or hex.
//!
//! # Connections
//! Each server has one shared connection, opened on first use and opened again after it
//! fails, that carries everything that does not depend on the connection's used tube (stats,
//! peeks by id, deletes, kicks by id, pauses, `list-jobs`, `clear-tube`) and the library's
//! calls that set the tube and act in one go (`publish`, the peeking fallbacks). A kick of N
//! jobs and a move get a connection of their own: a kick needs `use`, and a move holds the
//! jobs it moves reserved, which the server gives back by itself if the console goes away
//! halfway.
//!
//! # Moves are not atomic
//! A job is moved by reserving it, putting a copy into the other tube and deleting the
//! original; no command moves a job. A console that stops between the put and the delete
//! leaves the job in both tubes; a worker never sees it in neither. The copy has a new id, the
//! original's priority, time-to-run and (for a delayed job) remaining delay, and arrives ready
//! or delayed: a buried job arrives ready.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use runnerbean_client::{Client, Error, JobId, JobState, Options, TubeStats, VANISHED_IN_A_ROW_MAX};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Shared;
use crate::report::json_object;

/// Jobs of one state shown at a time: a screenful to look into; more come a page at a time.
const JOBS_PAGE_MAX: u32 = 20;

/// The most bytes of a body the page is sent: enough for any document a person reads in a
/// browser (C beanstalkd's default max-job-size is 64 KiB); the rest is counted, not sent.
const BODY_SHOWN_BYTES_MAX: usize = 64 * 1024;

/// How long connecting to a server may take: the overview waits for it, so a server that is
/// down shows as down within this time rather than stalling the page.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The most tubes of one server the overview lists (those whose name matches the filter, in
/// name order): each costs a `stats-tube` every refresh, and a page of more rows than this is
/// not read by anyone. The filter finds the others.
const TUBES_SHOWN_MAX: usize = 500;

/// The largest request body: a put's JSON, whose job body a server limits to `max-job-size`
/// (64 KiB by default; runnerbean and C beanstalkd allow more with `-z`). 16 MiB covers a
/// generous `-z` while bounding what one request makes the console hold.
pub const REQUEST_BYTES_MAX: usize = 16 << 20;

/// One server the console shows.
pub struct Server {
    addr: String,
    shared: tokio::sync::Mutex<Option<Client>>,
}

impl Server {
    pub fn new(addr: &str) -> Server {
        Server { addr: addr.to_owned(), shared: tokio::sync::Mutex::new(None) }
    }

    /// The shared connection, opened (again) when there is none or it failed.
    async fn client(&self) -> Result<Client, ApiError> {
        let mut shared = self.shared.lock().await;
        if let Some(client) = shared.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let client = self.fresh().await?;
        *shared = Some(client.clone());
        Ok(client)
    }

    /// A connection of its own.
    async fn fresh(&self) -> Result<Client, ApiError> {
        Client::connect_with(&self.addr, Options::default().connect_timeout(CONNECT_TIMEOUT))
            .await
            .map_err(|e| ApiError::from_client(&self.addr, e))
    }
}

/// A failure as the page gets it: a status and `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    /// A client error: the server's refusals are the request's fault (404 for not found, 409
    /// for the others, 400 for what cannot be sent), a failed connection the server's (502).
    fn from_client(addr: &str, e: Error) -> ApiError {
        let status = match &e {
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::InvalidArgument(_) | Error::BadFormat | Error::JobTooBig => StatusCode::BAD_REQUEST,
            e if e.is_server_reply() => StatusCode::CONFLICT,
            _ => StatusCode::BAD_GATEWAY,
        };
        let message = if e.is_disconnect() { format!("server {addr}: {e}") } else { e.to_string() };
        ApiError::new(status, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

type Answer = Result<Json<Value>, ApiError>;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/overview", get(overview))
        .route("/api/servers/{server}/tubes/{tube}", get(tube))
        .route("/api/servers/{server}/tubes/{tube}/jobs", get(jobs))
        .route("/api/servers/{server}/tubes/{tube}/put", post(put))
        .route("/api/servers/{server}/tubes/{tube}/kick", post(kick))
        .route("/api/servers/{server}/tubes/{tube}/clear", post(clear))
        .route("/api/servers/{server}/tubes/{tube}/pause", post(pause))
        .route("/api/servers/{server}/tubes/{tube}/move", post(move_jobs))
        .route("/api/servers/{server}/jobs/{id}", get(job))
        .route("/api/servers/{server}/jobs/{id}/kick", post(kick_job))
        .route("/api/servers/{server}/jobs/{id}/delete", post(delete_job))
}

fn server(app: &Shared, index: usize) -> Result<&Server, ApiError> {
    app.servers.get(index).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no server {index}")))
}

#[derive(Deserialize)]
struct OverviewQuery {
    /// Only tubes whose name contains this, ignoring case.
    #[serde(default)]
    filter: String,
}

/// `GET /api/overview?filter=TEXT`: every server's stats and its tubes' (those whose name
/// contains the filter), for the main screen.
async fn overview(State(app): State<Shared>, Query(query): Query<OverviewQuery>) -> Json<Value> {
    let filter = query.filter.to_lowercase();
    let tasks: Vec<_> = (0..app.servers.len())
        .map(|index| {
            let (app, filter) = (app.clone(), filter.clone());
            tokio::spawn(async move { summary(&app.servers[index], index, &filter).await })
        })
        .collect();
    let mut servers = Vec::new();
    for (index, task) in tasks.into_iter().enumerate() {
        let summary = task.await.unwrap_or_else(
            |_| json!({ "index": index, "addr": app.servers[index].addr, "error": "the console failed to ask it" }),
        );
        servers.push(summary);
    }
    Json(json!({ "servers": servers, "login": app.token.is_some() }))
}

/// One server's part of the overview; a server that cannot be asked has an `error` instead.
async fn summary(server: &Server, index: usize, filter: &str) -> Value {
    let sample = async {
        let client = server.client().await?;
        let (stats, tubes) = tokio::join!(client.stats(), some_tubes(&client, filter));
        let stats = stats.map_err(|e| ApiError::from_client(&server.addr, e))?;
        let tubes = tubes.map_err(|e| ApiError::from_client(&server.addr, e))?;
        Ok::<_, ApiError>((stats, tubes))
    };
    match sample.await {
        Ok((stats, (tubes, not_shown))) => json!({
            "index": index,
            "addr": server.addr,
            "stats": json_object(stats.fields().into_iter()),
            "tubes": tubes.iter().map(|t| Value::Object(json_object(t.fields().into_iter()))).collect::<Vec<_>>(),
            "tubes-not-shown": not_shown,
        }),
        Err(e) => json!({ "index": index, "addr": server.addr, "error": e.message }),
    }
}

/// The stats of the tubes whose name contains `filter` (lower case), at most
/// [`TUBES_SHOWN_MAX`] of them in name order, pipelined, and how many more matched. A tube that
/// goes away between the list and its stats is left out.
async fn some_tubes(client: &Client, filter: &str) -> Result<(Vec<TubeStats>, usize), Error> {
    let mut names = client.list_tubes().await?;
    names.retain(|name| name.to_lowercase().contains(filter));
    names.sort();
    let not_shown = names.len().saturating_sub(TUBES_SHOWN_MAX);
    names.truncate(TUBES_SHOWN_MAX);
    let tubes = crate::report::stats_of(client, names)
        .await
        .map_err(|e| e.unwrap_or_else(|| Error::Protocol("a stats-tube task failed".to_owned())))?;
    Ok((tubes, not_shown))
}

const STATES: [JobState; 3] = [JobState::Ready, JobState::Delayed, JobState::Buried];

fn state_named(name: &str) -> Result<JobState, ApiError> {
    STATES
        .into_iter()
        .find(|s| s.as_str() == name)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, format!("{name:?} is not ready, delayed or buried")))
}

/// `GET /api/servers/S/tubes/T`: the tube's stats and the first page of each state's jobs.
async fn tube(State(app): State<Shared>, Path((index, tube)): Path<(usize, String)>) -> Answer {
    let server = server(&app, index)?;
    let client = server.client().await?;
    let stats = client.stats_tube(&tube).await.map_err(|e| ApiError::from_client(&server.addr, e))?;
    let mut states = serde_json::Map::new();
    for state in STATES {
        states.insert(state.as_str().to_owned(), page(server, &client, &tube, state, JobId(0)).await?);
    }
    Ok(Json(json!({ "server": server.addr, "stats": json_object(stats.fields().into_iter()), "states": states })))
}

#[derive(Deserialize)]
struct PageQuery {
    state: String,
    #[serde(default)]
    after: u64,
}

/// `GET /api/servers/S/tubes/T/jobs?state=ready&after=ID`: the next page of one state.
async fn jobs(
    State(app): State<Shared>,
    Path((index, tube)): Path<(usize, String)>,
    Query(query): Query<PageQuery>,
) -> Answer {
    let server = server(&app, index)?;
    let state = state_named(&query.state)?;
    let client = server.client().await?;
    Ok(Json(page(server, &client, &tube, state, JobId(query.after)).await?))
}

/// A page of a state's jobs: `{"jobs": [...], "more": bool, "by-peeking": bool}`.
async fn page(server: &Server, client: &Client, tube: &str, state: JobState, after: JobId) -> Result<Value, ApiError> {
    // One more than shown tells whether there is a next page.
    let list = client
        .list_jobs_or_peek(tube, state, after, JOBS_PAGE_MAX + 1)
        .await
        .map_err(|e| ApiError::from_client(&server.addr, e))?;
    let more = list.ids.len() > JOBS_PAGE_MAX as usize;
    let tasks: Vec<_> = list
        .ids
        .into_iter()
        .take(JOBS_PAGE_MAX as usize)
        .map(|id| {
            let client = client.clone();
            tokio::spawn(async move { describe(&client, id).await })
        })
        .collect();
    let mut jobs = Vec::new();
    for task in tasks {
        match task.await {
            Ok(Ok(job)) => jobs.push(job),
            // Taken or deleted since it was listed.
            Ok(Err(Error::NotFound)) => {}
            Ok(Err(e)) => return Err(ApiError::from_client(&server.addr, e)),
            Err(_) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "a job task failed")),
        }
    }
    Ok(json!({ "jobs": jobs, "more": more, "by-peeking": list.by_peeking }))
}

/// A job's stats-job keys, and its body (base64, at most [`BODY_SHOWN_BYTES_MAX`] bytes).
async fn describe(client: &Client, id: JobId) -> Result<Value, Error> {
    let (stats, job) = tokio::join!(client.stats_job(id), client.peek(id));
    let (stats, job) = (stats?, job?);
    let mut object = json_object(stats.fields().into_iter());
    let shown = &job.body[..job.body.len().min(BODY_SHOWN_BYTES_MAX)];
    object.insert("body".to_owned(), Value::String(base64::engine::general_purpose::STANDARD.encode(shown)));
    object.insert("body-bytes".to_owned(), Value::from(job.body.len()));
    object.insert("truncated".to_owned(), Value::Bool(shown.len() < job.body.len()));
    Ok(Value::Object(object))
}

/// `GET /api/servers/S/jobs/ID`: one job, whatever its tube.
async fn job(State(app): State<Shared>, Path((index, id)): Path<(usize, u64)>) -> Answer {
    let server = server(&app, index)?;
    let client = server.client().await?;
    Ok(Json(describe(&client, JobId(id)).await.map_err(|e| ApiError::from_client(&server.addr, e))?))
}

#[derive(Deserialize)]
struct PutRequest {
    body: String,
    #[serde(default = "default_pri")]
    pri: u32,
    #[serde(default)]
    delay: u32,
    #[serde(default = "default_ttr")]
    ttr: u32,
}

fn default_pri() -> u32 {
    runnerbean_client::DEFAULT_PRI
}

fn default_ttr() -> u32 {
    runnerbean_client::DEFAULT_TTR_SECS
}

/// `POST .../tubes/T/put {"body", "pri", "delay", "ttr"}` → `{"id"}`.
async fn put(
    State(app): State<Shared>,
    Path((index, tube)): Path<(usize, String)>,
    Json(request): Json<PutRequest>,
) -> Answer {
    let server = server(&app, index)?;
    let client = server.client().await?;
    let id = client
        .publish(&tube, request.body.as_bytes(), request.pri, request.delay, request.ttr)
        .await
        .map_err(|e| ApiError::from_client(&server.addr, e))?;
    Ok(Json(json!({ "id": id.0 })))
}

#[derive(Deserialize)]
struct KickRequest {
    count: u64,
}

/// `POST .../tubes/T/kick {"count"}` → `{"kicked"}`: buried jobs first, delayed ones when
/// none is buried, as `kick` does.
async fn kick(
    State(app): State<Shared>,
    Path((index, tube)): Path<(usize, String)>,
    Json(request): Json<KickRequest>,
) -> Answer {
    let server = server(&app, index)?;
    // The protocol's bound is a u32; asking for more is asking for all.
    let bound = u32::try_from(request.count).unwrap_or(u32::MAX);
    let client = server.fresh().await?;
    let failed = |e| ApiError::from_client(&server.addr, e);
    client.stats_tube(&tube).await.map_err(failed)?;
    client.use_tube(&tube).await.map_err(failed)?;
    let kicked = client.kick(bound).await.map_err(failed)?;
    Ok(Json(json!({ "kicked": kicked })))
}

#[derive(Deserialize)]
struct StatesRequest {
    states: Vec<String>,
}

/// `POST .../tubes/T/clear {"states": ["ready", ...]}` → `{"deleted", "by-peeking"}`.
async fn clear(
    State(app): State<Shared>,
    Path((index, tube)): Path<(usize, String)>,
    Json(request): Json<StatesRequest>,
) -> Answer {
    let server = server(&app, index)?;
    let states = request.states.iter().map(|s| state_named(s)).collect::<Result<Vec<_>, _>>()?;
    let client = server.client().await?;
    let cleared =
        client.clear_tube_or_delete(&tube, &states).await.map_err(|e| ApiError::from_client(&server.addr, e))?;
    Ok(Json(json!({ "deleted": cleared.deleted, "by-peeking": cleared.by_peeking })))
}

#[derive(Deserialize)]
struct PauseRequest {
    seconds: u32,
}

/// `POST .../tubes/T/pause {"seconds"}`: 0 ends a pause.
async fn pause(
    State(app): State<Shared>,
    Path((index, tube)): Path<(usize, String)>,
    Json(request): Json<PauseRequest>,
) -> Answer {
    let server = server(&app, index)?;
    let client = server.client().await?;
    client.pause_tube(&tube, request.seconds).await.map_err(|e| ApiError::from_client(&server.addr, e))?;
    Ok(Json(json!({})))
}

/// `POST .../jobs/ID/kick`: makes a buried or delayed job ready.
async fn kick_job(State(app): State<Shared>, Path((index, id)): Path<(usize, u64)>) -> Answer {
    let server = server(&app, index)?;
    let client = server.client().await?;
    client.kick_job(JobId(id)).await.map_err(|e| ApiError::from_client(&server.addr, e))?;
    Ok(Json(json!({})))
}

/// `POST .../jobs/ID/delete`.
async fn delete_job(State(app): State<Shared>, Path((index, id)): Path<(usize, u64)>) -> Answer {
    let server = server(&app, index)?;
    let client = server.client().await?;
    client.delete(JobId(id)).await.map_err(|e| ApiError::from_client(&server.addr, e))?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct MoveRequest {
    to: String,
    /// Move every job of these states...
    #[serde(default)]
    states: Vec<String>,
    /// ... or these jobs.
    #[serde(default)]
    ids: Vec<u64>,
}

/// `POST .../tubes/T/move {"to", "states" | "ids"}` → `{"moved"}`. See the module's notes:
/// a move is a reserve, a put and a delete, not atomic.
async fn move_jobs(
    State(app): State<Shared>,
    Path((index, from)): Path<(usize, String)>,
    Json(request): Json<MoveRequest>,
) -> Answer {
    let server = server(&app, index)?;
    if request.to == from {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "the two tubes are the same"));
    }
    if request.states.is_empty() == request.ids.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "give either states or ids"));
    }
    let states = request.states.iter().map(|s| state_named(s)).collect::<Result<Vec<_>, _>>()?;
    let client = server.fresh().await?;
    let failed = |e| ApiError::from_client(&server.addr, e);
    let stats = client.stats_tube(&from).await.map_err(failed)?;
    let mut moved = 0u64;
    for id in request.ids {
        if move_one(&client, &from, &request.to, JobId(id)).await.map_err(failed)? {
            moved += 1;
        }
    }
    for state in states {
        let mut left = match state {
            JobState::Ready => stats.current_jobs_ready,
            JobState::Delayed => stats.current_jobs_delayed,
            _ => stats.current_jobs_buried,
        };
        let mut vanished = 0;
        while left > 0 {
            let first = client.list_jobs_or_peek(&from, state, JobId(0), 1).await.map_err(failed)?;
            let Some(&id) = first.ids.first() else { break };
            if move_one(&client, &from, &request.to, id).await.map_err(failed)? {
                moved += 1;
                left -= 1;
                vanished = 0;
            } else {
                vanished += 1;
                if vanished == VANISHED_IN_A_ROW_MAX {
                    break;
                }
            }
        }
    }
    Ok(Json(json!({ "moved": moved })))
}

/// Moves one ready, delayed or buried job of `from` into `to`: reserves it, puts a copy, and
/// deletes it. False when the job is not there to move (gone, reserved by a worker, or in
/// another tube). When the put fails the job goes back as it was and the error is returned.
async fn move_one(client: &Client, from: &str, to: &str, id: JobId) -> Result<bool, Error> {
    let stats = match client.stats_job(id).await {
        Ok(stats) => stats,
        Err(Error::NotFound) => return Ok(false),
        Err(e) => return Err(e),
    };
    if stats.tube != from || stats.state == JobState::Reserved {
        return Ok(false);
    }
    let job = match client.reserve_job(id).await {
        Ok(job) => job,
        Err(Error::NotFound) => return Ok(false),
        Err(e) => return Err(e),
    };
    let delay = if stats.state == JobState::Delayed { u32::try_from(stats.time_left).unwrap_or(u32::MAX) } else { 0 };
    let ttr = u32::try_from(stats.ttr).unwrap_or(u32::MAX);
    if let Err(e) = client.publish(to, &job.body, stats.pri, delay, ttr).await {
        // Back as it was found, as far as the protocol allows (a buried job is buried again).
        let _ = match stats.state {
            JobState::Buried => client.bury(id, stats.pri).await,
            _ => client.release(id, stats.pri, delay).await,
        };
        return Err(e);
    }
    client.delete(id).await?;
    Ok(true)
}
