//! Nodes' watermarks as every purge API instance sees them, with the NATS log.
//!
//! Why a KV bucket: with the NATS log no API instance talks to the nodes; each node reads
//! the stream and puts its watermark (the highest purge it applied with all before it) in
//! the stream's JetStream KV bucket under its name ([`node_api::nats::watermark_key`]).
//! Every instance watches the bucket, so any of them answers `GET /v1/purges/{id}` for any
//! purge, whichever instance accepted it. The bucket keeps one value per node and is
//! replicated like the stream. Puts are stored writes, so a node makes at most one a
//! second; between them it publishes its reports as plain messages
//! ([`node_api::nats::watermark_subject`]) every instance also subscribes to.
//!
//! Invariants: a reported watermark is only ever one a node reached, so status may lag
//! (until the next report, at most ~100 ms while purges flow) but never claims a purge
//! applied that is not. Reports carry the node's time ([`WatermarkReport`]); the caller
//! drops one older than a report it already took from the same node, so a put seen after
//! a newer message does not move a node back.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use node_api::nats::{WatermarkReport, watermark_bucket, watermark_subjects};
use tokio::sync::watch;

/// With no report for this long while some nodes are behind the log's head, their
/// watermarks are read directly from the bucket (a watch reading through a server that
/// went away can stall without an error); if that finds news, the watch starts anew.
pub const STALL_CHECK: Duration = Duration::from_secs(2);

/// Watches the watermark bucket of `stream` and the nodes' report subjects until `stop`,
/// calling `seen(key, report)` (which says whether that was news) for every node's current
/// value and then for every new report. Restarts the watch (backing off up to 1 s) when NATS goes away or the
/// bucket does not exist yet. After [`STALL_CHECK`] without a report, and whenever the
/// watch cannot be made, the keys `lagging()` names (nodes behind the log's head) are read
/// directly, so status never depends on the watch alone.
pub async fn watch_forever(
    js: jetstream::Context,
    stream: String,
    seen: impl Fn(&str, WatermarkReport) -> bool + Send,
    lagging: impl Fn() -> Vec<String> + Send,
    mut stop: watch::Receiver<bool>,
) {
    let bucket = watermark_bucket(&stream);
    let subjects = watermark_subjects(&stream);
    let mut backoff = Duration::from_millis(50);
    loop {
        let result = tokio::select! {
            result = watch_once(&js, &bucket, &subjects, &seen, &lagging) => result,
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
    subjects: &str,
    seen: &impl Fn(&str, WatermarkReport) -> bool,
    lagging: &impl Fn() -> Vec<String>,
) -> Result<(), String> {
    // Subscribed before the watch delivers the current values, so no report between is lost.
    let mut messages = js
        .client()
        .subscribe(subjects.to_owned())
        .await
        .map_err(|e| format!("cannot subscribe to {subjects}: {e}"))?;
    let prefix = subjects.trim_end_matches('*');
    let store = js
        .get_key_value(bucket)
        .await
        .map_err(|e| format!("bucket not reachable: {e}"))?;
    let mut watch = match store.watch_all().await {
        Ok(watch) => watch,
        Err(e) => {
            // After a server failover, creating the watch's consumer can fail for a while
            // when reading keys already works again (seen with nats-server 2.9): the
            // lagging nodes' keys are read directly meanwhile, so status goes on.
            let _ = read_lagging(&store, seen, lagging).await;
            return Err(format!("cannot watch: {e}"));
        }
    };
    let mut quiet_until = tokio::time::Instant::now() + STALL_CHECK;
    loop {
        let next = tokio::select! {
            entry = watch.next() => Ok(entry),
            message = messages.next() => {
                let Some(message) = message else {
                    return Err("report subscription ended".into());
                };
                let Some(key) = message.subject.as_str().strip_prefix(prefix) else {
                    continue;
                };
                match WatermarkReport::parse(&message.payload) {
                    Some(report) => {
                        seen(key, report);
                    }
                    None => tracing::warn!(%key, "a node published a watermark report that does not parse: ignored"),
                }
                continue;
            }
            () = tokio::time::sleep_until(quiet_until) => Err(()),
        };
        let entry = match next {
            Ok(Some(entry)) => {
                quiet_until = tokio::time::Instant::now() + STALL_CHECK;
                entry.map_err(|e| format!("watch broke off: {e}"))?
            }
            Ok(None) => return Err("watch ended".into()),
            Err(()) => {
                quiet_until = tokio::time::Instant::now() + STALL_CHECK;
                // A quiet watch while nodes lag may be a dead one (a server failover): the
                // keys are read directly, and news there, or a read that fails or hangs,
                // makes the watch anew (which delivers every key's latest value).
                if read_lagging(&store, seen, lagging).await? {
                    return Err("the watch missed reports; watching anew".into());
                }
                continue;
            }
        };
        if entry.operation != kv::Operation::Put {
            continue;
        }
        match WatermarkReport::parse(&entry.value) {
            Some(report) => {
                seen(&entry.key, report);
            }
            None => {
                tracing::warn!(key = %entry.key, "a node reported a watermark that is not a number: ignored")
            }
        }
    }
}

/// Reads the keys `lagging()` names, all at once under one [`STALL_CHECK`], and passes
/// each value to `seen`; whether any was news. An error when a read failed or hung.
async fn read_lagging(
    store: &kv::Store,
    seen: &impl Fn(&str, WatermarkReport) -> bool,
    lagging: &impl Fn() -> Vec<String>,
) -> Result<bool, String> {
    let keys = lagging();
    let reads = futures_util::future::join_all(keys.iter().map(|key| store.get(key)));
    let values = tokio::time::timeout(STALL_CHECK, reads)
        .await
        .map_err(|_| "reading lagging nodes' watermarks timed out".to_owned())?;
    let mut news = false;
    for (key, value) in keys.iter().zip(values) {
        match value {
            Ok(Some(value)) => {
                if let Some(report) = WatermarkReport::parse(&value) {
                    news |= seen(key, report);
                }
            }
            Ok(None) => {}
            Err(e) => return Err(format!("reading {key}'s watermark failed: {e}")),
        }
    }
    Ok(news)
}
