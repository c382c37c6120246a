//! The CPU work of one UDP answer without the system calls, for counting instructions
//! with callgrind: each query is answered exactly as the UDP loop ([`geodns::udp`])
//! answers it, by the fast path or else the general path on a runtime.
//!
//! Deterministic where a load benchmark is not, so a change to either path can be
//! measured on a busy machine. Instructions per query: the difference of two runs with
//! different counts, divided by the difference of the counts (the setup cancels out):
//!
//! ```text
//! cargo build --release -p geodns --example answer_cost
//! for n in 1000 21000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p \
//!     target/release/examples/answer_cost static-a $n 2>&1 | grep refs
//! done
//! ```
//!
//! Cases (the config is `benches/dns/run.sh`'s without a database, `GEO=nets`; queries
//! as dnsperf sends them, EDNS only with Client Subnet): `static-a` (`ns1.cdn.test A`,
//! zone glue), `static-soa`, `static-ns` (the apex), `static-a-ecs`, `geo`
//! (`assets-nets.cdn.test A` from the loopback), `geo-ecs4`, `region-a`.
//!
//! `many N CONFIG.toml QUERIES.bin`: the config of a `benches/dns/run.sh` run (its
//! `geodns.toml`, City database and all) and the queries of its `geo-many` case
//! (dnsperf's binary format), answered in turn, over and over: the cost per query of
//! many distinct clients. With a database, set up takes seconds (minutes under
//! callgrind): count the queries alone with `--collect-atstart=no
//! --toggle-collect=answer_cost::answer_all`.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use geodns::handler::Handler;
use geodns::state::State;
use geodns::{GeoDnsConfig, fast_path};

const CONFIG: &str = r#"
[zone]
name = "cdn.test"
ttl = 60
nameservers = [{ name = "ns1.cdn.test", addresses = ["127.0.0.1"] }]

[geo]
default_region = "us-east"
overrides = [
  { cidr = "81.2.69.0/24", region = "eu-west" }, { cidr = "8.8.8.0/24", region = "us-west" },
  { cidr = "1.1.1.0/24", region = "ap-southeast" }, { cidr = "127.0.0.0/8", region = "us-east" },
]
ecs = true

[[region]]
name = "us-east"
lat = 39.04
lon = -77.49
edge = [{ address = "127.0.0.11", probe = "http://127.0.0.11:20080/health" }, { address = "127.0.0.12", probe = "http://127.0.0.12:20080/health" }]

[[region]]
name = "us-west"
lat = 45.60
lon = -121.18
edge = [{ address = "127.0.0.21", probe = "http://127.0.0.21:20080/health" }, { address = "127.0.0.22", probe = "http://127.0.0.22:20080/health" }]

[[region]]
name = "eu-west"
lat = 53.35
lon = -6.26
edge = [{ address = "127.0.0.31", probe = "http://127.0.0.31:20080/health" }, { address = "127.0.0.32", probe = "http://127.0.0.32:20080/health" }]

[[region]]
name = "ap-southeast"
lat = 1.35
lon = 103.82
edge = [{ address = "127.0.0.41", probe = "http://127.0.0.41:20080/health" }, { address = "127.0.0.42", probe = "http://127.0.0.42:20080/health" }]

[[customer]]
name = "assets"

[[customer]]
name = "assets-nets"
"#;

/// A query for `name` `qtype` with RD set (as dnsperf sends it) and, when `ecs` is given
/// as (family, source prefix, address octets), EDNS with that Client Subnet option.
fn query(name: &str, qtype: u16, ecs: Option<(u16, u8, &[u8])>) -> Vec<u8> {
    let mut q = vec![
        0x12,
        0x34,
        0x01,
        0x00,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        u8::from(ecs.is_some()),
    ];
    q.extend_from_slice(&fast_path::wire_name(name));
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    if let Some((family, source, address)) = ecs {
        let option_len = 4 + address.len() as u16;
        q.extend_from_slice(&[0, 0, 41, 0x10, 0x00, 0, 0, 0, 0]);
        q.extend_from_slice(&(4 + option_len).to_be_bytes());
        q.extend_from_slice(&8u16.to_be_bytes());
        q.extend_from_slice(&option_len.to_be_bytes());
        q.extend_from_slice(&family.to_be_bytes());
        q.extend_from_slice(&[source, 0]);
        q.extend_from_slice(address);
    }
    q
}

fn main() {
    let mut args = std::env::args().skip(1);
    let case = args.next().unwrap_or_else(|| "static-a".into());
    let n: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let mut packets = Vec::new();
    let packet = match case.as_str() {
        "static-a" => query("ns1.cdn.test", 1, None),
        "static-soa" => query("cdn.test", 6, None),
        "static-ns" => query("cdn.test", 2, None),
        "static-a-ecs" => query("ns1.cdn.test", 1, Some((1, 24, &[81, 2, 69]))),
        "geo" => query("assets-nets.cdn.test", 1, None),
        "geo-ecs4" => query("assets-nets.cdn.test", 1, Some((1, 24, &[81, 2, 69]))),
        "region-a" => query("eu-west.edge.cdn.test", 1, None),
        "many" => {
            let queries = std::fs::read(args.nth(1).expect("QUERIES.bin")).expect("queries");
            let mut rest = &queries[..];
            while let [l0, l1, tail @ ..] = rest {
                let (packet, next) = tail.split_at(usize::from(u16::from_be_bytes([*l0, *l1])));
                packets.push(packet.to_vec());
                rest = next;
            }
            Vec::new()
        }
        other => panic!("unknown case {other}"),
    };
    let config = match case.as_str() {
        "many" => {
            let path = std::env::args().nth(3).expect("CONFIG.toml");
            GeoDnsConfig::from_file(path.as_ref()).expect("valid config")
        }
        _ => GeoDnsConfig::from_toml(CONFIG).expect("valid config"),
    };
    if packets.is_empty() {
        packets.push(packet);
    }
    let state = State::new(config, &Default::default()).expect("state");
    let handler = Handler {
        state: Arc::new(ArcSwap::from_pointee(state)),
        metrics: Arc::default(),
    };
    // As the server runs it: the general path on a multi-threaded runtime, entered from
    // the loop's own thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (fast, bytes) = answer_all(&handler, &runtime, &packets, n);
    println!("{case}: {n} queries, {fast} on the fast path, {bytes} bytes answered");
}

/// Answers `n` of `packets` in turn as the UDP loop does: how many on the fast path, and
/// the bytes answered. Its own function, so callgrind can count it alone.
#[inline(never)]
fn answer_all(
    handler: &Handler,
    runtime: &tokio::runtime::Runtime,
    packets: &[Vec<u8>],
    n: u64,
) -> (u64, usize) {
    let handle = runtime.handle();
    let src: SocketAddr = "127.0.0.1:5353".parse().expect("address");
    let mut out = Vec::with_capacity(1232);
    let mut addresses = Vec::new();
    let (mut fast, mut bytes) = (0u64, 0usize);
    for packet in packets.iter().cycle().take(n as usize) {
        let state = handler.state.load();
        let answered = match fast_path::answer(&state, packet, src.ip(), &mut out, &mut addresses) {
            Some(_) => {
                fast += 1;
                true
            }
            None => handle.block_on(geodns::udp::general(handler, packet, src, &mut out)),
        };
        if answered {
            bytes += out.len();
        }
    }
    (fast, bytes)
}
