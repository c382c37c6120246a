//! The shield tier: edges hash each object to one shield, shields collapse every edge's
//! miss into one origin fetch and balance, health-check and fail over across origins.
//! What a shield does differently from an edge (its role) is at the end.

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use edge::node::node_auth::{NodeClaims, NodeKey};
use http::{Method, StatusCode};
use node_api::purge::{Mode, Purge, PurgeBatch, Selector, SequencedPurge};
use support::topology::{NODE_TOKEN, OriginPool, Topology};
use support::{HOST, Reply, api_call_with};

fn pool(pool: &str) -> OriginPool {
    OriginPool {
        pool: format!("{pool}\nprobes = false"),
        ..Default::default()
    }
}

/// `n` distinct targets that every node stores.
fn objects(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("/{prefix}/{i}.bin")).collect()
}

/// Each target fetched once from shield 0, in order.
async fn fetch_each(t: &Topology, targets: &[String]) {
    for target in targets {
        let reply = t.shield_get(0, target).await.expect("answer");
        assert_eq!(reply.status, StatusCode::OK, "{target}: {}", reply.text());
    }
}

#[tokio::test]
async fn twenty_edges_times_fifty_cold_requests_make_one_origin_fetch() {
    let t = Arc::new(Topology::start(1, 2, 20, pool("")).await);
    let target = "/hot/64k.bin?delay_ms=300";
    let mut clients = Vec::new();
    for edge in 0..20 {
        for _ in 0..50 {
            let t = t.clone();
            clients.push(tokio::spawn(async move { t.get(edge, target).await }));
        }
    }
    let mut bodies = std::collections::HashSet::new();
    for client in clients {
        let reply = client.await.expect("client task");
        assert_eq!(reply.status, StatusCode::OK);
        bodies.insert(reply.body);
    }
    assert_eq!(bodies.len(), 1, "every client got the same bytes");
    assert_eq!(
        t.origins[0].hits(target),
        1,
        "1000 requests, one origin fetch"
    );
}

#[tokio::test]
async fn round_robin_spreads_misses_evenly() {
    let t = Topology::start(3, 1, 0, pool("balance = \"round_robin\"")).await;
    let targets = objects("rr", 300);
    fetch_each(&t, &targets).await;
    assert_eq!(t.origin_hits(&targets), [100, 100, 100]);
}

#[tokio::test]
async fn weighted_round_robin_follows_the_weights() {
    let mut spec = pool("balance = \"weighted_round_robin\"");
    spec.weights = vec![1, 2, 3];
    let t = Topology::start(3, 1, 0, spec).await;
    let targets = objects("wrr", 600);
    fetch_each(&t, &targets).await;
    assert_eq!(t.origin_hits(&targets), [100, 200, 300]);
}

#[tokio::test]
async fn consistent_hash_sends_each_object_to_one_origin() {
    let t = Topology::start(3, 1, 0, pool("balance = \"consistent_hash\"")).await;
    // Never stored, so every request reaches an origin.
    let targets: Vec<String> = (0..90)
        .map(|i| format!("/ch/{i}.bin?cc=no-store"))
        .collect();
    for _ in 0..3 {
        fetch_each(&t, &targets).await;
    }
    for target in &targets {
        let per_origin: Vec<u64> = t.origins.iter().map(|o| o.hits(target)).collect();
        assert!(
            per_origin.contains(&3),
            "{target} spread over origins: {per_origin:?}"
        );
    }
    // 90 objects over 3 origins: each gets a share (binomial, 5 standard deviations).
    for hits in t.origin_hits(&targets) {
        assert!((45..=495).contains(&hits), "{hits} of 270 requests");
    }
}

#[tokio::test]
async fn least_connections_steers_away_from_a_slow_origin() {
    let t = Arc::new(Topology::start(3, 1, 0, pool("balance = \"least_connections\"")).await);
    t.origins[0].set_delay(Duration::from_millis(300));
    let targets = objects("lc", 120);
    // 10 clients, each fetching 12 objects one after the other: requests to the slow
    // origin stay in flight, so it is the most loaded and new misses go elsewhere.
    let workers: Vec<_> = targets
        .chunks(12)
        .map(|chunk| {
            let (t, chunk) = (t.clone(), chunk.to_vec());
            tokio::spawn(async move {
                for target in chunk {
                    let reply = t.shield_get(0, &target).await.expect("answer");
                    assert_eq!(reply.status, StatusCode::OK);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    let hits = t.origin_hits(&targets);
    assert_eq!(hits.iter().sum::<u64>(), 120);
    assert!(
        hits[0] <= 24,
        "slow origin got {} of 120: {hits:?}",
        hits[0]
    );
}

#[tokio::test]
async fn ewma_latency_prefers_the_fast_origins() {
    let t = Topology::start(3, 1, 0, pool("balance = \"ewma_latency\"")).await;
    // 300 ms against the others' ~1 ms: no scheduling hiccup of a loaded 2-core machine
    // makes a fast origin look slower than this one.
    t.origins[0].set_delay(Duration::from_millis(300));
    let targets = objects("ewma", 90);
    fetch_each(&t, &targets).await;
    let hits = t.origin_hits(&targets);
    // Each origin is tried while unmeasured; then the slow one is not picked again.
    assert!(hits[0] <= 3, "slow origin got {} of 90: {hits:?}", hits[0]);
    assert_eq!(hits.iter().sum::<u64>(), 90);
}

#[tokio::test]
async fn a_failing_origin_is_ejected_and_clients_see_no_error() {
    let spec = OriginPool {
        pool: "balance = \"round_robin\"\nprobes = false".into(),
        tables: "[site.pool.health]\nconsecutive_failures = 3\nbase_ejection = \"60s\"".into(),
        ..Default::default()
    };
    let t = Topology::start(3, 1, 0, spec).await;
    t.origins[1].fail_with(StatusCode::SERVICE_UNAVAILABLE);
    let targets = objects("eject", 60);
    fetch_each(&t, &targets).await; // every one 200: failed attempts retried elsewhere
    let hits = t.origin_hits(&targets);
    assert_eq!(
        hits[1], 3,
        "ejected after exactly 3 consecutive failures: {hits:?}"
    );
    assert_eq!(hits[0] + hits[2], 60);
    let ejections = format!(
        "edge_upstream_server_ejections_total{{site=\"assets\",server=\"http://{}\"}}",
        t.origins[1].addr()
    );
    assert_eq!(t.shield_metric(0, &ejections).await, 1.0);
}

#[tokio::test]
async fn active_probes_take_a_failing_origin_out_and_bring_it_back() {
    let spec = OriginPool {
        pool: "balance = \"round_robin\"".into(),
        tables: "[site.pool.health]\ninterval = \"20ms\"\ntimeout = \"500ms\"\nfall = 2\nrise = 2"
            .into(),
        ..Default::default()
    };
    let t = Topology::start(2, 1, 0, spec).await;
    let state = |s: &str| {
        format!(
            "edge_upstream_server_state{{site=\"assets\",server=\"http://{}\",state=\"{s}\"}}",
            t.origins[1].addr()
        )
    };
    t.origins[1].fail_with(StatusCode::INTERNAL_SERVER_ERROR);
    let mut down = false;
    for _ in 0..200 {
        if t.shield_metric(0, &state("down")).await == 1.0 {
            down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(down, "probes never took the failing origin down");
    t.origins[1].reset();
    let targets = objects("probe", 20);
    fetch_each(&t, &targets).await;
    assert_eq!(
        t.origin_hits(&targets),
        [20, 0],
        "no traffic to a down origin"
    );
    t.origins[1].recover();
    let mut up = false;
    for _ in 0..200 {
        if t.shield_metric(0, &state("up")).await == 1.0 {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(up, "probes never brought the origin back");
}

#[tokio::test]
async fn with_every_origin_down_the_shield_serves_stale() {
    let t = Topology::start(2, 1, 0, pool("")).await;
    let target = "/stale/1.bin?cc=max-age%3D0%2C%20stale-if-error%3D600";
    let first = t.shield_get(0, target).await.expect("answer");
    assert_eq!(first.status, StatusCode::OK);
    for origin in &t.origins {
        origin.fail_with(StatusCode::SERVICE_UNAVAILABLE);
    }
    let stale = t.shield_get(0, target).await.expect("answer");
    assert_eq!(stale.status, StatusCode::OK);
    assert!(stale.body == first.body);
    assert!(
        stale.cache_status().contains("detail=stale-if-error"),
        "{}",
        stale.cache_status()
    );
}

#[tokio::test]
async fn stale_if_error_is_labelled_at_every_tier() {
    let t = Topology::start(1, 1, 1, pool("")).await;
    let target = "/stale/tiers.bin?cc=max-age%3D0%2C%20stale-if-error%3D600";
    let first = t.get(0, target).await;
    assert_eq!(first.status, StatusCode::OK);
    t.origins[0].fail_with(StatusCode::SERVICE_UNAVAILABLE);
    let stale = t.get(0, target).await;
    assert_eq!(stale.status, StatusCode::OK);
    assert!(stale.body == first.body);
    let all = stale.header("cache-status");
    let members: Vec<&str> = all.split(", ").collect();
    assert_eq!(members.len(), 2, "{all}");
    for member in members {
        assert!(member.contains("detail=stale-if-error"), "{all}");
    }
}

#[tokio::test]
async fn removing_a_shield_moves_only_its_share_of_keys() {
    let mut t = Topology::start(1, 4, 1, pool("")).await;
    let targets: Vec<String> = (0..400)
        .map(|i| format!("/k/{i}.bin?cc=no-store"))
        .collect();
    let owner = |reply: &support::Reply| {
        let status = reply.header("cache-status");
        (0..4)
            .find(|n| status.contains(&format!("shield-{n};")))
            .unwrap_or_else(|| panic!("no shield in {status:?}"))
    };
    let mut before = Vec::new();
    for target in &targets {
        before.push(owner(&t.get(0, target).await));
    }
    t.stop_shield(2).await;
    let mut moved = 0;
    for (target, was) in targets.iter().zip(&before) {
        let reply = t.get(0, target).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "no client error when a shield dies"
        );
        let now = owner(&reply);
        if *was == 2 {
            assert_ne!(now, 2);
            moved += 1;
        } else {
            assert_eq!(now, *was, "{target} moved off a healthy shield");
        }
    }
    let share = f64::from(moved) / 400.0;
    assert!(
        (0.18..=0.32).contains(&share),
        "moved share {share}, expected 1/4"
    );
}

/// One origin, one shield and one edge hashing over it: every node shares the node token.
async fn tiers() -> Topology {
    Topology::start(1, 1, 1, OriginPool::default()).await
}

/// Pushes purge `seq` (the objects tagged `tag`) to the node whose admin listener is
/// `admin`, as the purge API does.
async fn push_tag_purge(admin: SocketAddr, seq: u64, tag: &str) {
    let batch = PurgeBatch {
        purges: vec![SequencedPurge {
            seq,
            purge: Purge {
                site: "assets".into(),
                selector: Selector::Tags(vec![tag.into()]),
                mode: Mode::Hard,
            },
        }],
    };
    let body = serde_json::to_string(&batch).expect("a batch encodes");
    let token = [("cdn-node-token", NODE_TOKEN)];
    let reply = api_call_with(admin, Method::POST, "/v1/purge", None, &token, &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

fn tags(reply: &Reply) -> (&str, &str) {
    (reply.header("surrogate-key"), reply.header("cache-tag"))
}

#[tokio::test]
async fn tags_reach_the_edges_but_never_leave_the_cdn() {
    let t = tiers().await;
    let tagged = "/tags/1k.bin?h.surrogate-key=grp-1%20grp-2&h.cache-tag=blue";
    // The edge, the last hop, answers without them: the miss, a hit on the fast path and
    // a range on the full path.
    let miss = t.get(0, tagged).await;
    let hit = t.get(0, tagged).await;
    let ranged = t.edge_send(0, tagged, &[("range", "bytes=0-9")]).await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    for reply in [&miss, &hit, &ranged] {
        assert!(reply.status.is_success(), "{}", reply.status);
        assert_eq!(tags(reply), ("", ""), "{}", reply.cache_status());
    }
    // Nor a response it may not store (handed to the request that fetched it), nor the
    // next request for it, passed through by the hit-for-pass marker.
    let private = "/tags/private.bin?cc=private&h.surrogate-key=grp-3";
    for _ in 0..2 {
        let reply = t.get(0, private).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(tags(&reply), ("", ""), "{}", reply.cache_status());
    }
    // The shield, whose clients are edges, passes them on.
    let from_shield = t.shield_get(0, tagged).await.expect("an answer");
    assert!(from_shield.cache_status().contains("hit"));
    assert_eq!(tags(&from_shield), ("grp-1 grp-2", "blue"));
    // And the edge learnt them before removing them: a purge of one tag reaches its copy.
    push_tag_purge(t.edges[0].admin_addr(), 1, "grp-2").await;
    let after = t.get(0, tagged).await;
    assert!(
        after.cache_status().contains("fwd=uri-miss"),
        "{}",
        after.cache_status()
    );
}

/// A request signed with the node token, claiming purge position `seq`: what an edge's
/// fill sends its shield.
fn signed_claim(target: &str, seq: u64) -> Vec<(String, String)> {
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::HOST, http::HeaderValue::from_static(HOST));
    let claims = NodeClaims {
        purge_seq: Some(seq),
    };
    NodeKey::new(NODE_TOKEN).sign(&mut headers, &Method::GET, target, claims);
    headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("cdn-"))
        .map(|(name, value)| (name.to_string(), value.to_str().expect("ASCII").to_owned()))
        .collect()
}

#[tokio::test]
async fn a_proven_purge_position_counts_at_a_shield_and_is_ignored_at_an_edge() {
    let t = tiers().await;
    let target = "/claims/signed.bin";
    assert_eq!(t.get(0, target).await.status, StatusCode::OK);
    let claim = signed_claim(target, 99_999_999);
    let claim: Vec<(&str, &str)> = claim
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    // An edge's clients are browsers: no claim counts there, proof or not.
    let at_edge = t.edge_send(0, target, &claim).await;
    assert!(
        at_edge.cache_status().contains("hit"),
        "{}",
        at_edge.cache_status()
    );
    assert_eq!(t.origins[0].hits(target), 1);
    // A shield's clients are edges: one that applied purges the shield has not gets a
    // fresh copy, not the shield's.
    let at_shield = t.shield_send(0, target, &claim).await;
    assert!(
        at_shield.cache_status().contains("fwd=uri-miss"),
        "{}",
        at_shield.cache_status()
    );
    assert_eq!(t.origins[0].hits(target), 2);
}

#[tokio::test]
async fn a_shield_s_fills_carry_no_internal_header_to_the_origin() {
    let t = tiers().await;
    // Both nodes have applied a purge, so both have a position to claim.
    for admin in [
        t.edges[0].admin_addr(),
        t.shields[0].as_ref().expect("shield").admin_addr(),
    ] {
        push_tag_purge(admin, 1, "nothing-tagged").await;
    }
    for field in ["cdn-purge-seq", "cdn-node-proof"] {
        let echoed = t.get(0, &format!("/claims/echo.bin?vary={field}")).await;
        assert!(
            echoed.text().starts_with(&format!("{field}=-\n")),
            "the origin received {}",
            echoed.text()
        );
    }
}
