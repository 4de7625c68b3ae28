//! The metrics endpoint: `GET /metrics` on its own listen address
//! (`[metrics] listen`), plain HTTP/1.1 as Prometheus scrapes it.
//!
//! It carries no personal data and no partner-supplied string (see
//! [`crate::metrics`]), but it does show traffic volumes per method and
//! outbox depth per partner: bind it to loopback or a monitoring network,
//! never to the partners' network (docs/operations.md).
//!
//! Bounded like every other door: at most [`MAX_CONNECTIONS`] connections
//! at once (more are closed at once), one request per connection, a
//! request's headers must arrive within [`HEADER_DEADLINE`] and a whole
//! connection ends after [`CONNECTION_DEADLINE`], so a slow or idle client
//! cannot hold a slot for long.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::service::Vault;

/// Scrapers served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Time allowed for a request's headers.
pub const HEADER_DEADLINE: Duration = Duration::from_secs(5);
/// Longest life of one connection.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// Serves `/metrics` on `listener` until `stop` turns true.
pub async fn serve(
    vault: Arc<Vault>,
    listener: TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "metrics listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => return,
        };
        // All slots taken (slow or idle clients): close at once rather
        // than queue, so the next scrape is not stuck behind them.
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            drop(tcp);
            continue;
        };
        let vault = Arc::clone(&vault);
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let vault = Arc::clone(&vault);
                let (path_ok, method_ok) = (
                    req.uri().path() == "/metrics",
                    req.method() == Method::GET || req.method() == Method::HEAD,
                );
                async move {
                    Ok::<_, std::convert::Infallible>(answer(&vault, path_ok, method_ok).await)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_DEADLINE)
                // One request per connection: an idle keep-alive client
                // cannot hold a slot.
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), service);
            match tokio::time::timeout(CONNECTION_DEADLINE, conn).await {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, %peer, "metrics connection ended"),
            }
        });
    }
}

/// Resolves once `stop` turns true (the `wait_for` guard must not live
/// across an await).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

async fn answer(vault: &Vault, path_ok: bool, method_ok: bool) -> Response<Full<Bytes>> {
    if !path_ok {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        );
    }
    if !method_ok {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    let metrics = vault.metrics();
    metrics.refresh(vault.database_gauges()).await;
    let mut resp = Response::new(Full::new(Bytes::from(metrics.encode())));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    resp
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp
}

/// Binds the metrics listener, saying so when the address is not a
/// loopback one.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "the metrics endpoint is plain HTTP without authentication: keep it on a monitoring network"
        );
    }
    TcpListener::bind(addr).await
}
