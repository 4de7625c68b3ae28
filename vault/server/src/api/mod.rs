//! gRPC adapters (tonic). Handlers only translate protobuf to service calls
//! and service errors to statuses; access control and validation live in
//! [`crate::service`].

/// Declares a tonic service adapter: the vault it serves and the deadline
/// of its unary calls (`deadline`), and with `streams`, of its streams.
macro_rules! adapter {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            vault: std::sync::Arc<crate::service::Vault>,
            deadline: std::time::Duration,
        }

        impl $name {
            /// Serves `vault`; each call must finish within `deadline`.
            pub fn new(
                vault: std::sync::Arc<crate::service::Vault>,
                deadline: std::time::Duration,
            ) -> Self {
                Self { vault, deadline }
            }
        }
        adapter!(@edge $name);
    };
    ($(#[$doc:meta])* $name:ident, streams) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            vault: std::sync::Arc<crate::service::Vault>,
            deadline: std::time::Duration,
            stream_deadline: std::time::Duration,
        }

        impl $name {
            /// Serves `vault`; unary calls must finish within `deadline`,
            /// streams end at `stream_deadline`.
            pub fn new(
                vault: std::sync::Arc<crate::service::Vault>,
                deadline: std::time::Duration,
                stream_deadline: std::time::Duration,
            ) -> Self {
                Self {
                    vault,
                    deadline,
                    stream_deadline,
                }
            }
        }
        adapter!(@edge $name);
    };
    (@edge $name:ident) => {
        impl $name {
            /// [`malformed`](crate::api::malformed) within this service's deadline.
            #[allow(dead_code)] // not every service has a message to refuse at the edge
            async fn malformed(
                &self,
                who: &crate::service::Caller,
                actions: (idvault_policies::Action, idvault_policies::Action),
                why: &str,
            ) -> tonic::Status {
                crate::api::malformed(&self.vault, who, actions, why, self.deadline).await
            }
        }
    };
}

mod audit;
mod consent;
mod credentials;
mod events;
mod keys;
mod matching;
mod subjects;
mod tokens;
mod transactions;

pub use audit::AuditApi;
pub use consent::{ConsentApi, DeviceApi};
pub use credentials::CredentialApi;
pub use events::{CommandApi, EventApi};
pub use keys::KeyApi;
pub use matching::MatchApi;
pub use subjects::SubjectApi;
pub use tokens::{TokenApi, bridge_batch};
pub use transactions::TransactionApi;

use tonic::{Request, Status};

use crate::service::{Caller, VaultError};
use crate::tls::PeerInfo;

/// The one mapping from domain errors to gRPC statuses. It decides what a
/// caller may learn: messages come from `VaultError`'s `Display`, which
/// holds no PII or key material; internal causes are logged, not returned.
pub fn status(err: VaultError) -> Status {
    use tonic::Code;
    let code = match &err {
        VaultError::Unregistered | VaultError::Denied(_) | VaultError::DomainDenied => {
            Code::PermissionDenied
        }
        VaultError::Invalid(_) | VaultError::BadRequest(_) => Code::InvalidArgument,
        VaultError::NotFound => Code::NotFound,
        VaultError::RateLimited(_)
        | VaultError::TooManyStreams(..)
        | VaultError::TooManyRejects(..)
        | VaultError::Overloaded(_)
        | VaultError::Limit(_) => Code::ResourceExhausted,
        VaultError::DeadlineExceeded => Code::DeadlineExceeded,
        VaultError::ChainFull(_) => Code::FailedPrecondition,
        VaultError::Busy(_) => Code::Aborted,
        VaultError::AuditUnavailable(_) | VaultError::Storage(_) => Code::Unavailable,
        // Not UNAVAILABLE: clients retry that on their own.
        VaultError::OutcomeUnknown(_) => Code::Unknown,
        VaultError::Integrity(_) => Code::DataLoss,
        VaultError::Refused(r) => refusal_code(*r),
        VaultError::Credential(_) => Code::InvalidArgument,
        _ => Code::Internal,
    };
    if matches!(
        code,
        Code::Unavailable | Code::DataLoss | Code::Internal | Code::Unknown
    ) {
        // Sources are storage or key errors: table/column names, versions.
        tracing::error!(error = %err, source = ?std::error::Error::source(&err).map(ToString::to_string), "request failed");
    }
    let mut st = Status::new(code, err.to_string());
    // Reason tokens are fixed ASCII words, always valid metadata.
    let reason = match &err {
        VaultError::Refused(r) => Some(r.name()),
        VaultError::Credential(e) => Some(e.code()),
        _ => None,
    };
    if let Some(r) = reason {
        st.metadata_mut().insert(
            REFUSAL_METADATA,
            tonic::metadata::MetadataValue::from_static(r),
        );
    }
    st
}

/// Response metadata key holding a refusal's reason token.
pub const REFUSAL_METADATA: &str = "idvault-refusal";

/// The status code of each consent refusal (docs/consent.md lists them).
fn refusal_code(r: idvault_core::consent::Refusal) -> tonic::Code {
    use idvault_core::consent::Refusal as R;
    use tonic::Code;
    match r {
        R::Malformed | R::LifetimeTooLong => Code::InvalidArgument,
        R::BadSignature => Code::Unauthenticated,
        R::UnknownDevice | R::ConsentUnknown | R::EntityUnknown => Code::NotFound,
        R::DeviceRevoked
        | R::SubjectMismatch
        | R::AudienceMismatch
        | R::ChallengeMismatch
        | R::PurposeNotAllowed
        | R::FieldsNotAllowed
        | R::PolicyDenied
        | R::ConsentRevoked
        | R::WrongAction => Code::PermissionDenied,
        R::NotYetValid
        | R::Expired
        | R::ChallengeUnknown
        | R::ChallengeExpired
        | R::EnrollmentCodeInvalid
        | R::RequestOutsideWindow
        | R::EntityNotLinked
        | R::TargetCannotReceive
        | R::CodeExpired
        | R::CodeUsed => Code::FailedPrecondition,
        R::WrongCode | R::WrongPerson | R::ShownMismatch => Code::PermissionDenied,
        R::TooManyAttempts => Code::ResourceExhausted,
        R::ChallengeReused | R::ConsentReplayed | R::RequestReplayed | R::DeviceAlreadyEnrolled => {
            Code::AlreadyExists
        }
    }
}

/// Runs a unary handler within the server's request deadline. A call that
/// times out before its commit began is rolled back; one whose commit had
/// begun may still commit (durably, with its audit leaf) after the caller
/// was told DEADLINE_EXCEEDED.
pub(crate) async fn within<T>(
    limit: std::time::Duration,
    fut: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(Status::deadline_exceeded(
            "the request exceeded the server deadline",
        ))
    })
}

/// Refuses a message the edge could not map to a request (a required
/// field missing, an unknown enum value): through the pipeline, so it is
/// identified, gated by `gate` and audited as `action` like every other
/// refusal. It runs on its own task within `deadline`, like the consent
/// and event calls, so a cancelled call cannot cut its audit record off.
pub(crate) async fn malformed(
    vault: &std::sync::Arc<crate::service::Vault>,
    who: &Caller,
    (gate, action): (idvault_policies::Action, idvault_policies::Action),
    why: impl Into<String>,
    deadline: std::time::Duration,
) -> Status {
    let (vault, who, why) = (std::sync::Arc::clone(vault), who.clone(), why.into());
    let refused = consent::detached(deadline, async move {
        Err::<(), _>(
            vault
                .reject(&who, gate, action, VaultError::BadRequest(why))
                .await,
        )
    })
    .await;
    match refused {
        Err(st) => st,
        Ok(()) => Status::internal("internal error"),
    }
}

/// When a stream call must end: its own deadline (`grpc-timeout`) if the
/// caller set one, and never later than `max` from now. A client that
/// stops reading therefore holds a stream's task, place and buffers at
/// most until the deadline it chose.
pub(crate) fn stream_deadline(who: &Caller, max: std::time::Duration) -> tokio::time::Instant {
    let longest = tokio::time::Instant::now() + max;
    who.deadline.map_or(longest, |d| d.min(longest))
}

/// How long a client stream may stay silent before it is closed.
pub(crate) const STREAM_IDLE: std::time::Duration = std::time::Duration::from_secs(120);

/// The next message of a client stream, `Ok(None)` at its end. A client
/// that stops sending (or never ends) cannot hold the handler past
/// [`STREAM_IDLE`] or the call's `deadline`: that is DEADLINE_EXCEEDED,
/// naming `call`.
pub(crate) async fn next_message<T>(
    stream: &mut tonic::Streaming<T>,
    deadline: tokio::time::Instant,
    call: &str,
) -> Result<Option<T>, Status> {
    tokio::time::timeout_at(
        deadline.min(tokio::time::Instant::now() + STREAM_IDLE),
        stream.message(),
    )
    .await
    .unwrap_or_else(|_| {
        Err(Status::deadline_exceeded(format!(
            "{call} stream idle or past its deadline"
        )))
    })
}

/// The sending half of a server stream's replies. A reply that cannot be
/// sent in time (the client stopped reading) cuts the stream, and a cut
/// stream ends with DEADLINE_EXCEEDED, never with OK: a client that reads
/// again later must not take a truncated answer for a whole one.
#[derive(Debug)]
pub(crate) struct ReplyTx<T> {
    tx: tokio::sync::mpsc::Sender<Result<T, Status>>,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// The replies a server stream answers with (see [`ReplyTx`]).
#[derive(Debug)]
pub struct Replies<T> {
    rx: tokio_stream::wrappers::ReceiverStream<Result<T, Status>>,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ended: bool,
}

impl<T> ReplyTx<T> {
    /// Resolves when the client has gone (the reply stream was dropped).
    pub(crate) async fn closed(&self) {
        self.tx.closed().await;
    }
}

/// A reply channel holding at most `cap` replies.
pub(crate) fn replies<T>(cap: usize) -> (ReplyTx<T>, Replies<T>) {
    let (tx, rx) = tokio::sync::mpsc::channel(cap);
    let cut = std::sync::Arc::default();
    (
        ReplyTx {
            tx,
            cut: std::sync::Arc::clone(&cut),
        },
        Replies {
            rx: tokio_stream::wrappers::ReceiverStream::new(rx),
            cut,
            ended: false,
        },
    )
}

impl<T> tokio_stream::Stream for Replies<T> {
    type Item = Result<T, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.ended {
            return std::task::Poll::Ready(None);
        }
        match std::pin::Pin::new(&mut self.rx).poll_next(cx) {
            std::task::Poll::Ready(None) => {
                self.ended = true;
                // The sender is gone, so the flag is final.
                if self.cut.load(std::sync::atomic::Ordering::Acquire) {
                    std::task::Poll::Ready(Some(Err(Status::deadline_exceeded(
                        "the stream was cut: its replies were not read in time",
                    ))))
                } else {
                    std::task::Poll::Ready(None)
                }
            }
            other => other,
        }
    }
}

/// Sends `item` on a server stream, waiting for the client to make room
/// at most [`STREAM_IDLE`] and never past `deadline`: a client that stops
/// reading cannot hold the task and its buffers. `false` means the stream
/// must end (the client is gone or too slow); it is then cut.
pub(crate) async fn send_within<T>(
    tx: &ReplyTx<T>,
    item: T,
    deadline: tokio::time::Instant,
) -> bool {
    let until = deadline.min(tokio::time::Instant::now() + STREAM_IDLE);
    let sent = matches!(
        tokio::time::timeout_at(until, tx.tx.send(Ok(item))).await,
        Ok(Ok(()))
    );
    if !sent {
        tx.cut.store(true, std::sync::atomic::Ordering::Release);
    }
    sent
}

/// How long a stream's closing status may wait for room (its deadline may
/// already have passed).
const FINAL_SEND: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends a stream's closing error, waiting at most [`FINAL_SEND`]; if it
/// does not fit, the stream is cut (and still ends in an error).
pub(crate) async fn send_final<T>(tx: &ReplyTx<T>, e: Status) {
    if !matches!(
        tokio::time::timeout(FINAL_SEND, tx.tx.send(Err(e))).await,
        Ok(Ok(()))
    ) {
        tx.cut.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// The caller proven by the connection's client certificate, with the
/// request id the edge gave the call and the caller's deadline.
pub(crate) fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    let peer = req
        .extensions()
        .get::<PeerInfo>()
        // Unreachable behind the TLS acceptor; refuse rather than guess.
        .ok_or_else(|| Status::unauthenticated("no client certificate identity"))?;
    // The edge's id when it gave one (always, behind the edge); a fresh
    // one is drawn only otherwise.
    let who = match req.extensions().get::<RequestId>() {
        Some(id) => Caller::with_id(peer.spiffe_id.as_str(), id.0),
        None => Caller::new(peer.spiffe_id.as_str()),
    }
    .from_address(peer.remote.ip());
    let deadline = req
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(grpc_timeout)
        .map(|d| tokio::time::Instant::now() + d);
    Ok(who.with_deadline(deadline))
}

/// The id of one call, given at the edge ([`crate::server`]) and returned
/// in the `idvault-request-id` response header; its audit leaves carry it.
#[derive(Debug, Clone, Copy)]
pub struct RequestId(pub [u8; 16]);

/// Response header carrying the request id (32 hex digits).
pub const REQUEST_ID_HEADER: &str = "idvault-request-id";

/// Parses a `grpc-timeout` header value (gRPC over HTTP/2: up to 8 digits
/// and a unit `H M S m u n`); `None` when malformed. Values are capped at
/// a day (a longer wait is no wait at all for admission control).
pub fn grpc_timeout(v: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let at = v.len().checked_sub(1)?;
    if !v.is_char_boundary(at) {
        return None;
    }
    let (digits, unit) = v.split_at(at);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Some(d.min(Duration::from_secs(86_400)))
}

#[cfg(test)]
mod tests {
    use super::grpc_timeout;
    use std::time::Duration;

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(grpc_timeout("1m"), Some(Duration::from_millis(1)));
        assert_eq!(grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(grpc_timeout("99999999H"), Some(Duration::from_secs(86_400)));
        assert_eq!(grpc_timeout("100u"), Some(Duration::from_micros(100)));
        for bad in [
            "",
            "m",
            "1",
            "123456789S",
            "1x",
            "-1S",
            "1.5S",
            "１S",
            "1１",
        ] {
            assert_eq!(grpc_timeout(bad), None, "{bad}");
        }
    }
}
