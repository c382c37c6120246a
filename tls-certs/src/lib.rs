//! Certificates for HTTPS listeners: one per site, chosen by the name the client asks for
//! (SNI), re-read from disk when their files change, never shown to a client asking for
//! another name. The edge's HTTPS listener (and later HTTP/3) and the purge API's serve
//! with it; neither needs the other to do so.

mod certificates;

pub use certificates::{ALPN, CertFiles, Certificates, Source, TlsError, normalize_host};
