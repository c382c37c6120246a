//! Parsing of `Cache-Control` (RFC 9111 section 5.2) as a shared cache reads it.
//!
//! The parser never fails: what it cannot understand it ignores, as RFC 9111 asks for
//! unknown directives. Invalid or conflicting freshness values are kept as
//! [`Seconds::Invalid`] so that freshness can treat the response as stale (RFC 9111 4.2.1)
//! instead of guessing.
//!
//! Targeted fields (`CDN-Cache-Control`, RFC 9213) are different: they are Structured
//! Field Dictionaries (RFC 9651), and a line that does not parse as one makes the whole
//! field count as absent, so the `Cache-Control` beside it applies. A directive whose value
//! has the wrong type (`max-age="60"`, `max-age=1.5`, `no-store=5`) is not consumed (RFC
//! 9213 2.1); a field left with no directive this cache could consume counts as absent too,
//! so a malformed targeted field can never switch off the `no-store` or `private` of the
//! field it overrides.

use http::HeaderMap;
use http::header::{CACHE_CONTROL, HeaderName};

/// The largest delta-seconds a cache must represent; larger values are clamped to it
/// (RFC 9111 1.2.2).
pub const DELTA_SECONDS_MAX: u64 = 2_147_483_648;

/// A delta-seconds argument as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Seconds {
    /// The directive is absent.
    #[default]
    Absent,
    /// A valid value, clamped to [`DELTA_SECONDS_MAX`].
    Valid(u64),
    /// Present but not a non-negative integer, or given twice with different values.
    Invalid,
}

impl Seconds {
    /// The value, treating an invalid one as zero (already stale).
    pub fn stale_if_invalid(self) -> Option<u64> {
        match self {
            Seconds::Absent => None,
            Seconds::Valid(v) => Some(v),
            Seconds::Invalid => Some(0),
        }
    }

    fn merge(self, new: Seconds) -> Seconds {
        match (self, new) {
            (Seconds::Absent, n) => n,
            (Seconds::Valid(a), Seconds::Valid(b)) if a == b => self,
            _ => Seconds::Invalid,
        }
    }
}

/// The directives of one or more `Cache-Control` field lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub max_age: Seconds,
    pub s_maxage: Seconds,
    pub stale_while_revalidate: Seconds,
    pub stale_if_error: Seconds,
    pub no_store: bool,
    /// `no-cache`, qualified or not; a qualified one is treated as unqualified, which
    /// RFC 9111 5.2.2.4 allows.
    pub no_cache: bool,
    /// `private`, qualified or not; a shared cache stores neither.
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub must_understand: bool,
    pub immutable: bool,
    pub no_transform: bool,
    pub only_if_cached: bool,
}

impl CacheControl {
    /// Parses every `Cache-Control` line of `headers`.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self::from_named(headers, &CACHE_CONTROL)
    }

    /// Parses every line of the named field, e.g. `CDN-Cache-Control`.
    pub fn from_named(headers: &HeaderMap, name: &HeaderName) -> Self {
        let mut cc = CacheControl::default();
        for value in headers.get_all(name) {
            if let Ok(text) = value.to_str() {
                cc.parse_line(text);
            } else {
                cc.parse_line(&String::from_utf8_lossy(value.as_bytes()));
            }
        }
        cc
    }

    /// Parses every line of a targeted field (RFC 9213) as one Structured Field
    /// Dictionary. `None` when the field is absent, empty, does not parse, or holds no
    /// directive with a value of the type it needs: then the field is ignored.
    pub fn from_targeted(headers: &HeaderMap, name: &HeaderName) -> Option<Self> {
        let joined = structured_field(headers, name)?;
        let dictionary: sfv::Dictionary = sfv::Parser::new(&joined).parse().ok()?;
        let mut cc = CacheControl::default();
        for (key, member) in &dictionary {
            let sfv::ListEntry::Item(item) = member else {
                continue;
            };
            cc.consume_targeted(key.as_str(), &item.bare_item);
        }
        (!cc.is_empty()).then_some(cc)
    }

    /// Applies one Dictionary member if its value has the type the directive needs:
    /// an Integer for delta-seconds, Boolean true for flags, also a String (a field list,
    /// treated as unqualified) for `no-cache` and `private`. Parameters are ignored.
    fn consume_targeted(&mut self, name: &str, value: &sfv::BareItem) {
        let seconds = || match value {
            sfv::BareItem::Integer(i) => u64::try_from(i64::from(*i))
                .ok()
                .map(|v| Seconds::Valid(v.min(DELTA_SECONDS_MAX))),
            _ => None,
        };
        let flag = matches!(value, sfv::BareItem::Boolean(true));
        let flag_or_list = flag || matches!(value, sfv::BareItem::String(_));
        match name {
            "max-age" => self.max_age = seconds().unwrap_or(self.max_age),
            "s-maxage" => self.s_maxage = seconds().unwrap_or(self.s_maxage),
            "stale-while-revalidate" => {
                self.stale_while_revalidate = seconds().unwrap_or(self.stale_while_revalidate)
            }
            "stale-if-error" => self.stale_if_error = seconds().unwrap_or(self.stale_if_error),
            "no-store" => self.no_store |= flag,
            "no-cache" => self.no_cache |= flag_or_list,
            "private" => self.private |= flag_or_list,
            "public" => self.public |= flag,
            "must-revalidate" => self.must_revalidate |= flag,
            "proxy-revalidate" => self.proxy_revalidate |= flag,
            "must-understand" => self.must_understand |= flag,
            "immutable" => self.immutable |= flag,
            "no-transform" => self.no_transform |= flag,
            _ => {}
        }
    }

    /// Parses one field value, e.g. `public, max-age=60`.
    pub fn parse(text: &str) -> Self {
        let mut cc = CacheControl::default();
        cc.parse_line(text);
        cc
    }

    /// Whether any directive was present at all.
    pub fn is_empty(&self) -> bool {
        *self == CacheControl::default()
    }

    fn parse_line(&mut self, text: &str) {
        for (name, arg) in Directives::new(text) {
            let name = name.to_ascii_lowercase();
            match name.as_str() {
                "max-age" => self.max_age = self.max_age.merge(delta_seconds(arg)),
                "s-maxage" => self.s_maxage = self.s_maxage.merge(delta_seconds(arg)),
                "stale-while-revalidate" => {
                    self.stale_while_revalidate =
                        self.stale_while_revalidate.merge(delta_seconds(arg))
                }
                "stale-if-error" => {
                    self.stale_if_error = self.stale_if_error.merge(delta_seconds(arg))
                }
                "no-store" => self.no_store = true,
                "no-cache" => self.no_cache = true,
                "private" => self.private = true,
                "public" => self.public = true,
                "must-revalidate" => self.must_revalidate = true,
                "proxy-revalidate" => self.proxy_revalidate = true,
                "must-understand" => self.must_understand = true,
                "immutable" => self.immutable = true,
                "no-transform" => self.no_transform = true,
                "only-if-cached" => self.only_if_cached = true,
                _ => {}
            }
        }
    }
}

/// Every line of a Structured Field, combined as RFC 9651 4.2 parses them: joined with
/// `, `. `None` when the field is absent.
pub fn structured_field(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut lines = headers.get_all(name).iter();
    let mut joined = lines.next()?.as_bytes().to_vec();
    for line in lines {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(line.as_bytes());
    }
    Some(joined)
}

/// Parses a delta-seconds argument: digits only, clamped, anything else invalid.
fn delta_seconds(arg: Option<&str>) -> Seconds {
    let Some(arg) = arg else {
        return Seconds::Invalid;
    };
    if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_digit()) {
        return Seconds::Invalid;
    }
    // Every digit string that does not fit (or exceeds the maximum) clamps.
    Seconds::Valid(
        arg.parse::<u64>()
            .map_or(DELTA_SECONDS_MAX, |v| v.min(DELTA_SECONDS_MAX)),
    )
}

/// Iterator over `name[=arg]` directives of a comma-separated list, honouring quoted
/// strings (a comma inside quotes does not split).
struct Directives<'a> {
    rest: &'a str,
}

impl<'a> Directives<'a> {
    fn new(text: &'a str) -> Self {
        Self { rest: text }
    }
}

impl<'a> Iterator for Directives<'a> {
    type Item = (&'a str, Option<&'a str>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let text = self.rest.trim_start_matches([' ', '\t', ',']);
            if text.is_empty() {
                self.rest = text;
                return None;
            }
            let bytes = text.as_bytes();
            let mut i = 0;
            let mut in_quotes = false;
            while i < bytes.len() {
                match bytes[i] {
                    b'\\' if in_quotes => i += 1,
                    b'"' => in_quotes = !in_quotes,
                    b',' if !in_quotes => break,
                    _ => {}
                }
                i += 1;
            }
            let item = &text[..i.min(text.len())];
            self.rest = &text[i.min(text.len())..];
            let (name, arg) = match item.split_once('=') {
                Some((n, a)) => (n.trim(), Some(unquote(a.trim()))),
                None => (item.trim(), None),
            };
            if !name.is_empty() {
                return Some((name, arg));
            }
        }
    }
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn parses_common_directives() {
        let cc = CacheControl::parse("public, max-age=60, s-maxage=120, must-revalidate");
        assert!(cc.public && cc.must_revalidate);
        assert_eq!(cc.max_age, Seconds::Valid(60));
        assert_eq!(cc.s_maxage, Seconds::Valid(120));
        assert!(!cc.no_store && !cc.private);
    }

    #[test]
    fn directive_names_are_case_insensitive() {
        let cc = CacheControl::parse("No-Store, MAX-AGE=5");
        assert!(cc.no_store);
        assert_eq!(cc.max_age, Seconds::Valid(5));
    }

    #[test]
    fn invalid_values_are_invalid_not_guessed() {
        for bad in [
            "max-age=-1",
            "max-age=1.5",
            "max-age=abc",
            "max-age=",
            "max-age",
        ] {
            assert_eq!(CacheControl::parse(bad).max_age, Seconds::Invalid, "{bad}");
        }
    }

    #[test]
    fn huge_values_clamp_to_2_pow_31() {
        let cc = CacheControl::parse("max-age=99999999999999999999999999");
        assert_eq!(cc.max_age, Seconds::Valid(DELTA_SECONDS_MAX));
    }

    #[test]
    fn conflicting_duplicates_are_invalid_identical_ones_are_not() {
        assert_eq!(
            CacheControl::parse("max-age=5, max-age=10").max_age,
            Seconds::Invalid
        );
        assert_eq!(
            CacheControl::parse("max-age=5, max-age=5").max_age,
            Seconds::Valid(5)
        );
    }

    #[test]
    fn qualified_forms_and_quotes_do_not_split() {
        let cc = CacheControl::parse(r#"private="set-cookie, x-foo", no-cache="a,b", max-age="7""#);
        assert!(cc.private && cc.no_cache);
        assert_eq!(cc.max_age, Seconds::Valid(7));
    }

    fn targeted(lines: &[&str]) -> Option<CacheControl> {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append("cdn-cache-control", HeaderValue::from_str(line).unwrap());
        }
        CacheControl::from_targeted(&headers, &HeaderName::from_static("cdn-cache-control"))
    }

    #[test]
    fn targeted_fields_are_structured_dictionaries() {
        let cc = targeted(&["max-age=60, must-revalidate", "stale-if-error=30"]).unwrap();
        assert_eq!(cc.max_age, Seconds::Valid(60));
        assert_eq!(cc.stale_if_error, Seconds::Valid(30));
        assert!(cc.must_revalidate && !cc.no_store);
        assert!(targeted(&["no-store"]).unwrap().no_store);
        assert!(targeted(&[r#"private="set-cookie""#]).unwrap().private);
        assert!(targeted(&["max-age=60;foo=bar"]).unwrap().max_age == Seconds::Valid(60));
        assert_eq!(
            targeted(&["max-age=9999999999999"]).unwrap().max_age,
            Seconds::Valid(DELTA_SECONDS_MAX)
        );
        assert_eq!(targeted(&[]), None);
    }

    #[test]
    fn a_targeted_field_that_is_not_a_dictionary_is_ignored_whole() {
        for bad in [
            "max-age=10000, &&&&&",
            "max-age=10000,",
            "MAX-AGE=10",
            "max-age=10 no-store",
            "",
        ] {
            assert_eq!(targeted(&[bad]), None, "{bad:?}");
        }
        // One bad line spoils the field: lines are one Dictionary.
        assert_eq!(targeted(&["max-age=60", "&&"]), None);
    }

    #[test]
    fn targeted_directives_of_the_wrong_type_are_not_consumed() {
        for bad in [
            r#"max-age="10000""#,
            "max-age=1.5",
            "max-age=-1",
            "max-age=?1",
            "no-store=5",
            "no-store=?0",
            "foo=1",
        ] {
            assert_eq!(targeted(&[bad]), None, "{bad:?}");
        }
        let cc = targeted(&[r#"max-age="10000", no-store"#]).unwrap();
        assert!(cc.no_store);
        assert_eq!(cc.max_age, Seconds::Absent);
    }

    #[test]
    fn unknown_directives_and_junk_are_ignored() {
        let cc = CacheControl::parse(",,, foo=bar, ,\t, max-age=3,  weird\"stuff");
        assert_eq!(cc.max_age, Seconds::Valid(3));
    }

    #[test]
    fn reads_every_field_line() {
        let mut h = HeaderMap::new();
        h.append(CACHE_CONTROL, HeaderValue::from_static("public"));
        h.append(CACHE_CONTROL, HeaderValue::from_static("max-age=9"));
        let cc = CacheControl::from_headers(&h);
        assert!(cc.public);
        assert_eq!(cc.max_age, Seconds::Valid(9));
    }

    #[test]
    fn empty_is_empty() {
        assert!(CacheControl::parse("").is_empty());
        assert!(!CacheControl::parse("no-store").is_empty());
    }
}
