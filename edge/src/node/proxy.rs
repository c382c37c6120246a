//! The request handler: from a client request to a response, through the cache.
//!
//! `Edge::route` is the life of a request on the full path, as a sequence of phases:
//! 1. Trust: internal headers are taken off the request, believed only with a node's
//!    proof ([`crate::node::node_auth`]).
//! 2. Limits (`within_limits`): head, target and declared body sizes.
//! 3. Site (`site_for`): the host resolves to a configured site, or the request is refused
//!    (`421`) before anything is fetched; a request that already passed through this node
//!    is refused (`508`) instead of looping.
//! 4. Method: GET and HEAD go on; every other request passes through to the site's
//!    upstream unchanged.
//! 5. Lookup and decision (`Edge::lookup`, [`decide`]): the one the fast path
//!    ([`Edge::fresh_hit`]) makes too.
//! 6. The answer the decision calls for: a hit or a stale answer from memory
//!    (`serve_cached`, with a background refresh for the latter), a pass, a refusal, or a
//!    fill shared by every request for the key (`fill`, see [`crate::cache::coalesce`] and
//!    [`crate::node::fill`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::cache::BoxError;
use crate::cache::coalesce::{self, Coalescer};
use crate::cache::conditional::not_modified;
use crate::cache::control::CacheControl;
use crate::cache::disk::DiskRecord;
use crate::cache::freshness::{Exchange, strip_targeted};
use crate::cache::key::{CacheKey, normalize_target};
use crate::cache::lookup::{Ask, Decision, FillFor, decide};
use crate::cache::partial::{self, PartialObject, RangeFill};
use crate::cache::range::{self, RangeAnswer};
use crate::cache::status::{CACHE_STATUS, CacheStatus, Forward, NoCacheReason, Outcome};
use crate::cache::store::{Cached, Entry, Storage, StoredResponse};
use crate::cache::vary::VaryIndex;
use crate::front::body::{DiskStream, EdgeBody};
use crate::front::client_body::ClientBody;
use crate::front::listener::OpenConnections;
use crate::front::{DoorRefusal, Handler, ServedHit, TlsName};
use crate::node::access_log::{
    AccessLog, AccessRecord, Line, LogCounts, UpstreamSeen, carrying_upstream, logged,
    noting_upstream, record_upstream,
};
use crate::node::config::{ConfigError, EdgeConfig};
use crate::node::disk::FromDisk;
use crate::node::fill::{Fill, FillRequest};
use crate::node::invalidation::{ApplyError, Invalidation};
use crate::node::metrics::Metrics;
use crate::node::node_auth::{NodeClaims, NodeKey, take_claims};
use crate::node::post::Post;
use crate::node::reload::{self, Live, RequestLimits};
use crate::node::role::Role;
use crate::node::site::{Misdirected, Site, SiteMatch};
use crate::node::slices::{SliceFill, SliceSource};
use crate::node::state::{NodeState, StateError};
use crate::upstream::client::{UpstreamBody, UpstreamClient, UpstreamError};
use crate::upstream::fault::ClientFault;
use crate::upstream::headers::{
    Purpose, append_list, forward_request_headers, strip_hop_by_hop, via_names,
};
use crate::upstream::interim::{Interim, InterimHead};
use crate::upstream::overload::Admission;

/// Where a request's response is stored, or would be: the URL's primary key, or the key of
/// the variant the request selects.
#[derive(Debug)]
struct Lookup<'a> {
    primary: &'a CacheKey,
    /// The key of the variant the request selects, when the URL's responses vary.
    variant: Option<CacheKey>,
    /// The URL's variant index, when its responses vary.
    index: Option<VaryIndex>,
    /// The `fwd` reason when nothing usable is stored under the key.
    miss: Forward,
}

impl Lookup<'_> {
    /// The key the request's response is stored under.
    fn key(&self) -> &CacheKey {
        self.variant.as_ref().unwrap_or(self.primary)
    }
}

/// A GET or HEAD on its way through the cache: what every phase after the lookup reads.
#[derive(Debug, Clone, Copy)]
struct Fetch<'a> {
    site: SiteMatch<'a>,
    primary: &'a CacheKey,
    /// The normalized target (origin-form): the key's and what the upstream is asked.
    target: &'a str,
    /// A HEAD: the answer has no body.
    head: bool,
    client: SocketAddr,
}

/// Fills one request may make for bytes a partial object lacks before it passes.
const MAX_PARTIAL_FILLS: u32 = 2;

/// A response and what the cache did to produce it.
type Answered = (Response<EdgeBody>, Outcome);

/// Why a request is refused before anything is fetched: its status, and what to tell the
/// client.
#[derive(Debug)]
struct Refusal(StatusCode, String);

/// Which bytes of a stored object an answer carries, once conditionals and `Range` are
/// read.
#[derive(Debug)]
enum Cut {
    /// None: the head is the whole answer (`304`, `416`, HEAD).
    Done,
    Whole,
    /// One inclusive range.
    One(u64, u64),
    /// Several ranges, as `multipart/byteranges` with this boundary.
    Many(Vec<(u64, u64)>, String),
}

/// One edge node's request handling state, shared by every connection.
pub struct Edge {
    pub(crate) name: String,
    /// `1.1 <name>`, this node's `Via` member.
    pub(crate) via: HeaderValue,
    /// The settings a reload replaces: sites, request limits, access log
    /// ([`crate::node::reload`]).
    live: ArcSwap<Live>,
    /// The access log's counters, kept across the logs reloads start.
    log_counts: LogCounts,
    pub(crate) store: Arc<dyn Storage>,
    pub(crate) fills: Coalescer<CacheKey, Fill>,
    /// One fetch per slice of a sliced object (see [`crate::node::slices`]).
    pub(crate) slice_fills: Coalescer<CacheKey, SliceFill>,
    /// One read per key of the disk tier (see [`crate::node::disk`]).
    pub(crate) disk_reads: Coalescer<CacheKey, crate::node::disk::DiskRead>,
    pub(crate) upstream: UpstreamClient,
    pub(crate) metrics: Metrics,
    pub(crate) max_object_size: u64,
    /// Slice size of objects above `max_object_size`; 0 when slicing is off.
    pub(crate) slice_size: u64,
    /// Largest object cached in slices: a quarter of the cache.
    pub(crate) max_sliced_size: u64,
    ready: AtomicBool,
    /// `h3=":PORT"; ma=86400` once the HTTP/3 listener is bound: what HTTPS responses
    /// advertise it with.
    alt_svc: std::sync::OnceLock<HeaderValue>,
    /// Open client connections of the public listener.
    pub(crate) open: Arc<OpenConnections>,
    pub(crate) invalidation: Invalidation,
    /// The secret purge pushes must carry; purges are refused while unset.
    pub(crate) node_token: Option<String>,
    /// Edge or shield: what differs between them ([`crate::node::role`]).
    pub(crate) role: Role,
    /// The node token as the key of the proofs on internal headers ([`crate::node::node_auth`]).
    node_key: Option<NodeKey>,
    /// Slots for upstream work: misses beyond them are shed.
    pub(crate) admission: Admission,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("name", &self.name)
            .field("sites", &self.live.load().sites.sites().len())
            .finish_non_exhaustive()
    }
}

impl Edge {
    /// Builds the handler for a validated config, storing into `store`.
    pub fn new(config: &EdgeConfig, store: Arc<dyn Storage>) -> Result<Self, ConfigError> {
        config.validate()?;
        let via = HeaderValue::from_str(&format!("1.1 {}", config.node.name))
            .map_err(|_| ConfigError::NodeName(config.node.name.clone()))?;
        let log_counts = LogCounts::default();
        let live = reload::initial(config, &log_counts)?;
        let sites = &live.sites;
        let state = match config.cache.state_dir() {
            Some(dir) => Some(Arc::new(NodeState::open(dir)?)),
            None => None,
        };
        let mut metrics = Metrics::new(config.cache.capacity.as_u64());
        if let Some(state) = &state {
            // Warm restart: the sites with their persisted generations (an everything-hard
            // purge or a reset stays in effect), the watermark the node resumes from.
            for site in sites.sites() {
                if let Some(generation) = state.generation(&site.name) {
                    site.raise_generation(generation);
                }
            }
            if state.resumes() {
                store.set_purge_watermark(state.watermark());
            }
            metrics.track_state();
        }
        if let Some(hybrid) = store.hybrid() {
            metrics.track_disk();
            if let Some(observer) = metrics.disk_write_observer() {
                hybrid.disk().observe_writes(observer);
            }
        }
        metrics.purge_watermark(store.purge_watermark());
        metrics.track_access_log(&log_counts);
        Ok(Self {
            name: config.node.name.clone(),
            via,
            live: ArcSwap::new(live),
            log_counts,
            store,
            fills: Coalescer::new(),
            slice_fills: Coalescer::new(),
            disk_reads: Coalescer::new(),
            upstream: UpstreamClient::new(&config.upstream),
            metrics,
            max_object_size: config.cache.max_object_size.as_u64(),
            slice_size: config
                .cache
                .slice_size
                .min(config.cache.max_object_size)
                .as_u64(),
            max_sliced_size: config.cache.capacity.as_u64() / 4,
            ready: AtomicBool::new(false),
            alt_svc: std::sync::OnceLock::new(),
            open: Arc::default(),
            invalidation: Invalidation::new(state),
            node_token: config.purge.node_token.clone(),
            role: config.node.role,
            node_key: config.purge.node_token.as_deref().map(NodeKey::new),
            admission: Admission::new(&config.overload),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this node is an edge or a shield.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The settings requests read now (the site table among them): a reload replaces
    /// them whole, and whoever holds these keeps a consistent set.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Puts `next` in service: requests that start from now on read it.
    pub(crate) fn swap_live(&self, next: Live) {
        self.live.store(Arc::new(next));
    }

    /// The access log's counters (kept across reloads).
    pub(crate) fn log_counts(&self) -> &LogCounts {
        &self.log_counts
    }

    pub fn store(&self) -> &Arc<dyn Storage> {
        &self.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether the node accepts traffic (readiness, as `/healthz` reports it).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Client connections open now: the node's load as `/healthz` reports it.
    pub fn connections(&self) -> usize {
        self.open.count()
    }

    /// Advertises HTTP/3 on `port` (UDP) in every HTTPS response from now on.
    pub(crate) fn advertise_http3(&self, port: u16) {
        let value = format!("h3=\":{port}\"; ma=86400");
        let _ = self
            .alt_svc
            .set(HeaderValue::from_str(&value).expect("ASCII"));
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// The fresh entry answering a GET or HEAD of `target` (origin-form) on `host`, if the
    /// cache can answer without contacting anyone. `None` means "take the full path",
    /// which also produces every refusal.
    ///
    /// The caller guarantees the request carries no internal header (`cdn-*`), no field
    /// that selects a variant or changes the answer (see `front::connection`): those take
    /// the full path, which makes the same [`Edge::lookup`] with what they say. The
    /// decision is the full path's too ([`decide`]); only a hit of a whole response is
    /// acted on here.
    pub fn fresh_hit(
        &self,
        host: &str,
        target: &str,
        tls: Option<&TlsName>,
    ) -> Option<(Arc<StoredResponse>, Instant)> {
        let live = self.live.load();
        let site = live.sites.resolve_on(host, tls).ok()?;
        let target = normalize_target(target, &site.site.query).ok()?;
        let primary = CacheKey::new(site.site.generation(), "http", site.host, &target);
        let now = Instant::now();
        let (lookup, decision) =
            self.lookup(site, &primary, None, NodeClaims::NONE, Ask::NOTHING, now);
        match decision {
            Decision::Hit(Cached::Whole(response)) => {
                if response.record_hit() {
                    self.store.first_hit(lookup.key());
                }
                Some((response, now))
            }
            // A slice index, a stale entry, a marker, a miss: the full path acts on them.
            _ => None,
        }
    }

    /// Handles one client request from `client`.
    pub async fn handle<B>(
        self: &Arc<Self>,
        req: Request<B>,
        client: SocketAddr,
    ) -> Response<EdgeBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        // The site is found once here for both its sampling share and its name; the
        // route finds it again, as it does for every request.
        let live = self.live();
        let version = req.version();
        let logging = live.access_log.as_ref().and_then(|log| {
            let started = Instant::now();
            let site = self.site_for(&live, &req).ok().map(|site| site.site);
            let id = log.next_id();
            AccessLog::sampled(site.map_or(1.0, |site| site.access_log_sample), id).then(|| {
                (
                    log.clone(),
                    started,
                    self.access_record(id, site, &req, client),
                )
            })
        });
        let Some((log, started, record)) = logging else {
            let (response, outcome) = self.route(&live, req, client).await;
            self.metrics.request(outcome, version);
            return response;
        };
        let seen = UpstreamSeen::default();
        let (response, outcome) =
            noting_upstream(seen.clone(), self.route(&live, req, client)).await;
        self.metrics.request(outcome, version);
        logged(log, record, started, &seen, response)
    }

    /// What the access log says of a request to `site` (none: a host no site serves),
    /// before its answer is known.
    fn access_record<B>(
        &self,
        id: u64,
        site: Option<&Arc<Site>>,
        req: &Request<B>,
        client: SocketAddr,
    ) -> AccessRecord {
        let header = |name: header::HeaderName| {
            req.headers()
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let tls = req.extensions().get::<TlsName>();
        AccessRecord {
            time: std::time::SystemTime::now(),
            client,
            site: site.map(|site| site.name.as_str().into()),
            method: req.method().clone(),
            scheme: if tls.is_some() { "https" } else { "http" },
            host: request_host(req).unwrap_or("").to_owned(),
            target: req
                .uri()
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_owned(),
            status: 0,
            bytes: 0,
            body_bytes: 0,
            ttfb: Duration::ZERO,
            total: Duration::ZERO,
            cache_status: String::new(),
            tls: tls.map(|name| name.0.clone()),
            tls_version: tls.map(|name| name.1.as_str()),
            upstream: None,
            version: req.version(),
            user_agent: header(header::USER_AGENT),
            referer: header(header::REFERER),
            request_id: id,
            complete: false,
        }
    }

    /// A request through its phases: trust (internal headers), limits, site, method,
    /// lookup and decision, then the answer the decision calls for.
    async fn route<B>(
        self: &Arc<Self>,
        live: &Live,
        mut req: Request<B>,
        client: SocketAddr,
    ) -> Answered
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        // Before anything reads the request: what only a node may say is removed, and
        // believed only with the node's proof, by a node whose clients are nodes.
        let believer = self
            .node_key
            .as_ref()
            .filter(|_| self.role.believes_node_claims());
        let claims = take_claims(believer, &mut req);
        if let Err(Refusal(status, why)) = within_limits(&live.limits, &req) {
            return refuse(status, &why);
        }
        let site = match self.site_for(live, &req) {
            Ok(site) => site,
            Err(Refusal(status, why)) => return refuse(status, &why),
        };
        let raw_target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let target = match normalize_target(raw_target, &site.site.query) {
            Ok(target) => target,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => {
                let target = target.into_owned();
                return self
                    .pass(site, req, &target, (Forward::Method, None), client)
                    .await;
            }
        };
        let primary = CacheKey::new(site.site.generation(), "http", site.host, &target);
        let fetch = Fetch {
            site,
            primary: &primary,
            target: &target,
            head,
            client,
        };
        let mut now = Instant::now();
        let ask = Ask::of(req.headers());
        let (mut lookup, mut decision) =
            self.lookup(site, &primary, Some(req.headers()), claims, ask, now);
        // A memory miss: the disk tier may hold it (never looked at for a memory hit).
        let mut from_disk = false;
        if matches!(
            decision,
            Decision::Fill { stale: None, .. } | Decision::Refuse
        ) && self.store.hybrid().is_some()
        {
            let variant = lookup.variant.as_ref();
            match self
                .read_disk(site.site, &primary, variant, req.headers(), claims)
                .await
            {
                FromDisk::Nothing => {}
                FromDisk::Promoted => {
                    now = Instant::now();
                    (lookup, decision) =
                        self.lookup(site, &primary, Some(req.headers()), claims, ask, now);
                    from_disk = true;
                }
                FromDisk::Large { head, record } => {
                    now = Instant::now();
                    if let Some(response) =
                        self.answer_large(fetch, req.headers(), ask, &head, record, now)
                    {
                        self.metrics.disk_hit();
                        return (response, Outcome::Hit);
                    }
                }
            }
        }
        match decision {
            Decision::Hit(Cached::Partial(partial)) => {
                // A partial object answers only what it holds; the rest is filled.
                let status = CacheStatus::hit(partial.head.freshness.ttl(now));
                if let Some(response) =
                    self.answer_partial(req.headers(), &partial, head, &status, now)
                {
                    partial.head.record_hit();
                    return (response, Outcome::Hit);
                }
                if ask.only_if_cached {
                    return refuse(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the request said only-if-cached and this edge holds only part of it",
                    );
                }
                let target = target.into_owned();
                let fetch = Fetch {
                    site,
                    primary: &primary,
                    target: &target,
                    head,
                    client,
                };
                // Completing it for a request with credentials is that request's own fill.
                let fill_for = if ask.authorization {
                    FillFor::Credentialed
                } else {
                    FillFor::Anyone
                };
                self.fill(fetch, lookup, None, Some((partial, true)), fill_for, req)
                    .await
            }
            Decision::Hit(cached) => {
                if from_disk {
                    self.metrics.disk_hit();
                }
                let detail = from_disk.then_some("disk");
                let response = self
                    .serve_cached(fetch, (req.headers(), lookup.key()), &cached, detail, now)
                    .await;
                (response, Outcome::Hit)
            }
            Decision::StaleWhileRevalidate(cached) => {
                self.refresh_in_background(fetch, req.headers(), &lookup, cached.clone());
                let detail = Some("stale-while-revalidate");
                let response = self
                    .serve_cached(fetch, (req.headers(), lookup.key()), &cached, detail, now)
                    .await;
                (response, Outcome::Stale)
            }
            Decision::Pass { fwd, detail } => {
                let target = target.into_owned();
                self.pass(site, req, &target, (fwd, detail), client).await
            }
            Decision::Refuse => {
                let response = text_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "504 Gateway Timeout: the request said only-if-cached and this edge holds no fresh copy\n",
                );
                (response, Outcome::Refused)
            }
            Decision::Fill { stale, fill } => {
                let target = target.into_owned();
                let fetch = Fetch {
                    site,
                    primary: &primary,
                    target: &target,
                    head,
                    client,
                };
                // A stale partial object is not revalidated: its ranges are asked for.
                let (stale, held) = match stale {
                    Some(Cached::Partial(partial)) => (None, Some((partial, false))),
                    stale => (stale, None),
                };
                self.fill(fetch, lookup, stale, held, fill, req).await
            }
        }
    }

    /// The site a request is for, or its refusal: a host no site has or another site's
    /// over TLS (`421`), a loop back to this node (`508`), a method this CDN never
    /// forwards (`405`).
    fn site_for<'a, B>(&self, live: &'a Live, req: &Request<B>) -> Result<SiteMatch<'a>, Refusal> {
        let host = request_host(req)
            .map_err(|message| Refusal(StatusCode::BAD_REQUEST, message.into()))?;
        let tls = req.extensions().get::<TlsName>();
        let site = match live.sites.resolve_on(host, tls) {
            Ok(site) => site,
            Err(Misdirected::UnknownHost) => {
                return Err(Refusal(
                    StatusCode::MISDIRECTED_REQUEST,
                    format!("no site is configured for host {host:?} on this CDN"),
                ));
            }
            Err(Misdirected::OtherCertificate) => {
                let name = tls.map_or("", |t| &t.0);
                return Err(Refusal(
                    StatusCode::MISDIRECTED_REQUEST,
                    format!(
                        "this TLS connection was set up for {name:?}, whose certificate does not \
                         cover host {host:?}: open a new connection naming that host"
                    ),
                ));
            }
        };
        if via_names(req.headers(), &self.name) {
            return Err(Refusal(
                StatusCode::LOOP_DETECTED,
                "this request already passed through this node: the site's upstream points back at the CDN"
                    .into(),
            ));
        }
        if matches!(*req.method(), Method::CONNECT | Method::TRACE) {
            return Err(Refusal(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} is not supported by this CDN", req.method()),
            ));
        }
        Ok(site)
    }

    /// A stored entry as the answer to a request, counted as a hit of it; `detail` goes
    /// into `Cache-Status` (`stale-while-revalidate`).
    async fn serve_cached(
        self: &Arc<Self>,
        fetch: Fetch<'_>,
        (request, key): (&http::HeaderMap, &CacheKey),
        cached: &Cached,
        detail: Option<&'static str>,
        now: Instant,
    ) -> Response<EdgeBody> {
        if cached.response().record_hit() {
            self.store.first_hit(key);
        }
        let mut status = CacheStatus::hit(cached.freshness().ttl(now));
        status.detail = detail;
        self.answer(fetch, request, cached, &status, now).await
    }

    /// Refreshes a stale entry in the background, through the coalescer (so once).
    fn refresh_in_background(
        self: &Arc<Self>,
        fetch: Fetch<'_>,
        request: &http::HeaderMap,
        lookup: &Lookup<'_>,
        stale: Cached,
    ) {
        // Made by the cache for whoever asks next: sent without any client's credentials.
        let refresh = self.fill_request(fetch, lookup, request, Some(stale), None, FillFor::Anyone);
        let edge = self.clone();
        let key = lookup.key().clone();
        tokio::spawn(async move {
            edge.fills
                .run(&key, move |publisher| refresh.run(publisher))
                .await
        });
    }

    /// Fills the request's key (one fetch, however many requests wait on it; a request with
    /// credentials fetches alone, [`FillFor::Credentialed`]) and answers from what the fill
    /// produced. `held` is the partial object stored for the key, and whether it is fresh:
    /// the fill then asks for the bytes it lacks ([`crate::cache::partial::plan`]).
    async fn fill<B>(
        self: &Arc<Self>,
        fetch: Fetch<'_>,
        mut lookup: Lookup<'_>,
        mut stale: Option<Cached>,
        mut held: Option<(Arc<PartialObject>, bool)>,
        fill_for: FillFor,
        req: Request<B>,
    ) -> Answered
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let outcome = if stale.is_some() {
            Outcome::Stale
        } else {
            Outcome::Miss
        };
        let mut retried = false;
        // Fills that stored a partial object not holding this request's bytes (another
        // request's range, or a 206 the upstream sent unasked): each next one asks for
        // what is missing. Bounded; past it the request passes.
        let mut partial_fills = 0;
        loop {
            let range = partial::plan(
                fetch.site.site.range_miss,
                req.headers(),
                fetch.head,
                held.as_ref().map(|(partial, fresh)| (&**partial, *fresh)),
            );
            // A live answer to a fill asking for another range than the client's own is
            // not the client's answer.
            let own = range
                .as_ref()
                .is_none_or(|range| req.headers().get(header::RANGE) == Some(&range.range()));
            // Only the request that starts the fill gets the exchange's 1xx heads; one
            // that joins it gets none (it may join after they were sent).
            let fetcher = |publisher| {
                let mut fill =
                    self.fill_request(fetch, &lookup, req.headers(), stale.take(), range, fill_for);
                fill.interim = req.extensions().get::<Interim>().cloned();
                carrying_upstream(fill.run(publisher))
            };
            let (fill, role) = match fill_for {
                FillFor::Anyone => self.fills.run(lookup.key(), fetcher).await,
                // Nobody joins it before its response is known to be shareable, and it
                // joins nobody's: it is run outside the coalescer's table altogether.
                FillFor::Credentialed => (self.fills.alone(fetcher).await, coalesce::Role::Leader),
            };
            if role == coalesce::Role::Follower {
                self.metrics.coalesced();
            }
            return match fill {
                Ok(Fill::Stored {
                    entry: Cached::Partial(partial),
                    mut status,
                }) => {
                    status.collapsed = role == coalesce::Role::Follower;
                    let now = Instant::now();
                    match self.answer_partial(req.headers(), &partial, fetch.head, &status, now) {
                        Some(response) => (response, outcome),
                        None if partial_fills < MAX_PARTIAL_FILLS => {
                            partial_fills += 1;
                            // The next fill goes where this one stored: the variant's key
                            // when the response varies, and only the request's own
                            // variant's bytes are built on.
                            let entry = Cached::Partial(partial.clone());
                            let own = entry.response().selected_by().is_none_or(|s| {
                                s.matches(req.headers(), &fetch.site.site.key_headers)
                            });
                            if let Some(variant) = variant_lookup(fetch, &entry, req.headers()) {
                                lookup = variant;
                            }
                            held = own.then_some((partial, true));
                            continue;
                        }
                        None => {
                            let fwd = (Forward::Partial, None);
                            let target = fetch.target;
                            let (response, _) =
                                self.pass(fetch.site, req, target, fwd, fetch.client).await;
                            (response, outcome)
                        }
                    }
                }
                Ok(Fill::Stored { entry, mut status }) => {
                    if !retried && let Some(own) = own_variant(fetch, &entry, req.headers()) {
                        lookup = own;
                        retried = true;
                        continue;
                    }
                    status.collapsed = role == coalesce::Role::Follower;
                    let response = self
                        .answer(fetch, req.headers(), &entry, &status, Instant::now())
                        .await;
                    (response, outcome)
                }
                Ok(Fill::Streaming {
                    entry,
                    body,
                    mut status,
                }) => {
                    status.collapsed = role == coalesce::Role::Follower;
                    let head = fetch.head;
                    let mut response = self.serve_stored(&entry, head, &status, Instant::now());
                    if !head {
                        *response.body_mut() = EdgeBody::Growing(body.reader());
                    }
                    (response, outcome)
                }
                Ok(Fill::Handoff { response, status }) => {
                    let role = if own { role } else { coalesce::Role::Follower };
                    let response = self.handed_off(fetch, role, &response, status, req).await;
                    (response, outcome)
                }
                Ok(Fill::Failed { error, status }) => {
                    (self.upstream_failure(&error, &status), Outcome::Error)
                }
                Err(_lost) => {
                    let error = UpstreamError::Lost;
                    let status = CacheStatus::forwarded(Forward::UriMiss);
                    (self.upstream_failure(&error, &status), Outcome::Error)
                }
            };
        }
    }

    /// The answer to a request whose fill got a response the cache may not keep: the
    /// request that started the fill gets that response; every other waiter (and a range
    /// of an object too large to store, which is the origin's to cut) asks the upstream
    /// itself.
    async fn handed_off<B>(
        self: &Arc<Self>,
        fetch: Fetch<'_>,
        role: coalesce::Role,
        response: &Mutex<Option<Response<EdgeBody>>>,
        status: CacheStatus,
        req: Request<B>,
    ) -> Response<EdgeBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let ranged_too_large = status.detail == Some(NoCacheReason::TooLarge.as_str())
            && req.headers().contains_key(header::RANGE);
        let taken = match role {
            coalesce::Role::Leader if !ranged_too_large => response
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
            _ => None,
        };
        let Some(mut response) = taken else {
            let fwd = (Forward::UriMiss, status.detail);
            let (response, _) = self
                .pass(fetch.site, req, fetch.target, fwd, fetch.client)
                .await;
            return response;
        };
        let upstream = response.headers_mut().remove(&CACHE_STATUS);
        response.headers_mut().insert(
            CACHE_STATUS.clone(),
            status.render(&self.name, upstream_str(upstream.as_ref())),
        );
        if fetch.head {
            *response.body_mut() = EdgeBody::empty();
        }
        response
    }

    /// The fill of a lookup for a client request (its headers filtered for the fill).
    fn fill_request(
        self: &Arc<Self>,
        fetch: Fetch<'_>,
        lookup: &Lookup<'_>,
        request: &http::HeaderMap,
        stale: Option<Cached>,
        range: Option<RangeFill>,
        fill: FillFor,
    ) -> FillRequest {
        let purpose = match fill {
            FillFor::Anyone => Purpose::Fill,
            FillFor::Credentialed => Purpose::CredentialedFill,
        };
        FillRequest {
            edge: self.clone(),
            site: fetch.site.site.clone(),
            key: lookup.key().clone(),
            primary: fetch.primary.clone(),
            index: lookup.index.clone(),
            miss: lookup.miss,
            target: fetch.target.to_owned(),
            headers: self.fill_headers(fetch.site, fetch.target, request, fetch.client, purpose),
            fill,
            request_cc: CacheControl::from_headers(request),
            stale,
            purge_seq: self.store.purge_watermark(),
            range,
            interim: None,
        }
    }

    /// A client's request headers as a fill sends them upstream: a shared fill (or a fetch
    /// the cache makes on its own) with `Purpose::Fill`, a credentialed fill with
    /// `Purpose::CredentialedFill`.
    fn fill_headers(
        &self,
        site: SiteMatch<'_>,
        target: &str,
        request: &http::HeaderMap,
        client: SocketAddr,
        purpose: Purpose,
    ) -> http::HeaderMap {
        let mut headers = forward_request_headers(
            request,
            purpose,
            site.site.upstream_host.as_ref().unwrap_or(site.host_value),
            &self.via,
            client.ip(),
            &site.site.key_headers,
        );
        let applied = self.store.purge_watermark();
        let signer = self.node_key.as_ref().filter(|_| self.role.signs_fills());
        if let Some(key) = signer.filter(|_| applied > 0) {
            let claims = NodeClaims {
                purge_seq: Some(applied),
            };
            key.sign(&mut headers, &Method::GET, target, claims);
        }
        headers
    }

    /// Applies a batch of purges (see [`crate::node::invalidation`]); returns the watermark,
    /// durable when the node keeps a state.
    pub fn apply_purges(&self, batch: &node_api::purge::PurgeBatch) -> Result<u64, ApplyError> {
        let result = self
            .invalidation
            .apply_batch(batch, &self.live().sites, self.store.as_ref());
        if result.is_ok() {
            for purge in &batch.purges {
                self.metrics.purge_applied(purge.purge.selector.kind());
            }
        }
        self.metrics.purge_watermark(self.store.purge_watermark());
        result
    }

    /// [`Edge::apply_purges`] from async code: on this worker when the batch
    /// [is quick](crate::node::invalidation::Invalidation::is_quick), else on a blocking
    /// thread (prefix and host purges scan the store, a state commit waits for the disk).
    /// `Err` of the outer result when the blocking thread failed.
    pub async fn apply_purges_async(
        self: &Arc<Self>,
        batch: node_api::purge::PurgeBatch,
    ) -> Result<Result<u64, ApplyError>, tokio::task::JoinError> {
        if self.invalidation.is_quick(&batch, self.store.as_ref()) {
            return Ok(self.apply_purges(&batch));
        }
        let edge = self.clone();
        tokio::task::spawn_blocking(move || edge.apply_purges(&batch)).await
    }

    /// Forgets every site's content and sets the watermark to `seq` (see
    /// [`crate::node::invalidation::Invalidation::reset`]). In memory the reset is done
    /// whatever happens; an error says the state could not record it.
    pub fn reset_purges(&self, seq: u64) -> Result<(), StateError> {
        let result = self
            .invalidation
            .reset(&self.live().sites, self.store.as_ref(), seq);
        self.metrics.purge_watermark(seq);
        result
    }

    /// Whether this node holds nothing purges could apply to, so that a catch-up may take
    /// the log's head instead of reading what it missed: nothing in the store and no
    /// persisted position to resume from (a disk tier's objects count as stored). The one
    /// decision of both catch-up paths (the purge log and the NATS stream).
    pub fn starts_fresh(&self) -> bool {
        self.state().is_none_or(|state| !state.resumes())
            && self.store.usage().entries == 0
            && self
                .store
                .hybrid()
                .is_none_or(|hybrid| hybrid.disk().usage().entries == 0)
    }

    /// Takes `seq` as the watermark of a node that [starts fresh](Edge::starts_fresh)
    /// (see [`crate::node::invalidation::Invalidation::start_at`]).
    pub fn start_at(&self, seq: u64) -> Result<(), StateError> {
        let result = self
            .invalidation
            .start_at(&self.live().sites, self.store.as_ref(), seq);
        self.metrics.purge_watermark(seq);
        result
    }

    /// The watermark this node may report upstream: the persisted one when it keeps a
    /// state (purges applied in memory are acknowledged only once committed), else the
    /// store's.
    pub fn acknowledged_watermark(&self) -> u64 {
        self.state()
            .map_or_else(|| self.store.purge_watermark(), |state| state.watermark())
    }

    /// The node's persisted state (`[cache] state_dir`), when it keeps one.
    pub fn state(&self) -> Option<&Arc<NodeState>> {
        self.invalidation.state()
    }

    /// The one lookup, and the one decision on it, of both the fast path and the full
    /// path: what is stored for a request of `primary` on `site` (the variant its
    /// `request` fields select when the URL's responses vary; none is selected without
    /// them), and what to do about it ([`decide`]).
    ///
    /// Nothing counts as stored when a proven node asking has applied purges this one has
    /// not: this node's copy may be one the asker purged, so it is fetched afresh (and the
    /// fresh copy stored).
    fn lookup<'k>(
        &self,
        site: SiteMatch<'_>,
        primary: &'k CacheKey,
        request: Option<&http::HeaderMap>,
        claims: NodeClaims,
        ask: Ask,
        now: Instant,
    ) -> (Lookup<'k>, Decision) {
        let mut lookup = Lookup {
            primary,
            variant: None,
            index: None,
            miss: Forward::UriMiss,
        };
        let mut found = self.store.get(primary);
        if let Some(Entry::Variants(variants)) = &found {
            let index = variants.index.clone();
            found = None;
            if let Some(request) = request {
                let (key, _) = index.variant_key(primary, request, &site.site.key_headers);
                found = self.store.get(&key);
                lookup.variant = Some(key);
            }
            lookup.index = Some(index);
            lookup.miss = Forward::VaryMiss;
        }
        if claims
            .purge_seq
            .is_some_and(|theirs| theirs > self.store.purge_watermark())
        {
            found = None;
        }
        let decision = decide(found, lookup.miss, ask, now);
        (lookup, decision)
    }

    /// A stored entry as the answer to a request: `304` when the client's conditionals
    /// show its copy is current, the entry itself (or the ranges asked for) otherwise.
    /// An object cached in slices gets its bytes from its slices.
    async fn answer(
        self: &Arc<Self>,
        fetch: Fetch<'_>,
        request: &http::HeaderMap,
        entry: &Cached,
        status: &CacheStatus,
        now: Instant,
    ) -> Response<EdgeBody> {
        let index = match entry {
            Cached::Whole(response) => {
                return self.answer_from_cache(request, response, fetch.head, status, now);
            }
            Cached::Partial(partial) => {
                // Callers answer from a partial object only what it holds; this is a guard.
                return self
                    .answer_partial(request, partial, fetch.head, status, now)
                    .unwrap_or_else(|| {
                        let error = UpstreamError::Protocol(
                            "the partial object does not hold the range asked for".into(),
                        );
                        self.upstream_failure(&error, status)
                    });
            }
            Cached::Sliced(index) => index,
        };
        let (entry, info) = (&index.head, index.info.clone());
        let total = info.total;
        let mut response = self.serve_stored(entry, true, status, now);
        let (first, last) = match cut(
            request,
            entry.status,
            &mut response,
            total,
            fetch.head,
            false,
        ) {
            Cut::Done => return response,
            Cut::One(first, last) => (first, last),
            Cut::Whole | Cut::Many(..) => (0, total - 1),
        };
        let source = SliceSource {
            edge: self.clone(),
            site: fetch.site.site.clone(),
            primary: fetch.primary.clone(),
            target: fetch.target.to_owned(),
            // Slices are fetched once for every request they answer: never with the
            // credentials of the one that happened to need them first.
            headers: self.fill_headers(
                fetch.site,
                fetch.target,
                request,
                fetch.client,
                Purpose::Fill,
            ),
            info,
            freshness: entry.freshness,
        };
        match source.body(first, last).await {
            Ok(body) => {
                response.headers_mut().remove(header::CONTENT_LENGTH);
                *response.body_mut() = EdgeBody::Sliced(body);
                response
            }
            Err(error) => self.upstream_failure(&error, status),
        }
    }

    /// A partial object's answer to `request`, when it holds every byte the answer needs:
    /// ranges inside its spans, or none at all (`304`, `416`, HEAD). `None` when bytes are
    /// missing (the whole object, a failed `If-Range`, a range across a gap).
    fn answer_partial(
        &self,
        request: &http::HeaderMap,
        partial: &PartialObject,
        head: bool,
        status: &CacheStatus,
        now: Instant,
    ) -> Option<Response<EdgeBody>> {
        let total = partial.total;
        let mut response = self.serve_stored(&partial.head, true, status, now);
        let body = match cut(request, StatusCode::OK, &mut response, total, head, true) {
            Cut::Done => return Some(response),
            Cut::Whole => return None,
            Cut::One(first, last) => EdgeBody::full(partial.spans.slice(first, last)?),
            Cut::Many(ranges, boundary) => {
                let spans = &partial.spans;
                if ranges.iter().any(|(a, b)| spans.slice(*a, *b).is_none()) {
                    return None;
                }
                let content_type = partial.head.header(&header::CONTENT_TYPE);
                let parts = range::multipart_of(&ranges, total, content_type, &boundary, |a, b| {
                    spans.slice(a, b).into_iter().collect()
                });
                EdgeBody::Chunks(parts.into())
            }
        };
        *response.body_mut() = body;
        Some(response)
    }

    /// A response too large to promote, read from the disk tier, as the answer to a
    /// request when [`decide`] makes it a hit: its body (or the one range asked for; several
    /// ranges get the whole body) streamed frame by frame from disk. `None`: not a hit (a
    /// stale or soft-purged copy, a request with credentials it may not answer), and the
    /// request is filled as a miss.
    fn answer_large(
        &self,
        fetch: Fetch<'_>,
        request: &http::HeaderMap,
        ask: Ask,
        head: &Arc<StoredResponse>,
        record: DiskRecord,
        now: Instant,
    ) -> Option<Response<EdgeBody>> {
        let decision = decide(
            Some(Entry::Response(head.clone())),
            Forward::UriMiss,
            ask,
            now,
        );
        if !matches!(decision, Decision::Hit(Cached::Whole(_))) {
            return None;
        }
        head.record_hit();
        let mut status = CacheStatus::hit(head.freshness.ttl(now));
        status.detail = Some("disk");
        let len = record.body_len();
        let mut response = self.serve_stored(head, true, &status, now);
        let body = match cut(request, head.status, &mut response, len, fetch.head, false) {
            Cut::Done => return Some(response),
            Cut::Whole | Cut::Many(..) => record.body(),
            Cut::One(first, last) => record.range(first..last + 1),
        };
        *response.body_mut() = EdgeBody::Disk(DiskStream::new(body));
        Some(response)
    }

    /// [`Edge::answer`] for an entry holding its whole body.
    fn answer_from_cache(
        &self,
        request: &http::HeaderMap,
        entry: &StoredResponse,
        head: bool,
        status: &CacheStatus,
        now: Instant,
    ) -> Response<EdgeBody> {
        let len = entry.body().len() as u64;
        let mut response = self.serve_stored(entry, true, status, now);
        *response.body_mut() = match cut(request, entry.status, &mut response, len, head, true) {
            Cut::Done => return response,
            Cut::Whole => EdgeBody::full(entry.body_bytes()),
            Cut::One(first, last) => {
                EdgeBody::full(entry.body_bytes().slice(first as usize..=last as usize))
            }
            Cut::Many(ranges, boundary) => {
                let content_type = entry.header(&header::CONTENT_TYPE);
                let parts = range::multipart(&entry.body_bytes(), &ranges, content_type, &boundary);
                EdgeBody::Chunks(parts.into())
            }
        };
        response
    }

    /// Removes the entry for `target` on `site` (RFC 9111 4.4).
    fn invalidate(&self, site: SiteMatch<'_>, target: &str) {
        if let Ok(target) = normalize_target(target, &site.site.query) {
            self.store.remove(&CacheKey::new(
                site.site.generation(),
                "http",
                site.host,
                &target,
            ));
        }
    }

    /// After a successful unsafe request: the target and the same-host URIs in
    /// `Location` and `Content-Location` are invalidated (RFC 9111 4.4).
    fn invalidate_after_unsafe(
        &self,
        site: SiteMatch<'_>,
        target: &str,
        response: &http::HeaderMap,
    ) {
        self.invalidate(site, target);
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(uri) = response
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<Uri>().ok())
            else {
                continue;
            };
            let same_host = uri
                .host()
                .is_none_or(|host| crate::node::config::normalize_host(host) == site.host);
            if let Some(pq) = uri.path_and_query().filter(|_| same_host) {
                self.invalidate(site, pq.as_str());
            }
        }
    }

    /// Builds a response from a stored entry: one header map clone and a shared body.
    fn serve_stored(
        &self,
        entry: &StoredResponse,
        head: bool,
        status: &CacheStatus,
        now: Instant,
    ) -> Response<EdgeBody> {
        let body = if head {
            EdgeBody::empty()
        } else {
            EdgeBody::full(entry.body_bytes())
        };
        let mut response = Response::new(body);
        *response.status_mut() = entry.status;
        let headers = response.headers_mut();
        *headers = entry.client_headers();
        headers.insert(header::AGE, HeaderValue::from(entry.freshness.age(now)));
        headers.insert(
            CACHE_STATUS.clone(),
            status.render(&self.name, entry.upstream_cache_status()),
        );
        response
    }

    /// Forwards one client's request as it is and streams the answer back. A POST's answer
    /// that names its own target may also be kept for later GETs ([`crate::node::post`]).
    async fn pass<B>(
        self: &Arc<Self>,
        site: SiteMatch<'_>,
        req: Request<B>,
        target: &str,
        (fwd, detail): (Forward, Option<&'static str>),
        client: SocketAddr,
    ) -> (Response<EdgeBody>, Outcome)
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let keeps_post = *req.method() == Method::POST && site.site.store_post_content_location;
        let origin = keeps_post.then(|| target_origin(&req));
        let (request, body) = req.into_parts();
        let unsafe_method = !matches!(
            request.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
        let headers = forward_request_headers(
            &request.headers,
            Purpose::Pass,
            site.site.upstream_host.as_ref().unwrap_or(site.host_value),
            &self.via,
            client.ip(),
            &site.site.key_headers,
        );
        // A request that declares no body is sent without one, which lets it be retried.
        // HTTP/2 frames bodies without either field: there, the stream says.
        let bodiless = !request.headers.contains_key(header::CONTENT_LENGTH)
            && !request.headers.contains_key(header::TRANSFER_ENCODING)
            && (request.version < http::Version::HTTP_2 || body.is_end_stream());
        let limits = self.live.load().limits;
        let body = (!bodiless).then(|| {
            ClientBody::new(body, limits.max_body_bytes, limits.body_read_timeout).boxed_unsync()
        });
        let mut status = CacheStatus::forwarded(fwd);
        status.detail = detail;
        let purge_seq = self.store.purge_watermark();
        let request_time = std::time::SystemTime::now();
        let started = Instant::now();
        let key = CacheKey::new(site.site.generation(), "http", site.host, target);
        let sent = self
            .send_upstream(
                site.site,
                &key,
                &request.method,
                target,
                &headers,
                (body, request.extensions.get::<Interim>()),
            )
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(UpstreamError::Client(fault)) => {
                return (client_failure(&fault, request.version), Outcome::Refused);
            }
            Err(error) => {
                self.metrics.upstream_error(error.kind());
                return (self.upstream_failure(&error, &status), Outcome::Error);
            }
        };
        self.metrics.upstream_response(started.elapsed());
        let exchange = Exchange {
            request_time,
            response_time: std::time::SystemTime::now(),
            received: Instant::now(),
        };
        let (mut parts, body) = response.into_parts();
        if unsafe_method && (parts.status.is_success() || parts.status.is_redirection()) {
            self.invalidate_after_unsafe(site, target, &parts.headers);
        }
        status.fwd_status = Some(parts.status.as_u16());
        let body = match origin {
            Some((scheme, authority)) => {
                let post = Post {
                    site,
                    target,
                    scheme,
                    authority: &authority,
                    request: &request.headers,
                    forwarded: &headers,
                    exchange,
                    purge_seq,
                };
                match self
                    .keep_post_response(post, &parts, body, &mut status)
                    .await
                {
                    Ok(body) => body,
                    Err(error) => {
                        self.metrics.upstream_error(error.kind());
                        return (self.upstream_failure(&error, &status), Outcome::Error);
                    }
                }
            }
            None => EdgeBody::stream(Default::default(), body),
        };
        strip_hop_by_hop(&mut parts.headers);
        strip_targeted(&mut parts.headers);
        self.role.strip_downstream(&mut parts.headers);
        append_list(&mut parts.headers, header::VIA, &self.via);
        let upstream = parts.headers.remove(&CACHE_STATUS);
        parts.headers.insert(
            CACHE_STATUS.clone(),
            status.render(&self.name, upstream_str(upstream.as_ref())),
        );
        (Response::from_parts(parts, body), Outcome::Pass)
    }

    /// Sends a request to the site's upstream pool; `key` picks the server under
    /// consistent hashing. Only a request without a body (`None`) may be retried. The
    /// exchange's 1xx heads go to `interim`: the client whose request caused it, when its
    /// front door can write them (see [`crate::upstream::interim`]).
    pub(crate) async fn send_upstream(
        &self,
        site: &Site,
        key: &CacheKey,
        method: &Method,
        target: &str,
        headers: &http::HeaderMap,
        (body, interim): (Option<UpstreamBody>, Option<&Interim>),
    ) -> Result<Response<Incoming>, UpstreamError> {
        let _slot = self
            .admission
            .admit()
            .await
            .map_err(UpstreamError::Overloaded)?;
        let started = Instant::now();
        let sent = site
            .pool
            .send(
                &self.upstream,
                &self.metrics,
                key.locator().as_bytes(),
                (method, target, headers),
                body,
                interim,
            )
            .await?;
        record_upstream(&site.pool.servers()[sent.server].url, started.elapsed());
        Ok(sent.response)
    }

    fn upstream_failure(&self, error: &UpstreamError, status: &CacheStatus) -> Response<EdgeBody> {
        if let UpstreamError::Overloaded(_) = error {
            // Counted in the metrics; a line per shed request would flood the log exactly
            // when the node has least time to spare for it.
            tracing::debug!(node = %self.name, %error, "shed");
        } else {
            tracing::warn!(node = %self.name, kind = error.kind(), %error, "upstream failure");
        }
        let code = error.status();
        let mut status = status.clone();
        status.detail = Some(error.kind());
        let mut response = text_response(
            code,
            &format!(
                "{} {}: {error}\n",
                code.as_u16(),
                code.canonical_reason().unwrap_or("")
            ),
        );
        response
            .headers_mut()
            .insert(CACHE_STATUS.clone(), status.render(&self.name, None));
        if let UpstreamError::Overloaded(shed) = error {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(shed.retry_after.as_secs().max(1)),
            );
        }
        response
    }
}

/// The limits on a request's head, target and declared body (`431`, `414`, `413`),
/// checked again here for requests hyper parsed.
fn within_limits<B>(limits: &RequestLimits, req: &Request<B>) -> Result<(), Refusal> {
    if head_size(req) > limits.max_header_bytes {
        return Err(Refusal(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the request line and headers exceed this node's limit of {} bytes",
                limits.max_header_bytes
            ),
        ));
    }
    if req.uri().path_and_query().map_or(0, |pq| pq.as_str().len()) > limits.max_uri_bytes {
        return Err(Refusal(
            StatusCode::URI_TOO_LONG,
            format!(
                "the request target is longer than this node's limit of {} bytes",
                limits.max_uri_bytes
            ),
        ));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits.max_body_bytes) {
        return Err(Refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is larger than this node's limit of {} bytes",
                limits.max_body_bytes
            ),
        ));
    }
    Ok(())
}

/// The front door's view of a node: the fast path and the full path above, monomorphized
/// into every listener.
impl Handler for Edge {
    fn fresh_hit(
        &self,
        host: &str,
        target: &str,
        tls: Option<&TlsName>,
    ) -> Option<(Arc<StoredResponse>, Instant)> {
        Edge::fresh_hit(self, host, target, tls)
    }

    fn handle<B>(
        self: &Arc<Self>,
        request: Request<B>,
        client: SocketAddr,
    ) -> impl Future<Output = Response<EdgeBody>> + Send
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        Edge::handle(self, request, client)
    }

    fn logs_access(&self) -> bool {
        self.live.load().access_log.is_some()
    }

    fn alt_svc(&self) -> Option<&HeaderValue> {
        self.alt_svc.get()
    }

    fn served_hit(&self, hit: &ServedHit<'_>) {
        let live = self.live.load();
        let Some(log) = &live.access_log else {
            return;
        };
        let elapsed = hit.started.elapsed();
        let site = std::str::from_utf8(hit.host)
            .ok()
            .and_then(|host| live.sites.resolve_on(host, hit.tls).ok());
        let id = log.next_id();
        if !AccessLog::sampled(site.map_or(1.0, |site| site.site.access_log_sample), id) {
            return;
        }
        log.log(&Line {
            time: std::time::SystemTime::now(),
            client: hit.client,
            site: site.map(|site| site.site.name.as_str()),
            method: if hit.head { "HEAD" } else { "GET" },
            scheme: if hit.tls.is_some() { "https" } else { "http" },
            host: hit.host,
            target: hit.target,
            status: hit.status.as_u16(),
            bytes: hit.bytes,
            body_bytes: hit.body_bytes,
            ttfb: elapsed,
            total: elapsed,
            cache_status: hit.cache_status,
            tls: hit.tls.map(|name| &*name.0),
            tls_version: hit.tls.map(|name| name.1.as_str()),
            upstream: None,
            version: hit.version,
            user_agent: hit.user_agent,
            referer: hit.referer,
            request_id: id,
            complete: hit.complete,
        });
    }

    fn refused_at_door(&self, refusal: &DoorRefusal<'_>) {
        let live = self.live.load();
        let Some(log) = &live.access_log else {
            return;
        };
        log.log(&Line {
            time: std::time::SystemTime::now(),
            client: refusal.client,
            site: None,
            method: "",
            scheme: if refusal.https { "https" } else { "http" },
            host: b"",
            target: b"",
            status: refusal.status.as_u16(),
            bytes: refusal.bytes,
            body_bytes: 0,
            ttfb: Duration::ZERO,
            total: Duration::ZERO,
            cache_status: b"",
            tls: refusal.tls.map(|name| &*name.0),
            tls_version: refusal.tls.map(|name| name.1.as_str()),
            upstream: None,
            version: http::Version::HTTP_11,
            user_agent: None,
            referer: None,
            request_id: log.next_id(),
            complete: refusal.bytes > 0,
        });
    }

    /// A forwarded 1xx head is a message this node forwards: it names the node in `Via`
    /// (RFC 9110 7.6.3) and loses what the node's role keeps from going downstream.
    fn interim(&self, head: &mut InterimHead) {
        self.role.strip_downstream(&mut head.headers);
        append_list(&mut head.headers, header::VIA, &self.via);
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn count(&self, outcome: Outcome, version: http::Version) {
        self.metrics.request(outcome, version);
    }
}

/// Which bytes of a stored object of `len` bytes (stored with status `stored`) answer
/// `request`, with `response` (the stored head, no body yet) turned into `304`, `416` or
/// `206` as the request's conditionals and `Range` call for. Several ranges get a
/// multipart answer when `multipart` allows, else the whole object.
fn cut(
    request: &http::HeaderMap,
    stored: StatusCode,
    response: &mut Response<EdgeBody>,
    len: u64,
    head: bool,
    multipart: bool,
) -> Cut {
    // The validators the checks below need are client-visible, so the response's own
    // header map (parsed once from the stored head) serves them.
    let conditional = request.contains_key(header::IF_NONE_MATCH)
        || request.contains_key(header::IF_MODIFIED_SINCE);
    if conditional && stored == StatusCode::OK && not_modified(request, response.headers()) {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return Cut::Done;
    }
    if head {
        return Cut::Done;
    }
    if stored != StatusCode::OK || !request.contains_key(header::RANGE) {
        return Cut::Whole;
    }
    let ranges = match range::evaluate(request, response.headers(), len) {
        RangeAnswer::Full => return Cut::Whole,
        RangeAnswer::Unsatisfiable => {
            *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let headers = response.headers_mut();
            headers.remove(header::CONTENT_LENGTH);
            headers.insert(header::CONTENT_RANGE, content_range(&format!("*/{len}")));
            return Cut::Done;
        }
        RangeAnswer::Partial(ranges) => ranges,
    };
    if ranges.len() > 1 && !multipart {
        return Cut::Whole;
    }
    *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    response.headers_mut().remove(header::CONTENT_LENGTH);
    if let [(start, end)] = ranges[..] {
        response.headers_mut().insert(
            header::CONTENT_RANGE,
            content_range(&format!("{start}-{end}/{len}")),
        );
        return Cut::One(start, end);
    }
    let boundary = multipart_boundary();
    if let Ok(value) = HeaderValue::from_str(&format!("multipart/byteranges; boundary={boundary}"))
    {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    Cut::Many(ranges, boundary)
}

/// The lookup of this request's own variant when the fill it waited on stored another
/// one: the first fill of a URL that turned out to vary is coalesced on the primary key
/// before anyone knows it varies.
fn own_variant<'k>(
    fetch: Fetch<'k>,
    stored: &Cached,
    request: &http::HeaderMap,
) -> Option<Lookup<'k>> {
    let keyed = &fetch.site.site.key_headers;
    let selection = stored.response().selected_by()?;
    if selection.matches(request, keyed) {
        return None;
    }
    let (key, _) = selection.index.variant_key(fetch.primary, request, keyed);
    Some(Lookup {
        primary: fetch.primary,
        variant: Some(key),
        index: Some(selection.index.clone()),
        miss: Forward::VaryMiss,
    })
}

/// The lookup of this request's variant of a URL whose fill stored `stored` (a variant,
/// which says which index it belongs to); `None` when the URL does not vary.
fn variant_lookup<'k>(
    fetch: Fetch<'k>,
    stored: &Cached,
    request: &http::HeaderMap,
) -> Option<Lookup<'k>> {
    let keyed = &fetch.site.site.key_headers;
    let selection = stored.response().selected_by()?;
    let (key, _) = selection.index.variant_key(fetch.primary, request, keyed);
    Some(Lookup {
        primary: fetch.primary,
        variant: Some(key),
        index: Some(selection.index.clone()),
        miss: Forward::VaryMiss,
    })
}

/// Bytes of the request head as sent (request line and header lines).
fn head_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + uri
            .authority()
            .map_or(0, |a| a.as_str().len() + "https://".len());
    let line = req.method().as_str().len() + target + " HTTP/1.1\r\n ".len();
    req.headers().iter().fold(line, |n, (name, value)| {
        n + name.as_str().len() + value.len() + 4
    })
}

/// The scheme and authority of a request's target URI (RFC 9110 7.1): `https` on a TLS
/// connection, the authority its host came from (see [`request_host`]).
fn target_origin<B>(req: &Request<B>) -> (&'static str, String) {
    let scheme = if req.extensions().get::<TlsName>().is_some() {
        "https"
    } else {
        "http"
    };
    (scheme, request_host(req).unwrap_or_default().to_owned())
}

/// The host a request is for: the absolute-form authority if any, else the one `Host`.
fn request_host<B>(req: &Request<B>) -> Result<&str, &'static str> {
    if let Some(authority) = req.uri().authority() {
        return Ok(authority.as_str());
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts
        .next()
        .ok_or("missing Host header: say which site you want")?;
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    host.to_str()
        .ok()
        .filter(|h| !h.is_empty())
        .ok_or("Host header is empty or not ASCII")
}

fn content_range(spec: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("bytes {spec}")).unwrap_or(HeaderValue::from_static("bytes */0"))
}

/// A boundary that no stored body can be expected to contain.
fn multipart_boundary() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("cdn-byteranges-{nanos:x}-{n:x}")
}

fn upstream_str(value: Option<&HeaderValue>) -> Option<&str> {
    value.and_then(|v| v.to_str().ok())
}

/// The answer to a client whose request body failed: its own status, and on HTTP/1.1 the
/// end of the connection, whose framing can no longer be trusted.
fn client_failure(fault: &ClientFault, version: http::Version) -> Response<EdgeBody> {
    let status = fault.status();
    let text = format!(
        "{} {}: {fault}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut response = text_response(status, &text);
    if version < http::Version::HTTP_2 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn refuse(status: StatusCode, message: &str) -> (Response<EdgeBody>, Outcome) {
    let text = format!(
        "{} {}: {message}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    (text_response(status, &text), Outcome::Refused)
}

/// A short plain-text answer that no cache may keep.
pub(crate) fn text_response(status: StatusCode, text: &str) -> Response<EdgeBody> {
    let mut response = Response::new(EdgeBody::full(Bytes::copy_from_slice(text.as_bytes())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
