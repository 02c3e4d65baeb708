//! `runnerbean-worker apns`: each job is one Apple push notification, sent over the HTTP/2
//! provider API (see [`crate::provider`]).
//!
//! The job body is JSON: `{"token": "<hex device token>", "payload": {...}}` with optional
//! `push_type`, `topic`, `priority`, `expiration`, `collapse_id` and `id`, which become the
//! `apns-push-type`, `apns-topic` (default `--topic`), `apns-priority`, `apns-expiration`,
//! `apns-collapse-id` and `apns-id` headers. The outcome follows Apple's answer:
//! * 200: sent; the job is deleted.
//! * 410 (`Unregistered`), or 400 `BadDeviceToken`: the device token is dead. A record of it
//!   goes to `--dead-tokens-tube` for the app to clean up, then the job is deleted.
//! * 403 `ExpiredProviderToken`: a new provider token is made, and the job retried.
//! * 429, 5xx, no answer: retried with back-off (buried after `--tries`).
//! * Any other 4xx: the request itself is wrong; buried, with Apple's reason in the log.
//!
//! A body that is not such JSON, a token that is not hex, or a payload over Apple's limit is
//! buried before anything is sent.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde::{Deserialize, Serialize};

use crate::provider::{Answer, Provider};
use crate::runner::{Handler, Job, Outcome};
use crate::token::Signer;

/// The largest payload APNs takes, in bytes (`PayloadTooLarge` past it).
pub const PAYLOAD_BYTES_MAX: usize = 4096;

/// The largest payload of a VoIP notification (`push_type` `voip`), which Apple allows to be
/// larger.
pub const VOIP_PAYLOAD_BYTES_MAX: usize = 5120;

/// The longest device token taken, in hex digits. Tokens are 32 bytes today; Apple says they
/// may grow, up to 100 bytes.
const TOKEN_HEX_CHARS_MAX: usize = 200;

/// How a request is authenticated.
pub enum Auth {
    /// A provider token in each request's `authorization` header.
    Token(Signer),
    /// The client certificate of the TLS connection.
    Certificate,
}

/// The `apns` handler.
pub struct Apns {
    /// The connection to APNs.
    pub provider: Arc<Provider>,
    /// How requests are authenticated.
    pub auth: Auth,
    /// `--topic`: the `apns-topic` of jobs that name none.
    pub topic: Option<String>,
    /// `--dead-tokens-tube`: where records of dead device tokens go.
    pub dead_tokens_tube: String,
}

/// A job's body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Push {
    token: String,
    payload: serde_json::Map<String, serde_json::Value>,
    push_type: Option<String>,
    topic: Option<String>,
    priority: Option<u8>,
    expiration: Option<u64>,
    collapse_id: Option<String>,
    id: Option<String>,
}

/// What goes to `--dead-tokens-tube` for a dead device token.
#[derive(Serialize)]
struct DeadToken<'a> {
    token: &'a str,
    topic: Option<&'a str>,
    status: u16,
    reason: &'a str,
    /// When APNs last knew the token to be invalid, in milliseconds since 1970 (410 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<u64>,
    job: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    apns_id: Option<&'a str>,
}

/// APNs' answer body when it is not 200.
#[derive(Deserialize, Default)]
struct Refusal {
    #[serde(default)]
    reason: String,
    timestamp: Option<u64>,
}

impl Handler for Apns {
    async fn handle(&self, job: &Job) -> Outcome {
        let (push, payload) = match parse(&job.body) {
            Ok(parsed) => parsed,
            Err(reason) => return Outcome::Bury(reason),
        };
        let topic = push.topic.as_deref().or(self.topic.as_deref());
        let token = match &self.auth {
            Auth::Token(signer) => match signer.token() {
                Ok(token) => Some(token),
                Err(e) => return Outcome::Retry(e),
            },
            Auth::Certificate => None,
        };
        let request =
            match request(self.provider.endpoint().device_url(&push.token), &push, topic, token.as_deref(), payload) {
                Ok(request) => request,
                Err(reason) => return Outcome::Bury(reason),
            };
        let answer = tokio::select! {
            answer = self.provider.send(request) => answer,
            () = job.life.stopping() => return Outcome::Interrupted,
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => return Outcome::Retry(e),
        };
        self.judge(job, &push, topic, token.as_deref(), &answer)
    }
}

impl Apns {
    /// The outcome of APNs' answer.
    fn judge(&self, job: &Job, push: &Push, topic: Option<&str>, token: Option<&str>, answer: &Answer) -> Outcome {
        let status = answer.status;
        let apns_id = answer.headers.get("apns-id").and_then(|v| v.to_str().ok());
        if status == StatusCode::OK {
            return Outcome::Delete(format!("sent (apns-id {})", apns_id.unwrap_or("none")));
        }
        let refusal: Refusal = serde_json::from_slice(&answer.body).unwrap_or_default();
        let reason =
            if refusal.reason.is_empty() { status.canonical_reason().unwrap_or("no reason") } else { &refusal.reason };
        let said = format!("APNs answered {} {reason}", status.as_u16());
        let dead = status == StatusCode::GONE || (status == StatusCode::BAD_REQUEST && reason == "BadDeviceToken");
        if dead {
            let record = DeadToken {
                token: &push.token,
                topic,
                status: status.as_u16(),
                reason,
                timestamp: refusal.timestamp,
                job: job.id.0,
                apns_id,
            };
            return match serde_json::to_vec(&record) {
                Ok(body) => Outcome::Record {
                    tube: self.dead_tokens_tube.clone(),
                    body,
                    note: format!("{said}: the device token is dead"),
                },
                Err(e) => Outcome::Retry(format!("{said}, and the dead token record cannot be written: {e}")),
            };
        }
        if status == StatusCode::FORBIDDEN && reason == "ExpiredProviderToken" {
            if let (Auth::Token(signer), Some(token)) = (&self.auth, token) {
                signer.expired(token);
            }
            return Outcome::Retry(said);
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Outcome::Retry(said);
        }
        if status.is_client_error() {
            return Outcome::Bury(said);
        }
        Outcome::Retry(said)
    }
}

/// Reads a job's body; the payload comes back as the bytes to send.
fn parse(body: &[u8]) -> Result<(Push, Vec<u8>), String> {
    let push: Push = serde_json::from_slice(body).map_err(|e| format!("malformed APNs job: {e}"))?;
    let hex = push.token.bytes().all(|b| b.is_ascii_hexdigit());
    if push.token.is_empty() || push.token.len() > TOKEN_HEX_CHARS_MAX || !push.token.len().is_multiple_of(2) || !hex {
        return Err(format!(
            "the device token {:?} is not an even number of hex digits (at most {TOKEN_HEX_CHARS_MAX})",
            push.token
        ));
    }
    let payload = serde_json::to_vec(&push.payload).map_err(|e| format!("the payload cannot be written: {e}"))?;
    let max = if push.push_type.as_deref() == Some("voip") { VOIP_PAYLOAD_BYTES_MAX } else { PAYLOAD_BYTES_MAX };
    if payload.len() > max {
        return Err(format!("the payload is {} bytes, over APNs' {max}", payload.len()));
    }
    Ok((push, payload))
}

/// The HTTP/2 request for a notification.
fn request(
    url: String,
    push: &Push,
    topic: Option<&str>,
    token: Option<&str>,
    payload: Vec<u8>,
) -> Result<Request<Full<Bytes>>, String> {
    let mut request = Request::builder().method(Method::POST).uri(url);
    let headers = request.headers_mut().ok_or("the request cannot be built")?;
    let mut set = |name: &'static str, value: Option<String>| -> Result<(), String> {
        if let Some(value) = value {
            let value =
                HeaderValue::try_from(value.as_str()).map_err(|_| format!("{name} {value:?} is not a header value"))?;
            headers.insert(HeaderName::from_static(name), value);
        }
        Ok(())
    };
    set("apns-topic", topic.map(str::to_owned))?;
    set("apns-push-type", push.push_type.clone())?;
    set("apns-priority", push.priority.map(|p| p.to_string()))?;
    set("apns-expiration", push.expiration.map(|e| e.to_string()))?;
    set("apns-collapse-id", push.collapse_id.clone())?;
    set("apns-id", push.id.clone())?;
    if let Some(token) = token {
        let value =
            HeaderValue::try_from(format!("bearer {token}")).map_err(|_| "the provider token is not a header value")?;
        headers.insert(AUTHORIZATION, value);
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    request.body(Full::new(Bytes::from(payload))).map_err(|e| format!("the request cannot be built: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked_before_sending() {
        let (push, payload) =
            parse(br#"{"token": "a1B2", "payload": {"aps": {"alert": "hi"}}, "priority": 5}"#).expect("parse");
        assert_eq!(payload, br#"{"aps":{"alert":"hi"}}"#);
        assert_eq!((push.token.as_str(), push.priority), ("a1B2", Some(5)));
        let refused = |body: &[u8]| parse(body).err().expect("refused");
        assert_eq!(
            refused(br#"{"token": "xyz1", "payload": {}}"#),
            "the device token \"xyz1\" is not an even number of hex digits (at most 200)"
        );
        assert_eq!(
            refused(br#"{"token": "abc", "payload": {}}"#),
            "the device token \"abc\" is not an even number of hex digits (at most 200)"
        );
        assert!(
            refused(br#"{"token": "ab", "payload": []}"#).starts_with("malformed APNs job: invalid type: sequence")
        );
        assert!(
            refused(br#"{"token": "ab", "payload": {}, "sound": 1}"#)
                .starts_with("malformed APNs job: unknown field `sound`")
        );
        assert!(refused(br#"{"payload": {}}"#).starts_with("malformed APNs job: missing field `token`"));
    }

    #[test]
    fn payloads_over_the_limit_are_refused() {
        // {"a":"xxx..."} is 8 bytes around the string.
        let fits = format!(r#"{{"token": "ab", "payload": {{"a": "{}"}}}}"#, "x".repeat(PAYLOAD_BYTES_MAX - 8));
        assert_eq!(parse(fits.as_bytes()).expect("fits").1.len(), PAYLOAD_BYTES_MAX);
        let over = format!(r#"{{"token": "ab", "payload": {{"a": "{}"}}}}"#, "x".repeat(PAYLOAD_BYTES_MAX - 7));
        assert_eq!(parse(over.as_bytes()).err(), Some("the payload is 4097 bytes, over APNs' 4096".to_owned()));
        let voip = format!(
            r#"{{"token": "ab", "push_type": "voip", "payload": {{"a": "{}"}}}}"#,
            "x".repeat(PAYLOAD_BYTES_MAX)
        );
        assert!(parse(voip.as_bytes()).is_ok());
    }

    #[test]
    fn requests_carry_the_headers() {
        let body = br#"{"token": "ab", "payload": {}, "push_type": "alert", "priority": 10, "expiration": 0, "collapse_id": "c", "id": "u"}"#;
        let (push, payload) = parse(body).expect("parse");
        let built =
            request("https://h/3/device/ab".into(), &push, Some("com.example"), Some("JWT"), payload).expect("request");
        let header = |name: &str| built.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
        assert_eq!(built.uri(), "https://h/3/device/ab");
        let got: Vec<String> = [
            "apns-topic",
            "apns-push-type",
            "apns-priority",
            "apns-expiration",
            "apns-collapse-id",
            "apns-id",
            "authorization",
        ]
        .iter()
        .map(|name| header(name))
        .collect();
        assert_eq!(got, ["com.example", "alert", "10", "0", "c", "u", "bearer JWT"]);
        let (push, payload) = parse(br#"{"token": "ab", "payload": {}, "collapse_id": "a\nb"}"#).expect("parse");
        let refused = request("https://h/3/device/ab".into(), &push, None, None, payload).err();
        assert_eq!(refused, Some("apns-collapse-id \"a\\nb\" is not a header value".to_owned()));
    }
}
