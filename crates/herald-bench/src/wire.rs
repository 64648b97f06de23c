//! The bytes a subscriber reads: an HTTP/1.1 response head, a body that is chunked,
//! length-delimited or close-delimited, and the SSE event stream inside it, parsed
//! per the WHATWG spec
//! (<https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation>).
//!
//! Built to cost little per event: no allocation per line, data lines appended to
//! one reused buffer, and a dispatched event is looked at only for the `"seq":` and
//! `"ts":` numbers the publisher put in it.

use std::sync::LazyLock;

use memchr::memmem::Finder;

/// Parse state of an HTTP/1.1 response body.
#[derive(Debug)]
pub(crate) enum Body {
    /// `Transfer-Encoding: chunked`: bytes left in the current chunk, or reading a size line.
    Chunked {
        left: usize,
        in_size: bool,
        size: usize,
        skip_lf: u8,
        /// In a chunk extension (after `;`).
        ext: bool,
        /// Hex digits of the size read so far.
        digits: u32,
        /// Whitespace after the digits: only `;` or CR may follow.
        after: bool,
        /// The size line's CR was read: its LF must follow.
        cr: bool,
    },
    /// Until the connection closes (or `Content-Length`).
    Plain,
}

/// Parses a response head; returns (status, body decoder, head length) when it is complete.
pub(crate) fn parse_head(buf: &[u8]) -> Option<Result<(u16, Body, usize), String>> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = match std::str::from_utf8(&buf[..end]) {
        Ok(h) => h,
        Err(_) => return Some(Err("response head is not UTF-8".into())),
    };
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok());
    let Some(status) = status else {
        return Some(Err(format!("bad status line in {head:?}")));
    };
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        Body::chunked()
    } else {
        Body::Plain
    };
    Some(Ok((status, body, end)))
}

impl Body {
    /// A chunked body, before its first size line.
    pub(crate) fn chunked() -> Self {
        Body::Chunked {
            left: 0,
            in_size: true,
            size: 0,
            skip_lf: 0,
            ext: false,
            digits: 0,
            after: false,
            cr: false,
        }
    }

    /// Decodes `input` and feeds the body bytes to `out`. Err on a malformed chunk.
    pub(crate) fn decode(
        &mut self,
        mut input: &[u8],
        out: &mut impl FnMut(&[u8]),
    ) -> Result<(), String> {
        match self {
            Body::Plain => {
                out(input);
                Ok(())
            }
            Body::Chunked {
                left,
                in_size,
                size,
                skip_lf,
                ext,
                digits,
                after,
                cr,
            } => {
                while !input.is_empty() {
                    if *skip_lf > 0 {
                        // CRLF after a chunk's data.
                        let b = input[0];
                        input = &input[1..];
                        if (*skip_lf == 2 && b != b'\r') || (*skip_lf == 1 && b != b'\n') {
                            return Err("missing CRLF after a chunk".into());
                        }
                        *skip_lf -= 1;
                        continue;
                    }
                    if *in_size {
                        // chunk-size = 1*HEXDIG, then optional whitespace and
                        // `;` extensions (ignored), then CRLF (RFC 9112 7.1).
                        let b = input[0];
                        input = &input[1..];
                        if *cr {
                            if b != b'\n' {
                                return Err("bare CR in a chunk size line".into());
                            }
                            if *digits == 0 {
                                return Err("empty chunk size".into());
                            }
                            *left = *size;
                            (*size, *digits, *after, *ext, *cr, *in_size) =
                                (0, 0, false, false, false, false);
                            if *left == 0 {
                                return Ok(()); // last chunk: the stream is over
                            }
                            continue;
                        }
                        let hex = match b {
                            b'0'..=b'9' => Some(b - b'0'),
                            b'a'..=b'f' => Some(b - b'a' + 10),
                            b'A'..=b'F' => Some(b - b'A' + 10),
                            _ => None,
                        };
                        match (b, hex) {
                            (b'\r', _) => *cr = true,
                            (_, _) if *ext => {
                                if b == b'\n' {
                                    return Err("a chunk size line must end with CRLF".into());
                                }
                            }
                            (_, Some(v)) if !*after => {
                                *digits += 1;
                                *size = *size * 16 + usize::from(v);
                            }
                            (b' ' | b'\t', _) if *digits > 0 => *after = true,
                            (b';', _) if *digits > 0 => *ext = true,
                            _ => return Err(format!("bad chunk size byte {b:#x}")),
                        }
                        if *size > 1 << 30 {
                            return Err("absurd chunk size".into());
                        }
                        continue;
                    }
                    let n = (*left).min(input.len());
                    out(&input[..n]);
                    input = &input[n..];
                    *left -= n;
                    if *left == 0 {
                        *in_size = true;
                        *skip_lf = 2;
                    }
                }
                Ok(())
            }
        }
    }
}

/// One dispatched event, as the bench needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) seq: u64,
    pub(crate) ts_ns: u64,
}

/// A strict, allocation-free (after warm-up) SSE parser.
#[derive(Debug, Default)]
pub(crate) struct Sse {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    after_cr: bool,
    /// Past the optional leading BOM.
    started: bool,
    /// Bytes of a leading BOM matched so far.
    bom: u8,
    /// Events dispatched with data.
    pub(crate) events: u64,
    /// Dispatched events whose data held no `"seq":` (not from this bench).
    pub(crate) foreign: u64,
}

impl Sse {
    pub(crate) fn feed(&mut self, bytes: &[u8], on_event: &mut impl FnMut(Seen)) {
        const BOM: &[u8; 3] = b"\xEF\xBB\xBF";
        let mut bytes = bytes;
        // A leading UTF-8 BOM is ignored, also when it arrives split across reads.
        while !self.started && !bytes.is_empty() {
            let k = usize::from(self.bom);
            if bytes[0] == BOM[k] {
                self.bom += 1;
                bytes = &bytes[1..];
                self.started = self.bom == 3;
            } else {
                // Not a BOM after all: what matched is the stream's first bytes.
                self.line.extend_from_slice(&BOM[..k]);
                self.started = true;
            }
        }
        let mut i = 0;
        while i < bytes.len() {
            if self.after_cr {
                // The LF of a CRLF pair ends no second line.
                self.after_cr = false;
                if bytes[i] == b'\n' {
                    i += 1;
                    continue;
                }
            }
            match memchr::memchr2(b'\n', b'\r', &bytes[i..]) {
                None => {
                    self.line.extend_from_slice(&bytes[i..]);
                    break;
                }
                Some(off) => {
                    let end = i + off;
                    if self.line.is_empty() {
                        self.line_done(&bytes[i..end], on_event);
                    } else {
                        self.line.extend_from_slice(&bytes[i..end]);
                        let line = std::mem::take(&mut self.line);
                        self.line_done(&line, on_event);
                        self.line = line;
                        self.line.clear();
                    }
                    self.after_cr = bytes[end] == b'\r';
                    i = end + 1;
                }
            }
        }
    }

    fn line_done(&mut self, line: &[u8], on_event: &mut impl FnMut(Seen)) {
        if line.is_empty() {
            if self.has_data {
                self.events += 1;
                match (
                    number_after(&self.data, &SEQ_KEY),
                    number_after(&self.data, &TS_KEY),
                ) {
                    (Some(seq), Some(ts_ns)) => on_event(Seen { seq, ts_ns }),
                    _ => self.foreign += 1,
                }
            }
            self.data.clear();
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        }
        // `event`, `id`, `retry` and unknown fields do not matter to the bench.
    }
}

/// The searchers for the payload's keys, built once: `memmem::find` would build one
/// per call, which cost more than the search itself (`perf` at 10,000 subscribers).
static SEQ_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"seq\":"));
static TS_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"ts\":"));

/// The unsigned integer right after `key` in `hay` (e.g. `"seq":42`), allowing a space.
fn number_after(hay: &[u8], key: &Finder<'_>) -> Option<u64> {
    let at = key.find(hay)? + key.needle().len();
    let mut rest = &hay[at..];
    while let [b' ', tail @ ..] = rest {
        rest = tail;
    }
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    // At most 19 digits: fits in a u64 without overflow.
    Some(
        rest[..digits]
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> (Vec<Seen>, Sse) {
        let mut p = Sse::default();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut |s| out.push(s));
        }
        (out, p)
    }

    #[test]
    fn events_across_chunks_and_line_ends() {
        let s = b"retry: 1\n\nid: 1\nevent: x\ndata: {\"seq\":1,\"ts\":5}\n\n: hb\n\ndata: {\"seq\":2,\r\ndata:  \"ts\":6}\r\n\r\ndata: {\"seq\":3,\"ts\":7}\r\r";
        for split in 0..s.len() {
            let (a, b) = s.split_at(split);
            let (out, p) = parse(&[a, b]);
            assert_eq!(
                out,
                [
                    Seen { seq: 1, ts_ns: 5 },
                    Seen { seq: 2, ts_ns: 6 },
                    Seen { seq: 3, ts_ns: 7 }
                ],
                "split at {split}"
            );
            assert_eq!((p.events, p.foreign), (3, 0));
        }
    }

    #[test]
    fn a_bom_split_across_reads_is_skipped() {
        // Found by a review: a BOM split across reads became part of the first
        // field's name, and that event was lost.
        let s = b"\xEF\xBB\xBFdata: {\"seq\":1,\"ts\":2}\n\n";
        for split in 0..=3 {
            let (a, b) = s.split_at(split);
            let (out, _) = parse(&[a, b]);
            assert_eq!(out, [Seen { seq: 1, ts_ns: 2 }], "split at {split}");
        }
        let (out, _) = parse(&[b"\xEF", b"\xBB", b"\xBFdata: {\"seq\":1,\"ts\":2}\n\n"]);
        assert_eq!(out.len(), 1);
        // Half a BOM followed by something else is part of the first line: a field
        // named "\xEFdata", which is ignored.
        let (out, p) = parse(&[
            b"\xEF",
            b"data: {\"seq\":1,\"ts\":2}\n\ndata: {\"seq\":2,\"ts\":3}\n\n",
        ]);
        assert_eq!((out, p.events), (vec![Seen { seq: 2, ts_ns: 3 }], 1));
    }

    #[test]
    fn foreign_and_empty_events() {
        let (out, p) = parse(&[b"data: hello\n\nid: 3\n\ndata\n\n"]);
        assert!(out.is_empty());
        assert_eq!((p.events, p.foreign), (2, 2));
    }

    #[test]
    fn numbers_after_keys() {
        assert_eq!(number_after(br#"{"seq":42,"ts":7}"#, &SEQ_KEY), Some(42));
        assert_eq!(number_after(br#"{"seq":  42}"#, &SEQ_KEY), Some(42));
        assert_eq!(number_after(br#"{"ts":7}"#, &SEQ_KEY), None);
        assert_eq!(number_after(br#"{"seq":x}"#, &SEQ_KEY), None);
        let max = format!(r#"{{"seq":{}}}"#, "9".repeat(19));
        assert_eq!(
            number_after(max.as_bytes(), &SEQ_KEY),
            Some(9_999_999_999_999_999_999)
        );
        let long = format!(r#"{{"seq":{}}}"#, "9".repeat(20));
        assert_eq!(number_after(long.as_bytes(), &SEQ_KEY), None);
    }

    #[test]
    fn chunked_bodies() {
        let mut body = Body::chunked();
        let wire = b"5\r\nhello\r\na;ext=1\r\n0123456789\r\n0\r\n\r\n";
        let mut got = Vec::new();
        for b in wire.chunks(3) {
            body.decode(b, &mut |x| got.extend_from_slice(x)).unwrap();
        }
        assert_eq!(got, b"hello0123456789");
        // Malformed size lines (found by a review: an empty one was taken for the
        // last chunk, and spaces or a bare CR inside a size were accepted).
        for wire in [
            &b"zz\r\n"[..],
            b"\r\n5\r\nhello\r\n",
            b"5\n",
            b"5\rx",
            b"1 0\r\n",
            b" 5\r\n",
            b";x\r\n",
            b"5;ext\n",
        ] {
            let mut bad = Body::chunked();
            assert!(
                bad.decode(wire, &mut |_| {}).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        // Whitespace before an extension is allowed (RFC 9112 BWS).
        let mut ok = Body::chunked();
        let mut got = Vec::new();
        ok.decode(b"5 ;a=b\r\nhello\r\n", &mut |x| got.extend_from_slice(x))
            .unwrap();
        assert_eq!(got, b"hello");
    }

    #[test]
    fn heads() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nrest";
        let (status, body, end) = parse_head(head).unwrap().unwrap();
        assert_eq!((status, end), (200, head.len() - 4));
        assert!(matches!(body, Body::Chunked { .. }));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n").is_none());
    }
}
