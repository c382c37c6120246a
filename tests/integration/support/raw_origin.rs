//! A raw origin: HTTP/1.1 bytes written in steps, for answers no server library
//! gives on demand (1xx heads, floods of them), with pauses that wait for the test's
//! go-ahead instead of for time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

use super::loopback;

/// One step of the answer to every request.
#[derive(Debug, Clone)]
pub enum Step {
    /// Write these bytes.
    Write(String),
    /// Wait for the test's `notify_one` (a permit given before the wait counts).
    Wait(Arc<Notify>),
    /// Read this many bytes of request body (after the head), and report them as if they
    /// were a request of their own.
    ReadBody(usize),
}

/// An origin on port 0 of 127.0.0.1: on every connection it reads one request head, plays
/// the script, then closes.
#[derive(Debug)]
pub struct RawOrigin {
    addr: SocketAddr,
    heads: mpsc::UnboundedReceiver<String>,
}

impl RawOrigin {
    pub async fn start(script: Vec<Step>) -> Self {
        let listener = TcpListener::bind(loopback()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, heads) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (seen, script) = (seen.clone(), script.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
                    let mut body = head.split_off(end);
                    let _ = seen.send(String::from_utf8_lossy(&head).into_owned());
                    for step in script {
                        match step {
                            Step::Write(bytes) => {
                                if stream.write_all(bytes.as_bytes()).await.is_err() {
                                    return;
                                }
                            }
                            Step::Wait(go) => go.notified().await,
                            Step::ReadBody(len) => {
                                while body.len() < len {
                                    match stream.read(&mut buf).await {
                                        Ok(0) | Err(_) => return,
                                        Ok(n) => body.extend_from_slice(&buf[..n]),
                                    }
                                }
                                let _ = seen.send(String::from_utf8_lossy(&body).into_owned());
                            }
                        }
                    }
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self { addr, heads }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The request heads (and bodies read by [`Step::ReadBody`]) read so far.
    pub fn requests(&mut self) -> Vec<String> {
        let mut heads = Vec::new();
        while let Ok(head) = self.heads.try_recv() {
            heads.push(head);
        }
        heads
    }
}

/// Reads from `stream` into `got` until `done(got)` holds; panics after 10 s or on close
/// before that, with what was read.
pub async fn read_until<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    got: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> bool,
) {
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        while !done(got) {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    assert!(
        read == Ok(true),
        "the wait ended ({read:?}) with only {:?}",
        String::from_utf8_lossy(got)
    );
}

/// The heads (status line and fields, without the blank line) at the start of `bytes`
/// that are complete, and the bytes after the last of them.
pub fn heads(bytes: &[u8]) -> (Vec<String>, &[u8]) {
    let mut heads = Vec::new();
    let mut rest = bytes;
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let interim = head.starts_with("HTTP/1.1 1") || head.starts_with("HTTP/1.0 1");
        heads.push(head);
        rest = &rest[end + 4..];
        if !interim {
            break;
        }
    }
    (heads, rest)
}
