//! The common queries answered without building a message: A or AAAA for a customer name
//! or a region name, and the zone's static answers (its SOA, NS, glue: see
//! [`crate::static_answers`]), class IN, with or without EDNS and Client Subnet.
//!
//! Measured reason: through `hickory-server` every UDP query costs a task, channel hops and
//! a `Record`-by-`Record` encoding with allocations; gdnsd answered 2.5x as many queries
//! per core (BENCHMARKS.md). Here the question is read in place, and the answer is written
//! into one reused buffer: for a steered name the region is chosen exactly as
//! [`crate::handler`] chooses it and the records written here (the question copied as
//! sent, names compressed against it); for a static answer the bytes the general path
//! encoded when the config was loaded are copied after the question.
//!
//! Invariant: this path answers only what it fully understands and produces the same
//! answer the general path would (the tests compare the two; a static answer byte for
//! byte); anything else (other types or classes, other opcodes, EDNS versions, malformed
//! or unusual packets, answers that would need truncation, no healthy region) returns
//! `None` and goes the general way.

use std::net::IpAddr;

use crate::ecs;
use crate::state::State;
use crate::static_answers;

/// Query types this path answers.
const A: u16 = 1;
const AAAA: u16 = 28;
const CNAME: u16 = 5;
const OPT: u16 = 41;
const CLASS_IN: u16 = 1;

/// The header flags a response echoes from its query (hickory's
/// `Metadata::response_from_request`, which the general path uses): RD in the third
/// byte, CD in the fourth.
const RD: u8 = 0x01;
const CD: u8 = 0x10;

/// What a name in the zone is, for this path: a customer or a region, by its index in
/// the config (which also finds its TTL in the [`Zone`](crate::zone::Zone)), or a name
/// whose answers are static, by its index in [`State::static_answers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastName {
    Customer(usize),
    Region(usize),
    Static(usize),
}

/// What was answered, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// A or AAAA (`qtype`) with the edges of region number `region`.
    Steered { qtype: u16, region: usize },
    /// A static answer to the type in slot `slot` of [`static_answers::TYPES`].
    Static { slot: usize },
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
    if qclass != CLASS_IN {
        return None;
    }
    let kind = *state.fast_names.get(&name[..len])?;
    let stored = match kind {
        FastName::Static(i) => Some(state.static_answers.get(i, qtype)?),
        FastName::Customer(_) | FastName::Region(_) if qtype == A || qtype == AAAA => None,
        FastName::Customer(_) | FastName::Region(_) => return None,
    };
    let (payload, subnet) = edns(packet, question_end, additional, state.ecs)?;

    if let Some(encoded) = stored {
        start(
            out,
            packet,
            question_end,
            &encoded.header,
            payload.is_some(),
        )?;
        out.extend_from_slice(&encoded.records);
        // Not steered: the answer is good for every client (scope 0, RFC 7871 7.2.1).
        finish(out, payload, subnet.as_ref(), 0)?;
        return Some(Answered::Static {
            slot: static_answers::slot(qtype)?,
        });
    }

    // Where the answer comes from: the same decisions as the general path.
    let client = match (&subnet, state.ecs) {
        (Some(s), true) if s.source() > 0 => s.ip(),
        _ => src,
    };
    let mut scope = 0u8;
    let region = match kind {
        FastName::Customer(_) => {
            let steered = state.steer(client);
            scope = steered.scope;
            steered.region?
        }
        FastName::Region(r) => state.regions.serving(r)?,
        FastName::Static(_) => return None,
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
        FastName::Static(_) => return None,
    };
    let [t0, t1, t2, t3] = state.zone.region_ttl(owner_region).to_be_bytes();
    let records = u16::try_from(usize::from(cname_ttl.is_some()) + addresses.len()).ok()?;
    let [r0, r1] = records.to_be_bytes();
    // QR and AA; RA off, NOERROR; one question, the records, no authority or additional.
    let header = [0x84, 0x00, 0, 1, r0, r1, 0, 0, 0, 0];
    start(out, packet, question_end, &header, payload.is_some())?;
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
    let scope = match &subnet {
        Some(s) if s.source() > 0 => scope,
        _ => 0,
    };
    finish(out, payload, subnet.as_ref(), scope)?;
    Some(Answered::Steered { qtype, region })
}

/// The query's EDNS after its question (ending at `question_end`; `additional` records
/// follow it): the payload size it advertises (`None`: no EDNS) and its Client Subnet,
/// when the server honours ECS. `None` for anything but one OPT record of version 0 with
/// at most one valid Client Subnet option, or for bytes after the message.
// Inlined: one call per answer, and the per-query cost is what this module is for.
#[inline(always)]
fn edns(
    packet: &[u8],
    question_end: usize,
    additional: u16,
    honour_ecs: bool,
) -> Option<(Option<u16>, Option<ecs::Subnet<'_>>)> {
    if additional == 0 {
        return (packet.len() == question_end).then_some((None, None));
    }
    let opt = packet.get(question_end..)?;
    if opt.len() < 11 || opt[0] != 0 || u16::from_be_bytes([opt[1], opt[2]]) != OPT {
        return None;
    }
    let payload = u16::from_be_bytes([opt[3], opt[4]]);
    if opt[6] != 0 {
        return None; // EDNS version above 0: BADVERS, the general path's business
    }
    let rdlen = u16::from_be_bytes([opt[9], opt[10]]) as usize;
    let mut options = opt.get(11..11 + rdlen)?;
    if opt.len() != 11 + rdlen {
        return None;
    }
    let mut subnet = None;
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
    // Validated above, but neither used nor echoed when the server does not honour ECS.
    Some((Some(payload), subnet.filter(|_| honour_ecs)))
}

/// Starts the response to `packet` in `out`: its ID; `header`, the rest of the header of
/// the response without EDNS to a query with RD and CD clear, with the query's RD and
/// CD and the OPT record counted when the query has `edns`; then the question as sent.
// Inlined: one call per answer, and the per-query cost is what this module is for.
#[inline(always)]
fn start(
    out: &mut Vec<u8>,
    packet: &[u8],
    question_end: usize,
    header: &[u8; 10],
    edns: bool,
) -> Option<()> {
    let additional = u16::from_be_bytes([header[8], header[9]]).checked_add(u16::from(edns))?;
    let [a0, a1] = additional.to_be_bytes();
    out.clear();
    #[rustfmt::skip]
    out.extend_from_slice(&[
        packet[0], packet[1],
        header[0] | (packet[2] & RD), header[1] | (packet[3] & CD),
        header[2], header[3], header[4], header[5], header[6], header[7], a0, a1,
    ]);
    out.extend_from_slice(&packet[12..question_end]);
    Some(())
}

/// Ends the response in `out` with the OPT record when the query had EDNS (`payload`,
/// the size it advertised), echoing its Client Subnet `subnet` with `scope`. `None` when
/// the response is larger than the client takes over UDP: the general path truncates it.
fn finish(
    out: &mut Vec<u8>,
    payload: Option<u16>,
    subnet: Option<&ecs::Subnet<'_>>,
    scope: u8,
) -> Option<()> {
    let limit = match payload {
        Some(theirs) => {
            let ours = theirs.clamp(512, crate::handler::MAX_UDP_PAYLOAD);
            out.push(0);
            out.extend_from_slice(&OPT.to_be_bytes());
            out.extend_from_slice(&ours.to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0]);
            match subnet {
                Some(s) => {
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
    (out.len() <= limit).then_some(())
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
    use crate::general::tests::handler_of;
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
            Answered::Steered {
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

    /// A zone with static names of every kind: the apex, two in-zone name servers (glue of
    /// both families, several addresses), one outside the zone, one that is also a
    /// customer's name, and an empty non-terminal under the apex (`b.cdn.test`, above the
    /// customer `a.b`).
    const STATIC_ZONE: &str = r#"
            [zone]
            name = "cdn.test"
            hostmaster = "dns.example.org"
            serial = 42
            nameservers = [
                { name = "ns1.cdn.test", addresses = ["192.0.2.53", "2001:db8::53", "192.0.2.54"] },
                { name = "ns2.cdn.test", addresses = ["198.51.100.53"] },
                { name = "ns.elsewhere.example" },
                { name = "publisher.cdn.test", addresses = ["192.0.2.99"] },
            ]
            [geo]
            default_region = "eu"
            [[region]]
            name = "eu"
            lat = 50.0
            lon = 8.0
            edge = [{ address = "192.0.2.10", probe = "http://127.0.0.1:1/healthz" }]
            [[customer]]
            name = "publisher"
            [[customer]]
            name = "a.b"
        "#;

    /// `name` `qtype` with the given header flags, EDNS payload and Client Subnet option.
    fn flavoured(
        name: &str,
        qtype: RecordType,
        (rd, cd): (bool, bool),
        payload: Option<u16>,
        ecs: Option<(IpAddr, u8)>,
    ) -> Vec<u8> {
        let mut m = Message::new(0xbeef, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = rd;
        m.metadata.checking_disabled = cd;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if payload.is_some() || ecs.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(payload.unwrap_or(1232));
            if let Some((addr, prefix)) = ecs {
                edns.options_mut()
                    .insert(EdnsOption::Subnet(ClientSubnet::new(addr, prefix, 0)));
            }
            m.set_edns(edns);
        }
        m.to_vec().unwrap()
    }

    /// What the general path sends over UDP for `packet` from `src`.
    async fn general(handler: &crate::handler::Handler, packet: &[u8], src: IpAddr) -> Vec<u8> {
        let mut out = Vec::new();
        let from = std::net::SocketAddr::new(src, 5353);
        let protocol = hickory_server::net::xfer::Protocol::Udp;
        assert!(crate::general::answer(handler, packet, from, protocol, &mut out).await);
        out
    }

    #[tokio::test]
    async fn a_static_answer_is_the_general_paths_byte_for_byte() {
        let src: IpAddr = "127.0.0.1".parse().unwrap();
        let mut compared = 0;
        // With Client Subnet honoured (echoed, scope 0) and not (not echoed).
        for text in [
            STATIC_ZONE.to_owned(),
            STATIC_ZONE.replace("[geo]\n", "[geo]\n            ecs = false\n"),
        ] {
            let handler = handler_of(&text);
            let state = handler.state.load();
            assert_eq!(
                state.ecs,
                compared == 0,
                "the second zone does not honour ECS"
            );
            for name in ["cdn.test.", "ns1.cdn.test.", "NS2.Cdn.Test.", "b.cdn.test."] {
                for qtype in static_answers::TYPES {
                    for (i, (payload, ecs)) in [
                        (None, None),
                        (Some(1232), None),
                        (Some(4096), Some(("10.1.2.0".parse().unwrap(), 24))),
                        (Some(600), Some(("2001:db8:5::".parse().unwrap(), 48))),
                        (Some(100), Some(("10.1.2.77".parse().unwrap(), 0))),
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        let flags = (i.is_multiple_of(2), i.is_multiple_of(3));
                        let q = flavoured(name, qtype, flags, payload, ecs);
                        let what = format!("{name} {qtype} {flags:?} {payload:?} {ecs:?}");
                        let mut out = Vec::new();
                        let answered = answer(&state, &q, src, &mut out, &mut Vec::new());
                        assert_eq!(
                            answered,
                            Some(Answered::Static {
                                slot: static_answers::slot(qtype.into()).unwrap()
                            }),
                            "{what}"
                        );
                        assert_eq!(out, general(&handler, &q, src).await, "{what}");
                        compared += 1;
                    }
                }
            }
        }
        assert_eq!(compared, 2 * 4 * 9 * 5);
    }

    #[tokio::test]
    async fn steered_answers_echo_the_flags_the_general_path_echoes() {
        let handler = handler_of(CONFIG);
        let state = handler.state.load();
        let src: IpAddr = "127.0.0.1".parse().unwrap();
        for name in ["publisher.cdn.test.", "eu.edge.cdn.test."] {
            for flags in [(false, false), (true, false), (false, true), (true, true)] {
                let q = flavoured(name, RecordType::A, flags, Some(1232), None);
                let mut out = Vec::new();
                let answered = answer(&state, &q, src, &mut out, &mut Vec::new());
                assert!(matches!(answered, Some(Answered::Steered { .. })));
                // The header whole: ID, flags (RD and CD as asked), code and counts.
                let general = general(&handler, &q, src).await;
                assert_eq!(out[..12], general[..12], "{name} {flags:?}");
            }
        }
    }

    #[tokio::test]
    async fn names_shared_with_steering_and_big_or_negative_answers_go_their_own_way() {
        let handler = handler_of(STATIC_ZONE);
        let state = handler.state.load();
        let src: IpAddr = "127.0.0.1".parse().unwrap();
        let mut out = Vec::new();
        // A name server named like a customer: the customer's CNAME, steered.
        let q = flavoured(
            "publisher.cdn.test.",
            RecordType::A,
            (true, false),
            None,
            None,
        );
        assert!(matches!(
            answer(&state, &q, src, &mut out, &mut Vec::new()),
            Some(Answered::Steered { .. })
        ));
        let q = flavoured(
            "publisher.cdn.test.",
            RecordType::NS,
            (true, false),
            None,
            None,
        );
        assert_eq!(answer(&state, &q, src, &mut out, &mut Vec::new()), None);
        for q in [
            // NXDOMAIN, a zone transfer, a type not encoded, another class.
            flavoured(
                "nothing.cdn.test.",
                RecordType::A,
                (true, false),
                None,
                None,
            ),
            flavoured("cdn.test.", RecordType::AXFR, (false, false), None, None),
            flavoured("cdn.test.", RecordType::CAA, (false, false), None, None),
            {
                let mut m = Message::new(7, MessageType::Query, OpCode::Query);
                let mut query =
                    Query::query(Name::from_ascii("cdn.test.").unwrap(), RecordType::SOA);
                query.set_query_class(hickory_proto::rr::DNSClass::CH);
                m.add_query(query);
                m.to_vec().unwrap()
            },
        ] {
            assert_eq!(
                answer(&state, &q, src, &mut out, &mut Vec::new()),
                None,
                "{q:?}"
            );
        }

        // Name servers enough for an NS answer over 512 bytes: truncated without EDNS, by
        // the general path; whole within a larger EDNS payload, by this one.
        let many: Vec<String> = (0..24)
            .map(|i| format!("{{ name = \"ns{i}.cdn.test\", addresses = [\"192.0.2.{i}\"] }}"))
            .collect();
        let text = STATIC_ZONE.replace(
            "{ name = \"ns.elsewhere.example\" },",
            &format!("{},", many.join(",\n")),
        );
        let handler = handler_of(&text);
        let state = handler.state.load();
        let plain = flavoured("cdn.test.", RecordType::NS, (true, false), None, None);
        assert_eq!(answer(&state, &plain, src, &mut out, &mut Vec::new()), None);
        let truncated = general(&handler, &plain, src).await;
        assert!(Message::from_vec(&truncated).unwrap().metadata.truncation);
        let edns = flavoured("cdn.test.", RecordType::NS, (true, false), Some(1232), None);
        assert!(answer(&state, &edns, src, &mut out, &mut Vec::new()).is_some());
        assert!(out.len() > 512);
        assert_eq!(out, general(&handler, &edns, src).await);
    }
}
