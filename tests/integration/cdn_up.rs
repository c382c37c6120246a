//! The whole CDN as `cdn up` runs it: the default topology (three regions of two edges, a
//! shield, the demo origin, GeoDNS, the purge API) on loopback, driven the way its users
//! drive it: browsers resolve and fetch, publishers purge, operators drill and warm.

use crate::support;

use std::collections::HashSet;
use std::time::Duration;

use cdn::drill::{self, DrillOptions};
use cdn::warm::{self, Source, WarmOptions};
use http::{Method, StatusCode};
use support::local_cdn::LocalCdn;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_then_edge_then_shield_then_origin_serves_an_asset() {
    let cdn = LocalCdn::start(&[]).await;
    for region in ["eu-west", "us-east", "ap-southeast"] {
        let (answered, addresses) = cdn.resolve(region).await;
        assert_eq!(answered, region, "clients of {region} go to {region}");
        let theirs: HashSet<_> = cdn
            .endpoints()
            .region(region)
            .expect("region")
            .edges
            .iter()
            .map(|e| e.public.ip())
            .collect();
        assert_eq!(addresses.iter().copied().collect::<HashSet<_>>(), theirs);
    }

    let target = "/obj/16k.bin";
    let (_, addresses) = cdn.resolve("us-east").await;
    let (name, at) = cdn.edge_at(addresses[0]);
    let first = cdn.get(at, target).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body.len(), 16 * 1024);
    assert!(first.cache_status().contains("fwd=uri-miss"), "{first:?}");
    let via = first.header("via");
    assert!(via.contains("shield-1") && via.contains(&name), "{via}");
    let again = cdn.get(at, target).await;
    assert!(again.cache_status().contains("hit"), "{again:?}");
    assert_eq!(again.body, first.body);

    // Another region's edge misses, but the shield has it: the origin saw one request.
    let (_, addresses) = cdn.resolve("ap-southeast").await;
    let (_, far) = cdn.edge_at(addresses[0]);
    let other = cdn.get(far, target).await;
    assert_eq!(other.body, first.body);
    assert!(
        other.header("cache-status").contains("shield-1; hit"),
        "{other:?}"
    );
    assert_eq!(cdn.origin_hits(target), 1);
    cdn.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_reaches_every_node() {
    let cdn = LocalCdn::start(&[]).await;
    let target = "/obj/purged.bin";
    let edges: Vec<_> = cdn.endpoints().edges().map(|(_, e)| e.public).collect();
    for at in &edges {
        cdn.get(*at, target).await;
        assert!(cdn.get(*at, target).await.cache_status().contains("hit"));
    }
    let body = format!(
        r#"{{"site":"demo","urls":["http://{}{target}"]}}"#,
        cdn.site()
    );
    let accepted = cdn.purge_api(Method::POST, "/v1/purge", &body).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.text());
    let id: serde_json::Value = serde_json::from_slice(&accepted.body).expect("JSON");
    let status = cdn
        .purge_api(
            Method::GET,
            &format!("/v1/purges/{}?wait=10s", id["id"].as_str().expect("id")),
            "",
        )
        .await;
    let status: serde_json::Value = serde_json::from_slice(&status.body).expect("JSON");
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["nodes"]["applied"], 7, "six edges and the shield");
    for at in &edges {
        let after = cdn.get(*at, target).await;
        assert!(
            !after.cache_status().contains("hit"),
            "purged at {at}: {after:?}"
        );
    }
    // The shield was purged too: the edges' refetches reached the origin once more.
    assert_eq!(cdn.origin_hits(target), 2);
    cdn.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_moves_a_regions_clients_to_the_nearest_region_and_back() {
    let cdn = LocalCdn::start(&[]).await;
    let options = DrillOptions {
        poll: Duration::from_millis(20),
        timeout: Duration::from_secs(15),
        settle: Duration::from_millis(600),
        ..DrillOptions::default()
    };
    let mut events = 0;
    let report = drill::run(cdn.endpoints(), "eu-west", &options, |_| events += 1)
        .await
        .expect("the drill completes");
    assert_eq!(report.before.region, "eu-west");
    // London's next nearest region is New York, not Singapore.
    assert_eq!(report.failover.region, "us-east");
    assert_eq!(report.dead_answers, 0, "{report:?}");
    assert!(report.settled_answers > 5, "{report:?}");
    assert_eq!(report.recovery.region, "eu-west");
    assert!(events >= 5, "progress was reported");
    // The edges are back in rotation and serve again.
    let (region, _) = cdn.resolve("eu-west").await;
    assert_eq!(region, "eu-west");

    let unknown = drill::run(cdn.endpoints(), "mars", &options, |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(unknown.contains("no region \"mars\""), "{unknown}");
    cdn.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_fills_the_target_region_with_the_sources_hottest_objects() {
    let cdn = LocalCdn::start(&[]).await;
    let hot: Vec<String> = (0..6).map(|i| format!("/obj/hot-{i}.bin")).collect();
    for (i, target) in hot.iter().enumerate() {
        for _ in 0..=i {
            cdn.get(cdn.edge("eu-west-1"), target).await;
        }
    }
    let options = WarmOptions {
        top: 4,
        concurrency: 3,
        rate: 500,
    };
    let updates = std::sync::atomic::AtomicU64::new(0);
    let report = warm::run(
        cdn.endpoints(),
        &Source::Region("eu-west".into()),
        "us-east",
        &options,
        |_| {
            updates.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        },
    )
    .await
    .expect("warming runs");
    assert_eq!((report.urls, report.requests), (4, 8), "{report:?}");
    assert_eq!((report.filled, report.failed), (8, 0), "{report:?}");
    assert_eq!(updates.into_inner(), 8);
    // The four hottest are now hits in both us-east edges; the coldest were not copied.
    for edge in ["us-east-1", "us-east-2"] {
        for target in &hot[2..] {
            let reply = cdn.get(cdn.edge(edge), target).await;
            assert!(
                reply.cache_status().contains("hit"),
                "{edge} {target}: {reply:?}"
            );
        }
        let cold = cdn.get(cdn.edge(edge), &hot[0]).await;
        assert!(!cold.cache_status().contains("hit"), "{edge}: {cold:?}");
    }
    // The shield collapsed both edges' fills: each object reached the origin once.
    for target in &hot {
        assert_eq!(cdn.origin_hits(target), 1, "{target}");
    }

    let unknown = warm::run(
        cdn.endpoints(),
        &Source::Urls(vec!["ftp://x/y".into()]),
        "us-east",
        &options,
        |_| {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(unknown.contains("not an absolute http:// URL"), "{unknown}");
    cdn.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_sheds_misses_with_retry_after_and_keeps_serving_hits() {
    let cdn = LocalCdn::start(&[
        ("max_upstream = 256", "max_upstream = 2"),
        ("queue_timeout = \"1s\"", "queue_timeout = \"100ms\""),
    ])
    .await;
    let edge = cdn.edge("eu-west-1");
    cdn.get(edge, "/obj/hot.bin").await;
    // Twice the slots in slow misses: two are admitted, the others wait 100 ms and are shed.
    let misses: Vec<_> = (0..6)
        .map(|i| {
            let cdn = &cdn;
            async move {
                cdn.get(edge, &format!("/obj/slow-{i}.bin?delay_ms=1500"))
                    .await
            }
        })
        .collect();
    let hits = async {
        let mut statuses = Vec::new();
        for _ in 0..20 {
            let reply = cdn.get(edge, "/obj/hot.bin").await;
            statuses.push((reply.status, reply.cache_status().contains("hit")));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        statuses
    };
    let (misses, hits) = tokio::join!(futures_util::future::join_all(misses), hits);
    assert!(
        hits.iter().all(|(s, hit)| *s == StatusCode::OK && *hit),
        "hits keep flowing: {hits:?}"
    );
    let served: Vec<_> = misses
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .collect();
    let shed: Vec<_> = misses
        .iter()
        .filter(|r| r.status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!((served.len(), shed.len()), (2, 4), "{misses:?}");
    for reply in served {
        assert_eq!(reply.body.len(), 1024, "an admitted miss is answered whole");
    }
    for reply in shed {
        assert_eq!(reply.header("retry-after"), "1");
        assert!(
            reply.text().contains("limit of 2 upstream requests"),
            "{}",
            reply.text()
        );
    }
    cdn.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_over_capacity_spills_a_share_of_its_clients_to_the_next_region() {
    let cdn = LocalCdn::start(&[(
        "clients = [\"10.1.0.0/16\"]",
        "clients = [\"10.1.0.0/16\"]\ncapacity = 4\nspill = 0.5",
    )])
    .await;
    let dns = cdn.endpoints().geodns.dns;
    let site = cdn.site().to_owned();
    // 64 resolvers' client networks inside eu-west's /16.
    let ask_all = || async {
        let mut regions = Vec::new();
        for x in 0..64u8 {
            let ecs = (std::net::IpAddr::from([10, 1, x, 0]), 24);
            let query =
                support::dns::query(&site, hickory_proto::rr::RecordType::A, None, Some(ecs));
            let reply = support::dns::udp(dns, &query).await;
            regions.push(support::dns::cname(&reply).expect("CNAME"));
        }
        regions
    };
    let home = |regions: &[String]| regions.iter().filter(|r| r.starts_with("eu-west.")).count();
    assert_eq!(home(&ask_all().await), 64, "under capacity, all stay home");

    // Ten open connections to an eu-west edge: over the region's capacity of 4, as the
    // edge reports on /healthz and GeoDNS's probes read.
    let edge = cdn.edge("eu-west-1");
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(tokio::net::TcpStream::connect(edge).await.expect("connect"));
    }
    let mut seen = false;
    for _ in 0..100 {
        if home(&ask_all().await) < 64 {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "GeoDNS saw the load within 10 s");
    // That round may have straddled the probe that saw the load; the held connections keep
    // it seen, so the next round is answered in one state throughout.
    let regions = ask_all().await;
    assert!(
        regions
            .iter()
            .all(|r| r.starts_with("eu-west.") || r.starts_with("us-east.")),
        "spilled clients go to the next nearest region: {regions:?}"
    );
    let spilled = 64 - home(&regions);
    assert!(
        (16..=48).contains(&spilled),
        "about half spill: {spilled} of 64"
    );

    drop(held);
    let mut back = false;
    for _ in 0..100 {
        if home(&ask_all().await) == 64 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        back,
        "with the load gone, every client is answered with eu-west again"
    );
    cdn.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_gets_a_disk_tier_in_a_temporary_directory_removed_on_exit() {
    let topology = support::local_cdn::topology(&[]);
    let up = cdn::up::Up::start_with_disks(&topology, cdn::up::Disks::Temporary)
        .await
        .expect("cdn up starts");
    let banner = up.banner("");
    let line = banner
        .lines()
        .find(|l| l.trim_start().starts_with("disk caches"))
        .unwrap_or_else(|| panic!("no disk line in\n{banner}"));
    assert!(line.contains("temporary, removed on exit"), "{line}");
    let root = std::path::PathBuf::from(
        line.trim_start()
            .trim_start_matches("disk caches")
            .trim_start()
            .split(' ')
            .next()
            .expect("a path"),
    );
    for edge in &up.edges {
        assert!(
            edge.edge().store().hybrid().is_some(),
            "{}",
            edge.edge().name()
        );
        assert!(root.join(edge.edge().name()).join("state.redb").exists());
    }
    for shield in &up.shields {
        assert!(shield.engine().store().hybrid().is_some());
    }
    up.shutdown().await;
    assert!(!root.exists(), "{} removed on exit", root.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topology_reload_adds_a_site_to_every_edge_geodns_and_the_purge_api() {
    let mut cdn = LocalCdn::start(&[]).await;
    let warm = "/obj/kept-warm.bin";
    let edge = cdn.edge("eu-west-1");
    cdn.get(edge, warm).await;
    assert!(cdn.get(edge, warm).await.cache_status().contains("hit"));

    // The same topology again changes nothing anywhere.
    let same = support::local_cdn::topology(&[]);
    let reloaded = cdn.up.reload(&same).expect("the same topology reloads");
    assert_eq!(reloaded.nodes.len(), 7, "six edges and the shield");
    for (node, changed) in &reloaded.nodes {
        assert!(
            changed.added.is_empty() && changed.changed.is_empty() && changed.sections.is_empty(),
            "{node}: {changed:?}"
        );
    }

    let more_host = "more.publisher.example";
    let next = support::local_cdn::topology(&[
        (
            "[[publisher]]",
            &format!(
                "[[site]]\nname = \"more\"\ncname = \"more\"\nhosts = [\"{more_host}\"]\norigins = [\"demo\"]\n\n[[publisher]]"
            ),
        ),
        ("sites = [\"demo\"]", "sites = [\"demo\", \"more\"]"),
    ]);
    let client = support::client();
    assert_eq!(
        support::send(&client, edge, Method::GET, "/obj/m.bin", more_host, &[])
            .await
            .status,
        StatusCode::MISDIRECTED_REQUEST,
        "no such site before the reload"
    );
    let reloaded = cdn.up.reload(&next).expect("a new site reloads");
    assert!(
        reloaded.to_string().contains("added [\"more\"]"),
        "{reloaded}"
    );

    // Every edge serves it, through the shield, from the origin.
    for (_, node) in cdn.endpoints().edges() {
        let reply = support::send(
            &client,
            node.public,
            Method::GET,
            "/obj/m.bin",
            more_host,
            &[],
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{}: {}",
            node.name,
            reply.text()
        );
    }
    // GeoDNS answers its name with a region.
    let zone = cdn.endpoints().zone.clone();
    let query = support::dns::query(
        &format!("more.{zone}"),
        hickory_proto::rr::RecordType::A,
        None,
        Some(cdn.client_of("eu-west")),
    );
    let reply = support::dns::udp(cdn.endpoints().geodns.dns, &query).await;
    let cname = support::dns::cname(&reply).expect("a CNAME for the new site");
    assert!(cname.starts_with("eu-west."), "{cname}");
    assert!(cdn.endpoints().sites.iter().any(|s| s.name == "more"));
    // The purge API takes purges of it.
    let body = format!(r#"{{"site":"more","urls":["http://{more_host}/obj/m.bin"]}}"#);
    let accepted = cdn.purge_api(Method::POST, "/v1/purge", &body).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.text());
    // And the cache stayed warm.
    assert!(cdn.get(edge, warm).await.cache_status().contains("hit"));

    // Moving a node is a restart, refused before anything changes.
    let moved =
        support::local_cdn::topology(&[("\"127.0.1.1:0\", admin", "\"127.0.1.9:0\", admin")]);
    let refused = cdn.up.reload(&moved).expect_err("a moved edge is refused");
    assert!(refused.to_string().contains("restart"), "{refused}");
    cdn.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_region_loses_no_request_and_comes_back_warm() {
    let cdn = LocalCdn::start(&[("ttl = 20", "ttl = 2")]).await;
    let options = DrillOptions {
        poll: Duration::from_millis(20),
        timeout: Duration::from_secs(15),
        settle: Duration::from_millis(500),
        mode: drill::Mode::Drain,
        load: Some(cdn::clients::Load {
            rate: 100.0,
            clients: 10,
            urls: 50,
            ..Default::default()
        }),
        phase: Duration::from_secs(3),
        after: Duration::from_secs(5),
        warm_before_restore: Some(WarmOptions {
            top: 50,
            ..WarmOptions::default()
        }),
    };
    let report = drill::run(cdn.endpoints(), "eu-west", &options, |_| {})
        .await
        .expect("the drill runs");
    for phase in &report.phases {
        assert_eq!(
            phase.clients.failed(),
            0,
            "{}: {:?}",
            phase.name,
            phase.clients
        );
    }
    assert_eq!(report.failure_window, Some(Duration::ZERO));
    let warmed = report.warmed.as_ref().expect("warmed before the way back");
    assert!(warmed.urls > 0 && warmed.failed == 0, "{warmed:?}");
    let after = report.phases.last().expect("phases");
    assert_eq!(after.name, "after");
    assert!(after.clients.served_by.contains_key("eu-west"), "{after:?}");
    assert!(after.clients.hit_ratio >= 0.8, "{after:?}");
    let origin = after.origin_requests.expect("the demo origin counts");
    assert!(
        origin <= warmed.urls as u64,
        "{origin} origin requests after {warmed:?}"
    );
    cdn.shutdown().await;
}
