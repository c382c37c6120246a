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

/// Most bytes a node reads of a batch's body (`POST /v1/purge` on its admin listener);
/// a longer one is answered `413` (before a byte is read when its `Content-Length` says
/// so). The purge API never sends more: [`BatchBuilder`] closes a batch before it would
/// pass this, and a batch always has room for one purge, since no purge encodes to more
/// than [`MAX_PURGE_BYTES`].
pub const MAX_BATCH_BYTES: usize = 4 << 20;

/// Most bytes one purge may take in a batch (its [`SequencedPurge`] JSON, with the
/// largest sequence number): a quarter of [`MAX_BATCH_BYTES`], so one purge plus the
/// batch's framing always fits. The purge API refuses (`413`) a purge that encodes to
/// more, and its request body limit (`limits.max_body_bytes`) may not exceed
/// [`MAX_PURGE_BODY_BYTES`], so no request it reads can become such a purge.
pub const MAX_PURGE_BYTES: usize = 1 << 20;

/// What encoding a purge request as a [`SequencedPurge`] may add to it, at most: the
/// sequence number and the `purge`/`selector`/`kind`/`values`/`mode` members (under 150
/// bytes). Every string is written with no more escapes than JSON required of the
/// request, so the targets themselves never grow.
pub const PURGE_ENCODING_OVERHEAD: usize = 4096;

/// The largest request body limit a purge API may set (`limits.max_body_bytes`): any
/// purge read from a body this long fits in [`MAX_PURGE_BYTES`], hence in a batch.
pub const MAX_PURGE_BODY_BYTES: usize = MAX_PURGE_BYTES - PURGE_ENCODING_OVERHEAD;

/// Most bytes of a `POST /v1/purge/reset` body (`{"applied": N}`) a node reads.
pub const MAX_RESET_BYTES: usize = 1024;

/// Builds the body of a [`PurgeBatch`] from purges in order, up to a size: the purge API's
/// side of [`MAX_BATCH_BYTES`]. The body is exactly what serializing a `PurgeBatch` of the
/// purges taken would give.
#[derive(Debug)]
pub struct BatchBuilder {
    body: Vec<u8>,
    limit: usize,
    purges: usize,
    last: u64,
}

/// `{"purges":[` and `]}`.
const BATCH_FRAMING: usize = 13;
const _: () = assert!(MAX_PURGE_BYTES + BATCH_FRAMING <= MAX_BATCH_BYTES);

impl BatchBuilder {
    /// An empty batch whose body will stay within `limit` bytes (clamped to
    /// [`MAX_BATCH_BYTES`]), except that the first purge is always taken.
    pub fn new(limit: usize) -> Self {
        let mut body = Vec::with_capacity(limit.min(MAX_BATCH_BYTES).min(64 * 1024));
        body.extend_from_slice(br#"{"purges":["#);
        Self {
            body,
            limit: limit.min(MAX_BATCH_BYTES),
            purges: 0,
            last: 0,
        }
    }

    /// Adds `purge` (already encoded as JSON) if the batch stays within its limit, or if
    /// the batch is empty; `false` when it is full and `purge` was not taken.
    pub fn push_encoded(&mut self, seq: u64, encoded: &[u8]) -> bool {
        let comma = usize::from(self.purges > 0);
        if self.purges > 0 && self.body.len() + comma + encoded.len() + 2 > self.limit {
            return false;
        }
        if comma == 1 {
            self.body.push(b',');
        }
        self.body.extend_from_slice(encoded);
        self.purges += 1;
        self.last = seq;
        true
    }

    /// How many purges were taken.
    pub fn len(&self) -> usize {
        self.purges
    }

    pub fn is_empty(&self) -> bool {
        self.purges == 0
    }

    /// The sequence number of the last purge taken (0 when empty).
    pub fn last_seq(&self) -> u64 {
        self.last
    }

    /// The body: a [`PurgeBatch`] in JSON.
    pub fn finish(mut self) -> Vec<u8> {
        self.body.extend_from_slice(b"]}");
        self.body
    }
}

/// The length of `purge` in a batch: its [`SequencedPurge`] JSON, with the longest
/// sequence number, as the purge API checks it against [`MAX_PURGE_BYTES`].
pub fn encoded_len(purge: &Purge) -> usize {
    /// A [`SequencedPurge`] by reference: the same JSON without copying the purge.
    #[derive(Serialize)]
    struct Sequenced<'a> {
        seq: u64,
        purge: &'a Purge,
    }
    /// Counts what is written.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let sequenced = Sequenced {
        seq: u64::MAX,
        purge,
    };
    match serde_json::to_writer(&mut count, &sequenced) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
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

/// The purge API's answer to `GET /v1/purges?limit=N`: the caller's most recent purges,
/// newest first, each with how many nodes have applied it (as the API last heard from
/// them). The operator console shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentPurges {
    /// The newest sequence number in the log (any publisher's).
    pub head: u64,
    pub purges: Vec<PurgeSummary>,
}

/// One purge of [`RecentPurges`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeSummary {
    /// The id `POST /v1/purge` answered (`GET /v1/purges/{id}` for its status).
    pub id: String,
    pub seq: u64,
    pub site: String,
    /// The selector's kind ([`Selector::kind`]) and how many targets it names.
    pub selector: String,
    pub targets: usize,
    pub mode: Mode,
    /// When the API accepted it, in Unix milliseconds.
    pub accepted_at_ms: u64,
    /// Nodes the API pushes to (or watches), and how many of them have applied it.
    pub expected: usize,
    pub applied: usize,
    /// The nodes that have not applied it yet.
    pub lagging: Vec<String>,
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

    fn url_purge(seq: u64, len: usize) -> SequencedPurge {
        SequencedPurge {
            seq,
            purge: Purge {
                site: "assets".into(),
                selector: Selector::Urls(vec![format!("https://a.example/{}", "x".repeat(len))]),
                mode: Mode::Hard,
            },
        }
    }

    #[test]
    fn a_built_batch_is_a_purge_batch_within_its_limit_and_takes_at_least_one_purge() {
        let purges: Vec<SequencedPurge> = (1..=50).map(|seq| url_purge(seq, 1000)).collect();
        let limit = 10_000;
        let mut builder = BatchBuilder::new(limit);
        for purge in &purges {
            if !builder.push_encoded(purge.seq, &serde_json::to_vec(purge).unwrap()) {
                break;
            }
        }
        let taken = builder.len();
        assert_eq!(builder.last_seq(), taken as u64);
        let body = builder.finish();
        assert!(body.len() <= limit, "{} bytes", body.len());
        let batch = PurgeBatch {
            purges: purges[..taken].to_vec(),
        };
        assert_eq!(
            body,
            serde_json::to_vec(&batch).unwrap(),
            "same JSON as serde's"
        );
        // One more would not have fitted: the batch is as full as the limit allows.
        let next = serde_json::to_vec(&purges[taken]).unwrap();
        assert!(body.len() + 1 + next.len() > limit);
        // A purge larger than the limit still goes, alone.
        let mut builder = BatchBuilder::new(100);
        let big = url_purge(1, 500);
        assert!(builder.push_encoded(1, &serde_json::to_vec(&big).unwrap()));
        assert!(!builder.push_encoded(2, &serde_json::to_vec(&url_purge(2, 1)).unwrap()));
        let alone: PurgeBatch = serde_json::from_slice(&builder.finish()).unwrap();
        assert_eq!(alone.purges, vec![big]);
    }

    #[test]
    fn encoded_len_is_the_length_in_a_batch_with_the_longest_sequence_number() {
        let purge = url_purge(u64::MAX, 100);
        assert_eq!(
            encoded_len(&purge.purge),
            serde_json::to_vec(&purge).unwrap().len()
        );
    }

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
