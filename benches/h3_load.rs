//! An HTTP/3 load generator for `benches/load/https.sh`: h2load on Debian has no QUIC, so
//! this is the h3 counterpart of `h2load -c CONNS -m STREAMS` for one URL.
//!
//! `cargo bench --bench h3_load -- URL [CONNS] [STREAMS] [SECONDS]` (defaults 16, 10, 10):
//! CONNS QUIC connections, each with STREAMS requests in flight (a new request stream as
//! each answer completes), for SECONDS; prints one line: `requests N req/s R errors E`.
//! Runs on one thread (pin it with `taskset`), like h2load and wrk in the scripts.
//!
//! The server's certificate is not verified (the bench's is self-signed): only its
//! handshake signature is, as any TLS 1.3 client checks it. Loopback use only.

use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some(url) = args.first() else {
        eprintln!("usage: h3_load URL [CONNS] [STREAMS] [SECONDS]");
        std::process::exit(2);
    };
    let number = |i: usize, default: u64| args.get(i).map_or(default, |a| a.parse().unwrap());
    let (conns, streams, seconds) = (number(1, 16), number(2, 10), number(3, 10));
    let uri: http::Uri = url.parse().expect("a URL");
    let host = uri.host().expect("a host").to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .expect("resolves")
        .find(|a| a.is_ipv4())
        .expect("an IPv4 address");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let endpoint = client();
        let done = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..conns {
            let connection = endpoint
                .connect(addr, &host)
                .expect("connect")
                .await
                .expect("handshake");
            let (mut driver, sender) =
                h3::client::new(h3_quinn::Connection::new(connection.clone()))
                    .await
                    .expect("h3");
            tokio::spawn(async move {
                let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
            });
            for _ in 0..streams {
                let (mut sender, uri) = (sender.clone(), uri.clone());
                let (done, errors) = (done.clone(), errors.clone());
                tasks.spawn(async move {
                    while Instant::now() < deadline {
                        match request(&mut sender, &uri).await {
                            Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                            Err(error) => {
                                if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                    eprintln!("h3_load: {error}");
                                }
                                return;
                            }
                        };
                    }
                });
            }
        }
        while tasks.join_next().await.is_some() {}
        let elapsed = started.elapsed().as_secs_f64();
        let requests = done.load(Ordering::Relaxed);
        println!(
            "requests {requests} req/s {:.0} errors {}",
            requests as f64 / elapsed,
            errors.load(Ordering::Relaxed)
        );
    });
}

async fn request(
    sender: &mut h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    uri: &http::Uri,
) -> Result<(), String> {
    let request = http::Request::get(uri.clone()).body(()).unwrap();
    let mut stream = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    stream.finish().await.map_err(|e| e.to_string())?;
    let response = stream.recv_response().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    while let Some(mut chunk) = stream.recv_data().await.map_err(|e| e.to_string())? {
        chunk.advance(chunk.remaining());
    }
    Ok(())
}

fn client() -> quinn::Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

/// Accepts any certificate; checks the handshake signature with it.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
