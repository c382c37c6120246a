//! Header maps for unit tests, written as `(name, value)` pairs.

use http::{HeaderMap, HeaderValue};

/// A header map with every pair appended in order (repeated names stay repeated).
pub fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            *name,
            HeaderValue::from_str(value).expect("valid test header value"),
        );
    }
    map
}
