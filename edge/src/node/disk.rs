//! Reading the disk tier on a memory miss (the full path only; the hit fast path never
//! looks at the disk).
//!
//! A record is checked against the purges applied since it was stored
//! ([`NodeState::check`](crate::node::state::NodeState::check), after the read completes):
//! `Gone` is a miss and the record is dropped from the index, `Stale` is served as a soft
//! purge leaves an entry in memory ([`Invalidation::soft_purged`]). A variant index leads to
//! the variant's record. Bodies up to [`MAX_INLINE`] are read whole (every frame checked)
//! and promoted into memory, keeping the disk copy, so the lookup that follows finds a hit;
//! larger ones are answered by streaming frames from disk ([`FromDisk::Large`]) and are
//! not promoted. A record that fails a check is a miss (the disk store counts it and drops
//! it from its index). Reads are coalesced per key (`Edge::disk_reads`): requests that
//! miss memory on the same key while it is being read share one read.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;

use crate::cache::disk::DiskRecord;
use crate::cache::hybrid::{HybridStore, MAX_INLINE};
use crate::cache::key::CacheKey;
use crate::cache::store::{Entry, Storage, StoredResponse};
use crate::cache::vary::VaryIndex;
use crate::node::invalidation::Invalidation;
use crate::node::node_auth::NodeClaims;
use crate::node::proxy::Edge;
use crate::node::site::Site;
use crate::node::state::Verdict;

/// What a look at the disk tier found.
#[derive(Debug)]
pub(crate) enum FromDisk {
    /// Nothing to serve: the disk does not hold the key, or its record was purged or
    /// failed a check.
    Nothing,
    /// The record was promoted into memory: the lookup now finds it.
    Promoted,
    /// A response too large to promote: its head (with an empty body) and its record, to
    /// stream the body from.
    Large {
        head: Arc<StoredResponse>,
        record: DiskRecord,
    },
}

/// What reading one key found: shared by every request that read the key meanwhile
/// (reads are coalesced per key, as fills are).
#[derive(Debug, Clone)]
pub(crate) enum DiskRead {
    Nothing,
    Promoted,
    /// A variant index, promoted: the variant's key is read next.
    Index(VaryIndex),
    Large {
        head: Arc<StoredResponse>,
        record: DiskRecord,
    },
}

impl Edge {
    /// Reads what the disk tier holds for a request that memory could not answer:
    /// `variant` is the variant key when memory holds the URL's variant index, else the
    /// primary key is read (and, when it holds a variant index, the variant's key next).
    pub(crate) async fn read_disk(
        self: &Arc<Self>,
        site: &Arc<Site>,
        primary: &CacheKey,
        variant: Option<&CacheKey>,
        request: &HeaderMap,
        claims: NodeClaims,
    ) -> FromDisk {
        // A proven node that applied purges this one has not gets a fresh copy.
        if claims
            .purge_seq
            .is_some_and(|theirs| theirs > self.store.purge_watermark())
        {
            return FromDisk::Nothing;
        }
        let first = variant.unwrap_or(primary);
        let read = self.read_key(site, first, variant.is_none()).await;
        let read = match read {
            DiskRead::Index(index) => {
                let (next, _) = index.variant_key(primary, request, &site.key_headers);
                if self.store.get(&next).is_some() {
                    return FromDisk::Promoted;
                }
                self.read_key(site, &next, false).await
            }
            read => read,
        };
        match read {
            DiskRead::Nothing | DiskRead::Index(_) => FromDisk::Nothing,
            DiskRead::Promoted => FromDisk::Promoted,
            DiskRead::Large { head, record } => FromDisk::Large { head, record },
        }
    }

    /// Reads one key from disk, once for every request that asks meanwhile; a variant
    /// index is taken only when `index` (the key is a URL's primary key).
    async fn read_key(self: &Arc<Self>, site: &Arc<Site>, key: &CacheKey, index: bool) -> DiskRead {
        let Some(hybrid) = self.store.hybrid() else {
            return DiskRead::Nothing;
        };
        if !hybrid.may_contain(key) {
            return DiskRead::Nothing;
        }
        let (edge, site, owned) = (self.clone(), site.clone(), key.clone());
        let (read, _) = self
            .disk_reads
            .run(key, move |_| async move {
                edge.load_key(&site, owned, index).await
            })
            .await;
        read.unwrap_or(DiskRead::Nothing)
    }

    /// The leader's read of [`Edge::read_key`].
    async fn load_key(&self, site: &Site, key: CacheKey, index: bool) -> DiskRead {
        let Some(hybrid) = self.store.hybrid() else {
            return DiskRead::Nothing;
        };
        let Some((entry, record, watermark)) = self.read_checked(hybrid, site, &key).await else {
            return DiskRead::Nothing;
        };
        match entry {
            Entry::Variants(variants) if index => {
                let found = variants.index.clone();
                if self.promote(hybrid, key, Entry::Variants(variants), watermark) {
                    DiskRead::Index(found)
                } else {
                    DiskRead::Nothing
                }
            }
            Entry::Response(head) if record.body_len() <= MAX_INLINE => {
                let Some(body) = read_whole(&record).await else {
                    return DiskRead::Nothing;
                };
                let response = Entry::Response(Arc::new(head.with_body(body)));
                if self.promote(hybrid, key, response, watermark) {
                    DiskRead::Promoted
                } else {
                    DiskRead::Nothing
                }
            }
            Entry::Response(head) => DiskRead::Large { head, record },
            _ => DiskRead::Nothing,
        }
    }

    /// Opens `key`'s record and checks it against the purges applied since it was stored;
    /// returns the entry as it may be served and the watermark it was checked at.
    async fn read_checked(
        &self,
        hybrid: &HybridStore,
        site: &Site,
        key: &CacheKey,
    ) -> Option<(Entry, DiskRecord, u64)> {
        let watermark = self.store.purge_watermark();
        let started = Instant::now();
        let loaded = match hybrid.load(key).await {
            Ok(loaded) => loaded?,
            Err(error) => {
                tracing::warn!(%error, "disk tier record not served");
                return None;
            }
        };
        self.metrics.disk_read(started.elapsed());
        let tags: &[String] = match &loaded.entry {
            Entry::Response(response) => response.tags(),
            _ => &[],
        };
        let verdict = match self.state() {
            Some(state) => state.check(&site.name, key, tags, loaded.valid_as_of),
            // Without a journal only a record as recent as the watermark can be trusted.
            None if loaded.valid_as_of == watermark => Verdict::Fresh,
            None => Verdict::Gone,
        };
        let entry = match verdict {
            Verdict::Fresh => Some(loaded.entry),
            Verdict::Stale => Invalidation::soft_purged(&loaded.entry),
            Verdict::Gone => None,
        };
        let Some(entry) = entry else {
            hybrid.forget(key);
            return None;
        };
        Some((entry, loaded.record, watermark))
    }

    /// Promotes a checked entry into memory, unless a purge was applied since it was
    /// checked (it then stays out: the next read checks it again).
    fn promote(&self, hybrid: &HybridStore, key: CacheKey, entry: Entry, watermark: u64) -> bool {
        hybrid.promote(key.clone(), entry, watermark);
        if self.store.purge_watermark() != watermark {
            hybrid.memory().remove(&key);
            return false;
        }
        true
    }
}

/// A record's whole body, every frame checked; `None` when one fails.
async fn read_whole(record: &DiskRecord) -> Option<Bytes> {
    record
        .read_whole()
        .await
        .inspect_err(|error| tracing::warn!(%error, "disk tier body not served"))
        .ok()
}
