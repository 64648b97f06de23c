//! Cursors: the SSE `id:` a connection hands out and gets back as `Last-Event-ID`.
//!
//! A cursor holds the position of every topic of its connection, so a multi-topic
//! connection resumes each topic exactly, with no state kept on the server.
//!
//! - One topic: the cursor is the topic's position, `1764000000000-3`. Every
//!   subscriber of the topic gets the same `id:`, so the frame is shared.
//! - Several topics: the positions in the order of the sorted topic names, joined by
//!   `,`, then `~` and a checksum of the topic set (8 hex digits), e.g.
//!   `1764000000000-3,1764000000100-0~1a2b3c4d`. The checksum makes a cursor used
//!   with another set of topics a clear error instead of a wrong resume.

use thiserror::Error;

use crate::event::{NameError, Position, Topic};

/// Why a subscription's topics or cursor were refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubscriptionError {
    /// No topic was given.
    #[error("no topic given: subscribe with ?topic=a,b")]
    NoTopic,
    /// A topic name is invalid.
    #[error(transparent)]
    BadTopic(#[from] NameError),
    /// More topics than the hub allows on one connection.
    #[error("{count} topics requested, at most {max} are allowed per connection")]
    TooManyTopics {
        /// Distinct topics requested.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The cursor cannot be read, or belongs to another set of topics.
    #[error("invalid cursor: {0}")]
    BadCursor(String),
}

/// The distinct topics of one connection, sorted, with the checksum of the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSet {
    topics: Vec<Topic>,
    checksum: u32,
}

impl TopicSet {
    /// Builds a set from comma-separated lists (`topic=a,b&topic=c` gives
    /// `["a,b", "c"]`), dropping duplicates. An empty name is an error.
    ///
    /// ```
    /// let set = herald::TopicSet::parse(["b,a", "a"], 32).unwrap();
    /// assert_eq!(set.topics().iter().map(|t| t.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    /// ```
    pub fn parse<'a>(
        lists: impl IntoIterator<Item = &'a str>,
        max: usize,
    ) -> Result<Self, SubscriptionError> {
        let mut topics = Vec::new();
        for list in lists {
            for name in list.split(',') {
                topics.push(Topic::new(name)?);
                // Bound the work done for an absurd query before deduplication.
                if topics.len() > max.saturating_mul(4).max(64) {
                    return Err(SubscriptionError::TooManyTopics {
                        count: topics.len(),
                        max,
                    });
                }
            }
        }
        topics.sort();
        topics.dedup();
        if topics.is_empty() {
            return Err(SubscriptionError::NoTopic);
        }
        if topics.len() > max {
            return Err(SubscriptionError::TooManyTopics {
                count: topics.len(),
                max,
            });
        }
        Ok(Self::from_sorted(topics))
    }

    fn from_sorted(topics: Vec<Topic>) -> Self {
        // FNV-1a over the names, each followed by a newline (not a name byte).
        let mut h: u32 = 0x811c_9dc5;
        for t in &topics {
            for b in t.as_str().bytes().chain(std::iter::once(b'\n')) {
                h ^= u32::from(b);
                h = h.wrapping_mul(0x0100_0193);
            }
        }
        Self {
            topics,
            checksum: h,
        }
    }

    /// The topics, sorted by name.
    pub fn topics(&self) -> &[Topic] {
        &self.topics
    }

    /// Encodes the positions (one per topic, in [`Self::topics`] order) as a cursor.
    pub fn encode(&self, positions: &[Position]) -> String {
        debug_assert_eq!(positions.len(), self.topics.len());
        if let [one] = positions {
            return one.to_string();
        }
        let mut s = String::with_capacity(positions.len() * 18 + 9);
        for (i, p) in positions.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&p.to_string());
        }
        s.push_str(&format!("~{:08x}", self.checksum));
        s
    }

    /// Reads a cursor issued for this set of topics.
    ///
    /// ```
    /// use herald::{Position, TopicSet};
    /// let set = TopicSet::parse(["a,b"], 32).unwrap();
    /// let ps = [Position::new(1, 0), Position::new(2, 5)];
    /// assert_eq!(set.decode(&set.encode(&ps)).unwrap(), ps);
    /// assert!(TopicSet::parse(["a,c"], 32).unwrap().decode(&set.encode(&ps)).is_err());
    /// ```
    pub fn decode(&self, cursor: &str) -> Result<Vec<Position>, SubscriptionError> {
        let bad = |why: &str| SubscriptionError::BadCursor(why.to_owned());
        // Longest valid cursor: 20+1+20 digits per topic, separators and checksum.
        if cursor.len() > self.topics.len() * 42 + 16 {
            return Err(bad("too long for this connection's topics"));
        }
        let positions = if self.topics.len() == 1 {
            vec![
                cursor
                    .parse::<Position>()
                    .map_err(|_| bad("expected <milliseconds>-<sequence>"))?,
            ]
        } else {
            let (list, sum) = cursor
                .split_once('~')
                .ok_or_else(|| bad("expected positions,...~checksum"))?;
            if sum.len() != 8 || u32::from_str_radix(sum, 16) != Ok(self.checksum) {
                return Err(bad("it was issued for another set of topics"));
            }
            list.split(',')
                .map(|p| p.parse::<Position>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| bad("a position is not <milliseconds>-<sequence>"))?
        };
        if positions.len() != self.topics.len() {
            return Err(bad("it was issued for another set of topics"));
        }
        Ok(positions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(names: &[&str]) -> TopicSet {
        TopicSet::parse(names.iter().copied(), 32).unwrap()
    }

    #[test]
    fn parse_rules() {
        assert_eq!(TopicSet::parse([], 4), Err(SubscriptionError::NoTopic));
        assert!(matches!(
            TopicSet::parse(["a,,b"], 4),
            Err(SubscriptionError::BadTopic(_))
        ));
        assert!(matches!(
            TopicSet::parse(["a,b,c,d,e"], 4),
            Err(SubscriptionError::TooManyTopics { count: 5, max: 4 })
        ));
        assert_eq!(
            TopicSet::parse(["a,a,a,a,a,b"], 2).unwrap().topics().len(),
            2
        );
    }

    #[test]
    fn bad_cursors() {
        let one = set(&["a"]);
        let two = set(&["a", "b"]);
        for c in ["", "x", "1-", "1-1,2-2~00000000", "1-1\n"] {
            assert!(one.decode(c).is_err(), "{c:?}");
        }
        let good = two.encode(&[Position::new(1, 1), Position::new(2, 2)]);
        assert!(two.decode(&good).is_ok());
        for c in [
            "1-1",
            "1-1,2-2",
            "1-1,2-2~",
            "1-1~ffffffff",
            good.replace(',', ",3-3,").as_str(),
        ] {
            assert!(two.decode(c).is_err(), "{c:?}");
        }
        assert!(set(&["b", "c"]).decode(&good).is_err());
    }

    proptest! {
        #[test]
        fn cursors_round_trip(
            names in proptest::collection::btree_set("[a-z0-9:_]{1,12}", 1..8),
            raw in proptest::collection::vec((any::<u64>(), any::<u64>()), 8),
        ) {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let set = set(&names);
            let ps: Vec<Position> = raw[..names.len()].iter().map(|&(m, s)| Position::new(m, s)).collect();
            prop_assert_eq!(set.decode(&set.encode(&ps)).unwrap(), ps);
        }

        #[test]
        fn decode_never_panics(s in "\\PC{0,80}") {
            let _ = set(&["a"]).decode(&s);
            let _ = set(&["a", "b"]).decode(&s);
        }
    }
}
