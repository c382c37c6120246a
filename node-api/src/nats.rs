//! The purge log on NATS JetStream as both sides name it: the stream's subjects, the
//! watermark bucket and its keys, the stream name rules, and (with the `nats` feature) the
//! client every node and purge API instance connects with. The API publishes and reads
//! purges under these names; each node reads the stream and reports its watermark under
//! them, so the two can never disagree on a name.

#[cfg(feature = "nats")]
use std::time::Duration;

/// The stream purges go to unless configured otherwise.
pub const DEFAULT_STREAM: &str = "CDN_PURGES";

/// At least one server, each a `nats://host:port` (or `host:port`) address.
#[cfg(feature = "nats")]
pub fn validate_servers(servers: &[String]) -> Result<(), String> {
    if servers.is_empty() {
        return Err("nats.servers lists no NATS server (e.g. [\"nats://10.0.0.1:4222\"])".into());
    }
    for server in servers {
        if server.parse::<async_nats::ServerAddr>().is_err() {
            return Err(format!(
                "nats.servers: {server:?} is not a NATS address such as nats://10.0.0.1:4222"
            ));
        }
    }
    Ok(())
}

/// A JetStream stream name usable in subjects and bucket names: letters, digits, `-`, `_`.
pub fn validate_stream_name(stream: &str) -> Result<(), String> {
    let ok = !stream.is_empty()
        && stream.len() <= 64
        && stream
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "nats.stream {stream:?} must be 1 to 64 letters, digits, '-' or '_'"
        ))
    }
}

/// The subjects the stream holds: every purge is published under the stream's name.
pub fn stream_subjects(stream: &str) -> String {
    format!("{stream}.>")
}

/// The subject of a purge without an `Idempotency-Key`.
pub fn purge_subject(stream: &str) -> String {
    format!("{stream}.p")
}

/// The subject of a purge with an `Idempotency-Key`: one subject per (publisher, key), so
/// the API finds the purge a key created with one last-by-subject lookup. Both parts are
/// hex-encoded, since subject tokens may not hold `.`, `*`, `>` or spaces.
pub fn keyed_subject(stream: &str, publisher: &str, key: &str) -> String {
    format!("{stream}.k.{}.{}", hex(publisher), hex(key))
}

/// The subjects the stream republishes every stored purge on (JetStream `RePublish`),
/// each purge's subject under `{stream}_LIVE.` with its sequence number in the
/// `Nats-Sequence` header: nodes that keep up read purges there, one plain NATS delivery
/// each, and read the stream itself only to catch up. Not under [`stream_subjects`] (a
/// republish may not feed its own stream); the wildcard is kept, as the server requires
/// of a republish from a wildcard source.
pub fn live_subjects(stream: &str) -> String {
    format!("{stream}_LIVE.>")
}

/// The KV bucket where nodes report their watermarks.
pub fn watermark_bucket(stream: &str) -> String {
    format!("{stream}_WATERMARKS")
}

/// A node's key in the watermark bucket: its name with every byte outside
/// `[A-Za-z0-9_-]` written as `=XX` (KV keys allow few characters), so any node name maps
/// to one key and back.
pub fn watermark_key(node: &str) -> String {
    let mut key = String::with_capacity(node.len());
    for b in node.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            key.push(char::from(b));
        } else {
            key.push_str(&format!("={b:02X}"));
        }
    }
    key
}

/// The subject a node publishes its watermark reports on as plain NATS messages, between
/// its puts in the watermark bucket: fresh reports cost the servers one delivery per API
/// instance, not a stored write (at 1,000 nodes, ten puts a second each were most of the
/// NATS server's work and slowed every purge's acknowledgement; issue 24).
pub fn watermark_subject(stream: &str, node: &str) -> String {
    format!("{stream}_WM.{}", watermark_key(node))
}

/// What API instances subscribe to for every node's [`watermark_subject`].
pub fn watermark_subjects(stream: &str) -> String {
    format!("{stream}_WM.*")
}

/// A node's watermark report, as put in the bucket and published on its subject:
/// `"{watermark} {at_ms}"`, `at_ms` the node's Unix time in milliseconds when it read the
/// watermark. The time orders the two ways a report travels (a bucket put seen after a
/// newer plain message is older, not a fall); a bare `"{watermark}"` (an older node) has
/// no time and is taken as it comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkReport {
    pub watermark: u64,
    pub at_ms: Option<u64>,
}

impl WatermarkReport {
    /// A report of `watermark` read now.
    pub fn now(watermark: u64) -> Self {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        WatermarkReport {
            watermark,
            at_ms: Some(at_ms),
        }
    }

    pub fn encode(&self) -> String {
        match self.at_ms {
            Some(at_ms) => format!("{} {at_ms}", self.watermark),
            None => self.watermark.to_string(),
        }
    }

    /// `None` for anything but one or two decimal numbers.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let mut parts = std::str::from_utf8(value).ok()?.split_ascii_whitespace();
        let watermark = parts.next()?.parse().ok()?;
        let at_ms = match parts.next() {
            Some(at) => Some(at.parse().ok()?),
            None => None,
        };
        parts
            .next()
            .is_none()
            .then_some(WatermarkReport { watermark, at_ms })
    }
}

/// How long the client waits before a connection attempt, `attempts` counting from 1 since
/// the last connection (the client passes 1 for the first attempt at start and after a
/// connection is lost): none for the first, so a starting node connects at once (a delay
/// there was 100 ms of every node's start, one at a time, 104 s for 1,000 nodes: issue
/// 24), then 200 ms doubling up to 1 s while the servers stay away.
#[cfg(feature = "nats")]
pub fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    Duration::from_millis(50u64.saturating_mul(1 << attempts.min(5))).min(Duration::from_secs(1))
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// A NATS client that keeps (re)connecting in the background, to any of `servers`, so a
/// node or an API instance starts while NATS is down and resumes when it returns.
/// The first attempt is made at once; later ones back off up to 1 s ([`reconnect_delay`]).
#[cfg(feature = "nats")]
pub async fn connect(servers: &[String], name: &str) -> Result<async_nats::Client, String> {
    validate_servers(servers)?;
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(1))
        .ping_interval(Duration::from_secs(2))
        .reconnect_delay_callback(reconnect_delay)
        .connect(servers)
        .await
        .map_err(|e| format!("cannot set up the NATS client for {servers:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_keys_are_valid_kv_keys_and_distinct() {
        assert_eq!(watermark_key("edge-eu-1"), "edge-eu-1");
        assert_eq!(watermark_key("edge.eu_1"), "edge=2Eeu_1");
        assert_ne!(watermark_key("a.b"), watermark_key("a_b"));
        assert!(
            watermark_key("x!#$%&'*+.^`|~")
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b))
        );
    }

    #[test]
    fn watermark_reports_carry_their_time_and_old_ones_parse_without() {
        let report = WatermarkReport {
            watermark: 42,
            at_ms: Some(1_765_000_000_123),
        };
        assert_eq!(report.encode(), "42 1765000000123");
        assert_eq!(
            WatermarkReport::parse(report.encode().as_bytes()),
            Some(report)
        );
        assert_eq!(
            WatermarkReport::parse(b" 7\n"),
            Some(WatermarkReport {
                watermark: 7,
                at_ms: None
            })
        );
        for bad in [&b"x"[..], b"", b"1 2 3", b"1 x", b"-1"] {
            assert_eq!(WatermarkReport::parse(bad), None, "{bad:?}");
        }
        assert_eq!(watermark_subject("P", "edge.eu"), "P_WM.edge=2Eeu");
        assert_eq!(watermark_subjects("P"), "P_WM.*");
    }

    #[test]
    fn keyed_subjects_are_single_tokens_per_part() {
        assert_eq!(purge_subject("P"), "P.p");
        assert_eq!(
            keyed_subject("P", "acme", "a.b c"),
            "P.k.61636d65.612e622063"
        );
        assert_eq!(stream_subjects("P"), "P.>");
        assert_eq!(watermark_bucket("P"), "P_WATERMARKS");
    }

    #[cfg(feature = "nats")]
    #[test]
    fn the_first_connection_attempt_is_immediate_and_later_ones_back_off() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(200));
        assert_eq!(reconnect_delay(3), Duration::from_millis(400));
        assert_eq!(reconnect_delay(4), Duration::from_millis(800));
        assert_eq!(reconnect_delay(5), Duration::from_secs(1));
        assert_eq!(reconnect_delay(usize::MAX), Duration::from_secs(1));
    }

    #[test]
    fn stream_names_and_servers_are_checked() {
        assert!(validate_stream_name("CDN_PURGES-eu").is_ok());
        for bad in ["", "a.b", "a b", "a>"] {
            assert!(validate_stream_name(bad).is_err(), "{bad}");
        }
        #[cfg(feature = "nats")]
        {
            assert!(validate_servers(&[]).is_err());
            assert!(validate_servers(&["nats://127.0.0.1:4222".into()]).is_ok());
        }
    }
}
