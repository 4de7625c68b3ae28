//! mTLS for the gRPC server: rustls (ring provider), client certificates
//! required, CRLs honoured, and the partner identity taken from a SPIFFE
//! URI SAN at handshake time.
//!
//! A client is refused during the handshake when it sends no certificate,
//! a certificate from another CA, an expired or revoked one, or one
//! without exactly one `spiffe://<trust-domain>/partner/<name>` URI SAN.
//! Registration in the partner registry is checked later, per request,
//! so that an unregistered but well-formed identity is audited.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::crl::{ClientAuth, Registration};

/// TLS set-up errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM/DER file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// Which file.
        path: String,
        /// Why.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_err(path: &Path, e: impl fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Reads every certificate in a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate found"));
    }
    Ok(certs)
}

/// Reads a private key from a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    // The parse error names the PEM section, never key bytes.
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

/// Reads a CRL in PEM or DER form.
pub fn read_crl(path: &Path) -> Result<CertificateRevocationListDer<'static>, TlsError> {
    match CertificateRevocationListDer::from_pem_file(path) {
        Ok(c) => Ok(c),
        Err(_) => std::fs::read(path)
            .map(CertificateRevocationListDer::from)
            .map_err(|e| file_err(path, e)),
    }
}

/// The identity a partner certificate proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeId(Arc<str>);

impl SpiffeId {
    /// The full URI.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Extracts the partner SPIFFE id from a DER certificate: exactly one URI
/// SAN, of the form `spiffe://<trust_domain>/partner/<name>`.
pub fn partner_spiffe_id(cert_der: &[u8], trust_domain: &str) -> Option<SpiffeId> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|g| match g {
        x509_parser::extensions::GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let uri = uris.next()?;
    if uris.next().is_some() {
        return None;
    }
    let name = uri
        .strip_prefix("spiffe://")?
        .strip_prefix(trust_domain)?
        .strip_prefix("/partner/")?;
    crate::config::valid_partner_name(name).then(|| SpiffeId(Arc::from(uri)))
}

/// Wraps the WebPKI verifier in force (see [`crate::crl`]) and also
/// demands a partner SPIFFE id.
#[derive(Debug)]
struct SpiffeClientVerifier {
    auth: Arc<ClientAuth>,
    /// The client CA's names (fixed: only the CRLs are reloaded).
    hints: Vec<DistinguishedName>,
    trust_domain: String,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        true
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .auth
            .verifier()
            .verify_client_cert(end_entity, intermediates, now)?;
        if partner_spiffe_id(end_entity, &self.trust_domain).is_none() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ok)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.auth
            .verifier()
            .verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.auth
            .verifier()
            .verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.auth.verifier().supported_verify_schemes()
    }
}

/// The crypto provider of every TLS configuration here.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server's rustls configuration around `auth`, the client
/// verifier whose CRLs can be reloaded while the server runs.
pub fn server_config(
    auth: &Arc<ClientAuth>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    trust_domain: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(SpiffeClientVerifier {
        hints: auth.verifier().root_hint_subjects().to_vec(),
        auth: Arc::clone(auth),
        trust_domain: trust_domain.to_owned(),
    });
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    // No session resumption: a resumed session skips the client verifier,
    // so a client whose certificate was revoked (or expired) since could
    // reconnect on its old session. Every connection does a full handshake
    // (gRPC clients keep their connections, so this costs little).
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// What tonic learns about a connection: placed in every request's extensions.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Remote address.
    pub remote: SocketAddr,
    /// The partner identity proven by the client certificate.
    pub spiffe_id: SpiffeId,
}

/// An accepted, authenticated TLS connection. It is registered with the
/// [`ClientAuth`] that admitted it, which closes it if a reloaded CRL
/// revokes its certificate: every read and write then fails.
#[derive(Debug)]
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    info: PeerInfo,
    registration: Registration,
}

fn closed_by_revocation() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "client certificate no longer accepted",
    )
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.registration.closer.is_closed(cx) {
            return Poll::Ready(Err(closed_by_revocation()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.registration.closer.is_closed(cx) {
            return Poll::Ready(Err(closed_by_revocation()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.registration.closer.is_closed(cx) {
            return Poll::Ready(Err(closed_by_revocation()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Most TLS handshakes in progress at once; further connections are dropped.
pub const MAX_HANDSHAKES: usize = 1024;

/// Most TLS handshakes in progress at once from one host by default
/// (`[server] handshakes_per_source`; an IPv4
/// address, an IPv6 /64), and twice that from one network (an IPv4 /24,
/// an IPv6 /48; [`crate::sources`]). A handshake holds its place from the
/// TCP accept, before any certificate: without a share per source, one
/// host opening idle connections faster than they time out held every
/// place, and every partner's and phone's new connection was dropped.
pub const HANDSHAKES_PER_SOURCE: usize = 32;

/// Counts refused or dropped connections and logs them at most once a
/// second per kind, with the count since the last line: a flood of bad
/// or idle connections costs its sender nothing, and one line each would
/// let it fill the disk or the log pipeline.
#[derive(Debug)]
struct Coalesced {
    what: &'static str,
    /// When the last line was written, and the count since.
    since: std::sync::Mutex<(tokio::time::Instant, u64)>,
}

impl Coalesced {
    fn new(what: &'static str) -> Self {
        let long_ago = tokio::time::Instant::now()
            .checked_sub(Duration::from_secs(2))
            .unwrap_or_else(tokio::time::Instant::now);
        Self {
            what,
            since: std::sync::Mutex::new((long_ago, 0)),
        }
    }

    /// One more, from `remote`; logs the count since the last line (and
    /// this one's sender and reason) if that line is a second old.
    fn note(&self, remote: SocketAddr, detail: &dyn std::fmt::Display) {
        let mut g = self
            .since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.1 += 1;
        if g.0.elapsed() >= Duration::from_secs(1) {
            tracing::warn!(
                count = g.1,
                last_remote = %remote,
                last = %detail,
                "{}",
                self.what
            );
            *g = (tokio::time::Instant::now(), 0);
        }
    }
}

/// Accepts TCP connections and completes TLS handshakes concurrently (a
/// slow or hostile client cannot stall the accept loop), yielding only
/// authenticated connections. Refused handshakes are logged with the
/// remote address and rustls' reason, which holds no secrets.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    auth: Arc<ClientAuth>,
    trust_domain: String,
    handshake_timeout: Duration,
    handshakes_per_source: usize,
) -> ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let handshakes = Arc::new(crate::sources::SourcePlaces::new(
        handshakes_per_source,
        MAX_HANDSHAKES,
    ));
    let dropped = Arc::new(Coalesced::new(
        "connections dropped: too many TLS handshakes in progress (in all or from one source)",
    ));
    let refused = Arc::new(Coalesced::new("TLS handshakes refused or timed out"));
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => break,
            };
            // Bound handshakes in flight: a flood of idle TCP connections
            // must not grow tasks and memory without limit.
            let permit = match handshakes.try_take(remote.ip()) {
                Ok(p) => p,
                Err(full) => {
                    dropped.note(remote, &format_args!("{full:?}"));
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let td = trust_domain.clone();
            let auth = Arc::clone(&auth);
            let refused = Arc::clone(&refused);
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let chain: Vec<CertificateDer<'static>> = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                            .unwrap_or_default();
                        let id = chain.first().and_then(|c| partner_spiffe_id(c, &td));
                        // The verifier already demanded the id; this cannot
                        // be None, but a connection without one is dropped.
                        if let Some(spiffe_id) = id {
                            let Some(registration) =
                                auth.try_register(spiffe_id.as_str(), remote.ip(), chain)
                            else {
                                tracing::warn!(
                                    %remote,
                                    partner = %spiffe_id,
                                    "too many open connections; connection dropped"
                                );
                                return;
                            };
                            let conn = TlsConn {
                                inner: tls,
                                info: PeerInfo { remote, spiffe_id },
                                registration,
                            };
                            let _ = tx.send(Ok(conn)).await;
                        }
                    }
                    Ok(Err(e)) => refused.note(remote, &e),
                    Err(_) => refused.note(remote, &"timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
