//! The purge request parser: any JSON body (the publisher's) becomes a purge on the site's
//! hosts or a reason, without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use purge_api::config::SiteConfig;
use purge_api::request::PurgeRequest;

fuzz_target!(|data: &[u8]| {
    let site = SiteConfig {
        name: "assets".into(),
        hosts: vec!["assets.example.com".into(), "img.example.com".into()],
    };
    if let Ok(request) = serde_json::from_slice::<PurgeRequest>(data) {
        let _ = request.into_purge(&site, 100);
    }
});
