//! GeoDNS through real DNS packets over UDP and TCP: nearest-region steering by ECS or
//! source address, failover when a region's edges die (their port refusing, or hanging)
//! and back, RFC answers for every kind of name, and bad packets answered with the right
//! error codes.

use crate::support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cdn::demo_origin::DemoOrigin;
use geodns::geo::Coordinates;
use geodns::{GeoDnsConfig, GeoDnsServer};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::{RData, RecordType};
use support::dns::{
    addresses, cname, ecs, query, tcp, tcp_after, tcp_raw, udp, udp_after, udp_raw,
};
use support::loopback;

const CUSTOMER: &str = "publisher.cdn.test.";
const EU: &str = "192.0.2.10";
const US: &str = "198.51.100.10";
const AP: &str = "203.0.113.10";

/// Clients in the test database: Paris, New York, Sydney (IPv6).
const PARIS: &str = "100.64.1.0";
const NEW_YORK: &str = "100.64.2.0";
const SYDNEY: &str = "2001:db8:5::";

struct Dns {
    server: GeoDnsServer,
    /// One health endpoint per region (eu, us, ap, big), as the edges' admin ports.
    edges: Vec<DemoOrigin>,
    _dir: tempfile::TempDir,
}

impl Dns {
    async fn start() -> Self {
        Self::start_with(None, "").await
    }

    /// As [`Dns::start`], with the eu region's probe URL replaced and `eu_extra` added to
    /// its table.
    async fn start_with(eu_probe: Option<String>, eu_extra: &str) -> Self {
        Self::start_configured(eu_probe, eu_extra, "").await
    }

    /// As [`Dns::start_with`], with `tail` (more tables) at the end of the config.
    async fn start_configured(eu_probe: Option<String>, eu_extra: &str, tail: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mmdb = dir.path().join("test-city.mmdb");
        let net = |s: &str| s.parse::<ipnet::IpNet>().expect("net");
        geodns::testing::write_mmdb(
            &mmdb,
            &[
                (
                    net("100.64.1.0/24"),
                    Coordinates {
                        lat: 48.86,
                        lon: 2.35,
                    },
                ),
                (
                    net("100.64.2.0/24"),
                    Coordinates {
                        lat: 40.71,
                        lon: -74.01,
                    },
                ),
                (
                    net("2001:db8:5::/48"),
                    Coordinates {
                        lat: -33.87,
                        lon: 151.21,
                    },
                ),
            ],
        )
        .expect("test mmdb");
        let mut edges = Vec::new();
        for _ in 0..4 {
            edges.push(
                DemoOrigin::start(loopback())
                    .await
                    .expect("edge health endpoint"),
            );
        }
        let probe = |i: usize| format!("http://{}/healthz", edges[i].addr());
        let big: Vec<String> = (1..=60)
            .map(|i| format!("{{ address = \"10.9.0.{i}\", probe = \"{}\" }}", probe(3)))
            .collect();
        let text = format!(
            r#"
            [node]
            listen = "127.0.0.1:0"
            admin_listen = "127.0.0.1:0"

            [zone]
            name = "cdn.test"
            ttl = 20
            max_answers = 60
            nameservers = [{{ name = "ns1.cdn.test", addresses = ["192.0.2.53"] }}]

            [geo]
            database = "{mmdb}"
            default_region = "eu"
            overrides = [{{ cidr = "127.0.0.0/8", region = "us" }}, {{ cidr = "10.99.0.0/16", region = "big" }}]

            [health]
            interval = "50ms"
            timeout = "500ms"
            rise = 2
            fall = 2

            [[region]]
            name = "eu"
            lat = 50.11
            lon = 8.68
            {eu_extra}
            edge = [{{ address = "{EU}", probe = "{eu}" }}, {{ address = "2001:db8:e::10", probe = "{eu}" }}]

            [[region]]
            name = "us"
            lat = 39.04
            lon = -77.49
            edge = [{{ address = "{US}", probe = "{us}" }}]

            [[region]]
            name = "ap"
            lat = 35.68
            lon = 139.69
            edge = [{{ address = "{AP}", probe = "{ap}" }}]

            [[region]]
            name = "big"
            lat = -60.0
            lon = 30.0
            edge = [{big}]

            [[customer]]
            name = "publisher"

            {tail}
            "#,
            mmdb = mmdb.display(),
            eu = eu_probe.unwrap_or_else(|| probe(0)),
            us = probe(1),
            ap = probe(2),
            big = big.join(", "),
        );
        let path = dir.path().join("geodns.toml");
        std::fs::write(&path, &text).expect("write config");
        let config = GeoDnsConfig::from_toml(&text).expect("valid test config");
        let server = GeoDnsServer::start(config, Some(path))
            .await
            .expect("geodns starts");
        Self {
            server,
            edges,
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.dns_addr()
    }

    /// The customer name's answer for a client in `subnet` (a /24 or /48 via ECS).
    async fn from(&self, subnet: &str) -> Message {
        let ip: IpAddr = subnet.parse().expect("ip");
        let prefix = if ip.is_ipv4() { 24 } else { 48 };
        udp(
            self.addr(),
            &query(CUSTOMER, RecordType::A, Some(1232), Some((ip, prefix))),
        )
        .await
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[tokio::test]
async fn clients_from_different_subnets_get_their_nearest_region() {
    let dns = Dns::start().await;
    // Paris's /24 joins the unknown /24 below it, which the default region (eu) serves
    // too: one answer for 100.64.0.0/23. New York's is alone between the two.
    for (client, region, edge, scope) in [(PARIS, "eu", EU, 23), (NEW_YORK, "us", US, 24)] {
        let reply = dns.from(client).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.metadata.authoritative);
        assert_eq!(
            cname(&reply).as_deref(),
            Some(format!("{region}.edge.cdn.test").as_str())
        );
        assert_eq!(addresses(&reply), vec![ip(edge)], "{client}");
        assert!(reply.answers.iter().all(|r| r.ttl == 20));
        assert_eq!(
            ecs(&reply),
            Some((ip(client), 24, scope)),
            "scope of the answer"
        );
    }
    let sydney = udp(
        dns.addr(),
        &query(
            CUSTOMER,
            RecordType::AAAA,
            Some(1232),
            Some((ip(SYDNEY), 48)),
        ),
    )
    .await;
    assert_eq!(cname(&sydney).as_deref(), Some("ap.edge.cdn.test"));
    assert_eq!(ecs(&sydney), Some((ip(SYDNEY), 48, 48)));
    // The eu region's IPv6 edge answers AAAA for a Paris client.
    let aaaa = udp(
        dns.addr(),
        &query(
            CUSTOMER,
            RecordType::AAAA,
            Some(1232),
            Some((ip(PARIS), 24)),
        ),
    )
    .await;
    assert_eq!(addresses(&aaaa), vec![ip("2001:db8:e::10")]);
}

/// The first and last address of `ip`'s network of prefix length `scope`, and two more
/// inside it, drawn from `seed`.
fn across(ip: IpAddr, scope: u8, seed: u64) -> Vec<IpAddr> {
    let mix = |i: u64| seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) ^ i;
    match ip {
        IpAddr::V4(v4) => {
            let host = u32::MAX.checked_shr(u32::from(scope)).unwrap_or(0);
            let first = u32::from(v4) & !host;
            [0, host, mix(1) as u32 & host, mix(2) as u32 & host]
                .map(|offset| IpAddr::V4((first | offset).into()))
                .to_vec()
        }
        IpAddr::V6(v6) => {
            let host = u128::MAX.checked_shr(u32::from(scope)).unwrap_or(0);
            let first = u128::from(v6) & !host;
            let random = |i| (u128::from(mix(i)) << 64 | u128::from(mix(i + 7))) & host;
            [0, host, random(1), random(2)]
                .map(|offset| IpAddr::V6((first | offset).into()))
                .to_vec()
        }
    }
}

#[tokio::test]
async fn every_address_inside_an_ecs_scope_gets_the_same_answer() {
    let dns = Dns::start().await;
    let answer = |ip: IpAddr, source: u8| {
        let q = query(CUSTOMER, RecordType::A, Some(1232), Some((ip, source)));
        let addr = dns.addr();
        async move {
            let reply = udp(addr, &q).await;
            let (_, _, scope) = ecs(&reply).expect("an ECS option in the answer");
            (cname(&reply), scope)
        }
    };
    let mut probed = 0;
    let mut wider_than_24 = 0;
    for i in 0..200u64 {
        // Around the test database's networks and the overrides, and anywhere.
        let seed = i.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let client = match i % 5 {
            0 | 1 => IpAddr::V4((0x6440_0000 | (seed as u32 & 0x03ff)).into()),
            2 => IpAddr::V4(((seed >> 7) as u32 & 0xffff_ff00).into()),
            3 => IpAddr::V6((0x2001_0db8_0005_u128 << 80 | u128::from(seed) << 40).into()),
            _ => IpAddr::V4((0x0a63_0000 | (seed as u32 & 0x0003_ff00)).into()),
        };
        let source = if client.is_ipv4() { 24 } else { 48 };
        let client = match client {
            IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & 0xffff_ff00).into()),
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !(u128::MAX >> 48)).into()),
        };
        let (region, scope) = answer(client, source).await;
        assert!(region.is_some(), "{client}");
        // Not counting the override's clients (its /16 was always their scope): the
        // database's networks and the unknown space between them had /24 scopes.
        wider_than_24 += usize::from(i % 5 <= 2 && client.is_ipv4() && scope < 24);
        for inside in across(client, scope, seed) {
            let full = if inside.is_ipv4() { 32 } else { 128 };
            assert_eq!(
                answer(inside, full).await.0,
                region,
                "{inside} inside /{scope} of {client}"
            );
            probed += 1;
        }
    }
    assert_eq!(probed, 800);
    assert!(wider_than_24 > 20, "scopes join networks: {wider_than_24}");
}

#[tokio::test]
async fn without_ecs_the_source_address_locates_and_unknown_clients_get_the_default() {
    let dns = Dns::start().await;
    // 127.0.0.1 is pinned to "us" by a CIDR override.
    let plain = udp(dns.addr(), &query(CUSTOMER, RecordType::A, None, None)).await;
    assert_eq!(cname(&plain).as_deref(), Some("us.edge.cdn.test"));
    assert!(
        plain.edns.is_none(),
        "no OPT in answer to a query without one"
    );
    let unknown = dns.from("100.100.100.0").await;
    assert_eq!(
        cname(&unknown).as_deref(),
        Some("eu.edge.cdn.test"),
        "default region"
    );
}

/// Polls Paris clients' answer until it names `region`: how long that took, or `None` when
/// it still did not after `within`.
async fn paris_moves_to(dns: &Dns, region: &str, within: Duration) -> Option<Duration> {
    let target = format!("{region}.edge.cdn.test");
    let started = Instant::now();
    while started.elapsed() < within {
        if cname(&dns.from(PARIS).await).as_deref() == Some(target.as_str()) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Takes the eu region's health endpoint away (all eu edges share it); its address.
async fn kill_eu(dns: &mut Dns) -> SocketAddr {
    let eu = dns.edges.remove(0);
    let addr = eu.addr();
    eu.shutdown().await;
    addr
}

#[tokio::test]
async fn killing_a_regions_edges_moves_its_clients_and_recovery_moves_them_back() {
    let mut dns = Dns::start().await;
    assert_eq!(
        cname(&dns.from(PARIS).await).as_deref(),
        Some("eu.edge.cdn.test")
    );
    // The edges' health endpoint is shut down: its port refuses connections.
    let eu = kill_eu(&mut dns).await;
    let refused = tokio::net::TcpStream::connect(eu).await.map(|_| ());
    assert!(
        matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "the killed endpoint still takes connections: {refused:?}"
    );
    let moved = paris_moves_to(&dns, "us", Duration::from_secs(5))
        .await
        .expect("Paris clients never left the dead region");
    // fall (2) x interval (50 ms), plus a probe round in flight.
    assert!(moved < Duration::from_secs(2), "failover took {moved:?}");
    for _ in 0..50 {
        let reply = dns.from(PARIS).await;
        assert!(
            !addresses(&reply).contains(&ip(EU)),
            "a dead edge was answered"
        );
        assert_eq!(addresses(&reply), vec![ip(US)]);
    }
    // The dead region's own name answers with its nearest healthy neighbour's edges.
    let own = udp(
        dns.addr(),
        &query("eu.edge.cdn.test.", RecordType::A, None, None),
    )
    .await;
    assert_eq!(addresses(&own), vec![ip(US)]);

    // The endpoint comes back on its port.
    let _back = DemoOrigin::start(eu)
        .await
        .expect("the health endpoint restarts on its port");
    paris_moves_to(&dns, "eu", Duration::from_secs(5))
        .await
        .expect("Paris clients never moved back");
}

#[tokio::test]
async fn edges_that_accept_and_never_answer_time_out_and_their_clients_move() {
    let mut dns = Dns::start().await;
    assert_eq!(
        cname(&dns.from(PARIS).await).as_deref(),
        Some("eu.edge.cdn.test")
    );
    // The edges hang: their health endpoint's port accepts connections and holds them
    // without reading or writing, so every probe waits for its timeout (500 ms).
    let eu = kill_eu(&mut dns).await;
    let hung = tokio::net::TcpListener::bind(eu)
        .await
        .expect("the hung endpoint takes the port");
    let accepted = Arc::new(AtomicUsize::new(0));
    let holder = tokio::spawn({
        let accepted = accepted.clone();
        async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = hung.accept().await {
                held.push(stream);
                accepted.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    // fall (2) probe rounds of up to the timeout each, with room for a loaded machine.
    paris_moves_to(&dns, "us", Duration::from_secs(10))
        .await
        .expect("Paris clients never left the hung region");
    holder.abort();
    assert!(
        accepted.load(Ordering::Relaxed) > 0,
        "no probe reached the hung endpoint"
    );
    assert_eq!(addresses(&dns.from(PARIS).await), vec![ip(US)]);
}

#[tokio::test]
async fn every_kind_of_name_gets_its_rfc_answer() {
    let dns = Dns::start().await;
    let ask = |name: &'static str, qtype| {
        let addr = dns.addr();
        async move { udp(addr, &query(name, qtype, None, None)).await }
    };
    let soa = |m: &Message| {
        m.authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA)
    };

    let nx = ask("nothing.cdn.test.", RecordType::A).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(nx.metadata.authoritative && soa(&nx) && nx.answers.is_empty());

    let outside = ask("example.org.", RecordType::A).await;
    assert_eq!(outside.metadata.response_code, ResponseCode::Refused);
    assert!(!outside.metadata.authoritative);

    let ent = ask("edge.cdn.test.", RecordType::A).await;
    assert_eq!(
        ent.metadata.response_code,
        ResponseCode::NoError,
        "empty non-terminal"
    );
    assert!(ent.answers.is_empty() && soa(&ent));

    let nodata = ask("us.edge.cdn.test.", RecordType::MX).await;
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty() && soa(&nodata));

    let mx = ask(CUSTOMER, RecordType::MX).await;
    assert_eq!(cname(&mx).as_deref(), Some("us.edge.cdn.test"));
    assert_eq!(mx.answers.len(), 1, "a CNAME alone answers other types");

    let apex_soa = ask("cdn.test.", RecordType::SOA).await;
    assert!(matches!(&apex_soa.answers[0].data, RData::SOA(_)));
    let ns = ask("cdn.test.", RecordType::NS).await;
    assert!(matches!(&ns.answers[0].data, RData::NS(_)));
    let mut glue_only = ns.clone();
    glue_only.answers = ns.additionals.clone();
    assert_eq!(addresses(&glue_only), vec![ip("192.0.2.53")], "glue");

    let glue = ask("ns1.cdn.test.", RecordType::A).await;
    assert_eq!(addresses(&glue), vec![ip("192.0.2.53")]);

    let region = ask("ap.edge.cdn.test.", RecordType::A).await;
    assert_eq!(addresses(&region), vec![ip(AP)]);
    let case = ask("PuBlIsHeR.CDN.test.", RecordType::A).await;
    assert_eq!(
        cname(&case).as_deref(),
        Some("us.edge.cdn.test"),
        "names are case-insensitive"
    );
}

#[tokio::test]
async fn large_answers_truncate_over_udp_and_arrive_whole_over_tcp() {
    let dns = Dns::start().await;
    let big = Some((ip("10.99.1.0"), 24));
    let plain = udp(dns.addr(), &query(CUSTOMER, RecordType::A, None, big)).await;
    // ECS implies EDNS here; a query without EDNS at all gets at most 512 bytes.
    let no_edns = {
        let mut q = query("big.edge.cdn.test.", RecordType::A, None, None);
        q.edns = None;
        udp(dns.addr(), &q).await
    };
    assert!(
        no_edns.metadata.truncation,
        "60 A records do not fit 512 bytes"
    );
    let over_tcp = tcp(
        dns.addr(),
        &query("big.edge.cdn.test.", RecordType::A, None, None),
    )
    .await;
    assert!(!over_tcp.metadata.truncation);
    assert_eq!(addresses(&over_tcp).len(), 60);
    assert_eq!(cname(&plain).as_deref(), Some("big.edge.cdn.test"));
    let bytes = plain.to_vec().expect("encode").len();
    assert!(
        bytes <= 1232,
        "UDP answer of {bytes} bytes exceeds the advertised payload"
    );
}

#[tokio::test]
async fn bad_packets_and_odd_queries_get_error_codes_and_never_crash() {
    let dns = Dns::start().await;
    let addr = dns.addr();
    // Too short to be a header: dropped without an answer.
    assert_eq!(udp_raw(addr, &[0x12, 0x34, 0x01]).await, None);
    // A header that promises a question that is not there: FORMERR.
    let garbage = [
        0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff,
    ];
    let reply =
        Message::from_vec(&udp_raw(addr, &garbage).await.expect("an answer")).expect("parses");
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    // Two questions in one query: FORMERR.
    let mut two = query(CUSTOMER, RecordType::A, None, None);
    two.add_query(hickory_proto::op::Query::query(
        hickory_proto::rr::Name::from_ascii("cdn.test.").expect("name"),
        RecordType::SOA,
    ));
    assert_eq!(
        udp(addr, &two).await.metadata.response_code,
        ResponseCode::FormErr
    );
    // An opcode this server does not do: NOTIMP.
    let mut notify = query("cdn.test.", RecordType::SOA, None, None);
    notify.metadata.op_code = hickory_proto::op::OpCode::Notify;
    assert_eq!(
        udp(addr, &notify).await.metadata.response_code,
        ResponseCode::NotImp
    );
    // EDNS version 1: BADVERS.
    let mut v1 = query(CUSTOMER, RecordType::A, Some(1232), None);
    if let Some(edns) = v1.edns.as_mut() {
        edns.set_version(1);
    }
    // BADVERS shares code 16 with BADSIG (RFC 6891 9); the decoder names it BADSIG.
    assert_eq!(u16::from(udp(addr, &v1).await.metadata.response_code), 16);
    // An unknown type at the apex: NODATA; class CHAOS: REFUSED.
    let unknown = udp(
        addr,
        &query("cdn.test.", RecordType::Unknown(65280), None, None),
    )
    .await;
    assert_eq!(unknown.metadata.response_code, ResponseCode::NoError);
    assert!(unknown.answers.is_empty());
    let mut chaos = query("cdn.test.", RecordType::TXT, None, None);
    chaos.queries[0].set_query_class(hickory_proto::rr::DNSClass::CH);
    assert_eq!(
        udp(addr, &chaos).await.metadata.response_code,
        ResponseCode::Refused
    );
    // An oversized query (3 KB of junk after a valid question): not a crash.
    let mut oversized = query(CUSTOMER, RecordType::A, None, None)
        .to_vec()
        .expect("encode");
    oversized.extend(std::iter::repeat_n(0xab, 3000));
    let _ = udp_raw(addr, &oversized).await;
    // Still answering, over both transports.
    let reply = dns.from(PARIS).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    let over_tcp = tcp(addr, &query(CUSTOMER, RecordType::A, None, None)).await;
    assert_eq!(over_tcp.metadata.response_code, ResponseCode::NoError);
}

#[tokio::test]
async fn a_reload_applies_a_new_config_and_refuses_a_broken_one() {
    let dns = Dns::start().await;
    let path = dns._dir.path().join("geodns.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        text.replace("name = \"publisher\"", "name = \"shop\""),
    )
    .expect("write");
    dns.server.reload().expect("reload applies");
    let shop = udp(
        dns.addr(),
        &query("shop.cdn.test.", RecordType::A, None, None),
    )
    .await;
    assert_eq!(cname(&shop).as_deref(), Some("us.edge.cdn.test"));
    let gone = udp(dns.addr(), &query(CUSTOMER, RecordType::A, None, None)).await;
    assert_eq!(gone.metadata.response_code, ResponseCode::NXDomain);

    std::fs::write(&path, "this is not toml [").expect("write");
    assert!(dns.server.reload().is_err());
    let still = udp(
        dns.addr(),
        &query("shop.cdn.test.", RecordType::A, None, None),
    )
    .await;
    assert_eq!(
        cname(&still).as_deref(),
        Some("us.edge.cdn.test"),
        "the old config keeps serving"
    );
    let text = metrics(&dns).await;
    assert!(
        text.contains("geodns_config_reloads_total{result=\"refused\"} 1"),
        "{text}"
    );
    assert!(text.contains("region=\"us\""), "{text}");
}

#[tokio::test]
async fn a_region_over_capacity_spills_its_clients_to_the_next_nearest() {
    // A real edge's admin /healthz reports its open connections as the region's load.
    let origin = DemoOrigin::start(loopback()).await.expect("origin");
    let edge = edge::EdgeServer::start(support::config(origin.addr(), "", ""))
        .await
        .expect("edge");
    let probe = format!("http://{}/healthz", edge.admin_addr());
    let dns = Dns::start_with(Some(probe), "capacity = 0\nspill = 1.0").await;
    assert_eq!(
        cname(&dns.from(PARIS).await).as_deref(),
        Some("eu.edge.cdn.test")
    );

    // One client connection held open puts the region over its capacity of 0.
    let held = tokio::net::TcpStream::connect(edge.public_addr())
        .await
        .expect("connect");
    let mut spilled = false;
    for _ in 0..300 {
        if cname(&dns.from(PARIS).await).as_deref() == Some("us.edge.cdn.test") {
            spilled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(spilled, "an overloaded region kept its clients");
    drop(held);
    let mut back = false;
    for _ in 0..300 {
        if cname(&dns.from(PARIS).await).as_deref() == Some("eu.edge.cdn.test") {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(back, "clients did not return when the load went");
}

#[tokio::test]
async fn the_udp_fast_path_answers_exactly_as_the_general_path_does() {
    let dns = Dns::start().await;
    let mut compared = 0;
    let mut fast_expected = 0;
    for name in [CUSTOMER, "eu.edge.cdn.test.", "ap.edge.cdn.test."] {
        for qtype in [RecordType::A, RecordType::AAAA] {
            // ap has no IPv6 edge: its name's AAAA is NODATA with the SOA, which the fast
            // path leaves to the general one; everything else here is the fast path's.
            let on_fast_path = !(name == "ap.edge.cdn.test." && qtype == RecordType::AAAA);
            for (payload, ecs) in [
                (None, None),
                (Some(1232), None),
                (Some(4096), Some((ip(PARIS), 24))),
                (Some(1232), Some((ip(NEW_YORK), 24))),
                (Some(1232), Some((ip(SYDNEY), 48))),
                (Some(1232), Some((ip("100.64.1.77"), 0))),
            ] {
                let q = query(name, qtype, payload, ecs);
                let what = format!("{name} {qtype} {payload:?} {ecs:?}");
                // UDP takes the fast path for most of these; TCP always the general path,
                // which counts its answers at once (the fast path's come in batches).
                let before = queries(&metrics(&dns).await, "general", "udp");
                let fast = udp(dns.addr(), &q).await;
                let general_udp = queries(&metrics(&dns).await, "general", "udp") - before;
                assert_eq!(
                    general_udp,
                    u64::from(!on_fast_path),
                    "general path: {what}"
                );
                fast_expected += u64::from(on_fast_path);
                let general = tcp(dns.addr(), &q).await;
                assert_eq!(
                    fast.metadata.response_code, general.metadata.response_code,
                    "{what}"
                );
                assert_eq!(
                    fast.metadata.authoritative, general.metadata.authoritative,
                    "{what}"
                );
                assert_eq!(
                    fast.metadata.recursion_desired, general.metadata.recursion_desired,
                    "{what}"
                );
                assert_eq!(fast.answers, general.answers, "{what}");
                assert_eq!(fast.authorities, general.authorities, "{what}");
                assert_eq!(ecs_of(&fast), ecs_of(&general), "{what}");
                assert_eq!(fast.edns.is_some(), general.edns.is_some(), "{what}");
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 36);
    // Every UDP query the general path did not answer was answered by the fast path: its
    // count, added in batches once the loop idles, reaches exactly that many (never the
    // TCP queries).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = metrics(&dns).await;
    while queries(&text, "fast", "udp") < fast_expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        text = metrics(&dns).await;
    }
    assert_eq!(queries(&text, "fast", "udp"), fast_expected, "{text}");
    assert_eq!(queries(&text, "fast", "tcp"), 0, "{text}");
    assert_eq!(queries(&text, "general", "tcp"), 36, "{text}");
}

/// Asks each of `questions` over UDP and over TCP in every flavour a resolver sends (with
/// and without EDNS and Client Subnet, RD and CD set or not, the name in any case) and
/// checks that the UDP fast path answered it, with the bytes the general path sends over
/// TCP for the same query. Returns the TCP answers, one per question, without EDNS.
async fn static_answers_are_the_general_paths(
    dns: &Dns,
    questions: &[(&str, RecordType)],
) -> Vec<Message> {
    let flavours = [
        (None, None),
        (Some(1232), None),
        (Some(4096), Some((ip(PARIS), 24))),
        (Some(1232), Some((ip(SYDNEY), 48))),
        (Some(512), Some((ip("100.64.1.77"), 0))),
    ];
    let mut plain = Vec::new();
    let mut i = 0usize;
    for (name, qtype) in questions {
        for (payload, ecs) in flavours {
            i += 1;
            let asked = if i.is_multiple_of(2) {
                name.to_ascii_uppercase()
            } else {
                name.to_string()
            };
            let mut q = query(&asked, *qtype, payload, ecs);
            q.metadata.recursion_desired = !i.is_multiple_of(2);
            q.metadata.checking_disabled = i.is_multiple_of(3);
            let bytes = q.to_vec().expect("encode");
            let what = format!(
                "{asked} {qtype} {payload:?} {ecs:?} rd {}",
                !i.is_multiple_of(2)
            );
            let before = queries(&metrics(dns).await, "general", "udp");
            let fast = udp_raw(dns.addr(), &bytes).await.expect("a UDP answer");
            assert_eq!(
                queries(&metrics(dns).await, "general", "udp"),
                before,
                "the UDP fast path answers {what}"
            );
            let general = tcp_raw(dns.addr(), &bytes).await;
            assert_eq!(fast, general, "{what}");
            if payload.is_none() {
                plain.push(Message::from_vec(&general).expect("the answer parses"));
            }
        }
    }
    plain
}

#[tokio::test]
async fn the_udp_fast_path_answers_the_zones_own_records_byte_for_byte_as_the_general_path_does() {
    let dns = Dns::start().await;
    let (a, aaaa) = (RecordType::A, RecordType::AAAA);
    let questions = [
        ("cdn.test.", RecordType::SOA),
        ("cdn.test.", RecordType::NS),
        ("cdn.test.", RecordType::ANY),
        ("cdn.test.", RecordType::MX),
        ("cdn.test.", a),
        ("ns1.cdn.test.", a),
        ("ns1.cdn.test.", aaaa),
        ("ns1.cdn.test.", RecordType::TXT),
        ("edge.cdn.test.", a),
    ];
    let before = static_answers_are_the_general_paths(&dns, &questions).await;
    assert_eq!(addresses(&before[5]), vec![ip("192.0.2.53")], "glue");
    assert!(before[6].answers.is_empty(), "no IPv6 glue: NODATA");

    // A changed zone is answered at once: a second name server, new glue, a new serial.
    let path = dns._dir.path().join("geodns.toml");
    let text = std::fs::read_to_string(&path).expect("config").replace(
        r#"nameservers = [{ name = "ns1.cdn.test", addresses = ["192.0.2.53"] }]"#,
        r#"serial = 7
            nameservers = [
                { name = "ns1.cdn.test", addresses = ["192.0.2.54", "2001:db8::53"] },
                { name = "ns2.cdn.test", addresses = ["198.51.100.53"] },
                { name = "ns.elsewhere.example" },
            ]"#,
    );
    let config = GeoDnsConfig::from_toml(&text).expect("valid config");
    dns.server
        .replace_config(config)
        .expect("the new zone applies");
    let questions = [
        questions.as_slice(),
        &[("ns2.cdn.test.", a), ("ns2.cdn.test.", aaaa)],
    ]
    .concat();
    let after = static_answers_are_the_general_paths(&dns, &questions).await;
    assert!(
        matches!(&after[0].answers[0].data, RData::SOA(soa) if soa.serial == 7),
        "{:?}",
        after[0]
    );
    assert_eq!(after[1].answers.len(), 3, "three name servers");
    let mut glue = after[1].clone();
    glue.answers = after[1].additionals.clone();
    assert_eq!(
        addresses(&glue),
        vec![ip("192.0.2.54"), ip("2001:db8::53"), ip("198.51.100.53")]
    );
    assert_eq!(addresses(&after[5]), vec![ip("192.0.2.54")]);
    assert_eq!(addresses(&after[6]), vec![ip("2001:db8::53")]);
    assert_eq!(addresses(&after[9]), vec![ip("198.51.100.53")]);
}

#[tokio::test]
async fn each_answer_carries_its_sites_or_regions_ttl_over_udp_and_tcp() {
    // The zone's TTL is 20; region eu sets 5 and the site "shop" 300, while region us and
    // the site "publisher" set none.
    let mut dns =
        Dns::start_configured(None, "ttl = 5", "[[customer]]\nname = \"shop\"\nttl = 300").await;
    let shop = "shop.cdn.test.";
    let (cname_, a, aaaa) = (RecordType::CNAME, RecordType::A, RecordType::AAAA);
    // Each record its owner's TTL: the CNAME the site's, the addresses their region's.
    let cases = [
        (shop, a, PARIS, vec![(cname_, 300), (a, 5)]),
        (shop, a, NEW_YORK, vec![(cname_, 300), (a, 20)]),
        (shop, aaaa, PARIS, vec![(cname_, 300), (aaaa, 5)]),
        (CUSTOMER, a, PARIS, vec![(cname_, 20), (a, 5)]),
        (CUSTOMER, a, NEW_YORK, vec![(cname_, 20), (a, 20)]),
        ("eu.edge.cdn.test.", a, NEW_YORK, vec![(a, 5)]),
        ("eu.edge.cdn.test.", aaaa, NEW_YORK, vec![(aaaa, 5)]),
        ("us.edge.cdn.test.", a, PARIS, vec![(a, 20)]),
    ];
    for (name, qtype, client, expected) in &cases {
        let q = query(name, *qtype, Some(1232), Some((ip(client), 24)));
        let what = format!("{name} {qtype} from {client}");
        let before = queries(&metrics(&dns).await, "general", "udp");
        let over_udp = udp(dns.addr(), &q).await;
        assert_eq!(
            queries(&metrics(&dns).await, "general", "udp"),
            before,
            "the UDP fast path answers {what}"
        );
        let over_tcp = tcp(dns.addr(), &q).await;
        for (transport, reply) in [("UDP", over_udp), ("TCP", over_tcp)] {
            assert_eq!(&ttls(&reply), expected, "{what} over {transport}");
        }
    }

    // The zone's own records keep their TTLs: SOA and negative answers 60, NS 3600.
    let soa = udp(dns.addr(), &query("cdn.test.", RecordType::SOA, None, None)).await;
    assert_eq!(ttls(&soa), [(RecordType::SOA, 60)]);
    let ns = tcp(dns.addr(), &query("cdn.test.", RecordType::NS, None, None)).await;
    assert_eq!(ttls(&ns), [(RecordType::NS, 3600)]);
    for nothing in ["nothing.cdn.test.", "shop.edge.cdn.test."] {
        let nx = udp(dns.addr(), &query(nothing, a, None, None)).await;
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert!(nx.authorities.iter().all(|r| r.ttl == 60), "{nx:?}");
    }

    // A dead region's name answers with its neighbour's edges under its own TTL, and its
    // clients' CNAME now points at the neighbour, whose addresses carry the neighbour's.
    kill_eu(&mut dns).await;
    paris_moves_to(&dns, "us", Duration::from_secs(5))
        .await
        .expect("Paris clients never left the dead region");
    for q in [
        query("eu.edge.cdn.test.", a, None, None),
        query(shop, a, Some(1232), Some((ip(PARIS), 24))),
    ] {
        let over_udp = udp(dns.addr(), &q).await;
        let over_tcp = tcp(dns.addr(), &q).await;
        assert_eq!(addresses(&over_udp), vec![ip(US)]);
        assert_eq!(ttls(&over_udp), ttls(&over_tcp), "{q:?}");
    }
    let own = udp(dns.addr(), &query("eu.edge.cdn.test.", a, None, None)).await;
    assert_eq!(ttls(&own), [(a, 5)], "the asked name's TTL");
    let moved = udp(
        dns.addr(),
        &query(shop, a, Some(1232), Some((ip(PARIS), 24))),
    )
    .await;
    assert_eq!(ttls(&moved), [(cname_, 300), (a, 20)]);
}

/// Each answer record's type and TTL, in order.
fn ttls(reply: &Message) -> Vec<(RecordType, u32)> {
    reply
        .answers
        .iter()
        .map(|r| (r.record_type(), r.ttl))
        .collect()
}

/// The admin `/metrics` text.
async fn metrics(dns: &Dns) -> String {
    support::send(
        &support::client(),
        dns.server.admin_addr(),
        http::Method::GET,
        "/metrics",
        "admin",
        &[],
    )
    .await
    .text()
}

/// `geodns_queries_total` answered by `path` over `transport`, over every other label.
fn queries(metrics: &str, path: &str, transport: &str) -> u64 {
    let (path, transport) = (
        format!("path=\"{path}\""),
        format!("transport=\"{transport}\""),
    );
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("geodns_queries_total{"))
        .filter_map(|line| line.split_once("} "))
        .filter(|(labels, _)| labels.split(',').any(|l| l == path))
        .filter(|(labels, _)| labels.split(',').any(|l| l == transport))
        .map(|(_, n)| n.trim().parse::<u64>().expect("numeric metric"))
        .sum()
}

fn ecs_of(m: &Message) -> Option<(IpAddr, u8, u8)> {
    ecs(m)
}

/// `geodns_messages_dropped_total` for `reason` over `transport` (0 before the first).
async fn dropped(dns: &Dns, reason: &str, transport: &str) -> f64 {
    let text = metrics(dns).await;
    let series =
        format!("geodns_messages_dropped_total{{reason=\"{reason}\",transport=\"{transport}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0.0, |n| n.trim().parse().expect("numeric metric"))
}

/// Messages with QR=1 (responses), as another server or a forger would send them: the
/// response to a query the fast path answers, a FORMERR with no question (what this
/// server itself sends for a bad packet: two servers answering each other's errors would
/// loop), and one that does not parse (a question promised and missing).
fn responses() -> Vec<Vec<u8>> {
    let mut answer = query(CUSTOMER, RecordType::A, None, None);
    answer.metadata.message_type = MessageType::Response;
    let mut formerr = Message::new(0x0bad, MessageType::Response, OpCode::Query);
    formerr.metadata.response_code = ResponseCode::FormErr;
    let unparsable = vec![
        0x0b, 0xae, 0x81, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff,
    ];
    vec![
        answer.to_vec().expect("encode"),
        formerr.to_vec().expect("encode"),
        unparsable,
    ]
}

#[tokio::test]
async fn udp_messages_with_qr_set_are_dropped_unanswered_and_counted() {
    let dns = Dns::start().await;
    let sent = responses();
    let (answer, strays) = udp_after(
        dns.addr(),
        &sent,
        &query(CUSTOMER, RecordType::A, None, None),
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(strays.is_empty(), "responses were answered: {strays:?}");
    assert_eq!(dropped(&dns, "response", "udp").await, sent.len() as f64);
}

#[tokio::test]
async fn tcp_messages_with_qr_set_are_dropped_unanswered_and_counted() {
    let dns = Dns::start().await;
    let sent = responses();
    for first in &sent {
        let follow = query(CUSTOMER, RecordType::A, None, None);
        let (answer, strays) = tcp_after(dns.addr(), first, &follow).await;
        // Closing the connection is a drop too; an answer must be the follow-up's own.
        if let Some(answer) = answer {
            assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        }
        assert!(strays.is_empty(), "a response was answered: {strays:?}");
    }
    let after = tcp(dns.addr(), &query(CUSTOMER, RecordType::A, None, None)).await;
    assert_eq!(after.metadata.response_code, ResponseCode::NoError);
    assert_eq!(dropped(&dns, "response", "tcp").await, sent.len() as f64);
}

/// A query for the customer name whose Client Subnet option is written as given: `family`,
/// `source` prefix length, scope 0, then `address` octets, however many.
fn raw_ecs(family: u16, source: u8, address: &[u8]) -> Message {
    let mut q = query(CUSTOMER, RecordType::A, Some(1232), None);
    let mut data = family.to_be_bytes().to_vec();
    data.extend_from_slice(&[source, 0]);
    data.extend_from_slice(address);
    q.edns
        .as_mut()
        .expect("EDNS")
        .options_mut()
        .insert(EdnsOption::Unknown(8, data));
    q
}

#[tokio::test]
async fn client_subnets_with_bits_beyond_the_prefix_or_extra_octets_get_formerr() {
    let dns = Dns::start().await;
    // RFC 7871 6: ADDRESS is cut to SOURCE PREFIX-LENGTH bits, zero-padded to the octet;
    // other bits set or more octets than that are a FORMERR.
    for (family, source, address, rcode) in [
        // 192.0.2.1/24: a fourth octet, and a bit set in it.
        (1, 24, &[192, 0, 2, 1][..], ResponseCode::FormErr),
        // 100.64.1.0/23: the last bit of the third octet is beyond the prefix.
        (1, 23, &[100, 64, 1], ResponseCode::FormErr),
        (1, 25, &[100, 64, 1, 129], ResponseCode::FormErr),
        // An extra octet, even a zero one.
        (1, 24, &[100, 64, 1, 0], ResponseCode::FormErr),
        (1, 0, &[0], ResponseCode::FormErr),
        (
            2,
            48,
            &[
                0x20, 0x01, 0x0d, 0xb8, 0, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
            ],
            ResponseCode::FormErr,
        ),
        (
            2,
            47,
            &[0x20, 0x01, 0x0d, 0xb8, 0, 0x05],
            ResponseCode::FormErr,
        ),
        // Their well-formed neighbours are answered.
        (1, 24, &[100, 64, 1], ResponseCode::NoError),
        (1, 23, &[100, 64, 0], ResponseCode::NoError),
        (1, 25, &[100, 64, 1, 128], ResponseCode::NoError),
        (1, 0, &[], ResponseCode::NoError),
        (
            2,
            47,
            &[0x20, 0x01, 0x0d, 0xb8, 0, 0x04],
            ResponseCode::NoError,
        ),
    ] {
        let q = raw_ecs(family, source, address);
        let what = format!("family {family} /{source} {address:?}");
        // UDP takes the fast path for the well-formed ones; TCP always the general path.
        let fast = udp(dns.addr(), &q).await;
        assert_eq!(fast.metadata.response_code, rcode, "UDP {what}");
        let general = tcp(dns.addr(), &q).await;
        assert_eq!(general.metadata.response_code, rcode, "TCP {what}");
        assert_eq!(fast.answers, general.answers, "{what}");
    }
}
