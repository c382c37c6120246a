//! Header names that cross between nodes of the CDN.
//!
//! Invariant: every request header one tier sends the next to change what that tier does
//! is listed in [`INTERNAL`]. A node honours them only on a request that carries a valid
//! [`NODE_PROOF`] (an HMAC keyed with the node token, see `edge::node_auth`), and removes
//! all of them from every request before anything reads it, so a client can never set
//! them and they never reach an origin.

/// Request header on edge -> shield fills: the purge watermark of the asking node. A shield
/// that has applied less answers from upstream rather than from its cache, so it cannot
/// refill an edge with content the edge has already purged. Internal.
pub const PURGE_SEQ: &str = "cdn-purge-seq";

/// Request header proving the request's internal headers come from a node of this CDN:
/// an HMAC over the request and those headers, keyed with the node token. Internal.
pub const NODE_PROOF: &str = "cdn-node-proof";

/// Header carrying the shared secret on node admin calls (purge pushes, drains, log
/// reads) between the purge API, operators' tools and the nodes. Never valid on a public
/// listener; removed from client requests like the internal headers so a client cannot
/// make a node forward it.
pub const NODE_TOKEN: &str = "cdn-node-token";

/// Every header a node removes from client requests on arrival.
pub const INTERNAL: [&str; 3] = [PURGE_SEQ, NODE_PROOF, NODE_TOKEN];

/// Whether a request header name (lower-case, as `http` stores it) is reserved for nodes:
/// the `cdn-` prefix, which the fast path checks without building a header map.
pub fn is_reserved(name: &[u8]) -> bool {
    name.len() > 4 && name[..4].eq_ignore_ascii_case(b"cdn-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_internal_header_is_reserved() {
        for name in INTERNAL {
            assert!(is_reserved(name.as_bytes()), "{name}");
        }
        assert!(is_reserved(b"CDN-Purge-Seq"));
        assert!(!is_reserved(b"cdn-"));
        assert!(!is_reserved(b"cache-control"));
    }
}
