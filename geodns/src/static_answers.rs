//! The zone's static answers (the apex's SOA and NS, the glue, the empty non-terminals:
//! every answer that neither the client's location nor the edges' health changes),
//! encoded once per config for the fast path ([`crate::fast_path`]), which sends one with
//! the query's ID, flags, question and EDNS.
//!
//! Measured reason: through the general path the glue's A took about 13,300 instructions
//! per query, a steered answer on the fast path 1,600, copied from here about 700
//! (`examples/answer_cost.rs` under callgrind, system calls aside); the glue was answered
//! at 0.72-0.80x gdnsd per server core (BENCHMARKS.md, issue 23).
//!
//! Invariant: an answer here is what the general path sends for the same query, byte for
//! byte. It is the zone's own answer ([`Zone::answer`]), given the response header as the
//! handler gives it ([`Answer::metadata`]) and encoded by the same hickory response
//! builder, for a question of the same length: the general path copies the question as
//! sent and compresses no name against it, so what follows the question does not depend on
//! the question's case, and the flags it echoes (RD, CD) are patched in per query. Only
//! NOERROR answers are kept, encoded without EDNS: the general path writes the OPT record
//! last, where the fast path appends it. Anything else (other types, every other name,
//! NXDOMAIN) is the general path's.

use std::net::SocketAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, LowerName, Name, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::steering::Regions;
use crate::zone::{Answer, Zone};

/// The query types answered here (the types `geodns_queries_total` has a label for). A
/// question's slot in this list is its index in a [`StaticName`]'s answers.
pub const TYPES: [RecordType; 9] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::NS,
    RecordType::SOA,
    RecordType::ANY,
    RecordType::CNAME,
    RecordType::MX,
    RecordType::TXT,
    RecordType::HTTPS,
];

/// The slot of `qtype` in [`TYPES`], if it is one of them.
pub fn slot(qtype: u16) -> Option<usize> {
    Some(match qtype {
        1 => 0,
        28 => 1,
        2 => 2,
        6 => 3,
        255 => 4,
        5 => 5,
        15 => 6,
        16 => 7,
        65 => 8,
        _ => return None,
    })
}

/// One encoded answer, as the general path sends it to a query with RD and CD clear and
/// without EDNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The header after the ID: flags, response code and the four section counts.
    pub header: [u8; 10],
    /// What follows the question: the answer, authority and additional records.
    pub records: Box<[u8]>,
}

/// The static answers of one name, in its lower-case wire form, by [`slot`].
#[derive(Debug)]
pub struct StaticName {
    pub wire: Vec<u8>,
    pub answers: [Option<Encoded>; TYPES.len()],
}

/// Every static answer of a zone, by name.
#[derive(Debug, Default)]
pub struct StaticAnswers {
    pub names: Vec<StaticName>,
}

impl StaticAnswers {
    /// Encodes the answers of each of the zone's [static names](Zone::static_names) to
    /// each of [`TYPES`]. `regions` is what [`Zone::answer`] takes; a static name's answer
    /// never consults it, and one that would (steers, names a region) is left out.
    pub fn new(zone: &Zone, regions: &Regions) -> Self {
        let names = zone
            .static_names()
            .into_iter()
            .filter_map(|name| {
                let wire = Name::from(&name).to_bytes().ok()?.to_ascii_lowercase();
                let answers = TYPES.map(|qtype| encode(zone, regions, &name, &wire, qtype));
                Some(StaticName { wire, answers })
            })
            .collect();
        Self { names }
    }

    /// The answer of name number `name` to `qtype`, if it has one here.
    pub fn get(&self, name: usize, qtype: u16) -> Option<&Encoded> {
        self.names.get(name)?.answers[slot(qtype)?].as_ref()
    }
}

/// The general path's answer to `qtype` for `name` (`wire` in wire form), without the
/// question; `None` when it is not a static NOERROR answer.
fn encode(
    zone: &Zone,
    regions: &Regions,
    name: &LowerName,
    wire: &[u8],
    qtype: RecordType,
) -> Option<Encoded> {
    let mut steered = false;
    let answer: Answer = zone.answer(name, qtype, DNSClass::IN, regions, || {
        steered = true;
        None
    });
    if steered || answer.region.is_some() || answer.rcode != ResponseCode::NoError {
        return None;
    }
    // The query it answers: ID 0, RD and CD clear, one question, no EDNS.
    let mut query = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    query.extend_from_slice(wire);
    query.extend_from_slice(&u16::from(qtype).to_be_bytes());
    query.extend_from_slice(&u16::from(DNSClass::IN).to_be_bytes());
    let question_end = query.len();
    let src = SocketAddr::from(([0, 0, 0, 0], 0));
    let request = Request::from_bytes(query, src, Protocol::Udp).ok()?;
    let response = MessageResponseBuilder::from_message_request(&request).build(
        answer.metadata(&request.metadata),
        answer.answers.iter(),
        answer.authority.iter(),
        std::iter::empty(),
        answer.additionals.iter(),
    );
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    let info = response.destructive_emit(&mut encoder).ok()?;
    if info.truncation || bytes.len() < question_end {
        return None;
    }
    Some(Encoded {
        header: bytes[2..12].try_into().ok()?,
        records: bytes[question_end..].into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_type_has_its_slot() {
        for (i, qtype) in TYPES.iter().enumerate() {
            assert_eq!(slot(u16::from(*qtype)), Some(i), "{qtype}");
        }
        assert_eq!(slot(u16::from(RecordType::AXFR)), None);
        assert_eq!(slot(u16::from(RecordType::CAA)), None);
    }
}
