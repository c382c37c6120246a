//! The origin shield: the mid tier between every edge and the origin.
//!
//! Not built yet (issue 4). It will reuse the `edge` cache engine (keys, freshness,
//! coalescing, stale serving) with an origin pool as its upstream instead of a shield, so
//! that however many edges miss on one object at once, the origin sees a single fetch.
//! The pool balances across origin servers (round robin, weighted, least connections,
//! consistent hash, EWMA latency) and keeps them honest with active health probes and
//! passive ejection. Edges choose the shield for a key by rendezvous hashing.
