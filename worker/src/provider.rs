//! The connection to Apple's provider API: one HTTP/2 connection over TLS, shared by every
//! slot of the worker, so that many notifications are in flight on it at once (HTTP/2 streams).
//!
//! It is opened when first needed and again after it closes (Apple closes idle connections,
//! and sends GOAWAY before maintenance). Only one slot opens it at a time; the others wait
//! for that connection rather than each opening their own. TLS is rustls with the web's root
//! certificates, plus `--ca-file` for a test server or a private relay; ALPN must agree on
//! `h2`. For certificate authentication the client certificate goes into the TLS handshake.
//!
//! # Invariants
//! * A request gets its whole answer, or an error, within [`REQUEST_TIMEOUT_SECS`]; an
//!   answer body is read up to [`RESPONSE_BYTES_MAX`].
//! * A failed request never marks the connection for replacement by itself: HTTP/2 reports a
//!   dead connection as closed, and the next request opens a new one.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper::{HeaderMap, Request, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// Apple's production endpoint.
pub const PRODUCTION_URL: &str = "https://api.push.apple.com";

/// Apple's sandbox (development) endpoint.
pub const SANDBOX_URL: &str = "https://api.sandbox.push.apple.com";

/// How long opening the connection (TCP and TLS and the HTTP/2 preface) may take.
const CONNECT_TIMEOUT_SECS: u64 = 10;

/// How long one notification may take, from sending to the whole answer. APNs answers in
/// milliseconds; a request still open after 30 seconds is on a connection that is gone.
pub const REQUEST_TIMEOUT_SECS: u64 = 30;

/// The largest answer body read. APNs answers with a small JSON object (`reason`,
/// `timestamp`); this bounds what a wrong endpoint can make the worker hold.
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024;

/// Where the provider API is: `https://HOST[:PORT]`.
#[derive(Clone, Debug)]
pub struct Endpoint {
    host: String,
    port: u16,
    /// `HOST:PORT` as requests name it.
    authority: String,
}

impl Endpoint {
    /// Parses `https://HOST[:PORT]` (a path, query or other scheme is refused).
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let uri: Uri = url.parse().map_err(|e| format!("{url:?} is not a URL ({e})"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("{url:?} must start with https://"));
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(format!("{url:?} must not have a path"));
        }
        let authority = uri.authority().ok_or_else(|| format!("{url:?} has no host"))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = authority.port_u16().unwrap_or(443);
        Ok(Endpoint { host, port, authority: authority.as_str().to_owned() })
    }

    /// The URL of a device's notifications.
    pub fn device_url(&self, token: &str) -> String {
        format!("https://{}/3/device/{token}", self.authority)
    }
}

/// The TLS settings: the roots to trust and, for certificate authentication, the client's
/// certificate and key (PEM files).
pub fn tls_config(ca_file: Option<&Path>, client: Option<(&Path, &Path)>) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = ca_file {
        let certs = read_certs(path)?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!("{}: no usable CA certificate", path.display()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_certs(cert)?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: no private key ({e})", key.display()))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| format!("{}: {e}", cert.display()))?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// An answer from APNs.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The answer's headers (`apns-id`).
    pub headers: HeaderMap,
    /// The body (JSON with `reason` when the status is not 200).
    pub body: Bytes,
}

/// The shared connection.
pub struct Provider {
    endpoint: Endpoint,
    tls: tokio_rustls::TlsConnector,
    sender: Mutex<Option<SendRequest<Full<Bytes>>>>,
}

impl Provider {
    /// A provider for `endpoint` with these TLS settings; nothing is opened yet.
    pub fn new(endpoint: Endpoint, tls: rustls::ClientConfig) -> Provider {
        Provider { endpoint, tls: tokio_rustls::TlsConnector::from(Arc::new(tls)), sender: Mutex::new(None) }
    }

    /// Where requests go.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends one request and reads its answer. The error says what failed, for the log.
    ///
    /// A request that the connection refused before sending any of it (the connection was
    /// closing: Apple's GOAWAY, an idle timeout) is sent once more, on a new connection.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Result<Answer, String> {
        let exchange = async {
            let mut request = request;
            let mut resent = false;
            let response = loop {
                let mut sender = self.sender().await?;
                match sender.try_send_request(request).await {
                    Ok(response) => break response,
                    Err(mut e) => match e.take_message() {
                        Some(unsent) if !resent => {
                            crate::log::info(&format!(
                                "the connection to APNs was closing ({}); sending again",
                                e.into_error()
                            ));
                            request = unsent;
                            resent = true;
                        }
                        _ => return Err(format!("the request failed ({})", e.into_error())),
                    },
                }
            };
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, RESPONSE_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| format!("cannot read the answer ({e})"))?
                .to_bytes();
            Ok(Answer { status: parts.status, headers: parts.headers, body })
        };
        match tokio::time::timeout(Duration::from_secs(REQUEST_TIMEOUT_SECS), exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT_SECS}s")),
        }
    }

    /// The open connection, opening one if there is none (or it closed).
    async fn sender(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let mut held = self.sender.lock().await;
        if let Some(sender) = held.as_ref()
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        *held = None;
        let opening = self.open();
        let sender = match tokio::time::timeout(Duration::from_secs(CONNECT_TIMEOUT_SECS), opening).await {
            Ok(sender) => sender?,
            Err(_) => return Err(format!("cannot connect to APNs at {}: timed out", self.endpoint.authority)),
        };
        *held = Some(sender.clone());
        Ok(sender)
    }

    async fn open(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let at = &self.endpoint.authority;
        let tcp = TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port))
            .await
            .map_err(|e| format!("cannot connect to APNs at {at}: {}", crate::exec::describe_io(&e)))?;
        let _ = tcp.set_nodelay(true);
        let name =
            ServerName::try_from(self.endpoint.host.clone()).map_err(|e| format!("{:?}: {e}", self.endpoint.host))?;
        let tls = self.tls.connect(name, tcp).await.map_err(|e| format!("TLS with APNs at {at} failed: {e}"))?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(format!("APNs at {at} did not agree to HTTP/2"));
        }
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/2 with APNs at {at} failed: {e}"))?;
        let at = at.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                crate::log::warn(&format!("the connection to APNs at {at} ended: {e}"));
            }
        });
        crate::log::info(&format!("connected to APNs at {}", self.endpoint.authority));
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let apple = Endpoint::parse(PRODUCTION_URL).expect("production");
        assert_eq!((apple.host.as_str(), apple.port), ("api.push.apple.com", 443));
        assert_eq!(apple.device_url("ab12"), "https://api.push.apple.com/3/device/ab12");
        let local = Endpoint::parse("https://127.0.0.1:8443/").expect("local");
        assert_eq!((local.host.as_str(), local.port, local.authority.as_str()), ("127.0.0.1", 8443, "127.0.0.1:8443"));
        let v6 = Endpoint::parse("https://[::1]:9000").expect("v6");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 9000));
        assert!(Endpoint::parse("http://api.push.apple.com").is_err());
        assert!(Endpoint::parse("https://api.push.apple.com/3/device").is_err());
        assert!(Endpoint::parse("api.push.apple.com").is_err());
    }
}
