//! The SSE encoder: whatever id, event name and data it is given, the output is
//! exactly one event whose data a spec parser reads back (line ends as LF), and no
//! field can be injected through the id or the name.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (String, String, String)| {
    let (id, name, data) = input;
    let bytes = herald::sse::encode_event(Some(&id), &name, data.as_bytes());
    let text = std::str::from_utf8(&bytes).expect("UTF-8 in, UTF-8 out");
    assert!(text.ends_with("\n\n"));
    let body = &text[..text.len() - 1];
    let mut lines = body.split('\n');
    let id_line = lines.next().unwrap();
    let event_line = lines.next().unwrap();
    assert!(id_line.starts_with("id: ") && !id_line.contains('\r'));
    assert!(event_line.starts_with("event: ") && !event_line.contains('\r'));
    let mut got = Vec::new();
    for l in lines {
        if l.is_empty() {
            continue; // the final line end
        }
        let v = l.strip_prefix("data: ").expect("every other line is data");
        assert!(!v.contains('\r'));
        got.push(v);
    }
    let want = data.replace("\r\n", "\n").replace('\r', "\n");
    assert_eq!(got.join("\n"), want);
    // Comments cannot break out of their line either.
    let c = herald::sse::comment(&id);
    assert_eq!(c.iter().filter(|&&b| b == b'\n').count(), 2);
    assert!(!c.contains(&b'\r'));
});
