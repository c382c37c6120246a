//! Variants: responses that differ by request fields named in `Vary` (RFC 9111 4.1).
//!
//! Under a URL's primary key the store keeps a [`VaryIndex`] (the field names the origin
//! varies on, and an epoch); each variant lives under the primary key extended with the
//! epoch and the request's *signature*, its normalized values of those fields. A new index
//! gets a new epoch, so removing or replacing the index (a purge, or an origin that changed
//! its `Vary`) makes every old variant unreachable at once: none can resurface later.
//!
//! Invariant: a signature is computed from what the upstream saw for a fill (fields not
//! forwarded count as absent, `Accept-Encoding` as normalized), so a lookup matches a
//! variant only if the upstream would have been asked the same question.
//!
//! Values are normalized where the field's definition makes two spellings mean the same
//! (RFC 9111 4.1 permits it): every field's lines are combined and runs of whitespace
//! folded; the list-valued, case-insensitive content negotiation fields (`Accept`,
//! `Accept-Language`, `Accept-Charset`) are also split into members, spaces around `,`,
//! `;` and `=` dropped, lower-cased, `q` weights written canonically (`q=0.50` is
//! `q=0.5`, `q=1.000` is dropped), empty members dropped, and the members sorted and
//! deduplicated: a member's weight travels with it, so order carries no meaning. So
//! `Accept-Language: en, fr` and `fr,EN` share a variant.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{
    ACCEPT, ACCEPT_CHARSET, ACCEPT_ENCODING, ACCEPT_LANGUAGE, HeaderMap, HeaderName, HeaderValue,
    VARY,
};

use crate::cache::fields::forwarded_on_fill;
use crate::cache::key::CacheKey;

/// The fields a URL's responses vary on, and the epoch of its variant keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaryIndex {
    /// Lower-case, sorted, without duplicates.
    pub names: Arc<[HeaderName]>,
    pub epoch: u64,
}

/// The next epoch; 0 until the first index is made, which seeds it from the wall clock.
static NEXT_EPOCH: AtomicU64 = AtomicU64::new(0);

impl VaryIndex {
    /// A new index with an epoch no earlier index had, in this process or in an earlier
    /// one whose variants the disk tier may still hold: epochs start at the microseconds
    /// since the Unix epoch when the process made its first index, so a restarted node
    /// never reuses a variant key of the index it replaced.
    pub fn new(names: Vec<HeaderName>) -> Self {
        if NEXT_EPOCH.load(Ordering::Relaxed) == 0 {
            let micros = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
            let _ =
                NEXT_EPOCH.compare_exchange(0, micros.max(1), Ordering::Relaxed, Ordering::Relaxed);
        }
        Self {
            names: names.into(),
            epoch: NEXT_EPOCH.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Notes an index read back from the disk tier: later indexes of this process get
    /// later epochs (a clock set back cannot make one reuse its variant keys).
    pub fn note_epoch(epoch: u64) {
        NEXT_EPOCH.fetch_max(epoch.saturating_add(1), Ordering::Relaxed);
    }

    /// The key of the variant a request with `request` headers selects.
    pub fn variant_key(
        &self,
        primary: &CacheKey,
        request: &HeaderMap,
        keyed: &[HeaderName],
    ) -> (CacheKey, Box<str>) {
        let signature = signature(&self.names, request, keyed);
        (primary.variant(self.epoch, &signature), signature)
    }
}

/// Which variant a stored response is: the index it was stored under, and its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub index: VaryIndex,
    pub signature: Box<str>,
}

impl Selection {
    /// Whether a request selects this variant.
    pub fn matches(&self, request: &HeaderMap, keyed: &[HeaderName]) -> bool {
        *signature(&self.index.names, request, keyed) == *self.signature
    }
}

/// What a response's `Vary` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vary {
    /// No `Vary`: one response for every request.
    None,
    /// `Vary: *`: no request can be known to match; never served from cache.
    Any,
    /// The listed fields, lower-case, sorted, without duplicates.
    Fields(Vec<HeaderName>),
}

/// Parses every `Vary` line of a response.
pub fn vary_of(headers: &HeaderMap) -> Vary {
    let mut names = Vec::new();
    for value in headers.get_all(VARY) {
        let Ok(text) = value.to_str() else {
            return Vary::Any; // unreadable: treat as unmatchable
        };
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return Vary::Any;
            }
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) => names.push(name),
                Err(_) => return Vary::Any,
            }
        }
    }
    if names.is_empty() {
        return Vary::None;
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Vary::Fields(names)
}

/// What a site's responses vary on: their `Vary` plus the site's `key_headers`, which
/// are keyed as if every response named them.
pub fn with_keyed(vary: Vary, keyed: &[HeaderName]) -> Vary {
    match vary {
        Vary::None if keyed.is_empty() => Vary::None,
        Vary::None => Vary::Fields(keyed.to_vec()),
        Vary::Any => Vary::Any,
        Vary::Fields(mut names) => {
            names.extend(keyed.iter().cloned());
            names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            names.dedup();
            Vary::Fields(names)
        }
    }
}

/// The request's normalized values of `names`, one `name=value` line each; `keyed` are
/// the site's `key_headers` (forwarded, so their values count).
pub fn signature(names: &[HeaderName], request: &HeaderMap, keyed: &[HeaderName]) -> Box<str> {
    let mut out = String::new();
    for name in names {
        out.push_str(name.as_str());
        out.push('=');
        if !forwarded_on_fill(name, keyed) {
            out.push('\u{0}');
        } else if *name == ACCEPT_ENCODING {
            out.push_str(normalize_accept_encoding(request).unwrap_or("identity"));
        } else if is_negotiation_list(name) && request.contains_key(name) {
            out.push_str(&normalize_negotiation_list(request, name));
        } else {
            let mut values = request.get_all(name).iter().peekable();
            if values.peek().is_none() {
                out.push('\u{0}'); // absent differs from empty
            }
            for (i, value) in values.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                let text = String::from_utf8_lossy(value.as_bytes());
                out.push_str(&text.split_whitespace().collect::<Vec<_>>().join(" "));
            }
        }
        out.push('\n');
    }
    out.into_boxed_str()
}

/// Content negotiation fields whose value is a comma-separated list of case-insensitive
/// members with optional weights, where order carries no meaning.
fn is_negotiation_list(name: &HeaderName) -> bool {
    *name == ACCEPT_LANGUAGE || *name == ACCEPT || *name == ACCEPT_CHARSET
}

/// The members of every line of `name`, normalized, sorted and joined with `,`.
fn normalize_negotiation_list(request: &HeaderMap, name: &HeaderName) -> String {
    let mut members: Vec<String> = request
        .get_all(name)
        .iter()
        .flat_map(|value| {
            String::from_utf8_lossy(value.as_bytes())
                .split(',')
                .map(normalize_member)
                .collect::<Vec<_>>()
        })
        .filter(|member| !member.is_empty())
        .collect();
    members.sort_unstable();
    members.dedup();
    members.join(",")
}

/// `EN-us ; Q=0.50` -> `en-us;q=0.5`.
fn normalize_member(member: &str) -> String {
    let mut parts = member.split(';').map(|p| p.trim().to_ascii_lowercase());
    let mut out = parts.next().unwrap_or_default();
    for param in parts {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k.trim().to_owned(), v.trim().to_owned()),
            None => (param, String::new()),
        };
        if key == "q" {
            match canonical_weight(&value) {
                Some(q) if q == "1" => continue,
                Some(q) => {
                    out.push_str(";q=");
                    out.push_str(&q);
                    continue;
                }
                None => {}
            }
        }
        out.push(';');
        out.push_str(&key);
        if !value.is_empty() {
            out.push('=');
            out.push_str(&value);
        }
    }
    out
}

/// A `qvalue` (RFC 9110 12.4.2: `0[.ddd]` or `1[.000]`) without trailing zeros, or
/// `None` when it is not one (then it is kept as written).
fn canonical_weight(q: &str) -> Option<String> {
    let (int, frac) = q.split_once('.').unwrap_or((q, ""));
    let valid = matches!(int, "0" | "1")
        && frac.len() <= 3
        && frac.bytes().all(|b| b.is_ascii_digit())
        && (int == "0" || frac.bytes().all(|b| b == b'0'));
    if !valid {
        return None;
    }
    let frac = frac.trim_end_matches('0');
    Some(if frac.is_empty() {
        int.to_owned()
    } else {
        format!("{int}.{frac}")
    })
}

/// The content coding a fill asks for: `br` if acceptable, else `gzip`, else none.
/// Fills send this value instead of the client's, so every client that accepts the same
/// best coding shares one variant.
pub fn normalize_accept_encoding(request: &HeaderMap) -> Option<&'static str> {
    let mut br = false;
    let mut gzip = false;
    for value in request.get_all(ACCEPT_ENCODING) {
        let Ok(text) = value.to_str() else { continue };
        for item in text.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            if refused {
                continue;
            }
            match coding.as_str() {
                "br" => br = true,
                "gzip" | "x-gzip" | "*" => gzip = true,
                _ => {}
            }
        }
    }
    if br {
        Some("br")
    } else if gzip {
        Some("gzip")
    } else {
        None
    }
}

/// Replaces a fill's `Accept-Encoding` with its normalized value.
pub fn normalize_fill_accept_encoding(headers: &mut HeaderMap) {
    match normalize_accept_encoding(headers) {
        Some(coding) => {
            headers.insert(ACCEPT_ENCODING, HeaderValue::from_static(coding));
        }
        None => {
            headers.remove(ACCEPT_ENCODING);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cache::test_headers::headers as map;

    #[test]
    fn vary_lists_are_normalized_and_star_is_any() {
        assert_eq!(vary_of(&map(&[])), Vary::None);
        assert_eq!(
            vary_of(&map(&[
                ("vary", "Accept-Encoding, accept-language"),
                ("vary", "accept-encoding")
            ])),
            Vary::Fields(vec![
                ACCEPT_ENCODING,
                HeaderName::from_static("accept-language")
            ])
        );
        assert_eq!(vary_of(&map(&[("vary", "accept, *")])), Vary::Any);
        assert_eq!(vary_of(&map(&[("vary", "bad header")])), Vary::Any);
    }

    #[test]
    fn accept_encoding_normalizes_to_the_best_coding() {
        for (value, want) in [
            ("gzip, deflate, br", Some("br")),
            ("gzip", Some("gzip")),
            ("br;q=0, gzip", Some("gzip")),
            ("GZIP;q=0.5", Some("gzip")),
            ("identity", None),
            ("gzip;q=0", None),
            ("*", Some("gzip")),
        ] {
            let h = map(&[("accept-encoding", value)]);
            assert_eq!(normalize_accept_encoding(&h), want, "{value}");
        }
        assert_eq!(normalize_accept_encoding(&map(&[])), None);
    }

    #[test]
    fn signatures_tell_absent_from_empty_and_fold_whitespace() {
        let names = [HeaderName::from_static("accept-language")];
        let absent = signature(&names, &map(&[]), &[]);
        let empty = signature(&names, &map(&[("accept-language", "")]), &[]);
        assert_ne!(absent, empty);
        assert_eq!(
            signature(&names, &map(&[("accept-language", "en,  fr")]), &[]),
            signature(&names, &map(&[("accept-language", "en, fr")]), &[])
        );
    }

    #[test]
    fn negotiation_lists_are_compared_as_sets_of_normalized_members() {
        let names = [ACCEPT_LANGUAGE];
        let sig = |value: &str| signature(&names, &map(&[("accept-language", value)]), &[]);
        let base = sig("en, fr");
        for same in ["fr,en", "FR , En", " en ,, fr, en ", "en;q=1, fr;q=1.000"] {
            assert_eq!(sig(same), base, "{same:?}");
        }
        assert_eq!(sig("en;q=0.50, fr"), sig("fr, EN ; Q=0.5"));
        assert_ne!(sig("en;q=0.5, fr"), base);
        assert_ne!(sig("en"), base);
        assert_ne!(sig("en-gb, fr"), base);
        // Two lines are one list.
        let two = signature(
            &names,
            &map(&[("accept-language", "fr"), ("accept-language", "en")]),
            &[],
        );
        assert_eq!(two, base);
        // Absent still differs from empty.
        assert_ne!(signature(&names, &map(&[]), &[]), sig(""));
        let accept = [ACCEPT];
        assert_eq!(
            signature(
                &accept,
                &map(&[("accept", "text/html, image/webp;q=0.9")]),
                &[]
            ),
            signature(
                &accept,
                &map(&[("accept", "image/WEBP; q=0.90,Text/Html")]),
                &[]
            )
        );
    }

    #[test]
    fn clients_accepting_the_same_best_coding_share_a_variant() {
        let names = [ACCEPT_ENCODING];
        let a = signature(
            &names,
            &map(&[("accept-encoding", "gzip, deflate, br")]),
            &[],
        );
        let b = signature(&names, &map(&[("accept-encoding", "br")]), &[]);
        let c = signature(&names, &map(&[("accept-encoding", "gzip")]), &[]);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn fields_never_forwarded_count_as_absent() {
        let names = [HeaderName::from_static("x-forwarded-host")];
        assert_eq!(
            signature(&names, &map(&[("x-forwarded-host", "evil.example")]), &[]),
            signature(&names, &map(&[]), &[])
        );
        // Unless the site keys on them: then they are forwarded and their values count.
        assert_ne!(
            signature(
                &names,
                &map(&[("x-forwarded-host", "evil.example")]),
                &names
            ),
            signature(&names, &map(&[]), &names)
        );
    }

    #[test]
    fn key_headers_join_whatever_vary_says() {
        let keyed = [HeaderName::from_static("x-device")];
        assert_eq!(with_keyed(Vary::None, &[]), Vary::None);
        assert_eq!(with_keyed(Vary::None, &keyed), Vary::Fields(keyed.to_vec()));
        assert_eq!(with_keyed(Vary::Any, &keyed), Vary::Any);
        assert_eq!(
            with_keyed(
                Vary::Fields(vec![ACCEPT_ENCODING, keyed[0].clone()]),
                &keyed
            ),
            Vary::Fields(vec![ACCEPT_ENCODING, keyed[0].clone()])
        );
    }

    #[test]
    fn new_indexes_get_new_epochs() {
        let a = VaryIndex::new(vec![ACCEPT_ENCODING]);
        let b = VaryIndex::new(vec![ACCEPT_ENCODING]);
        assert_ne!(a.epoch, b.epoch);
        let primary = CacheKey::new(1, "http", "h", "/x");
        let h = map(&[("accept-encoding", "gzip")]);
        assert_ne!(
            a.variant_key(&primary, &h, &[]).0,
            b.variant_key(&primary, &h, &[]).0
        );
        assert_ne!(a.variant_key(&primary, &h, &[]).0, primary);
    }
}
