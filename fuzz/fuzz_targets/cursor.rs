//! Topic lists and cursors: parsing never panics, a cursor a set issued decodes
//! back to its positions, and a decoded cursor re-encodes to itself.
#![no_main]

use herald::{Position, TopicSet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<String>, String, Vec<(u64, u64)>)| {
    let (lists, cursor, raw) = input;
    let Ok(set) = TopicSet::parse(lists.iter().map(String::as_str), 32) else {
        return;
    };
    if let Ok(ps) = set.decode(&cursor) {
        assert_eq!(ps.len(), set.topics().len());
        assert_eq!(set.decode(&set.encode(&ps)).unwrap(), ps);
    }
    if raw.len() >= set.topics().len() {
        let ps: Vec<Position> = raw[..set.topics().len()]
            .iter()
            .map(|&(m, s)| Position::new(m, s))
            .collect();
        assert_eq!(set.decode(&set.encode(&ps)).unwrap(), ps);
    }
});
