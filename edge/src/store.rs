//! Where responses live: the [`Storage`] trait and its in-memory implementation.
//!
//! Stored bodies are `Bytes` copied to their exact size at fill time, so a hit clones a
//! reference count and never copies, and the weigher counts what is really held (a body
//! sliced from a larger read buffer would pin the whole buffer).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use moka::policy::EvictionPolicy;

use crate::cache_key::CacheKey;
use crate::freshness::{Freshness, is_targeted};
use crate::vary::{Selection, VaryIndex};

/// Fixed bytes charged per entry for the bookkeeping around it (the entry struct, the
/// key's and header map's allocations, the cache's own node).
const ENTRY_OVERHEAD: usize = 256;
/// Bytes charged per header field beyond its name and value.
const HEADER_OVERHEAD: usize = 32;

/// A response as the cache keeps it.
#[derive(Debug)]
pub struct StoredResponse {
    pub status: StatusCode,
    /// End-to-end headers to send, `Via` already including this node; without `Age`
    /// and `Cache-Status`, which are computed per response.
    pub headers: HeaderMap,
    /// The upstream's `Cache-Status` members, which this node's member follows.
    pub upstream_cache_status: Option<HeaderValue>,
    pub body: Bytes,
    pub freshness: Freshness,
    /// Set on the entry under a primary key whose responses vary: it holds no response,
    /// only the index for finding the variant a request selects. Never served.
    pub variants: Option<VaryIndex>,
    /// Set on a variant: which index and signature it was stored under.
    pub selected_by: Option<Selection>,
    /// The HTTP/1.1 status line and `headers`, serialized once so that a hit writes them
    /// without formatting anything; the per-response fields and the blank line follow.
    head: Bytes,
}

impl StoredResponse {
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        upstream_cache_status: Option<HeaderValue>,
        body: Bytes,
        freshness: Freshness,
    ) -> Self {
        let head = serialize_head(status, &headers);
        Self {
            status,
            headers,
            upstream_cache_status,
            body,
            freshness,
            variants: None,
            selected_by: None,
            head,
        }
    }

    /// The entry that stands under a primary key for a URL whose responses vary.
    pub fn vary_index(index: VaryIndex, freshness: Freshness) -> Self {
        Self {
            variants: Some(index),
            ..Self::new(
                StatusCode::OK,
                HeaderMap::new(),
                None,
                Bytes::new(),
                freshness,
            )
        }
    }

    /// The serialized status line and stored headers, each line ending in CRLF.
    pub fn head(&self) -> &Bytes {
        &self.head
    }

    /// Bytes of memory this entry holds, for the byte-weighted capacity.
    pub fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + HEADER_OVERHEAD)
            .sum();
        let upstream = self.upstream_cache_status.as_ref().map_or(0, |v| v.len());
        ENTRY_OVERHEAD + headers + upstream + self.head.len() + self.body.len()
    }
}

/// `HTTP/1.1 <status>\r\n` followed by `name: value\r\n` for every header a client may see
/// (the targeted cache fields stay in `headers`, for revalidation, but are never sent).
pub fn serialize_head(status: StatusCode, headers: &HeaderMap) -> Bytes {
    let mut head = Vec::with_capacity(64 + headers.len() * 48);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in headers.iter().filter(|(name, _)| !is_targeted(name)) {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    Bytes::from(head)
}

/// What a store holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes charged against the capacity, keys included.
    pub bytes: u64,
    pub entries: u64,
}

/// A cache store. Implementations must be cheap to call from every request and must
/// never block on I/O: a hit is served from whatever `get` returns.
pub trait Storage: Send + Sync + 'static {
    /// The response stored under `key`, fresh or not; freshness is the caller's business.
    fn get(&self, key: &CacheKey) -> Option<Arc<StoredResponse>>;

    /// Stores `value` under `key`, replacing any previous entry. The store may evict other
    /// entries, or refuse this one, to stay within its capacity.
    fn insert(&self, key: CacheKey, value: Arc<StoredResponse>);

    /// Removes the entry under `key`, if any.
    fn remove(&self, key: &CacheKey);

    /// Current usage, with pending evictions applied first so it never reads over capacity
    /// once the store has settled.
    fn usage(&self) -> Usage;
}

/// The in-memory store: `moka` with a byte weigher and LRU eviction.
#[derive(Clone)]
pub struct MemoryStore {
    cache: moka::sync::Cache<CacheKey, Arc<StoredResponse>>,
    capacity: u64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("capacity", &self.capacity)
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl MemoryStore {
    /// A store that holds at most `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .eviction_policy(EvictionPolicy::lru())
            .weigher(|key: &CacheKey, value: &Arc<StoredResponse>| {
                u32::try_from(key.len() + value.weight()).unwrap_or(u32::MAX)
            })
            .build();
        Self { cache, capacity }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }
}

impl Storage for MemoryStore {
    fn get(&self, key: &CacheKey) -> Option<Arc<StoredResponse>> {
        self.cache.get(key)
    }

    fn insert(&self, key: CacheKey, value: Arc<StoredResponse>) {
        self.cache.insert(key, value);
    }

    fn remove(&self, key: &CacheKey) {
        self.cache.invalidate(key);
    }

    fn usage(&self) -> Usage {
        self.cache.run_pending_tasks();
        Usage {
            bytes: self.cache.weighted_size(),
            entries: self.cache.entry_count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::freshness::Exchange;

    fn stored(headers: HeaderMap, body_len: usize) -> StoredResponse {
        StoredResponse::new(
            StatusCode::OK,
            headers,
            None,
            Bytes::from(vec![7u8; body_len]),
            Freshness {
                initial_age: 0,
                lifetime: 60,
                received: Exchange::now().received,
                must_revalidate: false,
                stale_while_revalidate: 0,
                stale_if_error: 0,
                shared_with_authorization: false,
            },
        )
    }

    fn response(body_len: usize) -> Arc<StoredResponse> {
        Arc::new(stored(HeaderMap::new(), body_len))
    }

    fn key(i: usize) -> CacheKey {
        CacheKey::new(1, "http", "h", &format!("/{i}"))
    }

    #[test]
    fn a_hit_shares_the_stored_body() {
        let store = MemoryStore::new(1 << 20);
        let r = response(1000);
        store.insert(key(1), r.clone());
        let got = store.get(&key(1)).unwrap();
        assert_eq!(got.body.as_ptr(), r.body.as_ptr());
        assert!(store.get(&key(2)).is_none());
    }

    #[test]
    fn twice_the_capacity_stays_under_capacity() {
        let capacity = 256 * 1024;
        let store = MemoryStore::new(capacity);
        for i in 0..64 {
            store.insert(key(i), response(8 * 1024));
        }
        let usage = store.usage();
        assert!(usage.bytes <= capacity, "{usage:?}");
        assert!(usage.entries > 0 && usage.entries < 64, "{usage:?}");
    }

    #[test]
    fn lru_keeps_what_is_read() {
        let store = MemoryStore::new(64 * 1024);
        store.insert(key(0), response(8 * 1024));
        store.usage();
        for i in 1..40 {
            assert!(store.get(&key(0)).is_some(), "hot entry evicted at {i}");
            store.insert(key(i), response(8 * 1024));
            store.usage();
        }
    }

    #[test]
    fn weight_counts_body_headers_and_serialized_head() {
        let base = stored(HeaderMap::new(), 100);
        assert_eq!(base.weight(), ENTRY_OVERHEAD + base.head().len() + 100);
        let mut headers = HeaderMap::new();
        headers.insert("x-test", HeaderValue::from_static("abcdef"));
        let with = stored(headers, 100);
        let line = "x-test: abcdef\r\n".len();
        assert_eq!(
            with.weight(),
            base.weight() + 6 + 6 + HEADER_OVERHEAD + line
        );
    }

    #[test]
    fn the_head_is_serialized_once_in_http1_form() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/css"));
        headers.insert("cdn-cache-control", HeaderValue::from_static("max-age=60"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let r = stored(headers, 0);
        assert_eq!(
            &r.head()[..],
            b"HTTP/1.1 200 OK\r\ncontent-type: text/css\r\nx-a: 1\r\nx-a: 2\r\n"
        );
    }
}
