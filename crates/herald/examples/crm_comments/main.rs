//! A collaborative comment system: REST CRUD over SQLite, live updates with Herald.
//!
//! ```sh
//! cargo run -p herald --example crm_comments
//! # open http://127.0.0.1:3000/ in two browser windows (?thread=2 for another thread)
//! ```
//!
//! Settings, from the environment:
//!
//! - `ADDR`: where to listen, default `127.0.0.1:3000` (`127.0.0.1:0` picks a free
//!   port); the first line on stdout is `listening on http://<addr>`.
//! - `DATABASE_URL`: the SQLite database, default `sqlite://crm_comments.db?mode=rwc`
//!   (created, with its table, when missing).
//! - `REDIS_URL`: when set, the hub runs on Redis (several instances of this app act
//!   as one); otherwise in memory.
//!
//! The REST API is the source of truth; events only say *what* changed, by id
//! (notify, then fetch):
//!
//! | request | answer | event on `thread:{id}` |
//! |---|---|---|
//! | `GET /threads/{id}/comments` | `200` the thread's comments, oldest first | |
//! | `GET /threads/{id}/comments/{cid}` | `200` one comment, `404` | |
//! | `POST /threads/{id}/comments` `{"author", "body"}` | `201` the comment | `comment_created` `{"id", "thread_id"}` |
//! | `PUT`/`PATCH /threads/{id}/comments/{cid}` `{"body"}` | `200` the comment, `404` | `comment_updated` `{"id", "thread_id"}` |
//! | `DELETE /threads/{id}/comments/{cid}` | `200` `{"id", "thread_id"}`, `404` | `comment_deleted` `{"id", "thread_id"}` |
//!
//! Errors are JSON `{"error": "<code>", "detail": "<text>"}` (plus `"field"` for a
//! validation error), with the hub's codes where they mean the same: `400
//! malformed_json`, `400 invalid_request` (missing or unknown field, wrong type),
//! `400 bad_id`, `415 unsupported_media_type`, `422 validation_failed` (blank or too
//! long `author`/`body`, with `"field"`), `404 not_found`.
//!
//! `GET /` is a page (plain HTML and JavaScript, no build step) that shows a thread,
//! posts, edits and deletes comments, and refetches the thread when an event says it
//! changed, when the hub sends `herald.reset`, and when it subscribes anew; the
//! badge at the top shows the connection: connecting, live or reconnecting.
//! `GET /events?topic=thread:1` and the hub's other routes are merged in as they are.
//!
//! Create and update publish with [`herald::Hub::publish`] from the handler (the
//! response carries the whole comment, the event only its ids); delete shows the
//! other way, [`herald::Hub::publish_response`], a layer that publishes the
//! handler's JSON response. SIGTERM or Ctrl-C end every stream with a `retry:` hint
//! and exit once the connections are closed.

use std::str::FromStr;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};

/// The page, embedded in the binary.
const INDEX_HTML: &str = include_str!("index.html");

const MAX_AUTHOR_CHARS: usize = 80;
const MAX_BODY_CHARS: usize = 5000;

#[derive(Clone)]
struct AppState {
    db: SqlitePool,
    hub: herald::Hub,
}

/// A comment as the API returns it.
#[derive(Debug, Serialize)]
struct Comment {
    id: i64,
    thread_id: i64,
    author: String,
    body: String,
    created_at: String,
    updated_at: String,
}

impl Comment {
    fn from_row(row: &SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            thread_id: row.try_get("thread_id")?,
            author: row.try_get("author")?,
            body: row.try_get("body")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }

    fn reference(&self) -> CommentRef {
        CommentRef {
            id: self.id,
            thread_id: self.thread_id,
        }
    }
}

/// What an event carries: which comment of which thread changed.
#[derive(Debug, Serialize)]
struct CommentRef {
    id: i64,
    thread_id: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewComment {
    author: String,
    body: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommentEdit {
    body: String,
}

/// An error answer: `{"error": code, "detail": text, "field"?: name}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    field: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            field: None,
        }
    }

    fn invalid(field: &'static str, detail: impl Into<String>) -> Self {
        Self {
            field: Some(field),
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                detail,
            )
        }
    }

    fn not_found(thread_id: i64, id: i64) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no comment {id} in thread {thread_id}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.code, "detail": self.detail });
        if let Some(field) = self.field {
            body["field"] = json!(field);
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        // The hub's own codes and statuses for the same mistakes.
        let (status, code) = match &rejection {
            JsonRejection::JsonSyntaxError(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            JsonRejection::JsonDataError(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            JsonRejection::MissingJsonContentType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
            }
            _ => (rejection.status(), "invalid_request"),
        };
        Self::new(status, code, rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad_id",
            format!(
                "thread and comment ids are integers: {}",
                rejection.body_text()
            ),
        )
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        // Logged in full, answered without internals.
        eprintln!("crm_comments: database error: {e}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the database failed; try again",
        )
    }
}

/// Checks and trims a text field: not blank, at most `max` characters.
fn text(field: &'static str, value: &str, max: usize) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ApiError::invalid(
            field,
            format!("{field} must not be empty"),
        ));
    }
    if value.chars().count() > max {
        return Err(ApiError::invalid(
            field,
            format!("{field} is longer than {max} characters"),
        ));
    }
    Ok(value.to_owned())
}

/// Publishes a change. The write is already committed, so a failed publish is logged
/// and the request still succeeds: subscribers get `herald.reset` or refetch later.
async fn notify(hub: &herald::Hub, event: &str, comment: &Comment) {
    let topic = format!("thread:{}", comment.thread_id);
    if let Err(e) = hub.publish(&topic, event, &comment.reference()).await {
        eprintln!("crm_comments: {event} on {topic} not published: {e}");
    }
}

async fn list_comments(
    State(app): State<AppState>,
    path: Result<Path<i64>, PathRejection>,
) -> Result<Json<Vec<Comment>>, ApiError> {
    let Path(thread_id) = path?;
    let rows = sqlx::query(
        "SELECT id, thread_id, author, body, created_at, updated_at
         FROM comments WHERE thread_id = ? ORDER BY id",
    )
    .bind(thread_id)
    .fetch_all(&app.db)
    .await?;
    let comments = rows
        .iter()
        .map(Comment::from_row)
        .collect::<Result<_, _>>()?;
    Ok(Json(comments))
}

async fn get_comment(
    State(app): State<AppState>,
    path: Result<Path<(i64, i64)>, PathRejection>,
) -> Result<Json<Comment>, ApiError> {
    let Path((thread_id, id)) = path?;
    let row = sqlx::query(
        "SELECT id, thread_id, author, body, created_at, updated_at
         FROM comments WHERE thread_id = ? AND id = ?",
    )
    .bind(thread_id)
    .bind(id)
    .fetch_optional(&app.db)
    .await?
    .ok_or_else(|| ApiError::not_found(thread_id, id))?;
    Ok(Json(Comment::from_row(&row)?))
}

async fn create_comment(
    State(app): State<AppState>,
    path: Result<Path<i64>, PathRejection>,
    body: Result<Json<NewComment>, JsonRejection>,
) -> Result<(StatusCode, Json<Comment>), ApiError> {
    let Path(thread_id) = path?;
    let Json(new) = body?;
    let author = text("author", &new.author, MAX_AUTHOR_CHARS)?;
    let body = text("body", &new.body, MAX_BODY_CHARS)?;
    let row = sqlx::query(
        "INSERT INTO comments (thread_id, author, body) VALUES (?, ?, ?)
         RETURNING id, thread_id, author, body, created_at, updated_at",
    )
    .bind(thread_id)
    .bind(author)
    .bind(body)
    .fetch_one(&app.db)
    .await?;
    let comment = Comment::from_row(&row)?;
    notify(&app.hub, "comment_created", &comment).await;
    Ok((StatusCode::CREATED, Json(comment)))
}

async fn update_comment(
    State(app): State<AppState>,
    path: Result<Path<(i64, i64)>, PathRejection>,
    body: Result<Json<CommentEdit>, JsonRejection>,
) -> Result<Json<Comment>, ApiError> {
    let Path((thread_id, id)) = path?;
    let Json(edit) = body?;
    let body = text("body", &edit.body, MAX_BODY_CHARS)?;
    let row = sqlx::query(
        "UPDATE comments SET body = ?, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
         WHERE thread_id = ? AND id = ?
         RETURNING id, thread_id, author, body, created_at, updated_at",
    )
    .bind(body)
    .bind(thread_id)
    .bind(id)
    .fetch_optional(&app.db)
    .await?
    .ok_or_else(|| ApiError::not_found(thread_id, id))?;
    let comment = Comment::from_row(&row)?;
    notify(&app.hub, "comment_updated", &comment).await;
    Ok(Json(comment))
}

/// Answers the deleted comment's ids; the `publish_response` layer on the route
/// publishes exactly this answer as `comment_deleted` (errors are not published).
async fn delete_comment(
    State(app): State<AppState>,
    path: Result<Path<(i64, i64)>, PathRejection>,
) -> Result<Json<CommentRef>, ApiError> {
    let Path((thread_id, id)) = path?;
    let deleted = sqlx::query("DELETE FROM comments WHERE thread_id = ? AND id = ?")
        .bind(thread_id)
        .bind(id)
        .execute(&app.db)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::not_found(thread_id, id));
    }
    Ok(Json(CommentRef { id, thread_id }))
}

async fn index() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(INDEX_HTML))
}

/// Opens (and creates, when missing) the database and its table.
async fn open_db(url: &str) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5));
    let db = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS comments (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            thread_id INTEGER NOT NULL,
            author TEXT NOT NULL,
            body TEXT NOT NULL,
            created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        )",
    )
    .execute(&db)
    .await?;
    sqlx::query("CREATE INDEX IF NOT EXISTS comments_by_thread ON comments (thread_id, id)")
        .execute(&db)
        .await?;
    Ok(db)
}

/// The hub: on Redis when `REDIS_URL` is set, in memory otherwise.
async fn open_hub() -> Result<herald::Hub, Box<dyn std::error::Error>> {
    let config = herald::HubConfig::default();
    Ok(match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            let redis = herald::RedisConfig {
                urls: vec![url],
                ..herald::RedisConfig::default()
            };
            herald::Hub::with_redis(config, redis).await?
        }
        _ => herald::Hub::new(config)?,
    })
}

/// The app's routes, with the hub's merged in.
fn app(state: AppState) -> Router {
    let hub = state.hub.clone();
    let one = get(get_comment)
        .put(update_comment)
        .patch(update_comment)
        .merge(
            axum::routing::delete(delete_comment)
                .layer(hub.publish_response("thread:{id}", "comment_deleted")),
        );
    Router::new()
        .route("/", get(index))
        .route(
            "/threads/{id}/comments",
            get(list_comments).post(create_comment),
        )
        .route("/threads/{id}/comments/{cid}", one)
        .with_state(state)
        .merge(hub.router())
}

/// Completes on SIGTERM or Ctrl-C, after ending every event stream with a `retry:`
/// hint (so the server's graceful shutdown does not wait for them).
async fn shutdown_signal(hub: herald::Hub) {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    eprintln!("crm_comments: shutting down");
    hub.shutdown();
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "sqlite://crm_comments.db?mode=rwc".into());
    let db = open_db(&url).await?;
    let hub = open_hub().await?;
    let app = app(AppState {
        db: db.clone(),
        hub: hub.clone(),
    });

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal(hub))
        .await?;
    db.close().await;
    Ok(())
}
