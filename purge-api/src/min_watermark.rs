//! The lowest watermark over all nodes: the purge every node has applied, with all before it.
//!
//! Why: a purge is applied everywhere once the lowest node watermark reaches it. Taking the
//! minimum over every node at each acknowledgement costs O(nodes) per acknowledgement, so
//! O(nodes²) per purge, which at 1,000 nodes is most of the API's work (issue 24). A
//! tournament tree (a segment tree of minimums over the nodes' watermarks) answers "all
//! applied up to N?" in O(1) and takes an acknowledgement in O(log nodes).
//!
//! Unlike a count of nodes per sequence number, the tree takes a watermark that goes
//! *down* as easily as one that goes up: a node that restarted without its state, or was
//! reset because it fell out of the log's retention, reports a lower watermark, and the
//! purges past it are no longer applied everywhere.
//!
//! Invariants: [`MinWatermark::everywhere`] is always the minimum of the watermarks last
//! [set](MinWatermark::set) for each node (0 for a node never set), and `u64::MAX` when
//! there are no nodes (nothing to wait for: every purge is applied on all of none).

/// The nodes' watermarks and their minimum. Nodes are numbered `0..nodes`.
#[derive(Debug, Clone)]
pub struct MinWatermark {
    /// A complete binary tree in an array: the root at 1, the children of `i` at `2i` and
    /// `2i + 1`, the leaves (one per node, then `u64::MAX` padding up to a power of two) at
    /// `leaves..2 * leaves`. Every inner entry is the minimum of its two children.
    tree: Vec<u64>,
    /// Leaves in the tree: the node count rounded up to a power of two (at least 1).
    leaves: usize,
    nodes: usize,
}

impl MinWatermark {
    /// `nodes` nodes, each at watermark 0 (nothing applied).
    pub fn new(nodes: usize) -> Self {
        let leaves = nodes.max(1).next_power_of_two();
        let mut tree = vec![u64::MAX; 2 * leaves];
        tree[leaves..leaves + nodes].fill(0);
        for i in (1..leaves).rev() {
            tree[i] = tree[2 * i].min(tree[2 * i + 1]);
        }
        MinWatermark {
            tree,
            leaves,
            nodes,
        }
    }

    /// How many nodes there are.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Sets `node`'s watermark (higher or lower than before); returns the new minimum.
    ///
    /// # Panics
    /// When `node` is not below [`MinWatermark::nodes`]: node numbers are fixed at start.
    pub fn set(&mut self, node: usize, watermark: u64) -> u64 {
        assert!(node < self.nodes, "node {node} out of {} nodes", self.nodes);
        let mut i = self.leaves + node;
        self.tree[i] = watermark;
        while i > 1 {
            i /= 2;
            let low = self.tree[2 * i].min(self.tree[2 * i + 1]);
            if self.tree[i] == low {
                // Nothing above changes either.
                break;
            }
            self.tree[i] = low;
        }
        self.everywhere()
    }

    /// `node`'s watermark.
    pub fn get(&self, node: usize) -> u64 {
        self.tree[self.leaves + node]
    }

    /// The highest purge every node has applied (with all before it): the minimum of the
    /// nodes' watermarks, `u64::MAX` without nodes.
    pub fn everywhere(&self) -> u64 {
        self.tree[1]
    }

    /// Whether every node has applied purge `seq`.
    pub fn all_applied(&self, seq: u64) -> bool {
        self.everywhere() >= seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer the tree replaces: a scan of every node.
    fn naive(watermarks: &[u64]) -> u64 {
        watermarks.iter().copied().min().unwrap_or(u64::MAX)
    }

    #[test]
    fn starts_at_zero_and_none_is_everything() {
        assert_eq!(MinWatermark::new(3).everywhere(), 0);
        assert_eq!(MinWatermark::new(0).everywhere(), u64::MAX);
        assert!(MinWatermark::new(0).all_applied(u64::MAX));
        let mut one = MinWatermark::new(1);
        assert_eq!(one.set(0, 7), 7);
        assert!(one.all_applied(7) && !one.all_applied(8));
    }

    #[test]
    fn a_watermark_going_down_lowers_the_minimum() {
        let mut low = MinWatermark::new(5);
        for node in 0..5 {
            low.set(node, 10);
        }
        assert_eq!(low.everywhere(), 10);
        // Node 3 restarted without its state.
        assert_eq!(low.set(3, 2), 2);
        assert_eq!(low.get(3), 2);
        assert_eq!(low.set(3, 10), 10);
    }

    /// Nodes acknowledging a growing log in random orders (each node's watermark only
    /// rising, by random steps, with the odd reset), checked against a scan after every
    /// acknowledgement, for node counts around powers of two.
    #[test]
    fn agrees_with_a_scan_on_random_acknowledgement_orders() {
        let mut rng = fastrand::Rng::with_seed(24);
        for nodes in [1, 2, 3, 5, 8, 13, 31, 32, 33, 64, 100, 1000] {
            for _round in 0..4 {
                let mut low = MinWatermark::new(nodes);
                let mut watermarks = vec![0u64; nodes];
                let head = rng.u64(1..200);
                for _ack in 0..nodes * 8 {
                    let node = rng.usize(..nodes);
                    let watermark = if rng.u8(..50) == 0 {
                        // A reset: the node starts over lower.
                        rng.u64(..=watermarks[node])
                    } else {
                        (watermarks[node] + rng.u64(0..4)).min(head)
                    };
                    watermarks[node] = watermark;
                    let everywhere = low.set(node, watermark);
                    assert_eq!(everywhere, naive(&watermarks), "{nodes} nodes");
                    let seq = rng.u64(..=head);
                    assert_eq!(
                        low.all_applied(seq),
                        watermarks.iter().all(|&w| w >= seq),
                        "{nodes} nodes, purge {seq}"
                    );
                }
                for (node, &watermark) in watermarks.iter().enumerate() {
                    assert_eq!(low.get(node), watermark);
                }
            }
        }
    }

    /// Arbitrary values, in any order, including `u64::MAX` and going down.
    #[test]
    fn agrees_with_a_scan_on_arbitrary_values() {
        let mut rng = fastrand::Rng::with_seed(0x5ca1e);
        for _round in 0..200 {
            let nodes = rng.usize(1..70);
            let mut low = MinWatermark::new(nodes);
            let mut watermarks = vec![0u64; nodes];
            for _set in 0..100 {
                let node = rng.usize(..nodes);
                let watermark = match rng.u8(..10) {
                    0 => u64::MAX,
                    1 => 0,
                    _ => rng.u64(..1000),
                };
                watermarks[node] = watermark;
                assert_eq!(low.set(node, watermark), naive(&watermarks));
            }
        }
    }

    #[test]
    #[should_panic(expected = "node 3 out of 3 nodes")]
    fn an_unknown_node_is_a_bug() {
        MinWatermark::new(3).set(3, 1);
    }
}
