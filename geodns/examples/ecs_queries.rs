//! A query mix from many distinct clients, for `benches/dns/run.sh` (case `geo-many`):
//! `COUNT` queries for one name, each with an EDNS Client Subnet of its own, as a resolver
//! serving that many client networks sends them.
//!
//! A bench with one client subnet measures one cached answer; real resolvers send the
//! subnets of all their clients. The subnets are drawn from the City database the
//! servers use, so each one is located: IPv4 /24s uniformly over the located IPv4 space,
//! and (a share `V6_SHARE`, default 0.1) IPv6 /48s inside uniformly drawn located IPv6
//! networks of /48 or wider. Deterministic for a given seed.
//!
//! ```text
//! cargo run --release -p geodns --example ecs_queries -- \
//!   DB.mmdb COUNT NAME OUT.bin OUT.txt [SEED] [V6_SHARE]
//! ```
//!
//! `OUT.bin` is dnsperf's binary input (`dnsperf -B`: each query preceded by its length,
//! RFC 1035 4.2.2); `OUT.txt` lists the subnets, one a line, in the same order.

use std::collections::HashSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Deserialize;

#[derive(Deserialize)]
struct City {
    location: Option<Location>,
}

#[derive(Deserialize)]
struct Location {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

/// splitmix64: enough randomness for sampling, and the same stream for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn located(reader: &maxminddb::Reader<Vec<u8>>, ip: IpAddr) -> bool {
    reader
        .lookup(ip)
        .ok()
        .and_then(|hit| hit.decode::<City>().ok().flatten())
        .and_then(|city| city.location)
        .is_some_and(|l| l.latitude.is_some() && l.longitude.is_some())
}

/// Not a client network: private, shared, loopback, link-local, documentation, multicast
/// and reserved IPv4 space.
fn special_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    a == 0
        || a == 10
        || a == 127
        || a >= 224
        || (a == 100 && (64..128).contains(&b))
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
}

/// The query for `name` A with RD and EDNS (payload 1232) carrying `subnet`/`source`.
fn query(name: &str, subnet: IpAddr, source: u8) -> Vec<u8> {
    let mut q = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let (family, octets): (u16, Vec<u8>) = match subnet {
        IpAddr::V4(v4) => (1, v4.octets().to_vec()),
        IpAddr::V6(v6) => (2, v6.octets().to_vec()),
    };
    let address = &octets[..usize::from(source).div_ceil(8)];
    let option_len = 4 + address.len() as u16;
    q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
    q.extend_from_slice(&(4 + option_len).to_be_bytes());
    q.extend_from_slice(&8u16.to_be_bytes());
    q.extend_from_slice(&option_len.to_be_bytes());
    q.extend_from_slice(&family.to_be_bytes());
    q.extend_from_slice(&[source, 0]);
    q.extend_from_slice(address);
    q
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, count, name, bin, list, rest @ ..] = args.as_slice() else {
        return Err(
            "usage: ecs_queries DB.mmdb COUNT NAME OUT.bin OUT.txt [SEED] [V6_SHARE]".into(),
        );
    };
    let count: usize = count.parse()?;
    let seed: u64 = rest.first().map_or(Ok(24), |s| s.parse())?;
    let v6_share: f64 = rest.get(1).map_or(Ok(0.1), |s| s.parse())?;
    let reader = maxminddb::Reader::from_source(std::fs::read(db)?)?;
    let mut rng = Rng(seed);

    // Located IPv6 networks of /48 or wider (the IPv4 subtree, `::/96`, left out).
    let mut v6_networks: Vec<(u128, u8)> = Vec::new();
    if reader.metadata().ip_version == 6 {
        for hit in reader.within("::/0".parse()?, maxminddb::WithinOptions::default())? {
            let hit = hit?;
            let network = hit.network()?;
            let IpAddr::V6(address) = network.network() else {
                continue;
            };
            if network.prefix() <= 48
                && hit
                    .decode::<City>()?
                    .and_then(|c| c.location)
                    .is_some_and(|l| l.latitude.is_some())
            {
                v6_networks.push((u128::from(address), network.prefix()));
            }
        }
    }

    let mut seen = HashSet::new();
    let mut subnets: Vec<(IpAddr, u8)> = Vec::with_capacity(count);
    // Bounded: located space is most of the draws; give up long before looping forever.
    let mut draws = 0u64;
    while subnets.len() < count && draws < 200 * count as u64 {
        draws += 1;
        let v6 = !v6_networks.is_empty() && (rng.next() % 10_000) as f64 / 10_000.0 < v6_share;
        let (ip, source) = if v6 {
            let (network, prefix) = v6_networks[(rng.next() % v6_networks.len() as u64) as usize];
            let host_bits = 48 - u32::from(prefix);
            let inside = if host_bits == 0 {
                0
            } else {
                u128::from(rng.next()) & ((1u128 << host_bits) - 1)
            };
            (IpAddr::V6(Ipv6Addr::from(network | (inside << 80))), 48)
        } else {
            let ip = Ipv4Addr::from((rng.next() as u32) & 0xffff_ff00);
            if special_v4(ip) {
                continue;
            }
            (IpAddr::V4(ip), 24)
        };
        if seen.contains(&ip) || !located(&reader, ip) {
            continue;
        }
        seen.insert(ip);
        subnets.push((ip, source));
    }
    if subnets.len() < count {
        return Err(format!("only {} located subnets after {draws} draws", subnets.len()).into());
    }

    let mut bin = std::io::BufWriter::new(std::fs::File::create(bin)?);
    let mut list = std::io::BufWriter::new(std::fs::File::create(list)?);
    for (ip, source) in &subnets {
        let q = query(name, *ip, *source);
        bin.write_all(&(q.len() as u16).to_be_bytes())?;
        bin.write_all(&q)?;
        writeln!(list, "{ip}/{source}")?;
    }
    bin.flush()?;
    list.flush()?;
    let v6 = subnets.iter().filter(|(ip, _)| ip.is_ipv6()).count();
    eprintln!(
        "{} subnets ({} IPv4 /24, {v6} IPv6 /48) for {name}",
        subnets.len(),
        subnets.len() - v6
    );
    Ok(())
}
