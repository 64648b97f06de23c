use futures_util::StreamExt;
use herald_client::{Client, ClientError, Message};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Comment {
    pub id: u64,
    pub body: String,
}

/// What the rest of the app learns from the hub.
#[derive(Debug, PartialEq)]
pub enum Update {
    Comment(Comment),
    Refetch(Vec<String>),
}

/// Follows `comments` and this session's topic until the session is opened
/// elsewhere; reconnects and resumes by itself meanwhile.
pub async fn follow(
    url: &str,
    session: &str,
    updates: mpsc::Sender<Update>,
) -> Result<(), ClientError> {
    let topics = ["comments".to_owned(), format!("session:{session}")];
    let mut messages = Client::new(url)?.subscribe(topics).stream();
    while let Some(message) = messages.next().await {
        let update = match message? {
            Message::Event(event) if event.name == "comment_created" => {
                Update::Comment(event.json()?)
            }
            Message::Reset { topics } => Update::Refetch(topics),
            Message::Replaced { .. } => break, // the session is open elsewhere
            _ => continue, // Connected, Disconnected (it retries by itself), other events
        };
        if updates.send(update).await.is_err() {
            break; // nobody listens any more
        }
    }
    Ok(())
}

/// Publishes from this or any other service; returns the event's position.
pub async fn announce(url: &str, comment: &Comment) -> Result<String, ClientError> {
    let publisher = Client::new(url)?.publisher().key("backend-key-0123456789");
    publisher
        .publish("comments", "comment_created", comment)
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("HERALD_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let (tx, mut updates) = mpsc::channel(16);
    let following = tokio::spawn({
        let url = url.clone();
        async move { follow(&url, "3f9c", tx).await }
    });

    let position = announce(
        &url,
        &Comment {
            id: 7,
            body: "Looks good".into(),
        },
    )
    .await?;
    println!("published at {position}");
    while let Some(update) = updates.recv().await {
        println!("{update:?}");
    }
    following.await??;
    Ok(())
}
