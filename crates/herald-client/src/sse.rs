//! An incremental parser for the WHATWG `text/event-stream` format
//! (<https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation>).
//!
//! Feed it the bytes of a response as they arrive, in chunks of any size; it
//! yields what a browser's `EventSource` would act on:
//!
//! - lines end with CRLF, LF or CR, also when a CRLF is split across two chunks;
//! - one leading byte-order mark is skipped;
//! - comment lines (`:` first) are ignored;
//! - `field: value` (one space after the colon is dropped), `field:value` and a
//!   bare `field` (empty value) are all fields; unknown fields are ignored;
//! - `data` lines are joined with LF; an event with no `data` is not dispatched,
//!   but it still sets the last event ID ([`Item::Id`]);
//! - `id` containing NUL is ignored; the last event ID carries over to later
//!   events that have no `id` field of their own;
//! - `retry` is applied only when it is ASCII digits;
//! - an event the stream ends in the middle of is never dispatched.
//!
//! Invalid UTF-8 is decoded with U+FFFD replacement characters, as the spec's
//! decoder does.
//!
//! ```
//! use herald_client::sse::{Item, Parser};
//!
//! let mut parser = Parser::new();
//! let mut items: Vec<Item> = parser.feed(b"retry: 2000\n\nid: 7\nevent: greet\ndata: hel").collect();
//! items.extend(parser.feed(b"lo\r\n\r\n"));
//! assert_eq!(items.len(), 2);
//! assert_eq!(items[0], Item::Retry(2000));
//! let Item::Event(event) = &items[1] else { panic!("an event") };
//! assert_eq!((event.id.as_str(), event.event.as_str(), event.data.as_str()), ("7", "greet", "hello"));
//! ```

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The last event ID when the event was dispatched: its own `id:` field, or
    /// the one carried over from an earlier frame (empty if there was none).
    pub id: String,
    /// Whether this event's own frame had an `id` field (rather than `id` being
    /// carried over).
    pub own_id: bool,
    /// The event type: the `event:` field, or `message` when there was none.
    pub event: String,
    /// The `data:` lines joined with LF.
    pub data: String,
}

/// What the parser found in the stream, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// An event was dispatched.
    Event(SseEvent),
    /// A frame without data changed the last event ID (e.g. `id: 5\n\n`). The
    /// value is the new last event ID (possibly empty, which means "none").
    Id(String),
    /// A valid `retry:` field: the reconnection time in milliseconds.
    Retry(u64),
}

/// The incremental event-stream parser. See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct Parser {
    /// The current line, when it started in an earlier chunk.
    line: Vec<u8>,
    /// The previous chunk ended with CR: an LF starting the next chunk belongs to it.
    after_cr: bool,
    /// At least one line was processed (so a BOM is no longer expected).
    started: bool,
    data: String,
    /// At least one `data` field was seen in the current frame.
    has_data: bool,
    event: String,
    /// The last event ID buffer (carries over between frames).
    id_buffer: String,
    /// The last event ID string (set on dispatch).
    last_id: String,
    /// The current frame had an `id` field.
    own_id: bool,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl Parser {
    /// A parser at the start of a stream, with no last event ID.
    pub fn new() -> Self {
        Self::default()
    }

    /// A parser whose last event ID starts as `id`, as for a reconnection: events
    /// without an `id` field of their own carry it.
    pub fn with_last_event_id(id: impl Into<String>) -> Self {
        let id = id.into();
        Self {
            id_buffer: id.clone(),
            last_id: id,
            ..Self::default()
        }
    }

    /// The last event ID as of the last dispatched frame (empty if none).
    pub fn last_event_id(&self) -> &str {
        &self.last_id
    }

    /// Bytes held for the current incomplete line and frame: a caller can bound
    /// memory by dropping a connection whose frames grow beyond reason.
    pub fn buffered_bytes(&self) -> usize {
        self.line.len() + self.data.len() + self.event.len() + self.id_buffer.len()
    }

    /// Prepares for a new connection's stream: drops the incomplete frame and line
    /// (as the spec does at the end of a stream), expects a BOM again, and keeps the
    /// last event ID.
    pub fn restart(&mut self) {
        self.line.clear();
        self.after_cr = false;
        self.started = false;
        self.data.clear();
        self.has_data = false;
        self.event.clear();
        self.id_buffer.clone_from(&self.last_id);
        self.own_id = false;
    }

    /// Parses the next `chunk` of the stream and returns what it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> std::vec::IntoIter<Item> {
        let mut out = Vec::new();
        let mut rest = chunk;
        // (An empty chunk leaves a pending CR pending: its LF may still come.)
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if let Some(tail) = rest.strip_prefix(b"\n") {
                rest = tail;
            }
        }
        while let Some(i) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            let end = &rest[..i];
            if self.line.is_empty() {
                self.line_done(end, &mut out);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(end);
                self.line_done(&line, &mut out);
                line.clear();
                self.line = line;
            }
            if rest[i] == b'\r' {
                match rest.get(i + 1) {
                    Some(b'\n') => rest = &rest[i + 2..],
                    Some(_) => rest = &rest[i + 1..],
                    None => {
                        self.after_cr = true;
                        rest = &[];
                    }
                }
            } else {
                rest = &rest[i + 1..];
            }
        }
        self.line.extend_from_slice(rest);
        out.into_iter()
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<Item>) {
        let mut line = line;
        if !self.started {
            self.started = true;
            if let Some(tail) = line.strip_prefix(BOM) {
                line = tail;
            }
        }
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match field {
            b"event" => self.event = String::from_utf8_lossy(value).into_owned(),
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.has_data = true;
                self.data.push_str(&String::from_utf8_lossy(value));
            }
            b"id" if !value.contains(&0) => {
                self.id_buffer = String::from_utf8_lossy(value).into_owned();
                self.own_id = true;
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                // All digits: only overflow can fail; saturate like a huge delay.
                let ms = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(u64::MAX);
                out.push(Item::Retry(ms));
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<Item>) {
        let id_changed = self.last_id != self.id_buffer;
        if id_changed {
            self.last_id.clone_from(&self.id_buffer);
        }
        let own_id = std::mem::take(&mut self.own_id);
        if !self.has_data {
            self.event.clear();
            if id_changed {
                out.push(Item::Id(self.last_id.clone()));
            }
            return;
        }
        self.has_data = false;
        let event = if self.event.is_empty() {
            "message".to_owned()
        } else {
            std::mem::take(&mut self.event)
        };
        out.push(Item::Event(SseEvent {
            id: self.last_id.clone(),
            own_id,
            event,
            data: std::mem::take(&mut self.data),
        }));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn parse(input: &[u8]) -> Vec<Item> {
        Parser::new().feed(input).collect()
    }

    fn ev(id: &str, event: &str, data: &str) -> Item {
        Item::Event(SseEvent {
            id: id.into(),
            own_id: !id.is_empty(),
            event: event.into(),
            data: data.into(),
        })
    }

    #[test]
    fn line_endings_lf_cr_crlf() {
        let want = vec![ev("", "message", "a\nb"), ev("", "x", "c")];
        assert_eq!(parse(b"data: a\ndata: b\n\nevent: x\ndata: c\n\n"), want);
        assert_eq!(parse(b"data: a\rdata: b\r\revent: x\rdata: c\r\r"), want);
        assert_eq!(
            parse(b"data: a\r\ndata: b\r\n\r\nevent: x\r\ndata: c\r\n\r\n"),
            want
        );
        // Mixed.
        assert_eq!(parse(b"data: a\r\ndata: b\r\nevent: x\rdata: c\n\n"), {
            vec![ev("", "x", "a\nb\nc")]
        });
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_end() {
        let mut p = Parser::new();
        let mut items: Vec<Item> = p.feed(b"data: a\r").collect();
        items.extend(p.feed(b"\ndata: b\r"));
        items.extend(p.feed(b"\n\r"));
        items.extend(p.feed(b"\n"));
        assert_eq!(items, vec![ev("", "message", "a\nb")]);
        // A CR then a chunk starting with CR: two line ends, so a dispatch.
        let mut p = Parser::new();
        let mut items: Vec<Item> = p.feed(b"data: a\r").collect();
        items.extend(p.feed(b"\rdata: b\n\n"));
        assert_eq!(items, vec![ev("", "message", "a"), ev("", "message", "b")]);
    }

    #[test]
    fn bom_skipped_once_even_when_split() {
        assert_eq!(
            parse(b"\xEF\xBB\xBFdata: a\n\n"),
            vec![ev("", "message", "a")]
        );
        let mut p = Parser::new();
        let mut items: Vec<Item> = p.feed(b"\xEF").collect();
        items.extend(p.feed(b"\xBB"));
        items.extend(p.feed(b"\xBFdata: a\n\n"));
        assert_eq!(items, vec![ev("", "message", "a")]);
        // A second BOM is part of the line: a field named "\u{feff}data", ignored.
        assert_eq!(parse(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\n"), vec![]);
        // Not at the start of the stream: not skipped.
        assert_eq!(parse(b"\n\xEF\xBB\xBFdata: a\n\n"), vec![]);
    }

    #[test]
    fn comments_ignored() {
        assert_eq!(
            parse(b": heartbeat\n\n:\n: x\ndata: a\n: y\ndata: b\n\n"),
            vec![ev("", "message", "a\nb")]
        );
    }

    #[test]
    fn field_forms() {
        // No space, one space (dropped), two spaces (one kept).
        assert_eq!(parse(b"data:a\n\n"), vec![ev("", "message", "a")]);
        assert_eq!(parse(b"data: a\n\n"), vec![ev("", "message", "a")]);
        assert_eq!(parse(b"data:  a\n\n"), vec![ev("", "message", " a")]);
        // A field without a colon has an empty value: `data` alone adds an empty line.
        assert_eq!(parse(b"data\ndata\n\n"), vec![ev("", "message", "\n")]);
        assert_eq!(parse(b"data\n\n"), vec![ev("", "message", "")]);
        // Unknown fields are ignored; the value may contain colons.
        assert_eq!(
            parse(b"foo: bar\ndata: a:b: c\n\n"),
            vec![ev("", "message", "a:b: c")]
        );
        // Field names are case-sensitive.
        assert_eq!(parse(b"Data: a\n\n"), vec![]);
    }

    #[test]
    fn event_type_resets_after_dispatch() {
        assert_eq!(
            parse(b"event: a\ndata: 1\n\ndata: 2\n\nevent: b\n\ndata: 3\n\n"),
            vec![
                ev("", "a", "1"),
                ev("", "message", "2"),
                ev("", "message", "3")
            ]
        );
        // An empty `event:` means the default.
        assert_eq!(parse(b"event:\ndata: 1\n\n"), vec![ev("", "message", "1")]);
    }

    #[test]
    fn ids_carry_over_and_nul_is_ignored() {
        let items = parse(b"id: 1\ndata: a\n\ndata: b\n\nid: 2\x003\ndata: c\n\nid\ndata: d\n\n");
        let own = |id: &str, own_id: bool, data: &str| {
            Item::Event(SseEvent {
                id: id.into(),
                own_id,
                event: "message".into(),
                data: data.into(),
            })
        };
        assert_eq!(
            items,
            vec![
                own("1", true, "a"),
                own("1", false, "b"),
                // The NUL id is ignored entirely (not an own id either).
                own("1", false, "c"),
                // A bare `id` empties the last event ID.
                own("", true, "d"),
            ]
        );
    }

    #[test]
    fn id_only_frames_report_the_new_id() {
        let mut p = Parser::new();
        let items: Vec<Item> = p
            .feed(b"retry: 2000\n\nid: 10\n\n\n\nid: 10\n\nid: 11\n\nid:\n\n")
            .collect();
        assert_eq!(
            items,
            vec![
                Item::Retry(2000),
                Item::Id("10".into()),
                Item::Id("11".into()),
                Item::Id(String::new())
            ]
        );
        assert_eq!(p.last_event_id(), "");
    }

    #[test]
    fn id_takes_effect_only_on_dispatch() {
        let mut p = Parser::new();
        assert_eq!(p.feed(b"id: 5\n").count(), 0);
        assert_eq!(p.last_event_id(), "");
        // The stream ends (reconnect): the undispatched id is dropped.
        p.restart();
        assert_eq!(
            p.feed(b"data: x\n\n").collect::<Vec<_>>(),
            vec![ev("", "message", "x")]
        );
    }

    #[test]
    fn retry_only_digits() {
        assert_eq!(
            parse(b"retry: 100\nretry: 1x\nretry: -1\nretry:\nretry: 1.5\nretry:  7\nretry:42\n"),
            vec![Item::Retry(100), Item::Retry(42)]
        );
        assert_eq!(
            parse(b"retry: 99999999999999999999999\n"),
            vec![Item::Retry(u64::MAX)]
        );
    }

    #[test]
    fn incomplete_frame_at_end_is_not_dispatched() {
        let mut p = Parser::new();
        assert_eq!(p.feed(b"data: a\n").count(), 0);
        assert_eq!(p.feed(b"data: b").count(), 0);
        assert!(p.buffered_bytes() > 0);
        p.restart();
        assert_eq!(p.buffered_bytes(), 0);
        assert_eq!(
            p.feed(b"data: c\n\n").collect::<Vec<_>>(),
            vec![ev("", "message", "c")]
        );
    }

    #[test]
    fn with_last_event_id_carries_into_a_new_stream() {
        let mut p = Parser::with_last_event_id("9");
        assert_eq!(
            p.feed(b"\xEF\xBB\xBFdata: a\n\n").collect::<Vec<_>>(),
            vec![Item::Event(SseEvent {
                id: "9".into(),
                own_id: false,
                event: "message".into(),
                data: "a".into()
            })]
        );
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(
            parse(b"data: a\xFFb\n\n"),
            vec![ev("", "message", "a\u{FFFD}b")]
        );
        // A multi-byte character split across chunks is kept whole.
        let mut p = Parser::new();
        let mut items: Vec<Item> = p.feed(b"data: \xC3").collect();
        items.extend(p.feed(b"\xA9\n\n"));
        assert_eq!(items, vec![ev("", "message", "\u{e9}")]);
    }

    #[test]
    fn herald_stream_prelude() {
        let items = parse(
            b"retry: 2000\n\nid: 1-0,2-0~5f3a9c21\n\nid: 3-0,2-0~5f3a9c21\nevent: comment_created\ndata: {\"id\":7}\n\n: heartbeat\n\n",
        );
        assert_eq!(
            items,
            vec![
                Item::Retry(2000),
                Item::Id("1-0,2-0~5f3a9c21".into()),
                ev("3-0,2-0~5f3a9c21", "comment_created", "{\"id\":7}"),
            ]
        );
    }

    /// The spec's algorithm written the plain way: decode the whole stream, drop
    /// one BOM, split lines, process them. A second opinion for the proptests.
    fn reference(bytes: &[u8]) -> Vec<Item> {
        let text = String::from_utf8_lossy(bytes);
        let text = text.strip_prefix('\u{FEFF}').unwrap_or(&text);
        let mut lines = Vec::new();
        let mut line = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\r' => {
                    if chars.peek() == Some(&'\n') {
                        chars.next();
                    }
                    lines.push(std::mem::take(&mut line));
                }
                '\n' => lines.push(std::mem::take(&mut line)),
                c => line.push(c),
            }
        }
        // `line` is unterminated: never processed.
        let (mut data, mut event, mut id_buf, mut last_id) =
            (String::new(), String::new(), String::new(), String::new());
        let mut own_id = false;
        let mut out = Vec::new();
        for line in lines {
            if line.is_empty() {
                let changed = last_id != id_buf;
                last_id = id_buf.clone();
                if data.is_empty() {
                    event.clear();
                    if changed {
                        out.push(Item::Id(last_id.clone()));
                    }
                } else {
                    data.pop();
                    out.push(Item::Event(SseEvent {
                        id: last_id.clone(),
                        own_id,
                        event: if event.is_empty() {
                            "message".into()
                        } else {
                            event.clone()
                        },
                        data: std::mem::take(&mut data),
                    }));
                    event.clear();
                }
                own_id = false;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_str(), ""),
            };
            match field {
                "event" => event = value.to_owned(),
                "data" => {
                    data.push_str(value);
                    data.push('\n');
                }
                "id" if !value.contains('\0') => {
                    id_buf = value.to_owned();
                    own_id = true;
                }
                "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                    out.push(Item::Retry(value.parse().unwrap_or(u64::MAX)));
                }
                _ => {}
            }
        }
        out
    }

    /// Bytes that exercise every rule: line ends, fields, comments, BOM, NUL, UTF-8.
    fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"data".to_vec()),
            Just(b"data: ".to_vec()),
            Just(b"data:".to_vec()),
            Just(b"event: ".to_vec()),
            Just(b"id: ".to_vec()),
            Just(b"id".to_vec()),
            Just(b"retry: ".to_vec()),
            Just(b":".to_vec()),
            Just(b"\xEF\xBB\xBF".to_vec()),
            Just(b"\0".to_vec()),
            Just("\u{e9}\u{1F600}".as_bytes().to_vec()),
            Just(b"\xC3".to_vec()),
            proptest::collection::vec(
                prop_oneof![
                    Just(b'a'),
                    Just(b'1'),
                    Just(b' '),
                    Just(b':'),
                    Just(b'\r'),
                    Just(b'\n')
                ],
                0..6
            ),
        ];
        proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
    }

    #[test]
    fn an_empty_chunk_between_cr_and_lf_keeps_them_one_line_end() {
        let mut p = Parser::new();
        let mut items: Vec<Item> = p.feed(b"id: 1\r").collect();
        items.extend(p.feed(b""));
        items.extend(p.feed(b"\nid: 2\n\n"));
        assert_eq!(items, [Item::Id("2".into())]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_split_gives_the_same_items(
            bytes in stream_bytes(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let whole = parse(&bytes);
            prop_assert_eq!(&whole, &reference(&bytes));
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut p = Parser::new();
            let mut split = Vec::new();
            let mut start = 0;
            for at in points.into_iter().chain([bytes.len()]) {
                split.extend(p.feed(&bytes[start..at]));
                start = at;
            }
            prop_assert_eq!(split, whole);
        }

        #[test]
        fn byte_at_a_time_gives_the_same_items(bytes in stream_bytes()) {
            let whole = parse(&bytes);
            let mut p = Parser::new();
            let split: Vec<Item> = bytes.iter().flat_map(|b| p.feed(std::slice::from_ref(b))).collect();
            prop_assert_eq!(split, whole);
        }
    }
}
