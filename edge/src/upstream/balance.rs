//! Which server of an upstream pool gets the next request.
//!
//! An edge fills misses from a pool of upstreams and a shield fills from a pool of
//! origins; both decide with one [`Balancer`]. It only decides: health, ejection and
//! per-server connection caps are applied by the caller through the `eligible` predicate
//! of [`Balancer::pick`], so every policy honours them the same way and the pool has one
//! place that says who may get traffic.
//!
//! Invariants:
//! - `pick` returns only an index for which `eligible` said yes, and `None` only when no
//!   server is eligible.
//! - [`Policy::ConsistentHash`] owns keys by rendezvous hashing over a hash written out
//!   in this file (FNV-1a, then the murmur3 `fmix64` finalizer), never std's randomized
//!   hasher: every node, platform and Rust release maps a key to the same server, and
//!   the golden test pins the mapping. Changing it reshuffles every cache in production.
//! - In-flight counts move only through [`InFlight`] guards, so a fetch that is cancelled
//!   (its future dropped) cannot leave a server looking busy forever.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How a pool spreads requests over its servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Each eligible server in turn; for servers that are alike.
    #[default]
    RoundRobin,
    /// Nginx's smooth weighted round robin: shares follow the weights, and a heavy
    /// server's turns are interleaved with the others' instead of coming in a burst.
    WeightedRoundRobin,
    /// Fewest requests in flight per unit of weight; adapts to slow responses without
    /// measuring them.
    LeastConnections,
    /// Rendezvous hashing of the cache key, so each object is fetched (and cached, on a
    /// shield) by one server. Weights are ignored: weighted rendezvous needs the
    /// logarithm of the score, and `f64::ln` may round differently across platforms,
    /// which a mapping shared by every node must not depend on.
    ConsistentHash,
    /// Lowest moving-average latency times (in-flight + 1), Finagle's "peak EWMA" cost:
    /// a fast server is preferred until its queue makes it slower than the others.
    EwmaLatency,
}

impl Policy {
    pub const ALL: [Policy; 5] = [
        Policy::RoundRobin,
        Policy::WeightedRoundRobin,
        Policy::LeastConnections,
        Policy::ConsistentHash,
        Policy::EwmaLatency,
    ];

    /// The configuration name, also the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::WeightedRoundRobin => "weighted_round_robin",
            Policy::LeastConnections => "least_connections",
            Policy::ConsistentHash => "consistent_hash",
            Policy::EwmaLatency => "ewma_latency",
        }
    }
}

/// Weight of a new latency sample in the moving average: `1 / 2^EWMA_SHIFT` = 1/4.
/// An old sample's share halves about every 2.4 samples and is under 10% after 8, so a
/// server that slows down loses traffic within a few responses, while one outlier moves
/// the estimate by a quarter of its excess only.
///
/// The decay is per sample, not per second: a server that is never picked keeps its last
/// estimate. The in-flight factor of the cost sends traffic back to it once the others
/// queue up, and the caller may also feed probe round trips through
/// [`Balancer::record_latency`] to keep every estimate current.
const EWMA_SHIFT: u32 = 2;

/// The state the balancer keeps for one server.
#[derive(Debug)]
struct Server {
    id: String,
    weight: u32,
    /// FNV-1a state after `id` and the separator, so a pick hashes only the key.
    hash_prefix: u64,
    in_flight: AtomicU64,
    /// Moving average of latency in nanoseconds; 0 means never measured.
    ewma_nanos: AtomicU64,
}

/// Chooses a server for each request under one [`Policy`].
///
/// Thread-safe: counters are atomics; only weighted round robin takes a lock, for the
/// few integers of its smooth state.
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    servers: Box<[Server]>,
    /// Round robin: where the next search for an eligible server starts.
    cursor: AtomicUsize,
    /// Least connections and EWMA: where the scan starts, so ties rotate instead of
    /// always landing on the lowest index.
    rotation: AtomicUsize,
    /// Weighted round robin: each server's current weight (nginx's `current_weight`).
    smooth: Mutex<Box<[i64]>>,
}

impl Balancer {
    /// A balancer over `servers`, given as `(id, weight)` in pool order; the position is
    /// the index every other method takes. The id is the stable configured name (the
    /// URL), which is what consistent hashing hashes, so reordering the configuration
    /// does not move keys. A weight of 0 counts as 1; the configuration is where a 0
    /// should be refused.
    pub fn new(policy: Policy, servers: impl IntoIterator<Item = (String, u32)>) -> Self {
        let servers: Box<[Server]> = servers
            .into_iter()
            .map(|(id, weight)| Server {
                hash_prefix: hash_prefix(&id),
                id,
                weight: weight.max(1),
                in_flight: AtomicU64::new(0),
                ewma_nanos: AtomicU64::new(0),
            })
            .collect();
        let smooth = Mutex::new(vec![0; servers.len()].into_boxed_slice());
        Balancer {
            policy,
            servers,
            cursor: AtomicUsize::new(0),
            rotation: AtomicUsize::new(0),
            smooth,
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Number of servers in the pool, eligible or not.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The configured id of server `index`. Panics if `index` is out of range, as do
    /// the other per-server methods: indexes come from this pool.
    pub fn id(&self, index: usize) -> &str {
        &self.servers[index].id
    }

    /// The server for the next request, among those for which `eligible(index)` is true.
    ///
    /// `key` (the cache key) matters only to [`Policy::ConsistentHash`]. `eligible` is
    /// where the caller applies health and connection caps; it may be called several
    /// times per server and, for weighted round robin, under the balancer's lock, so it
    /// must be cheap and must not call back into this balancer.
    pub fn pick(&self, key: &[u8], eligible: impl Fn(usize) -> bool) -> Option<usize> {
        if self.servers.is_empty() {
            return None;
        }
        match self.policy {
            Policy::RoundRobin => self.pick_round_robin(&eligible),
            Policy::WeightedRoundRobin => self.pick_weighted(&eligible),
            Policy::LeastConnections => self.pick_cheapest(&eligible, |server| {
                server.in_flight.load(Ordering::Relaxed) as f64 / f64::from(server.weight)
            }),
            Policy::ConsistentHash => self
                .servers
                .iter()
                .enumerate()
                .filter(|&(index, _)| eligible(index))
                .map(|(index, server)| (score(server.hash_prefix, key), index))
                // On an (astronomically unlikely) equal score the lower index wins, as in
                // `rendezvous_owner`.
                .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
                .map(|(_, index)| index),
            Policy::EwmaLatency => self.pick_cheapest(&eligible, |server| {
                let ewma = server.ewma_nanos.load(Ordering::Relaxed) as f64;
                ewma * (server.in_flight.load(Ordering::Relaxed) + 1) as f64
            }),
        }
    }

    /// Marks a request to server `index` as started. Dropping the guard marks it finished,
    /// whichever way the request ends (response, error, cancellation).
    pub fn begin(self: &Arc<Self>, index: usize) -> InFlight {
        self.servers[index]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        InFlight {
            balancer: Arc::clone(self),
            index,
        }
    }

    /// Folds one latency measurement of server `index` into its moving average. The
    /// first measurement is taken as is. Record responses only: a connection refused in
    /// a microsecond would otherwise make a broken server look like the fastest one
    /// (failures are the health module's business).
    pub fn record_latency(&self, index: usize, latency: Duration) {
        // 1 ns at least, so that a measured server never reads as unmeasured (0).
        let sample = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        let _ = self.servers[index].ewma_nanos.fetch_update(
            Ordering::Relaxed,
            Ordering::Relaxed,
            |old| {
                Some(if old == 0 {
                    sample
                } else if sample >= old {
                    old + ((sample - old) >> EWMA_SHIFT)
                } else {
                    old - ((old - sample) >> EWMA_SHIFT)
                })
            },
        );
    }

    /// Requests to server `index` currently in flight.
    pub fn in_flight(&self, index: usize) -> u64 {
        self.servers[index].in_flight.load(Ordering::Relaxed)
    }

    /// Moving average of server `index`'s latency; zero until it is first measured, which
    /// is also why an unmeasured server is tried first under [`Policy::EwmaLatency`].
    pub fn ewma_latency(&self, index: usize) -> Duration {
        Duration::from_nanos(self.servers[index].ewma_nanos.load(Ordering::Relaxed))
    }

    /// The first eligible server at or after the cursor; the cursor then moves past the
    /// one picked (not just by one), so skipping an ineligible server does not hand its
    /// turn to its successor twice.
    fn pick_round_robin(&self, eligible: &impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.servers.len();
        let mut picked = None;
        let _ = self
            .cursor
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cursor| {
                picked = (0..n)
                    .map(|offset| (cursor + offset) % n)
                    .find(|&i| eligible(i));
                picked.map(|index| (index + 1) % n)
            });
        picked
    }

    /// Nginx's smooth weighted round robin over the eligible servers: each adds its
    /// weight to its current weight, the largest wins and gives back the total. Over
    /// any run of `total` picks each server gets exactly its weight, spread out.
    fn pick_weighted(&self, eligible: &impl Fn(usize) -> bool) -> Option<usize> {
        let mut current = self.smooth.lock().unwrap_or_else(PoisonError::into_inner);
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (index, server) in self.servers.iter().enumerate() {
            if !eligible(index) {
                continue;
            }
            let weight = i64::from(server.weight);
            current[index] += weight;
            total += weight;
            if best.is_none_or(|b| current[index] > current[b]) {
                best = Some(index);
            }
        }
        if let Some(b) = best {
            current[b] -= total;
        }
        best
    }

    /// The eligible server of lowest `cost`, scanning from a rotating start so that
    /// equal costs take turns.
    fn pick_cheapest(
        &self,
        eligible: &impl Fn(usize) -> bool,
        cost: impl Fn(&Server) -> f64,
    ) -> Option<usize> {
        let n = self.servers.len();
        let start = self.rotation.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(f64, usize)> = None;
        for index in (0..n).map(|offset| (start + offset) % n) {
            if !eligible(index) {
                continue;
            }
            let c = cost(&self.servers[index]);
            if best.is_none_or(|(best_cost, _)| c < best_cost) {
                best = Some((c, index));
            }
        }
        best.map(|(_, index)| index)
    }
}

/// One request in flight to one server, counted from [`Balancer::begin`] until dropped.
#[derive(Debug)]
#[must_use = "the request counts as in flight only while the guard lives"]
pub struct InFlight {
    balancer: Arc<Balancer>,
    index: usize,
}

impl InFlight {
    /// The server this request went to.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Records this request's latency; see [`Balancer::record_latency`] for what to
    /// measure.
    pub fn record_latency(&self, latency: Duration) {
        self.balancer.record_latency(self.index, latency);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.balancer.servers[self.index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The id among `ids` that owns `key` under rendezvous hashing (the highest
/// [`rendezvous_score`]; the first on an exact tie); `None` if `ids` is empty. Same
/// answer as a [`Policy::ConsistentHash`] balancer over those ids with all eligible.
pub fn rendezvous_owner<'a>(key: &[u8], ids: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(u64, &'a str)> = None;
    for id in ids {
        let s = rendezvous_score(id, key);
        if best.is_none_or(|(best_score, _)| s > best_score) {
            best = Some((s, id));
        }
    }
    best.map(|(_, id)| id)
}

/// The score of server `id` for `key`: `fmix64(fnv1a(id, 0xff, key))`. The 0xff byte never
/// occurs in UTF-8, so no (id, key) pair hashes the same bytes as another. FNV-1a is
/// simple enough to be frozen forever; the finalizer makes its output bits avalanche,
/// which rendezvous needs because it compares whole scores across servers.
pub fn rendezvous_score(id: &str, key: &[u8]) -> u64 {
    score(hash_prefix(id), key)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

fn hash_prefix(id: &str) -> u64 {
    fnv1a(fnv1a(FNV_OFFSET, id.as_bytes()), &[0xff])
}

fn score(prefix: u64, key: &[u8]) -> u64 {
    fmix64(fnv1a(prefix, key))
}

/// MurmurHash3's 64-bit finalizer.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: [&str; 3] = [
        "http://10.0.0.1:8080",
        "http://10.0.0.2:8080",
        "http://10.0.0.3:8080",
    ];
    const FOUR: [&str; 4] = [
        "http://10.0.0.1:8080",
        "http://10.0.0.2:8080",
        "http://10.0.0.3:8080",
        "http://10.0.0.4:8080",
    ];

    fn balancer(policy: Policy, ids: &[&str], weights: &[u32]) -> Arc<Balancer> {
        let servers = ids
            .iter()
            .zip(weights)
            .map(|(id, &weight)| (id.to_string(), weight));
        Arc::new(Balancer::new(policy, servers))
    }

    fn all(_: usize) -> bool {
        true
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("/objects/{i}.bin")).collect()
    }

    #[test]
    fn policy_names_are_the_config_names() {
        for policy in Policy::ALL {
            let parsed: Policy =
                serde_json::from_value(serde_json::Value::from(policy.as_str())).unwrap();
            assert_eq!(parsed, policy);
        }
        assert_eq!(Policy::default(), Policy::RoundRobin);
    }

    #[test]
    fn hash_is_pinned() {
        // Known FNV-1a 64 test vectors, then the finalizer on a fixed input.
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(fmix64(0), 0);
        assert_eq!(rendezvous_score(THREE[0], b"/assets/app.js"), GOLDEN_SCORE);
    }

    const GOLDEN_SCORE: u64 = 0xc89f_6328_dc12_2ae4;

    /// GOLDEN DATA. If this test fails, the key-to-server mapping changed: deployed, that
    /// reshuffles every cache behind a consistent-hash pool (every shield refetches its
    /// whole working set from the origins). Do not update the expectations to make it
    /// pass; change the code back.
    #[test]
    fn rendezvous_owners_are_pinned() {
        let expected: [(&str, &str); 16] = [
            ("/assets/app.js", "http://10.0.0.1:8080"),
            ("/assets/app.css", "http://10.0.0.1:8080"),
            ("/assets/vendor.js", "http://10.0.0.2:8080"),
            ("/img/0.png", "http://10.0.0.1:8080"),
            ("/img/1.png", "http://10.0.0.2:8080"),
            ("/img/2.png", "http://10.0.0.2:8080"),
            ("/img/3.png", "http://10.0.0.2:8080"),
            ("/img/logo.svg", "http://10.0.0.1:8080"),
            ("/", "http://10.0.0.3:8080"),
            ("/index.html", "http://10.0.0.1:8080"),
            ("/api/v1/items?page=2", "http://10.0.0.3:8080"),
            ("/video/intro.mp4", "http://10.0.0.1:8080"),
            ("/fonts/inter.woff2", "http://10.0.0.2:8080"),
            ("/favicon.ico", "http://10.0.0.1:8080"),
            ("0 https://example.com/robots.txt", "http://10.0.0.2:8080"),
            ("", "http://10.0.0.3:8080"),
        ];
        let b = balancer(Policy::ConsistentHash, &THREE, &[1, 1, 1]);
        for (key, owner) in expected {
            assert_eq!(
                rendezvous_owner(key.as_bytes(), THREE),
                Some(owner),
                "owner of {key:?}"
            );
            let picked = b.pick(key.as_bytes(), all).unwrap();
            assert_eq!(b.id(picked), owner, "balancer pick for {key:?}");
        }
    }

    #[test]
    fn removing_a_server_moves_only_its_keys_and_spreads_them() {
        let removed = 2;
        let rest: Vec<&str> = FOUR
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != removed)
            .map(|(_, id)| *id)
            .collect();
        let b = balancer(Policy::ConsistentHash, &FOUR, &[1, 1, 1, 1]);
        let keys = keys(10_000);
        let mut moved = 0usize;
        let mut moved_to = [0usize; 4];
        for key in &keys {
            let before = rendezvous_owner(key.as_bytes(), FOUR).unwrap();
            let after = rendezvous_owner(key.as_bytes(), rest.iter().copied()).unwrap();
            // Ineligible in the balancer behaves like removed from the list.
            let picked = b.pick(key.as_bytes(), |i| i != removed).unwrap();
            assert_eq!(b.id(picked), after);
            if before == FOUR[removed] {
                moved += 1;
                moved_to[picked] += 1;
            } else {
                assert_eq!(before, after, "{key} moved although its owner stayed");
            }
        }
        let share = moved as f64 / keys.len() as f64;
        assert!((share - 0.25).abs() <= 0.03, "moved share {share}");
        for (i, &count) in moved_to.iter().enumerate() {
            if i == removed {
                assert_eq!(count, 0);
            } else {
                let share = count as f64 / moved as f64;
                assert!((share - 1.0 / 3.0).abs() <= 0.05, "server {i} took {share}");
            }
        }
    }

    #[test]
    fn consistent_hash_spreads_keys_evenly() {
        let b = balancer(Policy::ConsistentHash, &FOUR, &[1, 1, 1, 1]);
        let keys = keys(10_000);
        let mut counts = [0usize; 4];
        for key in &keys {
            counts[b.pick(key.as_bytes(), all).unwrap()] += 1;
        }
        for count in counts {
            let share = count as f64 / keys.len() as f64;
            assert!((share - 0.25).abs() <= 0.03, "{counts:?}");
        }
    }

    #[test]
    fn round_robin_takes_turns_and_skips_the_ineligible() {
        let b = balancer(Policy::RoundRobin, &THREE, &[1, 1, 1]);
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[b.pick(b"", all).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);

        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[b.pick(b"", |i| i != 1).unwrap()] += 1;
        }
        assert_eq!(counts, [150, 0, 150]);
    }

    #[test]
    fn weighted_round_robin_follows_weights_smoothly() {
        let b = balancer(Policy::WeightedRoundRobin, &THREE, &[1, 2, 3]);
        let picks: Vec<usize> = (0..600).map(|_| b.pick(b"", all).unwrap()).collect();
        let mut counts = [0; 3];
        for &p in &picks {
            counts[p] += 1;
        }
        assert_eq!(counts, [100, 200, 300]);
        // Nginx's sequence for weights 1, 2, 3, repeating every 6 picks.
        assert_eq!(picks[..12], [2, 1, 0, 2, 1, 2, 2, 1, 0, 2, 1, 2]);
        // Smooth: in every window of 6 (the total weight) each server gets exactly its
        // weight, and the weight-3 server never gets 3 in a row as a plain weighted
        // round robin would give it.
        for window in picks.windows(6) {
            for (server, weight) in [1, 2, 3].into_iter().enumerate() {
                assert_eq!(window.iter().filter(|&&p| p == server).count(), weight);
            }
        }
        assert!(picks.windows(3).all(|run| run != [2, 2, 2]));

        // Over the eligible servers only: weights 1 and 3 give 1:3.
        let mut counts = [0; 3];
        for _ in 0..400 {
            counts[b.pick(b"", |i| i != 1).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 0, 300]);
    }

    #[test]
    fn least_connections_follows_in_flight() {
        let b = balancer(Policy::LeastConnections, &THREE, &[1, 1, 1]);
        let _a = b.begin(0);
        let _b = b.begin(0);
        let c = b.begin(1);
        for _ in 0..10 {
            assert_eq!(b.pick(b"", all), Some(2));
        }
        let _d = b.begin(2);
        let _e = b.begin(2);
        // Now 2, 1, 2 in flight.
        assert_eq!(b.pick(b"", all), Some(1));
        drop(c);
        assert_eq!(b.in_flight(1), 0);
        assert_eq!(b.pick(b"", all), Some(1));
        // 0 and 2 tie with 2 each.
        assert!(matches!(b.pick(b"", |i| i != 1), Some(0 | 2)));
    }

    #[test]
    fn least_connections_rotates_ties_and_honours_weights() {
        let b = balancer(Policy::LeastConnections, &THREE, &[1, 1, 1]);
        let mut counts = [0; 3];
        for _ in 0..30 {
            counts[b.pick(b"", all).unwrap()] += 1;
        }
        assert_eq!(counts, [10, 10, 10]);

        // In flight per unit of weight: 1/2 on the weight-2 server loses to an idle
        // weight-1 server, but wins against 1/1.
        let b = balancer(Policy::LeastConnections, &THREE[..2], &[1, 2]);
        let _x = b.begin(1);
        let picks: Vec<_> = (0..4).map(|_| b.pick(b"", all).unwrap()).collect();
        assert_eq!(picks, [0, 0, 0, 0]);
        let _y = b.begin(0);
        assert_eq!(b.pick(b"", all), Some(1));
    }

    #[test]
    fn ewma_prefers_the_fastest_and_leaves_a_slowing_server() {
        let b = balancer(Policy::EwmaLatency, &THREE, &[1, 1, 1]);
        // Unmeasured servers cost nothing, so each gets tried.
        b.record_latency(0, Duration::from_millis(30));
        b.record_latency(1, Duration::from_millis(10));
        assert_eq!(b.pick(b"", all), Some(2));
        b.record_latency(2, Duration::from_millis(20));
        for _ in 0..5 {
            assert_eq!(b.pick(b"", all), Some(1));
        }
        assert_eq!(b.ewma_latency(1), Duration::from_millis(10));

        // Server 1 slows down: one 100 ms sample puts it at 32.5 ms, past server 2.
        let guard = b.begin(1);
        guard.record_latency(Duration::from_millis(100));
        drop(guard);
        assert_eq!(b.ewma_latency(1), Duration::from_micros(32_500));
        assert_eq!(b.pick(b"", all), Some(2));

        // Load counts too: 20 ms with 1 in flight (40) loses to 30 ms idle.
        let _busy = b.begin(2);
        assert_eq!(b.pick(b"", all), Some(0));
    }

    #[test]
    fn ewma_decays_towards_new_samples() {
        let b = balancer(Policy::EwmaLatency, &THREE[..1], &[1]);
        b.record_latency(0, Duration::from_millis(100));
        for _ in 0..8 {
            b.record_latency(0, Duration::from_millis(20));
        }
        // 20 + 80 * 0.75^8 ≈ 28 ms.
        let ms = b.ewma_latency(0).as_secs_f64() * 1000.0;
        assert!((ms - 28.0).abs() < 0.1, "{ms}");
    }

    #[test]
    fn nothing_eligible_picks_nothing() {
        for policy in Policy::ALL {
            let b = balancer(policy, &THREE, &[1, 2, 3]);
            assert_eq!(b.pick(b"/k", |_| false), None, "{}", policy.as_str());
            let empty = Balancer::new(policy, Vec::new());
            assert_eq!(empty.pick(b"/k", all), None);
            // And only ever an eligible one.
            for _ in 0..20 {
                assert_eq!(b.pick(b"/k", |i| i == 1), Some(1));
            }
        }
    }

    #[test]
    fn in_flight_guard_counts_until_dropped() {
        let b = balancer(Policy::RoundRobin, &THREE, &[1, 1, 1]);
        let first = b.begin(2);
        let second = b.begin(2);
        assert_eq!(b.in_flight(2), 2);
        assert_eq!(first.index(), 2);
        drop(first);
        assert_eq!(b.in_flight(2), 1);
        drop(second);
        assert_eq!(b.in_flight(2), 0);
    }
}
