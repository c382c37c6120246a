//! EDNS Client Subnet (RFC 7871) as a query carries it, read from the option's bytes.
//!
//! [`parse`] is the one check of an option: [`crate::fast_path`] and [`crate::handler`]
//! both call it, so they agree on which options are a FORMERR (RFC 7871 6 and 7.1.1).
//! The handler reads the option from the raw message ([`find`]) because the decoded
//! `ClientSubnet` of hickory-proto drops what is wrong with it: octets beyond those the
//! prefix needs are skipped, and bits beyond the prefix are kept as if they were part
//! of the address.

use std::net::IpAddr;

/// EDNS option code of Client Subnet.
pub const CODE: u16 = 8;

/// Record type of the EDNS pseudo-record.
const OPT: u16 = 41;

/// A well-formed Client Subnet option of a query, borrowed from the packet.
///
/// Invariant (kept by [`parse`], the only constructor): the family is 1 (IPv4) or 2
/// (IPv6), `source` fits it, and `address` has exactly the octets `source` needs with no
/// bit set beyond `source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet<'a> {
    family: u16,
    source: u8,
    address: &'a [u8],
}

/// Why an option is not a query's well-formed Client Subnet. Each is a FORMERR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Fewer than the four octets of family and prefix lengths.
    Short,
    /// Neither IPv4 (1) nor IPv6 (2).
    Family,
    /// A source prefix longer than the family's addresses.
    SourcePrefix,
    /// A scope prefix other than 0 (RFC 7871 7.1.1: queries send 0).
    Scope,
    /// More or fewer address octets than the source prefix needs (RFC 7871 6).
    AddressLength,
    /// A bit set beyond the source prefix in the last octet (RFC 7871 6).
    BitsBeyondPrefix,
}

/// Reads the data of a Client Subnet option.
pub fn parse(data: &[u8]) -> Result<Subnet<'_>, Invalid> {
    let &[f0, f1, source, scope, ref address @ ..] = data else {
        return Err(Invalid::Short);
    };
    let family = u16::from_be_bytes([f0, f1]);
    let max = match family {
        1 => 32,
        2 => 128,
        _ => return Err(Invalid::Family),
    };
    if source > max {
        return Err(Invalid::SourcePrefix);
    }
    if scope != 0 {
        return Err(Invalid::Scope);
    }
    if address.len() != usize::from(source).div_ceil(8) {
        return Err(Invalid::AddressLength);
    }
    let used = source % 8;
    if used != 0
        && address
            .last()
            .is_some_and(|last| last & (0xff >> used) != 0)
    {
        return Err(Invalid::BitsBeyondPrefix);
    }
    Ok(Subnet {
        family,
        source,
        address,
    })
}

impl<'a> Subnet<'a> {
    /// 1 (IPv4) or 2 (IPv6).
    pub fn family(&self) -> u16 {
        self.family
    }

    /// The source prefix length.
    pub fn source(&self) -> u8 {
        self.source
    }

    /// The address octets as sent (exactly those the prefix needs).
    pub fn address(&self) -> &'a [u8] {
        self.address
    }

    /// The network's address: the octets sent, zero-filled.
    pub fn ip(&self) -> IpAddr {
        let mut octets = [0u8; 16];
        octets[..self.address.len()].copy_from_slice(self.address);
        match self.family {
            1 => IpAddr::from([octets[0], octets[1], octets[2], octets[3]]),
            _ => IpAddr::from(octets),
        }
    }
}

/// The data of the first Client Subnet option in the OPT record of `message` (the first
/// OPT of the additional section), `None` when there is none. Reads only what it needs
/// and gives `None` at anything it cannot walk, as for an option whose stated length runs
/// past its record: hickory-proto then drops every option, so a message that decodes
/// never has a Client Subnet there.
pub fn find(message: &[u8]) -> Option<&[u8]> {
    let u16_at = |at: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *message.get(at)?,
            *message.get(at + 1)?,
        ])))
    };
    let questions = u16_at(4)?;
    let before_additional = u16_at(6)? + u16_at(8)?;
    let additional = u16_at(10)?;
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(message, at)? + 4;
    }
    for record in 0..before_additional + additional {
        at = skip_name(message, at)?;
        let rtype = u16_at(at)?;
        let rdata = message.get(at + 10..at + 10 + u16_at(at + 8)?)?;
        at += 10 + rdata.len();
        if record >= before_additional && rtype == usize::from(OPT) {
            return in_options(rdata);
        }
    }
    None
}

/// The data of the first Client Subnet option in an OPT record's data.
fn in_options(mut options: &[u8]) -> Option<&[u8]> {
    while let &[c0, c1, l0, l1, ref rest @ ..] = options {
        let size = usize::from(u16::from_be_bytes([l0, l1]));
        let (data, next) = rest.split_at_checked(size)?;
        if u16::from_be_bytes([c0, c1]) == CODE {
            return Some(data);
        }
        options = next;
    }
    None
}

/// Where the name starting at `at` ends (labels, or labels then a pointer).
fn skip_name(message: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let label = *message.get(at)?;
        match label & 0xc0 {
            0xc0 => return Some(at + 2),
            0 if label == 0 => return Some(at + 1),
            0 => at += 1 + usize::from(label),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::opt::EdnsOption;
    use hickory_proto::rr::{Name, RecordType};

    fn option(family: u16, source: u8, scope: u8, address: &[u8]) -> Vec<u8> {
        let mut data = family.to_be_bytes().to_vec();
        data.extend_from_slice(&[source, scope]);
        data.extend_from_slice(address);
        data
    }

    #[test]
    fn well_formed_options_give_the_network() {
        for (data, ip, source) in [
            (option(1, 24, 0, &[100, 64, 1]), "100.64.1.0", 24),
            (option(1, 23, 0, &[100, 64, 0]), "100.64.0.0", 23),
            (option(1, 25, 0, &[100, 64, 1, 128]), "100.64.1.128", 25),
            (option(1, 32, 0, &[192, 0, 2, 1]), "192.0.2.1", 32),
            (option(1, 0, 0, &[]), "0.0.0.0", 0),
            (
                option(2, 47, 0, &[0x20, 1, 0x0d, 0xb8, 0, 4]),
                "2001:db8:4::",
                47,
            ),
            (option(2, 0, 0, &[]), "::", 0),
        ] {
            let subnet = parse(&data).unwrap_or_else(|e| panic!("{data:?}: {e:?}"));
            assert_eq!(subnet.ip(), ip.parse::<IpAddr>().unwrap(), "{data:?}");
            assert_eq!(subnet.source(), source);
        }
    }

    #[test]
    fn malformed_options_say_why() {
        for (data, why) in [
            (vec![0, 1, 24], Invalid::Short),
            (option(3, 24, 0, &[1, 2, 3]), Invalid::Family),
            (option(1, 33, 0, &[1, 2, 3, 4, 5]), Invalid::SourcePrefix),
            (option(2, 129, 0, &[0; 17]), Invalid::SourcePrefix),
            (option(1, 24, 16, &[100, 64, 1]), Invalid::Scope),
            // 192.0.2.1/24: one octet more than /24 needs.
            (option(1, 24, 0, &[192, 0, 2, 1]), Invalid::AddressLength),
            (option(1, 24, 0, &[100, 64, 1, 0]), Invalid::AddressLength),
            (option(1, 24, 0, &[100, 64]), Invalid::AddressLength),
            (option(1, 0, 0, &[0]), Invalid::AddressLength),
            (option(1, 23, 0, &[100, 64, 1]), Invalid::BitsBeyondPrefix),
            (
                option(1, 25, 0, &[100, 64, 1, 129]),
                Invalid::BitsBeyondPrefix,
            ),
            (option(1, 1, 0, &[0xc0]), Invalid::BitsBeyondPrefix),
            (
                option(2, 47, 0, &[0x20, 1, 0x0d, 0xb8, 0, 5]),
                Invalid::BitsBeyondPrefix,
            ),
        ] {
            assert_eq!(parse(&data), Err(why), "{data:?}");
        }
    }

    fn message(options: &[EdnsOption]) -> Vec<u8> {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("a.cdn.test.").unwrap(),
            RecordType::A,
        ));
        let mut edns = Edns::new();
        for o in options {
            edns.options_mut().insert(o.clone());
        }
        m.set_edns(edns);
        m.to_vec().unwrap()
    }

    #[test]
    fn find_gives_the_client_subnet_option_as_sent() {
        let ecs = option(1, 24, 0, &[192, 0, 2, 1]);
        let bytes = message(&[
            EdnsOption::Unknown(10, vec![1, 2, 3, 4, 5, 6, 7, 8]),
            EdnsOption::Unknown(CODE, ecs.clone()),
        ]);
        assert_eq!(find(&bytes), Some(&ecs[..]));
        assert_eq!(
            find(&message(&[EdnsOption::Unknown(10, vec![1])])),
            None,
            "no ECS"
        );
        let mut plain = Message::new(7, MessageType::Query, OpCode::Query);
        plain.add_query(Query::query(Name::root(), RecordType::NS));
        assert_eq!(find(&plain.to_vec().unwrap()), None, "no OPT");
        // An option running past its record: none (as hickory-proto decodes it).
        let mut cut = message(&[EdnsOption::Unknown(CODE, option(1, 24, 0, &[1, 2, 3]))]);
        let len = cut.len();
        cut[len - 8] = 9; // the option's length: 7 octets follow it
        assert_eq!(find(&cut), None);
        assert_eq!(find(&[0u8; 5]), None);
    }
}
