//! What a publisher sends, and how it becomes a [`Purge`]: one selector, every target
//! inside the site, nothing half-valid; its `Idempotency-Key`, and the [`Fingerprint`]
//! that tells a retry of a request from another request reusing its key.

use http::HeaderMap;
use node_api::purge::{Mode, Purge, Selector};
use serde::{Deserialize, Serialize};

use crate::config::SiteConfig;

/// The path publishers `POST` purges to.
pub const PURGE_PATH: &str = "/v1/purge";

/// The request header naming a purge, as draft-ietf-httpapi-idempotency-key-header has it.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Longest `Idempotency-Key` accepted, in bytes: room for any UUID or hash a client may
/// use, while the log (which stores it with the purge) and the NATS subject it becomes
/// stay small.
pub const MAX_KEY_BYTES: usize = 255;

/// A request's `Idempotency-Key`: the publisher's name for one purge request, so that a
/// retry is answered with that purge instead of logging a second one. Keys are scoped to
/// the publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

/// Why an `Idempotency-Key` header is refused (`400`); the message says what to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("Idempotency-Key is given {0} times: send it once, or not at all")]
    Repeated(usize),
    #[error("Idempotency-Key is empty: send 1 to {MAX_KEY_BYTES} characters, e.g. a UUID")]
    Empty,
    #[error(
        "Idempotency-Key is {0} bytes long; at most {MAX_KEY_BYTES} are accepted: use a \
         shorter key, e.g. a UUID"
    )]
    TooLong(usize),
    #[error(
        "Idempotency-Key must be a quoted string of printable ASCII (\"8e03978e-40d5\") or \
         visible ASCII without quotes, backslashes or spaces (8e03978e-40d5)"
    )]
    Malformed,
}

impl IdempotencyKey {
    /// The key of a request, `None` when it has no `Idempotency-Key`.
    ///
    /// The draft's form is a structured-field String (RFC 8941: `"8e03978e-40d5"`, with
    /// `\"` and `\\` escapes); a bare value of visible ASCII (`deploy-42`, as clients sent
    /// before this API followed the draft) names the same key as its quoted form. Anything
    /// else (other bytes, bad quoting, empty, over [`MAX_KEY_BYTES`], the header twice) is
    /// refused rather than ignored: ignoring it would log a retry twice.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, KeyError> {
        let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        let more = values.count();
        if more > 0 {
            return Err(KeyError::Repeated(more + 1));
        }
        let key = match value.as_bytes() {
            [b'"', inner @ .., b'"'] => unquote(inner)?,
            bare if bare
                .iter()
                .all(|b| (0x21..=0x7e).contains(b) && !b"\"\\".contains(b)) =>
            {
                bare.to_vec()
            }
            _ => return Err(KeyError::Malformed),
        };
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(KeyError::TooLong(key.len()));
        }
        // Printable ASCII only, checked above.
        String::from_utf8(key)
            .map(|key| Some(Self(key)))
            .map_err(|_| KeyError::Malformed)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// The inside of an RFC 8941 String: printable ASCII, `\"` and `\\` escapes, no bare `"`.
fn unquote(inner: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(&escaped @ (b'"' | b'\\')) => out.push(escaped),
                _ => return Err(KeyError::Malformed),
            },
            b'"' => return Err(KeyError::Malformed),
            0x20..=0x7e => out.push(b),
            _ => return Err(KeyError::Malformed),
        }
    }
    Ok(out)
}

/// What a keyed request asked for, so that a key reused for a different request is
/// refused instead of answered with the first request's purge: SHA-256, in 64 lowercase
/// hex digits, over the request's method, its path and the purge it parsed to (site,
/// selector kind, every target in order, mode), each part length-prefixed.
///
/// The parsed purge rather than the raw body: the same purge sent again with other
/// spacing, member order or an explicit default `mode` is the same request (a client
/// library that re-serializes on retry must not be told it reused its key), while anything
/// that changes what is purged changes the fingerprint. Unknown members are refused by
/// [`PurgeRequest`], so parsing drops nothing a request could mean. The publisher is not
/// hashed: keys are the publisher's own, so it is already part of the key's identity.
///
/// Stored with the key in the log, so it holds across restarts and API instances; the
/// encoding is pinned by a golden test, since changing it would refuse every retry of a
/// request logged before.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// The fingerprint of `method path` asking for `purge`.
    pub fn of(method: &str, path: &str, purge: &Purge) -> Self {
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut part = |bytes: &[u8]| {
            digest.update(&(bytes.len() as u64).to_be_bytes());
            digest.update(bytes);
        };
        let mode = match purge.mode {
            Mode::Hard => "hard",
            Mode::Soft => "soft",
        };
        for field in [method, path, &purge.site, purge.selector.kind(), mode] {
            part(field.as_bytes());
        }
        match &purge.selector {
            Selector::Urls(targets)
            | Selector::Tags(targets)
            | Selector::Prefixes(targets)
            | Selector::Hosts(targets) => {
                for target in targets {
                    part(target.as_bytes());
                }
            }
            Selector::Everything => {}
        }
        let hash = digest.finish();
        let mut hex = String::with_capacity(64);
        for byte in hash.as_ref() {
            hex.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
            hex.push(char::from(b"0123456789abcdef"[usize::from(byte & 0xf)]));
        }
        Self(hex)
    }

    /// The fingerprint a keyed purge logged before fingerprints were stored stands for:
    /// only `POST /v1/purge` took keys then, so its request is known from its purge.
    pub fn legacy(purge: &Purge) -> Self {
        Self::of("POST", PURGE_PATH, purge)
    }

    /// A fingerprint as a log stored it (the NATS stream keeps it as a plain string).
    pub fn stored(hex: String) -> Self {
        Self(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The body of `POST /v1/purge`. Exactly one of the selectors is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    pub site: String,
    #[serde(default)]
    pub urls: Option<Vec<String>>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub prefixes: Option<Vec<String>>,
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    #[serde(default)]
    pub everything: Option<bool>,
    #[serde(default)]
    pub mode: Mode,
}

/// Why a request is refused; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("name exactly one of urls, tags, prefixes, hosts or everything (got {0})")]
    Selectors(usize),
    #[error("{0} is empty: name at least one target")]
    Empty(&'static str),
    #[error("{count} targets in one purge; at most {max}: split the request")]
    TooMany { count: usize, max: usize },
    #[error("{what} {value:?} is not on site {site:?} (hosts: {hosts})")]
    OffSite {
        what: &'static str,
        value: String,
        site: String,
        hosts: String,
    },
    #[error("{what} {value:?} must be an absolute http:// or https:// URL")]
    NotUrl { what: &'static str, value: String },
    #[error("tag {0:?} must be 1 to 256 visible characters without spaces or commas")]
    Tag(String),
    #[error("\"everything\" must be true when given")]
    EverythingFalse,
}

impl PurgeRequest {
    /// The purge this request asks for, checked against `site` (already known to be one
    /// the publisher may purge) and `max_targets`.
    pub fn into_purge(self, site: &SiteConfig, max_targets: usize) -> Result<Purge, Invalid> {
        let given = [
            self.urls.is_some(),
            self.tags.is_some(),
            self.prefixes.is_some(),
            self.hosts.is_some(),
            self.everything.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if given != 1 {
            return Err(Invalid::Selectors(given));
        }
        let on_site = |host: &str| {
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            site.hosts.iter().any(|h| h.eq_ignore_ascii_case(&host))
        };
        let off_site = |what, value: &str| Invalid::OffSite {
            what,
            value: value.to_owned(),
            site: site.name.clone(),
            hosts: site.hosts.join(", "),
        };
        let check_len = |what, n: usize| {
            if n == 0 {
                Err(Invalid::Empty(what))
            } else if n > max_targets {
                Err(Invalid::TooMany {
                    count: n,
                    max: max_targets,
                })
            } else {
                Ok(())
            }
        };
        let urls = |what: &'static str, values: &[String]| -> Result<(), Invalid> {
            check_len(what, values.len())?;
            for value in values {
                let uri: http::Uri = value.parse().map_err(|_| Invalid::NotUrl {
                    what,
                    value: value.clone(),
                })?;
                if !matches!(uri.scheme_str(), Some("http" | "https")) {
                    return Err(Invalid::NotUrl {
                        what,
                        value: value.clone(),
                    });
                }
                let host = uri.host().ok_or_else(|| Invalid::NotUrl {
                    what,
                    value: value.clone(),
                })?;
                if !on_site(host) {
                    return Err(off_site(what, value));
                }
            }
            Ok(())
        };
        let selector = if let Some(values) = self.urls {
            urls("url", &values)?;
            Selector::Urls(values)
        } else if let Some(values) = self.prefixes {
            urls("prefix", &values)?;
            Selector::Prefixes(values)
        } else if let Some(values) = self.hosts {
            check_len("hosts", values.len())?;
            if let Some(bad) = values.iter().find(|h| !on_site(h)) {
                return Err(off_site("host", bad));
            }
            Selector::Hosts(values)
        } else if let Some(values) = self.tags {
            check_len("tags", values.len())?;
            if let Some(bad) = values.iter().find(|t| {
                t.is_empty()
                    || t.len() > 256
                    || t.chars()
                        .any(|c| c.is_whitespace() || c == ',' || c.is_control())
            }) {
                return Err(Invalid::Tag(bad.clone()));
            }
            Selector::Tags(values)
        } else if self.everything == Some(true) {
            Selector::Everything
        } else {
            return Err(Invalid::EverythingFalse);
        };
        Ok(Purge {
            site: self.site,
            selector,
            mode: self.mode,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> SiteConfig {
        SiteConfig {
            name: "assets".into(),
            hosts: vec!["assets.example.com".into()],
        }
    }

    fn parse(json: &str) -> Result<Purge, String> {
        let request: PurgeRequest = serde_json::from_str(json).map_err(|e| e.to_string())?;
        request.into_purge(&site(), 3).map_err(|e| e.to_string())
    }

    #[test]
    fn each_selector_becomes_a_purge() {
        let p =
            parse(r#"{"site":"assets","urls":["https://assets.example.com/a.js"],"mode":"soft"}"#)
                .unwrap();
        assert_eq!(
            p.selector,
            Selector::Urls(vec!["https://assets.example.com/a.js".into()])
        );
        assert_eq!(p.mode, Mode::Soft);
        assert!(matches!(
            parse(r#"{"site":"assets","tags":["t1"]}"#)
                .unwrap()
                .selector,
            Selector::Tags(_)
        ));
        assert!(matches!(
            parse(r#"{"site":"assets","prefixes":["http://assets.example.com/img/"]}"#)
                .unwrap()
                .selector,
            Selector::Prefixes(_)
        ));
        assert!(matches!(
            parse(r#"{"site":"assets","hosts":["Assets.Example.com"]}"#)
                .unwrap()
                .selector,
            Selector::Hosts(_)
        ));
        assert_eq!(
            parse(r#"{"site":"assets","everything":true}"#)
                .unwrap()
                .selector,
            Selector::Everything
        );
    }

    fn key(values: &[&[u8]]) -> Result<Option<String>, KeyError> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                IDEMPOTENCY_KEY,
                http::HeaderValue::from_bytes(value).unwrap(),
            );
        }
        IdempotencyKey::from_headers(&headers).map(|k| k.map(IdempotencyKey::into_string))
    }

    #[test]
    fn idempotency_keys_are_draft_strings_or_bare_ascii_up_to_255_bytes() {
        assert_eq!(key(&[]), Ok(None));
        for (value, expected) in [
            (&b"deploy-42"[..], "deploy-42"),
            (b"\"deploy-42\"", "deploy-42"),
            (b"\"a b\\\"c\\\\d\"", "a b\"c\\d"),
            (
                b"8e03978e-40d5-43e8-bc93-6894a57f9324",
                "8e03978e-40d5-43e8-bc93-6894a57f9324",
            ),
        ] {
            assert_eq!(key(&[value]), Ok(Some(expected.to_owned())), "{value:?}");
        }
        let longest = "k".repeat(MAX_KEY_BYTES);
        assert_eq!(key(&[longest.as_bytes()]), Ok(Some(longest.clone())));
        assert_eq!(
            key(&[format!("\"{longest}\"").as_bytes()]),
            Ok(Some(longest))
        );
        for (value, error) in [
            (&b""[..], KeyError::Empty),
            (b"\"\"", KeyError::Empty),
            (&[b'k'; 256][..], KeyError::TooLong(256)),
            (b"cl\xc3\xa9", KeyError::Malformed),
            (b"a b", KeyError::Malformed),
            (b"\"open", KeyError::Malformed),
            (b"\"a\"b\"", KeyError::Malformed),
            (b"\"a\\x\"", KeyError::Malformed),
            (b"\"tab\there\"", KeyError::Malformed),
        ] {
            assert_eq!(key(&[value]), Err(error), "{value:?}");
        }
        assert_eq!(key(&[b"a", b"a"]), Err(KeyError::Repeated(2)));
    }

    #[test]
    fn fingerprints_are_pinned_and_follow_the_parsed_purge() {
        let purge =
            parse(r#"{"site":"assets","urls":["https://assets.example.com/a.js"]}"#).unwrap();
        let fingerprint = Fingerprint::of("POST", PURGE_PATH, &purge);
        // Golden: stored fingerprints must keep matching their retries after any refactor.
        assert_eq!(
            fingerprint.as_str(),
            "b9138a1707414aaf58cfc7a0383cd5f30915a523b0081eda08c1667a6aea3f14"
        );
        assert_eq!(Fingerprint::legacy(&purge), fingerprint);
        let respelled = parse(
            r#"{ "mode": "hard", "urls": ["https://assets.example.com/a.js"], "site": "assets" }"#,
        )
        .unwrap();
        assert_eq!(Fingerprint::of("POST", PURGE_PATH, &respelled), fingerprint);
        for other in [
            r#"{"site":"assets","urls":["https://assets.example.com/b.js"]}"#,
            r#"{"site":"assets","urls":["https://assets.example.com/a.js"],"mode":"soft"}"#,
            r#"{"site":"assets","prefixes":["https://assets.example.com/a.js"]}"#,
            r#"{"site":"assets","everything":true}"#,
        ] {
            let other = Fingerprint::of("POST", PURGE_PATH, &parse(other).unwrap());
            assert_ne!(other, fingerprint);
        }
        assert_ne!(Fingerprint::of("PURGE", PURGE_PATH, &purge), fingerprint);
        // Length prefixes: moving a byte from one part to the next changes the hash.
        let tags = |values: &[&str]| Purge {
            site: "assets".into(),
            selector: Selector::Tags(values.iter().map(|v| (*v).to_owned()).collect()),
            mode: Mode::Hard,
        };
        assert_ne!(
            Fingerprint::of("POST", PURGE_PATH, &tags(&["ab", "c"])),
            Fingerprint::of("POST", PURGE_PATH, &tags(&["a", "bc"]))
        );
    }

    /// A body of exactly `len` bytes: `{"site":"assets","<selector>":[...]}` with as
    /// many targets of `target(i)` as fit, the last one padded.
    fn body_of(len: usize, selector: &str, target: impl Fn(usize) -> String) -> String {
        let open = format!(r#"{{"site":"assets","{selector}":["#);
        let mut body = open.clone();
        let mut i = 0;
        loop {
            let next = target(i);
            if body.len() + next.len() + 8 > len {
                break;
            }
            if i > 0 {
                body.push(',');
            }
            body.push_str(&format!("\"{next}\""));
            i += 1;
        }
        // Pad the last target (a tag or a path segment) up to the length.
        body.insert_str(body.len() - 1, &"x".repeat(len - body.len() - 2));
        body.push_str("]}");
        assert_eq!(body.len(), len);
        body
    }

    #[test]
    fn a_purge_from_the_largest_body_allowed_fits_in_a_batch() {
        let len = node_api::purge::MAX_PURGE_BODY_BYTES;
        let site = site();
        for body in [
            // Many one-byte tags: the most framing per byte of the request.
            body_of(len, "tags", |_| "t".into()),
            // URLs with escapes that decode shorter (`\/` is `/`).
            body_of(len, "urls", |_| r"https:\/\/assets.example.com\/a".into()),
            // Long URLs (a URI may have at most 64 KiB).
            body_of(len, "urls", |_| {
                format!("https://assets.example.com/{}", "a".repeat(30_000))
            }),
            // Many short prefixes: the longest selector name in the encoding.
            body_of(len, "prefixes", |i| {
                format!("http://assets.example.com/{i}")
            }),
        ] {
            let request: PurgeRequest = serde_json::from_str(&body).expect(&body[..80]);
            let Ok(purge) = request.into_purge(&site, usize::MAX) else {
                panic!("not a valid purge: {}", &body[..80]);
            };
            let encoded = node_api::purge::encoded_len(&purge);
            assert!(
                encoded <= node_api::purge::MAX_PURGE_BYTES,
                "{encoded} bytes from a {len}-byte {} body",
                purge.selector.kind()
            );
        }
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        for (json, why) in [
            (r#"{"site":"assets"}"#, "exactly one"),
            (r#"{"site":"assets","urls":[],"tags":["a"]}"#, "exactly one"),
            (r#"{"site":"assets","urls":[]}"#, "empty"),
            (
                r#"{"site":"assets","urls":["https://evil.example/x"]}"#,
                "not on site",
            ),
            (r#"{"site":"assets","urls":["/relative"]}"#, "absolute"),
            (r#"{"site":"assets","tags":["a","b","c","d"]}"#, "at most 3"),
            (r#"{"site":"assets","tags":["has space"]}"#, "tag"),
            (r#"{"site":"assets","everything":false}"#, "must be true"),
            (
                r#"{"site":"assets","urls":["https://assets.example.com/"],"extra":1}"#,
                "unknown field",
            ),
            (
                r#"{"site":"assets","urls":["https://assets.example.com/"],"mode":"gentle"}"#,
                "unknown variant",
            ),
        ] {
            let err = parse(json).expect_err(why);
            assert!(err.contains(why), "{why}: {err}");
        }
    }
}
