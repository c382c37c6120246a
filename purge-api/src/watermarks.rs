//! Nodes' watermarks as every purge API instance sees them, with the NATS log.
//!
//! Why a KV bucket: with the NATS log no API instance talks to the nodes; each node reads
//! the stream and puts its watermark (the highest purge it applied with all before it) in
//! the stream's JetStream KV bucket under its name ([`edge::purge_stream::watermark_key`]).
//! Every instance watches the bucket, so any of them answers `GET /v1/purges/{id}` for any
//! purge, whichever instance accepted it. The bucket keeps one value per node and is
//! replicated like the stream.
//!
//! Invariant: a reported watermark is only ever one a node reached, so status may lag
//! (until the next report, at most ~100 ms while purges flow) but never claims a purge
//! applied that is not.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use edge::purge_stream::watermark_bucket;
use futures_util::StreamExt;
use tokio::sync::watch;

/// Watches the watermark bucket of `stream` until `stop`, calling `seen(key, watermark)`
/// for every node's current value and then for every new report. Restarts the watch
/// (backing off up to 1 s) when NATS goes away or the bucket does not exist yet.
pub async fn watch_forever(
    js: jetstream::Context,
    stream: String,
    seen: impl Fn(&str, u64) + Send,
    mut stop: watch::Receiver<bool>,
) {
    let bucket = watermark_bucket(&stream);
    let mut backoff = Duration::from_millis(50);
    loop {
        let result = tokio::select! {
            result = watch_once(&js, &bucket, &seen) => result,
            _ = stop.wait_for(|s| *s) => return,
        };
        match result {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) => tracing::debug!(%bucket, error = %e, "watermark watch restarts"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

async fn watch_once(
    js: &jetstream::Context,
    bucket: &str,
    seen: &impl Fn(&str, u64),
) -> Result<(), String> {
    let store = js
        .get_key_value(bucket)
        .await
        .map_err(|e| format!("bucket not reachable: {e}"))?;
    let mut watch = store
        .watch_all()
        .await
        .map_err(|e| format!("cannot watch: {e}"))?;
    while let Some(entry) = watch.next().await {
        let entry = entry.map_err(|e| format!("watch broke off: {e}"))?;
        if entry.operation != kv::Operation::Put {
            continue;
        }
        match parse(&entry.value) {
            Some(watermark) => seen(&entry.key, watermark),
            None => {
                tracing::warn!(key = %entry.key, "a node reported a watermark that is not a number: ignored")
            }
        }
    }
    Err("watch ended".into())
}

/// A watermark as nodes write it: decimal ASCII.
fn parse(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_are_decimal() {
        assert_eq!(parse(b"42"), Some(42));
        assert_eq!(parse(b" 7\n"), Some(7));
        assert_eq!(parse(b"x"), None);
        assert_eq!(parse(b""), None);
    }
}
