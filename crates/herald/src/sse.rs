//! SSE wire encoding, per the WHATWG spec
//! (<https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation>).
//!
//! Each published event is encoded once into a [`Frame`] whose bytes every
//! subscriber shares. Names are validated before they get here; this module still
//! never lets a CR or LF through a field other than `data`, whose lines it splits.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};

use crate::event::{Event, Position};

/// One event encoded for the wire, shared by every subscriber of its topic.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The event's position in its topic.
    pub pos: Position,
    /// `id: <pos>\nevent: <name>\ndata: ...\n\n`: the whole frame, as sent to
    /// single-topic connections, whose cursor is the position itself.
    full: Bytes,
    /// Where the `event:` line starts in `full`; multi-topic connections write their
    /// own `id:` line and then `full[body_start..]`.
    body_start: u32,
    /// Where the first `data:` line starts in `full`.
    data_start: u32,
    /// A `herald.takeover` marker: never written, read by exclusive streams.
    takeover: bool,
}

impl Frame {
    /// Encodes `event` at position `pos`.
    pub fn new(pos: Position, event: &Event) -> Self {
        // Room for `id: <20>-<20>\n`, `event: <name>\n`, one `data: ...\n` line and
        // the blank line: one allocation for single-line data (compact JSON always is).
        let mut buf =
            BytesMut::with_capacity(48 + event.name.as_str().len() + 8 + event.data.len() + 8);
        // A position is digits and a dash: nothing to escape.
        let _ = writeln!(buf, "id: {}-{}", pos.ms, pos.seq);
        let body_start = buf.len() as u32;
        put_field(&mut buf, "event", event.name.as_str().as_bytes());
        // An id line is at most 46 bytes and a name 100: these fit in u32.
        let data_start = buf.len() as u32;
        put_data(&mut buf, &event.data);
        buf.put_u8(b'\n');
        Self {
            pos,
            full: buf.freeze(),
            body_start,
            data_start,
            takeover: event.name.as_str() == crate::event::TAKEOVER,
        }
    }

    /// Whether this is a stream's `herald.takeover` marker of an exclusive topic.
    pub(crate) fn is_takeover(&self) -> bool {
        self.takeover
    }

    /// The whole frame including its own `id:` line.
    pub fn full(&self) -> &Bytes {
        &self.full
    }

    /// The frame without its `id:` line (`event:` and `data:` lines and the blank line).
    pub fn body(&self) -> Bytes {
        self.full.slice(self.body_start as usize..)
    }

    /// The frame's own `id:` line.
    pub(crate) fn id_line(&self) -> Bytes {
        self.full.slice(..self.body_start as usize)
    }

    /// The frame without its `id:` line, its data wrapped as
    /// `{"topic":"<topic>","data":<data>}` (streams opened with `envelope=1`).
    /// Data that is not JSON (a library publish may send any bytes) goes in as a
    /// JSON string, so the envelope is always JSON.
    pub(crate) fn body_in_envelope(&self, topic: &str) -> Bytes {
        let (body, data) = (self.body_start as usize, self.data_start as usize);
        // `data: X\n` (or several lines) and the blank line: the data lines' text
        // without the first prefix and the last line end.
        let lines = &self.full[data..self.full.len() - 1];
        let inner = lines
            .strip_prefix(b"data: ")
            .and_then(|l| l.strip_suffix(b"\n"))
            .unwrap_or_default();
        // The data as the client reads it: its lines joined with LF.
        let joined: std::borrow::Cow<'_, [u8]> = if inner.contains(&b'\n') {
            let text = String::from_utf8_lossy(inner).replace("\ndata: ", "\n");
            std::borrow::Cow::Owned(text.into_bytes())
        } else {
            std::borrow::Cow::Borrowed(inner)
        };
        let is_json = serde_json::from_slice::<serde::de::IgnoredAny>(&joined).is_ok();
        let mut buf = BytesMut::with_capacity(self.full.len() + topic.len() + 32);
        buf.put_slice(&self.full[body..data]);
        buf.put_slice(b"data: {\"topic\":");
        // Topic names need no escaping; serde_json is the fence all the same.
        let quoted = serde_json::to_string(topic).unwrap_or_else(|_| "\"\"".into());
        buf.put_slice(quoted.as_bytes());
        buf.put_slice(b",\"data\":");
        if is_json {
            // Valid JSON: its lines stay `data:` lines, which join back into it.
            buf.put_slice(inner);
        } else {
            let text = serde_json::to_string(&String::from_utf8_lossy(&joined))
                .unwrap_or_else(|_| "null".into());
            buf.put_slice(text.as_bytes());
        }
        buf.put_slice(b"}\n\n");
        buf.freeze()
    }
}

/// Writes `name: value\n`, replacing any CR or LF in `value` by a space so a value
/// can never start a new field (names reaching here are validated already; this is
/// the second fence).
fn put_field(buf: &mut BytesMut, name: &str, value: &[u8]) {
    buf.put_slice(name.as_bytes());
    buf.put_slice(b": ");
    if value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
        buf.extend(value.iter().map(|&b| {
            if matches!(b, b'\r' | b'\n' | 0) {
                b' '
            } else {
                b
            }
        }));
    } else {
        buf.put_slice(value);
    }
    buf.put_u8(b'\n');
}

/// Writes `data` as one `data:` line per line of it, splitting on CRLF, CR and LF
/// as the spec's parser does, so the client rebuilds the text with LF line ends.
fn put_data(buf: &mut BytesMut, data: &[u8]) {
    let mut rest = data;
    loop {
        match rest.iter().position(|&b| b == b'\r' || b == b'\n') {
            None => {
                put_line(buf, rest);
                return;
            }
            Some(i) => {
                put_line(buf, &rest[..i]);
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
            }
        }
    }
}

fn put_line(buf: &mut BytesMut, line: &[u8]) {
    buf.put_slice(b"data: ");
    buf.put_slice(line);
    buf.put_u8(b'\n');
}

/// Encodes a complete event with an optional `id:`, for the hub's own events
/// (`herald.reset`) and for tests.
pub fn encode_event(id: Option<&str>, name: &str, data: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(name.len() + data.len() + 32);
    if let Some(id) = id {
        put_field(&mut buf, "id", id.as_bytes());
    }
    put_field(&mut buf, "event", name.as_bytes());
    put_data(&mut buf, data);
    buf.put_u8(b'\n');
    buf.freeze()
}

/// `retry: <ms>\n\n`: tells the client how long to wait before reconnecting.
pub fn retry(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// `id: <cursor>\n\n`: sets the client's last event ID without firing an event
/// (step 1 of the spec's dispatch runs before the empty-data check), so a client
/// that reconnects before any event arrives still resumes from where it started.
pub fn id_only(cursor: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(cursor.len() + 6);
    put_field(&mut buf, "id", cursor.as_bytes());
    buf.put_u8(b'\n');
    buf.freeze()
}

/// `id: <cursor>\n`: the per-connection id line written before a shared frame body.
pub fn id_line(cursor: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(cursor.len() + 5);
    put_field(&mut buf, "id", cursor.as_bytes());
    buf.freeze()
}

/// `: <text>\n\n`, an SSE comment (heartbeats); CR and LF in `text` become spaces.
pub fn comment(text: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(text.len() + 4);
    buf.put_u8(b':');
    let mut field = BytesMut::new();
    put_field(&mut field, "", text.as_bytes());
    // put_field wrote ": text\n"; keep " text\n".
    buf.put_slice(&field[1..]);
    buf.put_u8(b'\n');
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventName, Topic};

    #[test]
    fn envelopes_wrap_the_data_and_keep_the_rest() {
        let ev = |data: &str| {
            Event::new(
                Topic::new("user:42").unwrap(),
                EventName::new("changed").unwrap(),
                data.to_owned(),
            )
        };
        let f = Frame::new(Position::new(5, 1), &ev(r#"{"a":[1,2]}"#));
        assert_eq!(&f.id_line()[..], b"id: 5-1\n");
        assert_eq!(
            &f.body_in_envelope("user:42")[..],
            b"event: changed\ndata: {\"topic\":\"user:42\",\"data\":{\"a\":[1,2]}}\n\n"
        );
        // Data on several lines (a library publish of pretty JSON) stays JSON once
        // the client joins the lines.
        let f = Frame::new(Position::new(5, 2), &ev("{\n  \"a\": 1\r\n}"));
        let wrapped = f.body_in_envelope("t");
        assert_eq!(
            &wrapped[..],
            b"event: changed\ndata: {\"topic\":\"t\",\"data\":{\ndata:   \"a\": 1\ndata: }}\n\n"
        );
        let joined: Vec<&str> = std::str::from_utf8(&wrapped)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        let v: serde_json::Value = serde_json::from_str(&joined.join("\n")).unwrap();
        assert_eq!(v, serde_json::json!({"topic": "t", "data": {"a": 1}}));
        // Data that is not JSON (found by a review: the envelope was not JSON
        // then) goes in as a string of what the client would have read.
        for (data, read) in [
            ("hello", "hello"),
            ("", ""),
            (" ", " "),
            ("\t\n", "\t\n"),
            ("a\r\nb", "a\nb"),
            ("{\"open\": ", "{\"open\": "),
        ] {
            let f = Frame::new(Position::new(6, 0), &ev(data));
            let wrapped = f.body_in_envelope("t");
            let text = std::str::from_utf8(&wrapped).unwrap();
            let lines: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            let v: serde_json::Value = serde_json::from_str(&lines.join("\n"))
                .unwrap_or_else(|e| panic!("{data:?}: {e}: {text:?}"));
            assert_eq!(
                v,
                serde_json::json!({"topic": "t", "data": read}),
                "{data:?}"
            );
        }
    }

    #[test]
    fn frame_layout() {
        let ev = Event::new(
            Topic::new("t").unwrap(),
            EventName::new("created").unwrap(),
            &b"{\"a\":1}"[..],
        );
        let f = Frame::new(Position::new(5, 1), &ev);
        assert_eq!(
            &f.full()[..],
            b"id: 5-1\nevent: created\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(&f.body()[..], b"event: created\ndata: {\"a\":1}\n\n");
    }

    #[test]
    fn data_lines_split_on_every_line_end() {
        assert_eq!(
            &encode_event(None, "m", b"a\r\nb\rc\nd")[..],
            b"event: m\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        assert_eq!(&encode_event(None, "m", b"")[..], b"event: m\ndata: \n\n");
        assert_eq!(
            &encode_event(None, "m", b"x\n")[..],
            b"event: m\ndata: x\ndata: \n\n"
        );
    }

    #[test]
    fn fields_and_comments_cannot_break_lines() {
        assert_eq!(
            &encode_event(Some("1\nevent: x"), "a\r\nb", b"d")[..],
            b"id: 1 event: x\nevent: a  b\ndata: d\n\n"
        );
        assert_eq!(&comment("hi\nthere")[..], b": hi there\n\n");
        assert_eq!(&comment("")[..], b": \n\n");
    }

    /// Parses `bytes` with an independent SSE parser (`eventsource-stream`).
    fn parse(bytes: Bytes) -> Vec<eventsource_stream::Event> {
        use eventsource_stream::Eventsource;
        use futures_util::StreamExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            futures_util::stream::iter([Ok::<_, std::convert::Infallible>(bytes)])
                .eventsource()
                .map(|e| e.unwrap())
                .collect()
                .await
        })
    }

    proptest::proptest! {
        /// Any data survives framing: the client gets it back with line ends as LF,
        /// and nothing in it becomes another field or another event.
        #[test]
        fn any_data_round_trips(data in "(\\PC|[\r\n]){0,64}", id in "[0-9]{1,5}-[0-9]{1,3}") {
            let bytes = encode_event(Some(&id), "ev", data.as_bytes());
            let events = parse(bytes);
            proptest::prop_assert_eq!(events.len(), 1);
            let want = data.replace("\r\n", "\n").replace('\r', "\n");
            proptest::prop_assert_eq!(&events[0].data, &want);
            proptest::prop_assert_eq!(&events[0].event, "ev");
            proptest::prop_assert_eq!(&events[0].id, &id);
        }

        /// Hostile ids and names never add a line.
        #[test]
        fn hostile_fields_stay_on_their_line(id in "(\\PC|[\r\n\x00]){0,32}", name in "(\\PC|[\r\n]){1,32}") {
            let bytes = encode_event(Some(&id), &name, b"d");
            let text = String::from_utf8_lossy(&bytes).into_owned();
            proptest::prop_assert_eq!(text.matches('\n').count(), 4, "{:?}", text);
            proptest::prop_assert!(!text.contains('\r'));
            let c = comment(&id);
            proptest::prop_assert_eq!(c.iter().filter(|&&b| b == b'\n').count(), 2);
        }
    }
}
