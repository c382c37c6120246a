//! The Cache-Control parser: any field value parses (unknown or broken directives are
//! ignored), without panicking.
#![no_main]

use edge::cache::control::CacheControl;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = CacheControl::parse(text);
    }
});
