//! Consent-signed release over mTLS: enrollment, challenge, device-signed
//! grant, HPKE-sealed release opened by the partner, receipts, revocation,
//! and every refusal with its own status, reason and audit record.

use idvault_tests::idvault_client::{Expected, ReleaseKey};

/// The nonce every release request of these tests sends.
const NONCE: [u8; 16] = [0x5a; 16];

/// Expect a release answering a request with `nonce`, any consent.
fn expected(nonce: &[u8]) -> Expected<'_> {
    Expected {
        subject: None,
        consent_id: None,
        nonce,
    }
}
use idvault_tests::idvault_client::device::{DeviceKey, GrantRequest, unix_now};
use idvault_tests::idvault_core::SystemRng;
use idvault_tests::idvault_core::consent::GRANT_CONTEXT;
use idvault_tests::idvault_proto::v1 as pb;
use idvault_tests::idvault_proto::v1::consent_service_client::ConsentServiceClient;
use idvault_tests::idvault_proto::v1::device_service_client::DeviceServiceClient;
use idvault_tests::{Backend, TestVault};
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

const PARTNER_B: &str = "spiffe://idvault.dev/partner/partner-b";
const PARTNER_A: &str = "spiffe://idvault.dev/partner/partner-a";

const PERSON: &[(&str, &str)] = &[
    ("given_name", "Amélie"),
    ("family_name", "Okonkwo-Lindqvist"),
    ("date_of_birth", "1987-11-02"),
    ("national_id", "QQ123456C"),
    ("email", "amelie.ol@example.org"),
    ("phone", "+44 7700 900456"),
];

struct Ctx {
    tv: TestVault,
    subject: String,
    device: DeviceKey,
    a: ConsentServiceClient<Channel>,
    b: ConsentServiceClient<Channel>,
    wallet: DeviceServiceClient<Channel>,
}

pub(crate) fn reason(s: &tonic::Status) -> &str {
    s.metadata()
        .get("idvault-refusal")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Asserts a refusal's code and reason token.
fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, why: &str) {
    let s = r.expect_err(why);
    assert_eq!((s.code(), reason(&s)), (code, why), "{}", s.message());
    assert!(s.message().contains(why), "{}", s.message());
}

pub(crate) async fn create_subject(tv: &TestVault, f: &[(&str, &str)]) -> String {
    tv.subjects("partner-a")
        .await
        .unwrap()
        .create_subject(pb::CreateSubjectRequest {
            fields: f
                .iter()
                .map(|(n, v)| pb::Field {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .subject_id
}

/// A fresh enrollment code for `subject` from partner-a.
async fn code_for(a: &mut ConsentServiceClient<Channel>, subject: &str) -> String {
    a.issue_enrollment_code(pb::IssueEnrollmentCodeRequest {
        subject_id: subject.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .enrollment_code
}

/// Enrolls a fresh device to `subject` with a code from partner-a.
async fn enroll(
    a: &mut ConsentServiceClient<Channel>,
    wallet: &mut DeviceServiceClient<Channel>,
    subject: &str,
) -> DeviceKey {
    let code = code_for(a, subject).await;
    let key = DeviceKey::generate(&SystemRng::default()).unwrap();
    let r = wallet
        .enroll(key.enrollment(subject, &code).unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.device_id, key.device_id());
    key
}

async fn setup(backend: Backend) -> Ctx {
    setup_with(backend, |_, _| Ok(String::new())).await
}

async fn setup_with(
    backend: Backend,
    extra: impl FnOnce(
        &std::path::Path,
        &idvault_tests::idvault_server::devinit::DevCa,
    ) -> anyhow::Result<String>,
) -> Ctx {
    let tv = TestVault::start_with(backend, extra).await.unwrap();
    let subject = create_subject(&tv, PERSON).await;
    let mut a = ConsentServiceClient::new(tv.channel("partner-a").await.unwrap());
    let b = ConsentServiceClient::new(tv.channel("partner-b").await.unwrap());
    let mut wallet = DeviceServiceClient::new(tv.channel("wallet").await.unwrap());
    let device = enroll(&mut a, &mut wallet, &subject).await;
    Ctx {
        tv,
        subject,
        device,
        a,
        b,
        wallet,
    }
}

impl Ctx {
    /// New clients after the server restarted (on a new port).
    async fn reconnect(&mut self) {
        self.a = ConsentServiceClient::new(self.tv.channel("partner-a").await.unwrap());
        self.b = ConsentServiceClient::new(self.tv.channel("partner-b").await.unwrap());
        self.wallet = DeviceServiceClient::new(self.tv.channel("wallet").await.unwrap());
    }

    async fn challenge(&mut self, partner_b: bool) -> Vec<u8> {
        let c = if partner_b { &mut self.b } else { &mut self.a };
        c.request_challenge(pb::RequestChallengeRequest {
            subject_id: self.subject.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .challenge
    }

    /// A single-use grant for partner-b of given_name and email, valid 5 min.
    fn grant(&self, challenge: Vec<u8>) -> GrantRequest {
        let now = unix_now();
        GrantRequest {
            subject_id: self.subject.clone(),
            audience: PARTNER_B.into(),
            purpose: "kyc".into(),
            fields: vec!["given_name".into(), "email".into()],
            challenge,
            issued_at: now,
            expires_at: now + 300,
            standing: false,
        }
    }

    fn sign(&self, g: &GrantRequest) -> pb::SignedConsent {
        self.device.sign_grant(g, &SystemRng::default()).unwrap()
    }

    async fn release(
        &mut self,
        partner_b: bool,
        s: pb::SignedConsent,
    ) -> Result<pb::ReleaseResponse, tonic::Status> {
        let c = if partner_b { &mut self.b } else { &mut self.a };
        c.release(pb::ReleaseRequest {
            consent: Some(pb::release_request::Consent::Signed(s)),
            nonce: NONCE.to_vec(),
        })
        .await
        .map(tonic::Response::into_inner)
    }

    async fn release_standing(
        &mut self,
        partner_b: bool,
        id: &[u8],
    ) -> Result<pb::ReleaseResponse, tonic::Status> {
        let c = if partner_b { &mut self.b } else { &mut self.a };
        c.release(pb::ReleaseRequest {
            consent: Some(pb::release_request::Consent::StandingConsentId(id.to_vec())),
            nonce: NONCE.to_vec(),
        })
        .await
        .map(tonic::Response::into_inner)
    }

    fn release_key(&self, partner: &str) -> ReleaseKey {
        let pem = std::fs::read_to_string(self.tv.tls_dir().join(format!("{partner}.release.key")))
            .unwrap();
        ReleaseKey::from_pem(&pem).unwrap()
    }

    /// The vault's release verification keys, as a partner holds them.
    fn vault_keys(&self) -> idvault_tests::idvault_client::ReleaseVerifier {
        self.tv.vault.release_verifier().unwrap()
    }

    fn open(&self, r: &pb::ReleaseResponse) -> Vec<(String, String)> {
        let expected = Expected {
            subject: Some(&self.subject),
            consent_id: None,
            nonce: &NONCE,
        };
        self.release_key("partner-b")
            .open(r, &expected, &self.vault_keys())
            .unwrap()
            .into_iter()
            .map(|(n, v)| (n, v.to_string()))
            .collect()
    }

    fn device_request(
        &self,
        key: &DeviceKey,
        action: pb::device_request::Action,
    ) -> pb::SignedDeviceRequest {
        key.sign_request(action, unix_now(), &SystemRng::default())
            .unwrap()
    }

    async fn receipts(&mut self) -> Vec<pb::Receipt> {
        let req = self.device_request(
            &self.device,
            pb::device_request::Action::ListReceipts(pb::ListReceipts {}),
        );
        self.wallet
            .list_receipts(req)
            .await
            .unwrap()
            .into_inner()
            .receipts
    }

    /// Deletes the person (as partner-a, which created them).
    async fn delete_subject(&self) -> anyhow::Result<()> {
        self.tv
            .subjects("partner-a")
            .await?
            .delete_subject(pb::DeleteSubjectRequest {
                subject_id: self.subject.clone(),
            })
            .await?;
        Ok(())
    }

    /// A `RevokeConsent` of consent `id`, signed by `key`.
    fn revoke_request(&self, key: &DeviceKey, id: &[u8]) -> pb::SignedDeviceRequest {
        self.device_request(
            key,
            pb::device_request::Action::RevokeConsent(pb::RevokeConsent {
                consent_id: id.to_vec(),
            }),
        )
    }

    async fn revoke_consent(&mut self, id: &[u8]) -> bool {
        let req = self.revoke_request(&self.device, id);
        self.wallet
            .revoke_consent(req)
            .await
            .unwrap()
            .into_inner()
            .revoked
    }

    /// `(outcome, detail)` of every audit record of `action`.
    async fn audit(&self, action: &str) -> Vec<(String, String)> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT outcome, detail FROM audit_log WHERE action = '{action}' ORDER BY id"
        )))
        .fetch_all(self.tv.db())
        .await
        .unwrap()
    }

    async fn all_audit_text(&self) -> String {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT actor || ' ' || action || ' ' || coalesce(subject, '-') || ' ' || outcome || ' ' || detail FROM audit_log",
        )
        .fetch_all(self.tv.db())
        .await
        .unwrap();
        rows.join("\n")
    }
}

fn grant_of(s: &pb::SignedConsent) -> pb::ConsentGrant {
    pb::ConsentGrant::decode(s.grant.as_slice()).unwrap()
}

/// enroll → challenge → device signs → release → partner opens exactly
/// the consented fields; the receipt is listed on the device.
pub async fn happy_path_end_to_end(backend: Backend) -> anyhow::Result<()> {
    let mut cx = setup(backend).await;
    let ch = cx.challenge(true).await;
    let g = cx.grant(ch);
    let signed = cx.sign(&g);
    let consent_id = grant_of(&signed).consent_id;
    let grant_bytes = signed.grant.clone();
    let r = cx.release(true, signed).await?;
    assert_eq!(r.subject_id, cx.subject);
    assert_eq!(r.consent_id, consent_id);
    // The ciphertext holds no value in the clear.
    for (_, v) in PERSON {
        assert!(!r.ciphertext.windows(v.len()).any(|w| w == v.as_bytes()));
    }
    let mut opened = cx.open(&r);
    opened.sort();
    assert_eq!(
        opened,
        vec![
            ("email".to_owned(), "amelie.ol@example.org".to_owned()),
            ("given_name".to_owned(), "Amélie".to_owned()),
        ],
        "exactly the consented fields"
    );
    // Another partner's key cannot open it.
    assert!(
        cx.release_key("partner-a")
            .open(&r, &expected(&NONCE), &cx.vault_keys())
            .is_err()
    );
    // The receipt, listed by the person's device.
    let receipts = cx.receipts().await;
    assert_eq!(receipts.len(), 1);
    let rc = &receipts[0];
    assert_eq!(rc.receipt_id, r.receipt_id);
    assert_eq!(
        (rc.partner.as_str(), rc.purpose.as_str()),
        (PARTNER_B, "kyc")
    );
    assert_eq!(rc.fields, vec!["email", "given_name"]);
    assert_eq!(rc.consent_id, consent_id);
    let hash = idvault_tests::idvault_core::crypto::sha256(&[&grant_bytes]);
    assert_eq!(rc.grant_hash, hash.to_vec());
    assert_eq!(r.grant_hash, hash.to_vec());
    // Audited, and no value reaches the audit log.
    let rel = cx.audit("Release").await;
    assert_eq!(rel.len(), 1);
    assert_eq!(rel[0].0, "ok");
    assert!(
        rel[0]
            .1
            .contains("consented=email,given_name released=email,given_name"),
        "{}",
        rel[0].1
    );
    // Audited with the policy that allowed it.
    assert!(rel[0].1.ends_with("policy=consent-release"), "{}", rel[0].1);
    let text = cx.all_audit_text().await;
    for (_, v) in PERSON {
        assert!(!text.contains(v), "audit log holds a value");
    }
    assert!(
        !text.contains(&hex::encode(&g.challenge)),
        "challenge in audit"
    );
    cx.tv.stop().await
}

/// Bad, tampered, high-S and unknown-key signatures; non-canonical bytes.
pub async fn signature_refusals(backend: Backend) -> anyhow::Result<()> {
    let mut cx = setup(backend).await;
    let ch = cx.challenge(true).await;
    let g = cx.grant(ch.clone());
    let good = cx.sign(&g);

    let mut flipped = good.clone();
    flipped.signature[10] ^= 1;
    refused(
        cx.release(true, flipped).await,
        Code::Unauthenticated,
        "bad_signature",
    );

    let mut tampered = good.clone();
    let mut grant = grant_of(&tampered);
    grant.fields.push("national_id".into());
    tampered.grant = grant.encode_to_vec();
    refused(
        cx.release(true, tampered).await,
        Code::Unauthenticated,
        "bad_signature",
    );

    // (r, n - s) also verifies mathematically: the malleable twin is refused.
    let mut high = good.clone();
    high.signature = high_s(&good.signature);
    refused(
        cx.release(true, high).await,
        Code::Unauthenticated,
        "bad_signature",
    );

    let mut short = good.clone();
    short.signature.truncate(63);
    refused(
        cx.release(true, short).await,
        Code::Unauthenticated,
        "bad_signature",
    );

    let stranger = DeviceKey::generate(&SystemRng::default()).unwrap();
    let s = stranger.sign_grant(&g, &SystemRng::default()).unwrap();
    refused(cx.release(true, s).await, Code::NotFound, "unknown_device");

    // A singular field repeated (parsers disagree on which wins), signed
    // properly: refused as not canonical.
    let mut dup = good.grant.clone();
    let extra = pb::ConsentGrant {
        purpose: "marketing".into(),
        ..Default::default()
    }
    .encode_to_vec();
    dup.extend_from_slice(&extra);
    let sig = cx.device.sign(GRANT_CONTEXT, &dup).unwrap().to_vec();
    let s = pb::SignedConsent {
        grant: dup,
        signature: sig,
        device_id: cx.device.device_id(),
    };
    refused(
        cx.release(true, s).await,
        Code::InvalidArgument,
        "malformed",
    );

    // Nothing changed: the challenge still works with the good grant.
    let r = cx.release(true, good).await?;
    assert_eq!(cx.open(&r).len(), 2);
    let outcomes: Vec<String> = cx
        .audit("Release")
        .await
        .into_iter()
        .map(|(o, d)| format!("{o}:{}", d.split(' ').next().unwrap_or("")))
        .collect();
    assert_eq!(
        outcomes[..6],
        [
            "refused:bad_signature",
            "refused:bad_signature",
            "refused:bad_signature",
            "refused:bad_signature",
            "refused:unknown_device",
            "refused:malformed"
        ]
    );
    assert!(outcomes[6].starts_with("ok:"));
    cx.tv.stop().await
}

/// `n - s` for a P1363 signature (the group order of P-256).
fn high_s(sig: &[u8]) -> Vec<u8> {
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    let s = &sig[32..];
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(N[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(d < 0);
        out[i] = (d + 256 * borrow) as u8;
    }
    let mut v = sig[..32].to_vec();
    v.extend_from_slice(&out);
    v
}

/// Audience, subject, window, lifetime, purpose and field allowances.
pub async fn grant_checks_refuse(backend: Backend) -> anyhow::Result<()> {
    let mut cx = setup(backend).await;
    let ch = cx.challenge(true).await;
    let base = cx.grant(ch);
    let now = unix_now();

    let mut g = base.clone();
    g.audience = PARTNER_A.into();
    refused(
        cx.release(true, cx.sign(&g)).await,
        Code::PermissionDenied,
        "audience_mismatch",
    );

    let mut g = base.clone();
    (g.issued_at, g.expires_at) = (now - 600, now - 10);
    refused(
        cx.release(true, cx.sign(&g)).await,
        Code::FailedPrecondition,
        "expired",
    );

    let mut g = base.clone();
    (g.issued_at, g.expires_at) = (now + 900, now + 1000);
    refused(
        cx.release(true, cx.sign(&g)).await,
        Code::FailedPrecondition,
        "not_yet_valid",
    );

    let mut g = base.clone();
    g.expires_at = now + 3600;
    refused(
        cx.release(true, cx.sign(&g)).await,
        Code::InvalidArgument,
        "lifetime_too_long",
    );

    let mut g = base.clone();
    g.purpose = "marketing".into();
    refused(
        cx.release(true, cx.sign(&g)).await,
        Code::PermissionDenied,
        "purpose_not_allowed",
    );

    // partner-b's registry allowances exclude national_id.
    let mut g = base.clone();
    g.fields.push("national_id".into());
    refused(
        cx.release(true, cx.sign(&g)).await,
        Code::PermissionDenied,
        "fields_not_allowed",
    );

    // The device of another person signs for this subject.
    let other = create_subject(&cx.tv, &[("given_name", "Bo"), ("email", "bo@example.org")]).await;
    let other_device = enroll(&mut cx.a, &mut cx.wallet, &other).await;
    let s = other_device
        .sign_grant(&base, &SystemRng::default())
        .unwrap();
    refused(
        cx.release(true, s).await,
        Code::PermissionDenied,
        "subject_mismatch",
    );

    // A field outside the catalogue is malformed.
    let mut g = base.clone();
    g.fields = vec!["salary".into()];
    refused(
        cx.release(true, cx.sign(&g)).await,
        Code::InvalidArgument,
        "malformed",
    );

    // None of that consumed the challenge or wrote a receipt.
    assert_eq!(
        cx.tv.count("SELECT COUNT(*) FROM consent_receipts").await,
        0
    );
    cx.release(true, cx.sign(&base)).await?;
    let reasons: Vec<String> = cx
        .audit("Release")
        .await
        .into_iter()
        .filter(|(o, _)| o == "refused")
        .map(|(_, d)| d.split(' ').next().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        reasons,
        [
            "audience_mismatch",
            "expired",
            "not_yet_valid",
            "lifetime_too_long",
            "purpose_not_allowed",
            "fields_not_allowed",
            "subject_mismatch",
            "malformed"
        ]
    );
    cx.tv.stop().await
}

/// Challenges are single use, bound to partner and subject, and expire;
/// consent ids are accepted once.
/// The registry's release allowances hold even when an operator adds a
/// `permit` for every release: purposes and fields are checked in code
/// before the policies (deny wins), and the refusal names the check.
pub async fn allowances_hold_against_a_broad_permit(backend: Backend) -> anyhow::Result<()> {
    let mut cx = setup_with(backend, |dir, _| {
        std::fs::write(
            dir.join("policies/too-broad.cedar"),
            "@id(\"release-everything\")\npermit (principal, action == IdVault::Action::\"Release\", resource);\n",
        )?;
        Ok(String::new())
    })
    .await;
    let ch = cx.challenge(true).await;
    let mut g = cx.grant(ch);
    g.purpose = "marketing".into();
    refused(
        cx.release(true, cx.sign(&g)).await,
        Code::PermissionDenied,
        "purpose_not_allowed",
    );
    let ch = cx.challenge(true).await;
    let mut g = cx.grant(ch);
    g.fields.push("national_id".into());
    refused(
        cx.release(true, cx.sign(&g)).await,
        Code::PermissionDenied,
        "fields_not_allowed",
    );
    // Within the allowances the release goes through.
    let ch = cx.challenge(true).await;
    let g = cx.grant(ch);
    let r = cx.release(true, cx.sign(&g)).await?;
    assert_eq!(cx.open(&r).len(), 2);
    let denied: Vec<String> = cx
        .audit("Release")
        .await
        .into_iter()
        .filter(|(outcome, _)| outcome == "refused")
        .map(|(_, detail)| detail)
        .collect();
    assert_eq!(denied.len(), 2, "{denied:?}");
    for d in &denied {
        assert!(d.ends_with("policy=registry-allowance"), "{d}");
    }
    cx.tv.stop().await
}

/// A release sealed by anyone but the vault is refused by the partner's
/// open: HPKE base mode to the partner's public key is easy to forge (the
/// key is in the config), so a TLS-terminating proxy could swap in its own
/// identity data; the vault's signature over the whole response is what
/// the partner checks first. Altering any signed field is refused too.
pub async fn forged_release_is_refused(backend: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_client::ReleaseError;
    use idvault_tests::idvault_core::consent::{
        ReleasePublicKey, release_signed_bytes, seal_release,
    };
    use idvault_tests::idvault_core::subject::SubjectId;
    let mut cx = setup(backend).await;
    let ch = cx.challenge(true).await;
    let g = cx.grant(ch);
    let real = cx.release(true, cx.sign(&g)).await?;
    assert_eq!(cx.open(&real).len(), 2);
    let key = cx.release_key("partner-b");
    let vault = cx.vault_keys();

    // The proxy seals forged fields to partner-b's public key, for the
    // same consent and subject.
    let partner_pk =
        ReleasePublicKey::from_sec1(&hex::decode(key.public_hex())?).expect("partner key");
    let consent_id: [u8; 16] = real.consent_id.as_slice().try_into()?;
    let subject = SubjectId::parse(&real.subject_id)?;
    let forged_plain = pb::ReleasedFields {
        fields: vec![pb::Field {
            name: "given_name".into(),
            value: "Mallory".into(),
        }],
    }
    .encode_to_vec();
    let (enc, ciphertext) = seal_release(
        &partner_pk,
        &consent_id,
        &subject,
        &forged_plain,
        &SystemRng::default(),
    )?;
    let mut forged = real.clone();
    forged.enc = enc.clone();
    forged.ciphertext = ciphertext.clone();
    assert!(matches!(
        key.open(&forged, &expected(&NONCE), &vault),
        Err(ReleaseError::Unsigned)
    ));
    // Signed with a key of its own making: still not the vault's.
    let mallory = idvault_tests::idvault_core::consent::ReleaseSigner::from_seed(&[7; 32])?;
    let grant_hash: [u8; 32] = real.grant_hash.as_slice().try_into()?;
    forged.signature = mallory.sign(&release_signed_bytes(
        &consent_id,
        &subject,
        &grant_hash,
        &NONCE,
        &real.receipt_id,
        &enc,
        &ciphertext,
    )?);
    assert!(matches!(
        key.open(&forged, &expected(&NONCE), &vault),
        Err(ReleaseError::Unsigned)
    ));
    // Unsigned, or one signed field changed.
    let mut unsigned = real.clone();
    unsigned.signature.clear();
    assert!(key.open(&unsigned, &expected(&NONCE), &vault).is_err());
    let mut other_receipt = real.clone();
    other_receipt.receipt_id.push('x');
    assert!(key.open(&other_receipt, &expected(&NONCE), &vault).is_err());
    let mut other_hash = real.clone();
    other_hash.grant_hash[0] ^= 1;
    assert!(key.open(&other_hash, &expected(&NONCE), &vault).is_err());
    // A genuine release replayed as the answer to another request (another
    // nonce) or another consent is refused too.
    assert!(matches!(
        key.open(&real, &expected(&[1; 16]), &vault),
        Err(ReleaseError::Unsigned)
    ));
    let other_consent = Expected {
        subject: None,
        consent_id: Some(&[0xee; 16]),
        nonce: &NONCE,
    };
    assert!(matches!(
        key.open(&real, &other_consent, &vault),
        Err(ReleaseError::Mismatch)
    ));
    let this_consent = Expected {
        subject: Some(&real.subject_id),
        consent_id: Some(&real.consent_id),
        nonce: &NONCE,
    };
    assert_eq!(key.open(&real, &this_consent, &vault)?.len(), 2);
    cx.tv.stop().await
}

/// A release reads the newest value of each field from packets that link
/// up to the subject's chain head, deciding which is newest by their
/// authenticated headers. A database writer that hides a field's newest
/// packet, by relabelling its `field_name` column or deleting it, gets the
/// release refused (`DATA_LOSS`), never an older value released.
pub async fn release_reads_the_newest_packets_linked_to_the_head(
    backend: Backend,
) -> anyhow::Result<()> {
    use idvault_tests::idvault_core::subject::SubjectId;
    use idvault_tests::idvault_proto::v1::UpdateSubjectRequest;
    let mut cx = setup(backend).await;
    let mut s = cx.tv.subjects("partner-a").await?;
    for v in ["ada@second.example", "ada@third.example"] {
        s.update_subject(UpdateSubjectRequest {
            subject_id: cx.subject.clone(),
            fields: vec![pb::Field {
                name: "email".into(),
                value: v.into(),
            }],
        })
        .await?;
    }
    let sid = SubjectId::parse(&cx.subject)?.as_bytes().to_vec();
    let emails: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM packets WHERE subject_id = $1 AND field_name = 'email' ORDER BY seq",
    )
    .bind(sid.clone())
    .fetch_all(cx.tv.db())
    .await?;
    assert_eq!(emails.len(), 3);
    let ch = cx.challenge(true).await;
    let g = cx.grant(ch);
    let r = cx.release(true, cx.sign(&g)).await?;
    let before = cx.open(&r);
    assert!(
        before.contains(&("email".to_owned(), "ada@third.example".to_owned())),
        "{before:?}"
    );

    // The newest email relabelled as another field by its column: it
    // would otherwise read as email's newest the packet before it.
    let label = async |tv: &TestVault, field: &str| -> anyhow::Result<()> {
        sqlx::query("UPDATE packets SET field_name = $1 WHERE subject_id = $2 AND seq = $3")
            .bind(field.to_owned())
            .bind(sid.clone())
            .bind(emails[2])
            .execute(tv.db())
            .await?;
        Ok(())
    };
    label(&cx.tv, "given_name").await?;
    let ch = cx.challenge(true).await;
    let g = cx.grant(ch);
    let e = cx.release(true, cx.sign(&g)).await.unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    label(&cx.tv, "email").await?;
    let ch = cx.challenge(true).await;
    let g = cx.grant(ch);
    let r = cx.release(true, cx.sign(&g)).await?;
    assert_eq!(cx.open(&r), before);

    // The newest email deleted: the run no longer reaches the head.
    sqlx::query("DELETE FROM packets WHERE subject_id = $1 AND seq = $2")
        .bind(sid.clone())
        .bind(emails[2])
        .execute(cx.tv.db())
        .await?;
    let ch = cx.challenge(true).await;
    let g = cx.grant(ch);
    let e = cx.release(true, cx.sign(&g)).await.unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    assert!(!e.message().contains("ada@"), "{e:?}");
    cx.tv.stop().await
}

/// One partner updating a person without pause does not starve another
/// partner's consented releases of that person: a release whose sealed
/// values went stale on its first attempts seals its last one inside the
/// claim's transaction, where the chain cannot move. Each release holds
/// a value the person had (the newest at its commit).
pub async fn releases_go_through_while_the_person_is_updated(
    backend: Backend,
) -> anyhow::Result<()> {
    use idvault_tests::idvault_proto::v1::UpdateSubjectRequest;
    let mut cx = setup(backend).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut updaters = Vec::new();
    for u in 0..4 {
        let mut s = cx.tv.subjects("partner-a").await?;
        let (subject, stop) = (cx.subject.clone(), std::sync::Arc::clone(&stop));
        updaters.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                s.update_subject(UpdateSubjectRequest {
                    subject_id: subject.clone(),
                    fields: vec![pb::Field {
                        name: "email".into(),
                        value: format!("ada{u}-{n}@example.com"),
                    }],
                })
                .await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut released = Vec::new();
    let outcome = async {
        for _ in 0..6 {
            let ch = cx.challenge(true).await;
            let g = cx.grant(ch);
            let r = cx.release(true, cx.sign(&g)).await?;
            released.push(cx.open(&r));
        }
        anyhow::Ok(())
    }
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut updates = 0;
    for u in updaters {
        updates += u.await??;
    }
    outcome?;
    assert!(updates > 0);
    for got in &released {
        let email = got
            .iter()
            .find(|(n, _)| n == "email")
            .map(|(_, v)| v.as_str());
        assert!(
            email.is_some_and(|e| e.starts_with("ada") && e.ends_with("@example.com")),
            "{got:?}"
        );
    }
    cx.tv.stop().await
}

pub async fn challenge_and_replay_refusals(backend: Backend) -> anyhow::Result<()> {
    let mut cx = setup(backend).await;
    let ch = cx.challenge(true).await;
    let first = cx.sign(&cx.grant(ch.clone()));
    cx.release(true, first.clone()).await?;

    refused(
        cx.release(true, first).await,
        Code::AlreadyExists,
        "consent_replayed",
    );
    // A new consent id on the used challenge.
    refused(
        cx.release(true, cx.sign(&cx.grant(ch))).await,
        Code::AlreadyExists,
        "challenge_reused",
    );
    refused(
        cx.release(true, cx.sign(&cx.grant(vec![7; 32]))).await,
        Code::FailedPrecondition,
        "challenge_unknown",
    );
    // A challenge partner-a asked for, presented by partner-b.
    let ch_a = cx.challenge(false).await;
    refused(
        cx.release(true, cx.sign(&cx.grant(ch_a))).await,
        Code::PermissionDenied,
        "challenge_mismatch",
    );
    // A grant presented after its challenge's lifetime (as the grant's own
    // issue time shows) is refused, whatever the challenge row says.
    let ch = cx.challenge(true).await;
    let mut late = cx.grant(ch);
    late.issued_at -= 500;
    late.standing = true;
    late.expires_at = late.issued_at + 86_400;
    refused(
        cx.release(true, cx.sign(&late)).await,
        Code::FailedPrecondition,
        "challenge_expired",
    );
    // A challenge whose expiry was edited in the database is refused as
    // forged (the stored-expiry check itself is the core unit test
    // `challenges_bind_partner_subject_use_and_time`).
    let ch = cx.challenge(true).await;
    sqlx::query("UPDATE consent_challenges SET expires_at_ms = 1 WHERE challenge = $1")
        .bind(ch.clone())
        .execute(cx.tv.db())
        .await?;
    let r = cx.release(true, cx.sign(&cx.grant(ch))).await;
    forged(&cx, r, "challenge row MAC").await;
    // A challenge for a subject that does not exist is issued (the answer
    // must not say which ids exist), and nothing can be released with it:
    // no device of that subject can sign, and a grant naming it with this
    // device is refused.
    let ghost = "00000000-0000-4000-8000-000000000000";
    let ch =
        cx.b.request_challenge(pb::RequestChallengeRequest {
            subject_id: ghost.into(),
        })
        .await?
        .into_inner()
        .challenge;
    let mut g = cx.grant(ch);
    g.subject_id = ghost.into();
    refused(
        cx.release(true, cx.sign(&g)).await,
        Code::PermissionDenied,
        "subject_mismatch",
    );
    assert_eq!(
        cx.tv.count("SELECT COUNT(*) FROM consent_receipts").await,
        1
    );
    cx.tv.stop().await
}

/// Open challenges are capped per partner and subject (8): the ninth is
/// refused with RESOURCE_EXHAUSTED, with the same answer for a subject id
/// that does not exist; another partner is not affected; using one gives
/// its place back.
pub async fn open_challenges_are_capped(backend: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_server::service::consent::MAX_OPEN_CHALLENGES_PER_PERSON;
    let mut cx = setup(backend).await;
    let ghost = "00000000-0000-4000-8000-000000000000".to_owned();
    let mut messages = Vec::new();
    let mut first = None;
    let mut issued = Vec::new();
    for subject in [cx.subject.clone(), ghost] {
        for _ in 0..MAX_OPEN_CHALLENGES_PER_PERSON {
            let ch =
                cx.b.request_challenge(pb::RequestChallengeRequest {
                    subject_id: subject.clone(),
                })
                .await?
                .into_inner()
                .challenge;
            first.get_or_insert(ch.clone());
            issued.push(ch);
        }
        let e =
            cx.b.request_challenge(pb::RequestChallengeRequest {
                subject_id: subject.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        messages.push(e.message().to_owned());
    }
    assert_eq!(
        messages[0], messages[1],
        "the answer says nothing of the subject"
    );
    assert!(messages[0].contains("challenges open"), "{}", messages[0]);
    // Time-ordered (a version-7 UUID first, then 16 random bytes; their
    // order is the clock's, which a test cannot rely on), and all differ.
    assert!(issued.iter().all(|c| c.len() == 32 && c[6] >> 4 == 7));
    let distinct: std::collections::HashSet<_> = issued.iter().collect();
    assert_eq!(distinct.len(), issued.len());
    // Another partner is not affected.
    cx.challenge(false).await;
    // A used challenge is no longer open.
    let used = first.expect("a challenge");
    cx.release(true, cx.sign(&cx.grant(used))).await?;
    cx.challenge(true).await;
    cx.tv.stop().await
}

/// Presentations raced on one vault: the same grant sent eight times at
/// once is released exactly once, and eight grants on one challenge
/// likewise. On SQLite the claim is decided by reads on the one writer and
/// its writes ride in the commit (`AuditedTx::claim_grant`); on PostgreSQL
/// the conditional writes decide. Either way one wins, the others are
/// refused as replays, and one consent row and one receipt are written.
pub async fn raced_presentations_release_once(backend: Backend) -> anyhow::Result<()> {
    let mut cx = setup(backend).await;
    let present = |s: pb::SignedConsent| pb::ReleaseRequest {
        consent: Some(pb::release_request::Consent::Signed(s)),
        nonce: NONCE.to_vec(),
    };
    let race = |reqs: Vec<pb::ReleaseRequest>, client: ConsentServiceClient<Channel>| async move {
        let mut calls = tokio::task::JoinSet::new();
        for r in reqs {
            let mut c = client.clone();
            calls.spawn(async move { c.release(r).await });
        }
        calls.join_all().await
    };
    // The same grant, eight times.
    let ch = cx.challenge(true).await;
    let signed = cx.sign(&cx.grant(ch));
    let same = race(vec![present(signed); 8], cx.b.clone()).await;
    // Eight grants (eight consent ids) on one challenge.
    let ch = cx.challenge(true).await;
    let grants = (0..8)
        .map(|_| present(cx.sign(&cx.grant(ch.clone()))))
        .collect();
    let one_challenge = race(grants, cx.b.clone()).await;
    for (results, loser_reason) in [
        (same, "consent_replayed"),
        (one_challenge, "challenge_reused"),
    ] {
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "{results:?}");
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(
                (r.code(), reason(r)),
                (Code::AlreadyExists, loser_reason),
                "{r:?}"
            );
        }
    }
    assert_eq!(cx.tv.count("SELECT COUNT(*) FROM consents").await, 2);
    assert_eq!(
        cx.tv.count("SELECT COUNT(*) FROM consent_receipts").await,
        2
    );
    assert_eq!(
        cx.tv
            .count("SELECT COUNT(*) FROM consent_challenges WHERE used_at_ms IS NOT NULL")
            .await,
        2
    );
    cx.tv.stop().await
}

/// A consent and a device request presented again after a restart are
/// still refused: replay state lives in the database.
pub async fn replay_refused_after_restart(backend: Backend) -> anyhow::Result<()> {
    let mut cx = setup(backend).await;
    let ch = cx.challenge(true).await;
    let signed = cx.sign(&cx.grant(ch));
    cx.release(true, signed.clone()).await?;
    let list = cx.device_request(
        &cx.device,
        pb::device_request::Action::ListReceipts(pb::ListReceipts {}),
    );
    cx.wallet.list_receipts(list.clone()).await?;

    cx.tv.restart().await?;
    cx.b = ConsentServiceClient::new(cx.tv.channel("partner-b").await?);
    cx.wallet = DeviceServiceClient::new(cx.tv.channel("wallet").await?);
    refused(
        cx.release(true, signed).await,
        Code::AlreadyExists,
        "consent_replayed",
    );
    refused(
        cx.wallet.list_receipts(list).await,
        Code::AlreadyExists,
        "request_replayed",
    );
    cx.tv.stop().await
}

/// A phone naming another person's presented consent neither waits for
/// that consent's row nor takes it: the call answers while the owner's
/// row is held (a withdrawal of its own, for the caller's person only),
/// and the consent stands.
pub async fn revoking_anothers_consent_locks_nothing(backend: Backend) -> anyhow::Result<()> {
    let mut cx = setup(backend).await;
    let ch = cx.challenge(true).await;
    let signed = cx.sign(&cx.grant(ch));
    let id = grant_of(&signed).consent_id;
    cx.release(true, signed).await?;
    let stranger = create_subject(
        &cx.tv,
        &[("given_name", "Ola"), ("email", "ola@example.org")],
    )
    .await;
    let phone = enroll(&mut cx.a, &mut cx.wallet, &stranger).await;
    // The consent's row held as the owner's own call would hold it (on
    // SQLite the one writer orders everything, and a held write would
    // stop it: there the outcome alone is checked).
    let mut held = cx.tv.db().begin().await?;
    if backend == Backend::Postgres {
        sqlx::query("SELECT consent_id FROM consents WHERE consent_id = $1 FOR UPDATE")
            .bind(id.clone())
            .fetch_one(&mut *held)
            .await?;
    }
    let req = cx.revoke_request(&phone, &id);
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        cx.wallet.revoke_consent(req),
    )
    .await
    .map_err(|_| anyhow::anyhow!("waited for another person's consent row"))??;
    assert!(
        answer.into_inner().revoked,
        "withdrawn for the caller's person"
    );
    held.rollback().await?;
    let revoked: Option<i64> =
        sqlx::query_scalar("SELECT revoked_at_ms FROM consents WHERE consent_id = $1")
            .bind(id.clone())
            .fetch_one(cx.tv.db())
            .await?;
    assert_eq!(revoked, None, "the owner's consent stands");
    cx.tv.stop().await
}

/// A consent the person revokes before a partner presented it is
/// withdrawn: presenting it is refused (`consent_revoked`), the challenge
/// stays usable for another grant, a second revocation answers false, and
/// another person's withdrawal of the same id does not touch it. A phone
/// has at most 64 withdrawals live at a time, which does not hold the
/// person's other phones back. Deleting the person removes them.
pub async fn consent_revoked_before_presentation_is_refused(
    backend: Backend,
) -> anyhow::Result<()> {
    let mut cx = setup(backend).await;
    let ch = cx.challenge(true).await;
    let mut g = cx.grant(ch.clone());
    g.standing = true;
    g.expires_at = g.issued_at + 86_400;
    let signed = cx.sign(&g);
    let id = grant_of(&signed).consent_id;
    assert!(
        cx.revoke_consent(&id).await,
        "withdrawn before presentation"
    );
    assert!(!cx.revoke_consent(&id).await, "already withdrawn");
    refused(
        cx.release(true, signed.clone()).await,
        Code::PermissionDenied,
        "consent_revoked",
    );
    refused(
        cx.release_standing(true, &id).await,
        Code::NotFound,
        "consent_unknown",
    );
    // The refusal left the challenge unused: another grant presents it.
    let other = cx.sign(&cx.grant(ch));
    let r = cx.release(true, other).await?;
    assert_eq!(cx.open(&r).len(), 2);
    let rows = cx.audit("DeviceCall").await;
    assert!(
        rows.iter()
            .any(|(_, d)| d.contains("op=revoke_consent") && d.contains("revoked=true withdrawn")),
        "{rows:?}"
    );

    // Another person's phone withdrawing the same id changes nothing for
    // this person's grant of it.
    let second = create_subject(
        &cx.tv,
        &[("given_name", "Ola"), ("email", "ola@example.org")],
    )
    .await;
    let other_phone = enroll(&mut cx.a, &mut cx.wallet, &second).await;
    let ch = cx.challenge(true).await;
    let mine = cx.sign(&cx.grant(ch));
    let mine_id = grant_of(&mine).consent_id;
    let req = cx.revoke_request(&other_phone, &mine_id);
    assert!(cx.wallet.revoke_consent(req).await?.into_inner().revoked);
    cx.release(true, mine).await?;

    // At most 64 live withdrawals per device (the first one counts).
    for i in 0..63u8 {
        assert!(cx.revoke_consent(&[i; 16]).await);
    }
    let req = cx.revoke_request(&cx.device, &[0xee; 16]);
    let full = cx.wallet.revoke_consent(req).await.unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    assert!(full.message().contains("64 consents"), "{full:?}");
    // The person's other phone is not held back by this one's withdrawals
    // (a stolen phone, once revoked, cannot block the owner).
    let spare = enroll(&mut cx.a, &mut cx.wallet, &cx.subject).await;
    let req = cx.revoke_request(&spare, &[0xee; 16]);
    assert!(cx.wallet.revoke_consent(req).await?.into_inner().revoked);
    assert_eq!(
        cx.tv
            .count("SELECT count(*) FROM consent_withdrawals")
            .await,
        66
    );
    cx.delete_subject().await?;
    assert_eq!(
        cx.tv
            .count("SELECT count(*) FROM consent_withdrawals")
            .await,
        1
    );
    cx.tv.stop().await
}

/// A presentation and a revocation of the same consent racing: one wins
/// whole. Either the release went through and the revocation revoked the
/// presented consent, or the withdrawal came first and the presentation
/// was refused; never a release after a withdrawal.
pub async fn withdrawal_and_presentation_race_one_wins(backend: Backend) -> anyhow::Result<()> {
    let mut cx = setup(backend).await;
    for _ in 0..6 {
        let ch = cx.challenge(true).await;
        let mut g = cx.grant(ch);
        g.standing = true;
        g.expires_at = g.issued_at + 86_400;
        let signed = cx.sign(&g);
        let id = grant_of(&signed).consent_id;
        let revoke = cx.revoke_request(&cx.device, &id);
        let (mut b, mut wallet) = (cx.b.clone(), cx.wallet.clone());
        let release = tokio::spawn(async move {
            b.release(pb::ReleaseRequest {
                consent: Some(pb::release_request::Consent::Signed(signed)),
                nonce: NONCE.to_vec(),
            })
            .await
        });
        let revoked = tokio::spawn(async move { wallet.revoke_consent(revoke).await });
        let (release, revoked) = (release.await?, revoked.await??);
        assert!(revoked.into_inner().revoked);
        let audit = cx.audit("DeviceCall").await;
        let detail = audit
            .iter()
            .map(|(_, d)| d)
            .rfind(|d| d.contains(&hex::encode(&id)))
            .expect("the revocation's audit record")
            .clone();
        match release {
            Ok(_) => {
                assert!(detail.contains("revoked=true presented "), "{detail}");
                refused(
                    cx.release_standing(true, &id).await,
                    Code::PermissionDenied,
                    "consent_revoked",
                );
            }
            Err(e) => {
                assert_eq!(
                    (e.code(), reason(&e)),
                    (Code::PermissionDenied, "consent_revoked"),
                    "{e:?}"
                );
                assert!(detail.contains("revoked=true withdrawn "), "{detail}");
            }
        }
    }
    cx.tv.stop().await
}

/// Standing consents are used by id until revoked; revoked devices sign
/// nothing more.
pub async fn standing_consent_and_revocation(backend: Backend) -> anyhow::Result<()> {
    let mut cx = setup(backend).await;
    let ch = cx.challenge(true).await;
    let mut g = cx.grant(ch);
    g.standing = true;
    g.expires_at = g.issued_at + 30 * 86_400;
    let signed = cx.sign(&g);
    let id = grant_of(&signed).consent_id;
    let r1 = cx.release(true, signed).await?;
    let r2 = cx.release_standing(true, &id).await?;
    assert_ne!(r1.receipt_id, r2.receipt_id);
    // Time-ordered: `rcp_` and a version-7 UUID in hex. (Their order is
    // the clock's, which a test cannot rely on.)
    for r in [&r1, &r2] {
        assert!(
            r.receipt_id.len() == 36 && r.receipt_id.as_bytes()[16] == b'7',
            "{}",
            r.receipt_id
        );
    }
    assert_eq!(cx.open(&r2).len(), 2);
    // Only the audience may use it.
    refused(
        cx.release_standing(false, &id).await,
        Code::NotFound,
        "consent_unknown",
    );
    assert_eq!(cx.receipts().await.len(), 2);

    assert!(cx.revoke_consent(&id).await);
    assert!(!cx.revoke_consent(&id).await, "already revoked");
    refused(
        cx.release_standing(true, &id).await,
        Code::PermissionDenied,
        "consent_revoked",
    );

    // A single-use consent cannot be used again by id.
    let ch = cx.challenge(true).await;
    let s = cx.sign(&cx.grant(ch));
    let single = grant_of(&s).consent_id;
    cx.release(true, s).await?;
    refused(
        cx.release_standing(true, &single).await,
        Code::AlreadyExists,
        "consent_replayed",
    );

    // A second device revokes the first; the first then signs nothing.
    let ch = cx.challenge(true).await;
    let mut g = cx.grant(ch);
    g.standing = true;
    g.expires_at = g.issued_at + 86_400;
    let s = cx.sign(&g);
    let standing2 = grant_of(&s).consent_id;
    cx.release(true, s).await?;
    let second = enroll(&mut cx.a, &mut cx.wallet, &cx.subject.clone()).await;
    let req = cx.device_request(
        &second,
        pb::device_request::Action::ListDevices(pb::ListDevices {}),
    );
    let devices = cx.wallet.list_devices(req).await?.into_inner().devices;
    assert_eq!(devices.len(), 2);
    let req = cx.device_request(
        &second,
        pb::device_request::Action::RevokeDevice(pb::RevokeDevice {
            device_id: cx.device.device_id(),
        }),
    );
    assert!(cx.wallet.revoke_device(req).await?.into_inner().revoked);
    let ch = cx.challenge(true).await;
    refused(
        cx.release(true, cx.sign(&cx.grant(ch))).await,
        Code::PermissionDenied,
        "device_revoked",
    );
    refused(
        cx.release_standing(true, &standing2).await,
        Code::PermissionDenied,
        "device_revoked",
    );
    let req = cx.device_request(
        &cx.device,
        pb::device_request::Action::ListReceipts(pb::ListReceipts {}),
    );
    refused(
        cx.wallet.list_receipts(req).await,
        Code::PermissionDenied,
        "device_revoked",
    );
    // Without the device's key, a revoked device answers as an active one
    // does to a forged signature: a partner that knows its id from a grant
    // cannot watch for the person revoking it.
    let ch = cx.challenge(true).await;
    let mut forged = cx.sign(&cx.grant(ch));
    forged.signature[10] ^= 1;
    refused(
        cx.release(true, forged).await,
        Code::Unauthenticated,
        "bad_signature",
    );
    cx.tv.stop().await
}

/// Enrollment codes work once, for their subject, until they expire;
/// roles gate every call; device requests are bound to their RPC and time.
pub async fn enrollment_and_device_call_checks(backend: Backend) -> anyhow::Result<()> {
    let mut cx = setup(backend).await;
    let code = code_for(&mut cx.a, &cx.subject).await;
    assert_eq!(code.len(), 23, "XXXXX-XXXXX-XXXXX-XXXXX");
    let k1 = DeviceKey::generate(&SystemRng::default()).unwrap();
    let k2 = DeviceKey::generate(&SystemRng::default()).unwrap();
    // Wrong subject, then the right one; then the code is spent.
    let other = create_subject(&cx.tv, &[("given_name", "Bo")]).await;
    refused(
        cx.wallet
            .enroll(k1.enrollment(&other, &code).unwrap())
            .await,
        Code::FailedPrecondition,
        "enrollment_code_invalid",
    );
    // Typed in lower case without dashes still works.
    let typed = code.replace('-', "").to_lowercase();
    cx.wallet
        .enroll(k1.enrollment(&cx.subject, &typed).unwrap())
        .await?;
    refused(
        cx.wallet
            .enroll(k2.enrollment(&cx.subject, &code).unwrap())
            .await,
        Code::FailedPrecondition,
        "enrollment_code_invalid",
    );
    // A code whose expiry was edited in the database is refused as forged
    // (its row MAC covers the expiry; the expiry check itself is a core
    // unit test, `enrollment_codes_refuse_alike`).
    let code = code_for(&mut cx.a, &cx.subject).await;
    sqlx::query("UPDATE enrollment_codes SET expires_at_ms = 1 WHERE used_at_ms IS NULL")
        .execute(cx.tv.db())
        .await?;
    let r = cx
        .wallet
        .enroll(k2.enrollment(&cx.subject, &code).unwrap())
        .await;
    forged(&cx, r, "enrollment code row MAC").await;
    // The same key twice.
    let code = code_for(&mut cx.a, &cx.subject).await;
    refused(
        cx.wallet
            .enroll(k1.enrollment(&cx.subject, &code).unwrap())
            .await,
        Code::AlreadyExists,
        "device_already_enrolled",
    );
    // Proof of possession: an enrollment signed by another key.
    let mut e = k2.enrollment(&cx.subject, &code).unwrap();
    e.signature = k1
        .sign(b"idvault/v1/device-enrollment\0", &e.enrollment)
        .unwrap()
        .to_vec();
    refused(
        cx.wallet.enroll(e).await,
        Code::Unauthenticated,
        "bad_signature",
    );

    // Codes are issued only by the partner that created the subject.
    let bs = cx
        .tv
        .subjects("partner-b")
        .await?
        .create_subject(pb::CreateSubjectRequest {
            fields: vec![pb::Field {
                name: "given_name".into(),
                value: "Cy".into(),
            }],
        })
        .await?
        .into_inner()
        .subject_id;
    let e =
        cx.a.issue_enrollment_code(pb::IssueEnrollmentCodeRequest { subject_id: bs })
            .await
            .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // Roles: partner-b may not issue codes; partners may not act as wallets;
    // the wallet may not ask for challenges.
    let e =
        cx.b.issue_enrollment_code(pb::IssueEnrollmentCodeRequest {
            subject_id: cx.subject.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let mut as_partner = DeviceServiceClient::new(cx.tv.channel("partner-a").await?);
    let req = cx.device_request(
        &cx.device,
        pb::device_request::Action::ListReceipts(pb::ListReceipts {}),
    );
    assert_eq!(
        as_partner.list_receipts(req).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let mut wallet_as_partner = ConsentServiceClient::new(cx.tv.channel("wallet").await?);
    let e = wallet_as_partner
        .request_challenge(pb::RequestChallengeRequest {
            subject_id: cx.subject.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // A signed ListReceipts sent to RevokeConsent; a stale request.
    let req = cx.device_request(
        &cx.device,
        pb::device_request::Action::ListReceipts(pb::ListReceipts {}),
    );
    refused(
        cx.wallet.revoke_consent(req).await,
        Code::PermissionDenied,
        "wrong_action",
    );
    let stale = cx
        .device
        .sign_request(
            pb::device_request::Action::ListReceipts(pb::ListReceipts {}),
            unix_now() - 3600,
            &SystemRng::default(),
        )
        .unwrap();
    refused(
        cx.wallet.list_receipts(stale).await,
        Code::FailedPrecondition,
        "request_outside_window",
    );
    // Deleting the subject removes its devices.
    cx.delete_subject().await?;
    let req = cx.device_request(
        &cx.device,
        pb::device_request::Action::ListReceipts(pb::ListReceipts {}),
    );
    refused(
        cx.wallet.list_receipts(req).await,
        Code::NotFound,
        "unknown_device",
    );
    cx.tv.stop().await
}

/// Asserts a refusal for a row that failed its MAC: DATA_LOSS, and the
/// newest audit record says which row kind, as an integrity failure.
async fn forged(cx: &Ctx, r: Result<impl std::fmt::Debug, tonic::Status>, what: &str) {
    let s = r.expect_err(what);
    assert_eq!(s.code(), Code::DataLoss, "{what}: {}", s.message());
    let (_, outcome, detail) = cx.tv.last_audit().await;
    assert_eq!(outcome, "error", "{what}");
    assert!(detail.contains(&format!("integrity: {what}")), "{detail}");
}

async fn exec(cx: &Ctx, sql: &'static str, binds: &[Vec<u8>]) {
    let mut q = sqlx::query(sql);
    for b in binds {
        q = q.bind(b.clone());
    }
    q.execute(cx.tv.db()).await.unwrap();
}

/// A database writer without the root key (SECURITY.md) can neither widen,
/// copy, revive nor invent a consent, nor put their own key in a device
/// row, nor plant an enrollment code: each such row is refused with
/// DATA_LOSS, audited as an integrity failure, and releases nothing.
pub async fn forged_consent_rows_authorise_nothing(backend: Backend) -> anyhow::Result<()> {
    let mut cx = setup(backend).await;
    let ch = cx.challenge(true).await;
    let mut g = cx.grant(ch);
    g.standing = true;
    g.expires_at = g.issued_at + 86_400;
    let signed = cx.sign(&g);
    let id = grant_of(&signed).consent_id;
    cx.release(true, signed).await?;
    let r = cx.release_standing(true, &id).await?;
    assert_eq!(cx.open(&r).len(), 2);
    let receipts = cx.receipts().await.len();

    // Widened: one more field in the stored row.
    let fields: String = sqlx::query_scalar("SELECT fields FROM consents WHERE consent_id = $1")
        .bind(id.clone())
        .fetch_one(cx.tv.db())
        .await?;
    sqlx::query("UPDATE consents SET fields = $1 WHERE consent_id = $2")
        .bind(format!("family_name,{fields}"))
        .bind(id.clone())
        .execute(cx.tv.db())
        .await?;
    let r = cx.release_standing(true, &id).await;
    forged(&cx, r, "consent row MAC").await;
    sqlx::query("UPDATE consents SET fields = $1 WHERE consent_id = $2")
        .bind(fields)
        .bind(id.clone())
        .execute(cx.tv.db())
        .await?;
    cx.release_standing(true, &id).await?;

    // Copied for partner-a, MAC and all (another id, another audience).
    let copy = vec![0xc0; 16];
    exec(
        &cx,
        "INSERT INTO consents (consent_id, subject_id, device_id, audience, purpose, fields, standing, \
         issued_at, expires_at, grant_hash, presented_at_ms, revoked_at_ms, grant_bytes, grant_signature, \
         mac_version, mac) SELECT $1, subject_id, device_id, 'spiffe://idvault.dev/partner/partner-a', \
         purpose, fields, standing, issued_at, expires_at, grant_hash, presented_at_ms, revoked_at_ms, \
         grant_bytes, grant_signature, mac_version, mac FROM consents WHERE consent_id = $2",
        &[copy.clone(), id.clone()],
    )
    .await;
    let r = cx.release_standing(false, &copy).await;
    forged(&cx, r, "consent row MAC").await;
    // Invented, without a MAC (as a row from before row MACs).
    exec(
        &cx,
        "UPDATE consents SET mac = NULL, mac_version = NULL WHERE consent_id = $1",
        std::slice::from_ref(&copy),
    )
    .await;
    let r = cx.release_standing(false, &copy).await;
    forged(&cx, r, "consent row MAC").await;

    // Revived: revoked by the phone, then the revocation cleared.
    assert!(cx.revoke_consent(&id).await);
    exec(
        &cx,
        "UPDATE consents SET revoked_at_ms = NULL WHERE consent_id = $1",
        std::slice::from_ref(&id),
    )
    .await;
    let r = cx.release_standing(true, &id).await;
    forged(&cx, r, "consent row MAC").await;

    // A single-use grant presented again: the writer deletes its consent
    // row and marks its challenge unused; then plants a challenge outright.
    let ch = cx.challenge(true).await;
    let once = cx.sign(&cx.grant(ch.clone()));
    let once_id = grant_of(&once).consent_id;
    cx.release(true, once.clone()).await?;
    exec(
        &cx,
        "DELETE FROM consents WHERE consent_id = $1",
        std::slice::from_ref(&once_id),
    )
    .await;
    exec(
        &cx,
        "UPDATE consent_challenges SET used_at_ms = NULL WHERE challenge = $1",
        std::slice::from_ref(&ch),
    )
    .await;
    let r = cx.release(true, once).await;
    forged(&cx, r, "challenge row MAC").await;
    let planted = vec![0x77; 32];
    sqlx::query(
        "INSERT INTO consent_challenges (challenge, partner, subject_id, expires_at_ms) \
         SELECT $1, partner, subject_id, $2 FROM consent_challenges WHERE challenge = $3",
    )
    .bind(planted.clone())
    .bind(i64::MAX / 2)
    .bind(ch)
    .execute(cx.tv.db())
    .await?;
    let r = cx.release(true, cx.sign(&cx.grant(planted))).await;
    forged(&cx, r, "challenge row MAC").await;

    // The attacker's own key in a device row of the person: as a new row
    // (no MAC), then in place of the real device's key (its MAC kept).
    let mallory = DeviceKey::generate(&SystemRng::default()).unwrap();
    let their_key = mallory.public_key();
    let subject_bytes = uuid::Uuid::parse_str(&cx.subject)?.as_bytes().to_vec();
    sqlx::query(
        "INSERT INTO devices (device_id, subject_id, public_key, enrolled_by, enrolled_at_ms) \
         VALUES ($1, $2, $3, 'partner-a', 1)",
    )
    .bind(mallory.device_id())
    .bind(subject_bytes.clone())
    .bind(their_key.clone())
    .execute(cx.tv.db())
    .await?;
    let ch = cx.challenge(true).await;
    let g = cx.grant(ch);
    let s = mallory.sign_grant(&g, &SystemRng::default()).unwrap();
    let r = cx.release(true, s).await;
    forged(&cx, r, "device row MAC").await;
    // (The planted row goes first: a key is enrolled once.)
    sqlx::query("DELETE FROM devices WHERE device_id = $1")
        .bind(mallory.device_id())
        .execute(cx.tv.db())
        .await?;
    sqlx::query("UPDATE devices SET public_key = $1 WHERE device_id = $2")
        .bind(their_key)
        .bind(cx.device.device_id())
        .execute(cx.tv.db())
        .await?;
    let ch = cx.challenge(true).await;
    let g = cx.grant(ch);
    let mut s = mallory.sign_grant(&g, &SystemRng::default()).unwrap();
    s.device_id = cx.device.device_id();
    let r = cx.release(true, s).await;
    forged(&cx, r, "device row MAC").await;

    // A planted enrollment code enrolls nothing.
    let code = "ABCDE-FGHJK-MNPQR-STVWX";
    let hash = idvault_tests::idvault_core::consent::enrollment_code_hash(code);
    let far = i64::MAX / 2;
    sqlx::query(
        "INSERT INTO enrollment_codes (code_hash, subject_id, issued_to, expires_at_ms) VALUES ($1, $2, 'partner-a', $3)",
    )
    .bind(hash.to_vec())
    .bind(subject_bytes)
    .bind(far)
    .execute(cx.tv.db())
    .await?;
    let intruder = DeviceKey::generate(&SystemRng::default()).unwrap();
    let r = cx
        .wallet
        .enroll(intruder.enrollment(&cx.subject, code).unwrap())
        .await;
    forged(&cx, r, "enrollment code row MAC").await;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM devices WHERE device_id = $1")
        .bind(intruder.device_id())
        .fetch_one(cx.tv.db())
        .await?;
    assert_eq!(n, 0, "nothing enrolled");

    // Nothing was released by any of it.
    let released: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM consent_receipts")
        .fetch_one(cx.tv.db())
        .await?;
    // The two real releases after the count (standing, single-use).
    assert_eq!(usize::try_from(released)?, receipts + 2);
    cx.tv.stop().await
}

/// Two vault replicas share one PostgreSQL database. A grant presented to
/// one is refused by the other (replay state is the database's, not a
/// process's); a grant signed for partner-b is refused when partner-a
/// presents it on either replica; a device request replayed on the other
/// replica is refused; a grant raced to both replicas at once is released
/// exactly once.
pub async fn grant_replay_across_replicas(backend: Backend) -> anyhow::Result<()> {
    let mut cx = setup(backend).await;
    let (_replica, server) = cx.tv.replica().await?;
    let mut b2 = ConsentServiceClient::new(cx.tv.channel_at(server.addr, "partner-b").await?);
    let mut a2 = ConsentServiceClient::new(cx.tv.channel_at(server.addr, "partner-a").await?);
    let mut wallet2 = DeviceServiceClient::new(cx.tv.channel_at(server.addr, "wallet").await?);
    let present = |s: pb::SignedConsent| pb::ReleaseRequest {
        consent: Some(pb::release_request::Consent::Signed(s)),
        nonce: NONCE.to_vec(),
    };

    // Released on replica 1, replayed on replica 2.
    let ch = cx.challenge(true).await;
    let signed = cx.sign(&cx.grant(ch));
    cx.release(true, signed.clone()).await?;
    refused(
        b2.release(present(signed.clone())).await,
        Code::AlreadyExists,
        "consent_replayed",
    );
    // Signed for partner-b, presented by partner-a on either replica.
    let ch = cx.challenge(true).await;
    let for_b = cx.sign(&cx.grant(ch));
    refused(
        a2.release(present(for_b.clone())).await,
        Code::PermissionDenied,
        "audience_mismatch",
    );
    refused(
        cx.release(false, for_b.clone()).await,
        Code::PermissionDenied,
        "audience_mismatch",
    );
    // Raced to both replicas: exactly one release.
    let (r1, r2) = tokio::join!(
        cx.b.release(present(for_b.clone())),
        b2.release(present(for_b))
    );
    assert_eq!(
        usize::from(r1.is_ok()) + usize::from(r2.is_ok()),
        1,
        "{r1:?} {r2:?}"
    );
    let loser = r1.err().or(r2.err()).expect("one refused");
    assert!(
        matches!(reason(&loser), "consent_replayed" | "challenge_reused"),
        "{loser:?}"
    );
    // A device request answered by replica 1, replayed on replica 2.
    let list = cx.device_request(
        &cx.device,
        pb::device_request::Action::ListReceipts(pb::ListReceipts {}),
    );
    cx.wallet.list_receipts(list.clone()).await?;
    refused(
        wallet2.list_receipts(list).await,
        Code::AlreadyExists,
        "request_replayed",
    );
    assert_eq!(
        cx.tv.count("SELECT COUNT(*) FROM consent_receipts").await,
        2
    );
    server.shutdown().await?;
    cx.tv.stop().await
}

/// `keys rewrap` then `keys retire` (the operations the CLI runs): after a
/// rotation, version 1 is referenced by data keys, match indexes, links,
/// row MACs and audit MACs; the rewrap moves every one of them to version
/// 2; then version 1 is removed from the key file and, after a restart
/// without it, every chain verifies, every person matches, every link is
/// found, the person's device still signs consents that release, and the
/// audit log verifies (old checkpoints with the kept public key).
pub async fn rewrap_then_retire(backend: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_core::keys::{RetiredPublicKey, RetiredPurpose};
    use idvault_tests::idvault_proto::v1::match_service_client::MatchServiceClient;
    use idvault_tests::idvault_server::service::{Caller, audit, receipts};
    use pb::IdentifierType::{Account, Msisdn};

    let mut cx = setup(backend).await;
    // A release: challenge, consent and consent receipt rows.
    let ch = cx.challenge(true).await;
    let signed = cx.sign(&cx.grant(ch));
    cx.release(true, signed).await?;
    // People to match, and cross-reference links to find again.
    let mut people = Vec::new();
    for i in 0..25 {
        let given = format!("Given{i}");
        let family = format!("Family{}", i * 7);
        let dob = format!("19{:02}-0{}-1{}", 50 + i, 1 + i % 9, i % 10);
        let id = create_subject(
            &cx.tv,
            &[
                ("given_name", &given),
                ("family_name", &family),
                ("date_of_birth", &dob),
            ],
        )
        .await;
        people.push((id, given, family, dob));
    }
    let records = || {
        vec![vec![
            super::bridge::rec("k1", &[(Msisdn, "+447700900111"), (Account, "KA-1")]),
            super::bridge::rec("k2", &[(Account, "KA-2")]),
        ]]
    };
    let first = super::bridge::import(&cx.tv, "partner-a", records()).await?;
    assert_eq!(first.entities_created, 2);
    let mut matcher = MatchServiceClient::new(cx.tv.channel("partner-a").await?);
    let token_of = async |m: &mut MatchServiceClient<_>,
                          (_, g, f, d): &(String, String, String, String)| {
        m.r#match(pb::MatchRequest {
            query: Some(pb::MatchQuery {
                fields: [("given_name", g), ("family_name", f), ("date_of_birth", d)]
                    .iter()
                    .map(|(n, v)| pb::Field {
                        name: (*n).into(),
                        value: (*v).clone(),
                    })
                    .collect(),
                max_results: 1,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .candidates
        .first()
        .map(|c| c.pairwise_token.clone())
    };
    let mut tokens = Vec::new();
    for p in &people {
        tokens.push(token_of(&mut matcher, p).await.expect("found before"));
    }
    // Learned weights: a row MACed under version 1 too.
    cx.tv.vault.estimate_match_model("partner-a", 1000).await?;

    let root = cx.tv.dir.path().join("root.key");
    let domains: Vec<String> = vec!["logs".into(), "partner-a".into(), "partner-b".into()];
    let (v, _) = idvault_tests::idvault_server::keyfile::rotate(
        &root,
        None,
        &SystemRng::default(),
        &domains,
    )?;
    assert_eq!(v, 2);
    cx.tv.restart().await?;
    cx.reconnect().await;
    let refs = cx.tv.vault.version_references(1).await?;
    let named = |refs: &[(String, u64)], what: &str| refs.iter().any(|(w, _)| w.starts_with(what));
    for what in [
        "subjects",
        "match index",
        "cross-reference links",
        "devices",
        "consents",
        "consent_challenges",
        "pairwise_tokens",
        "match_models",
        "audit leaves",
    ] {
        assert!(
            named(&refs, what),
            "{what} references v1 before the rewrap: {refs:?}"
        );
    }

    let mut seen = Vec::new();
    let report = cx
        .tv
        .vault
        .rewrap(&Caller::new("idvault"), |p| seen.push(p.phase))
        .await?;
    assert_eq!(report.target, 2);
    assert_eq!(report.left_behind(), 0, "{report:?}");
    assert_eq!(report.subjects, 26, "{report:?}");
    assert_eq!(report.links, 3, "{report:?}");
    assert!(report.row_macs >= 3 && report.leaves > 30, "{report:?}");
    assert!(seen.contains(&"subjects") && seen.contains(&"audit-leaves"));
    assert_eq!(cx.tv.vault.version_references(1).await?, Vec::new());
    // A second run finds nothing left.
    let again = cx.tv.vault.rewrap(&Caller::new("idvault"), |_| {}).await?;
    assert_eq!((again.subjects, again.links, again.row_macs), (0, 0, 0));

    // Retire version 1: out of the key file, its verification keys kept.
    let keys = cx.tv.vault.keys();
    let origin = cx.tv.vault.audit_settings().origin.clone();
    let public = vec![
        RetiredPublicKey {
            version: 1,
            purpose: RetiredPurpose::AuditSigning,
            public: audit::audit_signer(keys, &origin, 1)?.public_key(),
        },
        RetiredPublicKey {
            version: 1,
            purpose: RetiredPurpose::ReceiptSigning,
            public: receipts::receipt_signer(keys, &origin, 1)?.public_key(),
        },
    ];
    let tokens_before: Vec<_> = domains.clone();
    idvault_tests::idvault_server::keyfile::update(&root, None, &SystemRng::default(), |cur| {
        let mut p = cur.clone();
        for d in &tokens_before {
            p = p.with_token_domain(d, 2)?;
        }
        p.without_version(1, public)
    })?;
    cx.tv.restart().await?;
    cx.reconnect().await;
    assert_eq!(cx.tv.vault.keys().versions(), vec![2]);
    // The learned weights were re-MACed, so they are still used.
    let models = cx.tv.vault.match_model_reports().await?;
    let model = models.iter().find(|r| r.domain == "partner-a");
    assert!(
        model.is_some_and(|r| r.problem.is_none() && r.estimate.is_some()),
        "{model:?}"
    );

    let mut subjects = cx.tv.subjects("partner-a").await?;
    for (id, ..) in people.iter().chain(std::iter::once(&(
        cx.subject.clone(),
        String::new(),
        String::new(),
        String::new(),
    ))) {
        let r = subjects
            .verify_subject_chain(pb::VerifySubjectChainRequest {
                subject_id: id.clone(),
            })
            .await?
            .into_inner();
        assert!(r.intact, "{id}: {r:?}");
    }
    let mut matcher = MatchServiceClient::new(cx.tv.channel("partner-a").await?);
    for (p, t) in people.iter().zip(&tokens) {
        assert_eq!(
            token_of(&mut matcher, p).await.as_ref(),
            Some(t),
            "{} still matches",
            p.0
        );
    }
    let again = super::bridge::import(&cx.tv, "partner-a", records()).await?;
    assert_eq!(
        (again.entities_created, again.identifiers_linked),
        (0, 0),
        "every link is found under version 2"
    );
    // The person's device (its row re-MACed) still signs a consent that releases.
    let ch = cx.challenge(true).await;
    let signed = cx.sign(&cx.grant(ch));
    let r = cx.release(true, signed).await?;
    assert!(!cx.open(&r).is_empty());
    cx.tv.checkpointed().await?;
    assert!(matches!(
        cx.tv.verify_audit().await?,
        idvault_tests::idvault_server::service::AuditVerdict::Intact { .. }
    ));
    cx.tv.stop().await
}

/// The row-MAC walk goes in key order (pairwise tokens by token), a window of keys at a
/// time from the last key read (no index on the version): across
/// windows, rows whose MAC fails (a window's first, the next, the last)
/// are passed over and counted, each row below the target is read once,
/// every other row moves to the new version, and a window with nothing
/// below the target does not end the walk.
pub async fn rewrap_walk_crosses_windows_and_passes_forged_rows(
    backend: Backend,
) -> anyhow::Result<()> {
    use idvault_tests::idvault_server::service::Caller;
    use idvault_tests::idvault_server::store::MAC_WALK_WINDOW;

    let tv = TestVault::start(backend).await?;
    let w = MAC_WALK_WINDOW as usize;
    let n = w + 30;
    // The key is (partner, subject): partner-a's tokens fill the first
    // window exactly, so the second starts where the partner changes, at
    // subject ids below the cursor's.
    let mut a = tv.subjects("partner-a").await?;
    let mut b = tv.subjects("partner-b").await?;
    for i in 0..n {
        let subjects = if i < w { &mut a } else { &mut b };
        subjects
            .create_subject(pb::CreateSubjectRequest {
                fields: vec![pb::Field {
                    name: "email".into(),
                    value: format!("walk{i}@example.org"),
                }],
            })
            .await?;
    }
    let mut tv = tv;
    tv.rotate_root_key().await?;
    // A database writer breaks the MACs of tokens at these places of the
    // order the walk goes in (by token, migration 0028), all past the
    // first window: its first two rows, the end.
    let edge = w as i64;
    let places = [edge, edge + 1, n as i64 - 1];
    for at in places {
        sqlx::query(
            "UPDATE pairwise_tokens SET mac = $1 WHERE token = \
             (SELECT token FROM pairwise_tokens ORDER BY token LIMIT 1 OFFSET $2)",
        )
        .bind(vec![7u8; 32])
        .bind(at)
        .execute(tv.db())
        .await?;
    }
    // A rewrap, with the rows its row-MAC walk read below the target.
    let rewrap = async |tv: &TestVault| {
        let mut read = 0;
        let report = tv
            .vault
            .rewrap(&Caller::new("idvault"), |p| {
                if p.phase == "row-macs" {
                    read = p.done;
                }
            })
            .await?;
        anyhow::Ok((report, read))
    };
    let (report, read) = rewrap(&tv).await?;
    // The subjects' owner MACs and the tokens, each row read once.
    assert_eq!(read, 2 * n as u64, "{report:?}");
    assert_eq!(report.forged_rows, places.len() as u64, "{report:?}");
    let at = |v: i64| {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM pairwise_tokens WHERE mac_version = $1")
            .bind(v)
            .fetch_one(tv.db())
    };
    assert_eq!(at(1).await?, places.len() as i64, "the forged rows keep v1");
    assert_eq!(
        at(2).await? as usize,
        n - places.len(),
        "every other row moved"
    );
    // A second run moves nothing: the first window has no row below the
    // target now, and the walk goes on to the forged rows of the second.
    let (again, read) = rewrap(&tv).await?;
    assert_eq!(
        (again.row_macs, again.forged_rows, read),
        (0, places.len() as u64, places.len() as u64)
    );
    tv.stop().await
}

/// The row-MAC walk never waits for a row another transaction holds while
/// it holds the rows its batch already re-MACed (a call locking rows of
/// one table in another order would close a cycle): on PostgreSQL it skips
/// the held row, commits the rest, and takes the held one afterwards on
/// its own, once its holder is done. Nothing is miscounted as forged.
pub async fn rewrap_walk_waits_for_no_held_row(backend: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_server::service::Caller;

    let mut cx = setup(backend).await;
    for _ in 0..3 {
        enroll(&mut cx.a, &mut cx.wallet, &cx.subject).await;
    }
    let mut tv = cx.tv;
    let target = tv.rotate_root_key().await?;
    let devices: Vec<String> =
        sqlx::query_scalar("SELECT device_id FROM devices ORDER BY device_id")
            .fetch_all(tv.db())
            .await?;
    assert_eq!(devices.len(), 4);
    let (first, last) = (&devices[0], &devices[3]);
    // The walk's last device is held as a call would hold it (on SQLite
    // the one writer orders everything, and a held write would stop it).
    let mut held = tv.db().begin().await?;
    if backend == Backend::Postgres {
        sqlx::query("SELECT device_id FROM devices WHERE device_id = $1 FOR NO KEY UPDATE")
            .bind(last.clone())
            .fetch_one(&mut *held)
            .await?;
    }
    let version_of = async |id: &String| {
        sqlx::query_scalar::<_, i64>("SELECT mac_version FROM devices WHERE device_id = $1")
            .bind(id.clone())
            .fetch_one(tv.db())
            .await
    };
    let caller = Caller::new("idvault");
    let rewrap = tv.vault.rewrap(&caller, |_| {});
    // The first device's new MAC commits while the last is still held.
    let probe = async {
        let seen = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while version_of(first).await? != i64::from(target) {
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
            anyhow::Ok(())
        })
        .await
        .map_err(|_| {
            anyhow::anyhow!("the walk's batch waited for a held row with the rows before it")
        });
        held.rollback().await?;
        seen?
    };
    let (report, seen) = tokio::join!(rewrap, probe);
    let report = report?;
    seen?;
    assert_eq!(report.forged_rows, 0, "{report:?}");
    for d in &devices {
        assert_eq!(version_of(d).await?, i64::from(target));
    }
    tv.stop().await
}

/// What a database writer forged or edited is never blessed by a rewrap:
/// a device row whose MAC fails keeps its old MAC, and a link whose
/// `owner` was changed is not re-indexed under the new owner's key; both
/// are counted, and version 1 stays referenced (retire refuses).
pub async fn rewrap_leaves_forged_rows_and_edited_links(backend: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_server::service::Caller;
    use pb::IdentifierType::{Account, Msisdn};

    let mut cx = setup(backend).await;
    let first = super::bridge::import(
        &cx.tv,
        "partner-a",
        vec![vec![
            super::bridge::rec("e1", &[(Msisdn, "+447700900222")]),
            super::bridge::rec("e2", &[(Account, "EA-2")]),
        ]],
    )
    .await?;
    assert_eq!(first.entities_created, 2);
    // Two more people: one whose family name changed (two packets of it).
    let rho = create_subject(&cx.tv, &[("given_name", "Rho"), ("family_name", "Old")]).await;
    cx.tv
        .subjects("partner-a")
        .await?
        .update_subject(pb::UpdateSubjectRequest {
            subject_id: rho.clone(),
            fields: vec![pb::Field {
                name: "family_name".into(),
                value: "New".into(),
            }],
        })
        .await?;
    let sigma = create_subject(&cx.tv, &[("given_name", "Sigma")]).await;
    cx.tv.rotate_root_key().await?;
    cx.reconnect().await;
    // A database writer drops Rho's newest packet (its head left as it
    // was: the older family name would be indexed), and sets Sigma's key
    // version out of range (the row no longer decodes). Each is counted;
    // neither stops the rewrap of the others.
    let raw = |s: &str| uuid::Uuid::parse_str(s).unwrap().as_bytes().to_vec();
    sqlx::query(
        "DELETE FROM packets WHERE subject_id = $1 \
         AND seq = (SELECT max(seq) FROM packets WHERE subject_id = $1)",
    )
    .bind(raw(&rho))
    .execute(cx.tv.db())
    .await?;
    sqlx::query("UPDATE subjects SET kek_version = -1 WHERE subject_id = $1")
        .bind(raw(&sigma))
        .execute(cx.tv.db())
        .await?;
    // A database writer edits one link's owner and one device row.
    sqlx::query(
        "UPDATE xref_links SET owner = 'partner-b' WHERE id_type = (SELECT min(id_type) FROM xref_links)",
    )
    .execute(cx.tv.db())
    .await?;
    sqlx::query("UPDATE devices SET enrolled_by = 'someone-else'")
        .execute(cx.tv.db())
        .await?;
    let report = cx.tv.vault.rewrap(&Caller::new("idvault"), |_| {}).await?;
    assert_eq!(report.damaged_links, 1, "{report:?}");
    assert_eq!(report.links, 1, "{report:?}");
    assert_eq!(report.forged_rows, 1, "{report:?}");
    assert_eq!(report.damaged_subjects, 2, "{report:?}");
    assert_eq!(report.subjects, 1, "{report:?}");
    assert_eq!(report.left_behind(), 4, "{report:?}");
    let rho_version: i64 =
        sqlx::query_scalar("SELECT kek_version FROM subjects WHERE subject_id = $1")
            .bind(raw(&rho))
            .fetch_one(cx.tv.db())
            .await?;
    assert_eq!(rho_version, 1, "left under its old key");
    let moved_to_b: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM xref_links WHERE owner = 'partner-b' AND key_version = 2",
    )
    .fetch_one(cx.tv.db())
    .await?;
    assert_eq!(moved_to_b, 0, "no index computed under partner-b's key");
    let device_version: i64 = sqlx::query_scalar("SELECT mac_version FROM devices")
        .fetch_one(cx.tv.db())
        .await?;
    assert_eq!(device_version, 1, "the forged row keeps its old MAC");
    let refs = cx.tv.vault.version_references(1).await?;
    assert!(
        refs.iter()
            .any(|(w, n)| w.starts_with("cross-reference") && *n == 1)
            && refs
                .iter()
                .any(|(w, n)| w.starts_with("devices") && *n == 1),
        "{refs:?}"
    );
    // The edited device authorises nothing.
    let ch = cx.challenge(true).await;
    let signed = cx.sign(&cx.grant(ch));
    assert!(cx.release(true, signed).await.is_err());
    cx.tv.stop().await
}
