//! A node's most requested objects (`GET /v1/hot` on its admin listener), which `cdn warm`
//! reads to copy one region's hot set into another region's caches before traffic moves.

use serde::{Deserialize, Serialize};

/// One cached object and the requests answered from it since it was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotObject {
    /// Absolute URL (`http://host/path?query`).
    pub url: String,
    pub hits: u64,
}

/// The body of `GET /v1/hot`: most hits first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotList {
    pub node: String,
    pub objects: Vec<HotObject>,
}
