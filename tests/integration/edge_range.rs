//! Range requests: cut from the stored object, fetched whole once on a miss.

use crate::support;

use http::{Method, StatusCode};
use support::{HOST, Harness};

const TARGET: &str = "/video/64k.bin";
const LEN: usize = 64 * 1024;

async fn full(h: &Harness) -> bytes::Bytes {
    h.get(TARGET).await.body
}

#[tokio::test]
async fn a_range_miss_fetches_the_whole_object_once_and_later_ranges_hit() {
    let h = Harness::start().await;
    let first = h
        .send(Method::GET, TARGET, HOST, &[("range", "bytes=0-99")])
        .await;
    assert_eq!(first.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(first.body.len(), 100);
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    let whole = full(&h).await;
    assert_eq!(whole.len(), LEN);
    assert_eq!(&first.body[..], &whole[..100]);
    for (range, start, end) in [
        ("bytes=100-199", 100, 199),
        ("bytes=65000-", 65000, LEN - 1),
        ("bytes=-10", LEN - 10, LEN - 1),
        ("bytes=65500-99999", 65500, LEN - 1),
    ] {
        let reply = h.send(Method::GET, TARGET, HOST, &[("range", range)]).await;
        assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert!(reply.cache_status().contains("; hit"));
        assert_eq!(
            reply.header("content-range"),
            format!("bytes {start}-{end}/{LEN}"),
            "{range}"
        );
        assert_eq!(
            reply.header("content-length"),
            (end - start + 1).to_string()
        );
        assert_eq!(&reply.body[..], &whole[start..=end], "{range}");
    }
    assert_eq!(h.origin.hits(TARGET), 1);
}

#[tokio::test]
async fn several_ranges_make_a_multipart_answer() {
    let h = Harness::start().await;
    let whole = full(&h).await;
    let reply = h
        .send(
            Method::GET,
            TARGET,
            HOST,
            &[("range", "bytes=0-9, 1000-1009")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
    let content_type = reply.header("content-type");
    let boundary = content_type
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap_or_else(|| panic!("content-type {content_type}"));
    let body = &reply.body[..];
    let found: Vec<String> = body
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let line = String::from_utf8_lossy(line);
            line.trim()
                .strip_prefix("content-range: bytes ")
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(found, [format!("0-9/{LEN}"), format!("1000-1009/{LEN}")]);
    let text = String::from_utf8_lossy(body);
    assert!(text.ends_with(&format!("\r\n--{boundary}--\r\n")), "{text}");
    // Each part's bytes are the object's bytes.
    let first = body
        .windows(10)
        .position(|w| w == &whole[..10])
        .expect("first part present");
    assert!(first > 0);
    assert!(body.windows(10).any(|w| w == &whole[1000..1010]));
}

#[tokio::test]
async fn unsatisfiable_ranges_get_416_with_the_length() {
    let h = Harness::start().await;
    full(&h).await;
    let reply = h
        .send(Method::GET, TARGET, HOST, &[("range", "bytes=70000-")])
        .await;
    assert_eq!(reply.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(reply.header("content-range"), format!("bytes */{LEN}"));
    assert!(reply.body.is_empty());
}

#[tokio::test]
async fn if_range_sends_the_whole_object_when_the_validator_changed() {
    let h = Harness::start().await;
    let whole = h.get(TARGET).await;
    let etag = whole.header("etag").to_owned();
    let current = h
        .send(
            Method::GET,
            TARGET,
            HOST,
            &[("range", "bytes=0-9"), ("if-range", &etag)],
        )
        .await;
    assert_eq!(current.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(current.body.len(), 10);
    let changed = h
        .send(
            Method::GET,
            TARGET,
            HOST,
            &[("range", "bytes=0-9"), ("if-range", "\"old\"")],
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(changed.body.len(), LEN);
}

#[tokio::test]
async fn ranges_the_cache_will_not_honour_get_the_whole_object() {
    let h = Harness::start().await;
    full(&h).await;
    for range in ["items=0-9", "bytes=9-0", "bytes=abc"] {
        let reply = h.send(Method::GET, TARGET, HOST, &[("range", range)]).await;
        assert_eq!(reply.status, StatusCode::OK, "{range}");
        assert_eq!(reply.body.len(), LEN);
    }
    // HEAD ignores Range.
    let head = h
        .send(Method::HEAD, TARGET, HOST, &[("range", "bytes=0-9")])
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("content-length"), LEN.to_string());
}

#[tokio::test]
async fn a_range_of_an_object_too_large_to_store_is_cut_by_the_origin() {
    let h = Harness::start_with("max_object_size = \"64 KiB\"", "").await;
    let big = "/huge/256k.bin";
    let reply = h
        .send(Method::GET, big, HOST, &[("range", "bytes=1000-1099")])
        .await;
    assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(reply.body.len(), 100);
    assert_eq!(reply.header("content-range"), "bytes 1000-1099/262144");
    let whole = h.get(big).await;
    assert_eq!(whole.body.len(), 256 * 1024);
    assert_eq!(&reply.body[..], &whole.body[1000..1100]);
}
