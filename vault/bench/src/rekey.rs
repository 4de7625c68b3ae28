//! `idvault bench rewrap`: rewrap throughput and what it costs the
//! requests served meanwhile (docs/BENCHMARKS.md, "Rewrap").
//!
//! Method: a vault on port 0 over real mTLS; `subjects` people created
//! through CreateSubject (4 matchable fields each); a baseline of
//! CreateSubject and Match on `connections` connections (half each) for
//! `seconds`; then the server stops, the root key rotates, it starts
//! again, and the rewrap runs in the server's process while the same load
//! runs until it ends. Reported: subjects/s of the rewrap (every phase
//! counted in the time), and each call's rate during the rewrap as a
//! ratio to its baseline.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use idvault_core::SystemRng;
use idvault_proto::v1::match_service_client::MatchServiceClient;
use idvault_proto::v1::subject_service_client::SubjectServiceClient;
use idvault_proto::v1::{CreateSubjectRequest, Field, MatchQuery, MatchRequest};
use idvault_server::config::{CONFIG_FILE, Config};
use idvault_server::service::{Caller, Vault};
use tonic::transport::Channel;

use crate::BenchError;
use crate::rpc::{Limit, Phase, closed_loop};
use crate::synth::{self, Person, Rng};

/// What to run.
#[derive(Debug, Clone)]
pub struct RewrapBenchOptions {
    /// People created before the rotation.
    pub subjects: usize,
    /// Concurrent mTLS connections of the load (half CreateSubject, half Match).
    pub connections: usize,
    /// Seconds of each baseline phase.
    pub seconds: f64,
    /// Database URL (default: SQLite in a temporary directory).
    pub database_url: Option<String>,
}

/// The figures of a run.
#[derive(Debug, Clone, Default)]
pub struct RewrapBenchReport {
    /// Backend label.
    pub backend: &'static str,
    /// People rewrapped.
    pub subjects: u64,
    /// Seconds creating them.
    pub load_secs: f64,
    /// Seconds of the whole rewrap (every phase).
    pub rewrap_secs: f64,
    /// Audit leaf MACs moved (every request before the rotation left one).
    pub leaves: u64,
    /// Baseline CreateSubject and Match.
    pub baseline: Vec<Phase>,
    /// The same calls while the rewrap ran.
    pub during: Vec<Phase>,
}

impl RewrapBenchReport {
    /// Subjects rewrapped per second.
    pub fn rate(&self) -> f64 {
        if self.rewrap_secs > 0.0 {
            self.subjects as f64 / self.rewrap_secs
        } else {
            0.0
        }
    }
}

struct Up {
    vault: Arc<Vault>,
    server: idvault_server::server::RunningServer,
}

async fn up(dir: &std::path::Path, url: &str) -> Result<Up, BenchError> {
    let cfg = Config::load(&dir.join(CONFIG_FILE))?;
    let loaded = idvault_server::app::load(&cfg, url).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = idvault_server::server::start(
        Arc::clone(&loaded.vault),
        Arc::clone(&loaded.tls),
        listener,
        loaded.options.clone(),
    )
    .await?;
    Ok(Up {
        vault: loaded.vault,
        server,
    })
}

async fn channels(dir: &std::path::Path, up: &Up, n: usize) -> Result<Vec<Channel>, BenchError> {
    let creds = idvault_client::PartnerCredentials::from_dir(&dir.join("tls"), "partner-a")?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            idvault_client::connect(&format!("https://{}", up.server.addr), "localhost", &creds)
                .await?,
        );
    }
    Ok(out)
}

fn fields(p: &Person) -> Vec<Field> {
    p.iter()
        .filter(|(n, _)| matches!(*n, "given_name" | "family_name" | "date_of_birth" | "email"))
        .map(|(n, v)| Field {
            name: (*n).to_owned(),
            value: v.clone(),
        })
        .collect()
}

/// CreateSubject on the first half of `chs`, Match on the second, until
/// `limit`.
async fn load(
    chs: &[Channel],
    people: &Arc<Vec<Person>>,
    limit: Limit,
) -> Result<Vec<Phase>, BenchError> {
    let half = (chs.len() / 2).max(1);
    let (creators, matchers) = chs.split_at(half.min(chs.len()));
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(1 << 40));
    let c = Arc::clone(&counter);
    let create = closed_loop("CreateSubject", creators, limit, move |ch, _, _| {
        let n = c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            SubjectServiceClient::new(ch)
                .create_subject(CreateSubjectRequest {
                    fields: vec![Field {
                        name: "email".into(),
                        value: format!("load{n}@example.org"),
                    }],
                })
                .await?;
            Ok(())
        }
    });
    let ps = Arc::clone(people);
    let query = closed_loop("Match", matchers, limit, move |ch, _, i| {
        let p = ps.get(i % ps.len().max(1)).map(fields).unwrap_or_default();
        async move {
            MatchServiceClient::new(ch)
                .r#match(MatchRequest {
                    query: Some(MatchQuery {
                        fields: p,
                        max_results: 1,
                        ..Default::default()
                    }),
                })
                .await?;
            Ok(())
        }
    });
    let (a, b) = tokio::join!(create, query);
    Ok(vec![a?.0, b?.0])
}

/// Runs the benchmark; `progress` hears what is under way.
#[allow(clippy::disallowed_methods)] // a benchmark measures wall time
pub async fn run(
    o: &RewrapBenchOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<RewrapBenchReport, BenchError> {
    let dir = crate::inprocess::dev_data_dir()?;
    // Matching at full speed: partner-a's match rate limit lifted.
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path)?.replace(
        "name = \"partner-a\"\n",
        "name = \"partner-a\"\nmatch_queries_per_second = 1000000\nmatch_burst = 1000000\n",
    );
    std::fs::write(&path, text)?;
    let cfg = Config::load(&path)?;
    let url = o.database_url.clone().unwrap_or_else(|| cfg.database_url());
    let conns = o.connections.max(2);

    let first = up(&dir, &url).await?;
    let mut report = RewrapBenchReport {
        backend: match first.vault.store().backend() {
            idvault_server::store::Backend::Sqlite => "SQLite",
            idvault_server::store::Backend::Postgres => "PostgreSQL",
        },
        ..RewrapBenchReport::default()
    };
    let chs = channels(&dir, &first, conns).await?;
    let mut rng = Rng::new(0x5eed_4e3a);
    let people: Arc<Vec<Person>> =
        Arc::new((0..o.subjects).map(|_| synth::person(&mut rng)).collect());
    progress(&format!("creating {} people", o.subjects));
    let t = Instant::now();
    let ps = Arc::clone(&people);
    let (created, _) = closed_loop(
        "CreateSubject",
        &chs,
        Limit::Count(o.subjects),
        move |ch, _, i| {
            let f = ps.get(i).map(fields).unwrap_or_default();
            async move {
                SubjectServiceClient::new(ch)
                    .create_subject(CreateSubjectRequest { fields: f })
                    .await?;
                Ok(())
            }
        },
    )
    .await?;
    report.load_secs = t.elapsed().as_secs_f64();
    if created.errors > 0 {
        return Err(format!("creating people: {:?}", created.first_error).into());
    }
    progress("baseline");
    let until = Instant::now() + std::time::Duration::from_secs_f64(o.seconds);
    report.baseline = load(&chs, &people, Limit::Until(until)).await?;
    drop(chs);
    first.server.shutdown().await?;
    first.vault.store().close().await;

    idvault_server::keyfile::rotate(&dir.join("root.key"), None, &SystemRng::default(), &[])?;
    let second = up(&dir, &url).await?;
    let chs = channels(&dir, &second, conns).await?;
    progress("rewrap under load");
    let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    let vault = Arc::clone(&second.vault);
    let t = Instant::now();
    let rewrap = tokio::spawn(async move {
        let r = vault.rewrap(&Caller::new("idvault-bench"), |_| {}).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        r
    });
    report.during = load(&chs, &people, Limit::While(stop)).await?;
    let r = rewrap.await??;
    report.rewrap_secs = t.elapsed().as_secs_f64();
    report.subjects = r.subjects;
    report.leaves = r.leaves;
    drop(chs);
    second.server.shutdown().await?;
    second.vault.store().close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}
