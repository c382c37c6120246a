//! The access log: one line per request, written off the request path.
//!
//! A request hands its [`AccessRecord`] to a bounded queue and goes on: when the queue is
//! full the line is dropped and counted (`edge_access_log_dropped_total`), never waited
//! for. One writer thread per log formats the lines (JSON by default, or the combined
//! format of nginx and Apache) and writes them in batches to a file, reopened on
//! [`AccessLog::reopen`] (SIGUSR1, for logrotate), or to stdout.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, Version};
use serde::Deserialize;

use crate::front::body::{EdgeBody, Tallied};

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
    /// Lines held for the writer; past this a line is dropped and counted, never waited
    /// for.
    #[serde(default = "default_buffer")]
    pub buffer: usize,
}

fn default_buffer() -> usize {
    65_536
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
            HttpVersion => "http_version",
            UserAgent => "user_agent",
            Referer => "referer",
            RequestId => "request_id",
            Complete => "complete",
        }
    }
}

/// One request, as the access log keeps it.
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
    pub version: Version,
    pub user_agent: Option<String>,
    pub referer: Option<String>,
    pub request_id: u64,
    pub complete: bool,
}

/// Counts of a log's lines: the node's metrics register these same counters.
#[derive(Debug, Default)]
pub struct LogCounts {
    pub written: Counter,
    pub dropped: Counter,
    pub write_errors: Counter,
}

/// A node's access log: cheap to clone, shared by every connection.
#[derive(Clone)]
pub struct AccessLog {
    queue: SyncSender<AccessRecord>,
    node: Arc<str>,
    ids: Arc<AtomicU64>,
    counts: Arc<LogCounts>,
    reopen: Arc<AtomicBool>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("node", &self.node)
            .finish()
    }
}

/// Where the writer's lines go.
enum Sink {
    File {
        path: PathBuf,
        file: io::BufWriter<File>,
    },
    Stdout(io::BufWriter<io::Stdout>),
    /// Tests: any writer.
    Writer(Box<dyn Write + Send>),
}

impl Sink {
    fn open(path: &str) -> io::Result<Sink> {
        if path == "stdout" {
            return Ok(Sink::Stdout(io::BufWriter::with_capacity(
                64 * 1024,
                io::stdout(),
            )));
        }
        let path = PathBuf::from(path);
        let file = append(&path)?;
        Ok(Sink::File { path, file })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::File { file, .. } => file,
            Sink::Stdout(out) => out,
            Sink::Writer(w) => w,
        }
    }

    /// Reopens a file by its path (after logrotate renamed it): later lines go to a new
    /// file there.
    fn reopen(&mut self) -> io::Result<()> {
        if let Sink::File { path, file } = self {
            file.flush()?;
            *file = append(path)?;
        }
        Ok(())
    }
}

fn append(path: &std::path::Path) -> io::Result<io::BufWriter<File>> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    Ok(io::BufWriter::with_capacity(64 * 1024, file))
}

/// Why an access log could not start.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error(
        "cannot open the access log {path}: {source} (check the directory exists and the node may write there, or set path = \"stdout\")"
    )]
    Open { path: String, source: io::Error },
    #[error("[access_log] buffer must be at least 1 line")]
    NoBuffer,
}

impl AccessLog {
    /// Starts the log's writer thread for node `node`.
    pub fn start(config: &AccessLogConfig, node: &str) -> Result<Self, AccessLogError> {
        let sink = Sink::open(&config.path).map_err(|source| AccessLogError::Open {
            path: config.path.clone(),
            source,
        })?;
        Self::with_sink(config, node, sink)
    }

    /// As [`AccessLog::start`], writing to `writer` (tests).
    pub fn to_writer(
        config: &AccessLogConfig,
        node: &str,
        writer: Box<dyn Write + Send>,
    ) -> Result<Self, AccessLogError> {
        Self::with_sink(config, node, Sink::Writer(writer))
    }

    fn with_sink(config: &AccessLogConfig, node: &str, sink: Sink) -> Result<Self, AccessLogError> {
        if config.buffer == 0 {
            return Err(AccessLogError::NoBuffer);
        }
        let (queue, lines) = std::sync::mpsc::sync_channel(config.buffer);
        let log = Self {
            queue,
            node: node.into(),
            // Ids unique per process start: the start time's microseconds above a counter.
            ids: Arc::new(AtomicU64::new(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64)
                    << 20,
            )),
            counts: Arc::default(),
            reopen: Arc::default(),
        };
        let writer = Writer {
            lines,
            sink,
            format: config.format,
            fields: config.fields.clone(),
            node: log.node.clone(),
            counts: log.counts.clone(),
            reopen: log.reopen.clone(),
            line: String::with_capacity(1024),
        };
        std::thread::Builder::new()
            .name(format!("access-log-{node}"))
            .spawn(move || writer.run())
            .map_err(|source| AccessLogError::Open {
                path: config.path.clone(),
                source,
            })?;
        Ok(log)
    }

    /// A fresh request id.
    pub fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a line; drops and counts it when the writer is behind. Never blocks.
    pub fn log(&self, record: AccessRecord) {
        match self.queue.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counts.dropped.inc();
            }
        }
    }

    /// Asks the writer to reopen its file by path (after logrotate moved it).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    pub fn counts(&self) -> &LogCounts {
        &self.counts
    }
}

/// The writer thread's side: formats and writes, flushing whenever the queue runs dry.
struct Writer {
    lines: Receiver<AccessRecord>,
    sink: Sink,
    format: LineFormat,
    fields: Vec<Field>,
    node: Arc<str>,
    counts: Arc<LogCounts>,
    reopen: Arc<AtomicBool>,
    line: String,
}

impl Writer {
    fn run(mut self) {
        loop {
            if self.reopen.swap(false, Ordering::Relaxed)
                && let Err(error) = self.sink.reopen()
            {
                tracing::error!(%error, "the access log could not be reopened; writing on to the old file");
            }
            // Waits at most a little, so that a reopen is seen without traffic.
            let record = match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(record) => record,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            self.write(&record);
            while let Ok(record) = self.lines.try_recv() {
                self.write(&record);
            }
            if self.sink.writer().flush().is_err() {
                self.counts.write_errors.inc();
            }
        }
        let _ = self.sink.writer().flush();
    }

    fn write(&mut self, record: &AccessRecord) {
        self.line.clear();
        match self.format {
            LineFormat::Json => json_line(&mut self.line, record, &self.fields, &self.node),
            LineFormat::Combined => combined_line(&mut self.line, record),
        }
        self.line.push('\n');
        match self.sink.writer().write_all(self.line.as_bytes()) {
            Ok(()) => self.counts.written.inc(),
            Err(_) => self.counts.write_errors.inc(),
        };
    }
}

fn json_line(line: &mut String, r: &AccessRecord, fields: &[Field], node: &str) {
    line.push('{');
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        json_str(line, field.name());
        line.push(':');
        match field {
            Field::Time => json_str(line, &rfc3339(r.time)),
            Field::Client => json_str(line, &r.client.ip().to_string()),
            Field::Site => json_opt(line, r.site.as_deref()),
            Field::Method => json_str(line, r.method.as_str()),
            Field::Url => json_str(line, &format!("{}://{}{}", r.scheme, r.host, r.target)),
            Field::Status => write_num(line, r.status),
            Field::Bytes => write_num(line, r.bytes),
            Field::BodyBytes => write_num(line, r.body_bytes),
            Field::Ttfb => seconds(line, r.ttfb),
            Field::Total => seconds(line, r.total),
            Field::CacheStatus => json_str(line, &r.cache_status),
            Field::Node => json_str(line, node),
            Field::Tls => json_opt(line, r.tls.as_deref()),
            Field::HttpVersion => json_str(line, version(r.version)),
            Field::UserAgent => json_opt(line, r.user_agent.as_deref()),
            Field::Referer => json_opt(line, r.referer.as_deref()),
            Field::RequestId => json_str(line, &format!("{:016x}", r.request_id)),
            Field::Complete => line.push_str(if r.complete { "true" } else { "false" }),
        }
    }
    line.push('}');
}

fn combined_line(line: &mut String, r: &AccessRecord) {
    let _ = write!(
        line,
        "{} - - [{}] \"{} {}://{}{} {}\" {} {} ",
        r.client.ip(),
        common_log_time(r.time),
        r.method,
        r.scheme,
        r.host,
        r.target,
        version(r.version),
        r.status,
        r.body_bytes,
    );
    quoted(line, r.referer.as_deref().unwrap_or("-"));
    line.push(' ');
    quoted(line, r.user_agent.as_deref().unwrap_or("-"));
    line.push(' ');
    quoted(line, &r.cache_status);
    let _ = write!(line, " {:.6}", r.total.as_secs_f64());
}

/// A double-quoted field of the combined format: quotes, backslashes and control bytes
/// escaped as nginx does (`\xHH`), so a hostile header cannot forge a line.
fn quoted(line: &mut String, value: &str) {
    line.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                let _ = write!(line, "\\x{:02X}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(line, "\\x{:02X}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('"');
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

fn write_num(line: &mut String, n: impl itoa::Integer) {
    line.push_str(itoa::Buffer::new().format(n));
}

fn seconds(line: &mut String, d: Duration) {
    let _ = write!(line, "{:.6}", d.as_secs_f64());
}

fn json_opt(line: &mut String, value: Option<&str>) {
    match value {
        Some(value) => json_str(line, value),
        None => line.push_str("null"),
    }
}

/// A JSON string, escaped (RFC 8259): quotes, backslashes and control characters.
fn json_str(line: &mut String, value: &str) {
    line.push('"');
    for c in value.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(line, "\\u{:04x}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

/// (year, month, day, hour, minute, second, millisecond) of a time, UTC.
fn civil(time: SystemTime) -> (i64, u32, u32, u32, u32, u32, u32) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
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
        since.subsec_millis(),
    )
}

fn rfc3339(time: SystemTime) -> String {
    let (y, mo, d, h, mi, s, ms) = civil(time);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

fn common_log_time(time: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s, _) = civil(time);
    format!(
        "{d:02}/{}/{y:04}:{h:02}:{mi:02}:{s:02} +0000",
        MONTHS[mo as usize - 1]
    )
}

/// `response` as the client gets it, logged with `record` once its body ends or is dropped:
/// its status, `Cache-Status`, head size and time to the head now, body bytes and total
/// time then.
pub(crate) fn logged(
    log: AccessLog,
    mut record: AccessRecord,
    started: std::time::Instant,
    response: http::Response<EdgeBody>,
) -> http::Response<EdgeBody> {
    record.ttfb = started.elapsed();
    record.status = response.status().as_u16();
    record.cache_status = response
        .headers()
        .get(&crate::cache::status::CACHE_STATUS)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    // The head as serialized: status line, fields, blank line (the framing fields the
    // connection adds are not counted).
    record.bytes = 17
        + response
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().len() + value.len() + 4) as u64)
            .sum::<u64>()
        + 2;
    let (parts, body) = response.into_parts();
    let body = Tallied::wrap(
        body,
        Box::new(move |sent, complete| {
            record.body_bytes = sent;
            record.bytes += sent;
            record.total = started.elapsed();
            record.complete = complete;
            log.log(record);
        }),
    );
    http::Response::from_parts(parts, body)
}

/// A writer whose bytes a test reads back.
#[derive(Debug, Clone, Default)]
pub struct SharedBuffer(pub Arc<Mutex<Vec<u8>>>);

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
    pub fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().expect("buffer"))
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

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
            version: Version::HTTP_2,
            user_agent: Some("curl/8 \"quoted\"\n".into()),
            referer: None,
            request_id: 0xabc,
            complete: true,
        }
    }

    fn config(format: LineFormat, buffer: usize) -> AccessLogConfig {
        AccessLogConfig {
            path: "unused".into(),
            format,
            fields: Field::all(),
            buffer,
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
            &config(LineFormat::Json, 16),
            "edge-1",
            Box::new(out.clone()),
        )
        .unwrap();
        log.log(record(1));
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
        assert_eq!(line["user_agent"], "curl/8 \"quoted\"\n");
        assert_eq!(line["referer"], serde_json::Value::Null);
        assert_eq!(line["request_id"], "0000000000000abc");
        assert_eq!(line["complete"], true);
    }

    #[test]
    fn fields_are_the_configured_ones_in_order() {
        let out = SharedBuffer::default();
        let config = AccessLogConfig {
            fields: vec![Field::Status, Field::Method, Field::Url],
            ..config(LineFormat::Json, 16)
        };
        let log = AccessLog::to_writer(&config, "edge-1", Box::new(out.clone())).unwrap();
        log.log(record(2));
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
            &config(LineFormat::Combined, 16),
            "edge-1",
            Box::new(out.clone()),
        )
        .unwrap();
        log.log(record(3));
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
    fn a_full_buffer_drops_and_counts_and_never_blocks() {
        let (release, open) = mpsc::channel();
        let (entered, writing) = mpsc::channel();
        let out = SharedBuffer::default();
        let gate = Gate {
            open,
            out: out.clone(),
            entered,
        };
        let log =
            AccessLog::to_writer(&config(LineFormat::Json, 4), "edge-1", Box::new(gate)).unwrap();
        log.log(record(0));
        // The writer holds line 0 and is stuck writing it: 4 more fit, the rest drop.
        writing.recv_timeout(Duration::from_secs(5)).unwrap();
        for i in 1..=20 {
            log.log(record(i));
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
    fn a_reopen_after_rename_writes_on_to_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let config = AccessLogConfig {
            path: path.to_string_lossy().into_owned(),
            ..config(LineFormat::Json, 16)
        };
        let log = AccessLog::start(&config, "edge-1").unwrap();
        log.log(record(1));
        until(|| std::fs::read_to_string(&path).is_ok_and(|s| s.lines().count() == 1));
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        // The reopen is seen before the next line is written, traffic or not.
        until(|| path.exists());
        log.log(record(2));
        until(|| std::fs::read_to_string(&path).is_ok_and(|s| s.lines().count() == 1));
        assert!(std::fs::read_to_string(&path).unwrap().contains("/a/2.css"));
        let old = std::fs::read_to_string(&rotated).unwrap();
        assert_eq!(old.lines().count(), 1);
        assert!(old.contains("/a/1.css"));
    }

    #[test]
    fn a_log_that_cannot_open_says_where_and_what_to_do() {
        let config = AccessLogConfig {
            path: "/nonexistent-dir/access.log".into(),
            ..config(LineFormat::Json, 16)
        };
        let error = AccessLog::start(&config, "edge-1").unwrap_err().to_string();
        assert!(error.contains("/nonexistent-dir/access.log"), "{error}");
        assert!(error.contains("stdout"), "{error}");
    }
}
