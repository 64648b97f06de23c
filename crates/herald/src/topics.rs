//! Topic conventions: `user:<id>` for one user's notifications, `session:<id>`
//! for one client session (exclusive when `session:` is among
//! [`HubConfig::exclusive_prefixes`](crate::HubConfig::exclusive_prefixes)).
//!
//! Nothing in the hub depends on these names; they are the conventions the
//! helpers ([`Hub::publish_to_user`](crate::Hub::publish_to_user),
//! [`Hub::publish_to_session`](crate::Hub::publish_to_session)), the JWT claim
//! patterns (`user:{sub}`) and the examples share. Ids are validated like any
//! topic name, so an id cannot smuggle a `,` (another topic) or a line break.
//!
//! ```
//! use herald::topics;
//! assert_eq!(topics::user("42").unwrap().as_str(), "user:42");
//! assert_eq!(topics::session("a1b2").unwrap().as_str(), "session:a1b2");
//! assert!(topics::user("42,admin").is_err());
//! assert!(topics::user("").is_err());
//! ```

use crate::event::{NameError, Topic};

/// The prefix of per-user topics.
pub const USER_PREFIX: &str = "user:";
/// The prefix of per-session topics.
pub const SESSION_PREFIX: &str = "session:";

/// `user:<user_id>`.
pub fn user(user_id: &str) -> Result<Topic, NameError> {
    with_prefix(USER_PREFIX, user_id)
}

/// `session:<session_id>`.
pub fn session(session_id: &str) -> Result<Topic, NameError> {
    with_prefix(SESSION_PREFIX, session_id)
}

fn with_prefix(prefix: &str, id: &str) -> Result<Topic, NameError> {
    if id.is_empty() {
        return Err(NameError::Topic(prefix.to_owned()));
    }
    Topic::new(&format!("{prefix}{id}"))
}
