//! TLS for tests: a certificate authority made at test time with `rcgen`, leaf
//! certificates for host names written as PEM files, and a real rustls client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A throwaway CA that signs leaf certificates for test hosts.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A leaf certificate: its DER (to compare with what a server presented) and its PEM
/// files.
pub struct Leaf {
    pub der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Leaf {
    /// Writes the PEM files as `dir/name.crt` and `dir/name.key`, each replaced whole
    /// (written aside and renamed, as a certificate manager does).
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        for (path, text) in [(&key, &self.key_pem), (&cert, &self.cert_pem)] {
            let aside = path.with_extension("new");
            std::fs::write(&aside, text).expect("write PEM");
            std::fs::rename(&aside, path).expect("rename PEM");
        }
        (cert, key)
    }
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "cdn test CA");
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Self { cert, key }
    }

    /// A fresh certificate (new key, new serial) for `hosts`.
    pub fn issue(&self, hosts: &[&str]) -> Leaf {
        let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, hosts[0].to_owned());
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf certificate");
        Leaf {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A client trusting only this CA, offering `alpn`.
    pub fn client(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).expect("CA is a root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

/// Connects and handshakes with `sni`; the error says why the handshake failed.
pub async fn connect(
    connector: &TlsConnector,
    addr: SocketAddr,
    sni: &str,
) -> Result<TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(|e| e.to_string())
}

/// The leaf certificate the server presented.
pub fn presented(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().expect("a certificate")[0].clone()
}

/// The protocol ALPN settled on.
pub fn alpn(tls: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// One GET over an established TLS connection, in HTTP/2 when ALPN chose it, else
/// HTTP/1.1; returns the status, the version and the body.
pub async fn get(
    tls: TlsStream<TcpStream>,
    host: &str,
    path: &str,
) -> (StatusCode, Version, Bytes) {
    let (status, version, _, body) = fetch(tls, host, path).await;
    (status, version, body)
}

/// As [`get`], with the response's fields.
pub async fn fetch(
    tls: TlsStream<TcpStream>,
    host: &str,
    path: &str,
) -> (StatusCode, Version, http::HeaderMap, Bytes) {
    let h2 = alpn(&tls).as_deref() == Some(b"h2".as_slice());
    let io = TokioIo::new(tls);
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        let request = Request::get(format!("https://{host}{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(request).await.expect("h2 response")
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        let request = Request::get(path)
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(request).await.expect("h1 response")
    };
    let status = response.status();
    let version = response.version();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("body within 10 s")
        .expect("whole body")
        .to_bytes();
    (status, version, headers, body)
}

/// Sends one HTTP/1.1 request over an established TLS connection.
pub async fn send_h1(
    tls: TlsStream<TcpStream>,
    request: Request<http_body_util::Full<Bytes>>,
) -> (StatusCode, Bytes) {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("response within 10 s")
        .expect("response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, body)
}

/// HTTP/3 for tests: a real QUIC client (`quinn`) trusting only a [`TestCa`], and
/// requests over it with the `h3` client.
pub mod h3 {
    use super::*;
    use bytes::Buf;
    use http::HeaderMap;

    impl TestCa {
        /// A QUIC client endpoint on 127.0.0.1 trusting only this CA, offering ALPN `h3`.
        pub fn h3_client(&self) -> quinn::Endpoint {
            self.quic_client(false)
        }

        /// As [`Self::h3_client`], and its connections keep their session tickets and send
        /// early data (0-RTT) when a ticket allows it: `client.connect(..)?.into_0rtt()`
        /// succeeds on a connection that resumes such a ticket.
        pub fn h3_client_with_early_data(&self) -> quinn::Endpoint {
            self.quic_client(true)
        }

        fn quic_client(&self, early_data: bool) -> quinn::Endpoint {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.cert.der().clone()).expect("CA is a root");
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("TLS 1.3")
                .with_root_certificates(roots)
                .with_no_client_auth();
            tls.alpn_protocols = vec![b"h3".to_vec()];
            tls.enable_early_data = early_data;
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
            let mut endpoint =
                quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("client endpoint");
            endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
            endpoint
        }
    }

    /// Connects and handshakes with `sni`; the error says why it failed.
    pub async fn connect(
        client: &quinn::Endpoint,
        addr: SocketAddr,
        sni: &str,
    ) -> Result<quinn::Connection, String> {
        let connecting = client.connect(addr, sni).map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .map_err(|_| "handshake timed out".to_owned())?
            .map_err(|e| e.to_string())
    }

    /// The certificate the server presented on a QUIC connection.
    pub fn presented(connection: &quinn::Connection) -> CertificateDer<'static> {
        let identity = connection.peer_identity().expect("a certificate");
        let chain = identity
            .downcast::<Vec<CertificateDer<'static>>>()
            .expect("rustls certificates");
        chain[0].clone()
    }

    /// One answer over HTTP/3.
    #[derive(Debug)]
    pub struct H3Reply {
        pub status: StatusCode,
        pub headers: HeaderMap,
        pub body: Bytes,
    }

    impl H3Reply {
        pub fn header(&self, name: &str) -> &str {
            self.headers
                .get(name)
                .map_or("", |v| v.to_str().unwrap_or(""))
        }
    }

    /// An HTTP/3 session on one QUIC connection (its control streams opened once).
    pub struct H3Session {
        sender: ::h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
        driving: tokio::task::JoinHandle<()>,
    }

    impl Drop for H3Session {
        fn drop(&mut self) {
            self.driving.abort();
        }
    }

    /// Sets up HTTP/3 on `connection`.
    pub async fn session(connection: &quinn::Connection) -> H3Session {
        let (mut driver, sender) = ::h3::client::new(h3_quinn::Connection::new(connection.clone()))
            .await
            .expect("h3 client");
        let driving = tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        H3Session { sender, driving }
    }

    /// Sets up HTTP/3 on `connection` as a client that never reads the server's control
    /// stream, and so never learns its SETTINGS: it sends header sections of any size,
    /// as a client that ignores `SETTINGS_MAX_FIELD_SECTION_SIZE` would.
    pub async fn session_ignoring_settings(connection: &quinn::Connection) -> H3Session {
        let (driver, sender) = ::h3::client::new(h3_quinn::Connection::new(connection.clone()))
            .await
            .expect("h3 client");
        // Kept (not polled) as long as the session: dropping it would close the connection.
        let driving = tokio::spawn(async move {
            let _driver = driver;
            std::future::pending::<()>().await;
        });
        H3Session { sender, driving }
    }

    impl H3Session {
        /// Sends GET `path` for `host` (as `:authority`) with `headers` on a new request
        /// stream, and reads the whole answer (bounded to 10 s).
        pub async fn get(&mut self, host: &str, path: &str, headers: &[(&str, &str)]) -> H3Reply {
            self.send(http::Method::GET, host, path, headers, Bytes::new())
                .await
        }

        /// Sends `method` `path` for `host` with `headers` and `body` (none when empty) on
        /// a new request stream, and reads the whole answer (bounded to 10 s).
        pub async fn send(
            &mut self,
            method: http::Method,
            host: &str,
            path: &str,
            headers: &[(&str, &str)],
            body: Bytes,
        ) -> H3Reply {
            self.request(method, host, path, headers, body)
                .await
                .response()
                .await
        }

        /// Sends the request as [`Self::send`] does, without waiting for anything from the
        /// server (on a connection made with `into_0rtt`, before the handshake's end, it
        /// goes out as early data); [`H3Request::response`] reads the answer.
        pub async fn request(
            &mut self,
            method: http::Method,
            host: &str,
            path: &str,
            headers: &[(&str, &str)],
            body: Bytes,
        ) -> H3Request {
            let mut request = Request::builder()
                .method(method)
                .uri(format!("https://{host}{path}"));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            if !body.is_empty() {
                request = request.header("content-length", body.len());
            }
            let mut stream = self
                .sender
                .send_request(request.body(()).unwrap())
                .await
                .expect("request sent");
            if !body.is_empty() {
                stream.send_data(body).await.expect("request body sent");
            }
            stream.finish().await.expect("request finished");
            H3Request { stream }
        }
    }

    /// A request sent, its answer not yet read.
    pub struct H3Request {
        stream: ::h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    }

    impl H3Request {
        /// Reads the whole answer (bounded to 10 s).
        pub async fn response(mut self) -> H3Reply {
            tokio::time::timeout(Duration::from_secs(10), async {
                let stream = &mut self.stream;
                let response = stream.recv_response().await.expect("response");
                let mut body = Vec::new();
                while let Some(mut chunk) = stream.recv_data().await.expect("body") {
                    body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
                }
                H3Reply {
                    status: response.status(),
                    headers: response.headers().clone(),
                    body: body.into(),
                }
            })
            .await
            .expect("answered within 10 s")
        }
    }
}

/// A UDP relay between one QUIC client and a server that can hold back the client's
/// handshake completion: with it a test decides when the server's handshake completes,
/// so what the server does with early data before that is seen without a race. (What the
/// client sends once it has the server's handshake goes in 1-RTT packets, held too: send
/// early requests before awaiting anything from the server.)
pub struct QuicRelay {
    addr: SocketAddr,
    release: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for QuicRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl QuicRelay {
    /// Relays to `server`, holding every client datagram that carries a Handshake or a
    /// 1-RTT packet (the client's Finished and all after it) until [`Self::release`]:
    /// only the client's Initial and 0-RTT packets reach the server until then.
    pub async fn hold_handshake(server: SocketAddr) -> Self {
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(server).await.unwrap();
        let addr = front.local_addr().unwrap();
        let release = Arc::new(tokio::sync::Notify::new());
        let released = release.clone();
        let task = tokio::spawn(async move {
            let (mut client, mut held, mut holding) = (None, Vec::new(), true);
            let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
            loop {
                tokio::select! {
                    received = front.recv_from(&mut up) => {
                        let Ok((n, from)) = received else { return };
                        client = Some(from);
                        if holding && completes_handshake(&up[..n]) {
                            held.push(up[..n].to_vec());
                        } else {
                            let _ = back.send(&up[..n]).await;
                        }
                    }
                    received = back.recv(&mut down) => {
                        let Ok(n) = received else { return };
                        if let Some(client) = client {
                            let _ = front.send_to(&down[..n], client).await;
                        }
                    }
                    _ = released.notified(), if holding => {
                        holding = false;
                        for datagram in held.drain(..) {
                            let _ = back.send(&datagram).await;
                        }
                    }
                }
            }
        });
        Self {
            addr,
            release,
            task,
        }
    }

    /// Where the client connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends what was held, and everything from now on.
    pub fn release(&self) {
        self.release.notify_one();
    }
}

/// Whether a client datagram (QUIC v1, packets coalesced) carries a Handshake packet or a
/// 1-RTT (short header) one.
fn completes_handshake(mut datagram: &[u8]) -> bool {
    fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
        let first = *bytes.first()?;
        let len = 1usize << (first >> 6);
        let mut value = u64::from(first & 0x3f);
        for byte in bytes.get(1..len)? {
            value = value << 8 | u64::from(*byte);
        }
        Some((value, len))
    }
    while let Some(&first) = datagram.first() {
        if first & 0x80 == 0 {
            return true; // short header: 1-RTT
        }
        let kind = (first >> 4) & 0x3;
        if kind == 2 {
            return true; // Handshake
        }
        // Long header: version, connection ids, (Initial) token, length, packet.
        let parsed = (|| {
            let mut at = 5;
            let dcid = usize::from(*datagram.get(at)?);
            at += 1 + dcid;
            let scid = usize::from(*datagram.get(at)?);
            at += 1 + scid;
            if kind == 0 {
                let (token, n) = varint(datagram.get(at..)?)?;
                at += n + token as usize;
            }
            let (length, n) = varint(datagram.get(at..)?)?;
            Some(at + n + length as usize)
        })();
        match parsed {
            Some(end) if end <= datagram.len() => datagram = &datagram[end..],
            _ => return false,
        }
    }
    false
}
