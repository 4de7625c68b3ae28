//! Assembles and runs the gRPC server: subjects, health and reflection,
//! behind the mTLS acceptor, with message size limits and deadlines.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use idvault_proto::v1::command_service_server::CommandServiceServer;
use idvault_proto::v1::consent_service_server::ConsentServiceServer;
use idvault_proto::v1::device_service_server::DeviceServiceServer;
use idvault_proto::v1::event_service_server::EventServiceServer;
use idvault_proto::v1::match_service_server::MatchServiceServer;
use idvault_proto::v1::subject_service_server::SubjectServiceServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{
    AuditApi, CommandApi, ConsentApi, CredentialApi, DeviceApi, EventApi, KeyApi, MatchApi,
    RequestId, SubjectApi, TokenApi, TransactionApi,
};
use crate::service::Vault;
use idvault_proto::v1::audit_service_server::AuditServiceServer;
use idvault_proto::v1::credential_service_server::CredentialServiceServer;
use idvault_proto::v1::key_service_server::KeyServiceServer;
use idvault_proto::v1::token_service_server::TokenServiceServer;
use idvault_proto::v1::transaction_service_server::TransactionServiceServer;

/// Server limits.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// Largest message either way.
    pub max_message_bytes: usize,
    /// Server-side deadline of a unary RPC.
    pub request_timeout: Duration,
    /// Server-side deadline of a whole streaming RPC.
    pub stream_timeout: Duration,
    /// TLS handshake deadline.
    pub handshake_timeout: Duration,
    /// TLS handshakes in progress from one host (`[server]
    /// handshakes_per_source`).
    pub handshakes_per_source: usize,
    /// The client verifier (CRLs reloadable) and the connections it
    /// admitted.
    pub client_auth: Arc<crate::crl::ClientAuth>,
    /// How often the CRL files are checked for changes.
    pub crl_poll: Duration,
    /// Where `/metrics` is served (`[metrics] listen`); `None`: nowhere.
    pub metrics_listen: Option<SocketAddr>,
}

/// How long a graceful stop waits for open connections before it drops
/// them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A running server.
#[derive(Debug)]
pub struct RunningServer {
    /// Bound address (the real port when asked for port 0).
    pub addr: SocketAddr,
    /// The metrics endpoint's bound address, when one was asked for.
    pub metrics_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    /// Turns true once a shutdown was asked for (by either sender).
    stopping: tokio::sync::watch::Receiver<bool>,
    /// The connections the server admitted (closed when a stop's grace
    /// period runs out).
    client_auth: Arc<crate::crl::ClientAuth>,
    handle: JoinHandle<Result<(), tonic::transport::Error>>,
    background: Option<(tokio::sync::watch::Sender<bool>, JoinHandle<()>)>,
    /// Waited for at the end: use cases detached from their calls.
    vault: Arc<Vault>,
}

impl RunningServer {
    /// Stops accepting, finishes in-flight calls, sequences the last
    /// leaves into a checkpoint, and waits.
    pub async fn shutdown(mut self) -> Result<(), tonic::transport::Error> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait().await
    }

    /// Waits for the server to end by itself, then stops the background
    /// jobs (after one last sequencer step).
    pub async fn wait(mut self) -> Result<(), tonic::transport::Error> {
        let mut stopping = self.stopping.clone();
        let served = tokio::select! {
            r = &mut self.handle => r.unwrap_or(Ok(())),
            () = async {
                // (The guard `wait_for` returns must not live across the
                // await below.)
                let _ = stopping.wait_for(|s| *s).await.map(|_| ());
            } => {
                // A graceful stop waits for every connection to finish, and
                // a client that stopped reading never lets its last frames
                // go out: after the grace period the rest are dropped.
                match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.handle).await {
                    Ok(r) => r.unwrap_or(Ok(())),
                    Err(_) => {
                        // Each connection is its own task: close them, so
                        // their handlers end before the last checkpoint
                        // and the store closes.
                        let open = self.client_auth.close_all();
                        tracing::warn!(
                            grace_secs = SHUTDOWN_GRACE.as_secs(),
                            connections = open,
                            "connections still open after the shutdown grace period were closed"
                        );
                        match tokio::time::timeout(Duration::from_secs(5), &mut self.handle).await {
                            Ok(r) => r.unwrap_or(Ok(())),
                            Err(_) => {
                                self.handle.abort();
                                Ok(())
                            }
                        }
                    }
                }
            }
        };
        // A deletion that committed is journaled before the store closes.
        let left = self.vault.wait_detached(SHUTDOWN_GRACE).await;
        if left > 0 {
            tracing::warn!(
                detached = left,
                "use cases still running at shutdown were cut off"
            );
        }
        if let Some((stop, job)) = self.background.take() {
            let _ = stop.send(true);
            let _ = job.await;
        }
        served
    }

    /// A sender that stops the server when fired.
    pub fn take_shutdown(&mut self) -> Option<oneshot::Sender<()>> {
        self.shutdown.take()
    }
}

/// tonic refuses a message over the size limit with `OUT_OF_RANGE`; the
/// gRPC status code guide names `RESOURCE_EXHAUSTED` for it, which is what
/// clients classify on. No idvault handler returns `OUT_OF_RANGE`, so the
/// rewrite cannot hide another error. Unary refusals travel in the
/// response headers ("trailers-only"); streaming ones in the trailers, so
/// both are rewritten.
fn size_limit_is_resource_exhausted(
    resp: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let (mut parts, body) = resp.into_parts();
    fix_status(&mut parts.headers);
    http::Response::from_parts(parts, tonic::body::Body::new(FixTrailers(body)))
}

fn fix_status(h: &mut http::HeaderMap) {
    if h.get("grpc-status").is_some_and(|v| v == "11") {
        h.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
}

/// A response body whose trailers get [`fix_status`].
struct FixTrailers(tonic::body::Body);

impl http_body::Body for FixTrailers {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.0).poll_frame(cx).map(|f| {
            f.map(|r| {
                r.map(|frame| match frame.into_trailers() {
                    Ok(mut t) => {
                        fix_status(&mut t);
                        http_body::Frame::trailers(t)
                    }
                    Err(frame) => frame,
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.0)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.0)
    }
}

/// Starts serving `vault` on `listener`.
pub async fn start(
    vault: Arc<Vault>,
    tls: Arc<rustls::ServerConfig>,
    listener: TcpListener,
    opts: ServerOptions,
) -> std::io::Result<RunningServer> {
    let addr = listener.local_addr()?;
    // Bound first: a metrics address that is taken fails the start.
    let metrics_listener = match opts.metrics_listen {
        Some(a) => Some(crate::metrics_http::bind(a).await?),
        None => None,
    };
    let (health_reporter, health) = tonic_health::server::health_reporter();
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
    let bulk = opts.max_message_bytes;
    // Consent messages are small (a grant is at most 4 KiB) and events carry
    // at most 32 fields of 1 KiB: a lower request cap than the bulk services.
    let small = bulk.min(64 * 1024);
    // Health and reflection requests are a few bytes; without a cap of
    // their own tonic would decode up to 4 MiB of each, four times what
    // the calls an identity may hold open are counted against.
    let health = health.max_decoding_message_size(small);
    let reflection = reflection.max_decoding_message_size(small);
    let reflection_alpha = reflection_alpha.max_decoding_message_size(small);
    // Marks one service as serving in the health check and caps the size of
    // the messages it decodes (answers keep the bulk cap).
    macro_rules! service {
        ($server:ident < $api:ty >, $new:expr, $decode:expr) => {{
            health_reporter.set_serving::<$server<$api>>().await;
            $server::new($new)
                .max_decoding_message_size($decode)
                .max_encoding_message_size(bulk)
        }};
    }
    let (unary, stream) = (opts.request_timeout, opts.stream_timeout);
    let v = || Arc::clone(&vault);
    let tokens = service! {TokenServiceServer<TokenApi>, TokenApi::new(v(), unary, stream), bulk};
    let matching = service! {MatchServiceServer<MatchApi>, MatchApi::new(v(), unary, stream), bulk};
    let consent = service! {ConsentServiceServer<ConsentApi>, ConsentApi::new(v(), unary), small};
    let devices = service! {DeviceServiceServer<DeviceApi>, DeviceApi::new(v(), unary), small};
    let events = service! {EventServiceServer<EventApi>, EventApi::new(v(), unary), small};
    let commands =
        service! {CommandServiceServer<CommandApi>, CommandApi::new(v(), unary, stream), bulk};
    let subjects = service! {SubjectServiceServer<SubjectApi>, SubjectApi::new(v(), unary), bulk};
    let audit = service! {AuditServiceServer<AuditApi>, AuditApi::new(v(), unary), small};
    let credentials =
        service! {CredentialServiceServer<CredentialApi>, CredentialApi::new(v(), unary), small};
    let transactions = service! {TransactionServiceServer<TransactionApi>, TransactionApi::new(v(), unary, stream), small};
    let keys = service! {KeyServiceServer<KeyApi>, KeyApi::new(v(), unary, stream), small};
    let streams = Arc::clone(&vault);
    let incoming = crate::tls::incoming(
        listener,
        tls,
        Arc::clone(&opts.client_auth),
        opts.trust_domain.clone(),
        opts.handshake_timeout,
        opts.handshakes_per_source,
    );
    let (tx, rx) = oneshot::channel::<()>();
    let edge = Arc::clone(&vault);
    let router = tonic::transport::Server::builder()
        // Outermost, so it sees the statuses as the caller does (after the
        // size-limit rewrite below).
        .layer(tower::layer::layer_fn(move |inner| Edge {
            inner,
            vault: Arc::clone(&edge),
        }))
        .layer(tower::util::MapResponseLayer::new(
            size_limit_is_resource_exhausted,
        ))
        // The transport deadline bounds streams; unary calls get the shorter
        // `request_timeout` in the API layer (tonic has one global timeout).
        .timeout(opts.stream_timeout)
        .max_concurrent_streams(256)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(subjects)
        .add_service(tokens)
        .add_service(matching)
        .add_service(consent)
        .add_service(devices)
        .add_service(events)
        .add_service(commands)
        .add_service(audit)
        .add_service(credentials)
        .add_service(transactions)
        .add_service(keys)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha);
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let handle = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        let _ = rx.await;
        let _ = stopping_tx.send(true);
        // Following command streams would otherwise hold the graceful
        // shutdown until their deadline.
        streams.stop_streams();
    }));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let crl_watch = tokio::spawn(watch_crls(
        Arc::clone(&opts.client_auth),
        opts.crl_poll,
        stopped.clone(),
    ));
    let (metrics_addr, metrics_job) = match metrics_listener {
        Some(l) => (
            Some(l.local_addr()?),
            Some(tokio::spawn(crate::metrics_http::serve(
                Arc::clone(&vault),
                l,
                stopped.clone(),
            ))),
        ),
        None => (None, None),
    };
    let job = tokio::spawn(Arc::clone(&vault).run_background(stopped));
    let job = tokio::spawn(async move {
        let _ = job.await;
        let _ = crl_watch.await;
        if let Some(m) = metrics_job {
            let _ = m.await;
        }
    });
    Ok(RunningServer {
        addr,
        metrics_addr,
        shutdown: Some(tx),
        stopping,
        client_auth: Arc::clone(&opts.client_auth),
        handle,
        background: Some((stop, job)),
        vault,
    })
}

/// Every `every`, until `stopped` turns true: closes the connections whose
/// client certificate expired, and reloads the CRLs when a file changed.
async fn watch_crls(
    auth: Arc<crate::crl::ClientAuth>,
    every: Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            r = stopped.wait_for(|s| *s) => {
                let _ = r;
                return;
            }
        }
        let a = Arc::clone(&auth);
        // File reads and chain checks are blocking work.
        let checked =
            tokio::task::spawn_blocking(move || (a.close_expired(), a.reload_if_changed()));
        let Ok((expired, reloaded)) = checked.await else {
            continue;
        };
        if expired > 0 {
            tracing::info!(
                closed_connections = expired,
                "connections whose client certificate expired closed"
            );
        }
        match reloaded {
            Some(Ok(r)) => tracing::info!(
                crls = r.crls,
                closed_connections = r.closed,
                "client CRLs reloaded"
            ),
            Some(Err(e)) => tracing::error!(
                error = %e,
                "client CRL reload failed; the CRLs in force stay"
            ),
            None => {}
        }
    }
}

/// The edge of every call: gives it a fresh request id (in the request's
/// extensions for the handlers, whose audit leaves carry it, and in the
/// `idvault-request-id` response header for the caller, who can later ask
/// for the inclusion proof of its request), then, once the call's status
/// is known, counts it in the metrics and writes its access log line.
#[derive(Debug, Clone)]
struct Edge<S> {
    inner: S,
    vault: Arc<Vault>,
}

impl<S, B> tower::Service<http::Request<B>> for Edge<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let id = crate::service::new_request_id();
        req.extensions_mut().insert(RequestId(id));
        let peer = req.extensions().get::<crate::tls::PeerInfo>();
        let remote = peer.map(|p| p.remote.ip());
        let spiffe_id = peer.map(|p| p.spiffe_id.as_str().to_owned());
        let place = self.vault.enter_edge(spiffe_id.as_deref(), remote);
        let (place, full) = match place {
            Ok(p) => (Some(p), None),
            Err(full) => (None, Some(full)),
        };
        let mut call = CallRecord {
            vault: Arc::clone(&self.vault),
            id,
            path: req.uri().path().to_owned(),
            spiffe_id,
            // Monotonic (tokio's clock): a latency, not a time of day.
            started: tokio::time::Instant::now(),
            done: false,
            _place: place,
        };
        if let Some(full) = full {
            // Refused before the request's message is read: a caller with
            // every place taken cannot make the vault buffer one more.
            let mut resp = tonic::Status::resource_exhausted(full.message()).into_http();
            if let Ok(v) = http::HeaderValue::from_str(&hex::encode(id)) {
                resp.headers_mut().insert(crate::api::REQUEST_ID_HEADER, v);
            }
            call.finish(tonic::Code::ResourceExhausted as i32);
            return Box::pin(async move { Ok(resp) });
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            // Until the response exists, dropping `call` (the transport's
            // deadline, the client going away) records the call as
            // cancelled.
            let mut call = call;
            let mut resp = fut.await?;
            if let Ok(v) = http::HeaderValue::from_str(&hex::encode(id)) {
                resp.headers_mut().insert(crate::api::REQUEST_ID_HEADER, v);
            }
            // A "trailers-only" answer (every unary error) carries its
            // status in the headers; otherwise it comes in the trailers.
            if let Some(code) = grpc_status(resp.headers()) {
                call.finish(code);
                return Ok(resp);
            }
            let (parts, body) = resp.into_parts();
            Ok(http::Response::from_parts(
                parts,
                tonic::body::Body::new(ObservedBody { body, call }),
            ))
        })
    }
}

fn grpc_status(h: &http::HeaderMap) -> Option<i32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// One call on its way through the edge; recorded exactly once: by
/// [`Self::finish`] with its status, or when dropped before that as
/// `CANCELLED` (the call ended without a status: the client went away or
/// the stream's deadline cut it).
struct CallRecord {
    vault: Arc<Vault>,
    id: [u8; 16],
    path: String,
    spiffe_id: Option<String>,
    started: tokio::time::Instant,
    done: bool,
    /// The call's place at the edge ([`Vault::enter_edge`]), given back
    /// when the record goes: after the answer's last byte, or when the
    /// call is cut.
    _place: Option<crate::service::Place>,
}

impl CallRecord {
    fn finish(&mut self, code: i32) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        let metrics = self.vault.metrics();
        metrics.observe_rpc(&self.path, code, elapsed);
        let spiffe_id = self.spiffe_id.as_deref().unwrap_or("-");
        let partner = self
            .vault
            .registry()
            .by_spiffe_id(spiffe_id)
            .map_or("-", |p| p.name.as_str());
        // The access log line: who called what, how it ended and how long
        // it took. The method is the bounded label (a path the vault does
        // not serve is `other`, so a caller's bytes never reach the log);
        // no value of a request or response is ever logged.
        tracing::info!(
            target: "idvault::access",
            request_id = %hex::encode(self.id),
            partner,
            spiffe_id,
            rpc = metrics.method_label(&self.path),
            outcome = crate::metrics::code_name(code),
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "rpc"
        );
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.finish(1);
    }
}

/// A response body that records its call when the trailers (and so the
/// status) go out.
struct ObservedBody {
    body: tonic::body::Body,
    call: CallRecord,
}

impl http_body::Body for ObservedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.call.finish(code);
                }
            }
            // A body error ends the call without a status trailer.
            std::task::Poll::Ready(Some(Err(e))) => this.call.finish(e.code() as i32),
            std::task::Poll::Ready(None) | std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.body)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.body)
    }
}
