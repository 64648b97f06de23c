//! Topic patterns in tokens and settings: `user:42` (exactly that topic),
//! `workspace:acme:*` (every topic with that prefix), `*` (every topic), and
//! `user:{sub}` (the token's subject filled in).

use std::fmt;

use thiserror::Error;

use crate::event::{MAX_TOPIC_LEN, Topic};

/// A pattern that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PatternError {
    /// Not a topic, a topic prefix followed by `*`, or `*`.
    #[error(
        "invalid topic pattern {0:?}: use a topic, a prefix ending in *, or *; {{sub}} may appear"
    )]
    Invalid(String),
    /// The pattern uses `{sub}` and the subject cannot be placed in a topic.
    #[error(
        "the subject {0:?} cannot be used in a topic: it must be 1..=64 bytes of A-Z a-z 0-9 _ - . @"
    )]
    BadSubject(String),
}

/// A checked topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// Exactly this topic.
    Exact(String),
    /// Every topic starting with this prefix (possibly empty: every topic).
    Prefix(String),
}

/// Characters a subject may bring into a topic: no `:` or `/` (which would let a
/// subject reach into another namespace), no `*`, no separators or line breaks.
pub(crate) fn subject_ok(sub: &str) -> bool {
    !sub.is_empty()
        && sub.len() <= 64
        && sub
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'))
}

impl Pattern {
    /// Parses `text`, replacing `{sub}` with `sub` (which must be a safe subject).
    ///
    /// ```
    /// use herald::auth::Pattern;
    /// let p = Pattern::parse("user:{sub}", Some("42")).unwrap();
    /// assert!(p.matches(&herald::Topic::new("user:42").unwrap()));
    /// assert!(Pattern::parse("user:{sub}", Some("*")).is_err());
    /// assert!(Pattern::parse("a*b", None).is_err());
    /// ```
    pub fn parse(text: &str, sub: Option<&str>) -> Result<Self, PatternError> {
        let filled;
        let text = if text.contains("{sub}") {
            let sub = sub.unwrap_or_default();
            if !subject_ok(sub) {
                return Err(PatternError::BadSubject(sub.chars().take(64).collect()));
            }
            filled = text.replace("{sub}", sub);
            filled.as_str()
        } else {
            text
        };
        let invalid = || PatternError::Invalid(text.chars().take(MAX_TOPIC_LEN + 8).collect());
        match text.strip_suffix('*') {
            Some(prefix) => {
                if prefix.contains('*') || (!prefix.is_empty() && Topic::new(prefix).is_err()) {
                    return Err(invalid());
                }
                Ok(Self::Prefix(prefix.to_owned()))
            }
            None => {
                Topic::new(text).map_err(|_| invalid())?;
                Ok(Self::Exact(text.to_owned()))
            }
        }
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &Topic) -> bool {
        match self {
            Self::Exact(t) => topic.as_str() == t,
            Self::Prefix(p) => topic.as_str().starts_with(p.as_str()),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(t) => f.write_str(t),
            Self::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    #[test]
    fn matching() {
        let p = Pattern::parse("workspace:acme:*", None).unwrap();
        assert!(p.matches(&t("workspace:acme:1")));
        assert!(p.matches(&t("workspace:acme:")));
        assert!(!p.matches(&t("workspace:acmex")));
        assert!(!p.matches(&t("workspace:other:1")));
        let all = Pattern::parse("*", None).unwrap();
        assert!(all.matches(&t("anything")));
        let exact = Pattern::parse("announcements", None).unwrap();
        assert!(exact.matches(&t("announcements")));
        assert!(!exact.matches(&t("announcements2")));
    }

    #[test]
    fn invalid_patterns_and_subjects() {
        for bad in ["", "**", "a*b", "*a", "a b*", "a,b", "x\ny"] {
            assert!(Pattern::parse(bad, None).is_err(), "{bad:?}");
        }
        for sub in ["", "*", "1:admin", "a/b", "x\ny", "a,b", &"s".repeat(65)] {
            assert!(Pattern::parse("user:{sub}", Some(sub)).is_err(), "{sub:?}");
        }
        assert!(Pattern::parse("user:{sub}", None).is_err());
        let p = Pattern::parse("user:{sub}:*", Some("alice@example.com")).unwrap();
        assert!(p.matches(&t("user:alice@example.com:inbox")));
    }
}
