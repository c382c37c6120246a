//! The general path: every message over TCP, and every UDP query the fast path
//! ([`crate::fast_path`]) declines.
//!
//! A message is first screened ([`screen`]): one that is not a query (QR=1, a response)
//! or too short to be one is dropped unanswered and counted. Answering a response would
//! reflect forged traffic at a victim and could loop between two servers answering each
//! other's errors. What passes is decoded by hickory-server (FORMERR if it cannot be) and
//! answered by [`Handler`]; the encoded response is captured for the transport to send.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use hickory_proto::op::{MessageType, ResponseCode};
use hickory_proto::rr::{Record, RecordType};
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;

use crate::handler::Handler;

/// The size of a DNS header.
const HEADER: usize = 12;

/// Why a message is dropped without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Shorter than a DNS header: no ID to answer.
    Short,
    /// QR=1: a response, never answered (no reflection, no loop between servers).
    Response,
}

impl Dropped {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Short => "short",
            Self::Response => "response",
        }
    }
}

/// Whether a received message may be answered at all, from its header alone, before
/// anything decodes it (so a response that does not decode is dropped too).
pub fn screen(packet: &[u8]) -> Result<(), Dropped> {
    if packet.len() < HEADER {
        Err(Dropped::Short)
    } else if packet[2] & 0x80 != 0 {
        Err(Dropped::Response)
    } else {
        Ok(())
    }
}

/// Answers `packet` from `src` into `out`: `false` when there is nothing to send (dropped
/// by [`screen`], counted; or a response that could not be encoded). Over UDP the answer
/// is truncated to the payload size the response's EDNS allows (512 without EDNS).
pub async fn answer(
    handler: &Handler,
    packet: &[u8],
    src: SocketAddr,
    protocol: Protocol,
    out: &mut Vec<u8>,
) -> bool {
    let tcp = protocol == Protocol::Tcp;
    if let Err(why) = screen(packet) {
        handler.metrics.dropped(why, tcp);
        return false;
    }
    match Request::from_bytes(packet.to_vec(), src, protocol) {
        Ok(request) => {
            let capture = Capture {
                bytes: Arc::default(),
                tcp,
            };
            handler
                .handle_request::<Capture, TokioTime>(&request, capture.clone())
                .await;
            *out =
                std::mem::take(&mut *capture.bytes.lock().unwrap_or_else(PoisonError::into_inner));
            !out.is_empty()
        }
        // A query's header we can read but a message we cannot: FORMERR, as RFC 1035 asks.
        Err(_) => {
            out.clear();
            out.extend_from_slice(&packet[..2]);
            out.push(0x80 | (packet[2] & 0x79)); // QR, the opcode and RD as sent
            out.push(ResponseCode::FormErr.low());
            out.extend_from_slice(&[0; 8]);
            handler
                .metrics
                .query(RecordType::NULL, ResponseCode::FormErr, "-", tcp);
            true
        }
    }
}

/// A response handler that keeps the encoded response for the transport to send: over
/// UDP truncated (TC) to the payload size the response's EDNS allows, 512 without EDNS;
/// over TCP up to the 64 KiB a length prefix allows.
#[derive(Clone)]
struct Capture {
    bytes: Arc<Mutex<Vec<u8>>>,
    tcp: bool,
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let max = match (self.tcp, response.edns()) {
            (true, _) => u16::MAX,
            (false, Some(edns)) => edns.max_payload().max(512),
            (false, None) => 512,
        };
        debug_assert_eq!(response.metadata().message_type, MessageType::Response);
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(max);
        let info = response
            .destructive_emit(&mut encoder)
            .map_err(|e| NetError::from(format!("cannot encode the response: {e}")))?;
        *self.bytes.lock().unwrap_or_else(PoisonError::into_inner) = bytes;
        Ok(info)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use arc_swap::ArcSwap;
    use hickory_proto::op::{Message, OpCode, Query};
    use hickory_proto::rr::Name;

    use crate::state::State;

    /// A handler for one region and the customer name `publisher.cdn.test`.
    pub(crate) fn handler() -> Handler {
        handler_of(
            r#"
            [zone]
            name = "cdn.test"
            nameservers = [{ name = "ns1.cdn.test", addresses = ["192.0.2.53"] }]
            [geo]
            default_region = "eu"
            [[region]]
            name = "eu"
            lat = 50.0
            lon = 8.0
            edge = [{ address = "192.0.2.10", probe = "http://127.0.0.1:1/healthz" }]
            [[customer]]
            name = "publisher"
        "#,
        )
    }

    /// A handler over the GeoDNS config `text`.
    pub(crate) fn handler_of(text: &str) -> Handler {
        let config = crate::config::GeoDnsConfig::from_toml(text).expect("valid");
        let state = State::new(config, &Default::default()).expect("state");
        Handler {
            state: Arc::new(ArcSwap::from_pointee(state)),
            metrics: Arc::default(),
        }
    }

    /// What the handler sends for `message`, called directly (not through [`answer`]).
    async fn handled(handler: &Handler, message: &Message) -> Vec<u8> {
        let src = "127.0.0.1:5300".parse().unwrap();
        let request =
            Request::from_bytes(message.to_vec().unwrap(), src, Protocol::Udp).expect("decodes");
        let capture = Capture {
            bytes: Arc::default(),
            tcp: false,
        };
        handler
            .handle_request::<Capture, TokioTime>(&request, capture.clone())
            .await;
        std::mem::take(&mut *capture.bytes.lock().unwrap())
    }

    #[tokio::test]
    async fn the_handler_itself_never_answers_a_response() {
        let handler = handler();
        let mut message = Message::new(7, MessageType::Query, OpCode::Query);
        message.add_query(Query::query(
            Name::from_ascii("publisher.cdn.test.").unwrap(),
            RecordType::A,
        ));
        assert!(!handled(&handler, &message).await.is_empty(), "a query");
        message.metadata.message_type = MessageType::Response;
        assert!(handled(&handler, &message).await.is_empty(), "a response");
        assert!(
            handler
                .metrics
                .render()
                .contains(r#"geodns_messages_dropped_total{reason="response",transport="udp"} 1"#),
            "{}",
            handler.metrics.render()
        );
    }

    #[test]
    fn only_queries_pass_the_screen() {
        let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        assert_eq!(screen(&query), Ok(()));
        query[2] |= 0x80;
        assert_eq!(screen(&query), Err(Dropped::Response));
        // A response is dropped whatever follows its header, even if it does not decode.
        query.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert_eq!(screen(&query), Err(Dropped::Response));
        for short in [&[][..], &[0x12], &[0x12, 0x34, 0x01], &[0; 11]] {
            assert_eq!(screen(short), Err(Dropped::Short), "{short:?}");
        }
    }
}
