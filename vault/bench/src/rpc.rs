//! `idvault bench rpc`: RPC throughput over real mTLS against an
//! in-process vault, in one run, each call against the no-op baseline.
//!
//! A vault is served on port 0 from a fresh development data directory
//! (dev PKI; SQLite in that directory unless a database URL is given).
//! Partner-a's match rate limit is lifted (as in `idvault bench match`) so
//! the Match phase measures the vault, not the limiter. `subjects`
//! synthetic people are created first through CreateSubject over the same
//! connections (not timed as a phase: the store's benchmark loader writes
//! index rows without subject rows, and Match no longer answers with a
//! subject that has no row). Then `connections` mTLS connections, one call
//! in flight on each, run these phases one after another, each for
//! `seconds` or `count` calls:
//!
//! 1. `grpc.health.v1.Health/Check`: the no-op baseline (TLS, HTTP/2,
//!    tonic; no vault work);
//! 2. `CreateSubject`, 3 fields (given_name, family_name, email): packets
//!    sealed, blind-index rows written for every match domain, the
//!    creating partner's pairwise token, one audit leaf, one commit;
//! 3. unary `Match` with every field of a pre-created person (queries that
//!    hit; a hit is a best answer carrying the token CreateSubject gave);
//! 4. a full consented release: `RequestChallenge`, the enrolled device
//!    signs a single-use grant of 4 fields, `Release` (verify, claim,
//!    decrypt, HPKE seal, receipt, audit). One subject and device per
//!    connection. Every release is opened by the partner afterwards.
//!
//! Then, once every audit leaf has been sequenced, the checkpoint lag of
//! the CreateSubject phase's leaves: the `time_ms` of the first checkpoint
//! whose tree size exceeds the leaf's index, minus the leaf's `time_ms`.
//! Last, the subjects in the store are counted against the acknowledged
//! creates (every answered create must be durable).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idvault_client::device::{DeviceKey, GrantRequest, unix_now};
use idvault_client::{PartnerCredentials, ReleaseKey};
use idvault_core::SystemRng;
use idvault_core::subject::SubjectId;
use idvault_proto::v1::consent_service_client::ConsentServiceClient;
use idvault_proto::v1::device_service_client::DeviceServiceClient;
use idvault_proto::v1::match_service_client::MatchServiceClient;
use idvault_proto::v1::subject_service_client::SubjectServiceClient;
use idvault_proto::v1::{
    CreateSubjectRequest, Field, IssueEnrollmentCodeRequest, MatchQuery, MatchRequest,
    ReleaseRequest, ReleaseResponse, RequestChallengeRequest, release_request,
};
use idvault_server::config::{CONFIG_FILE, Config};
use idvault_server::service::Vault;
use tonic::transport::Channel;

use crate::BenchError;
use crate::cpu::{CpuMark, CpuUse};
use crate::synth::{self, Person, Rng};

/// Partner whose identity the benchmark uses.
const PARTNER: &str = "partner-a";
/// Fields of the release subjects, all consented in each grant.
const RELEASED: &[(&str, &str)] = &[
    ("given_name", "Amélie"),
    ("family_name", "Okonkwo-Lindqvist"),
    ("date_of_birth", "1987-11-02"),
    ("email", "amelie.ol@example.org"),
];

/// What to run.
#[derive(Debug, Clone)]
pub struct RpcBenchOptions {
    /// Concurrent mTLS connections (one call in flight on each).
    pub connections: usize,
    /// Seconds per phase (when `count` is not given).
    pub seconds: f64,
    /// Calls per phase instead of a duration.
    pub count: Option<usize>,
    /// People loaded into the match index before the run.
    pub subjects: usize,
    /// Database URL (default: SQLite in a temporary directory).
    pub database_url: Option<String>,
}

/// One phase's figures.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    /// Call name.
    pub name: &'static str,
    /// Calls answered successfully.
    pub ok: usize,
    /// Calls that failed.
    pub errors: usize,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// Wall time of the phase.
    pub secs: f64,
    /// Sorted latencies of the successful calls.
    pub latency: Vec<Duration>,
    /// CPU used while the phase ran (Linux only).
    pub cpu: Option<CpuUse>,
}

impl Phase {
    /// Successful calls per second.
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ok as f64 / self.secs
        } else {
            0.0
        }
    }

    /// The `p` quantile of latency.
    pub fn quantile(&self, p: f64) -> Duration {
        quantile(&self.latency, p)
    }
}

/// The `p` quantile of sorted `xs`.
pub fn quantile<T: Copy + Default>(xs: &[T], p: f64) -> T {
    let i = ((xs.len() as f64 * p) as usize).min(xs.len().saturating_sub(1));
    xs.get(i).copied().unwrap_or_default()
}

/// The figures of a run.
#[derive(Debug, Clone, Default)]
pub struct RpcReport {
    /// Backend label.
    pub backend: &'static str,
    /// Connections.
    pub connections: usize,
    /// People created before the phases (the Match phase queries them).
    pub subjects_loaded: usize,
    /// Seconds creating them (16 connections).
    pub load_secs: f64,
    /// Health check (baseline), CreateSubject, Match, Release, in order.
    pub phases: Vec<Phase>,
    /// Match answers whose best candidate is the queried person (the
    /// pairwise token CreateSubject returned for them).
    pub match_hits: usize,
    /// Sorted latencies of the Release RPC alone (the release phase times
    /// RequestChallenge + signature + Release).
    pub release_rpc: Vec<Duration>,
    /// Releases opened by the partner with the 4 consented fields.
    pub releases_opened: usize,
    /// Mean partner-side open time.
    pub open_mean: Duration,
    /// Seconds from the end of the last phase until no leaf was waiting
    /// for an index.
    pub sequenced_wait_secs: f64,
    /// Sorted checkpoint lags (ms) of the CreateSubject phase's leaves.
    pub lag_ms: Vec<i64>,
    /// Checkpoints published during the whole run.
    pub checkpoints: usize,
    /// CreateSubject calls acknowledged (pre-load, phase 2 and the
    /// release set-up).
    pub creates_acknowledged: usize,
    /// Subjects in the store at the end.
    pub subjects_stored: usize,
}

impl RpcReport {
    /// The baseline phase.
    pub fn baseline(&self) -> Option<&Phase> {
        self.phases.first()
    }

    /// A phase's rate divided by the baseline's.
    pub fn ratio(&self, p: &Phase) -> f64 {
        self.baseline().map_or(0.0, |b| {
            if b.rate() > 0.0 {
                p.rate() / b.rate()
            } else {
                0.0
            }
        })
    }

    /// Whether every acknowledged create is in the store.
    pub fn durable(&self) -> bool {
        self.subjects_stored == self.creates_acknowledged
    }
}

impl std::fmt::Display for RpcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "RPCs over mTLS, {}, {} connections (one call in flight each); {} people created for Match first ({:.1} s)",
            self.backend, self.connections, self.subjects_loaded, self.load_secs
        )?;
        writeln!(
            f,
            "{:<34} {:>9} {:>10} {:>10} {:>10} {:>9} {:>7}",
            "call", "calls", "RPC/s", "p50", "p99", "ratio", "errors"
        )?;
        for p in &self.phases {
            writeln!(
                f,
                "{:<34} {:>9} {:>10.0} {:>10} {:>10} {:>9.3} {:>7}",
                p.name,
                p.ok,
                p.rate(),
                format!("{:.2?}", p.quantile(0.5)),
                format!("{:.2?}", p.quantile(0.99)),
                self.ratio(p),
                p.errors
            )?;
            if let Some(e) = &p.first_error {
                writeln!(f, "  first error: {e}")?;
            }
        }
        if let Some(m) = self.phases.get(2) {
            writeln!(
                f,
                "  Match: best answer right (CreateSubject's token) for {} of {}",
                self.match_hits, m.ok
            )?;
        }
        writeln!(
            f,
            "  Release RPC alone: p50 {:.2?}  p99 {:.2?}; {} releases opened by the partner ({:.2?} each)",
            quantile(&self.release_rpc, 0.5),
            quantile(&self.release_rpc, 0.99),
            self.releases_opened,
            self.open_mean
        )?;
        writeln!(
            f,
            "CPU (whole machine, every process; ceiling = its cores at that CPU per call):"
        )?;
        for p in &self.phases {
            if let Some(c) = &p.cpu {
                writeln!(f, "  {:<32} {}", p.name, c.summary(p.ok))?;
            }
        }
        writeln!(
            f,
            "checkpoint lag of {} CreateSubject leaves: p50 {} ms  p99 {} ms  max {} ms  ({} checkpoints; all leaves sequenced {:.1} s after the last phase)",
            self.lag_ms.len(),
            quantile(&self.lag_ms, 0.5),
            quantile(&self.lag_ms, 0.99),
            self.lag_ms.last().copied().unwrap_or_default(),
            self.checkpoints,
            self.sequenced_wait_secs
        )?;
        writeln!(
            f,
            "durability: {} subjects stored, {} creates acknowledged: {}",
            self.subjects_stored,
            self.creates_acknowledged,
            if self.durable() { "ok" } else { "MISMATCH" }
        )
    }
}

/// `grpc.health.v1.HealthCheckRequest` (the bench crate does not depend
/// on tonic-health; this is the same call on the wire).
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    /// 1 is SERVING.
    #[prost(int32, tag = "1")]
    status: i32,
}

/// One `grpc.health.v1.Health/Check` of the whole server; fails unless
/// it answers SERVING.
pub(crate) async fn health_check(ch: Channel) -> Result<(), BenchError> {
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await?;
    let codec =
        idvault_proto::codec::StrictProstCodec::<HealthCheckRequest, HealthCheckResponse>::default(
        );
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check");
    let r = grpc
        .unary(
            tonic::Request::new(HealthCheckRequest::default()),
            path,
            codec,
        )
        .await?;
    if r.into_inner().status != 1 {
        return Err("health check: not SERVING".into());
    }
    Ok(())
}

/// The vault and its server, with partner-a's match rate limit and the
/// per-device digital-ID cap lifted.
pub(crate) struct Served {
    dir: std::path::PathBuf,
    pub(crate) vault: Arc<Vault>,
    server: idvault_server::server::RunningServer,
}

impl Served {
    pub(crate) async fn start(database_url: Option<String>) -> Result<Self, BenchError> {
        let dir = crate::inprocess::dev_data_dir()?;
        let path = dir.join(CONFIG_FILE);
        // The credential phases issue thousands of digital IDs to each of
        // a few devices: the per-device cap is lifted too, so they measure
        // issuance and not the cap.
        let text = std::fs::read_to_string(&path)?
            .replace(
                &format!("name = \"{PARTNER}\"\n"),
                &format!(
                    "name = \"{PARTNER}\"\nmatch_queries_per_second = 1000000\nmatch_burst = 1000000\n"
                ),
            )
            .replacen(
                "[[partner]]",
                "[credentials]\nmax_per_device = 4000000000\n\n[[partner]]",
                1,
            );
        std::fs::write(&path, text)?;
        let cfg = Config::load(&path)?;
        let url = database_url.unwrap_or_else(|| cfg.database_url());
        let loaded = idvault_server::app::load(&cfg, &url).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let server = idvault_server::server::start(
            Arc::clone(&loaded.vault),
            Arc::clone(&loaded.tls),
            listener,
            loaded.options.clone(),
        )
        .await?;
        Ok(Self {
            dir,
            vault: loaded.vault,
            server,
        })
    }

    pub(crate) async fn channel(&self, name: &str) -> Result<Channel, BenchError> {
        let creds = PartnerCredentials::from_dir(&self.dir.join("tls"), name)?;
        Ok(idvault_client::connect(
            &format!("https://{}", self.server.addr),
            "localhost",
            &creds,
        )
        .await?)
    }

    pub(crate) async fn stop(self) -> Result<(), BenchError> {
        self.server.shutdown().await?;
        self.vault.store().close().await;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

/// Milliseconds since the epoch (the clock the vault stamps leaves with).
fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// When a phase ends.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Limit {
    Count(usize),
    Until(Instant),
    /// Until the flag is set.
    While(&'static std::sync::atomic::AtomicBool),
}

/// Runs `f(channel, worker, i)` on every channel, one call at a time each,
/// with `i` counting calls across workers, until `limit`. Returns the
/// phase and the successful calls' outputs.
pub(crate) async fn closed_loop<T, F, Fut>(
    name: &'static str,
    channels: &[Channel],
    limit: Limit,
    f: F,
) -> Result<(Phase, Vec<T>), BenchError>
where
    T: Send + 'static,
    F: Fn(Channel, usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, BenchError>> + Send + 'static,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let cpu = CpuMark::now();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (w, ch) in channels.iter().enumerate() {
        let (f, next, ch) = (Arc::clone(&f), Arc::clone(&next), ch.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut out, mut errors, mut first) = (Vec::new(), Vec::new(), 0, None);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                match limit {
                    Limit::Count(n) if i >= n => break,
                    Limit::Until(end) if Instant::now() >= end => break,
                    Limit::While(stop) if stop.load(Ordering::Relaxed) => break,
                    _ => {}
                }
                let s = Instant::now();
                match f(ch.clone(), w, i).await {
                    Ok(v) => {
                        lat.push(s.elapsed());
                        out.push(v);
                    }
                    Err(e) => {
                        errors += 1;
                        first.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            (lat, out, errors, first)
        }));
    }
    let mut phase = Phase {
        name,
        ..Phase::default()
    };
    let mut outs = Vec::new();
    for task in tasks {
        let (lat, out, errors, first) = task.await?;
        phase.latency.extend(lat);
        outs.extend(out);
        phase.errors += errors;
        if phase.first_error.is_none() {
            phase.first_error = first;
        }
    }
    phase.secs = t.elapsed().as_secs_f64();
    phase.cpu = cpu.since();
    phase.ok = phase.latency.len();
    phase.latency.sort();
    Ok((phase, outs))
}

fn field(name: &str, value: impl Into<String>) -> Field {
    Field {
        name: name.to_owned(),
        value: value.into(),
    }
}

/// A release subject with its enrolled device.
pub(crate) struct Holder {
    pub(crate) subject: String,
    /// The creating partner's pairwise token for the person.
    pub(crate) pairwise: String,
    pub(crate) device: DeviceKey,
}

/// Creates one subject per connection over RPC and enrolls a device to
/// each (enrollment code from the partner, enrollment from the wallet).
pub(crate) async fn holders(
    served: &Served,
    partner: &Channel,
    n: usize,
) -> Result<Vec<Holder>, BenchError> {
    let rng = SystemRng::default();
    let wallet = served.channel("wallet").await?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let fields = RELEASED.iter().map(|(n, v)| field(n, *v)).collect();
        let created = SubjectServiceClient::new(partner.clone())
            .create_subject(CreateSubjectRequest { fields })
            .await?
            .into_inner();
        let (subject, pairwise) = (created.subject_id, created.pairwise_token);
        let code = ConsentServiceClient::new(partner.clone())
            .issue_enrollment_code(IssueEnrollmentCodeRequest {
                subject_id: subject.clone(),
            })
            .await?
            .into_inner()
            .enrollment_code;
        let device = DeviceKey::generate(&rng)?;
        DeviceServiceClient::new(wallet.clone())
            .enroll(device.enrollment(&subject, &code)?)
            .await?;
        out.push(Holder {
            subject,
            pairwise,
            device,
        });
    }
    Ok(out)
}

/// Runs the benchmark; `progress` hears what is under way.
pub async fn run(
    o: &RpcBenchOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<RpcReport, BenchError> {
    let served = Served::start(o.database_url.clone()).await?;
    let result = phases(o, &served, progress).await;
    let stopped = served.stop().await;
    let report = result?;
    stopped?;
    Ok(report)
}

async fn phases(
    o: &RpcBenchOptions,
    served: &Served,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<RpcReport, BenchError> {
    let vault = &served.vault;
    let mut r = RpcReport {
        backend: match vault.store().backend() {
            idvault_server::store::Backend::Sqlite => "SQLite",
            idvault_server::store::Backend::Postgres => "PostgreSQL",
        },
        connections: o.connections.max(1),
        subjects_loaded: o.subjects,
        ..RpcReport::default()
    };
    let mut channels = Vec::with_capacity(r.connections);
    for _ in 0..r.connections {
        channels.push(served.channel(PARTNER).await?);
    }

    // The people Match will look for, created through the real write path
    // (a subject without its row is never an answer).
    progress(&format!(
        "creating {} people for the Match phase",
        o.subjects
    ));
    let mut rng = Rng::new(1);
    let people: Arc<Vec<Person>> =
        Arc::new((0..o.subjects).map(|_| synth::person(&mut rng)).collect());
    let (p, created) = {
        let people = Arc::clone(&people);
        closed_loop(
            "pre-load",
            &channels,
            Limit::Count(o.subjects),
            move |ch, _, i| {
                let people = Arc::clone(&people);
                async move {
                    let p = people.get(i).ok_or("person")?;
                    let fields = p.iter().map(|(n, v)| field(n, v.clone())).collect();
                    let token = SubjectServiceClient::new(ch)
                        .create_subject(CreateSubjectRequest { fields })
                        .await?
                        .into_inner()
                        .pairwise_token;
                    Ok::<_, BenchError>((p.clone(), token))
                }
            },
        )
        .await?
    };
    if let Some(e) = p.first_error {
        return Err(format!("creating the Match phase's people: {e}").into());
    }
    r.load_secs = p.secs;
    r.creates_acknowledged += p.ok;
    let targets = Arc::new(created);
    let limit = || match o.count {
        Some(n) => Limit::Count(n),
        None => Limit::Until(Instant::now() + Duration::from_secs_f64(o.seconds)),
    };

    progress("phase 1 of 4: health Check (baseline)");
    let (p, _) = closed_loop("Health/Check (baseline)", &channels, limit(), |ch, _, _| {
        health_check(ch)
    })
    .await?;
    r.phases.push(p);

    progress("phase 2 of 4: CreateSubject");
    let create_start = now_ms();
    let (p, _) = closed_loop(
        "CreateSubject (3 fields)",
        &channels,
        limit(),
        |ch, w, i| async move {
            let req = CreateSubjectRequest {
                fields: vec![
                    field("given_name", format!("Given{w}x{i}")),
                    field("family_name", "Benchmark"),
                    field("email", format!("p{w}x{i}@example.org")),
                ],
            };
            SubjectServiceClient::new(ch).create_subject(req).await?;
            Ok::<(), BenchError>(())
        },
    )
    .await?;
    let create_end = now_ms();
    r.creates_acknowledged += p.ok;
    r.phases.push(p);

    progress("phase 3 of 4: Match");
    let (p, hits) = {
        let targets = Arc::clone(&targets);
        closed_loop(
            "Match (unary, hits)",
            &channels,
            limit(),
            move |ch, _, i| {
                let targets = Arc::clone(&targets);
                async move {
                    let (p, token) = targets
                        .get(i % targets.len().max(1))
                        .ok_or("no people created (--subjects 0)")?;
                    let query = MatchQuery {
                        fields: p.iter().map(|(n, v)| field(n, v.clone())).collect(),
                        max_results: 1,
                        ..MatchQuery::default()
                    };
                    let a = MatchServiceClient::new(ch)
                        .r#match(MatchRequest { query: Some(query) })
                        .await?
                        .into_inner();
                    let best = a.candidates.first().map(|c| c.pairwise_token.as_str());
                    Ok::<bool, BenchError>(best == Some(token.as_str()))
                }
            },
        )
        .await?
    };
    r.match_hits = hits.into_iter().filter(|h| *h).count();
    r.phases.push(p);

    progress("phase 4 of 4: consented Release (set-up: subjects, devices)");
    let holders = Arc::new(
        holders(
            served,
            channels.first().ok_or("no connection")?,
            r.connections,
        )
        .await?,
    );
    r.creates_acknowledged += holders.len();
    let audience = format!(
        "spiffe://{}/partner/{PARTNER}",
        idvault_server::devinit::DEV_TRUST_DOMAIN
    );
    progress("phase 4 of 4: consented Release");
    let (p, released) = {
        let holders = Arc::clone(&holders);
        closed_loop(
            "Release (challenge+grant+release)",
            &channels,
            limit(),
            move |ch, w, _| {
                let (holders, audience) = (Arc::clone(&holders), audience.clone());
                async move {
                    let h = holders.get(w).ok_or("holder")?;
                    let mut c = ConsentServiceClient::new(ch);
                    let challenge = c
                        .request_challenge(RequestChallengeRequest {
                            subject_id: h.subject.clone(),
                        })
                        .await?
                        .into_inner()
                        .challenge;
                    let now = unix_now();
                    let signed = h.device.sign_grant(
                        &GrantRequest {
                            subject_id: h.subject.clone(),
                            audience,
                            purpose: "kyc".into(),
                            fields: RELEASED.iter().map(|(n, _)| (*n).to_owned()).collect(),
                            challenge,
                            issued_at: now,
                            expires_at: now + 300,
                            standing: false,
                        },
                        &SystemRng::default(),
                    )?;
                    let nonce = idvault_client::release_nonce(&SystemRng::default())?;
                    let t = Instant::now();
                    let resp = c
                        .release(ReleaseRequest {
                            consent: Some(release_request::Consent::Signed(signed)),
                            nonce: nonce.to_vec(),
                        })
                        .await?
                        .into_inner();
                    Ok::<(ReleaseResponse, Duration, String, [u8; 16]), BenchError>((
                        resp,
                        t.elapsed(),
                        h.subject.clone(),
                        nonce,
                    ))
                }
            },
        )
        .await?
    };
    r.phases.push(p);
    let last_phase_end = Instant::now();

    progress("opening the releases");
    let key = ReleaseKey::from_pem(&std::fs::read_to_string(
        served.dir.join(format!("tls/{PARTNER}.release.key")),
    )?)?;
    // The partner trusts the vault's release keys (as `init --dev` wrote them).
    let verifier = idvault_client::ReleaseVerifier::from_text(&std::fs::read_to_string(
        served
            .dir
            .join("tls")
            .join(idvault_server::devinit::RELEASE_VERIFIER_FILE),
    )?)?;
    let t = Instant::now();
    for (resp, _, subject, nonce) in &released {
        let expected = idvault_client::Expected {
            subject: Some(subject),
            consent_id: None,
            nonce,
        };
        if key.open(resp, &expected, &verifier)?.len() != RELEASED.len() {
            return Err("a release did not hold the consented fields".into());
        }
        r.releases_opened += 1;
    }
    r.open_mean = t.elapsed() / u32::try_from(released.len().max(1)).unwrap_or(u32::MAX);
    r.release_rpc = released.iter().map(|(_, d, _, _)| *d).collect();
    r.release_rpc.sort();

    progress("waiting for every audit leaf to be sequenced");
    let store = vault.store();
    loop {
        if store.unsequenced_leaves(i64::MIN, 1).await?.is_empty() {
            break;
        }
        if last_phase_end.elapsed() > Duration::from_secs(120) {
            return Err("audit leaves still unsequenced 120 s after the last phase".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r.sequenced_wait_secs = last_phase_end.elapsed().as_secs_f64();

    progress("checkpoint lag and durability");
    // Every checkpoint, by size.
    let mut checkpoints: Vec<(u64, i64)> = Vec::new();
    loop {
        let after = checkpoints.last().map_or(0, |c| c.0);
        let page = store.checkpoints_after(after, 1000).await?;
        if page.is_empty() {
            break;
        }
        checkpoints.extend(page.iter().map(|c| (c.size, c.time_ms)));
    }
    r.checkpoints = checkpoints.len();
    // The CreateSubject phase's leaves, by tree index.
    let create = idvault_policies::Action::CreateSubject.name();
    let mut from = 0;
    loop {
        let page = store.leaves_from(from, 5000).await?;
        let Some(last) = page.last() else { break };
        from = last.idx.map_or(u64::MAX, |i| i + 1);
        for l in &page {
            let (t, Some(idx)) = (l.columns.time_ms, l.idx) else {
                continue;
            };
            if l.columns.action != create || t < create_start || t > create_end {
                continue;
            }
            let first = checkpoints.partition_point(|c| c.0 <= idx);
            let cp = checkpoints
                .get(first)
                .ok_or("a sequenced leaf is in no checkpoint")?;
            r.lag_ms.push(cp.1 - t);
        }
    }
    r.lag_ms.sort_unstable();
    // Every subject row.
    let mut after: Option<SubjectId> = None;
    loop {
        let page = store.subject_ids_after(after.as_ref(), 10_000).await?;
        let Some(last) = page.last() else { break };
        after = Some(*last);
        r.subjects_stored += page.len();
    }
    Ok(r)
}
