//! `idvault bench consent`: consent verifications per second and full
//! consented releases per second, in process.
//!
//! Verifications: what the vault does to a signed grant before touching
//! the store — ECDSA P-256 / SHA-256 verification with the low-S rule over
//! the context and the exact bytes, canonical decoding and validation, the
//! window check — on one thread. Baseline, same run and bytes: the bare
//! `p256` verification alone.
//!
//! Releases: a scratch vault (SQLite in a temporary directory unless a
//! database URL is given) holds one subject with eight fields and one
//! enrolled device. `count` challenges are requested, the device signs a
//! single-use grant for each (not timed: that is the phone's work), then
//! `count` releases are presented. The figure is `count` divided by the
//! time of the two vault phases: each challenge is an audited transaction;
//! each release verifies, claims the consent id and the challenge,
//! decrypts the subject's packets, seals the consented fields with HPKE,
//! and writes the receipt and the audit record in one transaction. Both
//! phases run `concurrency` callers at a time. The partner's HPKE open is
//! timed separately.

use std::sync::Arc;
use std::time::{Duration, Instant};

use p256::ecdsa::signature::Verifier;

use crate::BenchError;
use idvault_client::ReleaseKey;
use idvault_client::device::{DeviceKey, GrantRequest, unix_now};
use idvault_core::SystemRng;
use idvault_core::consent::{ConsentLimits, DevicePublicKey, GRANT_CONTEXT};
use idvault_core::wire::decode_grant;
use idvault_server::service::consent::{ReleaseInput, Signed};
use idvault_server::service::{Caller, Vault};

/// What to run.
#[derive(Debug, Clone)]
pub struct ConsentBenchOptions {
    /// Releases (and challenges).
    pub count: usize,
    /// Grant verifications in the in-memory run.
    pub verifications: usize,
    /// Concurrent callers in the release run.
    pub concurrency: usize,
    /// Database URL (default: SQLite in a temporary directory).
    pub database_url: Option<String>,
}

/// The figures.
#[derive(Debug, Clone, Default)]
pub struct ConsentReport {
    /// Grant verifications per second (one thread).
    pub verifications_per_sec: f64,
    /// Bare p256 verifications per second (one thread).
    pub baseline_per_sec: f64,
    /// Full releases per second (challenge + release).
    pub releases_per_sec: f64,
    /// Challenges per second on their own.
    pub challenges_per_sec: f64,
    /// Sorted latencies of single releases (under `concurrency`).
    pub release_latency: Vec<Duration>,
    /// Mean partner-side open time.
    pub open_mean: Duration,
    /// Backend label.
    pub backend: &'static str,
}

impl ConsentReport {
    /// The `p` quantile of release latency.
    pub fn quantile(&self, p: f64) -> Duration {
        let n = self.release_latency.len();
        let i = ((n as f64 * p) as usize).min(n.saturating_sub(1));
        self.release_latency.get(i).copied().unwrap_or_default()
    }
}

const PERSON: &[(&str, &str)] = &[
    ("given_name", "Amélie"),
    ("middle_name", "Jeanne"),
    ("family_name", "Okonkwo-Lindqvist"),
    ("date_of_birth", "1987-11-02"),
    ("national_id", "QQ123456C"),
    ("email", "amelie.ol@example.org"),
    ("phone", "+44 7700 900456"),
    ("postcode", "SW1A 1AA"),
];

fn caller(name: &str) -> Caller {
    Caller::new(format!(
        "spiffe://{}/partner/{name}",
        idvault_server::devinit::DEV_TRUST_DOMAIN
    ))
}

fn grant(subject: &str, challenge: Vec<u8>) -> GrantRequest {
    let now = unix_now();
    GrantRequest {
        subject_id: subject.to_owned(),
        audience: caller("partner-a").spiffe_id,
        purpose: "kyc".into(),
        fields: vec![
            "given_name".into(),
            "family_name".into(),
            "date_of_birth".into(),
            "email".into(),
        ],
        challenge,
        issued_at: now,
        expires_at: now + 300,
        standing: false,
    }
}

/// The in-memory verification run and its baseline.
pub fn verifications(n: usize) -> Result<(f64, f64), BenchError> {
    let rng = SystemRng::default();
    let device = DeviceKey::generate(&rng)?;
    let key = DevicePublicKey::from_sec1(&device.public_key())?;
    let s = device.sign_grant(
        &grant("6f1c2b9e-8a41-4d3c-9b7e-2a5f0c1d3e4f", vec![1; 32]),
        &rng,
    )?;
    let limits = ConsentLimits::default();
    let now = unix_now();
    let n = n.max(1);
    let t = Instant::now();
    for _ in 0..n {
        key.verify(GRANT_CONTEXT, &s.grant, &s.signature)?;
        let g = decode_grant(&s.grant)?;
        g.check_window(now, &limits)?;
        std::hint::black_box(g);
    }
    let ours = n as f64 / t.elapsed().as_secs_f64();
    let mut whole = GRANT_CONTEXT.to_vec();
    whole.extend_from_slice(&s.grant);
    let sig = p256::ecdsa::Signature::from_slice(&s.signature)?;
    let vk = *key.verifying_key();
    let t = Instant::now();
    for _ in 0..n {
        vk.verify(std::hint::black_box(&whole), &sig)?;
    }
    let base = n as f64 / t.elapsed().as_secs_f64();
    Ok((ours, base))
}

/// Runs `f(i)` for `0..n` with `c` at a time; returns per-call durations.
async fn fan_out<T, F, Fut>(n: usize, c: usize, f: F) -> Result<Vec<(T, Duration)>, BenchError>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, BenchError>> + Send + 'static,
{
    let f = Arc::new(f);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..c.max(1) {
        let (f, next) = (Arc::clone(&f), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                let v = f(i).await?;
                out.push((i, v, t.elapsed()));
            }
            Ok::<_, BenchError>(out)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_by_key(|(i, _, _)| *i);
    Ok(all.into_iter().map(|(_, v, d)| (v, d)).collect())
}

/// The full run.
pub async fn run(o: &ConsentBenchOptions) -> Result<ConsentReport, BenchError> {
    let (verifications_per_sec, baseline_per_sec) = verifications(o.verifications)?;
    let dir = crate::inprocess::dev_data_dir()?;
    let cfg = idvault_server::config::Config::load(&dir.join(idvault_server::config::CONFIG_FILE))?;
    let url = o.database_url.clone().unwrap_or_else(|| cfg.database_url());
    let backend = if url.starts_with("sqlite:") {
        "SQLite"
    } else {
        "PostgreSQL"
    };
    let vault: Arc<Vault> = idvault_server::app::load(&cfg, &url).await?.vault;
    let result = releases(o, &vault, &dir).await;
    vault.store().close().await;
    let _ = std::fs::remove_dir_all(&dir);
    let (releases_per_sec, challenges_per_sec, release_latency, open_mean) = result?;
    Ok(ConsentReport {
        verifications_per_sec,
        baseline_per_sec,
        releases_per_sec,
        challenges_per_sec,
        release_latency,
        open_mean,
        backend,
    })
}

type ReleaseFigures = (f64, f64, Vec<Duration>, Duration);

async fn releases(
    o: &ConsentBenchOptions,
    vault: &Arc<Vault>,
    dir: &std::path::Path,
) -> Result<ReleaseFigures, BenchError> {
    let rng = SystemRng::default();
    let partner = caller("partner-a");
    let fields = PERSON
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    let subject = vault
        .create_subject(&partner, fields)
        .await?
        .subject
        .to_string();
    let (code, _) = vault.issue_enrollment_code(&partner, &subject).await?;
    let device = DeviceKey::generate(&rng)?;
    let e = device.enrollment(&subject, &code)?;
    vault
        .enroll_device(&caller("wallet"), &e.enrollment, &e.signature)
        .await?;

    let n = o.count.max(1);
    let t = Instant::now();
    let challenges = {
        let (vault, partner, subject) = (Arc::clone(vault), partner.clone(), subject.clone());
        fan_out(n, o.concurrency, move |_| {
            let (vault, partner, subject) = (Arc::clone(&vault), partner.clone(), subject.clone());
            async move { Ok(vault.issue_challenge(&partner, &subject).await?.0) }
        })
        .await?
    };
    let challenge_secs = t.elapsed().as_secs_f64();
    let signed = challenges
        .into_iter()
        .map(|(ch, _)| device.sign_grant(&grant(&subject, ch.to_vec()), &rng))
        .collect::<Result<Vec<_>, _>>()?;
    let signed = Arc::new(signed);
    let t = Instant::now();
    let released = {
        let (vault, partner, signed) = (Arc::clone(vault), partner.clone(), Arc::clone(&signed));
        fan_out(n, o.concurrency, move |i| {
            let (vault, partner, signed) =
                (Arc::clone(&vault), partner.clone(), Arc::clone(&signed));
            async move {
                let s = signed.get(i).ok_or("index")?;
                let input = ReleaseInput::Grant(Signed {
                    bytes: s.grant.clone(),
                    signature: s.signature.clone(),
                    device_id: s.device_id.clone(),
                });
                Ok(vault.release(&partner, input, &[]).await?)
            }
        })
        .await?
    };
    let release_secs = t.elapsed().as_secs_f64();
    // The partner's side: open every release.
    let key = ReleaseKey::from_pem(&std::fs::read_to_string(
        dir.join("tls/partner-a.release.key"),
    )?)?;
    let verifier = vault.release_verifier()?;
    let t = Instant::now();
    for (r, _) in &released {
        let resp = idvault_proto::v1::ReleaseResponse {
            consent_id: r.consent_id.to_vec(),
            subject_id: r.subject.to_string(),
            enc: r.enc.clone(),
            ciphertext: r.ciphertext.clone(),
            receipt_id: r.receipt_id.clone(),
            grant_hash: r.grant_hash.to_vec(),
            signature: r.signature.clone(),
        };
        let expected = idvault_client::Expected {
            subject: Some(&subject),
            consent_id: Some(&r.consent_id),
            nonce: &[],
        };
        if key.open(&resp, &expected, &verifier)?.len() != 4 {
            return Err("a release did not hold the 4 consented fields".into());
        }
    }
    let open_mean = t.elapsed() / u32::try_from(released.len()).unwrap_or(u32::MAX);
    let mut lat: Vec<Duration> = released.iter().map(|(_, d)| *d).collect();
    lat.sort();
    Ok((
        n as f64 / (challenge_secs + release_secs),
        n as f64 / challenge_secs,
        lat,
        open_mean,
    ))
}
