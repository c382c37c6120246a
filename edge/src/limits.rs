//! Per-client limits enforced at accept time: open connections per client IP address.
//!
//! The other request limits live where the input is read: head size, field count, target
//! length and declared body size in [`crate::connection`] (and again in
//! [`crate::proxy::Edge::handle`] for requests hyper parsed), HTTP/2 stream limits in
//! [`crate::h2`], the TLS handshake deadline in [`crate::https`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// What a client over its connection limit is told before the connection is closed.
pub const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\n\
content-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\nretry-after: 1\r\n\
content-length: 75\r\nconnection: close\r\n\r\n\
429 Too Many Requests: too many open connections from your address; retry.\n";

/// Open connections by client address, bounded by `max` each (0: unbounded).
///
/// Invariant: an address is in the map exactly while it has at least one open
/// connection, so the map holds no more entries than there are connections.
#[derive(Debug)]
pub struct ConnectionsPerIp {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct IpSlot {
    owner: Option<(Arc<ConnectionsPerIp>, IpAddr)>,
}

impl ConnectionsPerIp {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::default(),
        })
    }

    /// Admits one more connection from `ip`, or `None` when it already has `max` open.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        if self.max == 0 {
            return Some(IpSlot { owner: None });
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            owner: Some((self.clone(), ip)),
        })
    }

    /// Open connections from `ip`.
    pub fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let Some((owner, ip)) = self.owner.take() else {
            return;
        };
        let mut open = owner.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_own_allowance_and_places_come_back() {
        let limit = ConnectionsPerIp::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = limit.admit(a).unwrap();
        let _second = limit.admit(a).unwrap();
        assert!(limit.admit(a).is_none());
        assert!(limit.admit(b).is_some());
        drop(first);
        assert_eq!(limit.open(a), 1);
        assert!(limit.admit(a).is_some());
        assert_eq!(
            limit.open(b),
            0,
            "the map forgets addresses without connections"
        );
    }

    #[test]
    fn the_refusal_is_well_framed() {
        let text = std::str::from_utf8(TOO_MANY_CONNECTIONS).unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(text.contains(&format!("content-length: {}\r\n", body.len())));
    }

    #[test]
    fn zero_means_unbounded() {
        let limit = ConnectionsPerIp::new(0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let slots: Vec<_> = (0..1000).map(|_| limit.admit(ip).unwrap()).collect();
        assert_eq!(slots.len(), 1000);
    }
}
