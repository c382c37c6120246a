//! What a publisher sends, and how it becomes a [`Purge`]: one selector, every target
//! inside the site, nothing half-valid.

use edge::purge::{Mode, Purge, Selector};
use serde::Deserialize;

use crate::config::SiteConfig;

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
