//! Serving DNS over TCP (RFC 1035 4.2.2, RFC 7766): a connection's messages, each after
//! a two-byte length, are answered one after the other through the same general path as
//! UDP ([`crate::general`]), so both transports screen, decode and answer alike.
//!
//! A connection is closed when it stays idle for `node.tcp_timeout` (waiting for the next
//! message, or for the client to take an answer), and when it sends a message the
//! general path drops (a response, QR=1): nothing is sent for it, and a peer that sends
//! responses is no client.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_server::net::xfer::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::handler::Handler;

/// How long accepting pauses after an error (e.g. out of file descriptors), so that the
/// loop does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Accepts and serves connections on `listener` until `stop` turns true (or its sender
/// goes); the open connections end with it.
pub async fn serve(
    listener: TcpListener,
    handler: Handler,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = &mut stopped => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                connections.spawn(connection(stream, peer, handler.clone(), idle));
            }
            Err(error) => {
                tracing::debug!(%error, "TCP accept failed");
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
        }
    }
}

/// Answers one connection's messages in order until it closes, idles, breaks or sends a
/// message that gets no answer.
async fn connection(mut stream: TcpStream, peer: SocketAddr, handler: Handler, idle: Duration) {
    let (mut message, mut answer, mut framed) = (Vec::new(), Vec::new(), Vec::new());
    loop {
        let read = async {
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await?;
            message.resize(usize::from(u16::from_be_bytes(len)), 0);
            stream.read_exact(&mut message).await
        };
        if !matches!(tokio::time::timeout(idle, read).await, Ok(Ok(_))) {
            return; // closed, broken or idle
        }
        if !crate::general::answer(&handler, &message, peer, Protocol::Tcp, &mut answer).await {
            return;
        }
        let Ok(len) = u16::try_from(answer.len()) else {
            return; // cannot happen: the answer is encoded to at most 64 KiB
        };
        // One write for the length and the message, so they leave in one segment.
        framed.clear();
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&answer);
        if !matches!(
            tokio::time::timeout(idle, stream.write_all(&framed)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};

    fn framed(id: u16) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("publisher.cdn.test.").unwrap(),
            RecordType::A,
        ));
        let bytes = m.to_vec().unwrap();
        let mut out = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(&bytes);
        out
    }

    #[tokio::test]
    async fn pipelined_queries_are_answered_in_order_and_an_idle_connection_is_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, stop) = watch::channel(false);
        let idle = Duration::from_millis(200);
        tokio::spawn(serve(
            listener,
            crate::general::tests::handler(),
            idle,
            stop,
        ));
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(&[framed(1), framed(2)].concat())
            .await
            .unwrap();
        for id in [1, 2] {
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await.unwrap();
            let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut reply).await.unwrap();
            let reply = Message::from_vec(&reply).unwrap();
            assert_eq!(reply.metadata.id, id);
            assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        }
        // Then silence from the client: the server closes (a signal, read as end of
        // stream); the bound only keeps a broken build from hanging.
        let waited = std::time::Instant::now();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut [0u8; 1]))
            .await
            .expect("closed when idle");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(waited.elapsed() >= idle / 2, "closed before it was idle");
    }
}
