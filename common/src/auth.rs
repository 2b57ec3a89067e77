//! Calls from the orchestrator to a participant, authenticated. The
//! orchestrator signs each call with the participant's own key: an
//! HMAC-SHA256 over the method, the path with its query, a timestamp and
//! the body and a nonce, sent with the key's id. A participant given keys
//! (`AUTH_KEYS`: `id:secret`, two during a rotation) answers 401, with
//! nothing changed, to a call that is unsigned, signed under a key it does
//! not hold (another participant's), signed wrongly, older or newer than
//! [`WINDOW_SECS`], or seen before; each refusal is logged and counted.
//! `/healthz`, `/readyz`, `/metrics` and `/openapi.json` stay open.
//! `docs/security.md` says why this and not mutual TLS.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::error::ErrorBody;

/// The header naming the key a call is signed with.
pub const KEY_ID: &str = "saga-key-id";
/// The header of the signing time, in seconds since the epoch.
pub const TIMESTAMP: &str = "saga-timestamp";
/// The header of a value unique to each call, so that two attempts of one
/// call within a second are two signatures.
pub const NONCE: &str = "saga-nonce";
/// The header of the signature: `v1=<base64 HMAC-SHA256>`.
pub const SIGNATURE: &str = "saga-signature";

/// How far a call's timestamp may be from the participant's clock, either
/// way; a signature is remembered twice as long, to refuse it again.
pub const WINDOW_SECS: i64 = 60;

/// The shortest secret accepted, in bytes.
const SECRET_MIN_LEN: usize = 16;

/// The paths open to every caller.
const OPEN: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/openapi.json"];

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// A signing key: its id (sent with each call) and its secret (never).
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    pub id: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// `id:secret`, the secret at least 16 bytes.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (id, secret) = text
            .split_once(':')
            .ok_or("a key is id:secret (the secret at least 16 characters)")?;
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!("key id {id:?}: give letters, digits, - or _"));
        }
        if secret.len() < SECRET_MIN_LEN {
            return Err(format!(
                "the secret of key {id} is {} bytes; give at least {SECRET_MIN_LEN}",
                secret.len()
            ));
        }
        Ok(Self {
            id: id.to_owned(),
            secret: secret.as_bytes().to_vec(),
        })
    }

    /// A new key named `id` with a random secret, as `id:secret`.
    pub fn generate(id: &str) -> String {
        format!(
            "{id}:{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        )
    }

    fn mac(
        &self,
        method: &Method,
        path: &str,
        timestamp: i64,
        nonce: &str,
        body: &[u8],
    ) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(format!("{method}\n{path}\n{timestamp}\n{nonce}\n").as_bytes());
        mac.update(body);
        mac
    }

    /// The headers that sign a call of `method` to `path` (with its query)
    /// carrying `body`, at `timestamp`, with a new nonce.
    pub fn sign(
        &self,
        method: &Method,
        path: &str,
        timestamp: i64,
        body: &[u8],
    ) -> [(&'static str, HeaderValue); 4] {
        let nonce = next_nonce();
        let mac = self.mac(method, path, timestamp, &nonce, body);
        let signature = STANDARD.encode(mac.finalize().into_bytes());
        let value = |text: String| HeaderValue::from_str(&text).expect("ASCII");
        [
            (KEY_ID, value(self.id.clone())),
            (TIMESTAMP, value(timestamp.to_string())),
            (NONCE, value(nonce)),
            (SIGNATURE, value(format!("v1={signature}"))),
        ]
    }
}

/// A value no other call of this process or another has: a random
/// prefix drawn once per process, and a counter (no system call a call).
fn next_nonce() -> String {
    static PREFIX: std::sync::LazyLock<u64> =
        std::sync::LazyLock::new(|| uuid::Uuid::new_v4().as_u64_pair().0);
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:016x}{n:x}", *PREFIX)
}

/// The keys a participant accepts: `id:secret[,id:secret]`.
pub fn parse_keys(text: &str) -> Result<Vec<Key>, String> {
    let keys: Vec<Key> = text
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(Key::parse)
        .collect::<Result<_, _>>()?;
    if keys.is_empty() {
        return Err("give at least one key, id:secret".into());
    }
    Ok(keys)
}

/// A participant's authentication settings.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ParticipantAuth {
    /// The keys the orchestrator signs calls with, `id:secret` (two,
    /// comma-separated, during a rotation); or the file AUTH_KEYS_FILE
    /// names. Unset: calls are not authenticated (a warning at start).
    #[arg(long, env = "AUTH_KEYS", hide_env_values = true)]
    pub auth_keys: Option<String>,
}

/// Why a call was refused, as a label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Refusal {
    reason: &'static str,
}

/// Checks each call's signature; cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    keys: Arc<Vec<Key>>,
    /// Signatures seen, with when they may be forgotten.
    seen: Arc<Mutex<Seen>>,
    refusals: Family<Refusal, Counter>,
}

#[derive(Default)]
struct Seen {
    until: HashMap<[u8; 32], i64>,
    /// The size after the last sweep: the next sweep comes at twice it.
    swept: usize,
}

impl Verifier {
    /// A verifier of `keys`, its refusals counted in `registry`.
    pub fn new(keys: Vec<Key>, registry: &mut prometheus_client::registry::Registry) -> Self {
        let refusals = Family::<Refusal, Counter>::default();
        registry.register(
            "auth_refusals",
            "Calls refused with 401, by reason (missing, unknown_key, expired, bad_signature, replayed)",
            refusals.clone(),
        );
        Self {
            keys: Arc::new(keys),
            seen: Arc::default(),
            refusals,
        }
    }

    /// `router` with every call but the open paths checked.
    pub fn layer(&self, router: Router) -> Router {
        router.layer(axum::middleware::from_fn_with_state(self.clone(), verify))
    }

    fn check(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<(), &'static str> {
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(id), Some(timestamp), Some(nonce), Some(signature)) = (
            header(KEY_ID),
            header(TIMESTAMP),
            header(NONCE),
            header(SIGNATURE),
        ) else {
            return Err("missing");
        };
        let key = self.keys.iter().find(|k| k.id == id).ok_or("unknown_key")?;
        let timestamp: i64 = timestamp.parse().map_err(|_| "expired")?;
        if (now - timestamp).abs() > WINDOW_SECS {
            return Err("expired");
        }
        let given: [u8; 32] = signature
            .strip_prefix("v1=")
            .and_then(|s| STANDARD.decode(s).ok())
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or("bad_signature")?;
        key.mac(method, path, timestamp, nonce, body)
            .verify_slice(&given)
            .map_err(|_| "bad_signature")?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.until.get(&given).is_some_and(|&until| until >= now) {
            return Err("replayed");
        }
        if seen.until.len() >= (seen.swept * 2).max(1024) {
            seen.until.retain(|_, until| *until >= now);
            seen.swept = seen.until.len();
        }
        seen.until.insert(given, timestamp + 2 * WINDOW_SECS);
        Ok(())
    }
}

async fn verify(State(verifier): State<Verifier>, req: Request, next: Next) -> Response {
    if OPEN.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, crate::server::BODY_LIMIT).await else {
        return ErrorBody::new(
            "body_too_large",
            format!(
                "the body is larger than the {} bytes a request may carry; send less",
                crate::server::BODY_LIMIT
            ),
        )
        .into_response_with(StatusCode::PAYLOAD_TOO_LARGE);
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |p| p.as_str());
    let now = chrono::Utc::now().timestamp();
    if let Err(reason) = verifier.check(&parts.method, path, &parts.headers, &body, now) {
        verifier.refusals.get_or_create(&Refusal { reason }).inc();
        tracing::warn!(reason, method = %parts.method, path = %path.escape_debug(), "call refused: not signed by the orchestrator");
        return ErrorBody::new(
            "unauthenticated",
            format!("this call is not signed by the orchestrator ({reason}); only the orchestrator calls a participant"),
        )
        .into_response_with(StatusCode::UNAUTHORIZED);
    }
    next.run(Request::from_parts(parts, Body::from(body))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(keys: &str) -> Verifier {
        Verifier::new(parse_keys(keys).unwrap(), &mut Default::default())
    }

    fn signed(key: &str, method: &Method, path: &str, at: i64, body: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in Key::parse(key).unwrap().sign(method, path, at, body) {
            headers.insert(name, value);
        }
        headers
    }

    #[test]
    fn only_a_fresh_call_signed_with_a_key_held_passes_once() {
        let v = verifier("k2:0123456789abcdef0123,k1:fedcba9876543210fedc");
        let post = Method::POST;
        let body = br#"{"trip_id":"t1"}"#;
        let ok = signed(
            "k1:fedcba9876543210fedc",
            &post,
            "/reservations",
            1000,
            body,
        );
        assert_eq!(v.check(&post, "/reservations", &ok, body, 1010), Ok(()));
        assert_eq!(
            v.check(&post, "/reservations", &ok, body, 1011),
            Err("replayed")
        );
        // A second attempt in the same second is signed anew.
        let again = signed(
            "k1:fedcba9876543210fedc",
            &post,
            "/reservations",
            1000,
            body,
        );
        assert_eq!(v.check(&post, "/reservations", &again, body, 1011), Ok(()));
        // Both keys of a rotation.
        let other = signed(
            "k2:0123456789abcdef0123",
            &post,
            "/reservations",
            1000,
            body,
        );
        assert_eq!(v.check(&post, "/reservations", &other, body, 1000), Ok(()));
        // Anything changed: the body, the path, the method, the key.
        let fresh = signed(
            "k1:fedcba9876543210fedc",
            &post,
            "/reservations",
            1001,
            body,
        );
        assert_eq!(
            v.check(&post, "/reservations", &fresh, b"{}", 1001),
            Err("bad_signature")
        );
        assert_eq!(
            v.check(&post, "/rentals", &fresh, body, 1001),
            Err("bad_signature")
        );
        assert_eq!(
            v.check(&Method::PUT, "/reservations", &fresh, body, 1001),
            Err("bad_signature")
        );
        let stranger = signed(
            "k3:0123456789abcdef0123",
            &post,
            "/reservations",
            1001,
            body,
        );
        assert_eq!(
            v.check(&post, "/reservations", &stranger, body, 1001),
            Err("unknown_key")
        );
        let forged = signed(
            "k1:0000000000000000000000",
            &post,
            "/reservations",
            1001,
            body,
        );
        assert_eq!(
            v.check(&post, "/reservations", &forged, body, 1001),
            Err("bad_signature")
        );
        // Too old, too new, unsigned.
        assert_eq!(
            v.check(&post, "/reservations", &fresh, body, 1001 + 61),
            Err("expired")
        );
        assert_eq!(
            v.check(&post, "/reservations", &fresh, body, 1001 - 61),
            Err("expired")
        );
        assert_eq!(
            v.check(&post, "/reservations", &HeaderMap::new(), body, 1001),
            Err("missing")
        );
    }

    #[test]
    fn keys_are_id_and_a_long_enough_secret() {
        assert!(parse_keys("").is_err());
        assert!(parse_keys("k1:short").is_err());
        assert!(parse_keys("nocolon").is_err());
        assert!(parse_keys("k 1:0123456789abcdef").is_err());
        assert_eq!(parse_keys(&Key::generate("k1")).unwrap()[0].id, "k1");
        assert!(!format!("{:?}", Key::parse("k1:0123456789abcdef").unwrap()).contains("0123"));
    }
}
