//! A purge log that records how it is read: the embedded `FileLog`, with every
//! `read_after(after, limit)` noted, so a test can tell where a node asked to read from
//! (a catch-up from its watermark, or a fresh node's look at the head with `limit = 0`),
//! and the config of a purge API that pushes to one node over it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;

use purge_api::PurgeApiConfig;
use purge_api::log::{FileLog, LogEntry, LogError, NewEntry, PurgeLog, Retention};

use super::HOST;

/// The node token the edges and the purge API of these tests share.
pub const NODE_TOKEN: &str = "node-secret-0123456789";
/// The publisher token of the test site.
pub const TOKEN: &str = "publisher-token-0123456789";

/// A purge API for the test site pushing to the node `name` at `admin` (none: no node),
/// to be started over a log of the test's own (`start_with_log`).
pub fn api_config(name: &str, admin: Option<SocketAddr>) -> PurgeApiConfig {
    let node = admin.map_or(String::new(), |a| {
        format!("[[node]]\nname = \"{name}\"\nadmin = \"http://{a}\"\n")
    });
    let text = format!(
        r#"
        listen = "127.0.0.1:0"
        node_token = "{NODE_TOKEN}"
        [log]
        path = "/unused/the/test/gives/the/log"
        {node}
        [[site]]
        name = "assets"
        hosts = ["{HOST}"]
        [[publisher]]
        name = "acme"
        token = "{TOKEN}"
        sites = ["assets"]
        "#,
    );
    PurgeApiConfig::from_toml(&text).expect("purge API config")
}

/// A [`FileLog`] whose reads are recorded.
#[derive(Debug)]
pub struct RecordingLog {
    file: FileLog,
    reads: Mutex<Vec<(u64, usize)>>,
}

impl RecordingLog {
    pub fn open(path: &Path, retention: Retention) -> Self {
        Self {
            file: FileLog::open(path, retention).expect("purge log"),
            reads: Mutex::default(),
        }
    }

    /// Every `(after, limit)` read so far, in order, forgetting them.
    pub fn take_reads(&self) -> Vec<(u64, usize)> {
        std::mem::take(&mut *self.reads.lock().expect("reads"))
    }
}

#[async_trait::async_trait]
impl PurgeLog for RecordingLog {
    async fn append(&self, batch: Vec<NewEntry>) -> Result<Vec<u64>, LogError> {
        self.file.append(batch).await
    }
    async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<LogEntry>, LogError> {
        self.reads.lock().expect("reads").push((after, limit));
        self.file.read_after(after, limit).await
    }
    fn head(&self) -> u64 {
        self.file.head()
    }
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.file.subscribe()
    }
    async fn find_idempotent(
        &self,
        publisher: &str,
        key: &str,
    ) -> Result<Option<LogEntry>, LogError> {
        self.file.find_idempotent(publisher, key).await
    }
}
