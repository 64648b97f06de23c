//! The validated values that flow through the hub: topic names, event names,
//! payloads and positions.
//!
//! Every value here is checked once, where it enters the hub (a publish request,
//! a subscription query, a cursor), so nothing downstream has to re-check it and no
//! CR or LF can ever reach the SSE stream through a name.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use thiserror::Error;

/// Longest topic name accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 200;
/// Longest event name accepted, in bytes.
pub const MAX_EVENT_NAME_LEN: usize = 100;
/// Event names starting with this prefix are reserved for the hub's own events
/// (such as `herald.reset`); publishers cannot use them.
pub const RESERVED_EVENT_PREFIX: &str = "herald.";

/// The marker a stream publishes when it takes an exclusive topic: streams that
/// held the topic before end with `herald.replaced`. Never written to clients.
pub(crate) const TAKEOVER: &str = "herald.takeover";

/// A name or value that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// The topic name is empty, too long, or holds a character outside the allowed set.
    #[error(
        "invalid topic {0:?}: a topic is 1..=200 bytes of A-Z a-z 0-9 and the characters _ - . : / @"
    )]
    Topic(String),
    /// The event name is empty, too long, or holds a character outside the allowed set.
    #[error(
        "invalid event name {0:?}: an event name is 1..=100 bytes of A-Z a-z 0-9 and the characters _ - . : / @"
    )]
    EventName(String),
    /// The event name uses the prefix reserved for the hub's own events.
    #[error("event name {0:?} is reserved: names starting with \"herald.\" belong to the hub")]
    ReservedEventName(String),
    /// The text is not a position (`<milliseconds>-<sequence>`).
    #[error("invalid position {0:?}: expected <milliseconds>-<sequence>")]
    Position(String),
}

/// Whether `b` may appear in a topic or event name.
///
/// The set is deliberately small: it excludes `,` (the separator in `?topic=a,b`),
/// `*` (kept for wildcard patterns), whitespace, CR, LF and NUL.
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/' | b'@')
}

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(is_name_byte)
}

/// A topic name: 1..=200 bytes of `A-Z a-z 0-9 _ - . : / @`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Box<str>);

impl Topic {
    /// Validates `name` as a topic.
    ///
    /// ```
    /// use herald::Topic;
    /// assert!(Topic::new("user:42").is_ok());
    /// assert!(Topic::new("a,b").is_err());
    /// assert!(Topic::new("evil\nid: 1").is_err());
    /// ```
    pub fn new(name: &str) -> Result<Self, NameError> {
        if valid_name(name, MAX_TOPIC_LEN) {
            Ok(Self(name.into()))
        } else {
            Err(NameError::Topic(shown(name)))
        }
    }

    /// The topic name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Topic {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A rejected name as an error shows it: its first 64 characters, and `…` when
/// there were more (a megabyte-long name must not come back whole).
fn shown(name: &str) -> String {
    let mut out: String = name.chars().take(64).collect();
    if out.len() < name.len() {
        out.push('…');
    }
    out
}

/// An event name (the SSE `event:` field): 1..=100 bytes of `A-Z a-z 0-9 _ - . : / @`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventName(Box<str>);

impl EventName {
    /// Validates `name` as an event name that a publisher may use.
    ///
    /// Names starting with `herald.` are reserved for the hub's own events.
    ///
    /// ```
    /// use herald::EventName;
    /// assert!(EventName::new("comment_created").is_ok());
    /// assert!(EventName::new("herald.reset").is_err());
    /// ```
    pub fn new(name: &str) -> Result<Self, NameError> {
        if !valid_name(name, MAX_EVENT_NAME_LEN) {
            return Err(NameError::EventName(shown(name)));
        }
        if name.starts_with(RESERVED_EVENT_PREFIX) {
            return Err(NameError::ReservedEventName(shown(name)));
        }
        Ok(Self(name.into()))
    }

    /// A name read back from the backend, where the hub's own reserved names
    /// (such as [`TAKEOVER`]) are stored too.
    pub(crate) fn stored(name: &str) -> Result<Self, NameError> {
        if valid_name(name, MAX_EVENT_NAME_LEN) {
            Ok(Self(name.into()))
        } else {
            Err(NameError::EventName(shown(name)))
        }
    }

    /// The hub's own `herald.takeover` marker (see [`TAKEOVER`]).
    pub(crate) fn takeover() -> Self {
        Self(TAKEOVER.into())
    }

    /// The default event name, `message`: what `EventSource.onmessage` receives.
    pub fn message() -> Self {
        Self("message".into())
    }

    /// The event name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The place of an event in its topic: strictly increasing per topic.
///
/// It has the shape of a Redis stream ID, `<milliseconds>-<sequence>`, in both
/// backends, so cursors look the same whichever backend a deployment runs and a
/// position also says roughly when the event was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Position {
    /// Milliseconds since the Unix epoch at which the position was assigned.
    pub ms: u64,
    /// Order among the positions assigned in the same millisecond.
    pub seq: u64,
}

impl Position {
    /// Builds a position.
    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }

    /// The next position after `self` for an event published at `now_ms`:
    /// strictly greater than `self` even when the clock stands still or goes back.
    pub fn next_at(self, now_ms: u64) -> Self {
        if now_ms > self.ms {
            Self::new(now_ms, 0)
        } else {
            Self::new(self.ms, self.seq.saturating_add(1))
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for Position {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NameError::Position(shown(s));
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(bad());
        }
        Ok(Self::new(
            ms.parse().map_err(|_| bad())?,
            seq.parse().map_err(|_| bad())?,
        ))
    }
}

/// One event to publish: where it goes, its name, and its payload.
#[derive(Debug, Clone)]
pub struct Event {
    /// The topic the event is published to.
    pub topic: Topic,
    /// The SSE event name.
    pub name: EventName,
    /// The payload, written verbatim after `data:` (compact JSON for the HTTP API).
    pub data: Bytes,
}

impl Event {
    /// Builds an event from validated parts.
    pub fn new(topic: Topic, name: EventName, data: impl Into<Bytes>) -> Self {
        Self {
            topic,
            name,
            data: data.into(),
        }
    }
}

/// A JSON text with all insignificant whitespace removed.
///
/// The input must already be valid JSON; tokens (numbers, strings, key order) are
/// kept byte for byte, so `JSON.parse` on the result gives exactly what was sent,
/// and the result never holds a CR or LF (JSON strings cannot contain raw ones).
///
/// ```
/// assert_eq!(herald::compact_json("{ \"a\" :\n [1, 2.50] }"), "{\"a\":[1,2.50]}");
/// ```
pub fn compact_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_reject_every_byte_outside_the_set() {
        for b in 0u8..=255 {
            let s = String::from_utf8_lossy(&[b'a', b]).into_owned();
            assert_eq!(Topic::new(&s).is_ok(), is_name_byte(b), "byte {b}");
        }
        assert!(Topic::new("").is_err());
        assert!(Topic::new(&"a".repeat(200)).is_ok());
        assert!(Topic::new(&"a".repeat(201)).is_err());
        assert!(EventName::new(&"a".repeat(100)).is_ok());
        assert!(EventName::new(&"a".repeat(101)).is_err());
        assert!(EventName::new("x\r\nid: 9").is_err());
    }

    #[test]
    fn positions_round_trip_and_increase() {
        let p: Position = "1700000000000-7".parse().unwrap();
        assert_eq!(p, Position::new(1_700_000_000_000, 7));
        assert_eq!(p.to_string(), "1700000000000-7");
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1-2-3",
            "a-1",
            "1-+2",
            "1 -2",
            "99999999999999999999999-1",
        ] {
            assert!(bad.parse::<Position>().is_err(), "{bad}");
        }
        assert_eq!(p.next_at(5), Position::new(p.ms, 8));
        assert_eq!(p.next_at(p.ms + 1), Position::new(p.ms + 1, 0));
    }

    #[test]
    fn compact_json_keeps_strings() {
        assert_eq!(compact_json(r#" "a b\" c" "#), r#""a b\" c""#);
        assert_eq!(compact_json("[\"\\\\\", 1 ]"), "[\"\\\\\",1]");
    }
}
