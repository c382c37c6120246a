//! The edge's hit path without sockets: site lookup, key building, store lookup, freshness
//! check and response construction, for the sizes the load benchmark uses. Also the pieces
//! on that path (normalization, key building, Cache-Control parsing) on their own.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use edge::cache::control::CacheControl;
use edge::cache::freshness::{Exchange, Freshness};
use edge::cache::key::{CacheKey, QueryPolicy, normalize_target};
use edge::cache::store::{Entry, StoredResponse};
use edge::{Edge, EdgeConfig, MemoryStore, Storage};
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};

const CONFIG: &str = r#"
[node]
name = "edge-bench"
[[site]]
name = "bench"
hosts = ["bench.example"]
upstream = "http://127.0.0.1:9"
"#;

fn stored(size: usize) -> Arc<StoredResponse> {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        (header::CONTENT_TYPE, "application/octet-stream"),
        (header::CACHE_CONTROL, "public, max-age=3600"),
        (header::ETAG, "\"5f3a-400\""),
        (header::LAST_MODIFIED, "Mon, 02 Nov 2026 10:00:00 GMT"),
        (header::DATE, "Sun, 22 Nov 2026 10:00:00 GMT"),
        (header::VIA, "1.1 edge-bench"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    Arc::new(StoredResponse::new(
        StatusCode::OK,
        headers,
        None,
        Bytes::from(vec![0x5a; size]),
        Freshness {
            initial_age: 0,
            lifetime: 1 << 30,
            received: Exchange::now().received,
            must_revalidate: false,
            stale_while_revalidate: 0,
            stale_if_error: 0,
            shared_with_authorization: false,
        },
    ))
}

fn hit_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let config = EdgeConfig::from_toml(CONFIG).expect("bench config");
    let store = Arc::new(MemoryStore::new(1 << 30));
    let edge = Arc::new(Edge::new(&config, store.clone()).expect("edge"));
    let client: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let mut group = c.benchmark_group("hit_path");
    for (label, size) in [("1k", 1024), ("16k", 16 * 1024), ("256k", 256 * 1024)] {
        let target = format!("/obj/{label}.bin");
        store.insert(
            CacheKey::new(1, "http", "bench.example", &target),
            Entry::Response(stored(size)),
        );
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::from_parameter(label), &target, |b, target| {
            b.iter(|| {
                let request = Request::get(target.as_str())
                    .header(header::HOST, "bench.example")
                    .header(header::USER_AGENT, "wrk")
                    .body(Empty::<Bytes>::new().map_err(|never| match never {}))
                    .expect("request");
                let response = runtime.block_on(edge.handle(request, client));
                assert_eq!(response.status(), StatusCode::OK);
                response
            });
        });
    }
    group.finish();
}

fn pieces(c: &mut Criterion) {
    let policy = QueryPolicy::default();
    c.bench_function("normalize_target/plain", |b| {
        b.iter(|| normalize_target(std::hint::black_box("/static/app.3f2a9c.js"), &policy))
    });
    let sorting = QueryPolicy {
        mode: edge::cache::key::QueryMode::Sort,
        drop: vec!["utm_source".into()],
    };
    c.bench_function("normalize_target/sort_and_drop", |b| {
        b.iter(|| {
            normalize_target(
                std::hint::black_box("/img/a%2fb.png?w=100&utm_source=x&h=50&fmt=webp"),
                &sorting,
            )
        })
    });
    c.bench_function("cache_key/new", |b| {
        b.iter(|| {
            CacheKey::new(
                7,
                "http",
                "assets.example.com",
                std::hint::black_box("/a/b/c.js"),
            )
        })
    });
    c.bench_function("cache_control/parse", |b| {
        b.iter(|| {
            CacheControl::parse(std::hint::black_box(
                "public, max-age=3600, s-maxage=600, stale-while-revalidate=30",
            ))
        })
    });
}

criterion_group!(benches, hit_path, pieces);
criterion_main!(benches);
