//! What a node is for: a public edge or an origin shield.
//!
//! Both run the same engine; everything that differs between them is decided here, by
//! [`Role`], and nowhere else:
//! - whose internal headers are believed ([`Role::believes_node_claims`]): a shield's
//!   clients are edges, an edge's are browsers;
//! - whether fills carry this node's own claims upstream ([`Role::signs_fills`]): an
//!   edge's upstream is the shield tier, a shield's the origin;
//! - what leaves the CDN toward clients ([`Role::strip_downstream`]): the tags purges name
//!   objects by reach the edges, which learn their tag index from them, but never a
//!   browser.
//!
//! A node is an edge unless it is started as a shield (`origin_shield::ShieldServer` sets
//! [`NodeConfig::role`](crate::node::config::NodeConfig::role)).

use http::HeaderMap;

use crate::node::invalidation::TAG_FIELDS;

/// A node's place in the CDN.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    /// A public edge: its clients are browsers, its upstream the shield tier (or the
    /// origin, in a CDN without shields). The last hop of the CDN toward clients.
    #[default]
    Edge,
    /// The mid tier: its clients are the edges, its upstream the origin servers.
    Shield,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Edge => "edge",
            Role::Shield => "shield",
        }
    }

    /// Whether a request's internal headers (`cdn-purge-seq`) may be believed when they
    /// carry a valid node proof. Only at a shield, whose clients are the edges: an edge's
    /// clients are browsers, and no node sends it requests, so whatever a request says
    /// about a node is removed unread.
    pub fn believes_node_claims(self) -> bool {
        self == Role::Shield
    }

    /// Whether this node's fills carry its own claims (its purge watermark, signed)
    /// upstream. An edge's do, so the shield it asks bypasses a copy the edge has already
    /// purged; a shield's upstream is the origin, which never sees internal headers.
    pub fn signs_fills(self) -> bool {
        self == Role::Edge
    }

    /// Removes from a response arriving from upstream what must not go further
    /// downstream from this node. An edge, the last hop, removes the tags purges name
    /// objects by (`Surrogate-Key`, `Cache-Tag`): they are the CDN's business, not the
    /// browser's. A shield keeps them: its edges learn their tag index from them.
    pub fn strip_downstream(self, headers: &mut HeaderMap) {
        if self == Role::Edge {
            for (name, _) in TAG_FIELDS {
                headers.remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::test_headers::headers;

    #[test]
    fn only_an_edge_strips_tags_and_only_a_shield_believes_claims() {
        let tagged = headers(&[
            ("surrogate-key", "a b"),
            ("cache-tag", "c"),
            ("content-type", "text/css"),
        ]);
        let mut edge = tagged.clone();
        Role::Edge.strip_downstream(&mut edge);
        assert_eq!(edge, headers(&[("content-type", "text/css")]));
        let mut shield = tagged.clone();
        Role::Shield.strip_downstream(&mut shield);
        assert_eq!(shield, tagged);
        assert!(Role::Shield.believes_node_claims() && !Role::Edge.believes_node_claims());
        assert!(Role::Edge.signs_fills() && !Role::Shield.signs_fills());
        assert_eq!(Role::default(), Role::Edge);
    }
}
