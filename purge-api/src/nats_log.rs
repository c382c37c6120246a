//! [`PurgeLog`] on a NATS JetStream stream: the multi-machine, multi-instance log.
//!
//! Why JetStream: a replicated, ordered, durable stream with deduplication and resumable
//! readers is exactly the purge log; running an existing engine beats inventing a
//! replication protocol. Any number of purge API instances publish to one stream and are
//! interchangeable; nodes read it themselves (`edge::purge_stream`) and report their
//! watermarks in a KV bucket ([`crate::watermarks`]).
//!
//! Invariants:
//! - Acknowledged means stored: [`NatsLog::append`] returns a sequence number only from
//!   the stream's publish acknowledgement, which JetStream sends once a majority of the
//!   stream's replicas stored the message. The API answers `202` only after that; when
//!   NATS is unreachable or does not acknowledge within `ack_timeout`, the purge is
//!   refused with `503` (it may still be stored later, from the client's buffer: an extra
//!   purge, never a lost one).
//! - The stream's sequence number is the purge's sequence number and id. Every message in
//!   the stream is a purge, so sequence numbers are consecutive except where retention
//!   dropped the oldest.
//! - The stream republishes every purge it stores on [`live_subjects`]: nodes that keep up
//!   read it there (a plain NATS delivery per node) rather than each through a consumer of
//!   its own, which made every publish acknowledgement wait on a thousand consumers.
//! - Every message carries a `Nats-Msg-Id`, so a publish retried within the stream's
//!   duplicate window (2 minutes) is stored once. A purge with an `Idempotency-Key` is
//!   published on its own subject ([`keyed_subject`]) with an id derived from the
//!   publisher, the key and the request's fingerprint (stored in the record): two
//!   instances accepting the same keyed request at once store it once, and any instance
//!   finds it later with a last-by-subject lookup and compares fingerprints. Two
//!   *different* requests with one key that race past the lookup on two instances are
//!   both stored (both purge; the id does not merge them, which would drop one silently);
//!   the lookup then finds the latest. (Unlike the file log's index, which keeps the
//!   first: they differ only for such races.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use node_api::nats::{
    keyed_subject, live_subjects, purge_subject, stream_subjects, watermark_bucket,
};
use node_api::purge::StreamRecord;
use tokio::sync::{OnceCell, watch};

use crate::config::NatsLogConfig;
use crate::log::{LogEntry, LogError, NewEntry, PurgeLog, Retention};
use crate::request::Fingerprint;

/// How long deduplication by `Nats-Msg-Id` remembers an id.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How often the head is refreshed from the stream (other instances append too).
const HEAD_REFRESH: Duration = Duration::from_millis(500);

/// The purge log in a JetStream stream.
#[derive(Debug)]
pub struct NatsLog {
    client: async_nats::Client,
    js: jetstream::Context,
    config: NatsLogConfig,
    retention: Retention,
    /// Created (or found) on first use, so the API starts while NATS is down.
    stream: OnceCell<stream::Stream>,
    head: watch::Sender<u64>,
    /// Makes this instance's message ids unique among instances.
    instance: String,
    published: AtomicU64,
}

impl NatsLog {
    /// A log on the stream `config` names. Connects in the background (the API starts and
    /// answers `503` while NATS is down); creates the stream and the watermark bucket once
    /// NATS answers, with `retention` as the stream's message and age limits.
    pub async fn connect(
        config: &NatsLogConfig,
        retention: Retention,
    ) -> Result<Arc<Self>, LogError> {
        let client = node_api::nats::connect(&config.servers, "cdn-purge-api")
            .await
            .map_err(|reason| LogError::Unavailable {
                op: "connecting",
                reason,
            })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.ack_timeout)
            .build(client.clone());
        let inbox = client.new_inbox();
        let instance = inbox.rsplit('.').next().unwrap_or(&inbox).to_owned();
        let log = Arc::new(NatsLog {
            client,
            js,
            config: config.clone(),
            retention,
            stream: OnceCell::new(),
            head: watch::Sender::new(0),
            instance,
            published: AtomicU64::new(0),
        });
        // Best effort at start: a log that cannot reach NATS yet still starts.
        if let Err(e) = log.refresh_head().await {
            tracing::warn!(error = %e, "purge stream not reachable yet; purges get 503 until it is");
        }
        tokio::spawn(track_head(Arc::downgrade(&log)));
        Ok(log)
    }

    /// The JetStream context, for the watermark watcher.
    pub fn jetstream(&self) -> jetstream::Context {
        self.js.clone()
    }

    /// The stream's name.
    pub fn stream_name(&self) -> &str {
        &self.config.stream
    }

    fn unavailable(op: &'static str, e: impl std::fmt::Display) -> LogError {
        LogError::Unavailable {
            op,
            reason: e.to_string(),
        }
    }

    /// Refuses at once when the client has no server, rather than after a timeout.
    fn connected(&self, op: &'static str) -> Result<(), LogError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(Self::unavailable(
                op,
                format!("not connected to any NATS server ({state:?})"),
            )),
        }
    }

    /// The stream, creating it and the watermark bucket if this is the first instance.
    async fn stream(&self) -> Result<&stream::Stream, LogError> {
        let placement = self
            .config
            .cluster
            .as_ref()
            .map(|cluster| stream::Placement {
                cluster: Some(cluster.clone()),
                tags: Vec::new(),
            });
        self.stream
            .get_or_try_init(|| async {
                let config = stream::Config {
                    name: self.config.stream.clone(),
                    subjects: vec![stream_subjects(&self.config.stream)],
                    max_messages: i64::try_from(self.retention.max_entries).unwrap_or(i64::MAX),
                    max_age: self.retention.max_age,
                    num_replicas: self.config.replicas,
                    duplicate_window: DUPLICATE_WINDOW,
                    storage: stream::StorageType::File,
                    discard: stream::DiscardPolicy::Old,
                    placement: placement.clone(),
                    republish: Some(stream::Republish {
                        source: stream_subjects(&self.config.stream),
                        destination: live_subjects(&self.config.stream),
                        headers_only: false,
                    }),
                    ..Default::default()
                };
                let mut stream = self
                    .js
                    .get_or_create_stream(config.clone())
                    .await
                    .map_err(|e| Self::unavailable("creating the purge stream", e))?;
                // A stream made before nodes read the live subject: republish from now on
                // (its other settings are left as they are).
                if stream.cached_info().config.republish.is_none() {
                    let mut updated = stream.cached_info().config.clone();
                    updated.republish = config.republish;
                    self.js.update_stream(updated).await.map_err(|e| {
                        Self::unavailable("adding republishing to the purge stream", e)
                    })?;
                    stream = self
                        .js
                        .get_stream(&self.config.stream)
                        .await
                        .map_err(|e| Self::unavailable("reading the purge stream", e))?;
                }
                // The bucket's stream is created as a KV bucket's would be, rather than
                // with `create_key_value`, which first asks for account details that
                // nats-server 2.9 (Debian's) answers in a form the client cannot read.
                let bucket = watermark_bucket(&self.config.stream);
                if self.js.get_key_value(&bucket).await.is_err() {
                    self.js
                        .get_or_create_stream(stream::Config {
                            name: format!("KV_{bucket}"),
                            subjects: vec![format!("$KV.{bucket}.>")],
                            max_messages_per_subject: 1,
                            allow_rollup: true,
                            deny_delete: true,
                            allow_direct: true,
                            discard: stream::DiscardPolicy::New,
                            num_replicas: self.config.replicas,
                            storage: stream::StorageType::File,
                            placement: placement.clone(),
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| Self::unavailable("creating the watermark bucket", e))?;
                }
                Ok(stream)
            })
            .await
    }

    /// The stream's first and last sequence numbers, and the head moved up to the last.
    async fn bounds(&self, op: &'static str) -> Result<(u64, u64), LogError> {
        self.connected(op)?;
        let info = self
            .stream()
            .await?
            .get_info()
            .await
            .map_err(|e| Self::unavailable(op, e))?;
        self.raise_head(info.state.last_sequence);
        Ok((info.state.first_sequence, info.state.last_sequence))
    }

    async fn refresh_head(&self) -> Result<(), LogError> {
        self.bounds("reading the stream's head").await.map(|_| ())
    }

    fn raise_head(&self, to: u64) {
        self.head.send_if_modified(|head| {
            let grew = to > *head;
            if grew {
                *head = to;
            }
            grew
        });
    }

    fn decode(message: &jetstream::message::StreamMessage) -> Result<LogEntry, LogError> {
        let record: StreamRecord =
            serde_json::from_slice(&message.payload).map_err(|source| LogError::Corrupt {
                seq: message.sequence,
                source,
            })?;
        Ok(LogEntry {
            seq: message.sequence,
            publisher: record.publisher,
            purge: record.purge,
            idempotency_key: record.idempotency_key,
            request_fingerprint: record.request_fingerprint.map(Fingerprint::stored),
            accepted_at_ms: record.accepted_at_ms,
        })
    }

    /// Publishes one purge; the returned future resolves to its acknowledgement.
    async fn publish(&self, entry: NewEntry) -> Result<PublishAckFuture, LogError> {
        let stream = &self.config.stream;
        let (subject, id) = match &entry.idempotency_key {
            Some(key) => {
                let subject = keyed_subject(stream, &entry.publisher, key);
                let id = match &entry.request_fingerprint {
                    Some(fingerprint) => format!("{subject}.{}", fingerprint.as_str()),
                    None => subject.clone(),
                };
                (subject, id)
            }
            None => {
                let n = self.published.fetch_add(1, Ordering::Relaxed);
                (purge_subject(stream), format!("{}-{n}", self.instance))
            }
        };
        let record = StreamRecord {
            publisher: entry.publisher,
            purge: entry.purge,
            idempotency_key: entry.idempotency_key,
            request_fingerprint: entry.request_fingerprint.map(|f| f.as_str().to_owned()),
            accepted_at_ms: entry.accepted_at_ms,
        };
        let payload = serde_json::to_vec(&record).map_err(LogError::Encode)?;
        self.js
            .send_publish(
                subject,
                jetstream::message::PublishMessage::build()
                    .payload(payload.into())
                    .message_id(id),
            )
            .await
            .map_err(|e| Self::unavailable("publishing a purge", e))
    }
}

/// Keeps the head close to the stream's (other instances append too) while the log lives.
async fn track_head(log: Weak<NatsLog>) {
    loop {
        tokio::time::sleep(HEAD_REFRESH).await;
        let Some(log) = log.upgrade() else {
            return;
        };
        if let Err(e) = log.refresh_head().await {
            tracing::debug!(error = %e, "purge stream head not refreshed");
        }
    }
}

#[async_trait::async_trait]
impl PurgeLog for NatsLog {
    async fn append(&self, batch: Vec<NewEntry>) -> Result<Vec<u64>, LogError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.connected("appending purges")?;
        self.stream().await?;
        // Publish the whole batch, then collect the acknowledgements: one round trip for
        // the group rather than one per purge.
        let mut acks = Vec::with_capacity(batch.len());
        for entry in batch {
            acks.push(self.publish(entry).await?);
        }
        let mut seqs = Vec::with_capacity(acks.len());
        for ack in acks {
            let ack = ack
                .await
                .map_err(|e| Self::unavailable("waiting for the stream's acknowledgement", e))?;
            seqs.push(ack.sequence);
        }
        if let Some(&max) = seqs.iter().max() {
            self.raise_head(max);
        }
        Ok(seqs)
    }

    async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<LogEntry>, LogError> {
        let (first, last) = self.bounds("reading purges").await?;
        if after >= last || limit == 0 {
            return Ok(Vec::new());
        }
        if after + 1 < first {
            return Err(LogError::Truncated { oldest: first });
        }
        let stream = self.stream().await?;
        let end = last.min(after.saturating_add(limit as u64));
        let mut out = Vec::with_capacity((end - after) as usize);
        for seq in after + 1..=end {
            match stream.get_raw_message(seq).await {
                Ok(message) => out.push(Self::decode(&message)?),
                // Dropped by retention since the bounds were read.
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                    return Err(LogError::Truncated { oldest: seq + 1 });
                }
                Err(e) => return Err(Self::unavailable("reading a purge", e)),
            }
        }
        Ok(out)
    }

    fn head(&self) -> u64 {
        *self.head.borrow()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    async fn find_idempotent(
        &self,
        publisher: &str,
        key: &str,
    ) -> Result<Option<LogEntry>, LogError> {
        self.connected("looking up an idempotency key")?;
        let subject = keyed_subject(&self.config.stream, publisher, key);
        match self
            .stream()
            .await?
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(message) => Self::decode(&message).map(Some),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(Self::unavailable("looking up an idempotency key", e)),
        }
    }
}
