//! Prometheus metrics (docs/operations.md lists each one and the alerts
//! built on them).
//!
//! Every label value comes from a bounded set the vault itself defines:
//! gRPC method paths the vault serves (anything else is `other`), gRPC
//! status names, refusal reasons, rewrap phases, store states, and the
//! names of partners registered in the config file. Nothing a caller
//! sends, and no row a database writer could add, becomes a label value:
//! a hostile caller cannot grow the series set, and no personal data can
//! reach a scrape.
//!
//! Counters and histograms move as requests are answered; the gauges that
//! describe the database (outbox, audit sequencing, pool) are read when a
//! scrape comes, at most once a second whatever the number of scrapers,
//! and each read has a deadline (see [`Metrics::refresh`]).

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

// tokio's monotonic clock: latency is measured, not a time of day.
use tokio::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::service::VaultError;

/// The content type of [`Metrics::encode`]'s output (OpenMetrics text,
/// which Prometheus scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Label value of a call to a path the vault does not serve.
const OTHER_METHOD: &str = "other";

/// Latency buckets (seconds): 0.5 ms to 30 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    120.0,
];

/// Write-batch size buckets (requests per commit).
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// How long the database gauges stay fresh: scrapes closer together than
/// this share one read.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// Deadline of one read of the database gauges.
const REFRESH_DEADLINE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: &'static str,
}

/// Why a request was refused (the `reason` label).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum RefusalReason {
    /// The certificate's SPIFFE id is no registered partner.
    Unregistered,
    /// A policy (or a domain or consent rule) denied it.
    Policy,
    /// The partner's rate limit.
    RateLimit,
    /// Admission control: the partner's in-flight limit, the write queue,
    /// a stream limit, a size or count limit, a busy job.
    Admission,
    /// Its deadline passed before it ran.
    Deadline,
    /// Malformed or invalid input.
    Invalid,
}

impl RefusalReason {
    /// The reason of a refusal; `None` for errors that are not refusals
    /// (not found, storage and integrity failures: those show in the
    /// per-RPC status counts).
    pub fn of(err: &VaultError) -> Option<Self> {
        Some(match err {
            VaultError::Unregistered => Self::Unregistered,
            VaultError::Denied(_) | VaultError::DomainDenied | VaultError::Refused(_) => {
                Self::Policy
            }
            VaultError::RateLimited(_) => Self::RateLimit,
            VaultError::Overloaded(_)
            | VaultError::TooManyStreams(..)
            | VaultError::TooManyRejects(..)
            | VaultError::Limit(_)
            | VaultError::Busy(_) => Self::Admission,
            VaultError::DeadlineExceeded => Self::Deadline,
            VaultError::Invalid(_) | VaultError::BadRequest(_) | VaultError::Credential(_) => {
                Self::Invalid
            }
            _ => return None,
        })
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unregistered => "unregistered",
            Self::Policy => "policy",
            Self::RateLimit => "rate_limit",
            Self::Admission => "admission",
            Self::Deadline => "deadline",
            Self::Invalid => "invalid",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartnerLabels {
    partner: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// The database gauges' values, read by [`crate::service::Vault`].
#[derive(Debug, Clone, Default)]
pub struct DatabaseGauges {
    /// Per registered partner: commands waiting, and the age in seconds
    /// of the oldest (0 when none).
    pub outbox: Vec<(String, u64, f64)>,
    /// Audit leaves written but not yet in the tree.
    pub unsequenced_leaves: u64,
    /// Size of the newest checkpoint.
    pub tree_size: u64,
    /// Seconds since the newest checkpoint (0 when there is none).
    pub checkpoint_age_secs: f64,
    /// Pool connections open and idle, and the pool's limit.
    pub pool_open: u64,
    /// Idle pool connections.
    pub pool_idle: u64,
    /// The pool's limit.
    pub pool_max: u64,
    /// Writes queued for or holding the writer.
    pub write_queue: u64,
}

/// The vault's metrics.
pub struct Metrics {
    registry: Registry,
    methods: HashSet<String>,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_seconds: Family<RpcLabels, Histogram, fn() -> Histogram>,
    refusals: Family<ReasonLabels, Counter>,
    outbox_depth: Family<PartnerLabels, Gauge>,
    outbox_age: Family<PartnerLabels, Gauge<f64, AtomicU64>>,
    audit_unsequenced: Gauge,
    audit_tree_size: Gauge,
    audit_checkpoint_age: Gauge<f64, AtomicU64>,
    pool: Family<StateLabels, Gauge>,
    pool_max: Gauge,
    write_queue: Gauge,
    rewrap_running: Gauge,
    rewrap_done: Family<PhaseLabels, Gauge>,
    rewrap_total: Family<PhaseLabels, Gauge>,
    scrape_errors: Counter,
    shred_log_errors: Counter,
    /// When the database gauges were last read; the lock also makes
    /// concurrent scrapes share one read.
    refreshed: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("methods", &self.methods.len())
            .finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// A new write-batch size histogram (the store records into it).
pub fn batch_histogram() -> Histogram {
    Histogram::new(BATCH_BUCKETS)
}

impl Metrics {
    /// Registers every metric. `write_batch` is the store's batch size
    /// histogram.
    pub fn new(write_batch: Histogram) -> Self {
        let mut registry = Registry::with_prefix("idvault");
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        registry.register(
            "rpc_requests",
            "gRPC calls answered, by method and status code",
            rpc_requests.clone(),
        );
        let rpc_seconds: Family<RpcLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "rpc_duration_seconds",
            "gRPC call latency (a stream's whole life), by method and status code",
            rpc_seconds.clone(),
        );
        let refusals = Family::<ReasonLabels, Counter>::default();
        registry.register("refusals", "Requests refused, by reason", refusals.clone());
        let outbox_depth = Family::<PartnerLabels, Gauge>::default();
        registry.register(
            "outbox_depth",
            "Commands waiting in the outbox, per registered partner",
            outbox_depth.clone(),
        );
        let outbox_age = Family::<PartnerLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest undelivered command, per registered partner (0: none)",
            outbox_age.clone(),
        );
        let audit_unsequenced = Gauge::default();
        registry.register(
            "audit_unsequenced_leaves",
            "Audit leaves written but not yet in the Merkle tree",
            audit_unsequenced.clone(),
        );
        let audit_tree_size = Gauge::default();
        registry.register(
            "audit_tree_size",
            "Leaves in the newest signed checkpoint",
            audit_tree_size.clone(),
        );
        let audit_checkpoint_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "audit_checkpoint_age_seconds",
            "Seconds since the newest signed checkpoint",
            audit_checkpoint_age.clone(),
        );
        let pool = Family::<StateLabels, Gauge>::default();
        registry.register(
            "store_pool_connections",
            "Database pool connections, by state (busy, idle)",
            pool.clone(),
        );
        let pool_max = Gauge::default();
        registry.register(
            "store_pool_max_connections",
            "The database pool's limit",
            pool_max.clone(),
        );
        let write_queue = Gauge::default();
        registry.register(
            "store_write_queue",
            "Writes queued for or holding the writer (admission refuses beyond the bound)",
            write_queue.clone(),
        );
        registry.register(
            "store_write_batch_size",
            "Requests committed together (one fsync on SQLite, one transaction on PostgreSQL)",
            write_batch.clone(),
        );
        let rewrap_running = Gauge::default();
        registry.register(
            "rewrap_running",
            "1 while a rewrap runs in this process",
            rewrap_running.clone(),
        );
        let rewrap_done = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "rewrap_done",
            "Items the current or last rewrap of this process handled, by phase",
            rewrap_done.clone(),
        );
        let rewrap_total = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "rewrap_items",
            "Items below the target version when that rewrap phase started",
            rewrap_total.clone(),
        );
        let scrape_errors = Counter::default();
        registry.register(
            "metrics_refresh_errors",
            "Reads of the database gauges that failed or timed out (the gauges keep their last values)",
            scrape_errors.clone(),
        );
        let shred_log_errors = Counter::default();
        registry.register(
            "shred_log_write_errors",
            "Committed deletions that could not be appended to the deletion journal",
            shred_log_errors.clone(),
        );
        Self {
            registry,
            shred_log_errors,
            methods: served_methods(),
            rpc_requests,
            rpc_seconds,
            refusals,
            outbox_depth,
            outbox_age,
            audit_unsequenced,
            audit_tree_size,
            audit_checkpoint_age,
            pool,
            pool_max,
            write_queue,
            rewrap_running,
            rewrap_done,
            rewrap_total,
            scrape_errors,
            refreshed: tokio::sync::Mutex::new(None),
        }
    }

    /// The bounded label value of a request path.
    pub fn method_label<'a>(&'a self, path: &str) -> &'a str {
        self.methods.get(path).map_or(OTHER_METHOD, String::as_str)
    }

    /// Counts one answered call.
    pub fn observe_rpc(&self, path: &str, code: i32, elapsed: Duration) {
        let method = self.method_label(path);
        // The family keys on `&'static str`: the known paths are leaked
        // once each (a fixed set, read from the descriptor at start).
        let labels = RpcLabels {
            method: static_method(method),
            code: code_name(code),
        };
        self.rpc_requests.get_or_create(&labels).inc();
        self.rpc_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a refusal (errors that are not refusals are ignored).
    pub fn observe_error(&self, err: &VaultError) {
        if let Some(reason) = RefusalReason::of(err) {
            self.refusals
                .get_or_create(&ReasonLabels {
                    reason: reason.as_str(),
                })
                .inc();
        }
    }

    /// Counts a deletion the journal could not take.
    pub fn shred_log_failed(&self) {
        self.shred_log_errors.inc();
    }

    /// Records a rewrap step.
    pub fn rewrap_progress(&self, phase: &'static str, done: u64, total: u64) {
        let l = PhaseLabels { phase };
        self.rewrap_done.get_or_create(&l).set(clamp_i64(done));
        self.rewrap_total.get_or_create(&l).set(clamp_i64(total));
    }

    /// Marks a rewrap as running (or not).
    pub fn rewrap_running(&self, running: bool) {
        self.rewrap_running.set(i64::from(running));
    }

    /// Brings the database gauges up to date with `read` unless they were
    /// read less than a second ago; a read that fails or passes its
    /// deadline is counted and the gauges keep their last values.
    pub async fn refresh<F>(&self, read: F)
    where
        F: std::future::Future<Output = Result<DatabaseGauges, VaultError>>,
    {
        let mut last = self.refreshed.lock().await;
        if last.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
            return;
        }
        match tokio::time::timeout(REFRESH_DEADLINE, read).await {
            Ok(Ok(g)) => self.set_database(&g),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading the database gauges for a scrape failed");
                self.scrape_errors.inc();
            }
            Err(_) => {
                tracing::warn!("reading the database gauges for a scrape timed out");
                self.scrape_errors.inc();
            }
        }
        *last = Some(Instant::now());
    }

    fn set_database(&self, g: &DatabaseGauges) {
        // Every registered partner has its entry (0 when its outbox is
        // empty), so each series is overwritten, never left stale.
        for (partner, depth, age) in &g.outbox {
            let l = PartnerLabels {
                partner: partner.clone(),
            };
            self.outbox_depth.get_or_create(&l).set(clamp_i64(*depth));
            self.outbox_age.get_or_create(&l).set(*age);
        }
        self.audit_unsequenced.set(clamp_i64(g.unsequenced_leaves));
        self.audit_tree_size.set(clamp_i64(g.tree_size));
        self.audit_checkpoint_age.set(g.checkpoint_age_secs);
        let busy = g.pool_open.saturating_sub(g.pool_idle);
        self.pool
            .get_or_create(&StateLabels { state: "busy" })
            .set(clamp_i64(busy));
        self.pool
            .get_or_create(&StateLabels { state: "idle" })
            .set(clamp_i64(g.pool_idle));
        self.pool_max.set(clamp_i64(g.pool_max));
        self.write_queue.set(clamp_i64(g.write_queue));
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The `/package.Service/Method` paths the server answers: idvault's own
/// services (from the compiled descriptor), health and reflection.
fn served_methods() -> HashSet<String> {
    use prost::Message;
    let mut out = HashSet::new();
    for bytes in [
        idvault_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ] {
        let Ok(set) = prost_types::FileDescriptorSet::decode(bytes) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for svc in file.service {
                let name = svc.name.unwrap_or_default();
                for m in svc.method {
                    out.insert(format!("/{package}.{name}/{}", m.name.unwrap_or_default()));
                }
            }
        }
    }
    for p in [
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ] {
        out.insert(p.to_owned());
    }
    out
}

/// A `&'static str` for one of the served method paths: each is leaked
/// once (the set is fixed at start, a few dozen strings), so the label
/// families can key on static strings.
fn static_method(method: &str) -> &'static str {
    static INTERNED: std::sync::OnceLock<std::sync::Mutex<HashSet<&'static str>>> =
        std::sync::OnceLock::new();
    if method == OTHER_METHOD {
        return OTHER_METHOD;
    }
    let set = INTERNED.get_or_init(Default::default);
    let mut set = set
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(s) = set.get(method) {
        return s;
    }
    let s: &'static str = Box::leak(method.to_owned().into_boxed_str());
    set.insert(s);
    s
}

/// The name of a gRPC status code (unknown numbers are `UNKNOWN`).
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn unknown_paths_share_one_label() {
        let m = Metrics::new(batch_histogram());
        assert_eq!(
            m.method_label("/idvault.v1.SubjectService/CreateSubject"),
            "/idvault.v1.SubjectService/CreateSubject"
        );
        assert_eq!(m.method_label("/evil/Path-with-PII@example.org"), "other");
        m.observe_rpc("/x/y", 0, Duration::from_millis(1));
        m.observe_rpc("/z/w", 99, Duration::from_millis(1));
        let text = m.encode();
        assert!(!text.contains("/x/y") && !text.contains("/z/w"));
        assert!(text.contains("idvault_rpc_requests_total{method=\"other\",code=\"OK\"} 1"));
        assert!(text.contains("method=\"other\",code=\"UNKNOWN\""));
    }

    #[test]
    fn refusals_by_reason() {
        let m = Metrics::new(batch_histogram());
        m.observe_error(&VaultError::RateLimited(1));
        m.observe_error(&VaultError::NotFound);
        let text = m.encode();
        assert!(
            text.contains("idvault_refusals_total{reason=\"rate_limit\"} 1"),
            "{text}"
        );
        assert!(!text.contains("NotFound"));
    }
}
