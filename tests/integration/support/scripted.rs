//! A scripted origin: every response comes from a function of the request, every request
//! is recorded (method, target, headers, body), arrivals are counted, and responses can be
//! held until a number of requests have arrived, so a test knows which requests reached
//! the origin together instead of guessing with sleeps.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Longest a held response waits for the arrivals it waits on, and longest
/// [`ScriptedOrigin::arrivals`] waits: past it, the test fails on its assertions, not by
/// hanging.
pub const HOLD_LIMIT: Duration = Duration::from_secs(10);

/// One request as the origin received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    /// A request field's value, if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

type Script = dyn Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync;

struct State {
    script: Box<Script>,
    seen: Mutex<Vec<Seen>>,
    arrivals: watch::Sender<usize>,
    /// Responses wait until this many requests have arrived (0: answer at once).
    hold_until: AtomicUsize,
    /// A held response gave up waiting ([`HOLD_LIMIT`]): the arrivals it waited on never
    /// came.
    hold_expired: AtomicBool,
}

/// A running scripted origin on 127.0.0.1, port 0.
pub struct ScriptedOrigin {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for ScriptedOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedOrigin")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for ScriptedOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedOrigin {
    /// Starts an origin answering every request with `script(request)`.
    pub async fn start(
        script: impl Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind(super::loopback()).await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let state = Arc::new(State {
            script: Box::new(script),
            seen: Mutex::default(),
            arrivals: watch::Sender::new(0),
            hold_until: AtomicUsize::new(0),
            hold_expired: AtomicBool::new(false),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(answer(&state, req).await) }
                });
                tokio::spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in order of arrival.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests received for `target` (path and query as sent).
    pub fn count(&self, target: &str) -> usize {
        self.seen().iter().filter(|s| s.target == target).count()
    }

    /// From now on, responses wait until `n` requests (counted since the start) have
    /// arrived, for at most [`HOLD_LIMIT`].
    pub fn hold_until(&self, n: usize) {
        self.state.hold_until.store(n, Ordering::SeqCst);
    }

    /// Whether a held response gave up waiting for the arrivals it was held for.
    pub fn hold_expired(&self) -> bool {
        self.state.hold_expired.load(Ordering::SeqCst)
    }

    /// Waits until `n` requests have arrived, for at most [`HOLD_LIMIT`]; whether they did.
    pub async fn arrivals(&self, n: usize) -> bool {
        let mut arrivals = self.state.arrivals.subscribe();
        tokio::time::timeout(HOLD_LIMIT, arrivals.wait_for(|seen| *seen >= n))
            .await
            .is_ok_and(|waited| waited.is_ok())
    }
}

async fn answer(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let seen = Seen {
        method: parts.method,
        target: parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned(),
        headers: parts.headers,
        body,
    };
    state.seen.lock().unwrap().push(seen.clone());
    state.arrivals.send_modify(|n| *n += 1);
    let hold = state.hold_until.load(Ordering::SeqCst);
    let mut arrivals = state.arrivals.subscribe();
    if tokio::time::timeout(HOLD_LIMIT, arrivals.wait_for(|n| *n >= hold))
        .await
        .is_err()
    {
        state.hold_expired.store(true, Ordering::SeqCst);
    }
    (state.script)(&seen)
}

/// A response with `status`, these header fields and `body`.
pub fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(StatusCode::from_u16(status).expect("status"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .expect("valid response")
}

/// A scripted origin and an edge in front of it (the test site, [`super::HOST`]).
pub struct Scripted {
    pub origin: ScriptedOrigin,
    pub edge: edge::EdgeServer,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

impl Scripted {
    /// Starts `script`'s origin and an edge with `cache_extra` in `[cache]` and
    /// `site_extra` in the site (as [`super::config`]).
    pub async fn start(
        cache_extra: &str,
        site_extra: &str,
        script: impl Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Self {
        let origin = ScriptedOrigin::start(script).await;
        let config = super::config(origin.addr(), cache_extra, site_extra);
        let edge = edge::EdgeServer::start(config).await.expect("edge starts");
        Self {
            origin,
            edge,
            client: super::client(),
        }
    }

    /// GET `target` with these request fields.
    pub async fn get(&self, target: &str, headers: &[(&str, &str)]) -> super::Reply {
        self.send(Method::GET, target, headers, "").await
    }

    /// Sends a request with `body` (none when empty) to the edge, bounded by a timeout.
    pub async fn send(
        &self,
        method: Method,
        target: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> super::Reply {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("http://{}{target}", self.edge.public_addr()))
            .header("host", super::HOST);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .expect("valid request");
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .expect("a response within 30 s")
            .expect("a response");
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(Duration::from_secs(30), body.collect())
            .await
            .expect("the body within 30 s")
            .expect("a whole body")
            .to_bytes();
        super::Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}
