//! A DNS client for tests: real packets (hickory-proto messages) over real UDP and TCP
//! sockets on loopback, every exchange bounded by a timeout.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const WAIT: Duration = Duration::from_secs(5);

/// A query for `name` `qtype`, with EDNS advertising `payload` bytes when given, carrying
/// Client Subnet `ecs` (address, source prefix) when given.
pub fn query(
    name: &str,
    qtype: RecordType,
    payload: Option<u16>,
    ecs: Option<(IpAddr, u8)>,
) -> Message {
    let mut message = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    let name = Name::from_ascii(name).expect("test name");
    message.add_query(hickory_proto::op::Query::query(name, qtype));
    if payload.is_some() || ecs.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(payload.unwrap_or(1232));
        if let Some((addr, prefix)) = ecs {
            edns.options_mut()
                .insert(EdnsOption::Subnet(ClientSubnet::new(addr, prefix, 0)));
        }
        message.set_edns(edns);
    }
    message
}

fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(4242);
    NEXT.fetch_add(7, Ordering::Relaxed)
}

/// How long a test listens for an answer that must not come. Silence can only be shown by
/// waiting, so the wait is bounded here; the tests that use it also send a normal query
/// that must be answered (matched on its id), which shows the server was up to answer.
pub const SILENCE: Duration = Duration::from_millis(300);

/// Sends each of `first` over one UDP socket, then `query`. Returns `query`'s answer (the
/// datagram with its id) and every other datagram that came before it or within
/// [`SILENCE`] after it.
pub async fn udp_after(
    server: SocketAddr,
    first: &[Vec<u8>],
    query: &Message,
) -> (Message, Vec<Vec<u8>>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    for bytes in first {
        socket.send_to(bytes, server).await.expect("send");
    }
    socket
        .send_to(&query.to_vec().expect("encode"), server)
        .await
        .expect("send");
    let mut strays = Vec::new();
    let mut buf = vec![0u8; 65_535];
    let answer = tokio::time::timeout(WAIT, async {
        loop {
            let (n, _) = socket.recv_from(&mut buf).await.expect("receive");
            match Message::from_vec(&buf[..n]) {
                Ok(m) if m.metadata.id == query.metadata.id => return m,
                _ => strays.push(buf[..n].to_vec()),
            }
        }
    })
    .await
    .expect("the query after them is answered in time");
    while let Ok(Ok((n, _))) = tokio::time::timeout(SILENCE, socket.recv_from(&mut buf)).await {
        strays.push(buf[..n].to_vec());
    }
    (answer, strays)
}

/// Writes `first` and then `query` on one TCP connection (each framed). Returns `query`'s
/// answer, `None` if the server closed the connection first, and every other message that
/// came back before that. TCP keeps order and the server answers a connection's messages
/// one after the other, so nothing for `first` can come after `query`'s answer.
pub async fn tcp_after(
    server: SocketAddr,
    first: &[u8],
    query: &Message,
) -> (Option<Message>, Vec<Vec<u8>>) {
    let bytes = query.to_vec().expect("encode");
    let mut stream = TcpStream::connect(server).await.expect("connect");
    let mut out = Vec::new();
    for message in [first, bytes.as_slice()] {
        out.extend_from_slice(&(message.len() as u16).to_be_bytes());
        out.extend_from_slice(message);
    }
    // The server may close after `first` and before reading the rest: that is an answer too.
    let _ = stream.write_all(&out).await;
    let mut strays = Vec::new();
    let exchange = async {
        loop {
            let mut len = [0u8; 2];
            if stream.read_exact(&mut len).await.is_err() {
                return None; // closed (or reset)
            }
            let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
            if stream.read_exact(&mut reply).await.is_err() {
                return None;
            }
            match Message::from_vec(&reply) {
                Ok(m) if m.metadata.id == query.metadata.id => return Some(m),
                _ => strays.push(reply),
            }
        }
    };
    let answer = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("an answer or a close in time");
    (answer, strays)
}

/// Sends `bytes` over UDP and returns the reply's bytes (`None` if none came in time).
pub async fn udp_raw(server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket.send_to(bytes, server).await.expect("send");
    let mut buf = vec![0u8; 65_535];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf.truncate(n);
    Some(buf)
}

/// One query over UDP; the reply must come and parse.
pub async fn udp(server: SocketAddr, message: &Message) -> Message {
    let bytes = message.to_vec().expect("encode");
    let reply = tokio::time::timeout(WAIT, udp_raw(server, &bytes))
        .await
        .expect("reply in time")
        .expect("a UDP reply");
    let reply = Message::from_vec(&reply).expect("the reply parses");
    assert_eq!(reply.metadata.id, message.metadata.id, "reply id matches");
    reply
}

/// One query over TCP (two-byte length framing, RFC 1035 4.2.2).
pub async fn tcp(server: SocketAddr, message: &Message) -> Message {
    let reply = tcp_raw(server, &message.to_vec().expect("encode")).await;
    Message::from_vec(&reply).expect("the reply parses")
}

/// Sends `bytes` as one message over TCP and returns the reply's bytes, which must come.
pub async fn tcp_raw(server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let exchange = async {
        let mut stream = TcpStream::connect(server).await.expect("connect");
        stream
            .write_all(&(bytes.len() as u16).to_be_bytes())
            .await
            .expect("write");
        stream.write_all(bytes).await.expect("write");
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.expect("length");
        let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut reply).await.expect("reply");
        reply
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .expect("TCP reply in time")
}

/// The target of the answer's CNAME, lower-case, without the trailing dot.
pub fn cname(reply: &Message) -> Option<String> {
    reply.answers.iter().find_map(|r| match &r.data {
        RData::CNAME(c) => Some(c.0.to_ascii().trim_end_matches('.').to_ascii_lowercase()),
        _ => None,
    })
}

/// Every address in the answer section.
pub fn addresses(reply: &Message) -> Vec<IpAddr> {
    reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

/// The Client Subnet option of the reply: (address, source prefix, scope prefix).
pub fn ecs(reply: &Message) -> Option<(IpAddr, u8, u8)> {
    match reply.edns.as_ref()?.option(EdnsCode::Subnet)? {
        EdnsOption::Subnet(s) => Some((s.addr(), s.source_prefix(), s.scope_prefix())),
        _ => None,
    }
}
