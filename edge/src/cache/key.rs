//! Cache keys, and the normalized request target they are built from.
//!
//! Invariant: the normalized target is also what is forwarded upstream. Two requests
//! share a key only if the upstream sees the same request for both, so normalization can
//! never make one URL's response answer another.
//!
//! A key is `"{generation} {scheme}://{host}{target}"`. The site generation comes first:
//! raising it makes every old key of the site unreachable at once, and the cache evicts
//! the orphans in its own time.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;

/// The key of one stored response.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CacheKey(Box<str>);

impl CacheKey {
    /// Builds the key of a normalized target on a site.
    pub fn new(generation: u64, scheme: &str, host: &str, target: &str) -> Self {
        let mut key = String::with_capacity(24 + scheme.len() + host.len() + target.len());
        let mut digits = itoa::Buffer::new();
        key.push_str(digits.format(generation));
        key.push(' ');
        key.push_str(scheme);
        key.push_str("://");
        key.push_str(host);
        key.push_str(target);
        CacheKey(key.into_boxed_str())
    }

    /// The key of one variant of this (primary) key; see [`crate::cache::vary`].
    pub fn variant(&self, epoch: u64, signature: &str) -> Self {
        let mut key = String::with_capacity(self.0.len() + 24 + signature.len());
        key.push_str(&self.0);
        key.push_str("\n#");
        key.push_str(itoa::Buffer::new().format(epoch));
        key.push('\n');
        key.push_str(signature);
        CacheKey(key.into_boxed_str())
    }

    /// The primary key of a variant's key ([`CacheKey::variant`]); `None` for any other.
    pub fn primary_of_variant(&self) -> Option<Self> {
        let (primary, _) = self.0.split_once("\n#")?;
        Some(CacheKey(primary.into()))
    }

    /// The key of slice `n` of this (primary) key's object; see [`crate::cache::slice`].
    pub fn slice(&self, n: u64) -> Self {
        let mut key = String::with_capacity(self.0.len() + 22);
        key.push_str(&self.0);
        key.push_str("\n@");
        key.push_str(itoa::Buffer::new().format(n));
        CacheKey(key.into_boxed_str())
    }

    /// The key of a locator (see [`CacheKey::locator`]) under `generation`.
    pub fn from_locator(generation: u64, locator: &str) -> Self {
        let mut key = String::with_capacity(21 + locator.len());
        key.push_str(itoa::Buffer::new().format(generation));
        key.push(' ');
        key.push_str(locator);
        CacheKey(key.into_boxed_str())
    }

    /// The key without its generation: what picks an upstream server under consistent
    /// hashing, so an object keeps its shield when a site's generation is raised.
    pub fn locator(&self) -> &str {
        self.0.split_once(' ').map_or(&self.0, |(_, rest)| rest)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Bytes this key occupies, for the cache's weigher.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Treatment of the query string.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryMode {
    /// Keep the query as sent (after dropping `drop_params`).
    #[default]
    Keep,
    /// Sort parameters by name so that their order does not split the cache.
    Sort,
    /// Drop the whole query string.
    Ignore,
}

/// How a site's query strings are normalized.
#[derive(Debug, Clone, Default)]
pub struct QueryPolicy {
    pub mode: QueryMode,
    /// Parameter names removed before keying and forwarding.
    pub drop: Vec<String>,
}

/// A request target that cannot be normalized safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("request path must start with '/'")]
    NotOriginForm,
    #[error("malformed percent-encoding in the request target (want %XX with hex digits)")]
    BadPercent,
}

/// Normalizes a path and query per RFC 3986 6.2.2 and the site's query policy:
/// percent-encoded unreserved characters are decoded, other percent-encodings upper-cased,
/// dot segments removed, and the query kept, sorted or ignored with listed parameters
/// dropped. `target` is the origin-form `path[?query]`; the result borrows it when nothing
/// changes.
pub fn normalize_target<'a>(
    target: &'a str,
    policy: &QueryPolicy,
) -> Result<Cow<'a, str>, TargetError> {
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if !path.starts_with('/') {
        return Err(TargetError::NotOriginForm);
    }
    let path_clean = !path.contains('%') && !path.contains("/.");
    let query = query.filter(|q| !q.is_empty() && policy.mode != QueryMode::Ignore);
    let query_clean = match query {
        None => true,
        Some(q) => policy.mode == QueryMode::Keep && policy.drop.is_empty() && !q.contains('%'),
    };
    if path_clean && query_clean {
        return Ok(Cow::Borrowed(if query.is_some() { target } else { path }));
    }

    let mut out = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
    let decoded = normalize_percent(path)?;
    remove_dot_segments(&decoded, &mut out);
    if let Some(q) = query {
        let mut params: Vec<Cow<'_, str>> = Vec::new();
        for param in q.split('&').filter(|p| !p.is_empty()) {
            let param = normalize_percent(param)?;
            let name = param.split('=').next().unwrap_or_default();
            if policy.drop.iter().any(|d| d == name) {
                continue;
            }
            params.push(param);
        }
        if policy.mode == QueryMode::Sort {
            params.sort_by(|a, b| {
                let name = |p: &str| p.split('=').next().unwrap_or_default().to_owned();
                name(a).cmp(&name(b)).then_with(|| a.cmp(b))
            });
        }
        for (i, p) in params.iter().enumerate() {
            out.push(if i == 0 { '?' } else { '&' });
            out.push_str(p);
        }
    }
    Ok(Cow::Owned(out))
}

/// Resolves a URI reference (a `Content-Location` value, say) against the target URI
/// `{scheme}://{authority}{target}` (RFC 3986 5.2) and returns the path and query it names
/// when it names the same origin: same scheme, same host (any case, trailing dot or not),
/// same port (the scheme's default when none is given). Another origin, userinfo, or a
/// value that is no URI reference gives `None`. The fragment is dropped; the result is not
/// normalized (the caller normalizes it as it does request targets, [`normalize_target`],
/// which also removes the dot segments a relative reference leaves).
pub fn resolve_reference(
    reference: &str,
    scheme: &str,
    authority: &str,
    target: &str,
) -> Option<String> {
    let reference = reference.trim_matches([' ', '\t']);
    let reference = reference.split_once('#').map_or(reference, |(r, _)| r);
    if reference.bytes().any(|b| !b.is_ascii_graphic()) {
        return None;
    }
    let rest = match scheme_of(reference) {
        Some((named, rest)) => {
            if !named.eq_ignore_ascii_case(scheme) || !rest.starts_with("//") {
                return None;
            }
            rest
        }
        None => reference,
    };
    if let Some(after) = rest.strip_prefix("//") {
        let end = after.find(['/', '?']).unwrap_or(after.len());
        let (named, path) = after.split_at(end);
        if !same_authority(named, authority, scheme) {
            return None;
        }
        return Some(if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        });
    }
    let base_path = target.split_once('?').map_or(target, |(path, _)| path);
    Some(if rest.starts_with('/') {
        rest.to_owned()
    } else if rest.is_empty() {
        target.to_owned()
    } else if rest.starts_with('?') {
        format!("{base_path}{rest}")
    } else {
        // A relative path: merged with the target's directory (RFC 3986 5.2.3).
        let directory = base_path.rfind('/').map_or("/", |i| &base_path[..=i]);
        format!("{directory}{rest}")
    })
}

/// A reference's scheme and what follows its colon, if it starts with one (RFC 3986 3.1).
fn scheme_of(reference: &str) -> Option<(&str, &str)> {
    let colon = reference.find(':')?;
    let (scheme, rest) = (&reference[..colon], &reference[colon + 1..]);
    let mut bytes = scheme.bytes();
    let valid = bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    valid.then_some((scheme, rest))
}

/// Whether two authorities name the same host and port under `scheme`.
fn same_authority(a: &str, b: &str, scheme: &str) -> bool {
    let default = if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    };
    let split = |authority: &str| -> Option<(String, u16)> {
        if authority.contains('@') {
            return None;
        }
        let (host, port) = match authority.rfind(':') {
            Some(i) if !authority[i..].contains(']') => (&authority[..i], &authority[i + 1..]),
            _ => (authority, ""),
        };
        let port = if port.is_empty() {
            default
        } else {
            port.parse().ok()?
        };
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        (!host.is_empty()).then_some((host, port))
    };
    matches!((split(a), split(b)), (Some(a), Some(b)) if a == b)
}

/// Decodes percent-encoded unreserved characters and upper-cases the hex of the rest.
fn normalize_percent(s: &str) -> Result<Cow<'_, str>, TargetError> {
    if !s.contains('%') {
        return Ok(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).and_then(|b| hex(*b));
            let lo = bytes.get(i + 2).and_then(|b| hex(*b));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(TargetError::BadPercent);
            };
            let c = hi << 4 | lo;
            if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                out.push(c as char);
            } else {
                out.push('%');
                out.push(bytes[i + 1].to_ascii_uppercase() as char);
                out.push(bytes[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
        } else if bytes[i].is_ascii() {
            out.push(bytes[i] as char);
            i += 1;
        } else {
            // hyper rejects non-ASCII targets, but the hit path reads them from `httparse`,
            // which lets them through: percent-encode each byte (RFC 3986 2.1) instead of
            // pushing it as a char, which would re-encode it and change the target on every
            // pass (found by the `cache_key` fuzz target).
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(HEX[usize::from(bytes[i] >> 4)] as char);
            out.push(HEX[usize::from(bytes[i] & 0x0f)] as char);
            i += 1;
        }
    }
    Ok(Cow::Owned(out))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 5.2.4, for an absolute path.
fn remove_dot_segments(path: &str, out: &mut String) {
    let start = out.len();
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            "." => {
                if last {
                    out.push('/');
                }
            }
            ".." => {
                if let Some(pos) = out[start..].rfind('/') {
                    out.truncate(start + pos);
                }
                if last {
                    out.push('/');
                }
            }
            _ => {
                out.push('/');
                out.push_str(seg);
            }
        }
    }
    if out.len() == start {
        out.push('/');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str, query: Option<&str>, mode: QueryMode, drop: &[&str]) -> String {
        let policy = QueryPolicy {
            mode,
            drop: drop.iter().map(|s| s.to_string()).collect(),
        };
        let target = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        normalize_target(&target, &policy).unwrap().into_owned()
    }

    #[test]
    fn non_ascii_bytes_are_percent_encoded_so_normalizing_is_idempotent() {
        // Regression, from the fuzzer: a query with a non-ASCII character and a
        // percent-encoding, sorted, changed again on every normalization.
        let policy = QueryPolicy {
            mode: QueryMode::Sort,
            drop: vec!["utm_source".into(), "a".into()],
        };
        let target = "/?/,/&/\0\0//\u{52f}.%A0j\0";
        let once = normalize_target(target, &policy).unwrap().into_owned();
        assert_eq!(normalize_target(&once, &policy).unwrap(), once);
        assert!(once.contains("%D4%AF.%A0"), "{once}");
        assert_eq!(norm("/%41\u{e9}", None, QueryMode::Keep, &[]), "/A%C3%A9");
    }

    #[test]
    fn plain_targets_are_borrowed_untouched() {
        let p = QueryPolicy::default();
        assert!(matches!(
            normalize_target("/app.3f2a9c.js", &p).unwrap(),
            Cow::Borrowed("/app.3f2a9c.js")
        ));
        assert!(matches!(
            normalize_target("/a?v=1", &p).unwrap(),
            Cow::Borrowed("/a?v=1")
        ));
        assert_eq!(
            norm("/a", Some("b=1&a=2"), QueryMode::Keep, &[]),
            "/a?b=1&a=2"
        );
    }

    #[test]
    fn sort_mode_orders_params_by_name_stably() {
        assert_eq!(
            norm("/a", Some("b=1&a=2&a=1"), QueryMode::Sort, &[]),
            "/a?a=1&a=2&b=1"
        );
        assert_eq!(
            norm("/a", Some("b=1&a=2"), QueryMode::Sort, &[]),
            norm("/a", Some("a=2&b=1"), QueryMode::Sort, &[])
        );
    }

    #[test]
    fn dropped_params_and_ignore_mode() {
        assert_eq!(
            norm(
                "/a",
                Some("utm_source=x&v=3"),
                QueryMode::Keep,
                &["utm_source"]
            ),
            "/a?v=3"
        );
        assert_eq!(
            norm("/a", Some("utm_source=x"), QueryMode::Keep, &["utm_source"]),
            "/a"
        );
        assert_eq!(norm("/a", Some("v=3"), QueryMode::Ignore, &[]), "/a");
        assert_eq!(norm("/a", Some(""), QueryMode::Keep, &[]), "/a");
    }

    #[test]
    fn percent_encoding_is_normalized() {
        assert_eq!(
            norm("/%7euser/%2f%41", None, QueryMode::Keep, &[]),
            "/~user/%2FA"
        );
        assert_eq!(
            norm("/a", Some("q=%7e%2f"), QueryMode::Keep, &[]),
            "/a?q=~%2F"
        );
    }

    #[test]
    fn bad_percent_encoding_is_an_error() {
        let p = QueryPolicy::default();
        for bad in ["/%", "/%4", "/%zz", "/a%g1"] {
            assert_eq!(
                normalize_target(bad, &p).unwrap_err(),
                TargetError::BadPercent,
                "{bad}"
            );
        }
        assert_eq!(
            normalize_target("x", &p).unwrap_err(),
            TargetError::NotOriginForm
        );
    }

    #[test]
    fn dot_segments_are_removed_and_never_escape_the_root() {
        for (input, want) in [
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/.", "/"),
            ("/%2e%2e/x", "/x"),
        ] {
            assert_eq!(norm(input, None, QueryMode::Keep, &[]), want, "{input}");
        }
    }

    #[test]
    fn keys_separate_generations_schemes_and_hosts() {
        let a = CacheKey::new(1, "http", "a.example", "/x");
        assert_eq!(a.as_str(), "1 http://a.example/x");
        assert_ne!(a, CacheKey::new(2, "http", "a.example", "/x"));
        assert_ne!(a, CacheKey::new(1, "https", "a.example", "/x"));
        assert_ne!(a, CacheKey::new(1, "http", "b.example", "/x"));
    }

    #[test]
    fn references_resolve_against_the_target_and_name_only_the_same_origin() {
        let resolve =
            |reference: &str| resolve_reference(reference, "http", "assets.test", "/docs/page?x=1");
        for (reference, want) in [
            ("/docs/page?x=1", "/docs/page?x=1"),
            ("http://assets.test/docs/page?x=1", "/docs/page?x=1"),
            ("HTTP://Assets.Test.:80/docs/page?x=1#top", "/docs/page?x=1"),
            ("//assets.test/a", "/a"),
            ("http://assets.test", "/"),
            ("http://assets.test?q", "/?q"),
            ("page?x=1", "/docs/page?x=1"),
            ("../docs/./page?x=1", "/docs/../docs/./page?x=1"),
            ("?y=2", "/docs/page?y=2"),
            ("", "/docs/page?x=1"),
            ("#frag", "/docs/page?x=1"),
            ("other", "/docs/other"),
        ] {
            assert_eq!(resolve(reference).as_deref(), Some(want), "{reference:?}");
        }
        for reference in [
            "http://other.test/docs/page?x=1",
            "https://assets.test/docs/page?x=1",
            "http://assets.test:8080/docs/page?x=1",
            "//other.test/docs/page",
            "http://user@assets.test/docs/page?x=1",
            "http:/docs/page",
            "mailto:someone@assets.test",
            "/docs/pa ge",
            "/d\u{e9}",
        ] {
            assert_eq!(resolve(reference), None, "{reference:?}");
        }
        // Ports: explicit on either side, defaulted by the scheme.
        assert_eq!(
            resolve_reference("http://a.test/x", "http", "a.test:80", "/").as_deref(),
            Some("/x")
        );
        assert_eq!(
            resolve_reference("https://a.test:443/x", "https", "A.test", "/").as_deref(),
            Some("/x")
        );
        assert_eq!(
            resolve_reference("http://[::1]:81/x", "http", "[::1]:81", "/").as_deref(),
            Some("/x")
        );
        assert_eq!(
            resolve_reference("http://[::1]/x", "http", "[::1]:81", "/"),
            None
        );
        // Dot segments are left to the target's normalization, which removes them.
        let resolved = resolve("../docs/./page?x=1").unwrap();
        assert_eq!(
            normalize_target(&resolved, &QueryPolicy::default()).unwrap(),
            "/docs/page?x=1"
        );
    }
}
