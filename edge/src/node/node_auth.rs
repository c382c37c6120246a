//! How a request proves it comes from a node of this CDN, and what a node may claim.
//!
//! Tiers talk to each other with a few request headers (see [`node_api::headers`]): an
//! edge's fill tells its shield how far it has applied purges, and the shield then skips
//! its cache for a copy the edge may have purged. A client must never be able to say the
//! same, or one header turns the CDN into an origin-bypass amplifier. So:
//!
//! - Every request arriving at a node has every internal header removed by
//!   [`take_claims`] before anything else reads the request; what they said survives only
//!   as [`NodeClaims`], and only when the request carries a valid proof.
//! - The proof (`cdn-node-proof`) is HMAC-SHA256, keyed with the node token every node of
//!   the CDN shares, over the method, `Host`, target and the claims themselves. The token
//!   never crosses the wire, and a proof is good only for that exact request and claim:
//!   replaying one captured between tiers can only repeat what it already asked.
//! - A node without a token neither signs nor believes anything.

use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ring::hmac;

use node_api::headers::{INTERNAL, NODE_PROOF, PURGE_SEQ};

static PURGE_SEQ_HEADER: HeaderName = HeaderName::from_static(PURGE_SEQ);
static PROOF_HEADER: HeaderName = HeaderName::from_static(NODE_PROOF);

/// What a proven node said about itself on a request. Empty for every client request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeClaims {
    /// The asking node's purge watermark: it has applied every purge up to this one.
    pub purge_seq: Option<u64>,
}

impl NodeClaims {
    /// A request that claims nothing (every client's).
    pub const NONE: NodeClaims = NodeClaims { purge_seq: None };
}

/// The HMAC key derived from the node token.
pub struct NodeKey(hmac::Key);

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeKey(..)")
    }
}

impl NodeKey {
    pub fn new(token: &str) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes()))
    }

    /// Adds `claims` and their proof to the headers of a request this node sends
    /// upstream. `headers` must already hold the `Host` it will be sent with.
    pub fn sign(&self, headers: &mut HeaderMap, method: &Method, target: &str, claims: NodeClaims) {
        for name in INTERNAL {
            headers.remove(name);
        }
        let Some(seq) = claims.purge_seq else {
            return;
        };
        let host = headers.get(header::HOST).map_or(&b""[..], |h| h.as_bytes());
        let tag = hmac::sign(&self.0, &message(method, host, target, seq));
        let proof = HeaderValue::from_str(&hex(tag.as_ref())).expect("hex is a valid value");
        headers.insert(PURGE_SEQ_HEADER.clone(), HeaderValue::from(seq));
        headers.insert(PROOF_HEADER.clone(), proof);
    }

    fn verify(&self, method: &Method, host: &[u8], target: &str, seq: u64, proof: &[u8]) -> bool {
        let Some(tag) = unhex(proof) else {
            return false;
        };
        hmac::verify(&self.0, &message(method, host, target, seq), &tag).is_ok()
    }
}

/// Removes every internal header from a request that just arrived and returns what they
/// claimed, if `key` proves a node sent them; [`NodeClaims::NONE`] otherwise.
pub fn take_claims<B>(key: Option<&NodeKey>, request: &mut http::Request<B>) -> NodeClaims {
    let headers = request.headers_mut();
    let seq = headers.remove(&PURGE_SEQ_HEADER);
    let proof = headers.remove(&PROOF_HEADER);
    for name in INTERNAL {
        headers.remove(name);
    }
    let (Some(key), Some(seq), Some(proof)) = (key, seq, proof) else {
        return NodeClaims::NONE;
    };
    let Some(seq) = seq.to_str().ok().and_then(|v| v.parse::<u64>().ok()) else {
        return NodeClaims::NONE;
    };
    let host = match request.uri().authority() {
        Some(authority) => authority.as_str().as_bytes(),
        None => request
            .headers()
            .get(header::HOST)
            .map_or(&b""[..], |h| h.as_bytes()),
    };
    let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    if key.verify(request.method(), host, target, seq, proof.as_bytes()) {
        NodeClaims {
            purge_seq: Some(seq),
        }
    } else {
        tracing::debug!("internal headers with a wrong proof: ignored");
        NodeClaims::NONE
    }
}

/// What the proof covers. Versioned, so a change of what is signed cannot be confused
/// with the old form.
fn message(method: &Method, host: &[u8], target: &str, seq: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + host.len() + target.len());
    m.extend_from_slice(b"cdn-node-proof/1\n");
    m.extend_from_slice(method.as_str().as_bytes());
    m.push(b'\n');
    m.extend_from_slice(host);
    m.push(b'\n');
    m.extend_from_slice(target.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    m
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 128 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(host: &str, target: &str, fields: &[(&str, &str)]) -> http::Request<()> {
        let mut builder = http::Request::builder().uri(target).header("host", host);
        for (name, value) in fields {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request")
    }

    fn signed(key: &NodeKey, host: &str, target: &str, seq: u64) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        key.sign(
            &mut headers,
            &Method::GET,
            target,
            NodeClaims {
                purge_seq: Some(seq),
            },
        );
        headers
    }

    fn arrive(headers: HeaderMap, target: &str, key: Option<&NodeKey>) -> (NodeClaims, HeaderMap) {
        let mut req = http::Request::builder().uri(target).body(()).unwrap();
        *req.headers_mut() = headers;
        let claims = take_claims(key, &mut req);
        (claims, req.headers().clone())
    }

    #[test]
    fn a_signed_claim_is_believed_by_a_node_with_the_same_token() {
        let key = NodeKey::new("node-secret-0123456789");
        let headers = signed(&key, "a.test", "/x.js?v=1", 42);
        let (claims, left) = arrive(headers, "/x.js?v=1", Some(&key));
        assert_eq!(claims.purge_seq, Some(42));
        for name in INTERNAL {
            assert!(!left.contains_key(name), "{name} left on the request");
        }
    }

    #[test]
    fn claims_without_a_valid_proof_are_removed_and_ignored() {
        let key = NodeKey::new("node-secret-0123456789");
        let other = NodeKey::new("another-cdn-secret-000");
        let forged = request(
            "a.test",
            "/x.js",
            &[("cdn-purge-seq", "99999999"), ("cdn-node-token", "guess")],
        );
        let (claims, left) = arrive(forged.headers().clone(), "/x.js", Some(&key));
        assert_eq!(claims, NodeClaims::NONE);
        assert!(left.iter().all(|(n, _)| !n.as_str().starts_with("cdn-")));
        // Signed with another token, for another target, with the number changed, or
        // received by a node that has no token: none is believed.
        let cases = [
            (signed(&other, "a.test", "/x.js", 7), "/x.js", Some(&key)),
            (signed(&key, "a.test", "/y.js", 7), "/x.js", Some(&key)),
            (signed(&key, "a.test", "/x.js", 7), "/x.js", None),
        ];
        for (headers, target, receiver) in cases {
            assert_eq!(arrive(headers, target, receiver).0, NodeClaims::NONE);
        }
        let mut raised = signed(&key, "a.test", "/x.js", 7);
        raised.insert("cdn-purge-seq", HeaderValue::from_static("8"));
        assert_eq!(arrive(raised, "/x.js", Some(&key)).0, NodeClaims::NONE);
        let mut other_host = signed(&key, "a.test", "/x.js", 7);
        other_host.insert(header::HOST, HeaderValue::from_static("b.test"));
        assert_eq!(arrive(other_host, "/x.js", Some(&key)).0, NodeClaims::NONE);
    }

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        assert_eq!(
            unhex(hex(&[0, 1, 0xab, 0xff]).as_bytes()),
            Some(vec![0, 1, 0xab, 0xff])
        );
        assert_eq!(unhex(b"abc"), None);
        assert_eq!(unhex(b"zz"), None);
    }
}
