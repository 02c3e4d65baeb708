//! APNs provider tokens: ES256 JSON Web Tokens signed with the team's `.p8` key.
//!
//! A token's header names the key (`kid`), its claims the team (`iss`) and when it was made
//! (`iat`). Apple rejects tokens older than an hour and answers `TooManyProviderTokenUpdates`
//! to a provider that makes new ones more often than every 20 minutes, so one token is shared
//! by every request and replaced after [`TOKEN_REFRESH_SECS`], or when Apple says it expired.
//!
//! # Invariants
//! * The signing key is checked at start-up (a token is signed), so a bad key file stops the
//!   worker before it takes a job.
//! * Tokens are never logged: they are credentials.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// How long one token is used: 50 minutes, within Apple's window of 20 to 60.
pub const TOKEN_REFRESH_SECS: u64 = 50 * 60;

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

/// Makes and keeps the provider token.
pub struct Signer {
    key: EncodingKey,
    key_id: String,
    team_id: String,
    current: Mutex<Option<(String, u64)>>,
}

impl Signer {
    /// A signer from the PEM text of a `.p8` key (PKCS#8, P-256). Fails when the key cannot
    /// sign.
    pub fn new(pem: &[u8], key_id: &str, team_id: &str) -> Result<Signer, String> {
        let key = EncodingKey::from_ec_pem(pem).map_err(|e| format!("not an EC private key in PEM form ({e})"))?;
        let signer = Signer { key, key_id: key_id.to_owned(), team_id: team_id.to_owned(), current: Mutex::new(None) };
        signer.sign(now()).map_err(|e| format!("the key cannot sign an ES256 token ({e})"))?;
        Ok(signer)
    }

    fn sign(&self, iat: u64) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        // Apple's examples carry only alg and kid; a typ is allowed but not needed.
        header.typ = None;
        jsonwebtoken::encode(&header, &Claims { iss: &self.team_id, iat }, &self.key)
    }

    /// The token to send now: the current one, or a new one when it is due.
    pub fn token(&self) -> Result<String, String> {
        let now = now();
        let mut current = self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((token, iat)) = current.as_ref()
            && now.saturating_sub(*iat) < TOKEN_REFRESH_SECS
        {
            return Ok(token.clone());
        }
        let token = self.sign(now).map_err(|e| format!("cannot sign a provider token: {e}"))?;
        *current = Some((token.clone(), now));
        Ok(token)
    }

    /// Apple said `token` expired: the next request gets a new one (unless another request
    /// already replaced it).
    pub fn expired(&self, token: &str) {
        let mut current = self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.as_ref().is_some_and(|(held, _)| held == token) {
            *current = None;
        }
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> (Signer, String) {
        let key = rcgen::KeyPair::generate().expect("P-256 key");
        let signer = Signer::new(key.serialize_pem().as_bytes(), "ABC123DEFG", "TEAM123456").expect("signer");
        (signer, key.public_key_pem())
    }

    #[test]
    fn tokens_verify_and_are_shared_until_they_expire() {
        let (signer, public) = signer();
        let token = signer.token().expect("token");
        let key = jsonwebtoken::DecodingKey::from_ec_pem(public.as_bytes()).expect("public key");
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).expect("verifies");
        assert_eq!((data.header.kid.as_deref(), data.header.typ.as_deref()), (Some("ABC123DEFG"), None));
        assert_eq!(data.claims["iss"], "TEAM123456");
        assert!(data.claims["iat"].as_u64().is_some_and(|iat| iat.abs_diff(now()) < 60));
        assert_eq!(signer.token().expect("again"), token, "one token for every request");
        signer.expired("some older token");
        assert!(signer.current.lock().expect("lock").is_some(), "only the current token's expiry counts");
        signer.expired(&token);
        assert!(signer.current.lock().expect("lock").is_none());
        assert!(signer.token().is_ok());
    }

    #[test]
    fn a_key_that_is_not_one_is_refused() {
        let error = Signer::new(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "K", "T");
        assert!(error.is_err());
        assert!(Signer::new(b"not pem", "K", "T").is_err());
    }
}
