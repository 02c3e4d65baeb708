//! `runnerbean-worker apns` end to end: the real worker binary and the real runnerbean binary,
//! with APNs played by an HTTP/2 server over TLS that the test starts, with certificates made
//! in the test. The mock records every request and answers by device token.

mod common;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Worker, job};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use runnerbean_client::{Client, JobState};
use runnerbean_testserver::TestServer;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};

/// A request as the mock saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    client_certificate: bool,
}

/// How the mock answers one device token: a status and a JSON body.
type Answers = HashMap<String, (u16, Value)>;

struct Mock {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
}

/// A CA made for the test, and a certificate it issues.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
        Pki { ca }
    }

    /// A certificate for `names` (IP addresses become IP names) with this usage.
    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (CertificateDer<'static>, KeyPair) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        (cert.der().clone(), key)
    }

    fn write_ca(&self, path: &Path) {
        std::fs::write(path, self.ca.pem()).expect("write ca");
    }
}

/// Starts the mock APNs on 127.0.0.1. With `client_ca`, it requires a client certificate
/// from that CA. With `hold`, each request waits until that many are in flight at once.
async fn mock(pki: &Pki, client_ca: Option<&Pki>, answers: Answers, hold: Option<usize>) -> Mock {
    let (cert, key) = pki.issue(&["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(client_ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(client_ca.ca.der().clone()).expect("client ca");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut config = builder.with_single_cert(vec![cert], key).expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new((AtomicUsize::new(0), tokio::sync::Notify::new()));
    let answers = Arc::new(answers);
    let mock = Mock { addr, seen: seen.clone(), connections: connections.clone() };
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let Ok(tls) = acceptor.accept(tcp).await else { continue };
            connections.fetch_add(1, Ordering::SeqCst);
            let client_certificate = tls.get_ref().1.peer_certificates().is_some_and(|certs| !certs.is_empty());
            let (seen, answers, in_flight) = (seen.clone(), answers.clone(), in_flight.clone());
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let (seen, answers, in_flight) = (seen.clone(), answers.clone(), in_flight.clone());
                async move {
                    let (parts, body) = request.into_parts();
                    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let path = parts.uri.path().to_owned();
                    seen.lock().expect("seen").push(Seen {
                        method: parts.method.to_string(),
                        path: path.clone(),
                        headers: parts.headers.clone(),
                        body,
                        client_certificate,
                    });
                    if let Some(wanted) = hold {
                        let (count, arrived) = &*in_flight;
                        count.fetch_add(1, Ordering::SeqCst);
                        arrived.notify_waiters();
                        let all_here = async {
                            while count.load(Ordering::SeqCst) < wanted {
                                let notified = arrived.notified();
                                if count.load(Ordering::SeqCst) >= wanted {
                                    break;
                                }
                                notified.await;
                            }
                            arrived.notify_waiters();
                        };
                        if tokio::time::timeout(Duration::from_secs(20), all_here).await.is_err() {
                            let body = json!({"reason": "NotAllInFlight"}).to_string();
                            return Ok::<_, Infallible>(
                                Response::builder().status(500).body(Full::new(Bytes::from(body))).expect("response"),
                            );
                        }
                    }
                    let token = path.rsplit('/').next().unwrap_or_default();
                    let (status, body) = answers.get(token).cloned().unwrap_or((200, Value::Null));
                    let mut response = Response::builder().status(status);
                    if let Some(id) = parts.headers.get("apns-id") {
                        response = response.header("apns-id", id);
                    } else {
                        response = response.header("apns-id", "11111111-2222-3333-4444-555555555555");
                    }
                    let body = if body.is_null() { Bytes::new() } else { Bytes::from(body.to_string()) };
                    Ok::<_, Infallible>(response.body(Full::new(body)).expect("response"))
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    mock
}

/// Decodes and verifies an ES256 provider token with the key's public half; returns its
/// header's kid and its claims.
fn verify(token: &str, public_pem: &str) -> (Option<String>, Value) {
    let key = jsonwebtoken::DecodingKey::from_ec_pem(public_pem.as_bytes()).expect("public key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.required_spec_claims = HashSet::new();
    validation.validate_exp = false;
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation).expect("the token verifies");
    (data.header.kid, data.claims)
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).and_then(|v| v.to_str().ok())
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
}

#[tokio::test]
async fn token_auth_and_every_outcome() {
    let server = TestServer::runnerbean();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new();
    pki.write_ca(&dir.path().join("ca.pem"));
    let signing = KeyPair::generate().expect("p8 key");
    std::fs::write(dir.path().join("AuthKey.p8"), signing.serialize_pem()).expect("write key");
    let answers: Answers = [
        ("bb02", (410, json!({"reason": "Unregistered", "timestamp": 1_700_000_000_123u64}))),
        ("cc03", (400, json!({"reason": "BadDeviceToken"}))),
        ("dd04", (429, json!({"reason": "TooManyRequests"}))),
        ("ee05", (503, json!({"reason": "ServiceUnavailable"}))),
        ("ff06", (400, json!({"reason": "BadTopic"}))),
        ("ab07", (403, json!({"reason": "ExpiredProviderToken"}))),
    ]
    .into_iter()
    .map(|(token, answer)| (token.to_owned(), answer))
    .collect();
    let mock = mock(&pki, None, answers, None).await;

    let p = Client::connect(server.addr()).await.expect("connect");
    let mut ids = HashMap::new();
    let full = json!({
        "token": "aa01", "payload": {"aps": {"alert": "hello"}}, "push_type": "alert", "topic": "com.example.other",
        "priority": 10, "expiration": 0, "collapse_id": "c1", "id": "123e4567-e89b-12d3-a456-426614174000",
    });
    ids.insert("aa01", p.publish("push", full.to_string().as_bytes(), 0, 0, 60).await.expect("publish"));
    for token in ["bb02", "cc03", "dd04", "ee05", "ff06", "ab07"] {
        let body = json!({"token": token, "payload": {"aps": {"badge": 1}}});
        ids.insert(token, p.publish("push", body.to_string().as_bytes(), 0, 0, 60).await.expect("publish"));
    }
    let big = json!({"token": "0a0b", "payload": {"data": "x".repeat(5000)}});
    ids.insert("0a0b", p.publish("push", big.to_string().as_bytes(), 0, 0, 60).await.expect("publish"));

    let url = format!("https://{}", mock.addr);
    let ca = dir.path().join("ca.pem");
    let key = dir.path().join("AuthKey.p8");
    let args = [
        "apns",
        "--addr",
        server.addr(),
        "--tube",
        "push",
        "--apns-url",
        &url,
        "--ca-file",
        ca.to_str().expect("path"),
        "--key-file",
        key.to_str().expect("path"),
        "--key-id",
        "ABC123DEFG",
        "--team-id",
        "TEAM123456",
        "--topic",
        "com.example.app",
        "--max-jobs",
        "8",
        "--backoff",
        "60",
        "-c",
        "4",
    ];
    let mut worker = Worker::start(&args, dir.path(), &[]);
    let status = worker.exit().await;
    let log = worker.log();
    assert!(status.success(), "{status:?}\n{log}");

    // What was sent: every job but the one over the payload limit, on one connection.
    let seen = mock.seen.lock().expect("seen").clone();
    let mut paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    paths.sort();
    let expected = [
        "/3/device/aa01",
        "/3/device/ab07",
        "/3/device/bb02",
        "/3/device/cc03",
        "/3/device/dd04",
        "/3/device/ee05",
        "/3/device/ff06",
    ];
    assert_eq!(paths, expected, "{log}");
    assert_eq!(mock.connections.load(Ordering::SeqCst), 1);
    for request in &seen {
        assert_eq!(request.method, "POST");
        let bearer = header(request, "authorization").and_then(|v| v.strip_prefix("bearer ")).expect("a bearer token");
        let (kid, claims) = verify(bearer, &signing.public_key_pem());
        assert_eq!(kid.as_deref(), Some("ABC123DEFG"));
        assert_eq!(claims["iss"], "TEAM123456");
        let iat = claims["iat"].as_i64().expect("iat");
        assert!((now() - iat).abs() < 600, "iat {iat} is not now");
        assert!(!request.client_certificate);
    }
    let full = seen.iter().find(|s| s.path.ends_with("aa01")).expect("aa01");
    let headers: Vec<Option<&str>> =
        ["apns-topic", "apns-push-type", "apns-priority", "apns-expiration", "apns-collapse-id", "apns-id"]
            .iter()
            .map(|name| header(full, name))
            .collect();
    let want = ["com.example.other", "alert", "10", "0", "c1", "123e4567-e89b-12d3-a456-426614174000"];
    assert_eq!(headers, want.map(Some));
    assert_eq!(full.body, br#"{"aps":{"alert":"hello"}}"#[..]);
    let plain = seen.iter().find(|s| s.path.ends_with("bb02")).expect("bb02");
    assert_eq!((header(plain, "apns-topic"), header(plain, "apns-push-type")), (Some("com.example.app"), None));

    // The outcomes.
    for token in ["aa01", "bb02", "cc03"] {
        assert_eq!(job(&p, ids[token]).await, None, "{token} should be deleted\n{log}");
    }
    for token in ["dd04", "ee05", "ab07"] {
        let stats = job(&p, ids[token]).await.expect("released");
        assert_eq!((stats.state, stats.releases), (JobState::Delayed, 1), "{token}\n{log}");
        assert!(stats.delay >= 60, "{token}: delay {}", stats.delay);
    }
    for token in ["ff06", "0a0b"] {
        assert_eq!(job(&p, ids[token]).await.map(|s| s.state), Some(JobState::Buried), "{token}\n{log}");
    }
    assert!(log.contains(&format!("error job {}: APNs answered 400 BadTopic: buried\n", ids["ff06"])), "{log}");
    let too_big = format!("error job {}: the payload is 5011 bytes, over APNs' 4096: buried\n", ids["0a0b"]);
    assert!(log.contains(&too_big), "{log}");
    assert!(
        log.contains(&format!("warn job {}: failed (APNs answered 429 TooManyRequests); attempt 1 of 3", ids["dd04"])),
        "{log}"
    );

    // The dead tokens, recorded for the app.
    let app = Client::connect(server.addr()).await.expect("connect");
    app.watch("apns-dead-tokens").await.expect("watch");
    app.ignore("default").await.expect("ignore");
    let mut records = Vec::new();
    for _ in 0..2 {
        let record = app.reserve_with_timeout(0).await.expect("a dead token record");
        records.push(serde_json::from_slice::<Value>(&record.body).expect("JSON"));
    }
    records.sort_by_key(|r| r["token"].as_str().map(str::to_owned));
    assert_eq!(
        records[0],
        json!({"token": "bb02", "topic": "com.example.app", "status": 410, "reason": "Unregistered",
               "timestamp": 1_700_000_000_123u64, "job": ids["bb02"].0, "apns_id": "11111111-2222-3333-4444-555555555555"})
    );
    assert_eq!(
        records[1],
        json!({"token": "cc03", "topic": "com.example.app", "status": 400, "reason": "BadDeviceToken",
               "job": ids["cc03"].0, "apns_id": "11111111-2222-3333-4444-555555555555"})
    );
    assert!(
        log.contains(&format!(
            "info job {}: APNs answered 410 Unregistered: the device token is dead; recorded as job ",
            ids["bb02"]
        )),
        "{log}"
    );
}

#[tokio::test]
async fn many_notifications_in_flight_on_one_connection() {
    let server = TestServer::runnerbean();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new();
    pki.write_ca(&dir.path().join("ca.pem"));
    let signing = KeyPair::generate().expect("p8 key");
    std::fs::write(dir.path().join("AuthKey.p8"), signing.serialize_pem()).expect("write key");
    // Each answer waits until all eight requests are in flight at once.
    let mock = mock(&pki, None, Answers::new(), Some(8)).await;
    let p = Client::connect(server.addr()).await.expect("connect");
    let mut ids = Vec::new();
    for n in 0..8 {
        let body = json!({"token": format!("{n:02x}"), "payload": {"n": n}});
        ids.push(p.publish("apns", body.to_string().as_bytes(), 0, 0, 60).await.expect("publish"));
    }
    let url = format!("https://{}", mock.addr);
    let ca = dir.path().join("ca.pem");
    let key = dir.path().join("AuthKey.p8");
    let args = [
        "apns",
        "--addr",
        server.addr(),
        "--apns-url",
        &url,
        "--ca-file",
        ca.to_str().expect("path"),
        "--key-file",
        key.to_str().expect("path"),
        "--key-id",
        "ABC123DEFG",
        "--team-id",
        "TEAM123456",
        "-c",
        "8",
        "--max-jobs",
        "8",
        "--tries",
        "1",
    ];
    let mut worker = Worker::start(&args, dir.path(), &[]);
    assert!(worker.exit().await.success(), "{}", worker.log());
    for id in ids {
        assert_eq!(job(&p, id).await, None, "{}", worker.log());
    }
    assert_eq!(mock.seen.lock().expect("seen").len(), 8);
    assert_eq!(mock.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn certificate_auth() {
    let server = TestServer::runnerbean();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new();
    pki.write_ca(&dir.path().join("ca.pem"));
    let clients = Pki::new();
    let (cert, key) = clients.issue(&["com.example.app"], ExtendedKeyUsagePurpose::ClientAuth);
    let pem = |der: &CertificateDer<'_>| {
        use std::fmt::Write;
        let mut out = "-----BEGIN CERTIFICATE-----\n".to_owned();
        let b64 = base64(der.as_ref());
        for line in b64.as_bytes().chunks(64) {
            let _ = writeln!(out, "{}", std::str::from_utf8(line).expect("ascii"));
        }
        out + "-----END CERTIFICATE-----\n"
    };
    // One file with both, as `openssl pkcs12 -nodes` writes it, given to both flags.
    std::fs::write(dir.path().join("cert.pem"), pem(&cert) + &key.serialize_pem()).expect("cert");
    let mock = mock(&pki, Some(&clients), Answers::new(), None).await;
    let p = Client::connect(server.addr()).await.expect("connect");
    let id = p.publish("apns", br#"{"token": "abcd", "payload": {"aps": {}}}"#, 0, 0, 60).await.expect("publish");
    let url = format!("https://{}", mock.addr);
    let path = |name: &str| dir.path().join(name).to_str().expect("path").to_owned();
    let (ca, cert, cert_key) = (path("ca.pem"), path("cert.pem"), path("cert.pem"));
    let args = [
        "apns",
        "--addr",
        server.addr(),
        "--apns-url",
        &url,
        "--ca-file",
        &ca,
        "--cert",
        &cert,
        "--cert-key",
        &cert_key,
        "--max-jobs",
        "1",
    ];
    let mut worker = Worker::start(&args, dir.path(), &[]);
    assert!(worker.exit().await.success(), "{}", worker.log());
    assert_eq!(job(&p, id).await, None, "{}", worker.log());
    let seen = mock.seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].client_certificate);
    assert_eq!(header(&seen[0], "authorization"), None);
}

#[tokio::test]
async fn setup_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [(&[&str], i32, &str); 4] = [
        (&["apns"], 2, "error: give --key-file, --key-id and --team-id"),
        (
            &["apns", "--key-file", "missing.p8", "--key-id", "K", "--team-id", "T"],
            1,
            "error --key-file missing.p8: no such file or directory",
        ),
        (
            &["apns", "--cert", "c.pem", "--cert-key", "k.pem", "--apns-url", "http://x"],
            2,
            "error: --apns-url: \"http://x\" must start with https://",
        ),
        (&["apns", "--cert", "c.pem", "--cert-key", "k.pem"], 1, "error c.pem: "),
    ];
    for (args, code, start) in cases {
        let mut worker = Worker::start(args, dir.path(), &[]);
        let status = worker.exit().await;
        assert_eq!(status.code(), Some(code), "{args:?}: {}", worker.log());
        assert!(worker.log().starts_with(start), "{args:?}: {}", worker.log());
    }
}

/// Standard base64 with padding, for writing a PEM file.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
