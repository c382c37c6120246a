//! A client of the nodes' admin API, for the commands that act on a running topology:
//! `cdn drill` drains and resumes edges, `cdn warm` lists their hottest objects and
//! fetches through their public listeners, the operator console reads their health and
//! purge watermarks. Every exchange is bounded by a timeout.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use node_api::HealthReport;
use node_api::headers::NODE_TOKEN;
use node_api::purge::PurgeAck;

/// How long one exchange may take, unless [`NodeAdmin::with_timeout`] says otherwise.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a node did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{node}: no answer from {addr}: {message} (is the topology running?)")]
    Unreachable {
        node: String,
        addr: SocketAddr,
        message: String,
    },
    #[error("{node}: {status} from {addr}{path}: {body}")]
    Refused {
        node: String,
        addr: SocketAddr,
        path: String,
        status: StatusCode,
        body: String,
    },
    #[error("{node}: unexpected answer from {addr}{path}: {message}")]
    Unexpected {
        node: String,
        addr: SocketAddr,
        path: String,
        message: String,
    },
}

use node_api::hot::HotList;
pub use node_api::hot::HotObject;

/// An answer: status, `Cache-Status`, body length.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub status: StatusCode,
    pub cache_status: String,
    pub bytes: usize,
}

/// A client for the admin and public listeners of the nodes.
#[derive(Debug, Clone)]
pub struct NodeAdmin {
    client: Client<HttpConnector, Empty<Bytes>>,
    token: String,
    timeout: Duration,
}

impl NodeAdmin {
    pub fn new(token: &str) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            token: token.to_owned(),
            timeout: TIMEOUT,
        }
    }

    /// The same client, each exchange bounded by `timeout` instead.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The node's health report (`GET /healthz`), answered `200` while it takes traffic
    /// and `503` while it drains: both carry the report.
    pub async fn health(&self, node: &str, admin: SocketAddr) -> Result<HealthReport, AdminError> {
        let path = "/healthz";
        let (status, _, body) = self
            .exchange(node, admin, Method::GET, path, None, false)
            .await?;
        if status != StatusCode::OK && status != StatusCode::SERVICE_UNAVAILABLE {
            return Err(refused(node, admin, path, status, &body));
        }
        parse(node, admin, path, &body)
    }

    /// The highest purge sequence number the node has applied with all before it
    /// (`GET /v1/purge/applied`).
    pub async fn applied(&self, node: &str, admin: SocketAddr) -> Result<u64, AdminError> {
        let path = "/v1/purge/applied";
        let (status, _, body) = self
            .exchange(node, admin, Method::GET, path, None, true)
            .await?;
        if status != StatusCode::OK {
            return Err(refused(node, admin, path, status, &body));
        }
        parse::<PurgeAck>(node, admin, path, &body).map(|ack| ack.applied)
    }

    /// Takes a node out of rotation (`/healthz` fails; it keeps serving).
    pub async fn drain(&self, node: &str, admin: SocketAddr) -> Result<(), AdminError> {
        self.post(node, admin, "/v1/drain").await
    }

    /// Puts a drained node back.
    pub async fn resume(&self, node: &str, admin: SocketAddr) -> Result<(), AdminError> {
        self.post(node, admin, "/v1/resume").await
    }

    /// Kills process `name` of `cdn up --processes` (the supervisor's control listener at
    /// `control`), which keeps it down until [`NodeAdmin::start_process`].
    pub async fn kill_process(&self, control: SocketAddr, name: &str) -> Result<(), AdminError> {
        self.post("supervisor", control, &format!("/v1/processes/{name}/kill"))
            .await
    }

    /// Lets the supervisor start process `name` again.
    pub async fn start_process(&self, control: SocketAddr, name: &str) -> Result<(), AdminError> {
        self.post(
            "supervisor",
            control,
            &format!("/v1/processes/{name}/start"),
        )
        .await
    }

    /// Cuts region `region` off the network (`cdn up --processes --netns`).
    pub async fn partition(&self, control: SocketAddr, region: &str) -> Result<(), AdminError> {
        self.post(
            "supervisor",
            control,
            &format!("/v1/regions/{region}/partition"),
        )
        .await
    }

    /// Reconnects a region [`NodeAdmin::partition`] cut off.
    pub async fn heal(&self, control: SocketAddr, region: &str) -> Result<(), AdminError> {
        self.post("supervisor", control, &format!("/v1/regions/{region}/heal"))
            .await
    }

    /// The node's `limit` most requested objects.
    pub async fn hot(
        &self,
        node: &str,
        admin: SocketAddr,
        limit: usize,
    ) -> Result<Vec<HotObject>, AdminError> {
        let path = format!("/v1/hot?limit={limit}");
        let (status, _, body) = self
            .exchange(node, admin, Method::GET, &path, None, true)
            .await?;
        if status != StatusCode::OK {
            return Err(refused(node, admin, &path, status, &body));
        }
        parse::<HotList>(node, admin, &path, &body).map(|list| list.objects)
    }

    /// GETs `target` on `host` from a node's public listener, reading the whole body.
    pub async fn fetch(
        &self,
        node: &str,
        public: SocketAddr,
        host: &str,
        target: &str,
    ) -> Result<Fetched, AdminError> {
        let (status, headers, body) = self
            .exchange(node, public, Method::GET, target, Some(host), false)
            .await?;
        Ok(Fetched {
            status,
            cache_status: headers
                .get("cache-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned(),
            bytes: body.len(),
        })
    }

    async fn post(&self, node: &str, admin: SocketAddr, path: &str) -> Result<(), AdminError> {
        let (status, _, body) = self
            .exchange(node, admin, Method::POST, path, None, true)
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(refused(node, admin, path, status, &body))
        }
    }

    async fn exchange(
        &self,
        node: &str,
        addr: SocketAddr,
        method: Method,
        path: &str,
        host: Option<&str>,
        with_token: bool,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), AdminError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        if let Some(host) = host {
            request = request.header(http::header::HOST, host);
        }
        if with_token {
            request = request.header(NODE_TOKEN, &self.token);
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| AdminError::Unexpected {
                node: node.to_owned(),
                addr,
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        let unreachable = |message: String| AdminError::Unreachable {
            node: node.to_owned(),
            addr,
            message,
        };
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| unreachable(format!("the body broke off: {e}")))?
                .to_bytes();
            Ok((parts.status, parts.headers, body))
        };
        let timeout = self.timeout;
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    node: &str,
    addr: SocketAddr,
    path: &str,
    body: &[u8],
) -> Result<T, AdminError> {
    serde_json::from_slice(body).map_err(|e| AdminError::Unexpected {
        node: node.to_owned(),
        addr,
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn refused(
    node: &str,
    addr: SocketAddr,
    path: &str,
    status: StatusCode,
    body: &[u8],
) -> AdminError {
    AdminError::Refused {
        node: node.to_owned(),
        addr,
        path: path.to_owned(),
        status,
        body: String::from_utf8_lossy(body).trim().to_owned(),
    }
}
