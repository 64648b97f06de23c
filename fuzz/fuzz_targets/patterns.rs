//! Topic patterns and claim matching: parsing never panics; a `{sub}` pattern only
//! ever grants topics that literally contain a safe subject; a match is exact or a
//! prefix match, nothing else.
#![no_main]

use herald::Topic;
use herald::auth::Pattern;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (String, Option<String>, String)| {
    let (pattern, sub, topic) = input;
    let Ok(p) = Pattern::parse(&pattern, sub.as_deref()) else {
        return;
    };
    if pattern.contains("{sub}") {
        let sub = sub.as_deref().unwrap_or_default();
        assert!(!sub.is_empty());
        assert!(!sub.contains([':', '/', '*', ',', '\n', '\r']));
    }
    let Ok(t) = Topic::new(&topic) else { return };
    match &p {
        Pattern::Exact(e) => assert_eq!(p.matches(&t), e == t.as_str()),
        Pattern::Prefix(x) => assert_eq!(p.matches(&t), t.as_str().starts_with(x.as_str())),
    }
});
