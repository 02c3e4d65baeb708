//! `rbctl web` through its HTTP API: the real rbctl binary serving the console, in front of the
//! real runnerbean binary and, when it is installed, C beanstalkd; requests sent as a browser's
//! page sends them, results checked through the API and through a client of the servers.

mod console;

use std::process::{Child, Command};

use base64::Engine;
use reqwest::StatusCode;
use reqwest::redirect::Policy;
use runnerbean_client::{Client, JobId, JobState};
use runnerbean_testserver::TestServer;
use serde_json::{Value, json};

const RBCTL: &str = env!("CARGO_BIN_EXE_rbctl");

/// A running `rbctl web`, stopped (by its pid) when dropped.
struct Console {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Console {
    /// Starts the console on a free loopback port for these servers, with more flags.
    fn start(addrs: &[&str], flags: &[&str]) -> Console {
        let (child, url) = console::start(addrs, flags);
        let http = reqwest::Client::builder().redirect(Policy::none()).build().expect("HTTP client");
        Console { child, url, http }
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.url))
    }

    /// A POST as the page sends it.
    fn post(&self, path: &str, body: Value) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.url)).header("X-Rbctl-Console", "1").json(&body)
    }

    async fn json(&self, path: &str) -> Value {
        let response = self.get(path).send().await.expect("GET");
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.json().await.expect("JSON")
    }

    async fn act(&self, path: &str, body: Value) -> Value {
        let response = self.post(path, body.clone()).send().await.expect("POST");
        let status = response.status();
        let answer: Value = response.json().await.expect("JSON");
        assert_eq!(status, StatusCode::OK, "POST {path} {body}: {answer}");
        answer
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn body_of(job: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(job["body"].as_str().expect("body")).expect("base64")
}

fn ids(page: &Value) -> Vec<u64> {
    page["jobs"].as_array().expect("jobs").iter().map(|j| j["id"].as_u64().expect("id")).collect()
}

#[tokio::test]
async fn every_action_on_both_servers() {
    for server in TestServer::both() {
        let name = server.name();
        let console = Console::start(&[server.addr()], &[]);
        let client = Client::connect(server.addr()).await.expect("connect");
        let s = "/api/servers/0/tubes";

        // Put: text, JSON and bytes that are not UTF-8 come back as they went in.
        let first = console.act(&format!("{s}/t/put"), json!({"body": "{\"a\": 1}", "pri": 5})).await["id"].as_u64();
        let second = console.act(&format!("{s}/t/put"), json!({"body": "plain text", "pri": 10, "ttr": 30})).await;
        let delayed = console.act(&format!("{s}/t/put"), json!({"body": "later", "delay": 600})).await;
        let (first, second, delayed) =
            (first.expect("id"), second["id"].as_u64().expect("id"), delayed["id"].as_u64().expect("id"));
        let raw = client.publish("t", b"\x00\xffbin", 20, 0, 60).await.expect("put").0;
        let stats = client.stats_job(JobId(second)).await.expect("stats-job");
        assert_eq!((stats.tube.as_str(), stats.pri, stats.ttr), ("t", 10, 30), "{name}");

        let overview = console.json("/api/overview").await;
        let servers = overview["servers"].as_array().expect("servers");
        assert_eq!(servers.len(), 1);
        assert_eq!(servers[0]["addr"], server.addr());
        let tube = servers[0]["tubes"].as_array().expect("tubes").iter().find(|t| t["name"] == "t").expect("t").clone();
        assert_eq!(
            (tube["current-jobs-ready"].as_u64(), tube["current-jobs-delayed"].as_u64()),
            (Some(3), Some(1)),
            "{name}"
        );
        assert_eq!(servers[0]["stats"]["current-jobs-ready"], 3, "{name}");
        // The filter picks tubes by a part of their name, ignoring case.
        let filtered = console.json("/api/overview?filter=T").await;
        let names: Vec<&str> = filtered["servers"][0]["tubes"]
            .as_array()
            .expect("tubes")
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert_eq!((names, filtered["servers"][0]["tubes-not-shown"].as_u64()), (vec!["default", "t"], Some(0)));
        let filtered = console.json("/api/overview?filter=nothing").await;
        assert_eq!(filtered["servers"][0]["tubes"], json!([]));

        // The tube: its jobs as the server would take them (all of them with list-jobs, the
        // first one by peeking without it).
        let view = console.json(&format!("{s}/t")).await;
        assert_eq!(view["stats"]["current-jobs-ready"], 3);
        let ready = &view["states"]["ready"];
        let by_peeking = ready["by-peeking"].as_bool().expect("by-peeking");
        if by_peeking {
            assert_eq!(ids(ready), [first], "{name}");
        } else {
            assert_eq!(ids(ready), [first, second, raw], "{name}");
            assert_eq!(body_of(&ready["jobs"][2]), b"\x00\xffbin");
        }
        let job = &ready["jobs"][0];
        assert_eq!(
            (body_of(job), job["pri"].as_u64(), job["body-bytes"].as_u64()),
            (b"{\"a\": 1}".to_vec(), Some(5), Some(8))
        );
        assert_eq!(ids(&view["states"]["delayed"]), [delayed], "{name}");
        assert_eq!(view["states"]["delayed"]["jobs"][0]["state"], "delayed");
        assert_eq!(ids(&view["states"]["buried"]), Vec::<u64>::new());
        let one = console.json(&format!("/api/servers/0/jobs/{raw}")).await;
        assert_eq!((body_of(&one), one["tube"].as_str()), (b"\x00\xffbin".to_vec(), Some("t")), "{name}");

        // Bury two (the API has no bury: workers bury), kick one of them, then kick-job the
        // delayed one.
        for (id, pri) in [(second, 10), (raw, 20)] {
            client.reserve_job(JobId(id)).await.expect("reserve-job");
            client.bury(JobId(id), pri).await.expect("bury");
        }
        assert_eq!(console.act(&format!("{s}/t/kick"), json!({"count": 1})).await["kicked"], 1, "{name}");
        assert_eq!(client.stats_job(JobId(second)).await.expect("stats-job").state, JobState::Ready, "{name}");
        console.act(&format!("/api/servers/0/jobs/{delayed}/kick"), json!({})).await;
        assert_eq!(client.stats_job(JobId(delayed)).await.expect("stats-job").state, JobState::Ready, "{name}");
        let buried = console.json(&format!("{s}/t/jobs?state=buried")).await;
        assert_eq!(ids(&buried), [raw], "{name}");

        // Pause and unpause.
        console.act(&format!("{s}/t/pause"), json!({"seconds": 120})).await;
        assert_eq!(client.stats_tube("t").await.expect("stats-tube").pause, 120, "{name}");
        console.act(&format!("{s}/t/pause"), json!({"seconds": 0})).await;
        assert_eq!(client.stats_tube("t").await.expect("stats-tube").pause, 0, "{name}");

        // Move one job by id, then every ready job: copies with the same body and priority.
        let moved = console.act(&format!("{s}/t/move"), json!({"to": "u", "ids": [raw]})).await;
        assert_eq!(moved["moved"], 1, "{name}");
        let u = client.stats_tube("u").await.expect("stats-tube u");
        assert_eq!((u.current_jobs_ready, u.current_jobs_buried), (1, 0), "{name}: a moved buried job arrives ready");
        let moved = console.act(&format!("{s}/t/move"), json!({"to": "u", "states": ["ready"]})).await;
        assert_eq!(moved["moved"], 3, "{name}");
        let (t, u) = (client.stats_tube("t").await.expect("t"), client.stats_tube("u").await.expect("u"));
        assert_eq!((t.current_jobs_ready, u.current_jobs_ready), (0, 4), "{name}");
        client.use_tube("u").await.expect("use");
        let head = client.peek_ready().await.expect("peek-ready");
        assert_eq!(head.body, b"{\"a\": 1}", "{name}: the most urgent job is first in its new tube too");
        assert_eq!(client.stats_job(head.id).await.expect("stats-job").pri, 5, "{name}");
        // A job that is not in the tube is not moved.
        let moved = console.act(&format!("{s}/t/move"), json!({"to": "u", "ids": [head.id.0]})).await;
        assert_eq!(moved["moved"], 0, "{name}");

        // Delete one, then every ready job of the tube.
        console.act(&format!("/api/servers/0/jobs/{}/delete", head.id), json!({})).await;
        assert!(client.peek(head.id).await.is_err(), "{name}");
        let cleared = console.act(&format!("{s}/u/clear"), json!({"states": ["ready"]})).await;
        assert_eq!(cleared["deleted"], 3, "{name}");
        assert_eq!(client.stats_tube("u").await.expect("u").current_jobs_ready, 0, "{name}");

        // Refusals come back as errors with the status of their kind.
        let missing = console.get(&format!("{s}/nothing")).send().await.expect("GET");
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(missing.json::<Value>().await.expect("JSON"), json!({"error": "not found"}));
        let gone = console.post(&format!("/api/servers/0/jobs/{first}/delete"), json!({})).send().await.expect("POST");
        assert_eq!(gone.status(), StatusCode::NOT_FOUND, "{name}");
        let same =
            console.post(&format!("{s}/t/move"), json!({"to": "t", "states": ["ready"]})).send().await.expect("POST");
        assert_eq!(same.status(), StatusCode::BAD_REQUEST);
        let bad = console.post(&format!("{s}/t/clear"), json!({"states": ["reserved"]})).send().await.expect("POST");
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        let bad = console.post(&format!("{s}/a%20b/put"), json!({"body": "x"})).send().await.expect("POST");
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        let no_server = console.get("/api/servers/5/tubes/t").send().await.expect("GET");
        assert_eq!(no_server.status(), StatusCode::NOT_FOUND);
        // What axum refuses by itself comes back in the same shape.
        let not_json = console.http.post(format!("{}{s}/t/put", console.url)).header("X-Rbctl-Console", "1");
        let not_json = not_json.header("Content-Type", "application/json").body("{body").send().await.expect("POST");
        assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
        assert!(not_json.json::<Value>().await.expect("JSON")["error"].as_str().is_some_and(|e| !e.is_empty()));
        let not_a_number = console.post("/api/servers/0/jobs/x/delete", json!({})).send().await.expect("POST");
        assert_eq!(not_a_number.status(), StatusCode::BAD_REQUEST);
        assert!(not_a_number.json::<Value>().await.expect("JSON")["error"].is_string());
    }
}

#[tokio::test]
async fn tube_names_with_a_slash_and_several_servers_one_of_them_down() {
    let server = TestServer::runnerbean();
    // Nothing listens on port 1 (a killed server's port could be taken again meanwhile by a
    // server of another test).
    let down_addr = "127.0.0.1:1";
    let console = Console::start(&[server.addr(), down_addr], &[]);
    let put = console.act("/api/servers/0/tubes/a%2Fb/put", json!({"body": "slash"})).await;
    let client = Client::connect(server.addr()).await.expect("connect");
    assert_eq!(client.stats_job(JobId(put["id"].as_u64().expect("id"))).await.expect("stats-job").tube, "a/b");
    let view = console.json("/api/servers/0/tubes/a%2Fb").await;
    assert_eq!(view["stats"]["name"], "a/b");

    let overview = console.json("/api/overview").await;
    assert!(overview["servers"][0]["tubes"].as_array().expect("tubes").iter().any(|t| t["name"] == "a/b"));
    assert_eq!(overview["servers"][1]["addr"], down_addr);
    let error = overview["servers"][1]["error"].as_str().expect("an error for the server that is down");
    assert_eq!(error, format!("server {down_addr}: cannot connect to {down_addr}: connection refused"));
    let action = console.post("/api/servers/1/tubes/t/put", json!({"body": "x"})).send().await.expect("POST");
    assert_eq!(action.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn the_page_is_embedded_and_loads_nothing_from_elsewhere() {
    let server = TestServer::runnerbean();
    let console = Console::start(&[server.addr()], &[]);
    for (path, kind) in [
        ("/", "text/html; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/app.css", "text/css; charset=utf-8"),
        ("/login", "text/html; charset=utf-8"),
    ] {
        let response = console.get(path).send().await.expect("GET");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.headers()["content-type"], kind, "{path}");
        let policy = response.headers()["content-security-policy"].to_str().expect("policy").to_owned();
        assert!(policy.starts_with("default-src 'self';"), "{path}: {policy}");
        let text = response.text().await.expect("text");
        assert!(!text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"), "{path}");
    }
    let page = console.get("/").send().await.expect("GET").text().await.expect("text");
    assert!(page.contains("<script src=\"/app.js\" defer></script>"));
    assert_eq!(console.get("/nothing").send().await.expect("GET").status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn without_a_token_only_loopback_and_actions_need_the_header_and_origin() {
    let server = TestServer::runnerbean();
    let console = Console::start(&[server.addr()], &[]);
    let path = "/api/servers/0/tubes/default/pause";
    let without_header = console.http.post(format!("{}{path}", console.url)).json(&json!({"seconds": 1}));
    let response = without_header.send().await.expect("POST");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(response.json::<Value>().await.expect("JSON")["error"], "an action needs the X-Rbctl-Console header");
    let other_origin = console.post(path, json!({"seconds": 1})).header("Origin", "http://evil.example");
    assert_eq!(other_origin.send().await.expect("POST").status(), StatusCode::FORBIDDEN);
    let own_origin = console.post(path, json!({"seconds": 1})).header("Origin", console.url.clone());
    assert_eq!(own_origin.send().await.expect("POST").status(), StatusCode::OK);
    // Behind a TLS proxy that passes Host on, the page's origin is https with the same host.
    let proxied = console.post(path, json!({"seconds": 1})).header("Origin", console.url.replace("http:", "https:"));
    assert_eq!(proxied.send().await.expect("POST").status(), StatusCode::OK);
    let other_port = console.post(path, json!({"seconds": 1})).header("Origin", "http://127.0.0.1:1");
    assert_eq!(other_port.send().await.expect("POST").status(), StatusCode::FORBIDDEN);
    // DNS rebinding: a name that resolves to 127.0.0.1 is still not a loopback name.
    let rebound = console.get("/api/overview").header("Host", "evil.example:8080");
    assert_eq!(rebound.send().await.expect("GET").status(), StatusCode::FORBIDDEN);
    let localhost = console.get("/api/overview").header("Host", "localhost");
    assert_eq!(localhost.send().await.expect("GET").status(), StatusCode::OK);
    // Reading is a GET; an action by GET is not an action.
    assert_eq!(console.get(path).send().await.expect("GET").status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn with_a_token_every_request_needs_it() {
    let server = TestServer::runnerbean();
    let token = "correct horse battery";
    let console = Console::start(&[server.addr()], &["--token", token]);
    let response = console.get("/api/overview").send().await.expect("GET");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let page = console.get("/").send().await.expect("GET");
    assert_eq!((page.status(), page.headers()["location"].to_str().ok()), (StatusCode::SEE_OTHER, Some("/login")));
    assert_eq!(console.get("/login").send().await.expect("GET").status(), StatusCode::OK);

    let bearer = console.get("/api/overview").bearer_auth(token).send().await.expect("GET");
    assert_eq!(bearer.status(), StatusCode::OK);
    assert_eq!(bearer.json::<Value>().await.expect("JSON")["login"], true);
    let wrong = console.get("/api/overview").bearer_auth("correct horse battery!").send().await.expect("GET");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    // The token alone does not make an action: the header is needed as well.
    let action = console.http.post(format!("{}/api/servers/0/tubes/default/pause", console.url));
    let action = action.bearer_auth(token).json(&json!({"seconds": 1})).send().await.expect("POST");
    assert_eq!(action.status(), StatusCode::FORBIDDEN);

    let login = |given: &str, origin: Option<&str>| {
        let mut request = console.http.post(format!("{}/login", console.url)).form(&[("token", given)]);
        if let Some(origin) = origin {
            request = request.header("Origin", origin);
        }
        request.send()
    };
    let refused = login("guess", None).await.expect("POST");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(refused.headers()["content-type"], "text/html; charset=utf-8");
    assert!(
        refused
            .text()
            .await
            .expect("text")
            .contains("<p class=\"error\" id=\"login-error\">That is not the token.</p>")
    );
    assert_eq!(login(token, Some("http://evil.example")).await.expect("POST").status(), StatusCode::FORBIDDEN);
    let accepted = login(token, Some(&console.url)).await.expect("POST");
    assert_eq!(accepted.status(), StatusCode::SEE_OTHER);
    let cookie = accepted.headers()["set-cookie"].to_str().expect("cookie").to_owned();
    assert!(cookie.ends_with("; HttpOnly; SameSite=Strict; Path=/"), "{cookie}");
    assert!(!cookie.contains(token), "the cookie is a session, not the token");
    let session = cookie.split(';').next().expect("name=value").to_owned();
    let with_cookie = console.get("/api/overview").header("Cookie", session.clone()).send().await.expect("GET");
    assert_eq!(with_cookie.status(), StatusCode::OK);
    let action = console.post("/api/servers/0/tubes/default/pause", json!({"seconds": 1})).header("Cookie", session);
    assert_eq!(action.send().await.expect("POST").status(), StatusCode::OK);
    let forged = console.get("/api/overview").header("Cookie", "rbctl_session=0123456789abcdef0123456789abcdef");
    assert_eq!(forged.send().await.expect("GET").status(), StatusCode::UNAUTHORIZED);
}

#[test]
fn refuses_to_listen_beyond_loopback_without_a_token() {
    let run = |args: &[&str]| {
        let output = Command::new(RBCTL).args(args).env_remove("RBCTL_WEB_TOKEN").output().expect("run rbctl");
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    assert_eq!(
        run(&["web", "--listen", "0.0.0.0:8080"]),
        (
            Some(2),
            "rbctl: --listen 0.0.0.0:8080 is reachable from other machines: give --token (or RBCTL_WEB_TOKEN) too, \
             or listen on 127.0.0.1\n"
                .to_owned()
        )
    );
    assert_eq!(
        run(&["web", "--listen", "127.0.0.1:0", "--token", "short"]),
        (Some(2), "rbctl: --token must have at least 12 characters\n".to_owned())
    );
    assert_eq!(
        run(&["web", "--listen", "localhost"]),
        (Some(2), "rbctl: --listen localhost: not an address like 127.0.0.1:8080\n".to_owned())
    );
    assert_eq!(
        run(&["--addr", "a", "--addr", "b", "stats"]),
        (Some(2), "rbctl: only `rbctl web` takes more than one --addr\n".to_owned())
    );
}
