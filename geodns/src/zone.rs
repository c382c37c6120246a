//! The zone's answers: what this server says for every name and type, given where the
//! client is sent.
//!
//! The zone holds the apex (SOA, NS and their glue), one name per customer (a CNAME to
//! `<region>.edge.<zone>`, followed in the same answer by that region's edge addresses),
//! one name per region (its healthy edges' A/AAAA), and the empty non-terminals above
//! them. Every other name in the zone is NXDOMAIN with the SOA (RFC 2308); names outside
//! it are REFUSED, since this server is authoritative only.
//!
//! TTLs: every record carries the TTL of its owner name, so a resolver caches each one
//! for its own time. A customer's CNAME carries the customer's TTL
//! ([`GeoDnsConfig::customer_ttl`]); the edge addresses after it, and those answered for
//! a region's name, carry that region's ([`GeoDnsConfig::region_ttl`]). The SOA, the NS
//! records, glue and negative answers keep their own fixed TTLs.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use hickory_proto::op::{Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, SOA};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};

use crate::config::GeoDnsConfig;
use crate::steering::Regions;

/// TTL of the apex NS records and of glue.
const NS_TTL: u32 = 3600;

/// What the server answers for one question.
#[derive(Debug, Default)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additionals: Vec<Record>,
    /// Set when the answer depends on where the client is: the region it was sent to.
    pub region: Option<usize>,
}

impl Answer {
    /// The header of the response that carries this answer to a query with `request`'s
    /// header: the flags hickory echoes (ID, opcode, RD, CD), this answer's code, and AA
    /// unless the question was refused (not this server's zone).
    pub fn metadata(&self, request: &Metadata) -> Metadata {
        let mut metadata = Metadata::response_from_request(request);
        metadata.response_code = self.rcode;
        metadata.authoritative = self.rcode != ResponseCode::Refused;
        metadata
    }
}

/// The zone, built from a validated config.
#[derive(Debug)]
pub struct Zone {
    apex: LowerName,
    soa: Record,
    ns: Vec<Record>,
    glue: HashMap<LowerName, Vec<IpAddr>>,
    glue_names: Vec<(Name, Vec<IpAddr>)>,
    /// Customer name -> its index in the config.
    customers: HashMap<LowerName, usize>,
    /// TTL of each customer's CNAME, by index.
    customer_ttls: Vec<u32>,
    /// TTL of the addresses owned by each region's name, by region index.
    region_ttls: Vec<u32>,
    /// `<region>.edge.<zone>` -> region index.
    region_names: HashMap<LowerName, usize>,
    region_fqdns: Vec<Name>,
    /// Names that exist only because names below them do (RFC 8020: not NXDOMAIN).
    empty_non_terminals: HashSet<LowerName>,
    max_answers: usize,
}

impl Zone {
    pub fn new(config: &GeoDnsConfig) -> Result<Self, hickory_proto::ProtoError> {
        let z = &config.zone;
        let mut apex = Name::from_ascii(&z.name)?;
        apex.set_fqdn(true);
        let under = |label: &str| -> Result<Name, hickory_proto::ProtoError> {
            let mut name = Name::from_ascii(label)?;
            name.set_fqdn(false);
            name.append_domain(&apex)
        };
        let fqdn = |text: &str| -> Result<Name, hickory_proto::ProtoError> {
            let mut name = Name::from_ascii(text)?;
            name.set_fqdn(true);
            Ok(name)
        };
        let mname = fqdn(&z.nameservers[0].name)?;
        let rname = match &z.hostmaster {
            Some(h) => fqdn(h)?,
            None => under("hostmaster")?,
        };
        let soa = Record::from_rdata(
            apex.clone(),
            z.negative_ttl,
            RData::SOA(SOA::new(
                mname,
                rname,
                z.serial,
                3600,
                600,
                604_800,
                z.negative_ttl,
            )),
        );
        let mut ns = Vec::new();
        let mut glue = HashMap::new();
        let mut glue_names = Vec::new();
        for server in &z.nameservers {
            let name = fqdn(&server.name)?;
            ns.push(Record::from_rdata(
                apex.clone(),
                NS_TTL,
                RData::NS(NS(name.clone())),
            ));
            if apex.zone_of(&name) && !server.addresses.is_empty() {
                glue.insert(LowerName::new(&name), server.addresses.clone());
                glue_names.push((name, server.addresses.clone()));
            }
        }
        let edge_label = under("edge")?;
        let mut region_names = HashMap::new();
        let mut region_fqdns = Vec::new();
        for (i, region) in config.regions.iter().enumerate() {
            let mut label = Name::from_ascii(region.name.to_ascii_lowercase())?;
            label.set_fqdn(false);
            let name = label.append_domain(&edge_label)?;
            region_names.insert(LowerName::new(&name), i);
            region_fqdns.push(name);
        }
        let mut customers = HashMap::new();
        for (i, customer) in config.customers.iter().enumerate() {
            customers.insert(LowerName::new(&under(&customer.name)?), i);
        }
        let apex_lower = LowerName::new(&apex);
        let mut empty_non_terminals = HashSet::new();
        let names = customers
            .keys()
            .cloned()
            .chain(region_names.keys().cloned())
            .chain(glue.keys().cloned())
            .collect::<Vec<_>>();
        for name in names {
            let mut parent = name.base_name();
            while parent != apex_lower && apex_lower.zone_of(&parent) {
                empty_non_terminals.insert(parent.clone());
                parent = parent.base_name();
            }
        }
        Ok(Self {
            apex: apex_lower,
            soa,
            ns,
            glue,
            glue_names,
            customers,
            customer_ttls: config
                .customers
                .iter()
                .map(|c| config.customer_ttl(c))
                .collect(),
            region_ttls: config
                .regions
                .iter()
                .map(|r| config.region_ttl(r))
                .collect(),
            region_names,
            region_fqdns,
            empty_non_terminals,
            max_answers: z.max_answers,
        })
    }

    /// The TTL of customer number `customer`'s CNAME (config order).
    pub fn customer_ttl(&self, customer: usize) -> u32 {
        self.customer_ttls[customer]
    }

    /// The TTL of the addresses owned by region number `region`'s name.
    pub fn region_ttl(&self, region: usize) -> u32 {
        self.region_ttls[region]
    }

    /// The names whose every answer is fixed by the config: the apex, glue and the empty
    /// non-terminals, unless a region or customer has the same name (which
    /// [`Zone::answer`] looks up first). Neither the client's location nor the edges'
    /// health changes what these answer, so it can be encoded once per config
    /// ([`crate::static_answers`]).
    pub fn static_names(&self) -> Vec<LowerName> {
        let mut names: Vec<LowerName> = std::iter::once(self.apex.clone())
            .chain(self.glue.keys().cloned())
            .chain(self.empty_non_terminals.iter().cloned())
            .filter(|name| {
                !self.region_names.contains_key(name) && !self.customers.contains_key(name)
            })
            .collect();
        // A glue name can also be an empty non-terminal's (names below it exist).
        names.sort();
        names.dedup();
        names
    }

    /// The answer to `qtype` `qclass` for `name`. `steer` is asked (only for customer
    /// names) which region the client goes to; `None` when no region is healthy.
    pub fn answer(
        &self,
        name: &LowerName,
        qtype: RecordType,
        qclass: DNSClass,
        regions: &Regions,
        steer: impl FnOnce() -> Option<usize>,
    ) -> Answer {
        if !self.apex.zone_of(name) || !matches!(qclass, DNSClass::IN | DNSClass::ANY) {
            return Answer {
                rcode: ResponseCode::Refused,
                ..Answer::default()
            };
        }
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return Answer {
                rcode: ResponseCode::Refused,
                ..Answer::default()
            };
        }
        if *name == self.apex {
            return match qtype {
                RecordType::SOA => self.records(vec![self.soa.clone()]),
                RecordType::NS => {
                    let mut answer = self.records(self.ns.clone());
                    answer.additionals = self.glue_records();
                    answer
                }
                RecordType::ANY => {
                    let mut all = vec![self.soa.clone()];
                    all.extend(self.ns.iter().cloned());
                    self.records(all)
                }
                _ => self.nodata(),
            };
        }
        if let Some(&region) = self.region_names.get(name) {
            let Some(serving) = regions.serving(region) else {
                return self.nodata();
            };
            // The asked name's TTL, whichever region's edges it answers with.
            let owner = self.region_fqdns[region].clone();
            let ttl = self.region_ttl(region);
            let records = self.addresses(regions, serving, &owner, ttl, qtype);
            if records.is_empty() {
                return self.nodata();
            }
            let mut answer = self.records(records);
            answer.region = Some(serving);
            return answer;
        }
        if let Some(&customer) = self.customers.get(name) {
            let Some(region) = steer() else {
                // Every region is down: say so with SERVFAIL rather than send clients nowhere.
                return Answer {
                    rcode: ResponseCode::ServFail,
                    ..Answer::default()
                };
            };
            let target = self.region_fqdns[region].clone();
            let owner: Name = name.into();
            let mut records = vec![Record::from_rdata(
                owner,
                self.customer_ttl(customer),
                RData::CNAME(CNAME(target.clone())),
            )];
            if matches!(qtype, RecordType::A | RecordType::AAAA) {
                let ttl = self.region_ttl(region);
                records.extend(self.addresses(regions, region, &target, ttl, qtype));
            }
            let mut answer = self.records(records);
            answer.region = Some(region);
            return answer;
        }
        if let Some(addresses) = self.glue.get(name) {
            let owner: Name = name.into();
            let records: Vec<Record> = addresses
                .iter()
                .filter_map(|ip| address_record(&owner, NS_TTL, *ip, qtype))
                .collect();
            return if records.is_empty() {
                self.nodata()
            } else {
                self.records(records)
            };
        }
        if self.empty_non_terminals.contains(name) {
            return self.nodata();
        }
        Answer {
            rcode: ResponseCode::NXDomain,
            authority: vec![self.soa.clone()],
            ..Answer::default()
        }
    }

    /// Region `region`'s healthy edges as records of `owner` with `ttl` for `qtype` (A,
    /// AAAA, or both for ANY).
    fn addresses(
        &self,
        regions: &Regions,
        region: usize,
        owner: &Name,
        ttl: u32,
        qtype: RecordType,
    ) -> Vec<Record> {
        let r = &regions.regions[region];
        let families: &[bool] = match qtype {
            RecordType::A => &[false],
            RecordType::AAAA => &[true],
            RecordType::ANY => &[false, true],
            _ => &[],
        };
        families
            .iter()
            .flat_map(|v6| r.addresses(*v6, self.max_answers))
            .filter_map(|ip| address_record(owner, ttl, ip, RecordType::ANY))
            .collect()
    }

    fn glue_records(&self) -> Vec<Record> {
        self.glue_names
            .iter()
            .flat_map(|(name, ips)| {
                ips.iter()
                    .filter_map(|ip| address_record(name, NS_TTL, *ip, RecordType::ANY))
            })
            .collect()
    }

    fn records(&self, answers: Vec<Record>) -> Answer {
        Answer {
            rcode: ResponseCode::NoError,
            answers,
            ..Answer::default()
        }
    }

    /// The name exists but has nothing of this type: NOERROR with the SOA (RFC 2308).
    fn nodata(&self) -> Answer {
        Answer {
            rcode: ResponseCode::NoError,
            authority: vec![self.soa.clone()],
            ..Answer::default()
        }
    }
}

/// `ip` as an A or AAAA record when `qtype` asks for its family (ANY: either).
fn address_record(owner: &Name, ttl: u32, ip: IpAddr, qtype: RecordType) -> Option<Record> {
    let rdata = match (ip, qtype) {
        (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(v4)),
        (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(v6)),
        _ => return None,
    };
    Some(Record::from_rdata(owner.clone(), ttl, rdata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_names_are_the_apex_glue_and_empty_non_terminals_not_steered_names() {
        let config = GeoDnsConfig::from_toml(
            r#"
            [zone]
            name = "cdn.test"
            nameservers = [
                { name = "ns1.cdn.test", addresses = ["192.0.2.53"] },
                { name = "ns.elsewhere.example", addresses = ["192.0.2.54"] },
                { name = "shop.cdn.test", addresses = ["192.0.2.55"] },
                { name = "ns2.b.cdn.test", addresses = ["192.0.2.56"] },
            ]
            [geo]
            default_region = "eu"
            [[region]]
            name = "eu"
            lat = 50.0
            lon = 8.0
            edge = [{ address = "192.0.2.10", probe = "http://127.0.0.1:1/healthz" }]
            [[customer]]
            name = "shop"
            [[customer]]
            name = "a.b"
            "#,
        )
        .expect("valid");
        let zone = Zone::new(&config).expect("zone");
        let mut names: Vec<String> = zone
            .static_names()
            .iter()
            .map(|name| name.to_string())
            .collect();
        names.sort();
        // Not `shop` (a customer first), nor the name server outside the zone.
        assert_eq!(
            names,
            [
                "b.cdn.test.",
                "cdn.test.",
                "edge.cdn.test.",
                "ns1.cdn.test.",
                "ns2.b.cdn.test."
            ]
        );
    }
}
