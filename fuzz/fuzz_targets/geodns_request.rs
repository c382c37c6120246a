//! The GeoDNS request path as a UDP packet takes it: the in-place fast path, and when it
//! declines, hickory's decoder and the handler. Nothing panics, and whatever is answered
//! is a DNS message with the query's ID.
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use geodns::handler::Handler;
use geodns::state::State;
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
[zone]
name = "cdn.test"
nameservers = [{ name = "ns1.cdn.test", addresses = ["192.0.2.53"] }]
[geo]
default_region = "eu"
overrides = [{ cidr = "10.1.0.0/16", region = "us" }]
[[region]]
name = "eu"
lat = 50.0
lon = 8.0
edge = [{ address = "192.0.2.10", probe = "http://127.0.0.1:1/healthz" }]
[[region]]
name = "us"
lat = 39.0
lon = -77.0
edge = [{ address = "198.51.100.10", probe = "http://127.0.0.1:2/healthz" }]
[[customer]]
name = "publisher"
"#;

struct World {
    handler: Handler,
    runtime: tokio::runtime::Runtime,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let config = geodns::GeoDnsConfig::from_toml(CONFIG).expect("valid config");
        let state = State::new(config, &Default::default()).expect("state");
        World {
            handler: Handler {
                state: Arc::new(ArcSwap::from_pointee(state)),
                metrics: Arc::default(),
            },
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let world = world();
    let src: SocketAddr = (IpAddr::from([10, 1, 2, 3]), 5353).into();
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    let state = world.handler.state.load();
    let fast = geodns::fast_path::answer(&state, data, src.ip(), &mut out, &mut scratch).is_some();
    if !fast {
        out.clear();
        if !world
            .runtime
            .block_on(geodns::udp::general(&world.handler, data, src, &mut out))
        {
            return;
        }
    }
    let message = hickory_proto::op::Message::from_vec(&out)
        .unwrap_or_else(|e| panic!("answer is not a DNS message ({e}); fast path: {fast}"));
    assert_eq!(
        &message.id.to_be_bytes()[..],
        &data[..2],
        "fast path: {fast}"
    );
});
