//! Zero-downtime upgrades: a new process takes the running one's listening sockets, so
//! no connection is ever refused while the binary is replaced (Pingora's and nginx's way).
//!
//! The running node offers its listeners on a Unix socket ([`UpgradeSocket`], at
//! `node.upgrade_socket`). A new process started with `--upgrade` connects and asks; the
//! old one answers with its public, admin and HTTPS listeners as `SCM_RIGHTS` file
//! descriptors ([`take_over`]). Both processes then hold the same listening sockets: the
//! kernel's accept queue is one, so a connection is accepted by whichever process accepts
//! it, and none is refused. When the new process says `release`, the old one stops
//! accepting, lets its in-flight requests finish (within the drain timeout; an idle
//! keep-alive connection gets a grace to send one more request, answered with
//! `Connection: close`), writes its memory tier out to the disk tier and exits.
//!
//! Without a disk tier the new process serves first and releases the old one after. With
//! one, the disk is one process's at a time (its lock), so the new process releases the
//! old one first and waits for it to exit: connections arriving meanwhile wait in the
//! listen queue, and the new process recovers the disk tier the old one wrote out.
//!
//! The wire: the new process writes `upgrade\n`; the old one sends one message, the
//! listeners' names (`public admin https`) with their descriptors; the new one writes
//! `release\n` when it wants the old one gone, and sees the old one's exit as the end of
//! the stream.

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::sync::Notify;

/// Listeners a node starts on instead of binding its own.
#[derive(Debug)]
pub struct Inherited {
    pub public: std::net::TcpListener,
    pub admin: std::net::TcpListener,
    pub https: Option<std::net::TcpListener>,
    /// The HTTP/3 socket (UDP). QUIC connections are not carried over: the old node's
    /// end with it, and their clients reconnect.
    pub http3: Option<std::net::UdpSocket>,
}

/// What went wrong with an upgrade; the running node keeps serving in every case.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(
        "no running node answers on the upgrade socket {path}: {source}; is it running, with \
         the same node.upgrade_socket? (without --upgrade the node starts on its own sockets)"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the handover on {path} failed: {reason}; the running node keeps serving")]
    Handover { path: PathBuf, reason: String },
    #[error(
        "cannot offer upgrades on {path}: {source}; check the directory exists and is writable"
    )]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Most listeners a node hands over.
const MAX_LISTENERS: usize = 3;

/// How long the new process waits for each step of the running one.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The new process's side of a handover: the connection on which it tells the running
/// node to go.
#[derive(Debug)]
pub struct Handover {
    stream: UnixStream,
    path: PathBuf,
}

/// Asks the node running on `path` for its listeners (blocking).
pub fn take_over(path: &Path) -> Result<(Inherited, Handover), UpgradeError> {
    let failed = |reason: String| UpgradeError::Handover {
        path: path.to_owned(),
        reason,
    };
    let mut stream = UnixStream::connect(path).map_err(|source| UpgradeError::Connect {
        path: path.to_owned(),
        source,
    })?;
    stream
        .set_read_timeout(Some(STEP_TIMEOUT))
        .map_err(|e| failed(e.to_string()))?;
    stream
        .write_all(b"upgrade\n")
        .map_err(|e| failed(format!("asking: {e}")))?;
    let mut names = [0u8; 64];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut names)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| failed(format!("receiving the listeners: {e}")))?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    let names = std::str::from_utf8(&names[..received.bytes])
        .map_err(|_| failed("the listeners' names are not text".into()))?;
    let names: Vec<&str> = names.split_whitespace().collect();
    if names.len() != fds.len() {
        return Err(failed(format!(
            "{} listeners named but {} received",
            names.len(),
            fds.len()
        )));
    }
    let (mut public, mut admin, mut https, mut http3) = (None, None, None, None);
    for (name, fd) in names.into_iter().zip(fds) {
        match name {
            "public" => public = Some(std::net::TcpListener::from(fd)),
            "admin" => admin = Some(std::net::TcpListener::from(fd)),
            "https" => https = Some(std::net::TcpListener::from(fd)),
            "http3" => http3 = Some(std::net::UdpSocket::from(fd)),
            other => return Err(failed(format!("unknown listener {other:?}"))),
        }
    }
    let (Some(public), Some(admin)) = (public, admin) else {
        return Err(failed("the public or admin listener is missing".into()));
    };
    let inherited = Inherited {
        public,
        admin,
        https,
        http3,
    };
    Ok((
        inherited,
        Handover {
            stream,
            path: path.to_owned(),
        },
    ))
}

impl Handover {
    /// Tells the running node to stop accepting, drain and exit.
    pub fn release(&mut self) -> Result<(), UpgradeError> {
        self.stream
            .write_all(b"release\n")
            .map_err(|e| UpgradeError::Handover {
                path: self.path.clone(),
                reason: format!("releasing the running node: {e}"),
            })
    }

    /// Waits (blocking, up to `limit`) until the released node has exited.
    pub fn wait_gone(&mut self, limit: Duration) -> Result<(), UpgradeError> {
        let failed = |reason: String| UpgradeError::Handover {
            path: self.path.clone(),
            reason,
        };
        self.stream
            .set_read_timeout(Some(limit))
            .map_err(|e| failed(e.to_string()))?;
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => Ok(()),
            Ok(_) => Err(failed("unexpected bytes from the running node".into())),
            Err(e) => Err(failed(format!(
                "the running node did not exit within {limit:?}: {e}"
            ))),
        }
    }
}

/// The running node's side: offers its listeners on a Unix socket, and says when a new
/// process asked it to go.
#[derive(Debug)]
pub struct UpgradeSocket {
    path: PathBuf,
    /// The socket file's identity (device, inode): removed on drop only while the path
    /// is still this socket's, not the one a new process bound there since.
    file: Option<(u64, u64)>,
    released: Arc<Notify>,
    stop: Arc<Notify>,
}

impl UpgradeSocket {
    /// Listens on `path` (replacing a file left there: the socket of a node that is gone,
    /// or of the one this process took over), offering `listeners` (name, socket).
    pub fn bind(
        path: &Path,
        listeners: Vec<(&'static str, OwnedFd)>,
    ) -> Result<Self, UpgradeError> {
        let bind_error = |source| UpgradeError::Bind {
            path: path.to_owned(),
            source,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_error(e)),
        }
        let listener = std::os::unix::net::UnixListener::bind(path).map_err(bind_error)?;
        // Whoever connects gets the node's listening sockets: its owner only, whatever the
        // umask.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(bind_error)?;
        }
        let (released, stop) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (on_release, on_stop) = (released.clone(), stop.clone());
        listener.set_nonblocking(true).map_err(bind_error)?;
        let listener = tokio::net::UnixListener::from_std(listener).map_err(bind_error)?;
        let listeners = Arc::new(listeners);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = on_stop.notified() => return,
                };
                let Ok((stream, _)) = accepted else { continue };
                let (listeners, on_release) = (listeners.clone(), on_release.clone());
                tokio::task::spawn_blocking(move || match hand_over(stream, &listeners) {
                    Ok(()) => on_release.notify_one(),
                    Err(error) => tracing::warn!(%error, "an upgrade handover failed; serving on"),
                });
            }
        });
        tracing::info!(path = %path.display(), "offering upgrades");
        Ok(Self {
            path: path.to_owned(),
            file: identity(path),
            released,
            stop,
        })
    }

    /// Resolves when a new process has taken the listeners and released this one.
    pub async fn released(&self) {
        self.released.notified().await;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UpgradeSocket {
    fn drop(&mut self) {
        self.stop.notify_one();
        if self.file.is_some() && identity(&self.path) == self.file {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Answers one new process (blocking): its listeners, then waits for `release`. The
/// stream is kept open for the life of the process, so the new process sees this one's
/// exit as its end.
fn hand_over(
    stream: tokio::net::UnixStream,
    listeners: &[(&'static str, OwnedFd)],
) -> Result<(), String> {
    let stream = stream.into_std().map_err(|e| e.to_string())?;
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(STEP_TIMEOUT * 6))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    if line != "upgrade\n" {
        return Err(format!("a handover begins with upgrade, not {line:?}"));
    }
    let names = listeners
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(" ");
    let fds: Vec<_> = listeners.iter().map(|(_, fd)| fd.as_fd()).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err("too many listeners for one message".into());
    }
    rustix::net::sendmsg(
        &stream,
        &[IoSlice::new(names.as_bytes())],
        &mut control,
        SendFlags::empty(),
    )
    .map_err(|e| format!("sending the listeners: {e}"))?;
    line.clear();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    if line != "release\n" {
        return Err(format!(
            "the new process did not release this one ({line:?})"
        ));
    }
    tracing::info!("a new process took the listeners: stopping accepting and draining");
    // Held until this process exits: the new one waits for the end of this stream.
    std::mem::forget(stream);
    Ok(())
}

/// Where a node offers upgrades when `node.upgrade_socket` does not say: beside the
/// system's temporary files, by node name.
pub fn default_socket(node: &str) -> PathBuf {
    std::env::temp_dir().join(format!("cdn-{node}.upgrade.sock"))
}
