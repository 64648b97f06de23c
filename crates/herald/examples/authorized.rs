//! Per-user topics: each user may subscribe to `user:{their id}` only, with a token
//! from a login stub.
//!
//! ```sh
//! cargo run -p herald --example authorized
//! TOKEN=$(curl -s -X POST http://127.0.0.1:3000/login -H 'Content-Type: application/json' \
//!   -d '{"user": "alice"}' | sed 's/.*"token":"\([^"]*\)".*/\1/')
//! curl -N "http://127.0.0.1:3000/events?topic=user:alice&access_token=$TOKEN"   # 200, a stream
//! curl -i "http://127.0.0.1:3000/events?topic=user:bob&access_token=$TOKEN"     # 403, JSON
//! curl -i "http://127.0.0.1:3000/events?topic=user:alice"                       # 401, JSON
//! # from another terminal, as anyone logged in (here alice notifies herself):
//! curl -X POST http://127.0.0.1:3000/notify/alice -H "Authorization: Bearer $TOKEN" \
//!   -H 'Content-Type: application/json' -d '{"text": "your report is ready"}'
//! ```
//!
//! Settings, from the environment: `ADDR` (default `127.0.0.1:3000`; the first line
//! on stdout is `listening on http://<addr>`) and `JWT_SECRET` (HS256, at least 16
//! bytes; a demo secret when unset, never use that one in production).
//!
//! - `POST /login {"user": "alice"}` is a stub standing in for a real login: it checks
//!   nothing but the name's shape and answers `{"user", "topic", "token",
//!   "expires_at"}`. The token is a JWT with `sub` = the user and the Herald claim
//!   `{"subscribe": ["user:{sub}"]}`, minted with [`herald::auth::jwt::mint`].
//! - `GET /events?topic=user:alice` is the hub's route, guarded by Herald's JWT
//!   authorizer ([`herald::auth::jwt::JwtAuthorizer`]): the token comes as
//!   `Authorization: Bearer`, or as `?access_token=` for `EventSource`, which cannot
//!   send headers. No token or a bad one: `401`; another user's topic: `403` listing
//!   the denied topics. The stream ends when the token expires (the client logs in
//!   again and reconnects with its cursor).
//! - `POST /notify/{user} {"text"}` needs a logged-in sender (Bearer token) and
//!   publishes `notification` `{"id", "from", "text"}` to `user:{user}` with
//!   [`herald::Hub::publish`]: only that user's streams get it. The hub's own
//!   `POST /publish` stays closed to these tokens (they grant no `publish` rights).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use herald::auth::jwt::{self, Claims, HeraldClaim, JwtAuthorizer, JwtConfig, JwtKey};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::json;

/// Only for trying the example out.
const DEMO_SECRET: &str = "herald-demo-secret-change-me";
const TOKEN_TTL_SECS: u64 = 3600;

#[derive(Clone)]
struct AppState {
    hub: herald::Hub,
    secret: Arc<[u8]>,
    next_id: Arc<AtomicU64>,
}

fn error(status: StatusCode, code: &str, detail: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": code, "detail": detail.into() })),
    )
        .into_response()
}

fn bad_json(rejection: &JsonRejection) -> Response {
    let (status, code) = match rejection {
        JsonRejection::JsonSyntaxError(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
        JsonRejection::JsonDataError(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
        JsonRejection::MissingJsonContentType(_) => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
        }
        _ => (rejection.status(), "invalid_request"),
    };
    error(status, code, rejection.body_text())
}

/// A user name that makes a valid topic `user:{name}`.
fn valid_user(user: &str) -> bool {
    (1..=64).contains(&user.len())
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    user: String,
}

async fn login(State(app): State<AppState>, body: Result<Json<Login>, JsonRejection>) -> Response {
    let Json(Login { user }) = match body {
        Ok(b) => b,
        Err(e) => return bad_json(&e),
    };
    if !valid_user(&user) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "user must be 1 to 64 characters of A-Z a-z 0-9 _ - .",
        );
    }
    let exp = jwt::now_secs() + TOKEN_TTL_SECS;
    let claims = Claims {
        sub: Some(user.clone()),
        exp,
        nbf: None,
        aud: None,
        iss: None,
        herald: HeraldClaim {
            subscribe: vec!["user:{sub}".into()],
            publish: Vec::new(),
        },
    };
    match jwt::mint(&app.secret, &claims) {
        Ok(token) => Json(json!({
            "user": user,
            "topic": format!("user:{user}"),
            "token": token,
            "expires_at": exp,
        }))
        .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

/// The sender's user name, from a valid Bearer token.
fn sender(secret: &[u8], headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp"]);
    jsonwebtoken::decode::<Claims>(token.trim(), &DecodingKey::from_secret(secret), &validation)
        .ok()?
        .claims
        .sub
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Notify {
    text: String,
}

async fn notify(
    State(app): State<AppState>,
    Path(user): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Notify>, JsonRejection>,
) -> Response {
    let Some(from) = sender(&app.secret, &headers) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "log in first: POST /login, then send Authorization: Bearer <token>",
        );
    };
    let Json(Notify { text }) = match body {
        Ok(b) => b,
        Err(e) => return bad_json(&e),
    };
    if !valid_user(&user) {
        return error(StatusCode::BAD_REQUEST, "bad_user", "no such user name");
    }
    if text.trim().is_empty() || text.chars().count() > 500 {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "text must be 1 to 500 characters",
        );
    }
    let id = app.next_id.fetch_add(1, Ordering::Relaxed);
    let topic = format!("user:{user}");
    let data = json!({ "id": id, "from": from, "text": text });
    match app.hub.publish(&topic, "notification", &data).await {
        Ok(position) => Json(json!({
            "id": id,
            "topic": topic,
            "position": position.to_string(),
        }))
        .into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = std::env::var("JWT_SECRET").unwrap_or_else(|_| DEMO_SECRET.into());
    let hub = herald::Hub::new(herald::HubConfig::default())?;
    hub.set_authorizer(JwtAuthorizer::new(&JwtConfig {
        key: Some(JwtKey::Secret(secret.clone().into_bytes())),
        ..JwtConfig::default()
    })?);
    let state = AppState {
        hub: hub.clone(),
        secret: secret.into_bytes().into(),
        next_id: Arc::new(AtomicU64::new(1)),
    };
    let app = Router::new()
        .route("/login", post(login))
        .route("/notify/{user}", post(notify))
        .with_state(state)
        .merge(hub.router());

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            hub.shutdown();
        })
        .await?;
    Ok(())
}
