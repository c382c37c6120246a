//! `Idempotency-Key` as draft-ietf-httpapi-idempotency-key-header has it: a retry of a
//! keyed request gets the purge the first one created, never a second purge; a key reused
//! for a different request is refused (`422`), and so is a retry while the first request
//! is still being logged (`409`), each with an RFC 9457 problem saying what to do.
//!
//! The key ([`IdempotencyKey`]) and the request's [`Fingerprint`] are checked in two
//! places, in this order, so that no window lets a second purge through:
//! 1. [`InFlight::claim`]: requests of this API instance admitted but not yet in the log.
//!    The claim travels with the purge to the committer and is dropped after the append
//!    (or its failure), so a request that finds no claim finds the log entry instead.
//! 2. [`PurgeLog::find_idempotent`](crate::log::PurgeLog::find_idempotent), then
//!    [`replay`]: the entry the key created, with the fingerprint stored beside it (in the
//!    file log or the NATS stream, so it holds across restarts and API instances).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::log::LogEntry;
use crate::request::{Fingerprint, IdempotencyKey};

/// Why a keyed request is not answered with a purge id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyConflict {
    /// The key's first request was admitted and is not in the log yet.
    #[error(
        "a purge request with this Idempotency-Key is still being logged; retry in 1 s \
         (Retry-After) with the same key to get its id, or wait for the first request's \
         answer"
    )]
    InFlight,
    /// The key already named a different request (another purge, method or path).
    #[error(
        "this Idempotency-Key was already used for a different purge request ({earlier}); \
         nothing was purged: send a new purge with a new key, or resend the earlier request \
         unchanged to get its id"
    )]
    Reused {
        /// Which request holds the key: `purge 17`, or one still being logged.
        earlier: String,
    },
}

impl KeyConflict {
    /// `409` for a retry that came too early, `422` for a key that names another request.
    pub fn status(&self) -> u16 {
        match self {
            KeyConflict::InFlight => 409,
            KeyConflict::Reused { .. } => 422,
        }
    }

    /// The RFC 9457 problem type: a `tag:` URI (RFC 4151), an identifier that is not
    /// meant to be dereferenced; README "Purging" documents each.
    pub fn problem_type(&self) -> &'static str {
        match self {
            KeyConflict::InFlight => "tag:cdn.example.net,2025:problem/idempotency-key-in-flight",
            KeyConflict::Reused { .. } => "tag:cdn.example.net,2025:problem/idempotency-key-reused",
        }
    }

    /// The problem's title, the same for every occurrence (as RFC 9457 asks).
    pub fn title(&self) -> &'static str {
        match self {
            KeyConflict::InFlight => "A request with this Idempotency-Key is outstanding",
            KeyConflict::Reused { .. } => "Idempotency-Key is already used",
        }
    }

    /// Whether retrying the same request later can succeed (then `Retry-After: 1`).
    pub fn retry_later(&self) -> bool {
        matches!(self, KeyConflict::InFlight)
    }

    /// A bounded label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            KeyConflict::InFlight => "idempotency_in_flight",
            KeyConflict::Reused { .. } => "idempotency_reused",
        }
    }
}

/// The answer to a keyed request whose key is in the log: the earlier purge's id when
/// the requests are the same, else [`KeyConflict::Reused`].
pub fn replay(entry: &LogEntry, fingerprint: &Fingerprint) -> Result<u64, KeyConflict> {
    if entry.fingerprint() == *fingerprint {
        Ok(entry.seq)
    } else {
        Err(KeyConflict::Reused {
            earlier: format!("purge {}", entry.seq),
        })
    }
}

/// (publisher, key) -> fingerprint of the request holding it.
type Claims = HashMap<(String, String), Fingerprint>;

/// The keys of this instance's requests that are admitted but not yet in the log.
/// Bounded by the requests in progress: every claim is dropped once its purge is logged
/// or refused.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    claims: Arc<Mutex<Claims>>,
}

impl InFlight {
    /// Claims `key` of `publisher` for a request with `fingerprint`, until the returned
    /// [`Claim`] is dropped, which must be after the log has the purge (or refused it).
    /// Refused while another request holds the key: [`KeyConflict::InFlight`] for the same
    /// request, [`KeyConflict::Reused`] for a different one.
    pub fn claim(
        &self,
        publisher: &str,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
    ) -> Result<Claim, KeyConflict> {
        let id = (publisher.to_owned(), key.as_str().to_owned());
        let mut claims = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
        match claims.get(&id) {
            Some(holder) if holder == fingerprint => Err(KeyConflict::InFlight),
            Some(_) => Err(KeyConflict::Reused {
                earlier: "a request still being logged".into(),
            }),
            None => {
                claims.insert(id.clone(), fingerprint.clone());
                Ok(Claim {
                    claims: self.claims.clone(),
                    id,
                })
            }
        }
    }

    /// How many keys are claimed now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.claims
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A key held by one request; released when dropped.
#[derive(Debug)]
pub struct Claim {
    claims: Arc<Mutex<Claims>>,
    id: (String, String),
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.claims
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use node_api::purge::{Mode, Purge, Selector};

    fn purge(url: &str) -> Purge {
        Purge {
            site: "assets".into(),
            selector: Selector::Urls(vec![url.into()]),
            mode: Mode::Hard,
        }
    }

    fn key(text: &str) -> IdempotencyKey {
        let mut headers = http::HeaderMap::new();
        headers.insert("idempotency-key", text.parse().unwrap());
        IdempotencyKey::from_headers(&headers).unwrap().unwrap()
    }

    #[test]
    fn a_claimed_key_refuses_the_same_request_with_409_and_another_with_422_until_dropped() {
        let in_flight = InFlight::default();
        let a = Fingerprint::legacy(&purge("https://a.example/a"));
        let b = Fingerprint::legacy(&purge("https://a.example/b"));
        let claim = in_flight.claim("acme", &key("k1"), &a).unwrap();
        let retry = in_flight.claim("acme", &key("k1"), &a).unwrap_err();
        assert_eq!((retry.status(), retry.retry_later()), (409, true));
        let other = in_flight.claim("acme", &key("k1"), &b).unwrap_err();
        assert_eq!((other.status(), other.retry_later()), (422, false));
        // Other keys, and the same key of another publisher, are free.
        let _k2 = in_flight.claim("acme", &key("k2"), &b).unwrap();
        let _theirs = in_flight.claim("globex", &key("k1"), &b).unwrap();
        assert_eq!(in_flight.len(), 3);
        drop(claim);
        assert_eq!(in_flight.len(), 2);
        assert!(in_flight.claim("acme", &key("k1"), &b).is_ok());
    }

    #[test]
    fn a_logged_key_replays_only_the_request_that_created_it() {
        let entry = LogEntry {
            seq: 17,
            publisher: "acme".into(),
            purge: purge("https://a.example/a"),
            idempotency_key: Some("k1".into()),
            request_fingerprint: Some(Fingerprint::of(
                "POST",
                "/v1/purge",
                &purge("https://a.example/a"),
            )),
            accepted_at_ms: 0,
        };
        let same = Fingerprint::of("POST", "/v1/purge", &purge("https://a.example/a"));
        assert_eq!(replay(&entry, &same), Ok(17));
        let other = Fingerprint::of("POST", "/v1/purge", &purge("https://a.example/b"));
        let refused = replay(&entry, &other).unwrap_err();
        assert_eq!(refused.status(), 422);
        assert!(refused.to_string().contains("purge 17"), "{refused}");
    }
}
