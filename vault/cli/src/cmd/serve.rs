//! `idvault serve`: the vault over mTLS gRPC, until a signal.
use std::sync::Arc;

use anyhow::Context;
use idvault_core::SystemRng;

use super::DataDir;

pub(crate) async fn run(
    dir: &DataDir,
    dev: bool,
    listen: Option<std::net::SocketAddr>,
    database_url: Option<String>,
    metrics_listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    if dev {
        let made = idvault_server::devinit::init_dev(
            &dir.data_dir,
            "127.0.0.1:50051",
            &SystemRng::default(),
        )?;
        for p in made {
            tracing::info!(path = %p.display(), "initialised");
        }
    }
    let cfg = dir.load()?;
    // Held while serving: a restore refuses to swap files under it.
    let _lock =
        idvault_server::backup::DataDirLock::shared(&cfg.base_dir).map_err(anyhow::Error::msg)?;
    let url = database_url.unwrap_or_else(|| cfg.database_url());
    let mut loaded = idvault_server::app::load(&cfg, &url).await?;
    if metrics_listen.is_some() {
        loaded.options.metrics_listen = metrics_listen;
    } else if dev {
        // On in development even for a data directory made before the
        // `[metrics]` section existed.
        loaded.options.metrics_listen = loaded
            .options
            .metrics_listen
            .or(Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9464))));
    }
    if metrics_listen.is_none()
        && dev
        && let Some(m) = loaded.options.metrics_listen
        && std::net::TcpListener::bind(m).is_err()
    {
        // A second dev vault on one machine: its metrics port is taken.
        // In production a busy metrics address fails the start instead.
        tracing::warn!(
            addr = %m,
            "the dev metrics address is in use; serving without metrics (pass --metrics-listen)"
        );
        loaded.options.metrics_listen = None;
    }
    let addr = listen.unwrap_or(cfg.file.server.listen);
    let client_auth = Arc::clone(&loaded.options.client_auth);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let mut server = idvault_server::server::start(
        Arc::clone(&loaded.vault),
        loaded.tls,
        listener,
        loaded.options,
    )
    .await?;
    // The signal handlers are in place before the vault says it listens:
    // a SIGTERM (or SIGHUP, whose default is to end the process) sent as
    // soon as it is ready must take the graceful path, not kill it.
    let shutdown = shutdown_signal();
    spawn_reload(Arc::clone(&loaded.vault), client_auth);
    println!(
        "idvault listening on {} (mTLS), storage {}",
        server.addr,
        redact_url(&url)
    );
    if let Some(m) = server.metrics_addr {
        println!("metrics at http://{m}/metrics");
    }
    let stop = server.take_shutdown();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        if let Some(tx) = stop {
            let _ = tx.send(());
        }
    });
    server.wait().await?;
    loaded.vault.store().close().await;
    Ok(())
}

/// SIGHUP reloads the policy set and the client CRLs; an invalid policy
/// set or an unreadable CRL is reported and what is in force stays.
pub(crate) fn spawn_reload(
    vault: Arc<idvault_server::service::Vault>,
    auth: Arc<idvault_server::crl::ClientAuth>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        // Registered now, not in the task: the handler is in place when
        // this returns.
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!(
                "cannot listen for SIGHUP; policies and CRLs reload only at restart (CRL files are still polled)"
            );
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match vault.reload_policies() {
                    Ok(n) => tracing::info!(policies = n, "policy set reloaded"),
                    Err(d) => tracing::error!(
                        errors = %idvault_server::policy::report(&d),
                        "policy reload refused; the previous policy set stays in force"
                    ),
                }
                let a = Arc::clone(&auth);
                match tokio::task::spawn_blocking(move || a.reload()).await {
                    Ok(Ok(r)) => tracing::info!(
                        crls = r.crls,
                        closed_connections = r.closed,
                        "client CRLs reloaded"
                    ),
                    Ok(Err(e)) => tracing::error!(
                        error = %e,
                        "client CRL reload failed; the CRLs in force stay"
                    ),
                    Err(_) => {}
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (vault, auth);
}

/// Registers the shutdown signals (SIGTERM, SIGINT) at once and returns a
/// future that ends when one arrives.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            let (Ok(mut term), Ok(mut int)) = (term, int) else {
                return std::future::pending().await;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Shows a database URL without its secrets: the password of its user
/// part and the `password` and `sslpassword` query parameters (sqlx and
/// libpq take either form). A URL that does not parse is not shown at all,
/// since where its password sits cannot be told.
pub(crate) fn redact_url(text: &str) -> String {
    const HIDDEN: &str = "***";
    let Ok(mut url) = url::Url::parse(text) else {
        return "<a database URL that does not parse>".to_owned();
    };
    let secret =
        |k: &str| k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword");
    let query_secret = url.query_pairs().any(|(k, _)| secret(&k));
    if url.password().is_none() && !query_secret {
        return text.to_owned();
    }
    if url.password().is_some() {
        // Only URLs with a host carry a user part, so this cannot fail.
        let _ = url.set_password(Some(HIDDEN));
    }
    if query_secret {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret(&k) {
                    HIDDEN.to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}
