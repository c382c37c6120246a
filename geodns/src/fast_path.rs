//! The common query answered without building a message: A or AAAA for a customer name or
//! a region name, class IN, with or without EDNS and Client Subnet.
//!
//! Measured reason: through `hickory-server` every UDP query costs a task, channel hops and
//! a `Record`-by-`Record` encoding with allocations; gdnsd answered 2.5x as many queries
//! per core (BENCHMARKS.md). Here the question is read in place, the answer is written
//! into one reused buffer (the question copied as sent, names compressed against it), and
//! the region is chosen exactly as [`crate::handler`] chooses it.
//!
//! Invariant: this path answers only what it fully understands and produces the same
//! answer the general path would (the tests compare the two); anything else (other types
//! or classes, other opcodes, EDNS versions, malformed or unusual packets, answers that
//! would need truncation, no healthy region) returns `None` and goes the general way.

use std::net::IpAddr;

use crate::ecs;
use crate::geo::{GeoLocator, Located};
use crate::state::State;

/// Query types this path answers.
const A: u16 = 1;
const AAAA: u16 = 28;
const CNAME: u16 = 5;
const OPT: u16 = 41;
const CLASS_IN: u16 = 1;

/// What a name in the zone is, for this path: a customer or a region, by its index in
/// the config (which also finds its TTL in the [`Zone`](crate::zone::Zone)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastName {
    Customer(usize),
    Region(usize),
}

/// What was answered, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    pub qtype: u16,
    pub region: usize,
}

/// Answers `packet` from `src` into `out` when it is a query this path handles.
/// `addresses` is scratch space, reused across calls so that answering allocates nothing.
pub fn answer(
    state: &State,
    packet: &[u8],
    src: IpAddr,
    out: &mut Vec<u8>,
    addresses: &mut Vec<IpAddr>,
) -> Option<Answered> {
    if packet.len() < 17 {
        return None;
    }
    let flags = packet[2];
    // QR = 0 (a query) and opcode 0 (QUERY); TC set on a query makes no sense.
    if flags & 0x80 != 0 || (flags >> 3) & 0x0f != 0 || flags & 0x02 != 0 {
        return None;
    }
    let count = |at: usize| u16::from_be_bytes([packet[at], packet[at + 1]]);
    let (questions, answers, authority, additional) = (count(4), count(6), count(8), count(10));
    if questions != 1 || answers != 0 || authority != 0 || additional > 1 {
        return None;
    }
    // The question name, lower-cased, in wire form; no compression in a question.
    let mut name = [0u8; 255];
    let mut len = 0;
    let mut at = 12;
    loop {
        let label = *packet.get(at)? as usize;
        if label & 0xc0 != 0 || len + label + 1 > name.len() {
            return None;
        }
        name[len] = label as u8;
        let bytes = packet.get(at + 1..at + 1 + label)?;
        for (slot, byte) in name[len + 1..len + 1 + label].iter_mut().zip(bytes) {
            *slot = byte.to_ascii_lowercase();
        }
        len += label + 1;
        at += label + 1;
        if label == 0 {
            break;
        }
    }
    let qtype = u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]);
    let qclass = u16::from_be_bytes([*packet.get(at + 2)?, *packet.get(at + 3)?]);
    let question_end = at + 4;
    if qclass != CLASS_IN || (qtype != A && qtype != AAAA) {
        return None;
    }
    let kind = *state.fast_names.get(&name[..len])?;

    // EDNS: one OPT record, version 0, and at most a valid Client Subnet of interest.
    let mut payload = None;
    let mut subnet = None;
    if additional == 1 {
        let opt = packet.get(question_end..)?;
        if opt.len() < 11 || opt[0] != 0 || u16::from_be_bytes([opt[1], opt[2]]) != OPT {
            return None;
        }
        payload = Some(u16::from_be_bytes([opt[3], opt[4]]));
        if opt[6] != 0 {
            return None; // EDNS version above 0: BADVERS, the general path's business
        }
        let rdlen = u16::from_be_bytes([opt[9], opt[10]]) as usize;
        let mut options = opt.get(11..11 + rdlen)?;
        if opt.len() != 11 + rdlen {
            return None;
        }
        while !options.is_empty() {
            let code = u16::from_be_bytes([*options.first()?, *options.get(1)?]);
            let size = u16::from_be_bytes([*options.get(2)?, *options.get(3)?]) as usize;
            let data = options.get(4..4 + size)?;
            if code == ecs::CODE {
                if subnet.is_some() {
                    return None;
                }
                // Malformed: FORMERR, which the general path answers.
                subnet = Some(ecs::parse(data).ok()?);
            }
            options = &options[4 + size..];
        }
    } else if packet.len() != question_end {
        return None;
    }
    if !state.ecs {
        subnet = None; // validated above, but neither used nor echoed
    }

    // Where the answer comes from: the same decisions as the general path.
    let client = match (&subnet, state.ecs) {
        (Some(s), true) if s.source() > 0 => s.ip(),
        _ => src,
    };
    let mut scope = 0u8;
    let region = match kind {
        FastName::Customer(_) => {
            let located = state.locator.locate(client);
            scope = match (&located, &subnet) {
                (
                    Some(Located::Point { prefix_len, .. } | Located::Region { prefix_len, .. }),
                    _,
                ) => *prefix_len,
                (None, Some(s)) => s.source(),
                (None, None) => 0,
            };
            state
                .regions
                .choose(located.as_ref(), crate::handler::network_hash(client))?
        }
        FastName::Region(r) => state.regions.serving(r)?,
    };
    state.regions.regions[region].addresses_into(qtype == AAAA, state.zone_max_answers, addresses);
    if addresses.is_empty() && matches!(kind, FastName::Region(_)) {
        return None; // NODATA with the SOA: the general path's business
    }

    // TTLs as the zone gives them: the CNAME its customer's, the addresses their owner
    // name's region's (the asked region's, or the CNAME target's).
    let (cname_ttl, owner_region) = match kind {
        FastName::Customer(c) => (Some(state.zone.customer_ttl(c)), region),
        FastName::Region(r) => (None, r),
    };
    let [t0, t1, t2, t3] = state.zone.region_ttl(owner_region).to_be_bytes();
    let records = u16::try_from(usize::from(cname_ttl.is_some()) + addresses.len()).ok()?;
    let [r0, r1] = records.to_be_bytes();
    out.clear();
    #[rustfmt::skip]
    out.extend_from_slice(&[
        packet[0], packet[1],
        0x84 | (flags & 0x01), 0x00, // QR, AA, RD as asked; RA off, NOERROR
        0, 1, r0, r1, 0, 0, 0, u8::from(payload.is_some()),
    ]);
    out.extend_from_slice(&packet[12..question_end]);
    // Owner of the address records: the question name, or the CNAME's target.
    let mut owner: u16 = 0xc00c;
    if let Some(ttl) = cname_ttl {
        let target = &state.region_wire_names[region];
        let [l0, l1] = u16::try_from(target.len()).ok()?.to_be_bytes();
        let [c0, c1, c2, c3] = ttl.to_be_bytes();
        #[rustfmt::skip]
        out.extend_from_slice(&[0xc0, 0x0c, 0, CNAME as u8, 0, CLASS_IN as u8, c0, c1, c2, c3, l0, l1]);
        owner = 0xc000 | u16::try_from(out.len()).ok().filter(|o| *o < 0x3fff)?;
        out.extend_from_slice(target);
    }
    let [o0, o1] = owner.to_be_bytes();
    for ip in addresses.iter() {
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                #[rustfmt::skip]
                out.extend_from_slice(&[o0, o1, 0, A as u8, 0, CLASS_IN as u8, t0, t1, t2, t3, 0, 4, a, b, c, d]);
            }
            IpAddr::V6(v6) => {
                #[rustfmt::skip]
                out.extend_from_slice(&[o0, o1, 0, AAAA as u8, 0, CLASS_IN as u8, t0, t1, t2, t3, 0, 16]);
                out.extend_from_slice(&v6.octets());
            }
        }
    }
    let limit = match payload {
        Some(theirs) => {
            let ours = theirs.clamp(512, crate::handler::MAX_UDP_PAYLOAD);
            out.push(0);
            out.extend_from_slice(&OPT.to_be_bytes());
            out.extend_from_slice(&ours.to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0]);
            match &subnet {
                Some(s) => {
                    let scope = if s.source() > 0 { scope } else { 0 };
                    let size = 4 + s.address().len();
                    out.extend_from_slice(&u16::try_from(4 + size).ok()?.to_be_bytes());
                    out.extend_from_slice(&ecs::CODE.to_be_bytes());
                    out.extend_from_slice(&u16::try_from(size).ok()?.to_be_bytes());
                    out.extend_from_slice(&s.family().to_be_bytes());
                    out.push(s.source());
                    out.push(scope);
                    out.extend_from_slice(s.address());
                }
                None => out.extend_from_slice(&0u16.to_be_bytes()),
            }
            usize::from(ours)
        }
        None => 512,
    };
    if out.len() > limit {
        return None; // needs truncation: the general path does it properly
    }
    Some(Answered { qtype, region })
}

/// `name` (`a.b.c`, no trailing dot needed) in lower-case wire form.
pub fn wire_name(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    out.push(0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
    use hickory_proto::rr::{Name, RData, RecordType};

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

    fn state() -> State {
        state_of(CONFIG)
    }

    fn state_of(text: &str) -> State {
        let config = crate::config::GeoDnsConfig::from_toml(text).expect("valid");
        State::new(config, &Default::default()).expect("state")
    }

    fn packet(name: &str, qtype: RecordType, ecs: Option<(IpAddr, u8)>) -> Vec<u8> {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some((addr, prefix)) = ecs {
            let mut edns = Edns::new();
            edns.options_mut()
                .insert(EdnsOption::Subnet(ClientSubnet::new(addr, prefix, 0)));
            m.set_edns(edns);
        }
        m.to_vec().unwrap()
    }

    /// A query for the customer name with a Client Subnet option of `data` as given.
    fn raw_ecs(data: &[u8]) -> Vec<u8> {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("publisher.cdn.test.").unwrap(),
            RecordType::A,
        ));
        let mut edns = Edns::new();
        edns.options_mut()
            .insert(EdnsOption::Unknown(ecs::CODE, data.to_vec()));
        m.set_edns(edns);
        m.to_vec().unwrap()
    }

    #[test]
    fn a_customer_query_with_client_subnet_is_answered_in_place() {
        let s = state();
        let mut out = Vec::new();
        let q = packet(
            "PUBLISHER.cdn.test.",
            RecordType::A,
            Some(("10.1.2.0".parse().unwrap(), 24)),
        );
        let answered = answer(
            &s,
            &q,
            "127.0.0.1".parse().unwrap(),
            &mut out,
            &mut Vec::new(),
        )
        .expect("fast path");
        assert_eq!(
            answered,
            Answered {
                qtype: 1,
                region: 1
            }
        );
        let reply = Message::from_vec(&out).expect("a valid message");
        assert!(reply.metadata.authoritative);
        assert_eq!(
            reply.queries[0].name().to_ascii(),
            "PUBLISHER.cdn.test.",
            "question as sent"
        );
        match &reply.answers[0].data {
            RData::CNAME(c) => assert_eq!(c.0.to_ascii(), "us.edge.cdn.test."),
            other => panic!("{other:?}"),
        }
        assert_eq!(reply.answers[1].name.to_ascii(), "us.edge.cdn.test.");
        assert!(matches!(reply.answers[1].data, RData::A(_)));
        let ecs = reply
            .edns
            .as_ref()
            .and_then(|e| e.option(hickory_proto::rr::rdata::opt::EdnsCode::Subnet));
        assert!(matches!(ecs, Some(EdnsOption::Subnet(s)) if s.scope_prefix() == 16));
    }

    #[test]
    fn each_record_carries_the_ttl_of_its_owner_name() {
        let text = CONFIG
            .replace("lon = -77.0", "lon = -77.0\nttl = 5")
            .replace(
                "name = \"publisher\"",
                "name = \"publisher\"\nttl = 300\n[[customer]]\nname = \"shop\"",
            );
        let s = state_of(&text);
        let src: IpAddr = "127.0.0.1".parse().unwrap();
        let ttls = |name: &str, ecs: &str| {
            let q = packet(name, RecordType::A, Some((ecs.parse().unwrap(), 24)));
            let mut out = Vec::new();
            answer(&s, &q, src, &mut out, &mut Vec::new()).expect("fast path");
            let reply = Message::from_vec(&out).expect("a valid message");
            reply.answers.iter().map(|r| r.ttl).collect::<Vec<_>>()
        };
        // 10.1/16 goes to us (ttl 5), anything else to eu (the zone's 20).
        assert_eq!(ttls("publisher.cdn.test.", "10.1.2.0"), [300, 5]);
        assert_eq!(ttls("publisher.cdn.test.", "10.2.2.0"), [300, 20]);
        assert_eq!(ttls("shop.cdn.test.", "10.1.2.0"), [20, 5]);
        assert_eq!(ttls("us.edge.cdn.test.", "10.2.2.0"), [5]);
        assert_eq!(ttls("eu.edge.cdn.test.", "10.1.2.0"), [20]);
    }

    #[test]
    fn anything_unusual_goes_the_general_way() {
        let s = state();
        let mut out = Vec::new();
        let src: IpAddr = "127.0.0.1".parse().unwrap();
        for q in [
            packet("publisher.cdn.test.", RecordType::MX, None),
            packet("nothing.cdn.test.", RecordType::A, None),
            {
                // An IPv4 source prefix of 40 (the encoder refuses to write one: patch it).
                let mut q = packet(
                    "publisher.cdn.test.",
                    RecordType::A,
                    Some(("10.1.2.0".parse().unwrap(), 24)),
                );
                let at = q.len() - 5;
                q[at] = 40;
                q
            },
            // 10.1.2.1/24 (an octet more than /24 needs) and 10.1.3.0/23 (a bit beyond it):
            // FORMERR, which the general path answers (RFC 7871 6).
            raw_ecs(&[0, 1, 24, 0, 10, 1, 2, 1]),
            raw_ecs(&[0, 1, 23, 0, 10, 1, 3]),
            vec![0u8; 11],
            {
                let mut q = packet("publisher.cdn.test.", RecordType::A, None);
                q.push(0);
                q
            },
        ] {
            assert_eq!(
                answer(&s, &q, src, &mut out, &mut Vec::new()),
                None,
                "{q:?}"
            );
        }
    }
}
