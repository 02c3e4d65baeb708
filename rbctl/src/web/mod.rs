//! web: the console, an HTTP server (axum) that shows one or more beanstalkd-protocol servers
//! in a browser and acts on their tubes and jobs.
//!
//! # Layout
//! * mod.rs: the command line, start-up checks, the router, and the guard every request
//!   passes (the host check, the token, the CSRF check).
//! * api.rs: the JSON API the page uses, one handler per screen or action, and the connections
//!   to the servers.
//! * assets/: the page (index.html, app.js, app.css, login.html), written here and embedded in
//!   the binary with `include_str!`: the console loads nothing from anywhere else.
//!
//! # Security
//! The console can delete every job of every server it is given, so who may reach it matters:
//! * Without `--token` it listens only on a loopback address, refuses to start on any other,
//!   and answers only requests whose `Host` is a loopback name, so that a web page elsewhere
//!   cannot reach it through DNS rebinding (a name of the attacker's that resolves to
//!   127.0.0.1).
//! * With `--token` every request needs it: the `Authorization: Bearer TOKEN` header, or the
//!   session cookie the login form sets (a random value drawn at start, never the token; it
//!   dies with the process).
//! * Every action is a POST, and a POST must carry the `X-Rbctl-Console` header (which a page
//!   of another origin cannot add without a CORS preflight, which the console never allows),
//!   and its `Origin`, when the browser sends one, must be the console's own (over http, or
//!   https behind a TLS proxy). The session cookie is `SameSite=Strict` too.
//!
//! # Invariants
//! * Nothing here panics on a request: every failure is a JSON `{"error": ...}` with a status.
//! * Every asset is in the binary; no page refers to another host.

mod api;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use clap::Args;

use crate::{Failure, exit};

/// `rbctl web`.
#[derive(Args, Debug)]
pub struct WebArgs {
    /// The address the console listens on, HOST:PORT (port 0: any free port). Any address but
    /// a loopback one (127.0.0.0/8, ::1) needs --token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// A secret every request must carry: the login form asks for it, scripts send
    /// `Authorization: Bearer TOKEN`. At least 12 characters.
    #[arg(long, env = "RBCTL_WEB_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// The shortest token accepted: 12 characters of a random token are out of reach of guessing
/// over HTTP, and a person can still type them.
const TOKEN_CHARS_MIN: usize = 12;

/// The session cookie's name.
const COOKIE: &str = "rbctl_session";

/// The header every POST must carry (see the module's Security section).
const CSRF_HEADER: &str = "x-rbctl-console";

/// What every handler shares.
struct App {
    servers: Vec<api::Server>,
    token: Option<String>,
    /// The session cookie's value, when there is a token.
    session: String,
}

type Shared = Arc<App>;

pub async fn web(addrs: &[String], args: WebArgs) -> Result<(), Failure> {
    let listen: SocketAddr = args.listen.parse().map_err(|_| {
        Failure::new(exit::USAGE, format!("--listen {}: not an address like 127.0.0.1:8080", args.listen))
    })?;
    let token = args.token.filter(|t| !t.is_empty());
    if let Some(token) = &token
        && token.chars().count() < TOKEN_CHARS_MIN
    {
        return Err(Failure::new(exit::USAGE, format!("--token must have at least {TOKEN_CHARS_MIN} characters")));
    }
    if token.is_none() && !listen.ip().is_loopback() {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "--listen {listen} is reachable from other machines: give --token (or RBCTL_WEB_TOKEN) too, \
                 or listen on 127.0.0.1"
            ),
        ));
    }
    let session = random_hex().map_err(|e| Failure::local("/dev/urandom", e))?;
    let servers = addrs.iter().map(|addr| api::Server::new(addr)).collect();
    let app = Arc::new(App { servers, token, session });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Failure::new(exit::LOCAL_IO, format!("cannot listen on {listen}: {}", crate::describe_io(&e))))?;
    let bound = listener.local_addr().map_err(|e| Failure::local("the listening socket", e))?;
    crate::out::line(&format!("rbctl web: console for {} on http://{bound}/", addrs.join(", ")))?;
    axum::serve(listener, router(app))
        .with_graceful_shutdown(stopped())
        .await
        .map_err(|e| Failure::new(exit::LOCAL_IO, format!("the console stopped: {}", crate::describe_io(&e))))
}

/// Resolves on SIGINT or SIGTERM.
async fn stopped() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

fn router(app: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { page(INDEX_HTML) }))
        .route("/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/login", get(|| async { page(LOGIN_HTML) }).post(login))
        .route("/logout", post(logout))
        .merge(api::routes())
        .fallback(|| async { api::ApiError::new(StatusCode::NOT_FOUND, "no such page") })
        .layer(axum::extract::DefaultBodyLimit::max(api::REQUEST_BYTES_MAX))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

const INDEX_HTML: &str = include_str!("assets/index.html");
const LOGIN_HTML: &str = include_str!("assets/login.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The policy every response carries: nothing from other origins, no framing by other pages.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

fn page(html: &'static str) -> Response {
    asset("text/html; charset=utf-8", html)
}

fn asset(content_type: &'static str, text: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], text).into_response()
}

/// The checks every request passes before its handler (see the module's Security section).
async fn guard(State(app): State<Shared>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default().to_owned();
    if app.token.is_none() && !is_loopback_host(&host) {
        return api::ApiError::new(StatusCode::FORBIDDEN, "this console answers only on a loopback address")
            .into_response();
    }
    let path = request.uri().path().to_owned();
    let open = matches!(path.as_str(), "/login" | "/app.css");
    if !open && app.token.is_some() && !authorized(&app, headers) {
        if request.method() == Method::GET && !path.starts_with("/api/") {
            return Redirect::to("/login").into_response();
        }
        return api::ApiError::new(StatusCode::UNAUTHORIZED, "log in first (or send Authorization: Bearer TOKEN)")
            .into_response();
    }
    if request.method() == Method::POST {
        // https too: behind a TLS proxy that passes the Host header on, the page's origin is
        // the proxy's.
        if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok())
            && origin != format!("http://{host}")
            && origin != format!("https://{host}")
        {
            return api::ApiError::new(StatusCode::FORBIDDEN, "a request from another origin").into_response();
        }
        if path != "/login" && !headers.contains_key(CSRF_HEADER) {
            return api::ApiError::new(StatusCode::FORBIDDEN, "an action needs the X-Rbctl-Console header")
                .into_response();
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Not "no-referrer": with it Chromium sends `Origin: null` on the login form's POST, which
    // the Origin check refuses.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

/// The most bytes of a plain-text error that [`json_errors`] reads: axum's rejections are one
/// sentence.
const ERROR_TEXT_BYTES_MAX: usize = 4096;

/// Turns the plain-text errors axum answers by itself (a body that is not the JSON asked for,
/// a job id that is not a number, a wrong method) into the `{"error": ...}` every other
/// failure is, so that the page has one shape to read.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    // axum's own errors are plain text or empty; the login page's refusal is HTML and stays.
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("text/plain"));
    if !response.status().is_client_error() || !plain {
        return response;
    }
    let status = response.status();
    let text = match axum::body::to_bytes(response.into_body(), ERROR_TEXT_BYTES_MAX).await {
        Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).into_owned(),
        _ => status.canonical_reason().unwrap_or("refused").to_lowercase(),
    };
    api::ApiError::new(status, text).into_response()
}

/// Whether a `Host` header names this machine: `localhost`, or a loopback address, with or
/// without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether the request carries the token (header) or the session cookie.
fn authorized(app: &App, headers: &HeaderMap) -> bool {
    let Some(token) = &app.token else { return true };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| same(given.trim(), token));
    bearer || cookie(headers, COOKIE).is_some_and(|value| same(value, &app.session))
}

/// A cookie's value from the `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Compares secrets in time that depends on their lengths only, so that the time of a reply
/// does not tell how much of a guess was right.
fn same(given: &str, secret: &str) -> bool {
    let (a, b) = (given.as_bytes(), secret.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(app): State<Shared>, form: axum::Form<LoginForm>) -> Response {
    let Some(token) = &app.token else { return Redirect::to("/").into_response() };
    if !same(form.token.trim(), token) {
        let html =
            LOGIN_HTML.replace("<!--error-->", "<p class=\"error\" id=\"login-error\">That is not the token.</p>");
        return (StatusCode::UNAUTHORIZED, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    }
    let cookie = format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", app.session);
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn logout() -> Response {
    let mut response = Response::new(Body::from("{}"));
    let gone = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&gone) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// 128 random bits as hex, from the kernel.
fn random_hex() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in ["127.0.0.1:8080", "localhost:80", "LOCALHOST", "[::1]:8080", "127.1.2.3"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["", "example.com", "evil.example:8080", "10.0.0.1:8080", "[fe80::1]:80", "127.0.0.1.evil:80"] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn cookies_and_secrets() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; rbctl_session=abc; b=2"));
        assert_eq!(cookie(&headers, COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "c"), None);
        assert!(same("abc", "abc") && !same("abd", "abc") && !same("ab", "abc"));
    }
}
