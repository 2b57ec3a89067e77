//! Who may call the orchestrator's API and console. With `API_KEYS`, every
//! request but the probes, `/metrics`, `/openapi.json` and the console's
//! login carries a key, as `Authorization: Bearer <key>` or as the cookie
//! the console's login sets, and the key's scope bounds what it may do:
//!
//! - `read`: look (every `GET` but `/trip`, which starts a trip), and the
//!   definition checks that change nothing (validate, dry runs);
//! - `start`: that, and start sagas (`GET /trip`, `POST /trips`,
//!   `POST /sagas/{definition}`);
//! - `operator`: everything, operator actions, definitions and webhooks
//!   included.
//!
//! Without `API_KEYS` the API is open, as the local sample runs it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use common::error::ErrorBody;
use subtle::ConstantTimeEq;

/// The name of the console's cookie that carries a key.
pub const COOKIE: &str = "saga_api_key";

/// What a key may do; each scope may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Start,
    Operator,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Start => "start",
            Scope::Operator => "operator",
        }
    }
}

/// One key of `API_KEYS`.
#[derive(Clone)]
struct ApiKey {
    id: String,
    scope: Scope,
    secret: Vec<u8>,
}

/// The keys, once `API_KEYS` gives some.
#[derive(Clone)]
pub struct Access {
    keys: Arc<Vec<ApiKey>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Access").field("keys", &ids).finish()
    }
}

impl Access {
    /// Parses `API_KEYS`: comma-separated `id:scope:secret`, the scope
    /// `read`, `start` or `operator`, the secret at least 16 characters.
    pub fn parse(keys: &str) -> anyhow::Result<Self> {
        let mut parsed = Vec::new();
        for entry in keys.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let mut parts = entry.splitn(3, ':');
            let (Some(id), Some(scope), Some(secret)) = (parts.next(), parts.next(), parts.next())
            else {
                anyhow::bail!("an API key is not id:scope:secret");
            };
            let scope = match scope {
                "read" => Scope::Read,
                "start" => Scope::Start,
                "operator" => Scope::Operator,
                other => {
                    anyhow::bail!("API key {id}: scope {other:?} is not read, start or operator")
                }
            };
            anyhow::ensure!(
                secret.len() >= 16,
                "API key {id}: the secret is shorter than 16 characters"
            );
            parsed.push(ApiKey {
                id: id.to_owned(),
                scope,
                secret: secret.as_bytes().to_vec(),
            });
        }
        anyhow::ensure!(!parsed.is_empty(), "API_KEYS holds no key");
        Ok(Self {
            keys: Arc::new(parsed),
        })
    }

    /// The key whose secret is `given`, comparing in constant time.
    fn find(&self, given: &[u8]) -> Option<&ApiKey> {
        self.keys
            .iter()
            .find(|k| bool::from(k.secret.as_slice().ct_eq(given)))
    }

    /// Whether `given` is one of the keys (the console's login).
    pub fn knows(&self, given: &str) -> bool {
        self.find(given.as_bytes()).is_some()
    }
}

/// The console's login page, and what it answers a key with.
#[derive(askama::Template)]
#[template(path = "login.html")]
struct LoginPage {
    refused: Option<&'static str>,
}

/// `GET /ui/login` and `POST /ui/login`: the form, and a known key kept
/// in an `HttpOnly`, `SameSite=Strict` cookie for half a day.
pub fn login_router(access: Access) -> axum::Router {
    axum::Router::new()
        .route("/ui/login", axum::routing::get(login_form).post(login))
        .with_state(access)
}

async fn login_form() -> Response {
    login_page(StatusCode::OK, None)
}

#[derive(serde::Deserialize)]
struct LoginForm {
    key: String,
}

async fn login(State(access): State<Access>, axum::Form(form): axum::Form<LoginForm>) -> Response {
    if !access.knows(&form.key) {
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some("That is not one of this orchestrator's keys."),
        );
    }
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200",
        form.key
    );
    match HeaderValue::from_str(&cookie) {
        Ok(cookie) => ([(header::SET_COOKIE, cookie)], Redirect::to("/ui")).into_response(),
        Err(_) => login_page(
            StatusCode::BAD_REQUEST,
            Some("A key holds only printable characters."),
        ),
    }
}

fn login_page(status: StatusCode, refused: Option<&'static str>) -> Response {
    use askama::Template;
    match (LoginPage { refused }).render() {
        Ok(body) => (status, axum::response::Html(body)).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Whether a call to `path` needs a key (when `API_KEYS` gives some).
pub fn needs_a_key(path: &str) -> bool {
    !matches!(
        path,
        "/healthz" | "/readyz" | "/metrics" | "/openapi.json" | "/ui/login"
    )
}

/// The scope a request needs, or none for the paths open to anyone.
fn needed(method: &Method, path: &str) -> Option<Scope> {
    if !needs_a_key(path) {
        return None;
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let scope = match (method.as_str(), segments.as_slice()) {
        ("GET" | "HEAD", ["trip"]) => Scope::Start,
        ("GET" | "HEAD", _) => Scope::Read,
        ("POST", ["trips"]) => Scope::Start,
        ("POST", ["sagas", definition]) if !matches!(*definition, "counts") => Scope::Start,
        ("POST", ["definitions", "validate" | "dry-run"]) => Scope::Read,
        ("POST", ["definitions", _, "dry-run"]) => Scope::Read,
        _ => Scope::Operator,
    };
    Some(scope)
}

/// The key a request carries: its bearer token, else the console's cookie.
fn carried(req: &Request) -> Option<&[u8]> {
    let headers = req.headers();
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    {
        return Some(token);
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            pair.trim_ascii()
                .strip_prefix(COOKIE.as_bytes())?
                .strip_prefix(b"=")
        })
}

/// The check, before any handler: a request without a known key gets 401
/// (a console page: the login page), one whose key's scope is too low 403;
/// each refusal logged with the key's id (never its secret).
pub async fn check(State(access): State<Access>, req: Request, next: Next) -> Response {
    let Some(scope) = needed(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let Some(key) = carried(&req).and_then(|given| access.find(given)) else {
        tracing::warn!(method = %req.method(), path = req.uri().path(), "API call without a known key refused");
        if req.method() == Method::GET && req.uri().path().starts_with("/ui") {
            return Redirect::to("/ui/login").into_response();
        }
        let mut refused = ErrorBody::new(
            "unauthenticated",
            "this orchestrator takes calls with a key only: send `Authorization: Bearer <key>` with one of API_KEYS",
        )
        .into_response_with(StatusCode::UNAUTHORIZED);
        refused
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return refused;
    };
    if key.scope < scope {
        tracing::warn!(key = key.id, method = %req.method(), path = req.uri().path(), "API call beyond its key's scope refused");
        return ErrorBody::new(
            "forbidden",
            format!(
                "key {} has the scope {}; {} {} needs {}",
                key.id,
                key.scope.name(),
                req.method(),
                req.uri().path(),
                scope.name()
            ),
        )
        .into_response_with(StatusCode::FORBIDDEN);
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_needs_the_scope_of_what_it_does() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(needed(&get, "/healthz"), None);
        assert_eq!(needed(&get, "/ui/login"), None);
        assert_eq!(needed(&get, "/sagas"), Some(Scope::Read));
        assert_eq!(needed(&get, "/ui/sagas/travel/t1"), Some(Scope::Read));
        assert_eq!(needed(&get, "/trip"), Some(Scope::Start));
        assert_eq!(needed(&post, "/trips"), Some(Scope::Start));
        assert_eq!(needed(&post, "/sagas/travel"), Some(Scope::Start));
        assert_eq!(needed(&post, "/definitions/validate"), Some(Scope::Read));
        assert_eq!(
            needed(&post, "/definitions/travel/dry-run"),
            Some(Scope::Read)
        );
        assert_eq!(
            needed(&post, "/sagas/travel/t1/abort"),
            Some(Scope::Operator)
        );
        assert_eq!(
            needed(&Method::PUT, "/definitions/shop"),
            Some(Scope::Operator)
        );
        assert_eq!(
            needed(&Method::DELETE, "/webhooks/wh_1"),
            Some(Scope::Operator)
        );
        assert_eq!(needed(&post, "/webhooks"), Some(Scope::Operator));
    }

    #[test]
    fn keys_are_id_scope_secret_and_bad_ones_are_refused_naming_the_key() {
        let access =
            Access::parse("ops:operator:0123456789abcdef, ro:read:fedcba9876543210").unwrap();
        assert!(access.knows("fedcba9876543210"));
        assert!(!access.knows("fedcba987654321"));
        for (bad, says) in [
            ("ops:admin:0123456789abcdef", "scope \"admin\""),
            ("ops:read:short", "shorter than 16"),
            ("ops", "not id:scope:secret"),
            ("", "no key"),
        ] {
            let err = Access::parse(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
