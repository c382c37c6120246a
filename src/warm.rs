//! `cdn warm`: fills a region's caches before traffic moves to it.
//!
//! A region that takes another's clients with cold caches sends every one of their
//! requests to the shield and the origin at once. Warming copies the source region's
//! hottest objects (its edges' `GET /v1/hot`, merged by hits) or a given URL list into
//! every edge of the target region, by requesting them through the edges' public
//! listeners, so each edge fills as it would for a client (the shield collapses the
//! edges' fetches into one origin fetch). Requests are bounded in concurrency and paced to
//! a rate, so warming cannot become the flood it is meant to prevent.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;

use crate::endpoints::{Endpoints, NodeEndpoint};
use crate::node_admin::{AdminError, NodeAdmin};

/// How warming runs.
#[derive(Debug, Clone)]
pub struct WarmOptions {
    /// Objects taken from the source region.
    pub top: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Requests started per second, over all target edges.
    pub rate: u32,
}

impl Default for WarmOptions {
    fn default() -> Self {
        Self {
            top: 1000,
            concurrency: 8,
            rate: 200,
        }
    }
}

/// Where the URLs come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The hottest objects of a region's edges.
    Region(String),
    /// Absolute URLs (`http://host/path`).
    Urls(Vec<String>),
}

/// Progress after each request.
#[derive(Debug, Clone, Copy)]
pub struct WarmProgress {
    pub done: u64,
    pub total: u64,
    pub failed: u64,
}

/// What warming did.
#[derive(Debug, Clone, Default)]
pub struct WarmReport {
    /// Distinct URLs warmed.
    pub urls: usize,
    /// Requests made (URLs x target edges).
    pub requests: u64,
    /// Answers the edge already had (`Cache-Status` hit).
    pub already_cached: u64,
    /// Answers the edge fetched (and stored if cacheable).
    pub filled: u64,
    /// Requests that failed or were answered with an error status.
    pub failed: u64,
    /// The first few failures, for the operator.
    pub failures: Vec<String>,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Why warming could not run.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("no region {region:?} in this topology (regions: {known})")]
    UnknownRegion { region: String, known: String },
    #[error("{url:?} is not an absolute http:// URL")]
    BadUrl { url: String },
    #[error("warming needs concurrency and rate of at least 1")]
    Bounds,
    #[error(transparent)]
    Admin(#[from] AdminError),
}

/// Most failures kept verbatim in the report.
const KEPT_FAILURES: usize = 5;

/// Warms every edge of region `to` with the URLs of `from`.
pub async fn run(
    endpoints: &Endpoints,
    from: &Source,
    to: &str,
    options: &WarmOptions,
    progress: impl Fn(WarmProgress),
) -> Result<WarmReport, WarmError> {
    if options.concurrency == 0 || options.rate == 0 {
        return Err(WarmError::Bounds);
    }
    let unknown = |region: &str| WarmError::UnknownRegion {
        region: region.to_owned(),
        known: endpoints.region_names(),
    };
    let targets = &endpoints.region(to).ok_or_else(|| unknown(to))?.edges;
    let admin = NodeAdmin::new(&endpoints.node_token);
    let urls = match from {
        Source::Urls(urls) => urls.clone(),
        Source::Region(region) => {
            let source = endpoints.region(region).ok_or_else(|| unknown(region))?;
            hottest(&admin, &source.edges, options.top).await?
        }
    };
    let mut targets_of_urls = Vec::with_capacity(urls.len());
    for url in &urls {
        targets_of_urls.push(split_url(url)?);
    }
    let work: Vec<(&NodeEndpoint, &(String, String))> = targets_of_urls
        .iter()
        .flat_map(|hp| targets.iter().map(move |edge| (edge, hp)))
        .collect();
    let total = work.len() as u64;
    let started = Instant::now();
    let interval = Duration::from_secs(1) / options.rate;
    let mut pace = tokio::time::interval(interval);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let pace = Arc::new(tokio::sync::Mutex::new(pace));
    let done = AtomicU64::new(0);
    let failed_count = AtomicU64::new(0);
    let results: Vec<Result<crate::node_admin::Fetched, String>> = futures_util::stream::iter(work)
        .map(|(edge, (host, target))| {
            let (admin, pace) = (&admin, pace.clone());
            let (done, failed_count, progress) = (&done, &failed_count, &progress);
            async move {
                pace.lock().await.tick().await;
                let result = admin
                    .fetch(&edge.name, edge.public, host, target)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|f| {
                        if f.status.is_success() {
                            Ok(f)
                        } else {
                            Err(format!(
                                "{}: {} for http://{host}{target}",
                                edge.name, f.status
                            ))
                        }
                    });
                if result.is_err() {
                    failed_count.fetch_add(1, Ordering::Relaxed);
                }
                progress(WarmProgress {
                    done: done.fetch_add(1, Ordering::Relaxed) + 1,
                    total,
                    failed: failed_count.load(Ordering::Relaxed),
                });
                result
            }
        })
        .buffer_unordered(options.concurrency)
        .collect()
        .await;
    let mut report = WarmReport {
        urls: urls.len(),
        requests: total,
        ..WarmReport::default()
    };
    for result in results {
        match result {
            Ok(fetched) => {
                report.bytes += fetched.bytes as u64;
                // This edge's member of Cache-Status is the last one.
                let own = fetched.cache_status.rsplit(", ").next().unwrap_or("");
                if own.split(';').any(|param| param.trim() == "hit") {
                    report.already_cached += 1;
                } else {
                    report.filled += 1;
                }
            }
            Err(failure) => {
                report.failed += 1;
                if report.failures.len() < KEPT_FAILURES {
                    report.failures.push(failure);
                }
            }
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The `top` most requested URLs over `edges`, hits summed across them.
async fn hottest(
    admin: &NodeAdmin,
    edges: &[NodeEndpoint],
    top: usize,
) -> Result<Vec<String>, AdminError> {
    let mut hits: HashMap<String, u64> = HashMap::new();
    for edge in edges {
        for object in admin.hot(&edge.name, edge.admin, top).await? {
            *hits.entry(object.url).or_default() += object.hits;
        }
    }
    let mut ranked: Vec<(String, u64)> = hits.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(top);
    Ok(ranked.into_iter().map(|(url, _)| url).collect())
}

/// `http://host/target` as (host, origin-form target).
fn split_url(url: &str) -> Result<(String, String), WarmError> {
    let bad = || WarmError::BadUrl {
        url: url.to_owned(),
    };
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let (host, target) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() || host.contains(['@', ' ']) || target.contains(' ') {
        return Err(bad());
    }
    Ok((host.to_owned(), target.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_and_target() {
        let split = |u: &str| split_url(u).map_err(|e| e.to_string());
        assert_eq!(
            split("http://demo.cdn.test/obj/1k.bin?a=1"),
            Ok(("demo.cdn.test".into(), "/obj/1k.bin?a=1".into()))
        );
        assert_eq!(
            split("http://demo.cdn.test"),
            Ok(("demo.cdn.test".into(), "/".into()))
        );
        for bad in ["https://x/y", "demo/x", "http:///x", "http://u@h/x"] {
            assert!(split(bad).is_err(), "{bad}");
        }
    }
}
