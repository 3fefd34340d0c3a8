//! Who may watch the live feed, and which tenant they see.
//!
//! A client presents a token: either one of the static tokens in `[feed.tokens]` (token →
//! tenant), or an HS256 JWT signed with `feed.jwt_secret` whose `tenant` claim names the
//! tenant (`exp` and `nbf` are honoured when present). The tenant `*` sees every tenant; it
//! is what the embedded run's development token carries. Only HS256 is accepted: a token
//! that names another algorithm (`none` included) is refused, never "verified" with it.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The tenant that sees every tenant's alerts.
pub const ALL_TENANTS: &str = "*";

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The tenant whose alerts the client sees, or [`ALL_TENANTS`].
    pub tenant: String,
    /// Who it is, for the log: the JWT `sub`, or `static token`.
    pub subject: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token (send `Authorization: Bearer <token>` or `?token=`)")]
    Missing,
    #[error("unknown token")]
    Unknown,
    #[error("malformed JWT: {0}")]
    Malformed(&'static str),
    #[error("JWT algorithm {0:?} is not accepted (HS256 only)")]
    Algorithm(String),
    #[error("JWT signature does not verify")]
    Signature,
    #[error("JWT expired")]
    Expired,
    #[error("JWT not valid yet")]
    NotYetValid,
    #[error("JWT has no `tenant` claim")]
    NoTenant,
}

/// The configured ways in.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    tokens: BTreeMap<String, String>,
    jwt_secret: Option<Vec<u8>>,
}

impl Authenticator {
    pub fn new(tokens: BTreeMap<String, String>, jwt_secret: Option<&str>) -> Self {
        Self { tokens, jwt_secret: jwt_secret.filter(|s| !s.is_empty()).map(|s| s.as_bytes().to_vec()) }
    }

    /// Adds a static token (the embedded run's development token).
    pub fn add_token(&mut self, token: String, tenant: String) {
        self.tokens.insert(token, tenant);
    }

    /// True when no token could ever be accepted.
    pub fn is_closed(&self) -> bool {
        self.tokens.is_empty() && self.jwt_secret.is_none()
    }

    pub fn authenticate(&self, token: Option<&str>, now_s: i64) -> Result<Grant, AuthError> {
        let token = token.map(str::trim).filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        // Static tokens: compared in constant time so timing does not reveal a prefix.
        for (known, tenant) in &self.tokens {
            if constant_time_eq(known.as_bytes(), token.as_bytes()) {
                return Ok(Grant { tenant: tenant.clone(), subject: "static token".into() });
            }
        }
        match &self.jwt_secret {
            Some(secret) if token.matches('.').count() == 2 => verify_hs256(token, secret, now_s),
            _ => Err(AuthError::Unknown),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn verify_hs256(token: &str, secret: &[u8], now_s: i64) -> Result<Grant, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(AuthError::Malformed("expected header.payload.signature"));
    };
    let header: serde_json::Value = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or(AuthError::Malformed("header is not base64url JSON"))?;
    let alg = header.get("alg").and_then(|a| a.as_str()).unwrap_or_default();
    if alg != "HS256" {
        return Err(AuthError::Algorithm(alg.to_string()));
    }
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| AuthError::Malformed("signature is not base64url"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| AuthError::Signature)?;
    mac.update(&token.as_bytes()[..token.len() - token.rsplit('.').next().map_or(0, str::len) - 1]);
    mac.verify_slice(&signature).map_err(|_| AuthError::Signature)?;
    let claims: serde_json::Value = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|p| serde_json::from_slice(&p).ok())
        .ok_or(AuthError::Malformed("payload is not base64url JSON"))?;
    if claims.get("exp").and_then(|e| e.as_i64()).is_some_and(|exp| now_s >= exp) {
        return Err(AuthError::Expired);
    }
    if claims.get("nbf").and_then(|n| n.as_i64()).is_some_and(|nbf| now_s < nbf) {
        return Err(AuthError::NotYetValid);
    }
    let tenant = claims.get("tenant").and_then(|t| t.as_str()).filter(|t| !t.is_empty()).ok_or(AuthError::NoTenant)?;
    let subject = claims.get("sub").and_then(|s| s.as_str()).unwrap_or("jwt").to_string();
    Ok(Grant { tenant: tenant.to_string(), subject })
}

/// Signs `claims` as an HS256 JWT (`threatpipe feed-token`, tests).
pub fn sign_hs256(claims: &serde_json::Value, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let signature = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(signing_input.as_bytes());
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        }
        // HMAC takes keys of any length; this arm cannot be reached.
        Err(_) => String::new(),
    };
    format!("{signing_input}.{signature}")
}

/// A random token for the embedded run (128 bits from the OS).
pub fn random_token() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).is_ok();
    if !filled {
        // No /dev/urandom: fall back to what differs between runs (time, pid, an address).
        let seed = format!("{:?}{}{:p}", std::time::SystemTime::now(), std::process::id(), &bytes);
        bytes = xxhash_rust::xxh3::xxh3_128(seed.as_bytes()).to_le_bytes();
    }
    format!("dev-{}", URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new(BTreeMap::from([("s3cret".to_string(), "acme".to_string())]), Some("key"))
    }

    #[test]
    fn static_tokens_and_jwts() {
        let a = auth();
        assert_eq!(a.authenticate(Some("s3cret"), 0).map(|g| g.tenant), Ok("acme".into()));
        assert_eq!(a.authenticate(Some("s3cre"), 0), Err(AuthError::Unknown));
        assert_eq!(a.authenticate(None, 0), Err(AuthError::Missing));
        let jwt = sign_hs256(&serde_json::json!({"tenant": "globex", "sub": "ana", "exp": 100}), b"key");
        assert_eq!(a.authenticate(Some(&jwt), 99), Ok(Grant { tenant: "globex".into(), subject: "ana".into() }));
        assert_eq!(a.authenticate(Some(&jwt), 100), Err(AuthError::Expired));
        let wrong_key = sign_hs256(&serde_json::json!({"tenant": "globex"}), b"other");
        assert_eq!(a.authenticate(Some(&wrong_key), 0), Err(AuthError::Signature));
        let no_tenant = sign_hs256(&serde_json::json!({"sub": "x"}), b"key");
        assert_eq!(a.authenticate(Some(&no_tenant), 0), Err(AuthError::NoTenant));
        let nbf = sign_hs256(&serde_json::json!({"tenant": "t", "nbf": 50}), b"key");
        assert_eq!(a.authenticate(Some(&nbf), 49), Err(AuthError::NotYetValid));
    }

    #[test]
    fn alg_none_and_tampering_are_refused() {
        let a = auth();
        let payload = URL_SAFE_NO_PAD.encode(r#"{"tenant":"*"}"#);
        let none = format!("{}.{payload}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#));
        assert_eq!(a.authenticate(Some(&none), 0), Err(AuthError::Algorithm("none".into())));
        let jwt = sign_hs256(&serde_json::json!({"tenant": "acme"}), b"key");
        let mut parts: Vec<&str> = jwt.split('.').collect();
        parts[1] = &payload; // claims swapped for "all tenants", signature kept
        assert_eq!(a.authenticate(Some(&parts.join(".")), 0), Err(AuthError::Signature));
        // Without a secret, JWTs are unknown tokens.
        let closed = Authenticator::new(BTreeMap::new(), None);
        assert!(closed.is_closed());
        assert_eq!(closed.authenticate(Some(&jwt), 0), Err(AuthError::Unknown));
    }

    #[test]
    fn random_tokens_differ() {
        assert_ne!(random_token(), random_token());
        assert!(random_token().len() > 20);
    }
}
