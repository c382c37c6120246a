//! Talking to upstreams (origins or shields): a pooled HTTP/1.1 client with timeouts, and
//! the error every upstream exchange fails with.

use std::error::Error as StdError;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use serde::Deserialize;

use crate::cache::BoxError;
use crate::upstream::fault::{ClientFault, client_fault};

/// Body of a request sent upstream.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// Why an upstream exchange failed. Each variant maps to the status the client gets.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not connect to the upstream: {0}")]
    Connect(String),
    #[error("the upstream sent no response head within {0:?}")]
    HeadTimeout(Duration),
    #[error("the upstream did not finish the response body within {0:?}")]
    BodyTimeout(Duration),
    #[error("the upstream broke the exchange: {0}")]
    Protocol(String),
    #[error("the shared fetch for this object was lost; retry the request")]
    Lost,
    #[error("all {0} upstream servers of this site are at their connection limit; retry shortly")]
    NoServer(usize),
    /// Shed before it was sent: see [`crate::upstream::overload`].
    #[error("{0}")]
    Overloaded(crate::upstream::overload::Shed),
    /// The client's request body failed, not the upstream: the client's fault, never
    /// counted against the server (see [`crate::upstream::fault`]).
    #[error("{0}")]
    Client(ClientFault),
}

impl UpstreamError {
    /// The status a client is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::HeadTimeout(_) | UpstreamError::BodyTimeout(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            UpstreamError::NoServer(_) | UpstreamError::Overloaded(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            UpstreamError::Client(fault) => fault.status(),
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// A bounded label for metrics and `Cache-Status` details.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::HeadTimeout(_) => "head-timeout",
            UpstreamError::BodyTimeout(_) => "body-timeout",
            UpstreamError::Protocol(_) => "protocol",
            UpstreamError::Lost => "lost",
            UpstreamError::NoServer(_) => "no-server",
            UpstreamError::Overloaded(_) => "overloaded",
            UpstreamError::Client(fault) => fault.kind(),
        }
    }

    /// Whether another server may do better: the exchange failed before any response.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect(_) | UpstreamError::HeadTimeout(_) | UpstreamError::Protocol(_)
        )
    }
}

/// A pooled client for all upstreams of a node.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    client: Client<HttpConnector, UpstreamBody>,
    response_timeout: Duration,
    body_timeout: Duration,
}

impl UpstreamClient {
    pub fn new(config: &UpstreamConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(config.max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Self {
            client,
            response_timeout: config.response_timeout,
            body_timeout: config.body_timeout,
        }
    }

    /// Sends a request and waits for the response head.
    pub async fn send(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.response_timeout, self.client.request(request)).await {
            Err(_) => Err(UpstreamError::HeadTimeout(self.response_timeout)),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(match client_fault(&e) {
                Some(fault) => UpstreamError::Client(fault),
                None if e.is_connect() => UpstreamError::Connect(error_chain(&e)),
                None => UpstreamError::Protocol(error_chain(&e)),
            }),
        }
    }

    /// Time allowed for a body being stored.
    pub fn body_timeout(&self) -> Duration {
        self.body_timeout
    }
}

/// An empty request body.
pub fn empty_body() -> UpstreamBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn error_chain(e: &dyn StdError) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// How the node talks to its upstreams (origins or shields).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Time allowed to open a TCP connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed from sending the request to the end of the response headers.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Time allowed to receive a whole response body that is being stored.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Idle keep-alive connections kept per upstream.
    pub max_idle_per_host: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            response_timeout: Duration::from_secs(15),
            body_timeout: Duration::from_secs(60),
            max_idle_per_host: 256,
        }
    }
}
