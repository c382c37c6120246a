//! The access log: one line per request, written off the request path.
//!
//! A request formats its line into this thread's scratch buffer and appends it to the
//! log's shared buffer (one uncontended lock, no allocation, no wake-up); when the buffer
//! holds its configured bound the line is dropped and counted
//! (`edge_access_log_dropped_total`), never waited for. A writer thread per log takes the
//! buffer whole every [`FLUSH_EVERY`] (or when a request finds [`WAKE_AT`] bytes pending) and writes it to a file,
//! reopened on [`AccessLog::reopen`] (SIGUSR1 or SIGHUP, for logrotate), or to stdout. Lines are
//! JSON by default, or the combined format of nginx and Apache.
//!
//! Measured: a first version that sent each record through a channel to be formatted by
//! the writer cost 44 % of the 1 KiB hit rate (an allocation per field, a wake-up of the
//! writer per line); see BENCHMARKS.md, "Access log cost".

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytesize::ByteSize;
use http::{Method, Version};
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;

use crate::front::body::{EdgeBody, Tallied};

/// How often the writer writes what the buffer holds.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// The most one write system call carries.
const WRITE_CHUNK: usize = 64 * 1024;

/// Pending bytes past which a request wakes the writer before its [`FLUSH_EVERY`]: lines
/// are then copied into the file while they are still in the core's cache, rather than
/// after 100 ms of them have pushed each other out of it.
const WAKE_AT: usize = 256 * 1024;

/// `[access_log]`: where and how a node logs its requests. Off when absent.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// A file (appended to, created if missing, reopened on SIGUSR1) or `"stdout"`.
    pub path: String,
    #[serde(default)]
    pub format: LineFormat,
    /// For `json`: the fields of a line, in order (default: every one of [`Field`]).
    #[serde(default = "Field::all")]
    pub fields: Vec<Field>,
    /// Bytes of lines held for the writer; past this a line is dropped and counted, never
    /// waited for.
    #[serde(default = "default_buffer")]
    pub buffer: ByteSize,
    /// Rotate the file once it holds this much: it is renamed `<path>.<UTC time>` and a
    /// new one started. Unset: only on SIGUSR1 (after an external logrotate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_size: Option<ByteSize>,
    /// `[access_log.nats]`: every line also published to a NATS subject per site, for
    /// real-time log streaming to publishers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsLogConfig>,
    /// Rotate the file this long after it was opened, as `rotate_size` does.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub rotate_every: Option<Duration>,
}

/// Where lines are streamed over NATS.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsLogConfig {
    /// NATS servers (`nats://host:4222`); the client reconnects to any of them.
    pub servers: Vec<String>,
    /// The subject of a site's lines; `{site}` becomes the site's name (`_` for requests
    /// of no site).
    #[serde(default = "default_subject")]
    pub subject: String,
}

fn default_subject() -> String {
    "cdn.logs.{site}".into()
}

fn default_buffer() -> ByteSize {
    ByteSize::mib(16)
}

impl AccessLogConfig {
    /// A log to `path` (a file or `"stdout"`) with every other setting at its default.
    pub fn at(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            format: LineFormat::default(),
            fields: Field::all(),
            buffer: default_buffer(),
            nats: None,
            rotate_size: None,
            rotate_every: None,
        }
    }
}

/// How a line is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LineFormat {
    /// One JSON object per line, with the configured fields.
    #[default]
    Json,
    /// nginx's and Apache's `combined`, then the cache status and total time:
    /// `client - - [time] "METHOD url HTTP/v" status body_bytes "referer" "user-agent"
    /// "cache-status" seconds`.
    Combined,
}

/// A field of a JSON line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// RFC 3339, UTC, milliseconds.
    Time,
    Client,
    Site,
    Method,
    /// `scheme://host/target` as the client asked for it.
    Url,
    Status,
    /// Head and body bytes sent (the head as the edge serialized it).
    Bytes,
    BodyBytes,
    /// Seconds from the request's head to the response's head.
    Ttfb,
    /// Seconds from the request's head to the response's last byte (or the client leaving).
    Total,
    /// The response's `Cache-Status`, every member.
    CacheStatus,
    /// The node that answered.
    Node,
    /// The server name of a TLS connection; absent over plain HTTP.
    Tls,
    /// `TLSv1.3` or `TLSv1.2`; absent over plain HTTP.
    TlsVersion,
    /// The upstream server (its configured URL) the request's fetch went to; absent for
    /// hits and for requests that joined another's fetch.
    Upstream,
    /// Seconds the upstream took to its response head.
    UpstreamTime,
    HttpVersion,
    UserAgent,
    Referer,
    /// This node's id of the request: unique per process.
    RequestId,
    /// Whether the whole body was sent (`false`: the client left or the upstream broke off).
    Complete,
}

impl Field {
    pub fn all() -> Vec<Field> {
        use Field::*;
        vec![
            Time,
            Client,
            Site,
            Method,
            Url,
            Status,
            Bytes,
            BodyBytes,
            Ttfb,
            Total,
            CacheStatus,
            Node,
            Tls,
            TlsVersion,
            Upstream,
            UpstreamTime,
            HttpVersion,
            UserAgent,
            Referer,
            RequestId,
            Complete,
        ]
    }

    fn name(self) -> &'static str {
        use Field::*;
        match self {
            Time => "time",
            Client => "client",
            Site => "site",
            Method => "method",
            Url => "url",
            Status => "status",
            Bytes => "bytes",
            BodyBytes => "body_bytes",
            Ttfb => "ttfb",
            Total => "total",
            CacheStatus => "cache_status",
            Node => "node",
            Tls => "tls",
            TlsVersion => "tls_version",
            Upstream => "upstream",
            UpstreamTime => "upstream_time",
            HttpVersion => "http_version",
            UserAgent => "user_agent",
            Referer => "referer",
            RequestId => "request_id",
            Complete => "complete",
        }
    }
}

/// One request as a line shows it, borrowed from wherever the request's parts are (the
/// connection's read buffer on the fast path): nothing is copied until it is formatted.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    pub time: SystemTime,
    pub client: SocketAddr,
    pub site: Option<&'a str>,
    pub method: &'a str,
    pub scheme: &'a str,
    pub host: &'a [u8],
    pub target: &'a [u8],
    pub status: u16,
    pub bytes: u64,
    pub body_bytes: u64,
    pub ttfb: Duration,
    pub total: Duration,
    pub cache_status: &'a [u8],
    pub tls: Option<&'a str>,
    pub tls_version: Option<&'static str>,
    pub upstream: Option<(&'a str, Duration)>,
    pub version: Version,
    pub user_agent: Option<&'a [u8]>,
    pub referer: Option<&'a [u8]>,
    pub request_id: u64,
    pub complete: bool,
}

/// A request's line held while its response is written (the full path): owned.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    pub time: SystemTime,
    pub client: SocketAddr,
    pub site: Option<Arc<str>>,
    pub method: Method,
    pub scheme: &'static str,
    pub host: String,
    pub target: String,
    pub status: u16,
    pub bytes: u64,
    pub body_bytes: u64,
    pub ttfb: Duration,
    pub total: Duration,
    pub cache_status: String,
    pub tls: Option<Arc<str>>,
    pub tls_version: Option<&'static str>,
    pub upstream: Option<(Arc<str>, Duration)>,
    pub version: Version,
    pub user_agent: Option<String>,
    pub referer: Option<String>,
    pub request_id: u64,
    pub complete: bool,
}

impl AccessRecord {
    pub fn line(&self) -> Line<'_> {
        Line {
            time: self.time,
            client: self.client,
            site: self.site.as_deref(),
            method: self.method.as_str(),
            scheme: self.scheme,
            host: self.host.as_bytes(),
            target: self.target.as_bytes(),
            status: self.status,
            bytes: self.bytes,
            body_bytes: self.body_bytes,
            ttfb: self.ttfb,
            total: self.total,
            cache_status: self.cache_status.as_bytes(),
            tls: self.tls.as_deref(),
            tls_version: self.tls_version,
            upstream: self
                .upstream
                .as_ref()
                .map(|(server, took)| (&**server, *took)),
            version: self.version,
            user_agent: self.user_agent.as_deref().map(str::as_bytes),
            referer: self.referer.as_deref().map(str::as_bytes),
            request_id: self.request_id,
            complete: self.complete,
        }
    }
}

/// Counts of a log's lines: the node's metrics register these same counters, which the
/// logs a reload starts count on.
#[derive(Debug, Default, Clone)]
pub struct LogCounts {
    pub written: Counter,
    pub dropped: Counter,
    pub write_errors: Counter,
}

/// Lines waiting for the writer.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    lines: u64,
    /// With `[access_log.nats]`: each line's site and where it ends in `bytes`.
    ends: Vec<(Option<Arc<str>>, usize)>,
}

/// What the requests and the writer share.
struct Shared {
    pending: Mutex<Pending>,
    limit: usize,
    format: LineFormat,
    fields: Vec<Field>,
    node: Arc<str>,
    counts: LogCounts,
    reopen: AtomicBool,
    closing: AtomicBool,
    writer: std::thread::Thread,
    /// Lines are also streamed over NATS.
    streams: bool,
}

/// A node's access log: cheap to clone, shared by every connection. The writer writes
/// what is pending and stops once the last clone is dropped.
#[derive(Clone)]
pub struct AccessLog {
    shared: Arc<Shared>,
    ids: Arc<AtomicU64>,
    _owner: Arc<Owner>,
}

/// Dropped with the last clone of an [`AccessLog`]: tells the writer to finish.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.closing.store(true, Ordering::Release);
        self.0.writer.unpark();
    }
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("node", &self.shared.node)
            .finish()
    }
}

/// Where the writer's lines go.
enum Sink {
    File {
        path: PathBuf,
        file: File,
        /// Bytes in the file, and when it was opened: for rotation.
        size: u64,
        opened: std::time::Instant,
    },
    Stdout(io::Stdout),
    /// Tests: any writer.
    #[cfg(test)]
    Writer(Box<dyn Write + Send>),
}

impl Sink {
    fn open(path: &str) -> io::Result<Sink> {
        if path == "stdout" {
            return Ok(Sink::Stdout(io::stdout()));
        }
        let path = PathBuf::from(path);
        let file = append(&path)?;
        Ok(Sink::File {
            size: file.metadata()?.len(),
            path,
            file,
            opened: std::time::Instant::now(),
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::File { file, .. } => file,
            Sink::Stdout(out) => out,
            #[cfg(test)]
            Sink::Writer(w) => w,
        }
    }

    /// Reopens a file by its path (after logrotate renamed it): later lines go to a new
    /// file there.
    fn reopen(&mut self) -> io::Result<()> {
        if let Sink::File {
            path,
            file,
            size,
            opened,
        } = self
        {
            *file = append(path)?;
            *size = file.metadata()?.len();
            *opened = std::time::Instant::now();
        }
        Ok(())
    }

    fn wrote(&mut self, bytes: usize) {
        if let Sink::File { size, .. } = self {
            *size += bytes as u64;
        }
    }

    /// Renames the file `<path>.<UTC time>` and starts a new one, when `rotation` says it
    /// is due.
    fn rotate_if_due(&mut self, rotation: &Rotation) -> io::Result<()> {
        let Sink::File {
            path, size, opened, ..
        } = self
        else {
            return Ok(());
        };
        let by_size = rotation.size.is_some_and(|limit| *size >= limit);
        let by_age = rotation
            .every
            .is_some_and(|every| opened.elapsed() >= every);
        if !(by_size || by_age) {
            return Ok(());
        }
        let mut stamp = Vec::new();
        rfc3339(&mut stamp, SystemTime::now());
        let stamp: String = String::from_utf8_lossy(&stamp)
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
            .collect();
        let mut rotated = path.clone().into_os_string();
        rotated.push(".");
        rotated.push(stamp);
        std::fs::rename(&*path, rotated)?;
        self.reopen()
    }
}

/// When a file is rotated by the writer itself.
#[derive(Debug, Clone, Copy, Default)]
struct Rotation {
    size: Option<u64>,
    every: Option<Duration>,
}

fn append(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Why an access log could not start.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error(
        "cannot open the access log {path}: {source} (check the directory exists and the node may write there, or set path = \"stdout\")"
    )]
    Open { path: String, source: io::Error },
    #[error("buffer must be at least 64 KiB (got {0})")]
    SmallBuffer(ByteSize),
    #[error("[access_log.nats]: {0}")]
    Nats(String),
}

impl AccessLog {
    /// Starts the log's writer thread for node `node`, counting its lines in `counts`.
    pub fn start(
        config: &AccessLogConfig,
        node: &str,
        counts: LogCounts,
    ) -> Result<Self, AccessLogError> {
        if config.buffer.as_u64() < 64 * 1024 {
            return Err(AccessLogError::SmallBuffer(config.buffer));
        }
        let sink = Sink::open(&config.path).map_err(|source| AccessLogError::Open {
            path: config.path.clone(),
            source,
        })?;
        Self::with_sink(config, node, sink, counts)
    }

    /// As [`AccessLog::start`], writing to `writer` with any buffer.
    #[cfg(test)]
    fn to_writer(
        config: &AccessLogConfig,
        node: &str,
        writer: Box<dyn Write + Send>,
    ) -> Result<Self, AccessLogError> {
        Self::with_sink(config, node, Sink::Writer(writer), LogCounts::default())
    }

    fn with_sink(
        config: &AccessLogConfig,
        node: &str,
        sink: Sink,
        counts: LogCounts,
    ) -> Result<Self, AccessLogError> {
        let (handoff, thread) = std::sync::mpsc::sync_channel::<Arc<Shared>>(1);
        let rotation = Rotation {
            size: config.rotate_size.map(|size| size.as_u64()),
            every: config.rotate_every,
        };
        if let Some(nats) = &config.nats {
            node_api::nats::validate_servers(&nats.servers).map_err(AccessLogError::Nats)?;
        }
        let nats = config.nats.clone();
        let client_name = format!("access-log-{node}");
        let spawned = std::thread::Builder::new()
            .name(format!("access-log-{node}"))
            .spawn(move || {
                if let Ok(shared) = thread.recv() {
                    let stream = nats.map(|nats| Stream::connect(nats, &client_name));
                    write_forever(&shared, sink, rotation, stream);
                }
            })
            .map_err(|source| AccessLogError::Open {
                path: config.path.clone(),
                source,
            })?;
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
            limit: usize::try_from(config.buffer.as_u64()).unwrap_or(usize::MAX),
            format: config.format,
            fields: config.fields.clone(),
            node: node.into(),
            counts,
            reopen: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            writer: spawned.thread().clone(),
            streams: config.nats.is_some(),
        });
        let _ = handoff.send(shared.clone());
        Ok(Self {
            _owner: Arc::new(Owner(shared.clone())),
            shared,
            // Ids unique per process start: the start time's microseconds above a counter.
            ids: Arc::new(AtomicU64::new(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64)
                    << 20,
            )),
        })
    }

    /// A fresh request id.
    pub fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether the request `id` is among the `share` (0 to 1) of requests logged: decided
    /// by a hash of the id, so that consecutive requests are sampled evenly.
    pub fn sampled(share: f64, id: u64) -> bool {
        if share >= 1.0 {
            return true;
        }
        let spread = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
        (spread as f64) < share * (1u64 << 53) as f64
    }

    /// Formats `line` and queues it; drops and counts it when the buffer is full. Never
    /// blocks on the writer.
    pub fn log(&self, line: &Line<'_>) {
        let shared = &*self.shared;
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            match shared.format {
                LineFormat::Json => json_line(scratch, line, &shared.fields, &shared.node),
                LineFormat::Combined => combined_line(scratch, line),
            }
            scratch.push(b'\n');
            let mut pending = shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if pending.bytes.len() + scratch.len() > shared.limit {
                drop(pending);
                shared.counts.dropped.inc();
                return;
            }
            pending.bytes.extend_from_slice(scratch);
            pending.lines += 1;
            if shared.streams {
                let end = pending.bytes.len();
                pending.ends.push((line.site.map(Arc::from), end));
            }
            // Woken once as the pending bytes cross the mark, not by every line after it.
            let before = pending.bytes.len() - scratch.len();
            let wake = before <= WAKE_AT && pending.bytes.len() > WAKE_AT;
            drop(pending);
            if wake {
                shared.writer.unpark();
            }
        });
    }

    /// Asks the writer to reopen its file by path (after logrotate moved it).
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Release);
        self.shared.writer.unpark();
    }

    pub fn counts(&self) -> &LogCounts {
        &self.shared.counts
    }
}

thread_local! {
    /// Each thread's line being formatted: formatting needs no lock and no allocation.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

/// The writer thread: every [`FLUSH_EVERY`] (or when woken), takes what is pending and
/// writes it; once the log is closing, writes the rest and returns.
/// The NATS side of the writer: a client on a runtime of the writer thread's own.
struct Stream {
    runtime: tokio::runtime::Runtime,
    client: Option<async_nats::Client>,
    subject: String,
}

impl Stream {
    fn connect(config: NatsLogConfig, name: &str) -> Stream {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the access log's NATS client");
        let client = runtime
            .block_on(node_api::nats::connect(&config.servers, name))
            .inspect_err(|error| tracing::error!(%error, "access log lines will not be streamed"))
            .ok();
        Stream {
            runtime,
            client,
            subject: config.subject,
        }
    }

    /// Publishes each line of `bytes` (ending where `ends` says) to its site's subject.
    fn publish(&self, bytes: &[u8], ends: &[(Option<Arc<str>>, usize)]) -> bool {
        let Some(client) = &self.client else {
            return false;
        };
        // Bounded: NATS away (its client's buffer full) must not stop the file's lines.
        self.runtime.block_on(async {
            tokio::time::timeout(FLUSH_EVERY * 10, self.send(client, bytes, ends))
                .await
                .unwrap_or(false)
        })
    }

    async fn send(
        &self,
        client: &async_nats::Client,
        bytes: &[u8],
        ends: &[(Option<Arc<str>>, usize)],
    ) -> bool {
        let mut start = 0;
        for (site, end) in ends {
            // Without the newline: a message is a line.
            let line = bytes::Bytes::copy_from_slice(&bytes[start..end - 1]);
            start = *end;
            let subject = self
                .subject
                .replace("{site}", site.as_deref().unwrap_or("_"));
            if client.publish(subject, line).await.is_err() {
                return false;
            }
        }
        client.flush().await.is_ok()
    }
}

/// `bytes` (whole lines) in pieces of about `size` that end at line ends: each piece is
/// one `write` to a file opened for appending, so a second writer of the same file (the
/// log a reload started, while the old one finishes) never lands inside a line.
fn line_chunks(bytes: &[u8], size: usize) -> impl Iterator<Item = &[u8]> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = if rest.len() <= size {
            rest.len()
        } else {
            rest[..size]
                .iter()
                .rposition(|&b| b == b'\n')
                .or_else(|| {
                    rest[size..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .map(|at| size + at)
                })
                .map_or(rest.len(), |at| at + 1)
        };
        let (chunk, after) = rest.split_at(end);
        rest = after;
        Some(chunk)
    })
}

fn write_forever(shared: &Shared, mut sink: Sink, rotation: Rotation, stream: Option<Stream>) {
    let mut spare = Vec::new();
    let mut ends = Vec::new();
    loop {
        std::thread::park_timeout(FLUSH_EVERY);
        if shared.reopen.swap(false, Ordering::AcqRel)
            && let Err(error) = sink.reopen()
        {
            tracing::error!(%error, "the access log could not be reopened; writing on to the old file");
        }
        let closing = shared.closing.load(Ordering::Acquire);
        let lines = {
            let mut pending = shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            std::mem::swap(&mut pending.bytes, &mut spare);
            std::mem::swap(&mut pending.ends, &mut ends);
            std::mem::take(&mut pending.lines)
        };
        if !spare.is_empty() {
            // In pieces: one write of 100 ms of lines holds the core for milliseconds,
            // which the requests waiting behind it see as their p99.
            let written = line_chunks(&spare, WRITE_CHUNK)
                .try_for_each(|chunk| sink.writer().write_all(chunk))
                .and_then(|()| sink.writer().flush());
            match written {
                Ok(()) => shared.counts.written.inc_by(lines),
                Err(_) => shared.counts.write_errors.inc(),
            };
            sink.wrote(spare.len());
            if let Some(stream) = &stream
                && !stream.publish(&spare, &ends)
            {
                shared.counts.write_errors.inc();
            }
            spare.clear();
            ends.clear();
        }
        if let Err(error) = sink.rotate_if_due(&rotation) {
            tracing::error!(%error, "the access log could not be rotated; writing on to the same file");
        }
        if closing {
            return;
        }
    }
}

/// A JSON line: the configured fields in order, those without a value (no TLS, no
/// `User-Agent`, no site) left out rather than written as `null`: lines are bytes to
/// write, and the write is most of what a line costs.
fn json_line(out: &mut Vec<u8>, r: &Line<'_>, fields: &[Field], node: &str) {
    out.push(b'{');
    let mut first = true;
    for field in fields {
        let absent = match field {
            Field::Site => r.site.is_none(),
            Field::Tls => r.tls.is_none(),
            Field::TlsVersion => r.tls_version.is_none(),
            Field::Upstream | Field::UpstreamTime => r.upstream.is_none(),
            // A refusal at the door: no request was read.
            Field::Method => r.method.is_empty(),
            Field::Url => r.host.is_empty() && r.target.is_empty(),
            Field::CacheStatus => r.cache_status.is_empty(),
            Field::UserAgent => r.user_agent.is_none(),
            Field::Referer => r.referer.is_none(),
            _ => false,
        };
        if absent {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.push(b'"');
        out.extend_from_slice(field.name().as_bytes());
        out.extend_from_slice(b"\":");
        match field {
            Field::Time => {
                out.push(b'"');
                rfc3339(out, r.time);
                out.push(b'"');
            }
            Field::Client => {
                out.push(b'"');
                ip(out, r.client.ip());
                out.push(b'"');
            }
            Field::Site => json_str(out, r.site.unwrap_or_default().as_bytes()),
            // A method is a token (RFC 9110 5.6.2), as the request parser checked.
            Field::Method => plain_str(out, r.method.as_bytes()),
            Field::Url => {
                out.push(b'"');
                out.extend_from_slice(r.scheme.as_bytes());
                out.extend_from_slice(b"://");
                json_escaped(out, r.host);
                json_escaped(out, r.target);
                out.push(b'"');
            }
            Field::Status => num(out, r.status),
            Field::Bytes => num(out, r.bytes),
            Field::BodyBytes => num(out, r.body_bytes),
            Field::Ttfb => seconds(out, r.ttfb),
            Field::Total => seconds(out, r.total),
            Field::CacheStatus => json_str(out, r.cache_status),
            // A node name is a token, as the config checked.
            Field::Node => plain_str(out, node.as_bytes()),
            Field::Tls => json_str(out, r.tls.unwrap_or_default().as_bytes()),
            Field::TlsVersion => json_str(out, r.tls_version.unwrap_or_default().as_bytes()),
            Field::Upstream => json_str(out, r.upstream.map_or("", |u| u.0).as_bytes()),
            Field::UpstreamTime => seconds(out, r.upstream.map_or(Duration::ZERO, |u| u.1)),
            Field::HttpVersion => plain_str(out, version(r.version).as_bytes()),
            Field::UserAgent => json_str(out, r.user_agent.unwrap_or_default()),
            Field::Referer => json_str(out, r.referer.unwrap_or_default()),
            Field::RequestId => {
                out.push(b'"');
                hex16(out, r.request_id);
                out.push(b'"');
            }
            Field::Complete => {
                out.extend_from_slice(if r.complete { b"true" } else { b"false" });
            }
        }
    }
    out.push(b'}');
}

fn combined_line(out: &mut Vec<u8>, r: &Line<'_>) {
    ip(out, r.client.ip());
    out.extend_from_slice(b" - - [");
    common_log_time(out, r.time);
    out.extend_from_slice(b"] ");
    if r.method.is_empty() {
        // A refusal at the door: no request line was read.
        out.extend_from_slice(b"\"-\" ");
    } else {
        out.push(b'"');
        quoted_inner(out, r.method.as_bytes());
        out.push(b' ');
        quoted_inner(out, r.scheme.as_bytes());
        out.extend_from_slice(b"://");
        quoted_inner(out, r.host);
        quoted_inner(out, r.target);
        out.push(b' ');
        out.extend_from_slice(version(r.version).as_bytes());
        out.extend_from_slice(b"\" ");
    }
    num(out, r.status);
    out.push(b' ');
    num(out, r.body_bytes);
    out.push(b' ');
    quoted(out, r.referer.unwrap_or(b"-"));
    out.push(b' ');
    quoted(out, r.user_agent.unwrap_or(b"-"));
    out.push(b' ');
    quoted(out, r.cache_status);
    out.push(b' ');
    seconds(out, r.total);
}

/// A double-quoted field of the combined format: quotes, backslashes, control and
/// non-ASCII bytes escaped as nginx does (`\xHH`), so a hostile header cannot forge a line.
fn quoted(out: &mut Vec<u8>, value: &[u8]) {
    out.push(b'"');
    quoted_inner(out, value);
    out.push(b'"');
}

fn quoted_inner(out: &mut Vec<u8>, value: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        } else {
            out.push(b);
        }
    }
}

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

fn num(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Seconds with microseconds: `0.000420`.
fn seconds(out: &mut Vec<u8>, d: Duration) {
    num(out, d.as_secs());
    let mut micros = d.subsec_micros();
    let mut digits = [b'.', 0, 0, 0, 0, 0, 0];
    for digit in digits[1..].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    out.extend_from_slice(&digits);
}

fn hex16(out: &mut Vec<u8>, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        out.push(HEX[((n >> (shift * 4)) & 15) as usize]);
    }
}

fn ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                num(out, octet);
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// A string known to need no escaping (a token, a constant).
fn plain_str(out: &mut Vec<u8>, value: &[u8]) {
    debug_assert!(value.iter().all(|&b| PLAIN[b as usize]));
    out.push(b'"');
    out.extend_from_slice(value);
    out.push(b'"');
}

fn json_str(out: &mut Vec<u8>, value: &[u8]) {
    out.push(b'"');
    json_escaped(out, value);
    out.push(b'"');
}

/// Bytes that stand for themselves inside a JSON string: printable ASCII but `"` and `\`
/// (one lookup per byte on the path every logged request takes).
const PLAIN: [bool; 256] = {
    let mut plain = [false; 256];
    let mut b = 0x20;
    while b < 0x80 {
        plain[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    plain
};

/// The inside of a JSON string (RFC 8259): quotes, backslashes and control characters
/// escaped; bytes that are not UTF-8 (a hostile header) replaced, so every line parses.
fn json_escaped(out: &mut Vec<u8>, value: &[u8]) {
    if value.iter().all(|&b| PLAIN[b as usize]) {
        out.extend_from_slice(value);
        return;
    }
    let text = String::from_utf8_lossy(value);
    for c in text.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
}

/// (year, month, day, hour, minute, second) of a time, UTC.
fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let secs = secs as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

thread_local! {
    /// The last second formatted, both ways: a date is computed once a second per thread.
    static SECOND: RefCell<(u64, String, String)> = const { RefCell::new((u64::MAX, String::new(), String::new())) };
}

/// `f(rfc3339 up to the seconds, common log time)` of `time`'s second.
fn with_second<T>(time: SystemTime, f: impl FnOnce(&str, &str) -> T) -> T {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    SECOND.with_borrow_mut(|(cached, rfc, common)| {
        if *cached != secs {
            const MONTHS: [&str; 12] = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            let (y, mo, d, h, mi, s) = civil(secs);
            *rfc = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
            *common = format!(
                "{d:02}/{}/{y:04}:{h:02}:{mi:02}:{s:02} +0000",
                MONTHS[mo as usize - 1]
            );
            *cached = secs;
        }
        f(rfc, common)
    })
}

fn rfc3339(out: &mut Vec<u8>, time: SystemTime) {
    with_second(time, |rfc, _| out.extend_from_slice(rfc.as_bytes()));
    let millis = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_millis());
    out.extend_from_slice(&[
        b'.',
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
        b'Z',
    ]);
}

fn common_log_time(out: &mut Vec<u8>, time: SystemTime) {
    with_second(time, |_, common| out.extend_from_slice(common.as_bytes()));
}

/// Which upstream server answered a request, and how long its response head took: what
/// the request's fetch records (see [`record_upstream`]) for its access log line.
pub type UpstreamSeen = Arc<Mutex<Option<(Arc<str>, Duration)>>>;

tokio::task_local! {
    /// Set while a logged request is routed, and carried into the fill it starts (which
    /// runs in a task of its own): where that request's upstream exchange is noted.
    static UPSTREAM: Option<UpstreamSeen>;
}

/// Runs `request` with `seen` as where its upstream exchange is noted.
pub async fn noting_upstream<F: std::future::Future>(seen: UpstreamSeen, request: F) -> F::Output {
    UPSTREAM.scope(Some(seen), request).await
}

/// `fill` run where the current request notes its upstream exchange (the request that
/// starts a fill is the one whose line names the upstream; requests that join it do not).
pub fn carrying_upstream<F: std::future::Future>(
    fill: F,
) -> tokio::task::futures::TaskLocalFuture<Option<UpstreamSeen>, F> {
    let seen = UPSTREAM.try_with(Clone::clone).ok().flatten();
    UPSTREAM.scope(seen, fill)
}

/// Notes that `server` answered the current request's upstream exchange in `took`; a no-op
/// outside a logged request.
pub fn record_upstream(server: &str, took: Duration) {
    let _ = UPSTREAM.try_with(|seen| {
        if let Some(seen) = seen {
            *seen.lock().unwrap_or_else(PoisonError::into_inner) = Some((server.into(), took));
        }
    });
}

/// `response` as the client gets it, logged with `record` once its body ends or is dropped:
/// its status, `Cache-Status`, head size and time to the head now, body bytes and total
/// time then.
pub(crate) fn logged(
    log: AccessLog,
    mut record: AccessRecord,
    started: std::time::Instant,
    seen: &UpstreamSeen,
    response: http::Response<EdgeBody>,
) -> http::Response<EdgeBody> {
    record.ttfb = started.elapsed();
    record.upstream = seen.lock().unwrap_or_else(PoisonError::into_inner).take();
    record.status = response.status().as_u16();
    record.cache_status = response
        .headers()
        .get(&crate::cache::status::CACHE_STATUS)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    record.bytes = crate::front::head_bytes(response.headers());
    let (parts, body) = response.into_parts();
    let body = Tallied::wrap(
        body,
        Box::new(move |sent, complete| {
            record.body_bytes = sent;
            record.bytes += sent;
            record.total = started.elapsed();
            record.complete = complete;
            log.log(&record.line());
        }),
    );
    http::Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A writer whose bytes a test reads back.
    #[derive(Debug, Clone, Default)]
    struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl SharedBuffer {
        /// The lines written so far.
        fn lines(&self) -> Vec<String> {
            String::from_utf8_lossy(&self.0.lock().expect("buffer"))
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    fn record(i: u64) -> AccessRecord {
        AccessRecord {
            time: UNIX_EPOCH + Duration::from_millis(1_796_585_626_123),
            client: "192.0.2.7:5555".parse().unwrap(),
            site: Some("static".into()),
            method: Method::GET,
            scheme: "https",
            host: "static.example".into(),
            target: format!("/a/{i}.css?v=2"),
            status: 200,
            bytes: 1300,
            body_bytes: 1024,
            ttfb: Duration::from_micros(150),
            total: Duration::from_micros(420),
            cache_status: "edge-1; hit; ttl=60".into(),
            tls: Some("static.example".into()),
            tls_version: Some("TLSv1.3"),
            upstream: None,
            version: Version::HTTP_2,
            user_agent: Some("curl/8 \"quoted\"\n".into()),
            referer: None,
            request_id: 0xabc,
            complete: true,
        }
    }

    fn config(format: LineFormat, buffer: u64) -> AccessLogConfig {
        AccessLogConfig {
            format,
            buffer: ByteSize::b(buffer),
            ..AccessLogConfig::at("unused")
        }
    }

    /// Polls (bounded) until `done` holds.
    fn until(mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("not within 5 s");
    }

    #[test]
    fn a_json_line_has_every_field_escaped() {
        let out = SharedBuffer::default();
        let log = AccessLog::to_writer(
            &config(LineFormat::Json, 1 << 20),
            "edge-1",
            Box::new(out.clone()),
        )
        .unwrap();
        log.log(&record(1).line());
        until(|| out.lines().len() == 1);
        let line: serde_json::Value = serde_json::from_str(&out.lines()[0]).unwrap();
        assert_eq!(line["time"], "2026-12-06T19:33:46.123Z");
        assert_eq!(line["client"], "192.0.2.7");
        assert_eq!(line["site"], "static");
        assert_eq!(line["url"], "https://static.example/a/1.css?v=2");
        assert_eq!(line["status"], 200);
        assert_eq!(line["bytes"], 1300);
        assert_eq!(line["body_bytes"], 1024);
        assert_eq!(line["ttfb"], 0.00015);
        assert_eq!(line["cache_status"], "edge-1; hit; ttl=60");
        assert_eq!(line["node"], "edge-1");
        assert_eq!(line["http_version"], "HTTP/2.0");
        assert_eq!(line["tls_version"], "TLSv1.3");
        assert_eq!(line["user_agent"], "curl/8 \"quoted\"\n");
        assert!(line.get("referer").is_none(), "absent, not null: {line}");
        assert_eq!(line["request_id"], "0000000000000abc");
        assert_eq!(line["complete"], true);
    }

    #[test]
    fn fields_are_the_configured_ones_in_order() {
        let out = SharedBuffer::default();
        let config = AccessLogConfig {
            fields: vec![Field::Status, Field::Method, Field::Url],
            ..config(LineFormat::Json, 1 << 20)
        };
        let log = AccessLog::to_writer(&config, "edge-1", Box::new(out.clone())).unwrap();
        log.log(&record(2).line());
        until(|| out.lines().len() == 1);
        assert_eq!(
            out.lines()[0],
            r#"{"status":200,"method":"GET","url":"https://static.example/a/2.css?v=2"}"#
        );
    }

    #[test]
    fn a_combined_line_is_nginxs_with_hostile_bytes_escaped() {
        let out = SharedBuffer::default();
        let log = AccessLog::to_writer(
            &config(LineFormat::Combined, 1 << 20),
            "edge-1",
            Box::new(out.clone()),
        )
        .unwrap();
        log.log(&record(3).line());
        until(|| out.lines().len() == 1);
        assert_eq!(
            out.lines()[0],
            "192.0.2.7 - - [06/Dec/2026:19:33:46 +0000] \"GET https://static.example/a/3.css?v=2 HTTP/2.0\" 200 1024 \"-\" \"curl/8 \\x22quoted\\x22\\x0A\" \"edge-1; hit; ttl=60\" 0.000420"
        );
    }

    /// A writer that blocks until the test lets it go.
    struct Gate {
        open: mpsc::Receiver<()>,
        out: SharedBuffer,
        entered: mpsc::Sender<()>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.entered.send(());
            let _ = self.open.recv();
            self.out.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn pieces_end_at_line_ends_and_keep_every_byte() {
        let lines: Vec<u8> = (0..200)
            .flat_map(|n| format!("{}\n", "x".repeat(n % 37)).into_bytes())
            .collect();
        for size in [1, 7, 64, 1000, lines.len() + 1] {
            let pieces: Vec<&[u8]> = line_chunks(&lines, size).collect();
            assert_eq!(pieces.concat(), lines, "size {size}");
            for piece in &pieces {
                assert_eq!(piece.last(), Some(&b'\n'), "size {size}");
                let inner = &piece[..piece.len() - 1];
                assert!(
                    piece.len() <= size || !inner.contains(&b'\n'),
                    "a piece longer than {size} is one line"
                );
            }
        }
    }

    #[test]
    fn a_full_buffer_drops_and_counts_and_never_blocks() {
        let (release, open) = mpsc::channel();
        let (entered, writing) = mpsc::channel();
        let out = SharedBuffer::default();
        let gate = Gate {
            open,
            out: out.clone(),
            entered,
        };
        let mut one = Vec::new();
        json_line(&mut one, &record(0).line(), &Field::all(), "edge-1");
        let line = one.len() as u64 + 1;
        let buffer = 4 * line + line / 2;
        let log = AccessLog::to_writer(&config(LineFormat::Json, buffer), "edge-1", Box::new(gate))
            .unwrap();
        log.log(&record(0).line());
        // The writer holds line 0 and is stuck writing it: 4 more fit, the rest drop.
        writing.recv_timeout(Duration::from_secs(5)).unwrap();
        for i in 1..=20 {
            log.log(&record(i).line());
        }
        assert_eq!(log.counts().dropped.get(), 16);
        for _ in 0..=20 {
            let _ = release.send(());
        }
        until(|| log.counts().written.get() == 5);
        let lines = out.lines();
        assert_eq!(lines.len(), 5);
        assert!(lines[4].contains("/a/4.css"), "{}", lines[4]);
    }

    #[test]
    fn a_share_of_requests_is_sampled_evenly() {
        let logged = |share: f64| {
            (0..10_000u64)
                .filter(|id| AccessLog::sampled(share, 1000 + id))
                .count()
        };
        assert_eq!(logged(1.0), 10_000);
        assert_eq!(logged(0.0), 0);
        let tenth = logged(0.1);
        assert!((900..=1100).contains(&tenth), "{tenth} of 10,000 at 0.1");
    }

    #[test]
    fn a_reopen_after_rename_writes_on_to_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let config = AccessLogConfig {
            path: path.to_string_lossy().into_owned(),
            ..config(LineFormat::Json, 1 << 20)
        };
        let log = AccessLog::start(&config, "edge-1", LogCounts::default()).unwrap();
        log.log(&record(1).line());
        until(|| std::fs::read_to_string(&path).is_ok_and(|s| s.lines().count() == 1));
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        // The reopen is seen before the next line is written, traffic or not.
        until(|| path.exists());
        log.log(&record(2).line());
        until(|| std::fs::read_to_string(&path).is_ok_and(|s| s.lines().count() == 1));
        assert!(std::fs::read_to_string(&path).unwrap().contains("/a/2.css"));
        let old = std::fs::read_to_string(&rotated).unwrap();
        assert_eq!(old.lines().count(), 1);
        assert!(old.contains("/a/1.css"));
    }

    #[test]
    fn a_file_past_its_rotation_size_is_renamed_and_a_new_one_started() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let config = AccessLogConfig {
            path: path.to_string_lossy().into_owned(),
            rotate_size: Some(ByteSize::b(1)),
            ..config(LineFormat::Json, 1 << 20)
        };
        let log = AccessLog::start(&config, "edge-1", LogCounts::default()).unwrap();
        log.log(&record(1).line());
        // Written, then rotated at once (past one byte): the line is in a rotated file.
        let rotated = || {
            let mut names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|entry| entry.unwrap().path())
                .filter(|p| p != &path)
                .collect();
            names.sort();
            names
        };
        until(|| rotated().len() == 1);
        let old = std::fs::read_to_string(&rotated()[0]).unwrap();
        assert!(old.contains("/a/1.css"), "{old}");
        let name = rotated()[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            name.starts_with("access.log.20") && name.ends_with('Z'),
            "{name}"
        );
        // A new file is started, and the next line goes there (and is rotated in turn).
        until(|| path.exists());
        log.log(&record(2).line());
        until(|| rotated().len() == 2);
        let newer = std::fs::read_to_string(&rotated()[1]).unwrap();
        assert!(newer.contains("/a/2.css"), "{newer}");
    }

    #[test]
    fn a_log_that_cannot_open_says_where_and_what_to_do() {
        let missing = AccessLogConfig {
            path: "/nonexistent-dir/access.log".into(),
            ..config(LineFormat::Json, 1 << 20)
        };
        let error = AccessLog::start(&missing, "edge-1", LogCounts::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("/nonexistent-dir/access.log"), "{error}");
        assert!(error.contains("stdout"), "{error}");
        let tiny = AccessLogConfig {
            path: "stdout".into(),
            ..config(LineFormat::Json, 1000)
        };
        let error = AccessLog::start(&tiny, "edge-1", LogCounts::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("at least 64 KiB"), "{error}");
    }
}
