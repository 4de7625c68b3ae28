//! `idvault demo`: a throw-away development vault (real server on a free
//! port, real mTLS with the dev PKI, SQLite in a temporary directory or a
//! given database) and every capability as one story, told by the parties
//! who use it: two partner institutions, a person's phone, a data team.
//! Each step says what it shows and checks it; the command exits 0 only
//! if every check held.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use idvault_bench::InProcess;
use idvault_client::device::{DeviceKey, GrantRequest, unix_now};
use idvault_client::{Expected, ReleaseKey};
use idvault_core::SystemRng;
use idvault_proto::v1 as pb;
use pb::command_service_client::CommandServiceClient;
use pb::consent_service_client::ConsentServiceClient;
use pb::credential_service_client::CredentialServiceClient;
use pb::device_request::Action;
use pb::device_service_client::DeviceServiceClient;
use pb::event_service_client::EventServiceClient;
use pb::match_service_client::MatchServiceClient;
use pb::subject_service_client::SubjectServiceClient;
use pb::token_service_client::TokenServiceClient;

#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// Run on this database instead of SQLite in a temporary directory
    /// (an empty PostgreSQL database, say).
    #[arg(long, env = "IDVAULT_DEMO_DATABASE_URL")]
    database_url: Option<String>,
}

/// The person of the story.
const PERSON: &[(&str, &str)] = &[
    ("given_name", "Ada"),
    ("family_name", "Lovelace"),
    ("date_of_birth", "1985-12-10"),
    ("email", "ada.lovelace@example.org"),
    ("phone", "+44 7700 900461"),
    ("city", "London"),
    ("country", "GB"),
];

/// How partner-b knows her: a nickname, a typo, another date format.
const AS_SEEN_BY_B: &[(&str, &str)] = &[
    ("given_name", "Addie"),
    ("family_name", "Lovelase"),
    ("date_of_birth", "10/12/1985"),
    ("phone", "07700 900461"),
];

const STEPS: usize = 9;

fn spiffe(partner: &str) -> String {
    format!(
        "spiffe://{}/partner/{partner}",
        idvault_server::devinit::DEV_TRUST_DOMAIN
    )
}

fn fields(f: &[(&str, &str)]) -> Vec<pb::Field> {
    f.iter()
        .map(|(n, v)| pb::Field {
            name: (*n).into(),
            value: (*v).into(),
        })
        .collect()
}

/// Prints the story and keeps count of the checks.
struct Story {
    step: usize,
    checks: usize,
}

impl Story {
    fn step(&mut self, title: &str, what: &str) {
        self.step += 1;
        println!("\n[{}/{STEPS}] {title}", self.step);
        println!("      {what}");
    }

    fn show(&self, line: impl std::fmt::Display) {
        println!("      {line}");
    }

    fn check(&mut self, ok: bool, what: &str) -> anyhow::Result<()> {
        if !ok {
            bail!("step {} did not do what it says: {what}", self.step);
        }
        self.checks += 1;
        println!("      ok: {what}");
        Ok(())
    }
}

pub(crate) async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    println!("idvault demo: a throw-away development vault, and every capability as a story.");
    let vault = InProcess::start(args.database_url.clone())
        .await
        .map_err(|e| anyhow::anyhow!("starting the demo vault: {e}"))?;
    println!(
        "The vault serves gRPC over mTLS on a free port ({} storage, dev certificates in a temporary directory).",
        vault.backend()
    );
    let mut story = Story { step: 0, checks: 0 };
    let result = match empty(&vault).await {
        Ok(()) => tell(&vault, &mut story).await,
        Err(e) => Err(e),
    };
    let stopped = vault.stop().await;
    let result =
        result.and_then(|()| stopped.map_err(|e| anyhow::anyhow!("stopping the demo vault: {e}")));
    match result {
        Ok(()) => {
            println!(
                "\nAll {STEPS} steps did what they say ({} checks). The vault and its temporary directory are gone.",
                story.checks
            );
            println!(
                "Next: README.md (\"Quick start\") runs a vault of your own; docs/ explains each capability."
            );
            Ok(())
        }
        Err(e) => Err(e.context("the demo FAILED")),
    }
}

/// The demo writes under throw-away keys: only into an empty database.
async fn empty(vault: &InProcess) -> anyhow::Result<()> {
    let pool = vault.vault().store().pool();
    let subjects: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM subjects")
        .fetch_one(pool)
        .await?;
    let leaves: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log")
        .fetch_one(pool)
        .await?;
    if subjects > 0 || leaves > 0 {
        bail!(
            "the demo writes under throw-away keys and needs an empty database; this one holds \
             {subjects} subjects and {leaves} audit records"
        );
    }
    Ok(())
}

async fn tell(vault: &InProcess, story: &mut Story) -> anyhow::Result<()> {
    let rng = SystemRng::default();
    let channel = |name: &'static str| async move {
        vault
            .channel(name)
            .await
            .map_err(|e| anyhow::anyhow!("connecting as {name}: {e}"))
    };
    let a = channel("partner-a").await?;
    let b = channel("partner-b").await?;
    let wallet_ch = channel("wallet").await?;

    // 1. A person is created.
    story.step(
        "partner-a (a bank) registers a customer",
        "Her data is encrypted into a chain of packets under her own data key; the bank gets an id and a pairwise token.",
    );
    let created = SubjectServiceClient::new(a.clone())
        .create_subject(pb::CreateSubjectRequest {
            fields: fields(PERSON),
        })
        .await?;
    let request_id = created
        .metadata()
        .get(idvault_server::api::REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let created = created.into_inner();
    let subject = created.subject_id.clone();
    story.show(format!("subject id {subject}"));
    story.show(format!(
        "partner-a's pairwise token {}",
        created.pairwise_token
    ));
    let packets: Vec<Vec<u8>> = sqlx::query_scalar("SELECT packet FROM packets")
        .fetch_all(vault.vault().store().pool())
        .await?;
    let plaintext = packets.iter().any(|p| {
        PERSON
            .iter()
            .any(|(_, v)| p.windows(v.len()).any(|w| w == v.as_bytes()))
    });
    story.show(format!(
        "the database holds {} encrypted packets for her",
        packets.len()
    ));
    story.check(
        !packets.is_empty() && !plaintext,
        "no value of hers is stored in the clear",
    )?;

    // 2. Blind matching from another partner.
    story.step(
        "partner-b (an insurer) looks for the same person, written differently",
        "Matching compares keyed blind indexes of name variants, dates and phones: partner-b learns a score and its own token, never her data or partner-a's token.",
    );
    story.show(format!(
        "query: {}",
        AS_SEEN_BY_B
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let found = search_as_b(&b).await?;
    let best = found
        .first()
        .context("partner-b's query found no candidate")?;
    story.show(format!(
        "best candidate: score {:.3}, partner-b's token {}",
        best.score, best.pairwise_token
    ));
    story.check(best.score >= 0.5, "she is found despite the differences")?;
    story.check(
        best.pairwise_token != created.pairwise_token,
        "partner-b's token for her differs from partner-a's (no cross-partner correlation)",
    )?;

    // 3. Tokenizing a log for the data team.
    story.step(
        "partner-a tokenizes a usage log for its data team",
        "Identifier fields are replaced by tokens (HMAC under the domain key): the same person gives the same token, and nothing else is changed.",
    );
    let log = "{\"user\":\"ada.lovelace@example.org\",\"event\":\"login\"}\n\
               {\"user\":\"ADA.Lovelace@example.org \",\"event\":\"transfer\"}\n";
    let mut out = TokenServiceClient::new(a.clone())
        .tokenize_log(tokio_stream::iter(vec![pb::TokenizeLogRequest {
            settings: Some(pb::TokenizeSettings {
                format: pb::LogFormat::JsonLines.into(),
                fields: vec!["user=email".into()],
                mode: pb::TokenizeMode::Stateless.into(),
                domain: "logs".into(),
                ..Default::default()
            }),
            data: log.as_bytes().to_vec(),
        }]))
        .await?
        .into_inner();
    let mut text = Vec::new();
    while let Some(m) = out.message().await? {
        text.extend_from_slice(&m.data);
    }
    let text = String::from_utf8(text)?;
    for line in text.lines() {
        story.show(line);
    }
    let users: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("user").and_then(|u| u.as_str()).map(str::to_owned))
        .collect();
    story.check(
        users.len() == 2 && !text.to_lowercase().contains("lovelace"),
        "no e-mail address is left in the log",
    )?;
    story.check(
        users.first() == users.get(1),
        "both spellings of her address give one token (normalised first)",
    )?;

    // 4. Consent and release.
    story.step(
        "she enrolls her phone and consents to a release to partner-b",
        "The phone holds a P-256 key; it signs a single-use grant naming partner-b, the purpose and the fields. The vault releases exactly those fields, sealed with HPKE to partner-b's key.",
    );
    let code = ConsentServiceClient::new(a.clone())
        .issue_enrollment_code(pb::IssueEnrollmentCodeRequest {
            subject_id: subject.clone(),
        })
        .await?
        .into_inner()
        .enrollment_code;
    let phone = DeviceKey::generate(&rng)?;
    let mut wallet = DeviceServiceClient::new(wallet_ch.clone());
    wallet.enroll(phone.enrollment(&subject, &code)?).await?;
    story.show(format!("phone enrolled as device {}", phone.device_id()));
    let mut b_consent = ConsentServiceClient::new(b.clone());
    let challenge = b_consent
        .request_challenge(pb::RequestChallengeRequest {
            subject_id: subject.clone(),
        })
        .await?
        .into_inner()
        .challenge;
    let now = unix_now();
    let signed = phone.sign_grant(
        &GrantRequest {
            subject_id: subject.clone(),
            audience: spiffe("partner-b"),
            purpose: "kyc".into(),
            fields: vec!["given_name".into(), "email".into()],
            challenge,
            issued_at: now,
            expires_at: now + 300,
            standing: false,
        },
        &rng,
    )?;
    let nonce = [7u8; 16];
    let release = |s: pb::SignedConsent| {
        let mut c = b_consent.clone();
        async move {
            c.release(pb::ReleaseRequest {
                consent: Some(pb::release_request::Consent::Signed(s)),
                nonce: nonce.to_vec(),
            })
            .await
        }
    };
    let r = release(signed.clone()).await?.into_inner();
    let key = ReleaseKey::from_pem(&std::fs::read_to_string(
        vault.dir().join("tls/partner-b.release.key"),
    )?)?;
    let opened = key.open(
        &r,
        &Expected {
            subject: Some(&subject),
            consent_id: None,
            nonce: &nonce,
        },
        &vault.vault().release_verifier()?,
    )?;
    let mut names: Vec<String> = opened.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    story.show(format!(
        "partner-b opened the sealed release: {}",
        names.join(", ")
    ));
    story.check(
        names == ["email", "given_name"],
        "exactly the consented fields, signed by the vault",
    )?;
    let replay = release(signed).await;
    story.check(
        replay.is_err_and(|s| s.code() == tonic::Code::AlreadyExists),
        "the same grant presented again is refused (single use)",
    )?;

    // 5. A rule and its command.
    story.step(
        "she sets a rule: when partner-a reports a new address, tell partner-b",
        "Her phone links both partners and signs the rule; partner-a publishes an event; partner-b receives a command with only the fields the rule names, under its own token.",
    );
    for name in ["partner-a", "partner-b"] {
        wallet
            .link_entity(phone.sign_request(
                Action::LinkEntity(pb::LinkEntity {
                    entity: spiffe(name),
                }),
                unix_now(),
                &rng,
            )?)
            .await?;
    }
    wallet
        .set_rules(phone.sign_request(
            Action::SetRules(pb::SetRules {
                rules: vec![pb::Rule {
                    rule_id: String::new(),
                    source: spiffe("partner-a"),
                    event_type: "address.changed".into(),
                    target: spiffe("partner-b"),
                    command: "update_address".into(),
                    fields: vec!["address".into()],
                }],
            }),
            unix_now(),
            &rng,
        )?)
        .await?;
    EventServiceClient::new(a.clone())
        .publish_event(pb::PublishEventRequest {
            subject: Some(pb::publish_event_request::Subject::SubjectId(
                subject.clone(),
            )),
            event_type: "address.changed".into(),
            event_id: "demo-address-1".into(),
            fields: vec![
                pb::EventField {
                    name: "address".into(),
                    value: "12 St James's Square, London".into(),
                },
                pb::EventField {
                    name: "branch".into(),
                    value: "not for partner-b".into(),
                },
            ],
        })
        .await?;
    let mut commands = CommandServiceClient::new(b.clone());
    let mut stream = commands
        .stream_commands(pb::StreamCommandsRequest { follow: false })
        .await?
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await? {
        got.extend(m.command);
    }
    let cmd = got.first().context("partner-b received no command")?;
    story.show(format!(
        "partner-b got {} for {} with {}",
        cmd.command,
        cmd.pairwise_token,
        cmd.fields
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    story.check(
        got.len() == 1 && cmd.fields.len() == 1 && cmd.pairwise_token == best.pairwise_token,
        "one command, only the address, under partner-b's own token",
    )?;
    // What the operator sees meanwhile (docs/operations.md, "Metrics").
    let addr = vault
        .metrics_addr()
        .context("the dev config serves metrics")?;
    let waiting = scrape(addr)
        .await?
        .lines()
        .any(|l| l == "idvault_outbox_depth{partner=\"partner-b\"} 1");
    story.check(
        waiting,
        "the operator's metrics show it waiting in partner-b's outbox",
    )?;
    let acked = commands
        .ack_commands(pb::AckCommandsRequest {
            command_ids: vec![cmd.command_id.clone()],
        })
        .await?
        .into_inner();
    story.check(
        acked.acknowledged == 1,
        "acknowledged, so it is not delivered again",
    )?;

    // 6. A digital ID.
    story.step(
        "her phone gets a digital ID and shows partner-a only what it asks",
        "An SD-JWT VC bound to her phone's key; she discloses her given name and that she is over 18, nothing else; partner-a verifies it.",
    );
    let (req, pending) = phone.request_credential(&[], unix_now(), &rng)?;
    let issued = wallet.issue_credential(req).await?.into_inner();
    let mut rp = CredentialServiceClient::new(a.clone());
    let jwks = rp
        .get_issuer_keys(pb::GetIssuerKeysRequest {})
        .await?
        .into_inner()
        .jwks;
    let jwks = idvault_core::sdjwt::Jwks::parse(&jwks)?;
    let (credential, parsed) = pending.open(&issued, Some(&jwks))?;
    story.show(format!(
        "credential with {} selectively disclosable claims",
        parsed.claim_names().len()
    ));
    let rp_nonce = "demo-nonce-4711";
    let presentation = phone.present_credential(
        &credential,
        &["given_name", "age_over_18"],
        &spiffe("partner-a"),
        rp_nonce,
        unix_now(),
    )?;
    let v = rp
        .verify_presentation(pb::VerifyPresentationRequest {
            presentation: presentation.to_string(),
            audience: String::new(),
            nonce: rp_nonce.into(),
        })
        .await?
        .into_inner();
    let mut disclosed = v.disclosed.clone();
    disclosed.sort();
    story.show(format!("partner-a verified: {}", v.claims_json));
    story.check(
        disclosed == ["age_over_18", "given_name"],
        "only the two claims she chose were disclosed",
    )?;

    // 7. The audit log proves itself.
    story.step(
        "partner-a proves its first request was logged",
        "Every request is a leaf of a Merkle tree with signed checkpoints (C2SP tlog-checkpoint); an inclusion proof shows the leaf of the request id partner-a got back.",
    );
    let keys: Vec<_> = vault
        .vault()
        .audit_verifier_keys()?
        .iter()
        .map(|k| idvault_core::tlog::checkpoint::NoteVerifier::parse(k))
        .collect::<Result<_, _>>()?;
    let origin = keys
        .first()
        .map(|k| k.name().to_owned())
        .context("no audit key")?;
    let mut checked = None;
    // The sequencer checkpoints at least once a second.
    for _ in 0..50 {
        match idvault_client::audit::check(a.clone(), &keys, &origin, None, Some(&request_id)).await
        {
            Ok(c) if c.included.is_some() => {
                checked = Some(c);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let checked = checked.context("the request's inclusion proof never verified")?;
    let (index, leaf) = checked.included.context("no inclusion")?;
    story.show(format!(
        "checkpoint of {} leaves, signed; request {request_id} is leaf {index}: {} {}",
        checked.checkpoint.size, leaf.action, leaf.outcome
    ));
    story.check(
        leaf.action == "CreateSubject",
        "the inclusion proof verifies against the signed root",
    )?;
    let verdict = vault.vault().verify_own_audit_log().await?;
    story.check(
        matches!(
            verdict,
            idvault_server::service::audit::AuditVerdict::Intact { .. }
        ),
        "the whole log verifies: signatures, consistency, leaf MACs, chain heads",
    )?;

    // 8. Deletion by crypto-shredding.
    story.step(
        "she asks partner-a to delete her",
        "Her data key is destroyed (crypto-shredding) with everything naming her; the bank gets a signed deletion receipt; no partner can find her again.",
    );
    let deleted = SubjectServiceClient::new(a.clone())
        .delete_subject(pb::DeleteSubjectRequest {
            subject_id: subject.clone(),
        })
        .await?
        .into_inner();
    story.show(format!(
        "{} packets destroyed; receipt: {}",
        deleted.packets_destroyed,
        deleted.receipt.lines().next().unwrap_or_default()
    ));
    // What `idvault keys receipt-public-key` publishes.
    let receipt_keys: Vec<_> = idvault_server::service::receipts::receipt_verifier_keys(
        vault.vault().keys(),
        &vault.vault().audit_settings().origin,
    )?
    .iter()
    .map(|k| idvault_core::tlog::checkpoint::NoteVerifier::parse(k))
    .collect::<Result<_, _>>()?;
    let receipt = idvault_core::receipt::open_receipt(&deleted.receipt, &receipt_keys);
    story.check(
        receipt.is_ok_and(|r| r.subject == subject),
        "the receipt verifies with the vault's published receipt key and names her",
    )?;
    let again = search_as_b(&b).await?;
    story.check(again.is_empty(), "partner-b's query finds nobody now")?;

    // 9. Operations.
    story.step(
        "the operator looks at the metrics",
        "Prometheus metrics on their own address: calls by method and outcome, refusals by reason, outbox and audit lag. No label comes from a caller.",
    );
    let addr = vault
        .metrics_addr()
        .context("the dev config serves metrics")?;
    let body = scrape(addr).await?;
    let line = body
        .lines()
        .find(|l| {
            l.starts_with("idvault_rpc_requests_total{method=\"/idvault.v1.SubjectService/CreateSubject\",code=\"OK\"}")
        })
        .unwrap_or_default()
        .to_owned();
    story.show(format!("http://{addr}/metrics: {line}"));
    story.check(
        line.ends_with(" 1"),
        "the one CreateSubject of this story is counted",
    )?;
    story.check(
        !body.to_lowercase().contains("lovelace"),
        "and nothing of her is in the metrics",
    )?;
    Ok(())
}

/// partner-b's query for her, as it knows her.
async fn search_as_b(b: &tonic::transport::Channel) -> anyhow::Result<Vec<pb::MatchCandidate>> {
    Ok(MatchServiceClient::new(b.clone())
        .r#match(pb::MatchRequest {
            query: Some(pb::MatchQuery {
                fields: fields(AS_SEEN_BY_B),
                max_results: 3,
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .candidates)
}

/// `GET /metrics` over plain HTTP/1.1.
async fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8(raw)?;
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}
