//! Applying purges on a node, in sequence order, and keeping fills from undoing them.
//!
//! Purges are applied eagerly, when they arrive: a URL is one removal (its variant index
//! and slice index with it, so every variant and slice becomes unreachable; a partial
//! object holds its spans itself), a tag is a
//! lookup in the tag index learnt at fill time (`Surrogate-Key`, `Cache-Tag`), a prefix or
//! a host is one scan of the store's keys, and everything is a bump of the site's
//! generation (O(1): every old key becomes unreachable and is evicted in time). Eager
//! application keeps the hit path free of purge checks; the scans are why prefix and host
//! purges cost more at admission.
//!
//! Invariants:
//! - The watermark (kept in the store) is `n` only when purges `1..=n` are all in effect.
//!   Purges are applied one at a time, in order; a batch with a gap is refused.
//! - A fill that started before a purge and finishes after it does not store what it
//!   fetched if the purge matches it (the bytes may predate the purge): every fill records
//!   the watermark it started at and checks the purges applied since (the last
//!   [`RECENT`] are kept; a fill older than that does not store at all).
//! - With a persisted state ([`NodeState`], `[cache] state_dir`), every applied purge is
//!   recorded in its journal with the targets it was applied as, and each batch (or reset)
//!   is committed with the watermark and the generations before [`Invalidation::apply_batch`]
//!   returns: the watermark it returns is durable, so it may be acknowledged.
//! - A purge matches an entry in one place, [`Target::matches`]: a fill's check
//!   ([`Invalidation::may_store`]) uses it, and the state's lazy check
//!   ([`NodeState::check`]) reaches the same answer from its index (tested against it).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use http::HeaderMap;

use crate::cache::key::{CacheKey, normalize_target};
use crate::cache::partial::PartialObject;
use crate::cache::store::{Entry, Slice, SliceIndex, Storage};
use crate::node::config::normalize_host;
use crate::node::site::{Site, SiteTable};
use crate::node::state::{JournalEntry, NodeState, StateError};
use node_api::purge::{Mode, Purge, PurgeBatch, Selector, SequencedPurge};

/// Purges remembered for the fill check.
pub const RECENT: usize = 4096;

/// Most URLs in a batch applied without leaving the async worker ([`Invalidation::is_quick`]).
pub const QUICK_TARGETS: usize = 64;

/// Registrations of tagged responses between two checks for evicted keys in the index.
const PRUNE_EVERY: usize = 1024;

/// The response fields tags are read from, with their separators: `Surrogate-Key`
/// (space-separated, Fastly) and `Cache-Tag` (comma-separated, Cloudflare).
pub const TAG_FIELDS: [(&str, char); 2] = [("surrogate-key", ' '), ("cache-tag", ',')];

/// A batch could not be applied: it does not continue from the node's watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("purge {first} does not follow this node's watermark {applied}: send from {next}", next = applied + 1)]
pub struct Gap {
    pub applied: u64,
    pub first: u64,
}

/// A batch was not (wholly) applied, or its watermark could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The batch does not continue from the watermark: resend from `applied + 1`.
    #[error(transparent)]
    Gap(#[from] Gap),
    /// The purges were applied in memory but the state could not be committed: the new
    /// watermark is not acknowledged; a resend commits them.
    #[error(transparent)]
    Persist(#[from] StateError),
}

/// A node's purge state: the tag index, the recently applied purges and, when the node
/// keeps one, its persisted state.
#[derive(Debug, Default)]
pub struct Invalidation {
    /// Serializes batches, so purges apply one at a time in order.
    apply: Mutex<()>,
    recent: Mutex<VecDeque<SequencedPurge>>,
    /// `"{site}\n{tag}"` -> keys of responses that carried the tag.
    tags: Mutex<HashMap<String, HashSet<CacheKey>>>,
    /// Tagged responses registered, for pruning the tag index now and then.
    registered: AtomicUsize,
    /// The node's persisted state, when it keeps one.
    state: Option<Arc<NodeState>>,
}

/// What a purge matches within its site, resolved against the node's sites: the form
/// purges are applied in, kept in the state's journal and matched in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Target {
    /// A URL's key without its generation (`http://host/target`, normalized as keys are):
    /// the URL, its variants and its slices.
    Url(String),
    /// A prefix of keys without their generation (a prefix purge, or a host purge as
    /// `http://host/`).
    Prefix(String),
    Tag(String),
    Everything,
}

impl Target {
    /// Whether this target covers the entry whose key has `locator` (the key without its
    /// generation) and which carries `tags`, within the purge's site.
    pub fn matches(&self, locator: &str, tags: &[String]) -> bool {
        match self {
            Target::Url(url) => locator
                .strip_prefix(url.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('\n')),
            Target::Prefix(prefix) => locator.starts_with(prefix.as_str()),
            Target::Tag(tag) => tags.contains(tag),
            Target::Everything => true,
        }
    }
}

impl Invalidation {
    /// Purge state that records every applied purge in `state`, when given.
    pub fn new(state: Option<Arc<NodeState>>) -> Self {
        Self {
            state,
            ..Self::default()
        }
    }

    /// The node's persisted state, when it keeps one.
    pub fn state(&self) -> Option<&Arc<NodeState>> {
        self.state.as_ref()
    }

    /// The tags a response carries, for [`Invalidation::register`].
    pub fn tags_of(headers: &HeaderMap) -> Vec<String> {
        let mut tags = Vec::new();
        for (field, separator) in TAG_FIELDS {
            for value in headers
                .get_all(field)
                .iter()
                .filter_map(|v| v.to_str().ok())
            {
                tags.extend(
                    value
                        .split(separator)
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned),
                );
            }
        }
        tags
    }

    /// Remembers that `key` of `site` carries `tags`.
    pub fn register(&self, site: &str, key: &CacheKey, tags: &[String], store: &dyn Storage) {
        if tags.is_empty() {
            return;
        }
        let mut index = self.tags.lock().unwrap_or_else(PoisonError::into_inner);
        for tag in tags {
            index
                .entry(format!("{site}\n{tag}"))
                .or_default()
                .insert(key.clone());
        }
        // Evicted keys linger in the index; once it holds far more keys than the store has
        // entries, drop the ones that are gone. Counting both costs a walk of the index and
        // a settling of the store, so it is done once every `PRUNE_EVERY` registrations,
        // not on every fill.
        let registered = self.registered.fetch_add(1, Ordering::Relaxed) + 1;
        if !registered.is_multiple_of(PRUNE_EVERY) {
            return;
        }
        let held: usize = index.values().map(HashSet::len).sum();
        let entries = usize::try_from(store.usage().entries).unwrap_or(usize::MAX);
        if held > 1024 && held > entries.saturating_mul(4) {
            for keys in index.values_mut() {
                keys.retain(|k| store.get(k).is_some());
            }
            index.retain(|_, keys| !keys.is_empty());
        }
    }

    /// Whether applying `batch` is a few hash-map removals: no persisted state to commit,
    /// no disk tier, and only URL purges (at most [`QUICK_TARGETS`] URLs in all) and hard
    /// purges of everything (a generation bump). Such a batch is applied on the async
    /// worker that received it: a blocking-thread hop costs more than the work, and many
    /// small batches (one a round while purges trickle) would queue in the blocking pool
    /// behind slower work. Anything else may scan the store or wait for the disk.
    pub fn is_quick(&self, batch: &PurgeBatch, store: &dyn Storage) -> bool {
        if self.state.is_some() || store.hybrid().is_some() {
            return false;
        }
        let mut urls = 0;
        batch.purges.iter().all(|p| match &p.purge.selector {
            Selector::Urls(list) => {
                urls += list.len();
                urls <= QUICK_TARGETS
            }
            Selector::Everything => p.purge.mode == Mode::Hard,
            _ => false,
        })
    }

    /// Applies a batch in order: purges at or below the watermark are skipped (a resend),
    /// the rest must continue from it. Returns the new watermark, committed to the state
    /// first when the node keeps one (also when the batch stops at a gap: what was
    /// applied before it is committed).
    pub fn apply_batch(
        &self,
        batch: &PurgeBatch,
        sites: &SiteTable,
        store: &dyn Storage,
    ) -> Result<u64, ApplyError> {
        let _one_at_a_time = self.apply.lock().unwrap_or_else(PoisonError::into_inner);
        let mut outcome = Ok(());
        for purge in &batch.purges {
            let applied = store.purge_watermark();
            if purge.seq <= applied {
                continue;
            }
            if purge.seq != applied + 1 {
                outcome = Err(Gap {
                    applied,
                    first: purge.seq,
                });
                break;
            }
            let targets = self.apply(&purge.purge, sites, store);
            if let Some(state) = &self.state {
                state.record(
                    purge.seq,
                    JournalEntry {
                        site: purge.purge.site.clone(),
                        mode: purge.purge.mode,
                        targets,
                    },
                );
            }
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(purge.clone());
            store.set_purge_watermark(purge.seq);
        }
        if let Some(state) = &self.state {
            state.commit(store.purge_watermark(), &generations(sites))?;
        }
        outcome?;
        Ok(store.purge_watermark())
    }

    /// Makes every site forget everything (a node whose purge position fell out of the
    /// log's retention cannot know what it missed), then sets the watermark to `seq`; the
    /// state forgets its journal and keeps the new generations, its floor at `seq`.
    pub fn reset(
        &self,
        sites: &SiteTable,
        store: &dyn Storage,
        seq: u64,
    ) -> Result<(), StateError> {
        let _one_at_a_time = self.apply.lock().unwrap_or_else(PoisonError::into_inner);
        for site in sites.sites() {
            site.bump_generation();
        }
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        store.set_purge_watermark(seq);
        match &self.state {
            Some(state) => state.restart_at(seq, &generations(sites)),
            None => Ok(()),
        }
    }

    /// Takes `seq` as the watermark of a node that holds nothing (a fresh node joining at
    /// the log's head): nothing is forgotten, since nothing is held; the state's floor
    /// rises to `seq`, so anything stored before would count as gone.
    pub fn start_at(
        &self,
        sites: &SiteTable,
        store: &dyn Storage,
        seq: u64,
    ) -> Result<(), StateError> {
        let _one_at_a_time = self.apply.lock().unwrap_or_else(PoisonError::into_inner);
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        store.set_purge_watermark(seq);
        match &self.state {
            Some(state) => state.restart_at(seq, &generations(sites)),
            None => Ok(()),
        }
    }

    /// Applies one purge to memory; returns the targets it was applied as (none for a
    /// site this node does not serve).
    fn apply(&self, purge: &Purge, sites: &SiteTable, store: &dyn Storage) -> Vec<Target> {
        let Some(site) = sites.by_name(&purge.site) else {
            tracing::warn!(site = %purge.site, "purge for a site this node does not serve: ignored");
            return Vec::new();
        };
        let targets = targets(purge, sites);
        for target in &targets {
            match target {
                Target::Url(locator) => {
                    let key = CacheKey::from_locator(site.generation(), locator);
                    self.purge_key(&key, purge.mode, store);
                }
                Target::Prefix(prefix) => {
                    let prefix = format!("{} {prefix}", site.generation());
                    for key in store.keys_with_prefix(&prefix) {
                        self.purge_key(&key, purge.mode, store);
                    }
                }
                Target::Tag(tag) => {
                    let keys = self
                        .tags
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&format!("{}\n{tag}", site.name))
                        .unwrap_or_default();
                    for key in keys {
                        self.purge_key(&key, purge.mode, store);
                    }
                }
                Target::Everything if purge.mode == Mode::Hard => {
                    site.bump_generation();
                }
                Target::Everything => {
                    for host in sites.hosts_of(&site.name) {
                        let prefix = format!("{} http://{host}/", site.generation());
                        for key in store.keys_with_prefix(&prefix) {
                            self.purge_key(&key, Mode::Soft, store);
                        }
                    }
                }
            }
        }
        targets
    }

    /// Removes (hard) or marks stale (soft) one entry, with what hangs off it.
    fn purge_key(&self, key: &CacheKey, mode: Mode, store: &dyn Storage) {
        let Some(entry) = store.get(key) else {
            return;
        };
        let stale = match mode {
            Mode::Hard => {
                if let Entry::SliceIndex(index) = &entry {
                    for n in 0..index.info.count() {
                        store.remove(&key.slice(n));
                    }
                }
                None
            }
            Mode::Soft => Self::soft_purged(&entry),
        };
        match stale {
            Some(stale) => store.insert(key.clone(), stale),
            None => store.remove(key),
        }
    }

    /// What a soft purge leaves of an entry: the entry marked stale, or nothing when it
    /// cannot be marked (it goes). The one answer for memory and for an entry read later
    /// that [`NodeState::check`] finds [`Stale`](crate::node::state::Verdict::Stale).
    pub fn soft_purged(entry: &Entry) -> Option<Entry> {
        match entry {
            // A variant index cannot be marked stale for its variants: it goes, and with it
            // every variant (the next fill starts a new index epoch). A stale pass marker
            // is no marker at all.
            Entry::Variants(_) | Entry::Pass(_) => None,
            Entry::Response(response) => Some(Entry::Response(Arc::new(response.marked_stale()))),
            Entry::SliceIndex(index) => Some(Entry::SliceIndex(Arc::new(SliceIndex {
                head: index.head.marked_stale(),
                info: index.info.clone(),
            }))),
            Entry::Partial(partial) => Some(Entry::Partial(Arc::new(PartialObject {
                head: partial.head.marked_stale(),
                total: partial.total,
                validator: partial.validator.clone(),
                spans: partial.spans.clone(),
            }))),
            Entry::Slice(slice) => Some(Entry::Slice(Arc::new(Slice {
                info: slice.info.clone(),
                body: slice.body.clone(),
                freshness: slice.freshness.expired(),
            }))),
        }
    }

    /// Whether a fill that started at watermark `since` may store its response under `key`
    /// (with `tags`): not if a purge applied since then matches it.
    pub fn may_store(
        &self,
        since: u64,
        site: &Site,
        key: &CacheKey,
        tags: &[String],
        sites: &SiteTable,
        store: &dyn Storage,
    ) -> bool {
        let now = store.purge_watermark();
        if now == since {
            return true;
        }
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.front().is_none_or(|oldest| oldest.seq > since + 1) {
            return false; // purges were applied that this node no longer remembers
        }
        let locator = key.locator();
        !recent
            .iter()
            .filter(|p| p.seq > since && p.purge.site == site.name)
            .flat_map(|p| targets(&p.purge, sites))
            .any(|target| target.matches(locator, tags))
    }
}

/// Every site's current generation, as the state keeps them.
fn generations(sites: &SiteTable) -> Vec<(&str, u64)> {
    sites
        .sites()
        .iter()
        .map(|site| (site.name.as_str(), site.generation()))
        .collect()
}

/// A purge's targets as key locators (keys without their generation), for the hosts of its
/// site only: a target naming another site's host is ignored.
fn targets(purge: &Purge, sites: &SiteTable) -> Vec<Target> {
    let mine = |host: &str| {
        sites
            .resolve(host)
            .filter(|m| m.site.name == purge.site)
            .map(|m| (m.host.to_owned(), m.site.clone()))
    };
    match &purge.selector {
        Selector::Urls(urls) => urls
            .iter()
            .filter_map(|url| {
                let uri: http::Uri = url.parse().ok()?;
                let (host, site) = mine(uri.host()?)?;
                let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
                let target = normalize_target(target, &site.query).ok()?;
                Some(Target::Url(format!("http://{host}{target}")))
            })
            .collect(),
        Selector::Prefixes(prefixes) => prefixes
            .iter()
            .filter_map(|prefix| {
                let uri: http::Uri = prefix.parse().ok()?;
                let (host, _) = mine(uri.host()?)?;
                let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
                Some(Target::Prefix(format!("http://{host}{path}")))
            })
            .collect(),
        Selector::Hosts(hosts) => hosts
            .iter()
            .filter_map(|host| {
                let (host, _) = mine(&normalize_host(host))?;
                Some(Target::Prefix(format!("http://{host}/")))
            })
            .collect(),
        Selector::Tags(tags) => tags.iter().cloned().map(Target::Tag).collect(),
        Selector::Everything => vec![Target::Everything],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::test_headers::headers;

    #[test]
    fn tags_come_from_surrogate_key_and_cache_tag() {
        let h = headers(&[
            ("surrogate-key", "product-1  home"),
            ("cache-tag", "blue, green"),
        ]);
        assert_eq!(
            Invalidation::tags_of(&h),
            vec!["product-1", "home", "blue", "green"]
        );
    }

    fn batch(selectors: &[(Selector, Mode)]) -> PurgeBatch {
        PurgeBatch {
            purges: selectors
                .iter()
                .enumerate()
                .map(|(i, (selector, mode))| SequencedPurge {
                    seq: i as u64 + 1,
                    purge: Purge {
                        site: "assets".into(),
                        selector: selector.clone(),
                        mode: *mode,
                    },
                })
                .collect(),
        }
    }

    /// Only what cannot scan the store or wait for the disk stays on the async worker.
    #[test]
    fn only_url_purges_and_generation_bumps_are_quick() {
        let store = crate::cache::store::MemoryStore::new(1 << 20);
        let quick = |b: &PurgeBatch| Invalidation::default().is_quick(b, &store);
        let urls = |n: usize| Selector::Urls((0..n).map(|i| format!("https://a/{i}")).collect());
        assert!(quick(&batch(&[
            (urls(3), Mode::Hard),
            (urls(2), Mode::Soft)
        ])));
        assert!(quick(&batch(&[(Selector::Everything, Mode::Hard)])));
        assert!(quick(&batch(&[(urls(QUICK_TARGETS), Mode::Hard)])));
        assert!(!quick(&batch(&[
            (urls(QUICK_TARGETS), Mode::Hard),
            (urls(1), Mode::Hard)
        ])));
        assert!(!quick(&batch(&[(Selector::Everything, Mode::Soft)])));
        for scanning in [
            Selector::Prefixes(vec!["https://a/img/".into()]),
            Selector::Hosts(vec!["a".into()]),
            Selector::Tags(vec!["t".into()]),
        ] {
            assert!(!quick(&batch(&[
                (urls(1), Mode::Hard),
                (scanning, Mode::Hard)
            ])));
        }
    }
}
