//! A node reading purges straight from the NATS JetStream purge stream.
//!
//! Why: with the embedded log, one purge API pushes every purge to every node. A CDN with
//! many API instances and nodes in many regions instead shares one replicated stream: the
//! API instances publish to it, and each node reads it from its own position. No durable
//! consumer per node is kept on the servers: the position lives in the node's store, which
//! is also what says which purges are in effect, so the two cannot disagree.
//!
//! Two ways in, one order:
//! - *Live*: the stream republishes every purge it stores on [`live_subjects`], with its
//!   sequence number; a node that keeps up reads them there, a plain NATS delivery each.
//!   With a consumer per node instead, every publish was delivered through a thousand
//!   consumers before its acknowledgement, which made accepting one purge at 1,000 nodes
//!   take 60 ms and applying it everywhere 285-483 ms at p99 (issue 24).
//! - *Catch-up*: an *ordered consumer* (ephemeral, created by the node, starting after its
//!   watermark) reads what the live subject cannot give: at start, after a live purge that
//!   skips some (a message dropped, a disconnection), and when the live subject is silent
//!   for [`STALL_CHECK`] while the stream has more (a stream without republishing).
//!   It reads up to a known sequence number and ends.
//! - The metric `edge_purge_stream_reads_total{via}` counts purges each way.
//!
//! Invariants:
//! - The stream's sequence numbers are the purge sequence numbers (every message in the
//!   stream is a purge), and purges are applied in that order through
//!   [`Edge::apply_purges`]. The watermark is `n` only when purges `1..=n` are in effect.
//! - Entries the node needs but the stream no longer has (retention dropped them, or the
//!   stream was recreated and is now behind the node) cannot be known: the node forgets
//!   its content ([`Edge::reset_purges`], every site's generation bumps) and reads on from
//!   what the stream has. A message that does not decode is handled the same way, never
//!   skipped.
//! - The node serves while NATS is away; it resumes from its watermark when NATS returns.
//!   At start it reads everything up to the stream's last sequence before it serves
//!   ([`Follower::catch_up`]); if it cannot, it forgets its content instead, exactly as a
//!   node of the embedded log does.
//! - With a persisted state (`[cache] state_dir`), a starting node resumes from its
//!   persisted watermark even when its memory is empty (what it stored before may still
//!   be read), and reports only the committed watermark.
//! - The watermark is reported so every purge API instance can say which nodes applied a
//!   purge: published as a plain message on the node's [`watermark_subject`] at most once
//!   per [`REPORT_EVERY`] (the first after a quiet spell at once), and put in the stream's
//!   KV bucket ([`watermark_bucket`], key [`watermark_key`] of the node name) at most once
//!   per [`STORE_EVERY`], where instances that start later find it. Reports are best
//!   effort: a lost one is repeated by the next. Every node putting every purge it applied
//!   was a stored write per purge per node, which at 1,000 nodes swamped the NATS server;
//!   at ten puts a second per node it still slowed every purge's acknowledgement (issue
//!   24).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, kv};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;

use node_api::nats::{
    WatermarkReport, live_subjects, watermark_bucket, watermark_key, watermark_subject,
};
use node_api::purge::{PurgeBatch, SequencedPurge, StreamRecord};

use crate::node::proxy::Edge;

/// With no message for this long while the stream has more than the node applied, the
/// consumer is considered stalled and created anew from the watermark.
pub const STALL_CHECK: Duration = Duration::from_secs(1);

/// Longest a new ordered consumer may take to start before the follower tries again.
const CONSUMER_START: Duration = Duration::from_secs(3);

/// Longest one request to NATS (stream state, watermark report) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// Most purges applied in one batch (one blocking-thread hop, one watermark report).
const BATCH: usize = 500;

/// Shortest time between two watermark reports of a node, and the longest a watermark
/// waits to be reported: a node publishes at most one report per this on its
/// [`watermark_subject`] however fast purges arrive.
pub const REPORT_EVERY: Duration = Duration::from_millis(100);

/// Shortest time between two puts of a node's watermark in the bucket (and the longest a
/// reported watermark waits to be put there), except at start and after a catch-up.
pub const STORE_EVERY: Duration = Duration::from_secs(1);

/// Why following the stream stopped; the follower then starts over from its watermark.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// NATS (or the stream) cannot be reached, or an operation failed. Nothing is lost:
    /// the node keeps serving and reads on from its watermark once NATS answers.
    #[error(
        "the NATS purge stream is unavailable while {op}: {reason}; the node keeps serving \
         and resumes from its watermark when NATS answers (check [purge.nats] servers and \
         that the purge API created stream {stream:?})"
    )]
    Unavailable {
        op: &'static str,
        stream: String,
        reason: String,
    },
    /// The consumer delivered nothing for [`STALL_CHECK`] while the stream had purges
    /// beyond the watermark; it is created anew.
    #[error(
        "the purge consumer stalled at {watermark} while the stream reaches {last}; \
         recreating it"
    )]
    Stalled { watermark: u64, last: u64 },
    /// Applying a batch failed: a purge did not continue from the watermark.
    #[error("applying purges failed: {0}; reading again from the watermark")]
    Apply(String),
}

/// A node's reader of the purge stream.
#[derive(Debug)]
pub struct Follower {
    edge: Arc<Edge>,
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    watermarks: Option<kv::Store>,
    /// The node's [`watermark_subject`] and its key in the bucket ([`watermark_key`]).
    report_subject: async_nats::Subject,
    report_key: String,
    /// The last watermark published on the node's subject.
    reported: Option<u64>,
    /// When a report was last published: the next is due [`REPORT_EVERY`] after it.
    tried: Option<Instant>,
    /// The last watermark put in the bucket.
    stored: Option<u64>,
    /// When a put was last tried (whether or not it worked): the next is due
    /// [`STORE_EVERY`] after it.
    store_tried: Option<Instant>,
}

impl Follower {
    pub fn new(edge: Arc<Edge>, client: async_nats::Client, stream: &str) -> Self {
        let js = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .build(client.clone());
        Follower {
            report_subject: watermark_subject(stream, edge.name()).into(),
            report_key: watermark_key(edge.name()),
            edge,
            client,
            js,
            stream: stream.to_owned(),
            watermarks: None,
            reported: None,
            tried: None,
            stored: None,
            store_tried: None,
        }
    }

    /// Reads and applies everything up to the stream's last sequence number at the time
    /// of the call: what a starting node does before it serves. A node that
    /// [starts fresh](Edge::starts_fresh) (nothing stored, no persisted position) has
    /// nothing to purge and just takes the stream's last sequence number; one with a
    /// persisted state reads on from its persisted watermark. Returns the watermark
    /// reached.
    pub async fn catch_up(&mut self) -> Result<u64, FollowError> {
        let (_, last) = self.bounds().await?;
        let watermark = self.edge.store().purge_watermark();
        if self.edge.starts_fresh() && last > watermark {
            let edge = self.edge.clone();
            tokio::task::spawn_blocking(move || edge.start_at(last))
                .await
                .map_err(|e| FollowError::Apply(e.to_string()))?
                .map_err(|e| FollowError::Apply(e.to_string()))?;
            self.report(true).await;
            return Ok(last);
        }
        self.run(Some(last)).await
    }

    /// Follows the stream until `stop`: applies purges as they are published, reports the
    /// watermark, and starts over from the watermark after any failure (backing off up to
    /// 500 ms). Runs as a task for the life of the node.
    pub async fn follow(mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let result = tokio::select! {
                result = self.live() => result,
                _ = stop.wait_for(|s| *s) => return,
            };
            if let Err(error) = result {
                match error {
                    FollowError::Stalled { .. } => {
                        tracing::info!(node = %self.edge.name(), %error, "purge stream");
                    }
                    _ => tracing::warn!(node = %self.edge.name(), %error, "purge stream"),
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(Duration::from_millis(500));
            } else {
                backoff = Duration::from_millis(50);
            }
        }
    }

    /// The stream's first and last sequence numbers.
    async fn bounds(&self) -> Result<(u64, u64), FollowError> {
        // One request: the lookup answers with the stream's state.
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| self.unavailable("reading the stream's state", e))?;
        let state = &stream.cached_info().state;
        Ok((state.first_sequence, state.last_sequence))
    }

    fn unavailable(&self, op: &'static str, e: impl std::fmt::Display) -> FollowError {
        FollowError::Unavailable {
            op,
            stream: self.stream.clone(),
            reason: e.to_string(),
        }
    }

    /// Makes the node consistent with what the stream still has, before reading it: a
    /// node ahead of the stream (recreated stream) or behind its first entry (retention)
    /// forgets its content and continues from what the stream has.
    async fn resync(&mut self) -> Result<u64, FollowError> {
        let (first, last) = self.bounds().await?;
        let watermark = self.edge.store().purge_watermark();
        if watermark > last {
            tracing::warn!(node = %self.edge.name(), watermark, last,
                "the purge stream is behind this node (was it recreated?): forgetting its content");
            self.reset(last);
            return Ok(last);
        }
        // `first` is `last + 1` when the stream holds nothing.
        if watermark < last && watermark + 1 < first {
            tracing::warn!(node = %self.edge.name(), watermark, first,
                "purges this node missed were dropped by the stream's retention: forgetting its content");
            self.reset(first - 1);
            return Ok(first - 1);
        }
        Ok(watermark)
    }

    fn reset(&self, seq: u64) {
        if let Err(error) = self.edge.reset_purges(seq) {
            tracing::error!(node = %self.edge.name(), %error, "reset not persisted");
        }
    }

    /// One consumer's life: from the watermark until `until` (if given) or a failure.
    async fn run(&mut self, until: Option<u64>) -> Result<u64, FollowError> {
        let mut watermark = self.resync().await?;
        self.report(true).await;
        if until.is_some_and(|until| watermark >= until) {
            return Ok(watermark);
        }
        // Bounded as a whole: while the stream's replicas elect a new leader the steps
        // can each wait for their own timeout, and a node must retry rather than hang.
        let start = async {
            let stream = self
                .js
                .get_stream_no_info(&self.stream)
                .await
                .map_err(|e| self.unavailable("looking up the stream", e))?;
            let consumer = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: watermark + 1,
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| self.unavailable("creating the ordered consumer", e))?;
            consumer
                .messages()
                .await
                .map_err(|e| self.unavailable("starting the ordered consumer", e))
        };
        let mut messages = tokio::time::timeout(CONSUMER_START, start)
            .await
            .map_err(|_| {
                self.unavailable(
                    "starting the ordered consumer",
                    format!("not started within {CONSUMER_START:?}"),
                )
            })??;
        // When the consumer last delivered (or the stream was last checked): a stall is
        // checked for STALL_CHECK after it.
        let mut heard = Instant::now();
        loop {
            let first = match self.next_reporting(&mut messages, heard).await {
                Next::Item(Ok(message)) => message,
                Next::Item(Err(e)) => return Err(self.unavailable("reading the stream", e)),
                Next::Ended => return Err(self.unavailable("reading the stream", "consumer ended")),
                Next::Quiet => {
                    heard = Instant::now();
                    let (_, last) = self.bounds().await?;
                    if last > watermark {
                        return Err(FollowError::Stalled { watermark, last });
                    }
                    self.report(true).await;
                    continue;
                }
            };
            heard = Instant::now();
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match messages.next().now_or_never() {
                    Some(Some(Ok(message))) => batch.push(message),
                    Some(Some(Err(e))) => {
                        tracing::debug!(error = %e, "purge stream read ended a batch early");
                        break;
                    }
                    _ => break,
                }
            }
            let mut purges = Vec::with_capacity(batch.len());
            for message in &batch {
                let seq = message
                    .info()
                    .map_err(|e| self.unavailable("reading a message's sequence", e))?
                    .stream_sequence;
                self.take(
                    seq,
                    &message.payload,
                    &mut purges,
                    &mut watermark,
                    Via::CatchUp,
                )
                .await?;
            }
            watermark = self.apply(purges, watermark, Via::CatchUp).await?;
            if until.is_some_and(|until| watermark >= until) {
                self.report(true).await;
                return Ok(watermark);
            }
            self.report(false).await;
        }
    }

    /// Reads purges from the stream's live subject ([`live_subjects`]) and applies them,
    /// catching up through an ordered consumer first and whenever the live subject skips a
    /// purge (a message dropped, a disconnection) or falls silent while the stream has
    /// more. Returns only on a failure.
    async fn live(&mut self) -> Result<u64, FollowError> {
        // Subscribed before catching up, so nothing published meanwhile is missed.
        let mut live = self
            .client
            .subscribe(live_subjects(&self.stream))
            .await
            .map_err(|e| self.unavailable("subscribing to the live purges", e))?;
        let (_, last) = self.bounds().await?;
        let mut watermark = self.run(Some(last)).await?;
        let mut heard = Instant::now();
        loop {
            let first = match self.next_reporting(&mut live, heard).await {
                Next::Item(message) => message,
                Next::Ended => {
                    return Err(self.unavailable("reading the live purges", "subscription ended"));
                }
                Next::Quiet => {
                    heard = Instant::now();
                    let (_, last) = self.bounds().await?;
                    if last > watermark {
                        tracing::info!(node = %self.edge.name(), watermark, last,
                            "no live purge for a while although the stream has more: catching up");
                        watermark = self.run(Some(last)).await?;
                    }
                    self.report(true).await;
                    continue;
                }
            };
            heard = Instant::now();
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match live.next().now_or_never() {
                    Some(Some(message)) => batch.push(message),
                    _ => break,
                }
            }
            let mut purges = Vec::with_capacity(batch.len());
            let mut next = watermark + 1;
            for message in &batch {
                let Some(seq) = live_sequence(message) else {
                    tracing::warn!(node = %self.edge.name(),
                        "a live purge without a Nats-Sequence header: ignored (the stream has it)");
                    continue;
                };
                if seq < next {
                    continue;
                }
                if seq > next {
                    // Skipped purges: apply what continues the watermark, then read the
                    // rest from the stream, up to and including this one (never past what
                    // the stream has, which a stale or stray message might claim).
                    self.apply(std::mem::take(&mut purges), watermark, Via::Live)
                        .await?;
                    let (_, last) = self.bounds().await?;
                    watermark = self.run(Some(seq.min(last))).await?;
                    next = watermark + 1;
                    continue;
                }
                self.take(
                    seq,
                    &message.payload,
                    &mut purges,
                    &mut watermark,
                    Via::Live,
                )
                .await?;
                next = seq + 1;
            }
            watermark = self.apply(purges, watermark, Via::Live).await?;
            self.report(false).await;
        }
    }

    /// Applies purges in order on a blocking thread (prefix and host purges scan the
    /// store). A gap before the first one means the stream dropped entries between: the
    /// node forgets its content and continues from the purge before the gap's end.
    async fn apply(
        &self,
        purges: Vec<SequencedPurge>,
        watermark: u64,
        via: Via,
    ) -> Result<u64, FollowError> {
        let Some(first) = purges.first().map(|p| p.seq) else {
            return Ok(watermark);
        };
        self.edge
            .metrics()
            .purge_stream_read(via == Via::Live, purges.len());
        if first > watermark + 1 {
            tracing::warn!(node = %self.edge.name(), watermark, first,
                "purges between were dropped from the stream: forgetting this node's content");
            self.reset(first - 1);
        }
        self.edge
            .apply_purges_async(PurgeBatch { purges })
            .await
            .map_err(|e| FollowError::Apply(e.to_string()))?
            .map_err(|e| FollowError::Apply(e.to_string()))
    }

    /// The next item of `source`, reporting the watermark meanwhile when a report falls
    /// due; [`Next::Quiet`] once [`STALL_CHECK`] has passed since `heard` without one.
    async fn next_reporting<S: futures_util::Stream + Unpin>(
        &mut self,
        source: &mut S,
        heard: Instant,
    ) -> Next<S::Item> {
        let stall_check = heard + STALL_CHECK;
        loop {
            let wake = self
                .report_due()
                .map_or(stall_check, |due| due.min(stall_check));
            match tokio::time::timeout_at(wake.into(), source.next()).await {
                Ok(Some(item)) => return Next::Item(item),
                Ok(None) => return Next::Ended,
                Err(_) if Instant::now() < stall_check => self.report(false).await,
                Err(_) => return Next::Quiet,
            }
        }
    }

    /// Adds purge `seq`, read as `payload`, to `purges` (which continue `watermark`). One
    /// that does not decode cannot be known: what came before it is applied, then the
    /// node forgets everything and goes on after it.
    async fn take(
        &self,
        seq: u64,
        payload: &[u8],
        purges: &mut Vec<SequencedPurge>,
        watermark: &mut u64,
        via: Via,
    ) -> Result<(), FollowError> {
        match serde_json::from_slice::<StreamRecord>(payload) {
            Ok(record) => purges.push(SequencedPurge {
                seq,
                purge: record.purge,
            }),
            Err(e) => {
                tracing::error!(node = %self.edge.name(), seq, error = %e,
                    "a purge in the stream does not decode: forgetting this node's content");
                self.apply(std::mem::take(purges), *watermark, via).await?;
                self.reset(seq);
                *watermark = seq;
            }
        }
        Ok(())
    }

    /// When the watermark is due to be reported: published [`REPORT_EVERY`] after the last
    /// publication (at once after a quiet spell) while it is ahead of it, else put in the
    /// bucket [`STORE_EVERY`] after the last put while it is ahead of that. `None` when
    /// both have it.
    fn report_due(&self) -> Option<Instant> {
        let watermark = self.edge.acknowledged_watermark();
        if self.reported != Some(watermark) {
            return Some(
                self.tried
                    .map_or_else(Instant::now, |tried| tried + REPORT_EVERY),
            );
        }
        if self.stored != Some(watermark) {
            return Some(
                self.store_tried
                    .map_or_else(Instant::now, |tried| tried + STORE_EVERY),
            );
        }
        None
    }

    /// Reports the node's watermark if it changed: published on its
    /// [`watermark_subject`] when `now` or when the last publication is [`REPORT_EVERY`]
    /// old, and put in the bucket when `now` or when the last put is [`STORE_EVERY`] old.
    /// Failures are logged and retried by the next report.
    async fn report(&mut self, now: bool) {
        // What is committed, when the node keeps a state: never more than is durable.
        let watermark = self.edge.acknowledged_watermark();
        let publish = self.reported != Some(watermark)
            && (now
                || self
                    .tried
                    .is_none_or(|tried| tried.elapsed() >= REPORT_EVERY));
        let store = self.stored != Some(watermark)
            && (now
                || self
                    .store_tried
                    .is_none_or(|tried| tried.elapsed() >= STORE_EVERY));
        if !publish && !store {
            return;
        }
        let report = WatermarkReport::now(watermark).encode();
        if publish {
            self.tried = Some(Instant::now());
            let subject = self.report_subject.clone();
            match self.client.publish(subject, report.clone().into()).await {
                Ok(()) => self.reported = Some(watermark),
                Err(e) => {
                    tracing::debug!(error = %e, "watermark report failed; the next one retries")
                }
            }
        }
        if !store {
            return;
        }
        self.store_tried = Some(Instant::now());
        if self.watermarks.is_none() {
            match self.js.get_key_value(watermark_bucket(&self.stream)).await {
                Ok(store) => self.watermarks = Some(store),
                Err(e) => {
                    tracing::debug!(error = %e, "watermark bucket not reachable yet");
                    return;
                }
            }
        }
        let Some(bucket) = &self.watermarks else {
            return;
        };
        match bucket.put(&self.report_key, report.into()).await {
            Ok(_) => self.stored = Some(watermark),
            Err(e) => tracing::debug!(error = %e, "watermark put failed; the next one retries"),
        }
    }
}

/// What waiting on a source of purges gave ([`Follower::next_reporting`]).
enum Next<T> {
    Item(T),
    Ended,
    /// Nothing for [`STALL_CHECK`].
    Quiet,
}

/// How purges came from the stream: republished as stored, or through a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Live,
    CatchUp,
}

/// A live purge's sequence number in the stream, from the header its republishing adds.
fn live_sequence(message: &async_nats::Message) -> Option<u64> {
    message
        .headers
        .as_ref()?
        .get(async_nats::header::NATS_SEQUENCE)?
        .as_str()
        .parse()
        .ok()
}
