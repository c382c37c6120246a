//! The cache-key normaliser: never panics, a normalized target starts with '/', and
//! normalizing it again changes nothing (so the key and the upstream request agree).
#![no_main]

use edge::cache::key::{QueryMode, QueryPolicy, normalize_target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(target) = std::str::from_utf8(rest) else {
        return;
    };
    let policy = QueryPolicy {
        mode: match mode % 3 {
            0 => QueryMode::Keep,
            1 => QueryMode::Sort,
            _ => QueryMode::Ignore,
        },
        drop: if mode & 4 != 0 {
            vec!["utm_source".into(), "a".into()]
        } else {
            vec![]
        },
    };
    if let Ok(once) = normalize_target(target, &policy) {
        assert!(once.starts_with('/'), "{target:?} -> {once:?}");
        let twice = normalize_target(&once, &policy).expect("a normalized target normalizes");
        assert_eq!(once, twice, "not idempotent for {target:?}");
    }
});
