//! The contract of [`PurgeLog`] as one battery of checks that every implementation runs
//! (the hickory-dns layout): [`FileLog`](crate::log::FileLog) in this crate's unit tests,
//! [`NatsLog`](crate::nats_log::NatsLog) against a real `nats-server` in the workspace's
//! integration tests. An implementation passes the same suite or is not a purge log.
//!
//! Each check takes a fresh, empty log from `fresh` and panics with what broke.

use std::future::Future;
use std::sync::Arc;

use node_api::purge::{Mode, Purge, Selector};

use crate::log::{LogEntry, NewEntry, PurgeLog};
use crate::request::Fingerprint;

/// Runs every check, each on a fresh log.
pub async fn run<F, Fut>(mut fresh: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Arc<dyn PurgeLog>>,
{
    appends_are_consecutive_and_move_the_head(&*fresh().await).await;
    an_empty_append_is_a_no_op(&*fresh().await).await;
    reads_return_later_entries_in_order_up_to_the_limit(&*fresh().await).await;
    an_idempotency_key_finds_its_entry_and_fingerprint(&*fresh().await).await;
}

async fn appends_are_consecutive_and_move_the_head(log: &dyn PurgeLog) {
    assert_eq!(log.head(), 0, "a new log is empty");
    let mut heads = log.subscribe();
    assert_eq!(append(log, 0..3).await, [1, 2, 3]);
    assert_eq!(
        append(log, 3..5).await,
        [4, 5],
        "numbers go on across batches"
    );
    assert_eq!(log.head(), 5);
    assert!(heads.has_changed().unwrap_or(false), "subscribers are told");
    assert_eq!(*heads.borrow_and_update(), 5);
}

async fn an_empty_append_is_a_no_op(log: &dyn PurgeLog) {
    append(log, 0..1).await;
    let mut heads = log.subscribe();
    heads.borrow_and_update();
    let none = log.append(Vec::new()).await.expect("an empty append");
    assert!(none.is_empty());
    assert_eq!(log.head(), 1);
    assert!(!heads.has_changed().unwrap_or(true), "nothing to tell");
}

async fn reads_return_later_entries_in_order_up_to_the_limit(log: &dyn PurgeLog) {
    append(log, 0..5).await;
    let all = read(log, 0, 100).await;
    assert_eq!(seqs(&all), [1, 2, 3, 4, 5]);
    for (n, entry) in all.iter().enumerate() {
        assert_eq!(entry.purge, purge(n as u64), "entry {}", entry.seq);
        assert_eq!(entry.publisher, "acme");
        assert_eq!(entry.idempotency_key, None);
    }
    assert_eq!(seqs(&read(log, 2, 2).await), [3, 4]);
    assert!(read(log, 5, 100).await.is_empty(), "nothing after the head");
}

async fn an_idempotency_key_finds_its_entry_and_fingerprint(log: &dyn PurgeLog) {
    append(log, 0..2).await;
    let purge = purge(7);
    let fingerprint = Fingerprint::of("POST", "/v1/purge", &purge);
    let keyed = NewEntry {
        idempotency_key: Some("retry-1".into()),
        request_fingerprint: Some(fingerprint.clone()),
        ..entry(purge)
    };
    let seq = log.append(vec![keyed]).await.expect("append")[0];
    let found = log
        .find_idempotent("acme", "retry-1")
        .await
        .expect("lookup")
        .expect("the keyed entry");
    assert_eq!(found.seq, seq);
    assert_eq!(found.fingerprint(), fingerprint);
    for (publisher, key) in [("acme", "retry-2"), ("other", "retry-1")] {
        let none = log.find_idempotent(publisher, key).await.expect("lookup");
        assert!(none.is_none(), "{publisher}/{key} found {none:?}");
    }
}

fn purge(n: u64) -> Purge {
    Purge {
        site: "assets".into(),
        selector: Selector::Urls(vec![format!("https://a.example/{n}.js")]),
        mode: Mode::Hard,
    }
}

fn entry(purge: Purge) -> NewEntry {
    NewEntry {
        publisher: "acme".into(),
        purge,
        idempotency_key: None,
        request_fingerprint: None,
        // Now: an entry older than the default retention would be dropped at once.
        accepted_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    }
}

async fn append(log: &dyn PurgeLog, range: std::ops::Range<u64>) -> Vec<u64> {
    let batch = range.map(|n| entry(purge(n))).collect();
    log.append(batch).await.expect("append")
}

async fn read(log: &dyn PurgeLog, after: u64, limit: usize) -> Vec<LogEntry> {
    log.read_after(after, limit).await.expect("read")
}

fn seqs(entries: &[LogEntry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}
