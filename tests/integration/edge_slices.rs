//! Objects above `max_object_size` cached in slices: a range costs only the slices it
//! covers, each slice is fetched once, and two versions are never stitched together.

use crate::support;

use http::{Method, StatusCode};
use support::Harness;

const TARGET: &str = "/video/4m.bin";
const LEN: usize = 4 << 20;
const SLICE: usize = 256 << 10;
const SLICES: u64 = (LEN / SLICE) as u64;

async fn sliced() -> Harness {
    Harness::start_with(
        r#"capacity = "64 MiB"
        max_object_size = "1 MiB"
        slice_size = "256 KiB""#,
        "",
    )
    .await
}

fn range(first: usize, last: usize) -> String {
    format!("bytes={first}-{last}")
}

#[tokio::test]
async fn a_range_of_a_large_object_fetches_only_the_slices_it_covers() {
    let h = sliced().await;
    let whole = h.origin_body(TARGET).await;
    let (first, last) = (SLICE + 100, 2 * SLICE + 99); // slices 1 and 2
    let reply = h
        .try_send(Method::GET, TARGET, &[("range", &range(first, last))])
        .await
        .expect("ranged answer");
    assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        reply.header("content-range"),
        format!("bytes {first}-{last}/{LEN}")
    );
    assert_eq!(&reply.body[..], &whole[first..=last]);
    // One plain GET learnt the object's size and validator; then one ranged GET per slice.
    assert_eq!(h.origin.hits(TARGET), 3);
    assert_eq!(h.origin.ranged_hits(), 2);

    let inside = h
        .try_send(
            Method::GET,
            TARGET,
            &[("range", &range(SLICE, 3 * SLICE - 1))],
        )
        .await
        .expect("ranged answer");
    assert_eq!(inside.status, StatusCode::PARTIAL_CONTENT);
    assert!(
        inside.cache_status().contains("; hit"),
        "{}",
        inside.cache_status()
    );
    assert_eq!(&inside.body[..], &whole[SLICE..3 * SLICE]);
    assert_eq!(h.origin.hits(TARGET), 3, "covered by the stored slices");
}

#[tokio::test]
async fn a_partial_object_completes_as_requests_fill_its_gaps_then_serves_from_memory() {
    let h = sliced().await;
    let whole = h.origin_body(TARGET).await;
    h.try_send(Method::GET, TARGET, &[("range", "bytes=0-99")])
        .await
        .expect("first slice");
    assert_eq!(h.origin.hits(TARGET), 2);

    let full = h.try_send(Method::GET, TARGET, &[]).await.expect("whole");
    assert_eq!(full.status, StatusCode::OK);
    assert_eq!(full.header("content-length"), LEN.to_string());
    assert!(
        full.header("etag").starts_with('"'),
        "the object's own validator"
    );
    assert!(
        full.body == whole,
        "the assembled object equals the origin's"
    );
    assert_eq!(h.origin.hits(TARGET), 1 + SLICES, "each slice fetched once");

    let again = h.try_send(Method::GET, TARGET, &[]).await.expect("whole");
    assert!(
        again.cache_status().contains("; hit"),
        "{}",
        again.cache_status()
    );
    assert!(again.body == whole);
    let tail = h
        .try_send(Method::GET, TARGET, &[("range", "bytes=-10")])
        .await
        .expect("suffix range");
    assert_eq!(&tail.body[..], &whole[LEN - 10..]);
    assert_eq!(
        h.origin.hits(TARGET),
        1 + SLICES,
        "complete: nothing more fetched"
    );
}

#[tokio::test]
async fn concurrent_cold_requests_fetch_each_slice_once() {
    let h = std::sync::Arc::new(sliced().await);
    let whole = h.origin_body(TARGET).await;
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.try_send(Method::GET, TARGET, &[]).await })
        })
        .collect();
    for client in clients {
        let reply = client.await.expect("client task").expect("whole object");
        assert!(reply.body == whole);
    }
    assert_eq!(h.origin.hits(TARGET), 1 + SLICES);
}

#[tokio::test]
async fn head_and_conditionals_of_a_sliced_object_fetch_no_slices() {
    let h = sliced().await;
    let head = h.send(Method::HEAD, TARGET, support::HOST, &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("content-length"), LEN.to_string());
    assert!(head.body.is_empty());
    let etag = head.header("etag").to_owned();
    let not_modified = h
        .try_send(Method::GET, TARGET, &[("if-none-match", &etag)])
        .await
        .expect("304");
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    let unsatisfiable = h
        .try_send(Method::GET, TARGET, &[("range", "bytes=99999999-")])
        .await
        .expect("416");
    assert_eq!(unsatisfiable.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        unsatisfiable.header("content-range"),
        format!("bytes */{LEN}")
    );
    assert_eq!(h.origin.ranged_hits(), 0);
    assert_eq!(h.origin.hits(TARGET), 1);
}

#[tokio::test]
async fn a_sliced_object_that_must_revalidate_reuses_its_slices_after_a_304() {
    let h = sliced().await;
    let target = "/video/4m.bin?cc=no-cache";
    let whole = h.origin_body(target).await;
    let first = h.try_send(Method::GET, target, &[]).await.expect("whole");
    assert!(first.body == whole);
    assert_eq!(h.origin.hits(target), 1 + SLICES);
    let second = h.try_send(Method::GET, target, &[]).await.expect("whole");
    assert!(second.body == whole);
    // One conditional request, answered 304 (a 200 would have been a whole new object).
    assert_eq!(h.origin.hits(target), 2 + SLICES);
    assert!(
        second.cache_status().contains("fwd=stale"),
        "{}",
        second.cache_status()
    );
}

#[tokio::test]
async fn slices_of_two_versions_are_never_stitched_together() {
    let h = sliced().await;
    h.try_send(Method::GET, TARGET, &[("range", "bytes=0-99")])
        .await
        .expect("first slice of version 1");
    h.origin.bump();
    let new = h.origin_body(TARGET).await;
    // Slice 0 is version 1; slice 1 is asked for with If-Range: version 1's ETag, and the
    // origin answers 200 with version 2. The answer must break off, not mix versions.
    let mixed = h.try_send(Method::GET, TARGET, &[]).await;
    // Broken off by the edge: a body that merely stopped coming (a hang until the
    // client's timeout) is another failure.
    match mixed {
        Ok(_) => panic!("a body mixing two versions was served whole"),
        Err(error) => assert!(error.starts_with("body broke off"), "{error}"),
    }
    // The URL then passes through: whole and current.
    let after = h.try_send(Method::GET, TARGET, &[]).await.expect("whole");
    assert!(after.body == new);
}

#[tokio::test]
async fn a_large_object_without_range_support_is_streamed_and_not_stored() {
    let h = sliced().await;
    let target = "/video/4m.bin?ranges=0";
    for n in 1..=2 {
        let reply = h.try_send(Method::GET, target, &[]).await.expect("whole");
        assert_eq!(reply.body.len(), LEN);
        assert_eq!(h.origin.hits(target), n);
    }
    assert_eq!(h.origin.ranged_hits(), 0);
}

#[tokio::test]
async fn an_object_above_a_quarter_of_the_cache_is_not_sliced() {
    let h = Harness::start_with(
        r#"capacity = "8 MiB"
        max_object_size = "1 MiB"
        slice_size = "256 KiB""#,
        "",
    )
    .await;
    for n in 1..=2 {
        let reply = h.try_send(Method::GET, TARGET, &[]).await.expect("whole");
        assert_eq!(reply.body.len(), LEN);
        assert!(
            reply.cache_status().contains("fwd="),
            "{}",
            reply.cache_status()
        );
        assert_eq!(h.origin.hits(TARGET), n);
    }
    assert_eq!(h.origin.ranged_hits(), 0);
}

#[tokio::test]
async fn a_forwarded_range_of_a_large_object_makes_it_sliced() {
    let h = Harness::start_with(
        r#"capacity = "64 MiB"
        max_object_size = "1 MiB"
        slice_size = "256 KiB""#,
        r#"range_miss = "forward""#,
    )
    .await;
    let whole = h.origin_body(TARGET).await;
    let reply = h
        .try_send(Method::GET, TARGET, &[("range", &range(100, 199))])
        .await
        .expect("ranged answer");
    assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        reply.header("content-range"),
        format!("bytes 100-199/{LEN}")
    );
    assert_eq!(&reply.body[..], &whole[100..200]);
    // The forwarded range showed the size: a slice index, then slice 0 of it.
    assert_eq!(h.origin.ranged_hits(), 2);
    let inside = h
        .try_send(Method::GET, TARGET, &[("range", &range(1000, 1999))])
        .await
        .expect("ranged answer");
    assert!(
        inside.cache_status().contains("; hit"),
        "{}",
        inside.cache_status()
    );
    assert_eq!(&inside.body[..], &whole[1000..2000]);
    assert_eq!(h.origin.hits(TARGET), 2, "never a whole 4 MiB fetch");
}
