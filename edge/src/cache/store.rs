//! Where responses live: the [`Storage`] trait and its in-memory implementation.
//!
//! Stored bodies are `Bytes` copied to their exact size at fill time, so a hit clones a
//! reference count and never copies, and the weigher counts what is really held. Header
//! values are copied too: hyper parses them as slices of its connection read buffer, and
//! one stored slice would pin that whole buffer (measured: 2.4x RSS per cached byte at
//! 16 KiB objects before, see BENCHMARKS.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use bytesize::ByteSize;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;

use crate::cache::allocation::{SHARED_BYTES_HEADER, allocation_size};
use crate::cache::disk::DiskConfig;
use crate::cache::freshness::{Freshness, is_targeted};
use crate::cache::hybrid::HybridStore;
use crate::cache::key::CacheKey;
use crate::cache::partial::PartialObject;
use crate::cache::sealed_body::SealedBody;
use crate::cache::slice::SliceInfo;
use crate::cache::status::NoCacheReason;
use crate::cache::vary::{Selection, VaryIndex};

/// Fixed bytes charged per entry of a kind other than a whole response (a slice, a
/// variant index, a marker): its struct, the memory tier's slot and allocator rounding,
/// generously, as these are few beside the responses.
const ENTRY_OVERHEAD: usize = 384;
/// What the memory tier's slot and index cost per entry beyond the key's text: quick_cache's
/// resident entry (key, value, state), its links and hash-table share, measured (RSS
/// growth at 1M entries, BENCHMARKS.md "Memory tier per object": ~80 B), with a margin
/// for the slack of its tables, which grow by doubling (just after 2^20 entries, ~30 B
/// more per entry than just before).
const SLOT_OVERHEAD: usize = 112;
/// Bytes charged per header field beyond its name and value.
const HEADER_OVERHEAD: usize = 32;

/// What the store holds under a key: one of six kinds, so every reader says which kinds
/// it handles (and a new kind shows every place that must learn about it).
///
/// Each kind sits behind its own `Arc`: a lookup clones one reference count, whatever the
/// kind, and a hit reaches its response without another indirection.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A whole response, served as it is: under a URL's primary key, or under a variant's
    /// key (then [`StoredResponse::selected_by`] says which variant).
    Response(Arc<StoredResponse>),
    /// An object cached in slices (see [`crate::cache::slice`]): its response head, with no
    /// body, and its slicing. Answered from its slices, each an [`Entry::Slice`].
    SliceIndex(Arc<SliceIndex>),
    /// One slice of a sliced object: its bytes, used only under the index it was stored
    /// for. Never served as it is.
    Slice(Arc<Slice>),
    /// An object of which only some byte spans are held, from `206` responses (see
    /// [`crate::cache::partial`]): answers ranges inside its spans; under the URL's key, or
    /// a variant's.
    Partial(Arc<PartialObject>),
    /// Under the primary key of a URL whose responses vary: the index for finding the
    /// variant a request selects. Never served.
    Variants(Arc<Variants>),
    /// A hit-for-pass marker: the URL's last response could not be stored, so until this
    /// entry goes stale requests pass straight through. Never served.
    Pass(Arc<PassMarker>),
}

/// The head of an object cached in slices, and how it is sliced.
#[derive(Debug)]
pub struct SliceIndex {
    /// The object's status and headers; its body is empty.
    pub head: StoredResponse,
    pub info: Arc<SliceInfo>,
}

/// One slice of a sliced object.
#[derive(Debug)]
pub struct Slice {
    /// The slicing of the index this slice was stored for.
    pub info: Arc<SliceInfo>,
    pub body: Bytes,
    /// The index's freshness when the slice was stored.
    pub freshness: Freshness,
}

/// The variant index under a varying URL's primary key.
#[derive(Debug)]
pub struct Variants {
    pub index: VaryIndex,
    pub freshness: Freshness,
}

/// A hit-for-pass marker: why the URL's last response was not stored.
#[derive(Debug)]
pub struct PassMarker {
    pub reason: NoCacheReason,
    /// Fresh while requests are to pass.
    pub freshness: Freshness,
}

/// An entry a request can be answered from: a whole response, the head of an object
/// cached in slices (whose bytes then come from its slices), or a partial object (which
/// answers only the ranges it holds).
#[derive(Debug, Clone)]
pub enum Cached {
    Whole(Arc<StoredResponse>),
    Sliced(Arc<SliceIndex>),
    Partial(Arc<PartialObject>),
}

impl Entry {
    /// The entry's freshness: every kind has one, and a stale marker or index counts for
    /// nothing.
    pub fn freshness(&self) -> &Freshness {
        match self {
            Entry::Response(response) => &response.freshness,
            Entry::SliceIndex(index) => &index.head.freshness,
            Entry::Slice(slice) => &slice.freshness,
            Entry::Partial(partial) => &partial.head.freshness,
            Entry::Variants(variants) => &variants.freshness,
            Entry::Pass(marker) => &marker.freshness,
        }
    }

    /// The entry as an answer to a request, if it is of a kind requests are answered from.
    pub fn cached(&self) -> Option<Cached> {
        match self {
            Entry::Response(response) => Some(Cached::Whole(response.clone())),
            Entry::SliceIndex(index) => Some(Cached::Sliced(index.clone())),
            Entry::Partial(partial) => Some(Cached::Partial(partial.clone())),
            Entry::Slice(_) | Entry::Variants(_) | Entry::Pass(_) => None,
        }
    }

    /// A hit-for-pass marker for `reason`, fresh as `freshness` says.
    pub fn pass_marker(reason: NoCacheReason, freshness: Freshness) -> Self {
        Entry::Pass(Arc::new(PassMarker { reason, freshness }))
    }

    /// Bytes of memory this entry holds, for the byte-weighted capacity.
    pub fn weight(&self) -> usize {
        match self {
            Entry::Response(response) => response.weight(),
            Entry::SliceIndex(index) => index.head.weight(),
            Entry::Slice(slice) => ENTRY_OVERHEAD + slice.body.len(),
            Entry::Partial(partial) => partial.weight(),
            Entry::Variants(variants) => {
                ENTRY_OVERHEAD
                    + variants
                        .index
                        .names
                        .iter()
                        .map(|n| n.as_str().len())
                        .sum::<usize>()
            }
            Entry::Pass(_) => ENTRY_OVERHEAD,
        }
    }
}

impl From<Cached> for Entry {
    fn from(cached: Cached) -> Self {
        match cached {
            Cached::Whole(response) => Entry::Response(response),
            Cached::Sliced(index) => Entry::SliceIndex(index),
            Cached::Partial(partial) => Entry::Partial(partial),
        }
    }
}

impl Cached {
    /// The response a request is answered with: the whole of it, or (sliced, partial) its
    /// head.
    pub fn response(&self) -> &StoredResponse {
        match self {
            Cached::Whole(response) => response,
            Cached::Sliced(index) => &index.head,
            Cached::Partial(partial) => &partial.head,
        }
    }

    pub fn freshness(&self) -> &Freshness {
        &self.response().freshness
    }

    /// This entry with its response's head replaced by `head` (a revalidation): the same
    /// kind, the same slicing or spans.
    pub fn with_head(&self, head: StoredResponse) -> Cached {
        match self {
            Cached::Whole(_) => Cached::Whole(Arc::new(head)),
            Cached::Sliced(index) => Cached::Sliced(Arc::new(SliceIndex {
                head,
                info: index.info.clone(),
            })),
            Cached::Partial(partial) => Cached::Partial(Arc::new(PartialObject {
                head,
                total: partial.total,
                validator: partial.validator.clone(),
                spans: partial.spans.clone(),
            })),
        }
    }
}

/// A response as the cache keeps it.
///
/// Kept small because the memory tier holds one per object (112 B, so that with its
/// reference counts it fills one 128 B allocation): what few responses carry (a variant's
/// selection, fields for this cache alone, purge tags) sits behind one optional box, and
/// the upstream's `Cache-Status` and a small body share the head's allocation.
#[derive(Debug)]
pub struct StoredResponse {
    pub status: StatusCode,
    pub freshness: Freshness,
    /// The status line and every header a client may see, each line ending in CRLF;
    /// without `Age` and `Cache-Status`, which are computed per response. Followed, from
    /// `head_len` to `members_end`, by the upstream's `Cache-Status` members (which this
    /// node's member follows), if it sent any; then by the body, if it is at most
    /// [`INLINE_BODY_MAX`]. A box, not `Bytes`: never shared, and half the size.
    bytes: Box<[u8]>,
    head_len: u32,
    members_end: u32,
    /// Requests answered from this entry: what `cdn warm` ranks a node's objects by.
    /// Saturates at `u32::MAX`.
    hits: AtomicU32,
    /// A body above [`INLINE_BODY_MAX`], shared with the responses sent from it; empty
    /// when the body is inline in `bytes`.
    shared_body: Bytes,
    rare: Option<Box<Rare>>,
}

/// Bodies up to this size are kept inline, in the head's allocation, when that allocation
/// is smaller than the two apart (see `inlines`): copying a body this small out for a
/// response that needs a `Bytes` costs less than the lookup.
pub const INLINE_BODY_MAX: usize = 4096;

/// Whether a body of `body` bytes goes inline after `head` bytes: a separate `Bytes` costs
/// its own allocation, its rounding and a shared header once it is cloned (a 100 B body
/// beside a 284 B head: 384 B together, 320 + 112 + 32 B apart), but the size classes
/// are coarse (a 1 KiB body beside the same head: 1,536 B together, 1,376 B apart).
fn inlines(head: usize, body: usize) -> bool {
    body <= INLINE_BODY_MAX
        && allocation_size(head + body)
            <= allocation_size(head) + allocation_size(body) + SHARED_BYTES_HEADER
}

/// The parts of a stored response most responses do not have.
#[derive(Debug, Clone, Default)]
struct Rare {
    /// Set on a variant: which index and signature it was stored under.
    selected_by: Option<Selection>,
    /// Fields for this cache alone (`CDN-Cache-Control`, `Surrogate-Control`): kept for
    /// revalidation, never sent.
    cache_only: Vec<(HeaderName, HeaderValue)>,
    /// The tags purges name it by (`Surrogate-Key`, `Cache-Tag`), read at fill time: kept
    /// for the disk tier, where purges are checked lazily (an edge removes the tags from
    /// the head itself).
    tags: Box<[String]>,
    /// The memory file `shared_body` maps, when the body is large enough to be sent from
    /// one ([`SealedBody`]).
    sealed: Option<SealedBody>,
}

impl Rare {
    fn is_empty(&self) -> bool {
        self.selected_by.is_none()
            && self.cache_only.is_empty()
            && self.tags.is_empty()
            && self.sealed.is_none()
    }
}

/// A body to store: bytes, and the sealed memory file they are a mapping of, if they are
/// (an entry rebuilt from another one's body shares its file rather than copying the body
/// into a new one).
#[derive(Debug, Clone, Default)]
pub struct StoredBody {
    bytes: Bytes,
    sealed: Option<SealedBody>,
}

impl From<Bytes> for StoredBody {
    fn from(bytes: Bytes) -> Self {
        Self {
            bytes,
            sealed: None,
        }
    }
}

impl StoredResponse {
    /// Stores a response; `headers` are the end-to-end headers to send (with `Via`
    /// already including this node) plus any fields meant for this cache alone.
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        upstream_cache_status: Option<HeaderValue>,
        body: impl Into<StoredBody>,
        freshness: Freshness,
    ) -> Self {
        let cache_only = headers
            .iter()
            .filter(|(name, _)| is_targeted(name))
            .map(|(name, value)| (name.clone(), owned_value(value)))
            .collect();
        Self::from_parts(
            status,
            &serialize_head(status, &headers),
            cache_only,
            upstream_cache_status,
            body,
            freshness,
            None,
            Vec::new(),
        )
    }

    /// A response rebuilt from its stored parts (the disk tier's records): `head` as
    /// [`StoredResponse::head`] gives it, `cache_only` as [`StoredResponse::cache_only`].
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        status: StatusCode,
        head: &[u8],
        cache_only: Vec<(HeaderName, HeaderValue)>,
        upstream_cache_status: Option<HeaderValue>,
        body: impl Into<StoredBody>,
        freshness: Freshness,
        selected_by: Option<Selection>,
        tags: Vec<String>,
    ) -> Self {
        let members = upstream_cache_status
            .as_ref()
            .map_or(&[][..], |v| v.as_bytes());
        Self::assemble(status, freshness, head, members, body.into()).with_rare(|rare| {
            rare.cache_only = cache_only;
            rare.selected_by = selected_by;
            rare.tags = tags.into();
        })
    }

    /// One exact-size allocation holding `head`, then `members` and then `body` if it is
    /// small enough to be inline: a `Vec` with spare capacity would keep its spare bytes
    /// for the entry's life. A body too large for that is shared; one large enough for
    /// a memory file is kept in one ([`SealedBody`]).
    fn assemble(
        status: StatusCode,
        freshness: Freshness,
        head: &[u8],
        members: &[u8],
        body: StoredBody,
    ) -> Self {
        let StoredBody {
            bytes: body,
            sealed,
        } = body;
        let inline = inlines(head.len() + members.len(), body.len());
        let mut bytes =
            Vec::with_capacity(head.len() + members.len() + if inline { body.len() } else { 0 });
        bytes.extend_from_slice(head);
        bytes.extend_from_slice(members);
        let length = |n: usize| u32::try_from(n).expect("a stored head is under 4 GiB");
        let (head_len, members_end) = (length(head.len()), length(bytes.len()));
        let (shared_body, sealed) = if inline {
            bytes.extend_from_slice(&body);
            (Bytes::new(), None)
        } else {
            match sealed.or_else(|| SealedBody::seal(&body)) {
                Some(sealed) => (sealed.bytes(), Some(sealed)),
                None => (body, None),
            }
        };
        let entry = Self {
            status,
            freshness,
            bytes: bytes.into_boxed_slice(),
            head_len,
            members_end,
            hits: AtomicU32::new(0),
            shared_body,
            rare: None,
        };
        match sealed {
            Some(sealed) => entry.with_rare(|rare| rare.sealed = Some(sealed)),
            None => entry,
        }
    }

    /// This response with its rare parts changed by `change`; no box is kept for none.
    fn with_rare(mut self, change: impl FnOnce(&mut Rare)) -> Self {
        let mut rare = self.rare.take().unwrap_or_default();
        change(&mut rare);
        self.rare = (!rare.is_empty()).then_some(rare);
        self
    }

    /// The same response carrying `tags` (see [`StoredResponse::tags`]).
    pub fn with_tags(self, tags: Vec<String>) -> Self {
        self.with_rare(|rare| rare.tags = tags.into())
    }

    /// The same response stored as the variant `selected_by` says (none: the URL's only
    /// response).
    pub fn selected_as(self, selected_by: Option<Selection>) -> Self {
        self.with_rare(|rare| rare.selected_by = selected_by)
    }

    /// Set on a variant: which index and signature it was stored under.
    pub fn selected_by(&self) -> Option<&Selection> {
        self.rare.as_ref()?.selected_by.as_ref()
    }

    /// The upstream's `Cache-Status` members, which this node's member follows.
    pub fn upstream_cache_status(&self) -> Option<&str> {
        let members = self.members();
        (!members.is_empty())
            .then(|| std::str::from_utf8(members).ok())
            .flatten()
    }

    fn members(&self) -> &[u8] {
        &self.bytes[self.head_len as usize..self.members_end as usize]
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        if self.shared_body.is_empty() {
            &self.bytes[self.members_end as usize..]
        } else {
            &self.shared_body
        }
    }

    /// The memory file the body is kept in, when it is large enough for one: a plain-TCP
    /// connection sends it with `sendfile`.
    pub fn sealed_body(&self) -> Option<&SealedBody> {
        self.rare.as_ref()?.sealed.as_ref()
    }

    /// The body as stored, to build another entry with (a revalidated response keeps its
    /// body): a sealed body's file is shared, not copied.
    pub fn stored_body(&self) -> StoredBody {
        StoredBody {
            bytes: self.body_bytes(),
            sealed: self.sealed_body().cloned(),
        }
    }

    /// The body as `Bytes`, for a response body: shared when large, copied when inline.
    pub fn body_bytes(&self) -> Bytes {
        if self.shared_body.is_empty() {
            Bytes::copy_from_slice(self.body())
        } else {
            self.shared_body.clone()
        }
    }

    /// The tags purges name this response by, as read at fill time.
    pub fn tags(&self) -> &[String] {
        self.rare.as_ref().map_or(&[], |rare| &rare.tags)
    }

    /// The fields kept for this cache alone (`CDN-Cache-Control`, `Surrogate-Control`).
    pub fn cache_only(&self) -> &[(HeaderName, HeaderValue)] {
        self.rare.as_ref().map_or(&[], |rare| &rare.cache_only)
    }

    /// This response with another body (a disk record's, read whole or not at all).
    pub fn with_body(&self, body: Bytes) -> Self {
        let entry = Self::assemble(
            self.status,
            self.freshness,
            self.head(),
            self.members(),
            body.into(),
        );
        let sealed = entry.sealed_body().cloned();
        Self {
            rare: self.rare.clone(),
            ..entry
        }
        .with_rare(|rare| rare.sealed = sealed)
    }

    fn copy_head(&self) -> Self {
        Self {
            status: self.status,
            freshness: self.freshness,
            bytes: self.bytes.clone(),
            head_len: self.head_len,
            members_end: self.members_end,
            hits: AtomicU32::new(self.hits.load(Ordering::Relaxed)),
            shared_body: self.shared_body.clone(),
            rare: self.rare.clone(),
        }
    }

    /// This response marked stale (a soft purge): the next request revalidates it, and it
    /// can still be served when the origin fails (`stale-if-error`).
    pub fn marked_stale(&self) -> Self {
        Self {
            freshness: self.freshness.expired(),
            ..self.copy_head()
        }
    }

    /// Counts one request answered from this entry; `true` for its first.
    pub fn record_hit(&self) -> bool {
        self.hits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1))
            == Ok(0)
    }

    /// Requests answered from this entry since it was stored.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed).into()
    }

    /// The serialized status line and client-visible headers, each line ending in CRLF.
    pub fn head(&self) -> &[u8] {
        &self.bytes[..self.head_len as usize]
    }

    /// The headers a client may see, as a map (parsed from the head).
    pub fn client_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in self.header_lines() {
            // Both halves were valid when serialized, so neither fails here.
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                headers.append(name, value);
            }
        }
        headers
    }

    /// The `(name, value)` of every header line of the stored head.
    fn header_lines(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.head()
            .split(|b| *b == b'\n')
            .skip(1)
            .filter_map(|line| {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let colon = line.iter().position(|b| *b == b':')?;
                Some((&line[..colon], line[colon + 1..].trim_ascii_start()))
            })
    }

    /// Every stored header, the fields for this cache alone included.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = self.client_headers();
        for (name, value) in self.cache_only() {
            headers.append(name.clone(), value.clone());
        }
        headers
    }

    /// One client-visible header's value, found in the head without building a map.
    pub fn header(&self, name: &HeaderName) -> Option<&str> {
        let name = name.as_str().as_bytes();
        self.header_lines()
            .find(|(line_name, _)| *line_name == name)
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    /// Bytes of memory this entry holds, for the byte-weighted capacity.
    pub fn weight(&self) -> usize {
        let cache_only: usize = self
            .cache_only()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + HEADER_OVERHEAD)
            .sum();
        let tags: usize = self.tags().iter().map(|t| t.len() + HEADER_OVERHEAD).sum();
        let body = match self.shared_body.len() {
            0 => 0,
            n => allocation_size(n) + SHARED_BYTES_HEADER,
        };
        // The struct and its `Arc` counts, in one allocation.
        allocation_size(16 + std::mem::size_of::<Self>())
            + allocation_size(self.bytes.len())
            + body
            + cache_only
            + tags
    }
}

fn owned_value(value: &HeaderValue) -> HeaderValue {
    let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
    copy.set_sensitive(value.is_sensitive());
    copy
}

/// `HTTP/1.1 <status>\r\n` followed by `name: value\r\n` for every header a client may see
/// (the targeted cache fields are kept apart and never sent).
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

/// Size of the in-memory cache.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Total bytes of cached responses (bodies, headers and keys), e.g. `"512 MiB"`.
    pub capacity: ByteSize,
    /// Responses larger than this are not stored whole: they are cached in slices when
    /// the upstream serves byte ranges, else streamed to the client and not stored.
    pub max_object_size: ByteSize,
    /// Size of the slices an object above `max_object_size` is cached in (fetched with
    /// `Range` as requests need them); `"0 B"` turns slicing off. A size above
    /// `max_object_size` is lowered to it.
    pub slice_size: ByteSize,
    /// Where the node keeps what it must remember across restarts (its purge watermark,
    /// its sites' generations and a journal of applied purges, in `state.redb`; see
    /// `node::state`). Unset: nothing is kept and a restarted node starts empty, unless
    /// the node has a disk tier, whose directory then holds the state too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<std::path::PathBuf>,
    /// `[cache.disk]`: a disk tier under the memory tier (see [`crate::cache::hybrid`]).
    /// Unset: memory only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskConfig>,
}

impl CacheConfig {
    /// Where the node state lives: `state_dir`, else the disk tier's directory (the
    /// generations and purge journal that keep disk records honest live with them).
    pub fn state_dir(&self) -> Option<&std::path::Path> {
        self.state_dir
            .as_deref()
            .or(self.disk.as_ref().map(|disk| disk.path.as_path()))
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            capacity: ByteSize::mib(512),
            max_object_size: ByteSize::mib(32),
            slice_size: ByteSize::mib(1),
            state_dir: None,
            disk: None,
        }
    }
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
    /// The entry stored under `key`, fresh or not; freshness is the caller's business.
    fn get(&self, key: &CacheKey) -> Option<Entry>;

    /// Stores `value` under `key`, replacing any previous entry. The store may evict other
    /// entries, or refuse this one, to stay within its capacity.
    fn insert(&self, key: CacheKey, value: Entry);

    /// Removes the entry under `key`, if any.
    fn remove(&self, key: &CacheKey);

    /// Current usage, with pending evictions applied first so it never reads over capacity
    /// once the store has settled.
    fn usage(&self) -> Usage;

    /// Every key starting with `prefix`: a full scan, for the purges that cannot use an
    /// index (URL prefixes, hosts, soft purges of a whole site).
    fn keys_with_prefix(&self, prefix: &str) -> Vec<CacheKey>;

    /// Up to `limit` whole responses under primary keys (no variants, slices or
    /// markers), most hits first: a full scan, for cache warming (`GET /v1/hot`).
    fn hottest(&self, limit: usize) -> Vec<(CacheKey, u64)>;

    /// The purge sequence number up to which the stored content reflects every purge (see
    /// `node_api::purge`); kept with the store so a node that restarts over the same store
    /// knows where to catch up from.
    fn purge_watermark(&self) -> u64;

    fn set_purge_watermark(&self, seq: u64);

    /// The entry under `key` answered its first request ([`StoredResponse::record_hit`]
    /// said so): a store with a disk tier writes it there now, so that it survives a crash
    /// even if memory never evicts it.
    fn first_hit(&self, key: &CacheKey) {
        let _ = key;
    }

    /// The store's disk tier, when it has one ([`HybridStore`]): the full path reads it
    /// on a memory miss. Never consulted by `get`.
    fn hybrid(&self) -> Option<&HybridStore> {
        None
    }
}

/// What the memory tier keeps under a key: the entry, and the purge watermark when it was
/// stored (the purges it reflects), which goes with it to the disk tier when it is evicted.
#[derive(Debug, Clone)]
pub struct Held {
    pub entry: Entry,
    pub valid_as_of: u64,
}

/// Called with every entry evicted for size (see [`MemoryStore::with_eviction`]).
pub type EvictionListener = Arc<dyn Fn(&CacheKey, &Held) + Send + Sync>;

/// The in-memory store: a byte-weighted `quick_cache` (S3-FIFO eviction, scan resistant).
///
/// Chosen over `moka` for what it costs per object: measured with 1M entries of a cache
/// key, moka's nodes, deques and indexes take ~370 B per entry and quick_cache's ~64 B
/// (`BENCHMARKS.md`, "Memory tier per object"), and an edge full of small objects is
/// mostly that overhead.
#[derive(Clone)]
pub struct MemoryStore {
    cache: Arc<QuickCache>,
    listener: Option<EvictionListener>,
    capacity: u64,
    watermark: Arc<std::sync::atomic::AtomicU64>,
}

type QuickCache =
    quick_cache::sync::Cache<CacheKey, Held, ByWeight, quick_cache::DefaultHashBuilder, Evictions>;

/// Weighs an entry by the bytes it holds, key included.
#[derive(Debug, Clone)]
struct ByWeight;

impl quick_cache::Weighter<CacheKey, Held> for ByWeight {
    fn weight(&self, key: &CacheKey, held: &Held) -> u64 {
        (SLOT_OVERHEAD + allocation_size(key.len()) + held.entry.weight()) as u64
    }
}

/// Collects the entries an insert evicts, for the listener to see once the shard's lock
/// is released (and for their memory to be freed outside it).
#[derive(Debug, Clone, Default)]
struct Evictions;

impl quick_cache::Lifecycle<CacheKey, Held> for Evictions {
    type RequestState = Vec<(CacheKey, Held)>;

    fn on_evict(&self, evicted: &mut Self::RequestState, key: CacheKey, held: Held) {
        evicted.push((key, held));
    }
}

/// The largest object the memory tier is sized to hold: each shard of the cache holds at
/// least twice this (an entry heavier than its shard's share is not admitted).
const LARGEST_OBJECT: u64 = 32 << 20;

/// Shards for a store of `capacity` bytes: more shards mean less lock contention, and
/// each must still hold the largest object; a power of two up to four per core.
fn shards_for(capacity: u64) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let by_size = (capacity / (2 * LARGEST_OBJECT)).max(1);
    let shards = by_size.min(4 * cores as u64);
    // The largest power of two not above `shards`.
    1 << (63 - shards.leading_zeros())
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("capacity", &self.capacity)
            .field("entries", &self.cache.len())
            .finish()
    }
}

impl MemoryStore {
    /// A store that holds at most `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        Self::build(capacity, None)
    }

    /// As [`MemoryStore::new`], calling `listener` with every entry evicted to stay within
    /// the capacity (not those replaced or removed), after the store's lock is released.
    /// It runs on the thread that triggered the eviction and must not block.
    pub fn with_eviction(capacity: u64, listener: EvictionListener) -> Self {
        Self::build(capacity, Some(listener))
    }

    fn build(capacity: u64, listener: Option<EvictionListener>) -> Self {
        let options = quick_cache::OptionsBuilder::new()
            .shards(shards_for(capacity))
            .estimated_items_capacity(1024)
            .weight_capacity(capacity)
            .build()
            .expect("shards, items and weight are set");
        Self {
            cache: Arc::new(quick_cache::sync::Cache::with_options(
                options,
                ByWeight,
                quick_cache::DefaultHashBuilder::default(),
                Evictions,
            )),
            listener,
            capacity,
            watermark: Arc::default(),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The entry under `key` with the watermark it was stored at.
    pub fn get_held(&self, key: &CacheKey) -> Option<Held> {
        self.cache.get(key)
    }

    /// Every entry, in no order: for scans (prefix purges, the hot list, writing the
    /// memory tier out at a stop).
    pub fn entries(&self) -> impl Iterator<Item = (CacheKey, Held)> + '_ {
        self.cache.iter()
    }

    /// Stores `value` as valid as of `valid_as_of` (an entry read back from the disk tier
    /// keeps the watermark it was checked at).
    pub fn insert_held(&self, key: CacheKey, entry: Entry, valid_as_of: u64) {
        let mut evicted = Vec::new();
        let Some(listener) = &self.listener else {
            self.cache
                .insert_with_lifecycle(key, Held { entry, valid_as_of }, &mut evicted);
            return;
        };
        let inserted = key.clone();
        self.cache
            .insert_with_lifecycle(key, Held { entry, valid_as_of }, &mut evicted);
        // quick_cache reports the version an insert replaces as evicted too: that one is
        // not evicted for size, and must not reach the disk as if it were current.
        for (key, held) in evicted.iter().filter(|(key, _)| *key != inserted) {
            listener(key, held);
        }
    }
}

impl Storage for MemoryStore {
    fn get(&self, key: &CacheKey) -> Option<Entry> {
        self.cache.get(key).map(|held| held.entry)
    }

    fn insert(&self, key: CacheKey, value: Entry) {
        let valid_as_of = self.purge_watermark();
        self.insert_held(key, value, valid_as_of);
    }

    fn remove(&self, key: &CacheKey) {
        self.cache.remove(key);
    }

    fn usage(&self) -> Usage {
        Usage {
            bytes: self.cache.weight(),
            entries: self.cache.len() as u64,
        }
    }

    fn keys_with_prefix(&self, prefix: &str) -> Vec<CacheKey> {
        self.cache
            .iter()
            .filter(|(key, _)| key.as_str().starts_with(prefix))
            .map(|(key, _)| key)
            .collect()
    }

    fn hottest(&self, limit: usize) -> Vec<(CacheKey, u64)> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        // A min-heap of the best `limit` so far: one pass, memory bounded by `limit`.
        let mut best: BinaryHeap<Reverse<(u64, CacheKey)>> = BinaryHeap::new();
        for (key, held) in self.cache.iter() {
            // Whole responses under primary keys: a variant's key holds a newline.
            let Entry::Response(response) = &held.entry else {
                continue;
            };
            if key.as_str().contains('\n') {
                continue;
            }
            let candidate = Reverse((response.hits(), key.clone()));
            if best.len() < limit {
                best.push(candidate);
            } else if best.peek().is_some_and(|worst| candidate < *worst) {
                best.pop();
                best.push(candidate);
            }
        }
        let mut hottest: Vec<(CacheKey, u64)> = best
            .into_iter()
            .map(|Reverse((hits, key))| (key, hits))
            .collect();
        hottest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.as_str().cmp(b.0.as_str())));
        hottest
    }

    fn purge_watermark(&self) -> u64 {
        self.watermark.load(std::sync::atomic::Ordering::Acquire)
    }

    fn set_purge_watermark(&self, seq: u64) {
        self.watermark
            .store(seq, std::sync::atomic::Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::freshness::Exchange;

    fn stored(headers: HeaderMap, body_len: usize) -> StoredResponse {
        StoredResponse::new(
            StatusCode::OK,
            headers,
            None,
            Bytes::from(vec![7u8; body_len]),
            fresh(),
        )
    }

    fn fresh() -> Freshness {
        Freshness {
            initial_age: 0,
            lifetime: 60,
            received: Exchange::now().received,
            must_revalidate: false,
            stale_while_revalidate: 0,
            stale_if_error: 0,
            shared_with_authorization: false,
        }
    }

    fn response(body_len: usize) -> Entry {
        Entry::Response(Arc::new(stored(HeaderMap::new(), body_len)))
    }

    fn key(i: usize) -> CacheKey {
        CacheKey::new(1, "http", "h", &format!("/{i}"))
    }

    #[test]
    fn a_hit_shares_a_large_stored_body() {
        let store = MemoryStore::new(1 << 20);
        let r = response(INLINE_BODY_MAX + 1);
        store.insert(key(1), r.clone());
        let (Some(Entry::Response(got)), Entry::Response(r)) = (store.get(&key(1)), r) else {
            panic!("a response was stored");
        };
        assert_eq!(got.body_bytes().as_ptr(), r.body_bytes().as_ptr());
        assert_eq!(got.body().len(), INLINE_BODY_MAX + 1);
        assert!(store.get(&key(2)).is_none());
    }

    #[test]
    fn a_small_body_is_inline_after_the_head_and_upstream_status() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        let body = Bytes::from_static(b"small body");
        let r = StoredResponse::new(
            StatusCode::OK,
            headers,
            Some(HeaderValue::from_static("shield; hit")),
            body.clone(),
            fresh(),
        );
        assert_eq!(r.body(), &body[..]);
        assert_eq!(r.body_bytes(), body);
        assert_ne!(
            r.body_bytes().as_ptr(),
            body.as_ptr(),
            "copied in, not shared"
        );
        assert_eq!(r.upstream_cache_status(), Some("shield; hit"));
        assert!(r.head().ends_with(b"content-type: text/plain\r\n"));
        let replaced = r.with_body(Bytes::from_static(b"other"));
        assert_eq!(replaced.body(), b"other");
        assert_eq!(replaced.head(), r.head());
        assert_eq!(replaced.upstream_cache_status(), Some("shield; hit"));
        assert_eq!(r.marked_stale().body(), &body[..]);
    }

    #[test]
    fn a_stored_response_fills_one_128_byte_allocation_with_its_reference_counts() {
        // Jemalloc's size classes step from 128 to 160 B: 16 B of `Arc` counts plus
        // this must stay within 128 B, or every object in memory costs 32 B more.
        assert!(std::mem::size_of::<StoredResponse>() <= 112);
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
    fn an_entry_that_is_read_stays_while_others_come_and_go() {
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
    fn weight_counts_the_allocations_of_head_and_body() {
        let struct_size = allocation_size(16 + std::mem::size_of::<StoredResponse>());
        // 100 B inline after a 284 B head: one 384 B allocation.
        let mut headers = HeaderMap::new();
        let padding = "p".repeat(284 - "HTTP/1.1 200 OK\r\nx-pad: \r\n".len());
        headers.insert("x-pad", HeaderValue::from_str(&padding).unwrap());
        let small = stored(headers.clone(), 100);
        assert_eq!(small.head().len(), 284);
        assert_eq!(small.weight(), struct_size + 384);
        // 1 KiB apart: 320 B of head, 1 KiB of body and the body's shared header.
        let large = stored(headers, 1024);
        assert_eq!(large.body().len(), 1024);
        assert_eq!(
            large.weight(),
            struct_size + 320 + 1024 + SHARED_BYTES_HEADER
        );
    }

    #[test]
    fn a_body_is_inline_only_where_that_takes_less_memory() {
        assert!(inlines(284, 100), "384 B together against 464 B apart");
        assert!(
            !inlines(284, 1024),
            "1,536 B together against 1,376 B apart"
        );
        assert!(inlines(100, 0));
        assert!(!inlines(0, INLINE_BODY_MAX + 1));
    }

    #[test]
    fn headers_round_trip_through_the_head_and_cache_only_fields_stay_private() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/css"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        headers.insert("cdn-cache-control", HeaderValue::from_static("max-age=60"));
        let r = stored(headers.clone(), 0);
        assert_eq!(r.headers(), headers);
        let client = r.client_headers();
        assert!(!client.contains_key("cdn-cache-control"));
        assert_eq!(client.get_all("x-a").iter().count(), 2);
        assert_eq!(r.header(&http::header::CONTENT_TYPE), Some("text/css"));
        assert_eq!(r.header(&http::header::ETAG), None);
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
            r.head(),
            b"HTTP/1.1 200 OK\r\ncontent-type: text/css\r\nx-a: 1\r\nx-a: 2\r\n"
        );
    }
}
