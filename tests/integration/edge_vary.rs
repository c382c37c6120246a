//! Variants: responses that vary by request fields are stored and served per variant.

use crate::support;

use std::sync::Arc;

use http::{Method, StatusCode};
use support::{HOST, Harness};

/// The first line of a varying demo-origin body: what the origin received.
fn received(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn each_variant_is_stored_and_served_to_the_requests_that_select_it() {
    let h = Harness::start().await;
    let target = "/app.css?vary=accept-encoding";
    let gzip = [("accept-encoding", "gzip, deflate")];
    let br = [("accept-encoding", "gzip, deflate, br")];
    let a = h.send(Method::GET, target, HOST, &gzip).await;
    let b = h.send(Method::GET, target, HOST, &br).await;
    // The origin was asked with the normalized coding, once per variant.
    assert_eq!(received(&a.body), "accept-encoding=gzip");
    assert_eq!(received(&b.body), "accept-encoding=br");
    assert!(
        b.cache_status().contains("fwd=vary-miss"),
        "{}",
        b.cache_status()
    );
    assert_eq!(h.origin.hits(target), 2);
    for (headers, want) in [(&gzip[..], &a.body), (&br[..], &b.body)] {
        let hit = h.send(Method::GET, target, HOST, headers).await;
        assert!(
            hit.cache_status().contains("; hit"),
            "{}",
            hit.cache_status()
        );
        assert_eq!(&hit.body, want);
        assert_eq!(hit.header("vary"), "accept-encoding");
    }
    // Another client whose best coding is also br shares the br variant.
    let other = h
        .send(Method::GET, target, HOST, &[("accept-encoding", "br")])
        .await;
    assert_eq!(other.body, b.body);
    // No Accept-Encoding at all is a third variant.
    let identity = h.get(target).await;
    assert_eq!(received(&identity.body), "accept-encoding=-");
    assert_eq!(h.origin.hits(target), 3);
}

#[tokio::test]
async fn other_fields_vary_by_their_whole_value() {
    let h = Harness::start().await;
    let target = "/page.html?vary=accept-language";
    for lang in ["en", "fr", "en"] {
        let reply = h
            .send(Method::GET, target, HOST, &[("accept-language", lang)])
            .await;
        assert_eq!(received(&reply.body), format!("accept-language={lang}"));
    }
    assert_eq!(h.origin.hits(target), 2);
}

#[tokio::test]
async fn vary_star_is_never_served_from_cache() {
    let h = Harness::start().await;
    let target = "/star.bin?h.vary=*";
    for _ in 0..3 {
        let reply = h.get(target).await;
        assert!(
            reply.cache_status().ends_with("detail=vary"),
            "{}",
            reply.cache_status()
        );
    }
    assert_eq!(h.origin.hits(target), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_for_different_variants_each_get_their_own() {
    let h = Arc::new(Harness::start().await);
    let target = "/race.js?vary=accept-encoding&delay_ms=300";
    let mut tasks = Vec::new();
    for i in 0..20 {
        let h = h.clone();
        let coding = if i % 2 == 0 { "gzip" } else { "br" };
        tasks.push(tokio::spawn(async move {
            let reply = h
                .send(Method::GET, target, HOST, &[("accept-encoding", coding)])
                .await;
            (coding, reply)
        }));
    }
    for task in tasks {
        let (coding, reply) = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(received(&reply.body), format!("accept-encoding={coding}"));
    }
    assert_eq!(h.origin.hits(target), 2, "one fetch per variant");
}

#[tokio::test]
async fn invalidating_a_url_drops_every_variant() {
    let h = Harness::start().await;
    let target = "/inv.css?vary=accept-encoding";
    for coding in ["gzip", "br"] {
        h.send(Method::GET, target, HOST, &[("accept-encoding", coding)])
            .await;
    }
    assert_eq!(h.origin.hits(target), 2);
    h.send(Method::PUT, target, HOST, &[]).await;
    // The next fill re-creates the index under a new epoch: the old br variant must not
    // come back.
    for coding in ["gzip", "br"] {
        let reply = h
            .send(Method::GET, target, HOST, &[("accept-encoding", coding)])
            .await;
        assert!(
            !reply.cache_status().contains("; hit"),
            "{coding}: {}",
            reply.cache_status()
        );
    }
    assert_eq!(h.origin.hits(target), 5, "2 GETs, 1 PUT, 2 GETs");
}

#[tokio::test]
async fn list_valued_fields_are_normalized_before_variants_are_compared() {
    let h = Harness::start().await;
    let target = "/lang.html?vary=accept-language";
    let first = h
        .send(Method::GET, target, HOST, &[("accept-language", "en, fr")])
        .await;
    for same in ["fr,en", "FR , En", "en,fr;q=1", " en ,, fr "] {
        let reply = h
            .send(Method::GET, target, HOST, &[("accept-language", same)])
            .await;
        assert!(
            reply.cache_status().contains("; hit"),
            "{same:?}: {}",
            reply.cache_status()
        );
        assert_eq!(reply.body, first.body, "{same:?}");
    }
    assert_eq!(h.origin.hits(target), 1);
    // Different weights or members are different variants.
    for other in ["en;q=0.5, fr", "en-gb, fr"] {
        let reply = h
            .send(Method::GET, target, HOST, &[("accept-language", other)])
            .await;
        assert!(
            reply.cache_status().contains("fwd=vary-miss"),
            "{other:?}: {}",
            reply.cache_status()
        );
    }
    assert_eq!(h.origin.hits(target), 3);
}
