//! Client certificate revocation that follows the CRL files while the
//! vault runs.
//!
//! [`ClientAuth`] owns the client-certificate verifier. It is rebuilt
//! from the configured CRL files on SIGHUP and whenever one of them
//! changes (polled, [`ClientAuth::reload_if_changed`]); a file that cannot
//! be read or parsed keeps the verifier in force (and says so), it never
//! drops revocation checking. Every CRL is checked for the whole chain
//! (an intermediate CA revoked by its issuer is refused too, and a chain
//! certificate no configured CRL covers is refused), and past its
//! `nextUpdate` a CRL either refuses every certificate it covers
//! (`stale_crl = "refuse"`, the default) or is still used with a loud
//! warning (`"warn"`).
//!
//! Open connections are registered with the certificate chain they
//! authenticated with. After each reload every open connection's chain is
//! verified again; a connection whose certificate is now revoked (or
//! covered by a stale CRL under `refuse`) is closed at once, so a revoked
//! partner cannot keep using an HTTP/2 connection it opened before.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use atomic_waker::AtomicWaker;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use serde::Deserialize;

use crate::sources::{SHARED_CONNECTIONS, SourcePlace, SourcePlaces};
use crate::tls::TlsError;

/// What a CRL past its `nextUpdate` does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StaleCrl {
    /// Certificates the stale CRL covers are refused (handshakes fail and
    /// open connections close) until a fresh CRL is installed.
    #[default]
    Refuse,
    /// The stale CRL is still used, with an error logged at every reload
    /// and every poll.
    Warn,
}

/// A file's identity for change detection: the SHA-256 of its bytes
/// (`None` when unreadable). Not its time and size: a refreshed CRL of the
/// same length copied with its time kept (`cp -p`, `rsync -t`) must still
/// be seen.
type Stamp = Option<[u8; 32]>;

fn stamp(p: &PathBuf) -> Stamp {
    std::fs::read(p)
        .ok()
        .map(|b| idvault_core::crypto::sha256(&[&b]))
}

/// The verifier in force and what it was built from.
struct Current {
    verifier: Arc<dyn ClientCertVerifier>,
    stamps: Vec<Stamp>,
    /// The earliest `nextUpdate` of the loaded CRLs (Unix seconds).
    next_update: Option<i64>,
}

/// Closes one connection from outside its task.
#[derive(Debug, Default)]
pub struct Closer {
    closed: AtomicBool,
    waker: AtomicWaker,
}

impl Closer {
    /// Whether the connection was closed; registers the task's waker first
    /// so a close that races this check still wakes it.
    pub(crate) fn is_closed(&self, cx: &std::task::Context<'_>) -> bool {
        self.waker.register(cx.waker());
        self.closed.load(Ordering::Acquire)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.waker.wake();
    }
}

struct OpenConn {
    spiffe_id: String,
    chain: Vec<CertificateDer<'static>>,
    /// The earliest `notAfter` of its chain (Unix seconds): past it the
    /// connection is closed ([`ClientAuth::close_expired`]).
    not_after: i64,
    closer: Arc<Closer>,
}

/// Unregisters a connection when it ends.
#[derive(Debug)]
pub struct Registration {
    auth: Arc<ClientAuth>,
    id: u64,
    /// The connection's close signal.
    pub closer: Arc<Closer>,
    /// Its place among its source's connections, for an identity counted
    /// per source ([`ClientAuth::count_by_source`]); given back after the
    /// connection leaves the registry.
    #[allow(dead_code, reason = "held for its drop")]
    source: Option<SourcePlace>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.auth.conns().remove(&self.id);
    }
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reloaded {
    /// CRL files loaded.
    pub crls: usize,
    /// Open connections closed because their chain no longer verifies.
    pub closed: usize,
}

/// Most authenticated connections open at once.
pub const MAX_CONNECTIONS: usize = 4096;

/// Most authenticated connections one identity may hold open at once.
pub const MAX_CONNECTIONS_PER_IDENTITY: usize = 256;

/// The client-certificate verifier, its CRL files and the open
/// connections it admitted.
pub struct ClientAuth {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    crl_paths: Vec<PathBuf>,
    stale: StaleCrl,
    current: RwLock<Current>,
    conns: Mutex<HashMap<u64, OpenConn>>,
    /// Identities whose connections are counted per source address
    /// (shared by many end users: a wallet app's), and their one pool of
    /// places. Set once, before the first connection.
    by_source: OnceLock<(HashSet<String>, SourcePlaces)>,
    next_id: AtomicU64,
    /// Serialises reloads (SIGHUP and the file poll), so a slower one never
    /// installs an older CRL set over a newer one.
    reloading: Mutex<()>,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("crl_paths", &self.crl_paths)
            .field("stale", &self.stale)
            .finish_non_exhaustive()
    }
}

impl ClientAuth {
    /// Builds the verifier for `client_ca` with the CRLs in `crl_paths`
    /// (read now; a missing or unparsable one is an error at start).
    pub fn new(
        client_ca: &[CertificateDer<'static>],
        crl_paths: Vec<PathBuf>,
        stale: StaleCrl,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<Self>, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in client_ca {
            roots
                .add(c.clone())
                .map_err(|e| TlsError::Config(e.to_string()))?;
        }
        let roots = Arc::new(roots);
        let current = build(&roots, &provider, &crl_paths, stale)?;
        warn_if_stale(current.next_update, stale, now_secs());
        Ok(Arc::new(Self {
            roots,
            provider,
            crl_paths,
            stale,
            current: RwLock::new(current),
            conns: Mutex::default(),
            by_source: OnceLock::new(),
            next_id: AtomicU64::new(1),
            reloading: Mutex::new(()),
        }))
    }

    /// The verifier in force.
    pub(crate) fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .verifier,
        )
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, OpenConn>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts the connections of `spiffe_ids` per source address from now
    /// on: identities many end users share (a wallet app's certificate is
    /// in every copy of the app), so that one holder of it cannot take
    /// every place (see [`crate::sources`]): together they hold at most
    /// [`SHARED_CONNECTIONS`], `per_source` from one host. Set once at
    /// start, from the partner registry, before the listener accepts: a
    /// second call changes nothing (connections already counted keep
    /// their places).
    pub fn count_by_source(&self, spiffe_ids: impl IntoIterator<Item = String>, per_source: usize) {
        let ids: HashSet<String> = spiffe_ids.into_iter().collect();
        let set = self
            .by_source
            .set((ids, SourcePlaces::new(per_source, SHARED_CONNECTIONS)));
        debug_assert!(set.is_ok(), "count_by_source is set once, at start");
    }

    /// [`Self::register`], unless the vault holds [`MAX_CONNECTIONS`] or
    /// `spiffe_id` its allowance: [`MAX_CONNECTIONS_PER_IDENTITY`], or for
    /// an identity counted per source ([`Self::count_by_source`]) its
    /// host's or network's share (`[server] shared_connections_per_source`,
    /// [`crate::sources`]) or [`SHARED_CONNECTIONS`], which all of them
    /// share. Each connection holds buffers and a
    /// task, so a partner holding a valid certificate cannot grow them
    /// without bound, nor take every place from the others. `None`: the
    /// caller drops it.
    pub fn try_register(
        self: &Arc<Self>,
        spiffe_id: &str,
        remote: IpAddr,
        chain: Vec<CertificateDer<'static>>,
    ) -> Option<Registration> {
        let source = {
            let conns = self.conns();
            if conns.len() >= MAX_CONNECTIONS {
                return None;
            }
            match self
                .by_source
                .get()
                .filter(|(ids, _)| ids.contains(spiffe_id))
            {
                Some((_, places)) => Some(places.try_take(remote).ok()?),
                None => {
                    let mine = conns.values().filter(|c| c.spiffe_id == spiffe_id).count();
                    if mine >= MAX_CONNECTIONS_PER_IDENTITY {
                        return None;
                    }
                    None
                }
            }
        };
        // Checked and registered under two holds of the lock: a burst can
        // overshoot the per-identity and overall counts by the handshakes
        // finishing in between, at most MAX_HANDSHAKES, which bounds them
        // all the same (a source's places are taken exactly).
        Some(self.register_with(spiffe_id, chain, source))
    }

    /// Registers an authenticated connection; it is unregistered when the
    /// returned value drops.
    ///
    /// The chain is verified again here against the verifier in force,
    /// under the registry lock: a handshake that passed under the previous
    /// CRLs while a reload ran (a client can stretch its handshake) would
    /// otherwise register after the reload closed the refused connections,
    /// and stay open. A reload swaps the verifier before it takes this
    /// lock, so one of the two always sees the other.
    pub fn register(
        self: &Arc<Self>,
        spiffe_id: &str,
        chain: Vec<CertificateDer<'static>>,
    ) -> Registration {
        self.register_with(spiffe_id, chain, None)
    }

    /// [`Self::register`], holding `source` (its place among its
    /// source's connections) for as long as it stays registered.
    fn register_with(
        self: &Arc<Self>,
        spiffe_id: &str,
        chain: Vec<CertificateDer<'static>>,
        source: Option<SourcePlace>,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let closer = Arc::new(Closer::default());
        let mut conns = self.conns();
        let verifier = self.verifier();
        let still_ok = chain_ok(verifier.as_ref(), &chain, UnixTime::now());
        if !still_ok {
            tracing::warn!(
                partner = %spiffe_id,
                "closing a new connection: its certificate was refused by CRLs reloaded during its handshake"
            );
            closer.close();
        }
        let not_after = chain_not_after(&chain);
        conns.insert(
            id,
            OpenConn {
                spiffe_id: spiffe_id.to_owned(),
                chain,
                not_after,
                closer: Arc::clone(&closer),
            },
        );
        drop(conns);
        Registration {
            auth: Arc::clone(self),
            id,
            closer,
            source,
        }
    }

    /// Closes every open connection (a stop whose grace period ran out);
    /// returns how many.
    pub fn close_all(&self) -> usize {
        let conns = self.conns();
        for c in conns.values() {
            c.closer.close();
        }
        conns.len()
    }

    /// Open connections (for tests and logs).
    pub fn open_connections(&self) -> usize {
        self.conns().len()
    }

    /// Reads every CRL file again and swaps the verifier; then closes the
    /// open connections whose chain no longer verifies. On a read or parse
    /// error the verifier in force stays and the error is returned.
    pub fn reload(&self) -> Result<Reloaded, TlsError> {
        let _one = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let fresh = build(&self.roots, &self.provider, &self.crl_paths, self.stale)?;
        warn_if_stale(fresh.next_update, self.stale, now_secs());
        let verifier = Arc::clone(&fresh.verifier);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        let closed = self.close_refused(verifier.as_ref());
        Ok(Reloaded {
            crls: self.crl_paths.len(),
            closed,
        })
    }

    /// [`Self::reload`] when a CRL file changed since the last load (and
    /// a stale-CRL warning when one has passed its `nextUpdate`); `None`
    /// when nothing changed.
    pub fn reload_if_changed(&self) -> Option<Result<Reloaded, TlsError>> {
        // Read and hashed before the lock: handshakes read it.
        let now: Vec<Stamp> = self.crl_paths.iter().map(stamp).collect();
        let (changed, next_update) = {
            let c = self.current.read().unwrap_or_else(PoisonError::into_inner);
            (now != c.stamps, c.next_update)
        };
        if changed {
            return Some(self.reload());
        }
        let now = now_secs();
        if next_update.is_some_and(|t| now >= t) {
            warn_if_stale(next_update, self.stale, now);
            if self.stale == StaleCrl::Refuse {
                // Expiry alone changes what the verifier accepts.
                let v = self.verifier();
                let closed = self.close_refused(v.as_ref());
                if closed > 0 {
                    return Some(Ok(Reloaded {
                        crls: self.crl_paths.len(),
                        closed,
                    }));
                }
            }
        }
        None
    }

    /// Closes every open connection whose chain has a certificate past its
    /// `notAfter`; returns how many. A handshake
    /// checks validity once, and HTTP/2 keeps a connection open as long as
    /// its pings are answered: without this, a certificate that expired,
    /// as short-lived ones (SPIFFE's) are meant to instead of being
    /// revoked, kept every call its roles allow on a connection opened
    /// before.
    pub fn close_expired(&self) -> usize {
        let now = now_secs();
        let mut conns = self.conns();
        let expired: Vec<u64> = conns
            .iter()
            .filter(|(_, c)| c.not_after < now)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            if let Some(c) = conns.remove(id) {
                tracing::warn!(
                    partner = %c.spiffe_id,
                    "closing a connection: its client certificate has expired"
                );
                c.closer.close();
            }
        }
        expired.len()
    }

    /// Closes every open connection whose chain `verifier` refuses now.
    /// The chains are checked outside the registry lock (the lock is taken
    /// by every connection's start and end on async threads).
    fn close_refused(&self, verifier: &dyn ClientCertVerifier) -> usize {
        let now = UnixTime::now();
        let open: Vec<(u64, Vec<CertificateDer<'static>>)> = self
            .conns()
            .iter()
            .map(|(id, c)| (*id, c.chain.clone()))
            .collect();
        let refused: Vec<u64> = open
            .into_iter()
            .filter(|(_, chain)| !chain_ok(verifier, chain, now))
            .map(|(id, _)| id)
            .collect();
        let mut conns = self.conns();
        let mut closed = 0;
        for id in refused {
            // Gone already if the connection ended meanwhile.
            if let Some(c) = conns.remove(&id) {
                tracing::warn!(
                    partner = %c.spiffe_id,
                    "closing a connection: its client certificate is now refused (revoked, or its CRL is stale)"
                );
                c.closer.close();
                closed += 1;
            }
        }
        closed
    }
}

/// The earliest `notAfter` among `chain`'s certificates (Unix seconds).
/// The handshake verified the chain, so each parses; one that would not
/// counts as expired.
fn chain_not_after(chain: &[CertificateDer<'_>]) -> i64 {
    chain
        .iter()
        .map(|c| {
            x509_parser::parse_x509_certificate(c)
                .map_or(i64::MIN, |(_, cert)| cert.validity().not_after.timestamp())
        })
        .min()
        .unwrap_or(i64::MIN)
}

/// Whether `verifier` accepts `chain` (end entity first) at `now`.
fn chain_ok(
    verifier: &dyn ClientCertVerifier,
    chain: &[CertificateDer<'_>],
    now: UnixTime,
) -> bool {
    chain
        .split_first()
        .is_some_and(|(ee, rest)| verifier.verify_client_cert(ee, rest, now).is_ok())
}

/// Now, on the clock rustls verifies certificates and CRLs with.
fn now_secs() -> i64 {
    i64::try_from(UnixTime::now().as_secs()).unwrap_or(i64::MAX)
}

fn warn_if_stale(next_update: Option<i64>, stale: StaleCrl, now: i64) {
    if next_update.is_some_and(|t| now >= t) {
        match stale {
            StaleCrl::Refuse => tracing::error!(
                "a client CRL is past its nextUpdate: certificates it covers are REFUSED until a fresh CRL is installed"
            ),
            StaleCrl::Warn => tracing::error!(
                "a client CRL is past its nextUpdate and still used (stale_crl = \"warn\"): revocations since it was issued are NOT seen"
            ),
        }
    }
}

/// Reads `paths` and builds a verifier checking the whole chain.
fn build(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    paths: &[PathBuf],
    stale: StaleCrl,
) -> Result<Current, TlsError> {
    // Stamps first: a file replaced while it is read is read again at the
    // next poll.
    let stamps: Vec<Stamp> = paths.iter().map(stamp).collect();
    let mut crls = Vec::with_capacity(paths.len());
    let mut next_update = None;
    for path in paths {
        let (crl, t) = read(path)?;
        crls.push(crl);
        next_update = Some(next_update.map_or(t, |n: i64| n.min(t)));
    }
    let mut b =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), Arc::clone(provider));
    if !crls.is_empty() {
        // Whole chain (rustls' default once CRLs are given): an
        // intermediate revoked by its issuer is refused, and so is a chain
        // certificate no configured CRL covers.
        b = b.with_crls(crls);
        if stale == StaleCrl::Refuse {
            b = b.enforce_revocation_expiration();
        }
    }
    let verifier = b.build().map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Current {
        verifier,
        stamps,
        next_update: if paths.is_empty() { None } else { next_update },
    })
}

/// Reads a CRL file (PEM or DER) and its `nextUpdate` (Unix seconds;
/// `i64::MAX` without one). Refused when the file is not a parsable CRL.
pub fn read(path: &Path) -> Result<(CertificateRevocationListDer<'static>, i64), TlsError> {
    let crl = crate::tls::read_crl(path)?;
    let t = crl_next_update(&crl)
        .ok_or_else(|| TlsError::Config(format!("{}: not a parsable CRL", path.display())))?;
    Ok((crl, t))
}

/// A CRL's `nextUpdate` (Unix seconds); one without it never goes stale
/// (`i64::MAX`). `None` when the bytes are not a CRL.
fn crl_next_update(crl: &CertificateRevocationListDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_crl(crl).ok()?;
    Some(parsed.next_update().map_or(i64::MAX, |t| t.timestamp()))
}
