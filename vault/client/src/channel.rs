//! The mTLS gRPC channel a partner (or a wallet app) opens to the vault.

use std::path::Path;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Client set-up errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A PEM file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Transport failure.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// PEM material a partner connects with.
#[derive(Clone)]
pub struct PartnerCredentials {
    /// CA that issued the vault's server certificate.
    pub ca_pem: Vec<u8>,
    /// The partner's certificate.
    pub cert_pem: Vec<u8>,
    /// The partner's private key.
    pub key_pem: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for PartnerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PartnerCredentials(key redacted)")
    }
}

impl PartnerCredentials {
    /// Reads `ca.crt`, `<name>.crt` and `<name>.key` from a `tls/` directory.
    pub fn from_dir(tls_dir: &Path, name: &str) -> Result<Self, ClientError> {
        let read = |f: String| {
            let p = tls_dir.join(&f);
            std::fs::read(&p).map_err(|source| ClientError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        Ok(Self {
            ca_pem: read("ca.crt".into())?,
            cert_pem: read(format!("{name}.crt"))?,
            key_pem: zeroize::Zeroizing::new(read(format!("{name}.key"))?),
        })
    }
}

/// Connects to `url` (e.g. `https://127.0.0.1:50051`) with mutual TLS,
/// verifying the server certificate for `server_name`.
pub async fn connect(
    url: &str,
    server_name: &str,
    creds: &PartnerCredentials,
) -> Result<Channel, ClientError> {
    connect_from(url, server_name, creds, None).await
}

/// [`connect`] from the local address `local` (on a host with several:
/// the vault counts a wallet app's connections per source address).
pub async fn connect_from(
    url: &str,
    server_name: &str,
    creds: &PartnerCredentials,
    local: Option<std::net::IpAddr>,
) -> Result<Channel, ClientError> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&creds.ca_pem))
        .identity(Identity::from_pem(
            &creds.cert_pem,
            creds.key_pem.as_slice(),
        ))
        .domain_name(server_name);
    let channel = Endpoint::from_shared(url.to_owned())?
        .tls_config(tls)?
        // No per-request timeout here: streams may run for a long time; the
        // server enforces its deadlines and callers can set grpc-timeout.
        .connect_timeout(Duration::from_secs(10))
        .local_address(local)
        .connect()
        .await?;
    Ok(channel)
}
