//! Failures that are the client's, not the upstream's: a request body that broke off,
//! grew past the node's limit or stopped arriving while it streamed upstream.
//!
//! The upstream exchange fails with them, so they live beside [`UpstreamError`], which
//! carries one as [`UpstreamError::Client`]: the client's own status (`400`, `413`, `408`),
//! never counted against a server's health, its retries or its error metrics. The body
//! that produces them is the front door's (`front::client_body`).

use std::error::Error as StdError;
use std::time::Duration;

use http::StatusCode;

#[cfg(doc)]
use crate::upstream::client::UpstreamError;

/// What a client did wrong with its request body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientFault {
    #[error("the request body is malformed or broke off: {0}; send a well-framed body")]
    Broken(String),
    #[error("the request body is larger than this node's limit of {0} bytes")]
    TooLarge(u64),
    #[error("no byte of the request body arrived for {0:?}; send the body without pausing")]
    TimedOut(Duration),
}

impl ClientFault {
    /// The status the client is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ClientFault::Broken(_) => StatusCode::BAD_REQUEST,
            ClientFault::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ClientFault::TimedOut(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// A bounded label for metrics and `Cache-Status` details.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFault::Broken(_) => "client-body-broken",
            ClientFault::TooLarge(_) => "client-body-too-large",
            ClientFault::TimedOut(_) => "client-body-timeout",
        }
    }
}

/// The client's fault behind a failed upstream exchange, if its body is what failed.
pub fn client_fault(error: &(dyn StdError + 'static)) -> Option<ClientFault> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(fault) = error.downcast_ref::<ClientFault>() {
            return Some(fault.clone());
        }
        cause = error.source();
    }
    None
}
