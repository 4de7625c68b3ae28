//! Digital IDs over mTLS (docs/digital-id.md): a device asks for an SD-JWT
//! VC, presents a subset of its claims bound to a relying party's audience
//! and nonce, and the relying party verifies it through the vault and
//! offline with the published issuer keys; every fault is refused with its
//! reason and audited without the person's data.

use idvault_tests::idvault_client::device::{DeviceKey, unix_now};
use idvault_tests::idvault_core::SystemRng;
use idvault_tests::idvault_core::sdjwt::{
    self, Credential, Disclosure, Expectations, Jwks, status,
};
use idvault_tests::idvault_proto::v1 as pb;
use idvault_tests::idvault_proto::v1::consent_service_client::ConsentServiceClient;
use idvault_tests::idvault_proto::v1::credential_service_client::CredentialServiceClient;
use idvault_tests::idvault_proto::v1::device_service_client::DeviceServiceClient;
use idvault_tests::{Backend, TestVault};

use super::consent::{create_subject, reason};
use tonic::Code;
use tonic::transport::Channel;

const PARTNER_A: &str = "spiffe://idvault.dev/partner/partner-a";
const PARTNER_B: &str = "spiffe://idvault.dev/partner/partner-b";

const PERSON: &[(&str, &str)] = &[
    ("given_name", "Amélie"),
    ("family_name", "Okonkwo-Lindqvist"),
    ("date_of_birth", "02/11/1987"),
    ("national_id", "QQ123456C"),
    ("email", "amelie.ol@example.org"),
    ("phone", "+44 7700 900456"),
    ("city", "Malmö"),
    ("country", "SE"),
    ("account_number", "SE4550000000058398257466"),
];

struct Ctx {
    tv: TestVault,
    device: DeviceKey,
    wallet: DeviceServiceClient<Channel>,
    rp: CredentialServiceClient<Channel>,
}

pub(crate) async fn enroll(
    tv: &TestVault,
    wallet: &mut DeviceServiceClient<Channel>,
    subject: &str,
) -> DeviceKey {
    let mut a = ConsentServiceClient::new(tv.channel("partner-a").await.unwrap());
    let code = a
        .issue_enrollment_code(pb::IssueEnrollmentCodeRequest {
            subject_id: subject.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .enrollment_code;
    let key = DeviceKey::generate(&SystemRng::default()).unwrap();
    wallet
        .enroll(key.enrollment(subject, &code).unwrap())
        .await
        .unwrap();
    key
}

async fn setup(tv: TestVault) -> Ctx {
    let subject = create_subject(&tv, PERSON).await;
    let mut wallet = DeviceServiceClient::new(tv.channel("wallet").await.unwrap());
    let device = enroll(&tv, &mut wallet, &subject).await;
    let rp = CredentialServiceClient::new(tv.channel("partner-a").await.unwrap());
    Ctx {
        tv,
        device,
        wallet,
        rp,
    }
}

fn ask(claims: &[&str]) -> pb::device_request::Action {
    pb::device_request::Action::IssueCredential(pb::IssueCredential {
        claims: claims.iter().map(|c| (*c).into()).collect(),
        response_key: idvault_tests::idvault_core::consent::ReleaseSecretKey::derive(b"t")
            .public_key()
            .to_sec1(),
    })
}

/// An issued credential: what the vault answered, and the credential the
/// phone opened from it.
#[derive(Debug)]
struct Issued {
    r: pb::IssueCredentialResponse,
    credential: String,
    parsed: Credential,
}

impl Ctx {
    async fn issue(&mut self, claims: &[&str]) -> Result<Issued, tonic::Status> {
        let claims: Vec<String> = claims.iter().map(|c| (*c).into()).collect();
        let (req, pending) = self
            .device
            .request_credential(&claims, unix_now(), &SystemRng::default())
            .unwrap();
        let r = self.wallet.issue_credential(req).await?.into_inner();
        let keys = self.issuer_keys().await;
        let (credential, parsed) = pending.open(&r, Some(&keys)).unwrap();
        Ok(Issued {
            r,
            credential: credential.to_string(),
            parsed,
        })
    }

    /// The issuer keys, as a relying party or phone pins them.
    async fn issuer_keys(&mut self) -> Jwks {
        let jwks = self
            .rp
            .get_issuer_keys(pb::GetIssuerKeysRequest {})
            .await
            .unwrap()
            .into_inner()
            .jwks;
        Jwks::parse(&jwks).unwrap()
    }

    async fn verify(
        &mut self,
        presentation: &str,
        nonce: &str,
    ) -> Result<pb::VerifyPresentationResponse, tonic::Status> {
        self.rp
            .verify_presentation(pb::VerifyPresentationRequest {
                presentation: presentation.into(),
                audience: String::new(),
                nonce: nonce.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Every audit record's text, to check no personal data reached it.
    async fn audit_text(&self) -> String {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT action, outcome, detail FROM audit_log")
                .fetch_all(self.tv.db())
                .await
                .unwrap();
        format!("{rows:?}")
    }
}

/// A device holds at most `[credentials] max_per_device` digital IDs that
/// have not expired, revoked ones included: the next is refused with
/// RESOURCE_EXHAUSTED and writes nothing; another device is not affected.
pub async fn issuance_per_device_is_capped(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start_config(b, |text| {
        text.replacen(
            "[[partner]]",
            "[credentials]\nmax_per_device = 2\n\n[[partner]]",
            1,
        )
    })
    .await?;
    let mut cx = setup(tv).await;
    let first = cx.issue(&["given_name"]).await?;
    cx.issue(&["given_name"]).await?;
    // Revoking one does not give its place back (its status entry stays).
    let mut rp = CredentialServiceClient::new(cx.tv.channel("partner-a").await?);
    let status = first.parsed.status()?;
    rp.revoke_credential(pb::RevokeCredentialRequest {
        credential: Some(pb::RevokeCredential {
            status_list_uri: status.uri.clone(),
            index: status.idx,
        }),
    })
    .await?;
    let before = cx.tv.count("SELECT count(*) FROM credentials").await;
    let e = cx.issue(&["given_name"]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("max_per_device"), "{}", e.message());
    assert_eq!(
        cx.tv.count("SELECT count(*) FROM credentials").await,
        before
    );
    // Another device of the same person still gets one.
    let subject = create_subject(&cx.tv, PERSON).await;
    cx.device = enroll(&cx.tv, &mut cx.wallet, &subject).await;
    cx.issue(&["given_name"]).await?;
    cx.tv.stop().await
}

/// Issue, present a subset, verify by RPC and offline; the audit names
/// claims, never values.
pub async fn issue_present_and_verify(b: Backend) -> anyhow::Result<()> {
    let mut cx = setup(TestVault::start(b).await?).await;
    let issued = cx.issue(&[]).await?;
    // What the wallet app (and anything between it and the vault) sees:
    // ciphertext, no claim value.
    let wire = format!("{:?}", issued.r);
    for (_, value) in PERSON {
        assert!(!wire.contains(value), "{wire}");
    }
    let mut claims: Vec<&str> = issued.parsed.claim_names();
    claims.sort();
    assert_eq!(
        claims,
        [
            "address",
            "age_over_16",
            "age_over_18",
            "age_over_21",
            "age_over_65",
            "birthdate",
            "email",
            "family_name",
            "given_name",
            "national_id",
            "phone_number"
        ],
        "account_number is never a claim"
    );
    let expires_at = issued.parsed.expires_at().unwrap_or_default();
    let kid = issued.parsed.kid().unwrap_or_default().to_owned();
    assert!(expires_at > unix_now() + 29 * 86_400);
    let (action, outcome, detail) = cx.tv.last_audit().await;
    assert_eq!(
        (action.as_str(), outcome.as_str()),
        ("IssueCredential", "ok")
    );
    assert!(detail.contains("op=issue_credential"), "{detail}");
    assert!(detail.contains(&format!("kid={kid}")), "{detail}");

    // The JWK Set, fetched by any registered partner (partner-b here).
    let mut b_keys = CredentialServiceClient::new(cx.tv.channel("partner-b").await?);
    let jwks = b_keys
        .get_issuer_keys(pb::GetIssuerKeysRequest {})
        .await?
        .into_inner()
        .jwks;
    let keys = Jwks::parse(&jwks)?;
    assert!(keys.kids().any(|k| k == kid));

    let cred = Credential::parse(&issued.credential)?;
    assert_eq!(cred.claim_names().len(), claims.len());
    let nonce = "rp-nonce-7Qf2";
    let p = cx.device.present_credential(
        &issued.credential,
        &["given_name", "age_over_18", "address"],
        PARTNER_A,
        nonce,
        unix_now(),
    )?;
    assert!(!p.contains(&sdjwt::jose::b64("Okonkwo".as_bytes())));

    // By the vault.
    let v = cx.verify(&p, nonce).await?;
    let mut disclosed = v.disclosed.clone();
    disclosed.sort();
    assert_eq!(disclosed, ["address", "age_over_18", "given_name"]);
    let json: serde_json::Value = serde_json::from_str(&v.claims_json)?;
    assert_eq!(json["given_name"], "Amélie");
    assert_eq!(json["age_over_18"], true);
    assert_eq!(
        json["address"],
        serde_json::json!({"locality": "Malmö", "country": "SE"})
    );
    assert!(json.get("family_name").is_none());
    assert_eq!(v.vct, sdjwt::DEFAULT_VCT);
    assert_eq!(v.kid, kid);
    let (action, outcome, detail) = cx.tv.last_audit().await;
    assert_eq!(
        (action.as_str(), outcome.as_str()),
        ("VerifyPresentation", "ok")
    );
    assert!(detail.contains("disclosed="), "{detail}");

    // Offline, with the pinned JWK Set.
    let expect = Expectations {
        typ: sdjwt::TYP_CREDENTIAL,
        audience: PARTNER_A,
        nonce,
        now: unix_now(),
        skew_secs: 120,
        max_key_binding_age_secs: 300,
    };
    let off = sdjwt::verify_presentation(&p, &keys, &expect)?;
    assert_eq!(off.disclosed.len(), 3);
    assert_eq!(off.disclosed["given_name"], "Amélie");

    // The birthdate claim is ISO, whatever form the field was stored in.
    let full = cx.device.present_credential(
        &issued.credential,
        &["birthdate", "national_id"],
        PARTNER_A,
        nonce,
        unix_now(),
    )?;
    let v = cx.verify(&full, nonce).await?;
    let json: serde_json::Value = serde_json::from_str(&v.claims_json)?;
    assert_eq!(json["birthdate"], "1987-11-02");

    // A subset asked for at issue.
    let only = cx.issue(&["email", "given_name"]).await?;
    assert_eq!(only.parsed.claim_names(), ["given_name", "email"]);

    let audit = cx.audit_text().await;
    // Values of 4 characters and more: a two-letter country code also
    // turns up by chance inside the random key ids the audit names.
    for (_, value) in PERSON.iter().filter(|(_, v)| v.len() > 3) {
        assert!(!audit.contains(value), "audit holds a value: {audit}");
    }
    assert!(!audit.contains("1987-11-02"));
    assert!(matches!(
        cx.tv.verify_audit().await?,
        idvault_tests::idvault_server::service::AuditVerdict::Intact { .. }
    ));
    cx.tv.stop().await
}

/// Each fault in a presentation is its own refusal, audited.
pub async fn presentations_are_refused_for_each_fault(b: Backend) -> anyhow::Result<()> {
    let mut cx = setup(TestVault::start(b).await?).await;
    let issued = cx.issue(&[]).await?;
    let nonce = "n-1";
    let present = |key: &DeviceKey, aud: &str, nonce: &str| {
        key.present_credential(&issued.credential, &["given_name"], aud, nonce, unix_now())
            .unwrap()
            .to_string()
    };
    let refused = |r: Result<pb::VerifyPresentationResponse, tonic::Status>, why: &str| {
        let s = r.expect_err(why);
        assert_eq!(
            (s.code(), reason(&s)),
            (Code::InvalidArgument, why),
            "{}",
            s.message()
        );
        assert!(!s.message().contains("Amélie"), "{}", s.message());
    };
    let good = present(&cx.device, PARTNER_A, nonce);
    cx.verify(&good, nonce).await?;

    // Wrong nonce; aimed at another relying party.
    refused(cx.verify(&good, "n-2").await, "bad_key_binding");
    let for_b = present(&cx.device, PARTNER_B, nonce);
    refused(cx.verify(&for_b, nonce).await, "bad_key_binding");
    let (action, outcome, detail) = cx.tv.last_audit().await;
    assert_eq!(
        (action.as_str(), outcome.as_str()),
        ("VerifyPresentation", "refused")
    );
    assert!(
        detail.starts_with("presentation: bad_key_binding"),
        "{detail}"
    );

    // Bound by a key that is not the credential's.
    let thief = DeviceKey::generate(&SystemRng::default())?;
    refused(
        cx.verify(&present(&thief, PARTNER_A, nonce), nonce).await,
        "bad_key_binding",
    );

    // A disclosure swapped for another value under the same name, then
    // bound afresh by the real device: the digest is not in the credential.
    let sd = Credential::parse(&issued.credential)?.disclose(&["given_name"])?;
    let real = sd.split('~').nth(1).unwrap_or_default().to_owned();
    let fake = Disclosure::new(b"0123456789abcdef", "given_name", "Mallory".into());
    let swapped = sd.replace(&real, fake.encoded());
    let input = sdjwt::key_binding_input(&swapped, PARTNER_A, nonce, unix_now());
    let sig = cx.device.sign(b"", input.as_bytes())?;
    let tampered = sdjwt::with_key_binding(&swapped, &input, &sig);
    refused(cx.verify(&tampered, nonce).await, "bad_disclosure");

    // No key binding at all.
    refused(cx.verify(&sd, nonce).await, "bad_key_binding");
    // Not an SD-JWT.
    refused(cx.verify("hello world", nonce).await, "malformed");

    // An expired credential, checked offline where the time is the
    // verifier's (the vault's own clock cannot be moved from here).
    let keys = Jwks::parse(
        &cx.rp
            .get_issuer_keys(pb::GetIssuerKeysRequest {})
            .await?
            .into_inner()
            .jwks,
    )?;
    let late = Expectations {
        typ: sdjwt::TYP_CREDENTIAL,
        audience: PARTNER_A,
        nonce,
        now: issued.parsed.expires_at().unwrap_or_default() + 3600,
        skew_secs: 120,
        max_key_binding_age_secs: 300,
    };
    assert_eq!(
        sdjwt::verify_presentation(&good, &keys, &late).unwrap_err(),
        sdjwt::SdJwtError::Expired
    );

    // Partner-a may not have the vault vouch for a presentation meant for
    // partner-b by naming partner-b's audience.
    let e = cx
        .rp
        .verify_presentation(pb::VerifyPresentationRequest {
            presentation: for_b.clone(),
            audience: PARTNER_B.into(),
            nonce: nonce.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("audience"), "{}", e.message());

    // Partner-b lacks `credentials.verify`.
    let mut b_rp = CredentialServiceClient::new(cx.tv.channel("partner-b").await?);
    let e = b_rp
        .verify_presentation(pb::VerifyPresentationRequest {
            presentation: good.clone(),
            audience: PARTNER_A.into(),
            nonce: nonce.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // An empty nonce is a bad request, not a verification.
    assert_eq!(
        cx.verify(&good, "").await.unwrap_err().code(),
        Code::InvalidArgument
    );
    cx.tv.stop().await
}

/// Issuing needs the person's device: a replayed or misdirected request,
/// an unknown claim and a revoked device are refused; an operator policy
/// can forbid claims by the fields they disclose.
pub async fn issuance_checks_and_policy(b: Backend) -> anyhow::Result<()> {
    let mut cx = setup(TestVault::start(b).await?).await;
    let req = cx
        .device
        .sign_request(ask(&["given_name"]), unix_now(), &SystemRng::default())?;
    cx.wallet.issue_credential(req.clone()).await?;
    let e = cx.wallet.issue_credential(req).await.unwrap_err();
    assert_eq!(
        (e.code(), reason(&e)),
        (Code::AlreadyExists, "request_replayed")
    );

    // An IssueCredential request sent to another device RPC, and another
    // action sent here.
    let req = cx
        .device
        .sign_request(ask(&[]), unix_now(), &SystemRng::default())?;
    let e = cx.wallet.list_receipts(req).await.unwrap_err();
    assert_eq!(reason(&e), "wrong_action");
    let req = cx.device.sign_request(
        pb::device_request::Action::ListReceipts(pb::ListReceipts {}),
        unix_now(),
        &SystemRng::default(),
    )?;
    let e = cx.wallet.issue_credential(req).await.unwrap_err();
    assert_eq!(reason(&e), "wrong_action");
    // Unknown and repeated claim names.
    for bad in [&["shoe_size"][..], &["email", "email"]] {
        let e = cx.issue(bad).await.unwrap_err();
        assert_eq!((e.code(), reason(&e)), (Code::InvalidArgument, "malformed"));
    }
    // A response key that is not a P-256 point.
    let bad_key = pb::device_request::Action::IssueCredential(pb::IssueCredential {
        claims: Vec::new(),
        response_key: vec![4; 65],
    });
    let req = cx
        .device
        .sign_request(bad_key, unix_now(), &SystemRng::default())?;
    let e = cx.wallet.issue_credential(req).await.unwrap_err();
    assert_eq!(reason(&e), "malformed");
    // The answer opens only with its own request's key and binding.
    let (req, pending) = cx
        .device
        .request_credential(&[], unix_now(), &SystemRng::default())?;
    let (_, other) = cx
        .device
        .request_credential(&[], unix_now(), &SystemRng::default())?;
    let r = cx.wallet.issue_credential(req).await?.into_inner();
    assert!(other.open(&r, None).is_err());
    let mut flipped = r.clone();
    if let Some(b) = flipped.sealed_credential.last_mut() {
        *b ^= 1;
    }
    assert!(pending.open(&flipped, None).is_err());
    let (_, parsed) = pending.open(&r, None)?;
    assert!(!parsed.claim_names().is_empty());

    // Stale request.
    let req = cx
        .device
        .sign_request(ask(&[]), unix_now() - 3600, &SystemRng::default())?;
    let e = cx.wallet.issue_credential(req).await.unwrap_err();
    assert_eq!(reason(&e), "request_outside_window");

    // The operator forbids national_id in digital IDs.
    let policy = cx
        .tv
        .dir
        .path()
        .join("policies")
        .join("no-national-id.cedar");
    std::fs::write(
        &policy,
        r#"@id("no-national-id-in-credentials")
forbid (
  principal,
  action == IdVault::Action::"IssueCredential",
  resource
) when { context.fields.contains("national_id") };
"#,
    )?;
    cx.tv.restart().await?;
    let mut cx = Ctx {
        wallet: DeviceServiceClient::new(cx.tv.channel("wallet").await?),
        rp: CredentialServiceClient::new(cx.tv.channel("partner-a").await?),
        ..cx
    };
    let e = cx.issue(&[]).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let (_, outcome, detail) = cx.tv.last_audit().await;
    assert_eq!(outcome, "denied");
    assert!(detail.contains("no-national-id-in-credentials"), "{detail}");
    let ok = cx.issue(&["given_name", "age_over_18"]).await?;
    assert_eq!(ok.parsed.claim_names(), ["given_name", "age_over_18"]);

    // A revoked device gets nothing.
    let me = cx.device.device_id();
    let req = cx.device.sign_request(
        pb::device_request::Action::RevokeDevice(pb::RevokeDevice { device_id: me }),
        unix_now(),
        &SystemRng::default(),
    )?;
    cx.wallet.revoke_device(req).await?;
    let e = cx.issue(&["given_name"]).await.unwrap_err();
    assert_eq!(reason(&e), "device_revoked");
    cx.tv.stop().await
}

impl Ctx {
    /// A fresh presentation of `issued` (given_name only) for partner-a.
    fn present(&self, issued: &Issued, nonce: &str) -> String {
        self.device
            .present_credential(
                &issued.credential,
                &["given_name"],
                PARTNER_A,
                nonce,
                unix_now(),
            )
            .unwrap()
            .to_string()
    }

    /// The status list `uri` names, fetched by partner-b and verified.
    async fn status_list(&mut self, uri: &str) -> status::StatusListToken {
        let mut b = CredentialServiceClient::new(self.tv.channel("partner-b").await.unwrap());
        let token = b
            .get_status_list(pb::GetStatusListRequest { uri: uri.into() })
            .await
            .unwrap()
            .into_inner()
            .status_list_token;
        let keys = self.issuer_keys().await;
        status::verify_status_list(&token, &keys, Some(uri), unix_now(), 60).unwrap()
    }

    /// Whether the vault and an offline verifier (with a freshly fetched
    /// status list) accept a presentation of `issued`.
    async fn accepted(&mut self, issued: &Issued) -> (Result<(), String>, Result<(), String>) {
        let p = self.present(issued, "n-status");
        let by_vault = match self.verify(&p, "n-status").await {
            Ok(_) => Ok(()),
            Err(e) => Err(reason(&e).to_owned()),
        };
        let keys = self.issuer_keys().await;
        let expect = Expectations {
            typ: sdjwt::TYP_CREDENTIAL,
            audience: PARTNER_A,
            nonce: "n-status",
            now: unix_now(),
            skew_secs: 120,
            max_key_binding_age_secs: 300,
        };
        let v = sdjwt::verify_presentation(&p, &keys, &expect).unwrap();
        let list = self.status_list(&issued.parsed.status().unwrap().uri).await;
        let offline = status::check_status(&v, &list).map_err(|e| e.code().to_owned());
        (by_vault, offline)
    }

    /// Whether the vault's live check accepts a presentation of `issued`.
    async fn accepted_by_vault(&mut self, issued: &Issued) -> Result<(), String> {
        let p = self.present(issued, "n-status");
        match self.verify(&p, "n-status").await {
            Ok(_) => Ok(()),
            Err(e) => Err(reason(&e).to_owned()),
        }
    }

    async fn device_revoke(
        &mut self,
        key: &DeviceKey,
        issued: &Issued,
    ) -> Result<bool, tonic::Status> {
        let s = issued.parsed.status().unwrap();
        let req = key
            .sign_request(
                pb::device_request::Action::RevokeCredential(pb::RevokeCredential {
                    status_list_uri: s.uri,
                    index: s.idx,
                }),
                unix_now(),
                &SystemRng::default(),
            )
            .unwrap();
        self.wallet
            .revoke_credential(req)
            .await
            .map(|r| r.into_inner().revoked)
    }
}

/// Revocation (docs/digital-id.md, "Revocation"): every credential carries
/// a status list entry; the person's device, the operator, revoking the
/// device and deleting the person each revoke, seen at once by
/// VerifyPresentation and by an offline verifier with a fresh status list
/// token; a database writer can neither reinstate a revoked credential by
/// editing or deleting its row.
pub async fn revocation_by_device_operator_and_deletion(b: Backend) -> anyhow::Result<()> {
    let ok = (Ok(()), Ok(()));
    let revoked = || (Err("revoked".to_owned()), Err("revoked".to_owned()));
    let mut cx = setup(TestVault::start(b).await?).await;
    let a = cx.issue(&[]).await?;
    let b_cred = cx.issue(&["given_name"]).await?;
    let (sa, sb) = (a.parsed.status()?, b_cred.parsed.status()?);
    assert_eq!(sa.uri, "https://idvault.local/statuslists/1");
    assert_eq!(sa.uri, sb.uri);
    assert_ne!(sa.idx, sb.idx);
    assert!(sa.idx < 1 << 20 && sb.idx < 1 << 20);
    let (_, _, detail) = cx.tv.last_audit().await;
    assert!(
        detail.contains(&format!("status={}#{}", sb.uri, sb.idx)),
        "{detail}"
    );
    assert_eq!(cx.accepted(&a).await, ok);
    // The newest list when no URI is named; an unknown URI is refused.
    let list = cx.status_list(&sa.uri).await;
    assert_eq!(list.list.len(), 1 << 20);
    assert_eq!(list.ttl, Some(300));
    let e = cx
        .rp
        .get_status_list(pb::GetStatusListRequest {
            uri: "https://idvault.local/statuslists/9".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // The person revokes A from their device: once.
    let device = cx.device.clone();
    assert!(cx.device_revoke(&device, &a).await?);
    assert!(!cx.device_revoke(&device, &a).await?);
    assert_eq!(cx.accepted(&a).await, revoked());
    let (action, outcome, _) = cx.tv.last_audit().await;
    assert_eq!(
        (action.as_str(), outcome.as_str()),
        ("VerifyPresentation", "refused")
    );
    assert_eq!(cx.accepted(&b_cred).await, ok, "B is untouched");

    // Another person's device cannot revoke (or learn of) this person's
    // credential; nor can it name an index nobody holds.
    let other = create_subject(&cx.tv, &[("given_name", "Tove"), ("family_name", "Berg")]).await;
    let mut wallet = cx.wallet.clone();
    let stranger = enroll(&cx.tv, &mut wallet, &other).await;
    let e = cx.device_revoke(&stranger, &b_cred).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(cx.accepted(&b_cred).await, ok);

    // The operator: partner-b lacks credentials.revoke; partner-a has it.
    let op = |s: &status::StatusRef| pb::RevokeCredentialRequest {
        credential: Some(pb::RevokeCredential {
            status_list_uri: s.uri.clone(),
            index: s.idx,
        }),
    };
    let mut b_rp = CredentialServiceClient::new(cx.tv.channel("partner-b").await?);
    let e = b_rp.revoke_credential(op(&sb)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(cx.accepted(&b_cred).await, ok);
    let e = cx
        .rp
        .revoke_credential(pb::RevokeCredentialRequest { credential: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let (action, outcome, _) = cx.tv.last_audit().await;
    assert_eq!(
        (action.as_str(), outcome.as_str()),
        ("RevokeCredential", "invalid")
    );
    assert!(cx.rp.revoke_credential(op(&sb)).await?.into_inner().revoked);
    // Named by its status entry: the operator's own records never name
    // the holder's subject id; the vault's own record does.
    let named = "SELECT count(*) FROM audit_log WHERE action = 'RevokeCredential' \
                 AND subject IS NOT NULL";
    assert_eq!(cx.tv.count(named).await, 0);
    let own = "SELECT count(*) FROM audit_log WHERE action = 'RequestSubject' \
               AND detail LIKE '%RevokeCredential%'";
    assert_eq!(cx.tv.count(own).await, 1);
    assert_eq!(cx.accepted(&b_cred).await, revoked());
    let (action, outcome, detail) = cx.tv.last_audit().await;
    assert_eq!(
        (action.as_str(), outcome.as_str()),
        ("VerifyPresentation", "refused")
    );
    assert!(detail.contains("revoked"), "{detail}");

    // A database writer without the root key: un-revoking B's row breaks
    // its MAC; deleting A's row leaves A revoked (its index is recomputed
    // from the list's count).
    sqlx::query("UPDATE credentials SET revoked_at_ms = NULL WHERE idx = $1")
        .bind(i64::try_from(sb.idx)?)
        .execute(cx.tv.db())
        .await?;
    sqlx::query("DELETE FROM credentials WHERE idx = $1")
        .bind(i64::try_from(sa.idx)?)
        .execute(cx.tv.db())
        .await?;
    // (A revocation re-signs the list at once; the one below does.)
    let c = cx.issue(&["given_name", "email"]).await?;
    assert_eq!(cx.accepted(&c).await, ok);

    // Revoking the device revokes what was issued to it.
    let req = cx.device.sign_request(
        pb::device_request::Action::RevokeDevice(pb::RevokeDevice {
            device_id: cx.device.device_id(),
        }),
        unix_now(),
        &SystemRng::default(),
    )?;
    assert!(cx.wallet.revoke_device(req).await?.into_inner().revoked);
    let (_, _, detail) = cx.tv.last_audit().await;
    assert!(detail.contains("credentials_revoked=1"), "{detail}");
    assert_eq!(cx.accepted(&c).await, revoked());
    assert_eq!(
        cx.accepted(&a).await,
        revoked(),
        "deleted row stays revoked"
    );
    assert_eq!(
        cx.accepted(&b_cred).await,
        revoked(),
        "edited row stays revoked"
    );

    // Deleting a person revokes their credentials and forgets them in the
    // status entries.
    let mut cx2 = Ctx {
        device: stranger,
        wallet,
        rp: cx.rp.clone(),
        tv: cx.tv,
    };
    let d = cx2.issue(&[]).await?;
    assert_eq!(cx2.accepted(&d).await, ok);
    cx2.tv
        .subjects("partner-a")
        .await?
        .delete_subject(pb::DeleteSubjectRequest {
            subject_id: other.clone(),
        })
        .await?;
    let (_, _, detail) = cx2.tv.last_audit().await;
    assert!(detail.contains("credentials_revoked=1"), "{detail}");
    assert_eq!(cx2.accepted(&d).await, revoked());
    // Of the four rows left (A's was deleted), only D's forgot its person.
    let forgotten: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM credentials WHERE subject_id IS NULL AND device_id IS NULL",
    )
    .fetch_one(cx2.tv.db())
    .await?;
    assert_eq!(forgotten, 1);
    assert_eq!(cx2.tv.count("SELECT count(*) FROM credentials").await, 3);

    assert!(matches!(
        cx2.tv.verify_audit().await?,
        idvault_tests::idvault_server::service::AuditVerdict::Intact { .. }
    ));
    cx2.tv.stop().await
}

/// A database writer deletes the newest status list and its entries, so
/// that the list would be started again with the same id and hand its
/// indexes, in the same order, to new credentials: a running vault
/// refuses to start a list id it has seen, and nothing is written. After a
/// restart (the vault no longer knows the list existed) a new credential
/// does take the removed one's index, but the live check still refuses
/// the removed, revoked credential: the row is the new credential's, and
/// its expiry is not the one the old credential carries.
pub async fn removed_status_list_is_not_started_again(b: Backend) -> anyhow::Result<()> {
    let revoked = || Err("revoked".to_owned());
    let mut cx = setup(TestVault::start(b).await?).await;
    let a = cx.issue(&[]).await?;
    let device = cx.device.clone();
    assert!(cx.device_revoke(&device, &a).await?);
    assert_eq!(cx.accepted(&a).await.0, revoked());
    for sql in ["DELETE FROM credentials", "DELETE FROM status_lists"] {
        sqlx::query(sql).execute(cx.tv.db()).await?;
    }
    assert_eq!(cx.accepted_by_vault(&a).await, revoked());
    let e = cx.issue(&[]).await.unwrap_err();
    assert!(matches!(e.code(), Code::DataLoss | Code::Internal), "{e:?}");
    assert_eq!(cx.tv.count("SELECT count(*) FROM status_lists").await, 0);
    assert_eq!(cx.tv.count("SELECT count(*) FROM credentials").await, 0);

    // A later second: the next credential's expiry differs from A's.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    cx.tv.restart().await?;
    cx.wallet = DeviceServiceClient::new(cx.tv.channel("wallet").await?);
    cx.rp = CredentialServiceClient::new(cx.tv.channel("partner-a").await?);
    let c = cx.issue(&[]).await?;
    let (sa, sc) = (a.parsed.status()?, c.parsed.status()?);
    assert_eq!((&sa.uri, sa.idx), (&sc.uri, sc.idx), "the same place again");
    assert_eq!(cx.accepted_by_vault(&c).await, Ok(()));
    assert_eq!(cx.accepted_by_vault(&a).await, revoked());
    cx.tv.stop().await
}

/// A revocation whose deadline passed before it ran did nothing, so the
/// status lists are not rebuilt and signed again for it (any partner with
/// a revoking role could otherwise force that with every late call); a
/// real revocation is.
pub async fn late_revocations_force_no_status_list_rebuild(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_server::service::{Caller, VaultError};
    let mut cx = setup(TestVault::start(b).await?).await;
    let a = cx.issue(&[]).await?;
    let s = a.parsed.status()?;
    let first = cx.status_list(&s.uri).await.issued_at;
    // A new signing would carry a later `iat` (whole seconds).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let mut late = Caller::new("spiffe://idvault.dev/partner/partner-a");
    late.deadline = Some(tokio::time::Instant::now());
    let r = cx.tv.vault.revoke_credential(&late, &s).await;
    assert!(matches!(r, Err(VaultError::DeadlineExceeded)), "{r:?}");
    assert_eq!(cx.status_list(&s.uri).await.issued_at, first);
    let on_time = Caller::new("spiffe://idvault.dev/partner/partner-a");
    assert!(cx.tv.vault.revoke_credential(&on_time, &s).await?.revoked);
    assert!(cx.status_list(&s.uri).await.issued_at > first);
    cx.tv.stop().await
}

/// The retention job removes the status entries of expired credentials
/// (docs/digital-id.md, "Expired credentials"): the list then publishes a
/// removed entry as revoked, the others keep their state, and the list's
/// indexes are not given again.
pub async fn expired_entries_are_pruned_and_published_revoked(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_server::store::Prunable;
    let ok = (Ok(()), Ok(()));
    let revoked = || (Err("revoked".to_owned()), Err("revoked".to_owned()));
    let mut cx = setup(TestVault::start(b).await?).await;
    let a = cx.issue(&[]).await?;
    let b_cred = cx.issue(&[]).await?;
    let sa = a.parsed.status()?;
    // A's entry as an entry expired long ago looks to the job (the
    // credential itself still verifies, so the list answers for it).
    sqlx::query("UPDATE credentials SET expires_at = 1 WHERE idx = $1")
        .bind(i64::try_from(sa.idx)?)
        .execute(cx.tv.db())
        .await?;
    let done = cx.tv.vault.prune_once().await?;
    assert!(done.contains(&(Prunable::Credentials, 1)), "{done:?}");
    // Its expiry was lowered outside the vault, so its MAC fails: the
    // retention record says so.
    let (action, _, detail) = cx.tv.last_audit().await;
    assert_eq!(action, "Retention");
    assert!(detail.ends_with(" unverified=1"), "{detail}");
    assert_eq!(cx.tv.count("SELECT count(*) FROM credentials").await, 1);
    assert_eq!(cx.accepted(&a).await, revoked());
    assert_eq!(cx.accepted(&b_cred).await, ok);
    let c = cx.issue(&[]).await?;
    let sc = c.parsed.status()?;
    assert_eq!(sc.uri, sa.uri);
    assert_ne!(sc.idx, sa.idx, "a removed entry's index is not given again");
    assert_eq!(cx.accepted(&c).await, ok);
    assert_eq!(cx.accepted(&a).await, revoked());
    cx.tv.stop().await
}

/// A phone naming another person's device or status entry in a
/// revocation gets "not revoked" / not found without taking that row's
/// lock: the call goes through while another transaction holds it
/// (PostgreSQL), so nobody can stall someone else's device or credential
/// by naming it.
pub async fn naming_anothers_rows_locks_none(b: Backend) -> anyhow::Result<()> {
    let mut cx = setup(TestVault::start(b).await?).await;
    let issued = cx.issue(&[]).await?;
    let status = issued.parsed.status()?;
    let other = create_subject(
        &cx.tv,
        &[("given_name", "Oskar"), ("family_name", "Lindgren")],
    )
    .await;
    let mut wallet = cx.wallet.clone();
    let stranger = enroll(&cx.tv, &mut wallet, &other).await;
    let mut held = cx.tv.db().begin().await?;
    if b == Backend::Postgres {
        sqlx::query("SELECT device_id FROM devices WHERE device_id = $1 FOR UPDATE")
            .bind(cx.device.device_id())
            .fetch_one(&mut *held)
            .await?;
        sqlx::query("SELECT idx FROM credentials WHERE idx = $1 FOR UPDATE")
            .bind(i64::try_from(status.idx)?)
            .fetch_one(&mut *held)
            .await?;
    }
    let within = std::time::Duration::from_secs(10);
    let req = stranger.sign_request(
        pb::device_request::Action::RevokeDevice(pb::RevokeDevice {
            device_id: cx.device.device_id(),
        }),
        unix_now(),
        &SystemRng::default(),
    )?;
    let revoked = tokio::time::timeout(within, wallet.revoke_device(req))
        .await
        .map_err(|_| anyhow::anyhow!("waited for another person's device row"))??
        .into_inner()
        .revoked;
    assert!(!revoked);
    let e = tokio::time::timeout(within, cx.device_revoke(&stranger, &issued))
        .await
        .map_err(|_| anyhow::anyhow!("waited for another person's status entry"))?
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    held.rollback().await?;
    // Both still stand.
    assert_eq!(cx.accepted_by_vault(&issued).await, Ok(()));

    // A device of this person's that a database writer moved to the
    // stranger: revoking it is refused as forged, not answered as another
    // person's device.
    let second = enroll(&cx.tv, &mut wallet, &other).await;
    let mine = idvault_tests::idvault_core::subject::SubjectId::parse(&other)?;
    let theirs: Vec<u8> = sqlx::query_scalar("SELECT subject_id FROM devices WHERE device_id = $1")
        .bind(cx.device.device_id())
        .fetch_one(cx.tv.db())
        .await?;
    assert_ne!(theirs, mine.as_bytes().to_vec());
    sqlx::query("UPDATE devices SET subject_id = $1 WHERE device_id = $2")
        .bind(theirs)
        .bind(second.device_id())
        .execute(cx.tv.db())
        .await?;
    let req = stranger.sign_request(
        pb::device_request::Action::RevokeDevice(pb::RevokeDevice {
            device_id: second.device_id(),
        }),
        unix_now(),
        &SystemRng::default(),
    )?;
    let e = wallet.revoke_device(req).await.unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    cx.tv.stop().await
}
