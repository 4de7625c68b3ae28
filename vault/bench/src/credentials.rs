//! `idvault bench credentials`: digital IDs (docs/digital-id.md).
//!
//! 1. **In process, one core**: issuing an SD-JWT VC (11 claims, ES256),
//!    the wallet's presentation (parse, choose 3 disclosures, KB-JWT
//!    signature), and offline verification (issuer signature, disclosures,
//!    key binding), each timed over `count` operations in a loop.
//! 2. **Over mTLS** against an in-process vault (dev PKI; SQLite unless a
//!    database URL is given), `connections` connections, one call in flight
//!    each, `seconds` per phase: the `Health/Check` baseline,
//!    `IssueCredential` (a fresh device-signed request per call: signature
//!    check, decrypt of the person's fields, issue, HPKE seal to the
//!    request's one-time key, replay row, audit leaf, durable commit; the
//!    client opens every answer) and `VerifyPresentation` (verify, audit leaf,
//!    commit) and `GetStatusList` (the signed token of the newest list,
//!    as rebuilt after phase 2), each with its ratio to the baseline.
//!    Then one-time transaction codes: a full round trip per call (the
//!    third party asks for a code, the phone looks it up and approves,
//!    both device-signed, the third party reads the outcome with its
//!    signed assertion).
//! 3. **Revocation, in process**: building, compressing and signing a
//!    2^20-entry status list holding 100,000 credentials (1 % revoked),
//!    and a relying party's offline check against the token.

use std::time::{Duration, Instant};

use idvault_client::device::unix_now;
use idvault_core::SystemRng;
use idvault_core::sdjwt::{self, CredentialSpec, EcJwk, Expectations, IssuerKey, Jwks, status};
use idvault_proto::v1 as pb;
use idvault_proto::v1::credential_service_client::CredentialServiceClient;
use idvault_proto::v1::device_service_client::DeviceServiceClient;
use idvault_proto::v1::transaction_service_client::TransactionServiceClient;
use idvault_proto::v1::{
    AwaitTransactionRequest, GetIssuerKeysRequest, GetStatusListRequest, RequestCodeRequest,
    VerifyPresentationRequest,
};
use serde_json::json;

use crate::BenchError;
use crate::rpc::{Limit, Phase, Served, closed_loop, health_check, holders};

/// What to run.
#[derive(Debug, Clone)]
pub struct CredentialBenchOptions {
    /// Operations per in-process measurement.
    pub count: usize,
    /// Concurrent mTLS connections.
    pub connections: usize,
    /// Seconds per RPC phase.
    pub seconds: f64,
    /// Database URL (default: SQLite in a temporary directory).
    pub database_url: Option<String>,
}

/// The figures.
#[derive(Debug, Clone, Default)]
pub struct CredentialReport {
    /// Backend label.
    pub backend: &'static str,
    /// Connections.
    pub connections: usize,
    /// In-process: (name, operations per second on one core, mean time).
    pub local: Vec<(&'static str, f64, Duration)>,
    /// Health/Check, IssueCredential, VerifyPresentation, GetStatusList.
    pub phases: Vec<Phase>,
    /// Size of the status list token built in process.
    pub status_token_bytes: usize,
}

impl std::fmt::Display for CredentialReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "in process, one core:")?;
        for (name, rate, mean) in &self.local {
            writeln!(f, "  {name:<50} {rate:>9.0}/s  {mean:>10.2?} each")?;
        }
        writeln!(
            f,
            "  status list token (2^20 entries, 100k placed, 1% revoked): {} bytes",
            self.status_token_bytes
        )?;
        writeln!(
            f,
            "RPCs over mTLS, {}, {} connections (one call in flight each):",
            self.backend, self.connections
        )?;
        let base = self.phases.first().map_or(0.0, Phase::rate);
        for p in &self.phases {
            writeln!(
                f,
                "  {:<30} {:>8} calls {:>9.0}/s  p50 {:>9.2?}  p99 {:>9.2?}  ratio {:.3}  errors {}",
                p.name,
                p.ok,
                p.rate(),
                p.quantile(0.5),
                p.quantile(0.99),
                if base > 0.0 { p.rate() / base } else { 0.0 },
                p.errors
            )?;
            if let Some(e) = &p.first_error {
                writeln!(f, "    first error: {e}")?;
            }
        }
        Ok(())
    }
}

const AUDIENCE: &str = "spiffe://idvault.dev/partner/partner-a";
const NONCE: &str = "bench-nonce";

fn time(
    n: usize,
    mut op: impl FnMut(usize) -> Result<(), BenchError>,
) -> Result<Duration, BenchError> {
    let t = Instant::now();
    for i in 0..n {
        op(i)?;
    }
    Ok(t.elapsed())
}

fn local(o: &CredentialBenchOptions, r: &mut CredentialReport) -> Result<(), BenchError> {
    let n = o.count.max(1);
    let rng = SystemRng::default();
    let issuer = IssuerKey::from_scalar(&[3u8; 32]).ok_or("issuer key")?;
    let device = idvault_client::device::DeviceKey::generate(&rng)?;
    let holder = EcJwk::from_sec1(&device.public_key())?;
    let spec = CredentialSpec {
        issuer: "https://idvault.local",
        vct: sdjwt::DEFAULT_VCT,
        issued_at: unix_now(),
        expires_at: unix_now() + 86_400,
        holder: &holder,
        status: None,
    };
    let claims = || {
        vec![
            ("given_name".to_string(), json!("Amélie")),
            ("family_name".to_string(), json!("Okonkwo-Lindqvist")),
            ("birthdate".to_string(), json!("1987-11-02")),
            ("age_over_16".to_string(), json!(true)),
            ("age_over_18".to_string(), json!(true)),
            ("age_over_21".to_string(), json!(true)),
            ("age_over_65".to_string(), json!(false)),
            ("email".to_string(), json!("amelie.ol@example.org")),
            ("phone_number".to_string(), json!("+44 7700 900456")),
            (
                "address".to_string(),
                json!({"locality": "Malmö", "country": "SE"}),
            ),
            ("national_id".to_string(), json!("QQ123456C")),
        ]
    };
    let mut cred = sdjwt::issue(&issuer, &spec, claims(), &rng)?;
    let d = time(n, |_| {
        cred = sdjwt::issue(&issuer, &spec, claims(), &rng)?;
        Ok(())
    })?;
    r.local.push((
        "issue (11 claims)",
        n as f64 / d.as_secs_f64(),
        d / n as u32,
    ));
    let disclose = ["given_name", "age_over_18", "address"];
    let mut p = device.present_credential(&cred, &disclose, AUDIENCE, NONCE, unix_now())?;
    let d = time(n, |_| {
        p = device.present_credential(&cred, &disclose, AUDIENCE, NONCE, unix_now())?;
        Ok(())
    })?;
    r.local.push((
        "present (3 disclosures + KB-JWT)",
        n as f64 / d.as_secs_f64(),
        d / n as u32,
    ));
    let set = Jwks::new(vec![(issuer.kid().to_owned(), issuer.jwk().clone())]);
    let d = time(n, |_| {
        let e = Expectations {
            typ: sdjwt::TYP_CREDENTIAL,
            audience: AUDIENCE,
            nonce: NONCE,
            now: unix_now(),
            skew_secs: 120,
            max_key_binding_age_secs: 300,
        };
        sdjwt::verify_presentation(&p, &set, &e)?;
        Ok(())
    })?;
    r.local.push((
        "verify offline (issuer sig, KB sig)",
        n as f64 / d.as_secs_f64(),
        d / n as u32,
    ));
    status_lists(n, &issuer, &set, r)
}

/// Revocation: building and signing a full-size list the way the vault
/// does (2^20 entries, `STATUS_PLACED` credentials, 1 % revoked), and a
/// relying party's offline check of one credential against its token.
fn status_lists(
    n: usize,
    issuer: &IssuerKey,
    set: &Jwks,
    r: &mut CredentialReport,
) -> Result<(), BenchError> {
    const STATUS_PLACED: i64 = 100_000;
    const BUILDS: usize = 5;
    let perm = status::IndexPermutation::new(&[5u8; 32], 20).ok_or("permutation")?;
    let state = status::StatusListState {
        list_id: 1,
        log2: 20,
        key_version: 1,
        next_seq: STATUS_PLACED,
    };
    let entries: Vec<(status::CredentialEntry, bool)> = (0..STATUS_PLACED)
        .map(|seq| {
            let idx = i64::try_from(perm.apply(seq.unsigned_abs())).unwrap_or_default();
            let e = status::CredentialEntry {
                list_id: 1,
                idx,
                seq,
                subject: None,
                device_id: None,
                expires_at: 0,
                revoked_at_ms: (seq % 100 == 0).then_some(1),
            };
            (e, true)
        })
        .collect();
    let uri = "https://idvault.local/statuslists/1";
    let spec = status::ListSpec {
        uri,
        issued_at: unix_now(),
        expires_at: unix_now() + 3000,
        ttl: 300,
    };
    let mut token = String::new();
    let d = time(BUILDS, |_| {
        let list = status::build_list(&state, &perm, entries.clone()).ok_or("list size")?;
        token = status::sign_status_list(issuer, &spec, &list);
        Ok(())
    })?;
    r.local.push((
        "status list: build + compress + sign (2^20, 100k)",
        BUILDS as f64 / d.as_secs_f64(),
        d / BUILDS as u32,
    ));
    r.status_token_bytes = token.len();
    let presented = sdjwt::Verified {
        kid: None,
        issuer: None,
        vct: None,
        issued_at: None,
        expires_at: 0,
        disclosed: serde_json::Map::new(),
        holder: issuer.jwk().clone(),
        status: Some(
            status::StatusRef {
                idx: perm.apply(1),
                uri: uri.into(),
            }
            .to_claim(),
        ),
    };
    let checks = n.clamp(1, 200);
    let d = time(checks, |_| {
        let t = status::verify_status_list(&token, set, Some(uri), unix_now(), 120)?;
        status::check_status(&presented, &t)?;
        Ok(())
    })?;
    r.local.push((
        "status check offline (verify + inflate token)",
        checks as f64 / d.as_secs_f64(),
        d / checks as u32,
    ));
    Ok(())
}

/// Runs the benchmark; `progress` hears what is under way.
pub async fn run(
    o: &CredentialBenchOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<CredentialReport, BenchError> {
    let mut r = CredentialReport {
        connections: o.connections.max(1),
        ..CredentialReport::default()
    };
    progress("in process: issue, present, verify");
    local(o, &mut r)?;
    let served = Served::start(o.database_url.clone()).await?;
    let result = remote(o, &served, &mut r, progress).await;
    let stopped = served.stop().await;
    result?;
    stopped?;
    Ok(r)
}

async fn remote(
    o: &CredentialBenchOptions,
    served: &Served,
    r: &mut CredentialReport,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), BenchError> {
    r.backend = match served.vault.store().backend() {
        idvault_server::store::Backend::Sqlite => "SQLite",
        idvault_server::store::Backend::Postgres => "PostgreSQL",
    };
    let partner = served.channel("partner-a").await?;
    progress("enrolling one device per connection");
    let people = std::sync::Arc::new(holders(served, &partner, r.connections).await?);
    let (mut rp, mut wallets) = (Vec::new(), Vec::new());
    for _ in 0..r.connections {
        rp.push(served.channel("partner-a").await?);
        wallets.push(served.channel("wallet").await?);
    }
    let limit = || Limit::Until(Instant::now() + Duration::from_secs_f64(o.seconds));

    progress("phase 1 of 5: health Check (baseline)");
    let (p, _) = closed_loop("Health/Check (baseline)", &rp, limit(), |ch, _, _| {
        health_check(ch)
    })
    .await?;
    r.phases.push(p);

    progress("phase 2 of 5: IssueCredential");
    let (p, creds) = {
        let people = std::sync::Arc::clone(&people);
        closed_loop("IssueCredential", &wallets, limit(), move |ch, w, _| {
            let people = std::sync::Arc::clone(&people);
            async move {
                let h = people.get(w).ok_or("holder")?;
                let (req, pending) =
                    h.device
                        .request_credential(&[], unix_now(), &SystemRng::default())?;
                let c = DeviceServiceClient::new(ch)
                    .issue_credential(req)
                    .await?
                    .into_inner();
                // The phone's part: open the sealed answer.
                let credential = pending.open(&c, None)?.0.to_string();
                Ok::<_, BenchError>((w, credential))
            }
        })
        .await?
    };
    r.phases.push(p);

    // One presentation per connection, from a credential just issued.
    let mut presentations = vec![String::new(); r.connections];
    for (w, cred) in creds {
        if let (Some(slot), Some(h)) = (presentations.get_mut(w), people.get(w))
            && slot.is_empty()
        {
            *slot = h
                .device
                .present_credential(
                    &cred,
                    &["given_name", "birthdate"],
                    AUDIENCE,
                    NONCE,
                    unix_now(),
                )?
                .to_string();
        }
    }
    if presentations.iter().any(String::is_empty) {
        return Err("a connection issued no credential".into());
    }
    // The same keys a relying party would pin.
    CredentialServiceClient::new(partner.clone())
        .get_issuer_keys(GetIssuerKeysRequest {})
        .await?;
    let presentations = std::sync::Arc::new(presentations);
    progress("phase 3 of 5: VerifyPresentation");
    let (p, _) = closed_loop("VerifyPresentation", &rp, limit(), move |ch, w, _| {
        let presentations = std::sync::Arc::clone(&presentations);
        async move {
            let presentation = presentations.get(w).ok_or("presentation")?.clone();
            CredentialServiceClient::new(ch)
                .verify_presentation(VerifyPresentationRequest {
                    presentation,
                    audience: String::new(),
                    nonce: NONCE.into(),
                })
                .await?;
            Ok::<(), BenchError>(())
        }
    })
    .await?;
    r.phases.push(p);

    progress("phase 4 of 5: GetStatusList");
    let (p, _) = closed_loop("GetStatusList", &rp, limit(), |ch, _, _| async move {
        CredentialServiceClient::new(ch)
            .get_status_list(GetStatusListRequest { uri: String::new() })
            .await?;
        Ok::<(), BenchError>(())
    })
    .await?;
    r.phases.push(p);

    progress("phase 5 of 5: transaction-code round trips");
    let wallets = std::sync::Arc::new(wallets);
    let (p, _) = closed_loop(
        "transaction round trip (4 RPCs)",
        &rp,
        limit(),
        move |ch, w, _| {
            let people = std::sync::Arc::clone(&people);
            let wallets = std::sync::Arc::clone(&wallets);
            async move { transaction_round_trip(ch, &wallets, &people, w).await }
        },
    )
    .await?;
    r.phases.push(p);
    Ok(())
}

/// One one-time code round trip: the third party asks, the phone looks
/// the code up and approves, the third party reads the outcome and opens
/// the assertion.
async fn transaction_round_trip(
    ch: tonic::transport::Channel,
    wallets: &[tonic::transport::Channel],
    people: &[crate::rpc::Holder],
    w: usize,
) -> Result<(), BenchError> {
    let h = people.get(w).ok_or("holder")?;
    let wallet = wallets.get(w).ok_or("wallet")?.clone();
    let mut tp = TransactionServiceClient::new(ch);
    let r = tp
        .request_code(RequestCodeRequest {
            pairwise_token: h.pairwise.clone(),
            binding_message: "Pay 12.50 EUR to Bench Shop".into(),
            claims: vec!["given_name".into(), "age_over_18".into()],
            ttl_seconds: 120,
        })
        .await?
        .into_inner();
    let rng = SystemRng::default();
    let mut phone = DeviceServiceClient::new(wallet);
    let lookup = pb::device_request::Action::LookupTransaction(pb::LookupTransaction {
        code: r.code.clone(),
    });
    let shown = phone
        .lookup_transaction(h.device.sign_request(lookup, unix_now(), &rng)?)
        .await?
        .into_inner();
    let answer = idvault_client::device::transaction_answer(&shown, &r.code, true, &shown.claims);
    phone
        .answer_transaction(h.device.sign_request(answer, unix_now(), &rng)?)
        .await?;
    let out = tp
        .await_transaction(AwaitTransactionRequest {
            transaction_id: r.transaction_id,
            wait_seconds: 0,
        })
        .await?
        .into_inner();
    if out.assertion.is_empty() {
        return Err(format!("transaction ended {}", out.state).into());
    }
    Ok(())
}
