//! One-time transaction codes over mTLS (docs/digital-id.md, "Transaction
//! codes"): a third party asks for a code, the person's phone looks it up
//! and answers, the third party gets a signed assertion; every refusal is
//! its own audited answer, codes are single use under concurrency, and
//! several third parties' codes for one person stay apart.

use idvault_tests::idvault_client::device::{DeviceKey, unix_now};
use idvault_tests::idvault_core::SystemRng;
use idvault_tests::idvault_core::sdjwt::Jwks;
use idvault_tests::idvault_core::transaction::{self as txn, TransactionCode};
use idvault_tests::idvault_proto::v1 as pb;
use idvault_tests::idvault_proto::v1::credential_service_client::CredentialServiceClient;
use idvault_tests::idvault_proto::v1::device_service_client::DeviceServiceClient;
use idvault_tests::idvault_proto::v1::match_service_client::MatchServiceClient;
use idvault_tests::idvault_proto::v1::transaction_service_client::TransactionServiceClient;
use idvault_tests::{Backend, TestVault};
use tonic::Code;
use tonic::transport::Channel;

use super::consent::reason;
use super::credentials::enroll;

const PARTNER_A: &str = "spiffe://idvault.dev/partner/partner-a";

const PERSON: &[(&str, &str)] = &[
    ("given_name", "Amélie"),
    ("family_name", "Okonkwo-Lindqvist"),
    ("date_of_birth", "02/11/1987"),
    ("email", "amelie.ol@example.org"),
    ("phone", "+44 7700 900456"),
    ("city", "Malmö"),
    ("country", "SE"),
];

struct Ctx {
    tv: TestVault,
    phone: DeviceKey,
    wallet: DeviceServiceClient<Channel>,
    a: TransactionServiceClient<Channel>,
    token_a: String,
}

fn fields(f: &[(&str, &str)]) -> Vec<pb::Field> {
    f.iter()
        .map(|(n, v)| pb::Field {
            name: (*n).into(),
            value: (*v).into(),
        })
        .collect()
}

async fn setup(b: Backend) -> anyhow::Result<Ctx> {
    let tv = TestVault::start(b).await?;
    let created = tv
        .subjects("partner-a")
        .await?
        .create_subject(pb::CreateSubjectRequest {
            fields: fields(PERSON),
        })
        .await?
        .into_inner();
    let mut wallet = DeviceServiceClient::new(tv.channel("wallet").await?);
    let phone = enroll(&tv, &mut wallet, &created.subject_id).await;
    let a = TransactionServiceClient::new(tv.channel("partner-a").await?);
    Ok(Ctx {
        tv,
        phone,
        wallet,
        a,
        token_a: created.pairwise_token,
    })
}

fn ask(token: &str, message: &str, claims: &[&str], ttl_seconds: u32) -> pb::RequestCodeRequest {
    pb::RequestCodeRequest {
        pairwise_token: token.into(),
        binding_message: message.into(),
        claims: claims.iter().map(|c| (*c).into()).collect(),
        ttl_seconds,
    }
}

fn signed(key: &DeviceKey, action: pb::device_request::Action) -> pb::SignedDeviceRequest {
    key.sign_request(action, unix_now(), &SystemRng::default())
        .unwrap()
}

fn lookup_req(key: &DeviceKey, code: &str) -> pb::SignedDeviceRequest {
    signed(
        key,
        pb::device_request::Action::LookupTransaction(pb::LookupTransaction { code: code.into() }),
    )
}

/// The phone's answer to what it was shown.
fn answer_req(
    key: &DeviceKey,
    shown: &pb::LookupTransactionResponse,
    code: &str,
    approve: bool,
    claims: &[&str],
) -> pb::SignedDeviceRequest {
    let claims: Vec<String> = claims.iter().map(|c| (*c).into()).collect();
    signed(
        key,
        idvault_tests::idvault_client::device::transaction_answer(shown, code, approve, &claims),
    )
}

async fn state_of(
    c: &mut TransactionServiceClient<Channel>,
    id: &str,
    wait: u32,
) -> pb::AwaitTransactionResponse {
    c.await_transaction(pb::AwaitTransactionRequest {
        transaction_id: id.into(),
        wait_seconds: wait,
    })
    .await
    .unwrap()
    .into_inner()
}

fn refusal<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("refused");
    (s.code(), reason(&s).to_owned())
}

async fn issuer_keys(tv: &TestVault) -> Jwks {
    let jwks = CredentialServiceClient::new(tv.channel("partner-b").await.unwrap())
        .get_issuer_keys(pb::GetIssuerKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .jwks;
    Jwks::parse(&jwks).unwrap()
}

/// The happy path, with two third parties waiting on one person at once:
/// each sees only its own transaction; the approved one gets an assertion
/// holding exactly the approved claims.
pub async fn approve_and_deny_with_two_third_parties(b: Backend) -> anyhow::Result<()> {
    let mut cx = setup(b).await?;
    let r =
        cx.a.request_code(ask(
            &cx.token_a,
            "Pay 45.00 EUR to Shop Ltd, order 7781",
            &["given_name", "age_over_18"],
            0,
        ))
        .await?
        .into_inner();
    assert!(txn::parse_id(&r.transaction_id).is_some());
    assert_eq!(r.code.len(), 9);
    assert_eq!(TransactionCode::parse(&r.code)?.display(), r.code);
    assert!(r.expires_at <= unix_now() + 300 && r.expires_at > unix_now() + 290);
    let (action, outcome, detail) = cx.tv.last_audit().await;
    assert_eq!(
        (action.as_str(), outcome.as_str()),
        ("RequestTransactionCode", "ok")
    );
    assert!(
        !detail.contains("Shop") && !detail.contains(&r.code),
        "{detail}"
    );

    // Partner-b finds the same person by matching and asks too.
    let found = MatchServiceClient::new(cx.tv.channel("partner-b").await?)
        .r#match(pb::MatchRequest {
            query: Some(pb::MatchQuery {
                fields: fields(&PERSON[..6]),
                max_results: 1,
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .candidates;
    let token_b = found[0].pairwise_token.clone();
    let mut b_client = TransactionServiceClient::new(cx.tv.channel("partner-b").await?);
    let rb = b_client
        .request_code(ask(
            &token_b,
            "Open an account at Bank B",
            &["family_name"],
            120,
        ))
        .await?
        .into_inner();
    assert_ne!(rb.code, r.code);
    // Each sees only its own.
    assert_eq!(
        state_of(&mut cx.a, &r.transaction_id, 0).await.state,
        "pending"
    );
    let e = b_client
        .await_transaction(pb::AwaitTransactionRequest {
            transaction_id: r.transaction_id.clone(),
            wait_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Partner-a waits while the person answers.
    let mut waiting = cx.a.clone();
    let id = r.transaction_id.clone();
    let waiter = tokio::spawn(async move { state_of(&mut waiting, &id, 20).await });

    // The phone: the code as typed (lower case, no dash), then approve
    // only one of the two claims.
    let typed = r.code.replace('-', "").to_lowercase();
    let shown = cx
        .wallet
        .lookup_transaction(lookup_req(&cx.phone, &typed))
        .await?
        .into_inner();
    assert_eq!(shown.transaction_id, r.transaction_id);
    assert_eq!(shown.requester, PARTNER_A);
    assert_eq!(
        shown.binding_message,
        "Pay 45.00 EUR to Shop Ltd, order 7781"
    );
    assert_eq!(shown.claims, ["age_over_18", "given_name"]);
    // What a proxy or wallet app might show instead: the vault refuses an
    // answer to anything but the transaction as it holds it.
    let mut altered = shown.clone();
    altered.binding_message = "Log in to Shop Ltd".into();
    assert_eq!(
        refusal(
            cx.wallet
                .answer_transaction(answer_req(&cx.phone, &altered, &typed, true, &[]))
                .await
        ),
        (Code::PermissionDenied, "shown_mismatch".into())
    );
    let answer = answer_req(&cx.phone, &shown, &typed, true, &["given_name"]);
    let out = cx
        .wallet
        .answer_transaction(answer.clone())
        .await?
        .into_inner();
    assert_eq!(out.state, "approved");
    let got = waiter.await?;
    assert_eq!(got.state, "approved");
    assert_eq!(got.approved, ["given_name"]);
    let keys = issuer_keys(&cx.tv).await;
    let a = txn::verify_assertion(
        &got.assertion,
        &keys,
        PARTNER_A,
        &r.transaction_id,
        unix_now(),
        60,
    )?;
    assert_eq!(a.subject, cx.token_a);
    assert_eq!(a.binding_message, "Pay 45.00 EUR to Shop Ltd, order 7781");
    assert_eq!(a.claims.len(), 1);
    assert_eq!(a.claims["given_name"], "Amélie");
    assert_eq!(a.issuer, "https://idvault.local");
    // Not for another audience.
    assert!(
        txn::verify_assertion(
            &got.assertion,
            &keys,
            "spiffe://idvault.dev/partner/partner-b",
            &r.transaction_id,
            unix_now(),
            60
        )
        .is_err()
    );

    // Replayed answer, and a fresh answer to a used code.
    assert_eq!(
        refusal(cx.wallet.answer_transaction(answer).await),
        (Code::AlreadyExists, "request_replayed".into())
    );
    assert_eq!(
        refusal(
            cx.wallet
                .answer_transaction(answer_req(&cx.phone, &shown, &typed, false, &[]))
                .await
        ),
        (Code::FailedPrecondition, "code_used".into())
    );

    // Partner-b's is still pending; the person declines it.
    assert_eq!(
        state_of(&mut b_client, &rb.transaction_id, 0).await.state,
        "pending"
    );
    let shown_b = cx
        .wallet
        .lookup_transaction(lookup_req(&cx.phone, &rb.code))
        .await?
        .into_inner();
    assert_eq!(shown_b.requester, "spiffe://idvault.dev/partner/partner-b");
    let out = cx
        .wallet
        .answer_transaction(answer_req(&cx.phone, &shown_b, &rb.code, false, &[]))
        .await?
        .into_inner();
    assert_eq!(out.state, "denied");
    let got = state_of(&mut b_client, &rb.transaction_id, 0).await;
    assert_eq!((got.state.as_str(), got.assertion.as_str()), ("denied", ""));
    // Both sides of the denial are on the record.
    let (action, outcome, detail) = cx.tv.last_audit().await;
    assert_eq!(
        (action.as_str(), outcome.as_str()),
        ("AwaitTransaction", "ok")
    );
    assert!(detail.contains("state=denied assertion=false"), "{detail}");
    assert_eq!(
        cx.tv
            .count("SELECT count(*) FROM audit_log WHERE action = 'DeviceCall' AND detail LIKE '%op=answer_transaction%state=denied%'")
            .await,
        1
    );

    // The audit log holds no claim value, binding message or code.
    let rows: Vec<(String,)> = sqlx::query_as("SELECT detail FROM audit_log")
        .fetch_all(cx.tv.db())
        .await?;
    let text = format!("{rows:?}");
    for secret in ["Amélie", "Shop Ltd", "Bank B", &r.code, &rb.code] {
        assert!(!text.contains(secret), "{secret} in the audit log");
    }
    assert!(text.contains("op=outcome") && text.contains("assertion=true"));
    assert!(matches!(
        cx.tv.verify_audit().await?,
        idvault_tests::idvault_server::service::AuditVerdict::Intact { .. }
    ));
    cx.tv.stop().await
}

/// Every refusal end to end, each its own audited outcome: expiry, wrong
/// codes (the outstanding code dies at five), another person's device
/// (that code dies), a device that guessed too often, bad requests, and a
/// partner without the role.
pub async fn every_refusal_is_distinct_and_audited(b: Backend) -> anyhow::Result<()> {
    let mut cx = setup(b).await?;
    let last = async |cx: &Ctx| {
        let (action, outcome, detail) = cx.tv.last_audit().await;
        format!("{action} {outcome} {detail}")
    };

    // Wrong codes: each counted against the outstanding code; the fifth
    // ends it; the right code is then used up.
    let r =
        cx.a.request_code(ask(&cx.token_a, "Login to Shop", &["email"], 0))
            .await?
            .into_inner();
    let wrong = if r.code == "0000-0000" {
        "1111-1111"
    } else {
        "0000-0000"
    };
    for i in 1..=txn::MAX_ATTEMPTS {
        assert_eq!(
            refusal(
                cx.wallet
                    .lookup_transaction(lookup_req(&cx.phone, wrong))
                    .await
            ),
            (Code::PermissionDenied, "wrong_code".into()),
            "attempt {i}"
        );
        let audited = last(&cx).await;
        assert!(
            audited.contains("refused") && audited.contains("wrong_code"),
            "{audited}"
        );
    }
    let wrong_code_record = last(&cx).await;
    assert!(wrong_code_record.contains("ended=1"));
    assert_eq!(
        state_of(&mut cx.a, &r.transaction_id, 0).await.state,
        "too_many_attempts"
    );
    assert_eq!(
        refusal(
            cx.wallet
                .lookup_transaction(lookup_req(&cx.phone, &r.code))
                .await
        ),
        (Code::FailedPrecondition, "code_used".into())
    );

    // Another person's device enters this person's code: refused, and the
    // code dies.
    let other = cx
        .tv
        .subjects("partner-a")
        .await?
        .create_subject(pb::CreateSubjectRequest {
            fields: fields(&[("given_name", "Tove"), ("family_name", "Berg")]),
        })
        .await?
        .into_inner();
    let mut wallet = cx.wallet.clone();
    let stranger = enroll(&cx.tv, &mut wallet, &other.subject_id).await;
    let r =
        cx.a.request_code(ask(&cx.token_a, "Transfer 900 EUR", &[], 0))
            .await?
            .into_inner();
    // The phone hears only "wrong code" (a guesser must not learn it hit
    // a code); the audit log and the third party say what happened.
    assert_eq!(
        refusal(
            cx.wallet
                .lookup_transaction(lookup_req(&stranger, &r.code))
                .await
        ),
        (Code::PermissionDenied, "wrong_code".into())
    );
    // The relaying wallet partner's own record, which it may read back,
    // says only what the phone was told; the vault's record beside it says
    // what happened.
    let audited = last(&cx).await;
    assert!(
        audited.contains("wrong_code")
            && !audited.contains("wrong_person")
            && !audited.contains(&r.transaction_id),
        "{audited}"
    );
    // In the very form of an ordinary wrong code's record: the same words
    // and keys, only the values (device, counts) differ.
    let shape = |r: &str| -> Vec<String> {
        r.split_whitespace()
            .map(|w| w.split('=').next().unwrap_or(w).to_owned())
            .collect()
    };
    assert_eq!(shape(&audited), shape(&wrong_code_record));
    let vault_record: String = sqlx::query_scalar(
        "SELECT detail FROM audit_log WHERE action = 'TransactionCodeRefused' \
         ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(cx.tv.db())
    .await?;
    assert!(
        vault_record.contains("wrong_person")
            && vault_record.contains("ended=true")
            && vault_record.contains(&r.transaction_id),
        "{vault_record}"
    );
    assert_eq!(
        state_of(&mut cx.a, &r.transaction_id, 0).await.state,
        "wrong_person"
    );
    assert_eq!(
        refusal(
            cx.wallet
                .lookup_transaction(lookup_req(&cx.phone, &r.code))
                .await
        ),
        (Code::FailedPrecondition, "code_used".into())
    );
    // An answer naming another transaction than the code's is a wrong code.
    let r2 =
        cx.a.request_code(ask(&cx.token_a, "Second", &[], 0))
            .await?
            .into_inner();
    let shown2 = cx
        .wallet
        .lookup_transaction(lookup_req(&cx.phone, &r2.code))
        .await?
        .into_inner();
    let other_id = pb::LookupTransactionResponse {
        transaction_id: r.transaction_id.clone(),
        ..shown2.clone()
    };
    assert_eq!(
        refusal(
            cx.wallet
                .answer_transaction(answer_req(&cx.phone, &other_id, &r2.code, true, &[]))
                .await
        ),
        (Code::PermissionDenied, "wrong_code".into())
    );
    // Sharing a claim that was not asked for is malformed.
    assert_eq!(
        refusal(
            cx.wallet
                .answer_transaction(answer_req(&cx.phone, &shown2, &r2.code, true, &["email"]))
                .await
        ),
        (Code::InvalidArgument, "malformed".into())
    );

    // A device that keeps guessing is stopped (10 wrong codes an hour;
    // the stranger has one).
    for _ in 0..9 {
        let _ = cx
            .wallet
            .lookup_transaction(lookup_req(&stranger, "2222-2222"))
            .await;
    }
    assert_eq!(
        refusal(
            cx.wallet
                .lookup_transaction(lookup_req(&stranger, "2222-2222"))
                .await
        ),
        (Code::ResourceExhausted, "too_many_attempts".into())
    );

    // Bad requests from the third party change nothing.
    let before = cx.tv.count("SELECT count(*) FROM transactions").await;
    for bad in [
        ask(&cx.token_a, "line\nbreak", &[], 0),
        ask(&cx.token_a, "", &[], 0),
        ask(&cx.token_a, "ok", &["shoe_size"], 0),
        ask(&cx.token_a, "ok", &["email", "email"], 0),
        ask(&cx.token_a, "ok", &[], 301),
        ask(&cx.token_a, "ok", &[], 29),
        ask(&cx.token_a, "zero\u{200B}width", &[], 0),
    ] {
        assert_eq!(
            cx.a.request_code(bad).await.unwrap_err().code(),
            Code::InvalidArgument
        );
    }
    // A token that is not this partner's, or of no one.
    for token in ["pw_aaaaaaaaaaaaaaaaaaaaaaaaaa", "not-a-token"] {
        assert_eq!(
            cx.a.request_code(ask(token, "ok", &[], 0))
                .await
                .unwrap_err()
                .code(),
            Code::NotFound
        );
    }
    let mut b_client = TransactionServiceClient::new(cx.tv.channel("partner-b").await?);
    assert_eq!(
        b_client
            .request_code(ask(&cx.token_a, "ok", &[], 0))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound,
        "partner-a's token names no one for partner-b"
    );
    assert_eq!(
        cx.tv.count("SELECT count(*) FROM transactions").await,
        before
    );
    // The wallet partner lacks transactions.request.
    let mut w = TransactionServiceClient::new(cx.tv.channel("wallet").await?);
    assert_eq!(
        w.request_code(ask(&cx.token_a, "ok", &[], 0))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );

    // A forged approval in the database authorises nothing.
    let r3 =
        cx.a.request_code(ask(&cx.token_a, "Forged", &["given_name"], 0))
            .await?
            .into_inner();
    let id = txn::parse_id(&r3.transaction_id).unwrap();
    sqlx::query("UPDATE transactions SET state = 'approved', approved = 'given_name' WHERE transaction_id = $1")
        .bind(id.to_vec())
        .execute(cx.tv.db())
        .await?;
    let e =
        cx.a.await_transaction(pb::AwaitTransactionRequest {
            transaction_id: r3.transaction_id.clone(),
            wait_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");

    // At most 3 pending per third party and person (r2 is one); codes for
    // another person do not count.
    for n in 0..3 {
        cx.a.request_code(ask(&other.pairwise_token, &format!("Other {n}"), &[], 0))
            .await?;
    }
    for n in 0..2 {
        cx.a.request_code(ask(&cx.token_a, &format!("Cap {n}"), &[], 0))
            .await?;
    }
    let e =
        cx.a.request_code(ask(&cx.token_a, "Cap 3", &[], 0))
            .await
            .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(
        e.message(),
        "too many transactions are pending for this person; try again later"
    );
    cx.tv.stop().await
}

/// A code past its lifetime (at least 30 s) is refused, audited, and the
/// third party reads `expired`.
pub async fn codes_expire(b: Backend) -> anyhow::Result<()> {
    let mut cx = setup(b).await?;
    let r =
        cx.a.request_code(ask(&cx.token_a, "Short-lived", &[], 30))
            .await?
            .into_inner();
    assert!(r.expires_at <= unix_now() + 30);
    tokio::time::sleep(std::time::Duration::from_millis(31_200)).await;
    assert_eq!(
        refusal(
            cx.wallet
                .lookup_transaction(lookup_req(&cx.phone, &r.code))
                .await
        ),
        (Code::FailedPrecondition, "code_expired".into())
    );
    let (_, outcome, detail) = cx.tv.last_audit().await;
    assert!(
        outcome == "refused" && detail.contains("code_expired"),
        "{detail}"
    );
    assert_eq!(
        state_of(&mut cx.a, &r.transaction_id, 0).await.state,
        "expired"
    );
    let (_, _, detail) = cx.tv.last_audit().await;
    assert!(detail.contains("state=expired"), "{detail}");
    cx.tv.stop().await
}

/// One code, many answers at once: exactly one is accepted.
pub async fn codes_are_single_use_under_concurrency(b: Backend) -> anyhow::Result<()> {
    let mut cx = setup(b).await?;
    let r =
        cx.a.request_code(ask(&cx.token_a, "Race", &["given_name"], 0))
            .await?
            .into_inner();
    let shown = cx
        .wallet
        .lookup_transaction(lookup_req(&cx.phone, &r.code))
        .await?
        .into_inner();
    let mut calls = Vec::new();
    for i in 0..8 {
        let mut w = DeviceServiceClient::new(cx.tv.channel("wallet").await?);
        let req = answer_req(&cx.phone, &shown, &r.code, i % 2 == 0, &[]);
        calls.push(tokio::spawn(async move { w.answer_transaction(req).await }));
    }
    let mut won = Vec::new();
    for c in calls {
        match c.await? {
            Ok(r) => won.push(r.into_inner().state),
            Err(e) => assert_eq!(reason(&e), "code_used", "{e:?}"),
        }
    }
    assert_eq!(won.len(), 1, "{won:?}");
    let got = state_of(&mut cx.a, &r.transaction_id, 0).await;
    assert_eq!(got.state, won[0]);
    let answers = cx
        .tv
        .count("SELECT count(*) FROM audit_log WHERE detail LIKE '%op=answer_transaction%' AND outcome = 'ok'")
        .await;
    assert_eq!(answers, 1);
    cx.tv.stop().await
}

/// A third party names the person by its pairwise token, so its own audit
/// records (which `GetInclusionProof` hands back to it) name no subject,
/// answered or refused: the vault's id would let it join its records with
/// another partner's. A record of the vault's own, which no partner can
/// fetch, names the subject and the request.
pub async fn third_party_records_name_no_subject(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_core::tlog::leaf::AuditLeaf;
    let mut cx = setup(b).await?;
    let mut asked = Vec::new();
    for n in 0..3 {
        let r =
            cx.a.request_code(ask(&cx.token_a, &format!("Order {n}"), &[], 0))
                .await?
                .into_inner();
        asked.push(r);
    }
    // The fourth is refused after the person was found.
    let e =
        cx.a.request_code(ask(&cx.token_a, "Order 3", &[], 0))
            .await
            .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    // The person declines the first; the third party reads the outcome.
    let shown = cx
        .wallet
        .lookup_transaction(lookup_req(&cx.phone, &asked[0].code))
        .await?
        .into_inner();
    cx.wallet
        .answer_transaction(answer_req(&cx.phone, &shown, &asked[0].code, false, &[]))
        .await?;
    assert_eq!(
        state_of(&mut cx.a, &asked[0].transaction_id, 0).await.state,
        "denied"
    );
    let subject: String = sqlx::query_scalar(
        "SELECT subject FROM audit_log WHERE action = 'CreateSubject' AND outcome = 'ok'",
    )
    .fetch_one(cx.tv.db())
    .await?;
    // action, outcome, subject column, request id, leaf bytes
    type Row = (String, String, Option<String>, Vec<u8>, Vec<u8>);
    let own: Vec<Row> = sqlx::query_as(
        "SELECT action, outcome, subject, request_id, leaf FROM audit_log \
         WHERE actor = $1 AND action IN ('RequestTransactionCode', 'AwaitTransaction') \
         ORDER BY id",
    )
    .bind(PARTNER_A)
    .fetch_all(cx.tv.db())
    .await?;
    let outcomes: Vec<(&str, &str)> = own
        .iter()
        .map(|(a, o, ..)| (a.as_str(), o.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("RequestTransactionCode", "ok"),
            ("RequestTransactionCode", "ok"),
            ("RequestTransactionCode", "ok"),
            ("RequestTransactionCode", "rate_limited"),
            ("AwaitTransaction", "ok"),
        ]
    );
    let named: Vec<(Option<String>, String)> = sqlx::query_as(
        "SELECT subject, detail FROM audit_log WHERE actor = 'idvault' \
         AND action = 'RequestSubject' ORDER BY id",
    )
    .fetch_all(cx.tv.db())
    .await?;
    assert_eq!(named.len(), own.len(), "{named:?}");
    for ((action, _, column, request_id, bytes), (vault_subject, detail)) in own.iter().zip(&named)
    {
        assert_eq!(column, &None, "{action}");
        let leaf = AuditLeaf::decode(bytes)?;
        assert_eq!(leaf.subject, None, "{action}");
        // A policy about one person, named in two partners' records,
        // would tie them: the decision is on the vault's record.
        assert!(leaf.policies.is_empty(), "{action}: {leaf:?}");
        assert!(!leaf.detail.contains("policy="), "{action}: {leaf:?}");
        assert!(
            !String::from_utf8_lossy(bytes).contains(&subject),
            "{action}"
        );
        assert_eq!(vault_subject.as_deref(), Some(subject.as_str()));
        let named = format!("request={} action={action} ", hex::encode(request_id));
        assert!(detail.starts_with(&named), "{detail}");
        assert!(detail.contains("policy="), "{detail}");
    }
    cx.tv.stop().await
}

/// A database writer without the root key (SECURITY.md) cannot point a
/// partner's pairwise token at another person, nor invent a token: the
/// partner's code request by that token is refused with DATA_LOSS,
/// audited as an integrity failure, and no other person's phone is asked.
pub async fn forged_pairwise_tokens_reach_nobody(b: Backend) -> anyhow::Result<()> {
    let mut cx = setup(b).await?;
    // Another person, with a phone of their own (the writer's accomplice).
    let other = cx
        .tv
        .subjects("partner-a")
        .await?
        .create_subject(pb::CreateSubjectRequest {
            fields: fields(&[("given_name", "Mallory"), ("family_name", "Other")]),
        })
        .await?
        .into_inner();
    let other_phone = enroll(&cx.tv, &mut cx.wallet, &other.subject_id).await;
    let other_id = idvault_tests::idvault_core::subject::SubjectId::parse(&other.subject_id)
        .expect("subject id")
        .as_bytes()
        .to_vec();
    let forged_refusal = |r: Result<tonic::Response<pb::RequestCodeResponse>, tonic::Status>| {
        let s = r.expect_err("a forged token row");
        assert_eq!(s.code(), Code::DataLoss, "{}", s.message());
    };

    // Pointed at the other person: their own token row goes, the
    // person's token now names them.
    sqlx::query("DELETE FROM pairwise_tokens WHERE token = $1")
        .bind(other.pairwise_token.clone())
        .execute(cx.tv.db())
        .await?;
    sqlx::query("UPDATE pairwise_tokens SET subject_id = $1 WHERE token = $2")
        .bind(other_id.clone())
        .bind(cx.token_a.clone())
        .execute(cx.tv.db())
        .await?;
    forged_refusal(
        cx.a.request_code(ask(&cx.token_a, "Pay 10 EUR", &[], 0))
            .await,
    );
    let (_, outcome, detail) = cx.tv.last_audit().await;
    assert_eq!(outcome, "error");
    assert!(
        detail.contains("integrity: pairwise token row MAC"),
        "{detail}"
    );

    // Invented, without a MAC (as a row from before token MACs).
    let invented = "pw_aaaaaaaaaaaaaaaaaaaaaaaaaa";
    sqlx::query(
        "INSERT INTO pairwise_tokens (partner, subject_id, token) VALUES ('partner-a', $1, $2)",
    )
    .bind(vec![0x11u8; 16])
    .bind(invented)
    .execute(cx.tv.db())
    .await?;
    forged_refusal(cx.a.request_code(ask(invented, "Pay 10 EUR", &[], 0)).await);
    // The redirected row with its MAC taken away, as an upgraded
    // database's rows look: neither stays nor becomes sealed when the
    // vault starts again. Only the operator's `keys seal-upgraded-tokens`
    // seals tokens without a MAC.
    sqlx::query("UPDATE pairwise_tokens SET mac = NULL, mac_version = NULL WHERE token = $1")
        .bind(cx.token_a.clone())
        .execute(cx.tv.db())
        .await?;
    cx.tv.restart().await?;
    let mut a = TransactionServiceClient::new(cx.tv.channel("partner-a").await?);
    forged_refusal(a.request_code(ask(invented, "Pay 10 EUR", &[], 0)).await);
    forged_refusal(a.request_code(ask(&cx.token_a, "Pay 10 EUR", &[], 0)).await);
    assert_eq!(cx.tv.vault.seal_upgraded_pairwise_tokens().await?, 2);
    let (action, outcome, detail) = cx.tv.last_audit().await;
    assert_eq!(
        (action.as_str(), outcome.as_str()),
        ("SealUpgradedTokens", "ok")
    );
    assert_eq!(detail, "sealed=2");

    // No transaction was made, so the other phone has nothing to answer.
    let none: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM transactions")
        .fetch_one(cx.tv.db())
        .await?;
    assert_eq!(none, 0);
    drop(other_phone);
    Ok(())
}

/// Phones of two people entering each other's codes at the same moment,
/// eight pairs at once, three rounds: every entry is an ordinary wrong
/// code and every code ends. On PostgreSQL each entry locks its own
/// person's codes and the code it names, so without one lock order the
/// two entries of a pair waited for each other and the database aborted
/// one of them.
pub async fn crossed_codes_end_without_deadlock(b: Backend) -> anyhow::Result<()> {
    const PAIRS: usize = 8;
    let tv = TestVault::start(b).await?;
    let mut subjects = tv.subjects("partner-a").await?;
    let mut wallet = DeviceServiceClient::new(tv.channel("wallet").await?);
    let mut people = Vec::new();
    for n in 0..2 * PAIRS {
        let created = subjects
            .create_subject(pb::CreateSubjectRequest {
                fields: fields(&[
                    ("given_name", "Ines"),
                    ("family_name", &format!("Crossed{n}")),
                ]),
            })
            .await?
            .into_inner();
        let phone = enroll(&tv, &mut wallet, &created.subject_id).await;
        people.push((created.pairwise_token, phone));
    }
    let mut a = TransactionServiceClient::new(tv.channel("partner-a").await?);
    for round in 0..3 {
        let mut issued = Vec::new();
        for (token, _) in &people {
            issued.push(
                a.request_code(ask(token, &format!("Round {round}"), &[], 0))
                    .await?
                    .into_inner(),
            );
        }
        let mut calls = Vec::new();
        for (n, (_, phone)) in people.iter().enumerate() {
            // Each phone enters the code of the other person of its pair.
            let req = lookup_req(phone, &issued[n ^ 1].code);
            let mut w = DeviceServiceClient::new(tv.channel("wallet").await?);
            calls.push(tokio::spawn(async move { w.lookup_transaction(req).await }));
        }
        for c in calls {
            assert_eq!(
                refusal(c.await?),
                (Code::PermissionDenied, "wrong_code".into()),
                "round {round}"
            );
        }
        for r in &issued {
            assert_eq!(
                state_of(&mut a, &r.transaction_id, 0).await.state,
                "wrong_person",
                "round {round}"
            );
        }
    }
    tv.stop().await
}

/// A phone entering someone else's code locks that person's row only to
/// end a live code: an ended code entered again, or any entry from a
/// phone past its limit of wrong codes, goes through while another
/// transaction holds the person's row (PostgreSQL), so one known code
/// cannot be used to stall its person again and again.
pub async fn spent_codes_lock_nobody_else(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let mut subjects = tv.subjects("partner-a").await?;
    let mut wallet = DeviceServiceClient::new(tv.channel("wallet").await?);
    let mut people = Vec::new();
    for name in ["Victim", "Mallory"] {
        let created = subjects
            .create_subject(pb::CreateSubjectRequest {
                fields: fields(&[("given_name", "Noor"), ("family_name", name)]),
            })
            .await?
            .into_inner();
        let phone = enroll(&tv, &mut wallet, &created.subject_id).await;
        people.push((created, phone));
    }
    let (victim, _) = &people[0];
    let mallory = &people[1].1;
    let mut a = TransactionServiceClient::new(tv.channel("partner-a").await?);
    let r = a
        .request_code(ask(&victim.pairwise_token, "Pay 5 EUR", &[], 0))
        .await?
        .into_inner();
    assert_eq!(
        refusal(
            wallet
                .lookup_transaction(lookup_req(mallory, &r.code))
                .await
        ),
        (Code::PermissionDenied, "wrong_code".into())
    );
    assert_eq!(
        state_of(&mut a, &r.transaction_id, 0).await.state,
        "wrong_person"
    );

    // Another transaction holds the victim's row from here on (on SQLite
    // the one writer orders everything, and a held write would stop it).
    let mut held = tv.db().begin().await?;
    if b == Backend::Postgres {
        hold_row(&mut held, &victim.subject_id).await?;
    }
    let within = std::time::Duration::from_secs(10);
    // The ended code again, until the phone is past its limit, and once
    // more after it: each answered while the row is held.
    for n in 2..=transactions_limit() {
        let answer = tokio::time::timeout(
            within,
            wallet.lookup_transaction(lookup_req(mallory, &r.code)),
        )
        .await
        .map_err(|_| anyhow::anyhow!("entry {n} waited for the victim's row"))?;
        assert_eq!(
            refusal(answer),
            (Code::PermissionDenied, "wrong_code".into()),
            "entry {n}"
        );
    }
    // Past the limit, even a live code of the victim's is refused before
    // anything is locked, and stays as it was. (Issued before the row is
    // held again: its request locks the row too.)
    held.rollback().await?;
    let live = a
        .request_code(ask(&victim.pairwise_token, "Pay 6 EUR", &[], 0))
        .await?
        .into_inner();
    let mut held = tv.db().begin().await?;
    if b == Backend::Postgres {
        hold_row(&mut held, &victim.subject_id).await?;
    }
    let answer = tokio::time::timeout(
        within,
        wallet.lookup_transaction(lookup_req(mallory, &live.code)),
    )
    .await
    .map_err(|_| anyhow::anyhow!("an entry past the limit waited for the victim's row"))?;
    assert_eq!(
        refusal(answer),
        (Code::ResourceExhausted, "too_many_attempts".into())
    );
    held.rollback().await?;
    assert_eq!(
        state_of(&mut a, &live.transaction_id, 0).await.state,
        "pending"
    );
    tv.stop().await
}

/// Locks a person's subject row in `tx` until it ends.
async fn hold_row(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    subject_id: &str,
) -> anyhow::Result<()> {
    let id = idvault_tests::idvault_core::subject::SubjectId::parse(subject_id)?;
    sqlx::query("SELECT subject_id FROM subjects WHERE subject_id = $1 FOR UPDATE")
        .bind(id.as_bytes().to_vec())
        .fetch_one(&mut **tx)
        .await?;
    Ok(())
}

/// Wrong codes a phone may enter in the window.
fn transactions_limit() -> i64 {
    idvault_tests::idvault_server::service::transactions::MAX_DEVICE_FAILURES
}

/// Refused device calls wake no third party waiting in `AwaitTransaction`
/// (each woken waiter reads its row, so a refusal anyone can cause would
/// make every waiter of every partner read); an answer does, and so does
/// the wrong code that ends the person's codes.
pub async fn refused_calls_wake_no_waiter(b: Backend) -> anyhow::Result<()> {
    let mut cx = setup(b).await?;
    let issued =
        cx.a.request_code(ask(&cx.token_a, "Pay 10 EUR", &["given_name"], 0))
            .await?
            .into_inner();
    let before = cx.tv.vault.transaction_wakeups();
    // A wrong code (counted against the pending one, which stays pending),
    // a phone never enrolled, the same signed request twice.
    let wrong = if issued.code == "2222-2222" {
        "3333-3333"
    } else {
        "2222-2222"
    };
    assert_eq!(
        refusal(
            cx.wallet
                .lookup_transaction(lookup_req(&cx.phone, wrong))
                .await
        ),
        (Code::PermissionDenied, "wrong_code".into())
    );
    let stranger = DeviceKey::generate(&SystemRng::default())?;
    assert_eq!(
        refusal(
            cx.wallet
                .lookup_transaction(lookup_req(&stranger, &issued.code))
                .await
        )
        .0,
        Code::NotFound
    );
    let once = lookup_req(&cx.phone, &issued.code);
    let shown = cx
        .wallet
        .lookup_transaction(once.clone())
        .await?
        .into_inner();
    assert_eq!(
        refusal(cx.wallet.lookup_transaction(once).await).1,
        "request_replayed"
    );
    assert_eq!(
        cx.tv.vault.transaction_wakeups(),
        before,
        "refusals woke waiters"
    );
    // The answer wakes them.
    cx.wallet
        .answer_transaction(answer_req(
            &cx.phone,
            &shown,
            &issued.code,
            true,
            &["given_name"],
        ))
        .await?;
    assert_eq!(cx.tv.vault.transaction_wakeups(), before + 1);
    assert_eq!(
        state_of(&mut cx.a, &issued.transaction_id, 0).await.state,
        "approved"
    );
    // Wrong codes that end the person's pending code wake them too.
    let second =
        cx.a.request_code(ask(&cx.token_a, "Pay 20 EUR", &[], 0))
            .await?
            .into_inner();
    let mut n = 0;
    while state_of(&mut cx.a, &second.transaction_id, 0).await.state == "pending" {
        n += 1;
        assert!(n <= 10, "five wrong codes end the person's codes");
        let wrong = format!("{:04}-{:04}", 1000 + n, 2000 + n);
        let _ = cx
            .wallet
            .lookup_transaction(lookup_req(&cx.phone, &wrong))
            .await;
    }
    assert_eq!(cx.tv.vault.transaction_wakeups(), before + 2);
    cx.tv.stop().await
}
