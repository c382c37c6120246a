//! Sending a body from a file to a client socket without copying it through user memory
//! (`sendfile`): what a plain-TCP connection does with a body kept in a sealed memory
//! file ([`crate::cache::sealed_body`]).
//!
//! A stream says whether it can ([`SendFile`]): plain TCP can; TLS cannot, since every
//! byte must be encrypted on its way out. The connection loop asks and falls back to
//! writing the mapped bytes.

use std::future::poll_fn;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::task::{Context, Poll};

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::front::limits::WriteTimeout;

/// A client stream that may be able to send a file's bytes without copying them.
pub trait SendFile {
    /// Whether [`SendFile::poll_send_file`] works on this stream.
    fn sends_files(&self) -> bool {
        false
    }

    /// Sends up to `len` bytes of `file` from `offset` on, with the same timeout as a
    /// write; `Ready(Ok(n))` once some were sent. Only called when
    /// [`SendFile::sends_files`] says so; the default refuses.
    fn poll_send_file(
        &mut self,
        cx: &mut Context<'_>,
        file: BorrowedFd<'_>,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let _ = (cx, file, offset, len);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this stream cannot send from a file",
        )))
    }
}

impl SendFile for WriteTimeout<TcpStream> {
    fn sends_files(&self) -> bool {
        true
    }

    fn poll_send_file(
        &mut self,
        cx: &mut Context<'_>,
        file: BorrowedFd<'_>,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let polled = poll_sendfile(self.get_ref(), cx, file, offset, len);
        self.check_progress(cx, polled)
    }
}

impl<S> SendFile for tokio_rustls::server::TlsStream<S> {}

/// One `sendfile` once the socket is writable; a would-block clears the readiness and
/// waits again.
fn poll_sendfile(
    socket: &TcpStream,
    cx: &mut Context<'_>,
    file: BorrowedFd<'_>,
    offset: u64,
    len: usize,
) -> Poll<io::Result<usize>> {
    loop {
        std::task::ready!(socket.poll_write_ready(cx))?;
        let mut at = offset;
        match socket.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(socket.as_fd(), file, Some(&mut at), len).map_err(io::Error::from)
        }) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            result => return Poll::Ready(result),
        }
    }
}

/// Sends `file`'s bytes from `start` to `end` whole, at most `turn` bytes per call,
/// letting other connections run between calls (as the copying path does).
pub async fn send_file_all<S: SendFile>(
    stream: &mut S,
    file: BorrowedFd<'_>,
    start: u64,
    end: u64,
    turn: usize,
) -> io::Result<()> {
    let mut at = start;
    while at < end {
        let len = usize::try_from(end - at).unwrap_or(usize::MAX).min(turn);
        let sent = poll_fn(|cx| stream.poll_send_file(cx, file, at, len)).await?;
        if sent == 0 {
            // The file is sealed at its length, so this is a bug, not a race: say so
            // rather than loop.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the body's file ended before its length",
            ));
        }
        at += sent as u64;
        if at < end {
            tokio::task::yield_now().await;
        }
    }
    Ok(())
}
