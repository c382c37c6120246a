//! The DNS request handler the general path ([`crate::general`]) calls for every query
//! it decodes, over UDP and TCP.
//!
//! It reads the question and EDNS (version, payload size, Client Subnet), asks the
//! [`Zone`](crate::zone::Zone) for the answer with the client's region decided by
//! [`Steering`](crate::steering), and sends it. The general path frames it: responses
//! (QR=1) dropped before they get here (and here, whoever calls it), FORMERR for packets
//! that do not decode, and truncation (TC) to the payload size this handler allows over
//! UDP.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::metrics::Metrics;
use crate::state::State;

/// Largest UDP payload this server sends (the DNS Flag Day 2020 value): larger answers
/// are truncated and the client retries over TCP.
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// The handler: the current state (swapped whole on reload) and the metrics.
#[derive(Debug, Clone)]
pub struct Handler {
    pub state: Arc<ArcSwap<State>>,
    pub metrics: Arc<Metrics>,
}

/// Where a query's client is, as far as the answer is concerned.
struct Client {
    ip: IpAddr,
    /// The request's Client Subnet option, when it had a usable one.
    subnet: Option<ClientSubnet>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let state = self.state.load();
        let tcp = request.protocol() == Protocol::Tcp;
        let metadata = Metadata::response_from_request(&request.metadata);
        let mut edns = request.edns.as_ref().map(|theirs| {
            let mut ours = Edns::new();
            ours.set_max_payload(theirs.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            ours
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);

        let fail = |code: ResponseCode| {
            let mut metadata = metadata;
            metadata.response_code = code;
            metadata
        };
        // The general path screens every message before it decodes it; the same screen
        // here keeps a response (QR=1) unanswered whoever calls this handler.
        if let Err(why) = crate::general::screen(request.as_slice()) {
            self.metrics.dropped(why, tcp);
            return unsent(request);
        }
        let early = if request.metadata.op_code != OpCode::Query {
            Some(ResponseCode::NotImp)
        } else if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            Some(ResponseCode::BADVERS)
        } else {
            None
        };
        let info = request.request_info();
        let (early, query) = match (early, info) {
            (Some(code), _) => (Some(code), None),
            (None, Err(_)) => (Some(ResponseCode::FormErr), None),
            (None, Ok(info)) => (None, Some(info.query.clone())),
        };
        let client = match (early, client_of(request, state.ecs)) {
            (None, Ok(client)) => Some(client),
            (None, Err(_)) => None,
            (Some(_), _) => None,
        };
        let (Some(query), Some(client)) = (query, client) else {
            let code = early.unwrap_or(ResponseCode::FormErr);
            if let Some(edns) = &edns {
                builder.edns(edns);
            }
            let qtype = request
                .queries
                .queries()
                .first()
                .map_or(hickory_proto::rr::RecordType::NULL, |q| q.query_type());
            self.metrics.query(qtype, code, "-", tcp);
            let response = builder.build_no_records(fail(code));
            return send(&mut response_handle, response, request).await;
        };

        let mut scope = 0u8;
        let answer = state.zone.answer(
            query.name(),
            query.query_type(),
            query.query_class(),
            &state.regions,
            || {
                let steered = state.steer(client.ip);
                scope = steered.scope;
                steered.region
            },
        );
        let metadata = answer.metadata(&request.metadata);
        if let (Some(edns), Some(subnet)) = (edns.as_mut(), &client.subnet) {
            // Echo the option; the scope says which clients the answer is good for
            // (RFC 7871 7.2.1): 0 when it does not depend on where the client is.
            let scope = if answer.region.is_some() && subnet.source_prefix() > 0 {
                scope
            } else {
                0
            };
            edns.options_mut()
                .insert(EdnsOption::Subnet(ClientSubnet::new(
                    subnet.addr(),
                    subnet.source_prefix(),
                    scope,
                )));
        }
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let region = answer
            .region
            .map_or("-", |r| state.regions.regions[r].name.as_str());
        self.metrics
            .query(query.query_type(), answer.rcode, region, tcp);
        let response = builder.build(
            metadata,
            answer.answers.iter(),
            answer.authority.iter(),
            std::iter::empty(),
            answer.additionals.iter(),
        );
        send(&mut response_handle, response, request).await
    }
}

async fn send<'a, R: ResponseHandler>(
    handle: &mut R,
    response: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
    >,
    request: &Request,
) -> ResponseInfo {
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            tracing::debug!(%error, src = %request.src(), "could not send a DNS response");
            unsent(request)
        }
    }
}

/// What the handler reports for a request it sent nothing for.
fn unsent(request: &Request) -> ResponseInfo {
    let mut header = hickory_proto::op::Header {
        metadata: Metadata::response_from_request(&request.metadata),
        counts: Default::default(),
    };
    header.metadata.response_code = ResponseCode::ServFail;
    header.into()
}

/// The client to locate: the Client Subnet's network when the request has a usable one
/// (and the server honours ECS), else the source address. `Err` for a malformed option
/// (RFC 7871 6 and 7.1.1: FORMERR), as [`crate::ecs::parse`] decides for both paths; the
/// option is read from the message as sent, since the decoded one hides what is wrong.
fn client_of(request: &Request, ecs: bool) -> Result<Client, crate::ecs::Invalid> {
    let src = request.src().ip();
    // Only a message with EDNS can carry the option (and the raw walk is skipped).
    let subnet = match request.edns {
        Some(_) => crate::ecs::find(request.as_slice())
            .map(crate::ecs::parse)
            .transpose()?,
        None => None,
    };
    let Some(subnet) = subnet else {
        return Ok(Client {
            ip: src,
            subnet: None,
        });
    };
    let subnet = ClientSubnet::new(subnet.ip(), subnet.source(), 0);
    if !ecs {
        return Ok(Client {
            ip: src,
            subnet: None,
        });
    }
    let ip = if subnet.source_prefix() == 0 {
        src
    } else {
        subnet.addr()
    };
    Ok(Client {
        ip,
        subnet: Some(subnet),
    })
}
