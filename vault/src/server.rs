//! Assembles and runs the gRPC server: subjects, health and reflection,
//! behind the mTLS acceptor, with message size limits and deadlines.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use idvault_proto::v1::subject_service_server::SubjectServiceServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{SubjectApi, TokenApi};
use crate::service::Vault;
use idvault_proto::v1::token_service_server::TokenServiceServer;

/// Server limits.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// Largest message either way.
    pub max_message_bytes: usize,
    /// Server-side deadline per RPC.
    pub request_timeout: Duration,
    /// TLS handshake deadline.
    pub handshake_timeout: Duration,
}

/// A running server.
#[derive(Debug)]
pub struct RunningServer {
    /// Bound address (the real port when asked for port 0).
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningServer {
    /// Stops accepting, finishes in-flight calls, and waits.
    pub async fn shutdown(mut self) -> Result<(), tonic::transport::Error> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.await.unwrap_or(Ok(()))
    }

    /// Waits for the server to end by itself.
    pub async fn wait(self) -> Result<(), tonic::transport::Error> {
        self.handle.await.unwrap_or(Ok(()))
    }

    /// A sender that stops the server when fired.
    pub fn take_shutdown(&mut self) -> Option<oneshot::Sender<()>> {
        self.shutdown.take()
    }
}

/// tonic refuses a message over the size limit with `OUT_OF_RANGE`; the
/// gRPC status code guide names `RESOURCE_EXHAUSTED` for it, which is what
/// clients retry-classify on. No idvault handler returns `OUT_OF_RANGE`, so
/// the rewrite cannot hide another error. (Unary refusals travel in the
/// response headers, "trailers-only", which is where this looks.)
fn size_limit_is_resource_exhausted(
    mut resp: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let out_of_range = http::HeaderValue::from_static("11");
    if resp.headers().get("grpc-status") == Some(&out_of_range) {
        resp.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    resp
}

/// Starts serving `vault` on `listener`.
pub async fn start(
    vault: Arc<Vault>,
    tls: Arc<rustls::ServerConfig>,
    listener: TcpListener,
    opts: ServerOptions,
) -> std::io::Result<RunningServer> {
    let addr = listener.local_addr()?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<SubjectServiceServer<SubjectApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(idvault_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(std::io::Error::other)?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(idvault_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(std::io::Error::other)?;
    health_reporter
        .set_serving::<TokenServiceServer<TokenApi>>()
        .await;
    let tokens = TokenServiceServer::new(TokenApi::new(Arc::clone(&vault)))
        .max_decoding_message_size(opts.max_message_bytes)
        .max_encoding_message_size(opts.max_message_bytes);
    let subjects = SubjectServiceServer::new(SubjectApi::new(vault))
        .max_decoding_message_size(opts.max_message_bytes)
        .max_encoding_message_size(opts.max_message_bytes);
    let incoming = crate::tls::incoming(
        listener,
        tls,
        opts.trust_domain.clone(),
        opts.handshake_timeout,
    );
    let (tx, rx) = oneshot::channel::<()>();
    let router = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            size_limit_is_resource_exhausted,
        ))
        .timeout(opts.request_timeout)
        .max_concurrent_streams(256)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(subjects)
        .add_service(tokens)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha);
    let handle = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = rx.await;
    }));
    Ok(RunningServer {
        addr,
        shutdown: Some(tx),
        handle,
    })
}
