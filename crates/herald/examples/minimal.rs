//! Real-time updates in an existing axum API in three lines: a hub, a layer that
//! publishes a handler's response, and the hub's routes merged into the app.
//!
//! `cargo run -p herald --example minimal`, then
//! `curl -N 'http://127.0.0.1:3000/events?topic=comments'` and
//! `curl -X POST http://127.0.0.1:3000/comments -H 'Content-Type: application/json' -d '{"text": "hi"}'`.

use axum::routing::post;
use axum::{Json, Router};

async fn create_comment(Json(comment): Json<serde_json::Value>) -> Json<serde_json::Value> {
    // Save it in your store here; the response is what subscribers are notified with.
    Json(comment)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let hub = herald::Hub::new(herald::HubConfig::default())?; // 1
    let app = Router::new()
        .route(
            "/comments",
            post(create_comment).layer(hub.publish_response("comments", "comment_created")), // 2
        )
        .merge(hub.router()); // 3

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
