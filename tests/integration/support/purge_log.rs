//! A purge log that records how it is read: the embedded `FileLog`, with every
//! `read_after(after, limit)` noted, so a test can tell where a node asked to read from
//! (a catch-up from its watermark, or a fresh node's look at the head with `limit = 0`).

use std::path::Path;
use std::sync::Mutex;

use purge_api::log::{FileLog, LogEntry, LogError, NewEntry, PurgeLog, Retention};

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
