//! Purge commands as nodes receive them: the wire types shared by the purge API (which
//! sequences, logs and fans them out) and every edge and shield (which apply them in
//! sequence order and report how far they got).
//!
//! Invariants:
//! - Sequence numbers are consecutive from 1, across all publishers: a node applies purge
//!   `n` only after `n - 1`, so "applied up to `n`" (its watermark) means every purge up to
//!   `n` is in effect on that node.
//! - A purge names one site; its targets are checked against the site's hosts by the API
//!   before it is logged, and again by the node, which ignores targets outside the site.

use serde::{Deserialize, Serialize};

pub use node_api::headers::{NODE_TOKEN as NODE_TOKEN_HEADER, PURGE_SEQ as PURGE_SEQ_HEADER};

/// Whether a secret presented (a node token, a publisher's bearer token) is the expected
/// one, in time that does not depend on where they first differ.
pub fn tokens_match(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// What one purge removes, within one site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Purge {
    /// The site's configured name.
    pub site: String,
    pub selector: Selector,
    #[serde(default)]
    pub mode: Mode,
}

/// Which objects of the site a purge removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "values", rename_all = "snake_case")]
pub enum Selector {
    /// Absolute URLs (`https://assets.example.com/app.js?v=2`), every `Vary` variant of each.
    Urls(Vec<String>),
    /// Surrogate keys / cache tags, as responses listed them in `Surrogate-Key` or
    /// `Cache-Tag`.
    Tags(Vec<String>),
    /// URL prefixes (`https://assets.example.com/img/`): every object whose URL starts so.
    Prefixes(Vec<String>),
    /// Whole host names of the site.
    Hosts(Vec<String>),
    /// Everything the site has cached.
    Everything,
}

impl Selector {
    /// A bounded label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Selector::Urls(_) => "urls",
            Selector::Tags(_) => "tags",
            Selector::Prefixes(_) => "prefixes",
            Selector::Hosts(_) => "hosts",
            Selector::Everything => "everything",
        }
    }

    /// How many targets it names (1 for everything).
    pub fn len(&self) -> usize {
        match self {
            Selector::Urls(v) | Selector::Tags(v) | Selector::Prefixes(v) | Selector::Hosts(v) => {
                v.len()
            }
            Selector::Everything => 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Hard purges delete; soft purges mark stale, so the next request revalidates and the
/// object can still be served if the origin fails (`stale-if-error`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Hard,
    Soft,
}

/// A purge with its place in the global order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequencedPurge {
    pub seq: u64,
    pub purge: Purge,
}

/// What the purge API pushes to a node: purges with consecutive sequence numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeBatch {
    pub purges: Vec<SequencedPurge>,
}

/// A node's answer to a batch (and to `GET /v1/purge/applied`): the highest sequence
/// number it has applied together with every one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeAck {
    pub applied: u64,
}

/// A page of the purge log, as `GET /v1/purge-log?after=N&limit=M` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeLogPage {
    /// The newest sequence number in the log.
    pub head: u64,
    /// Purges after `N`, in order, at most `M`.
    pub purges: Vec<SequencedPurge>,
}

/// The answer (`410 Gone`) when purges after `N` are no longer retained: the reader
/// cannot know what it missed and must forget its content, then continue from `head`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogTruncated {
    pub oldest: u64,
    pub head: u64,
}

/// One purge as it is stored in the NATS purge stream: the stream's sequence number is its
/// place in the global order, so the record does not carry it. Written by the purge API,
/// read by nodes (which use only [`purge`](StreamRecord::purge)) and by API instances
/// reporting status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRecord {
    /// The publisher whose token accepted it.
    pub publisher: String,
    pub purge: Purge,
    /// The request's `Idempotency-Key`, if it had one.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// The keyed request's fingerprint, which API instances compare with a later request
    /// reusing the key; opaque to nodes. Absent from records without a key and from those
    /// written before fingerprints were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_fingerprint: Option<String>,
    /// When the API accepted it, in Unix milliseconds.
    pub accepted_at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_format_is_stable_json() {
        let purge = SequencedPurge {
            seq: 7,
            purge: Purge {
                site: "assets".into(),
                selector: Selector::Urls(vec!["https://a.example/x.js".into()]),
                mode: Mode::Soft,
            },
        };
        let json = serde_json::to_string(&purge).unwrap();
        assert_eq!(
            json,
            r#"{"seq":7,"purge":{"site":"assets","selector":{"kind":"urls","values":["https://a.example/x.js"]},"mode":"soft"}}"#
        );
        assert_eq!(
            serde_json::from_str::<SequencedPurge>(&json).unwrap(),
            purge
        );
        let all: Purge =
            serde_json::from_str(r#"{"site":"s","selector":{"kind":"everything"}}"#).unwrap();
        assert_eq!(all.selector, Selector::Everything);
        assert_eq!(all.mode, Mode::Hard);
    }
}
