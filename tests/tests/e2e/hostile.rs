//! A hostile partner with a valid certificate, probing with another
//! partner's identifiers: every RPC that takes one answers exactly as for
//! an identifier that does not exist (same code, same message), and
//! changes nothing.

use idvault_tests::idvault_proto::v1::subject_service_client::SubjectServiceClient;
use idvault_tests::idvault_proto::v1::token_service_client::TokenServiceClient;
use idvault_tests::idvault_proto::v1::{
    DeleteSubjectRequest, DetokenizeRequest, IdentifierType, UpdateSubjectRequest,
    VerifySubjectChainRequest,
};
use idvault_tests::{Backend, TestVault};
use tonic::transport::Channel;

use crate::bridge::{import, rec};
use crate::subjects::{create, fields};

/// `(code, message)` of a refused call.
fn refusal<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (tonic::Code, String) {
    let e = r.expect_err("refused");
    (e.code(), e.message().to_owned())
}

pub async fn other_partners_ids_look_absent(b: Backend) -> anyhow::Result<()> {
    // partner-b may delete subjects and detokenize too, so every refusal
    // below is about the identifier, not the role.
    let tv = TestVault::start_with_roles(
        b,
        "partner-b",
        &["subjects.delete", "tokens.detokenize", "bridge.import"],
    )
    .await?;
    let theirs = create(&tv, "partner-a", &[("city", "Paris")]).await?;
    let nobody = "00000000-0000-4000-8000-000000000000".to_owned();
    let mut b_subjects = tv.subjects("partner-b").await?;
    // partner-b's own subject works (the roles are really there).
    let own = create(&tv, "partner-b", &[("city", "Oslo")]).await?;
    b_subjects
        .verify_subject_chain(VerifySubjectChainRequest { subject_id: own })
        .await?;
    let packets_before = tv.count("SELECT count(*) FROM packets").await;
    let probe = async |c: &mut idvault_tests::idvault_proto::v1::subject_service_client::SubjectServiceClient<tonic::transport::Channel>, id: &str| {
        [
            refusal(
                c.update_subject(UpdateSubjectRequest {
                    subject_id: id.to_owned(),
                    fields: fields(&[("city", "Rome")]),
                })
                .await,
            ),
            refusal(
                c.verify_subject_chain(VerifySubjectChainRequest {
                    subject_id: id.to_owned(),
                })
                .await,
            ),
            refusal(
                c.delete_subject(DeleteSubjectRequest {
                    subject_id: id.to_owned(),
                })
                .await,
            ),
        ]
    };
    let on_theirs = probe(&mut b_subjects, &theirs).await;
    let on_nobody = probe(&mut b_subjects, &nobody).await;
    assert_eq!(on_theirs, on_nobody, "another's subject must look absent");
    assert!(
        on_theirs.iter().all(|(c, _)| *c == tonic::Code::NotFound),
        "{on_theirs:?}"
    );
    assert_eq!(
        tv.count("SELECT count(*) FROM packets").await,
        packets_before
    );

    // Entity tokens: partner-a's token detokenizes for nobody else.
    import(
        &tv,
        "partner-a",
        vec![vec![rec("r1", &[(IdentifierType::Account, "AC-1")])]],
    )
    .await?;
    let token: String =
        sqlx::query_scalar("SELECT token FROM xref_entities WHERE owner = 'partner-a'")
            .fetch_one(tv.db())
            .await?;
    let mut b_tokens = TokenServiceClient::new(tv.channel("partner-b").await?);
    let on_token = refusal(
        b_tokens
            .detokenize(DetokenizeRequest {
                token: token.clone(),
            })
            .await,
    );
    let on_none = refusal(
        b_tokens
            .detokenize(DetokenizeRequest {
                token: "et_aaaaaaaaaaaaaaaaaaaaaaaaaa".into(),
            })
            .await,
    );
    assert_eq!(on_token, on_none, "another's entity token must look absent");
    assert_eq!(on_token.0, tonic::Code::NotFound);
    // The owner still reads it.
    let mut a_tokens = TokenServiceClient::new(tv.channel("partner-a").await?);
    a_tokens.detokenize(DetokenizeRequest { token }).await?;
    tv.stop().await
}

/// Pairwise tokens, subject ids in the consent and event RPCs, standing
/// consent ids and command ids of another partner: each answers exactly
/// as an identifier that does not exist, and changes nothing.
pub async fn other_partners_tokens_consents_and_commands_look_absent(
    b: Backend,
) -> anyhow::Result<()> {
    use idvault_tests::idvault_client::device::{DeviceKey, GrantRequest, unix_now};
    use idvault_tests::idvault_core::SystemRng;
    use idvault_tests::idvault_proto::v1 as pb;
    use pb::command_service_client::CommandServiceClient;
    use pb::consent_service_client::ConsentServiceClient;
    use pb::device_service_client::DeviceServiceClient;
    use pb::event_service_client::EventServiceClient;

    const A: &str = "spiffe://idvault.dev/partner/partner-a";
    const B: &str = "spiffe://idvault.dev/partner/partner-b";
    // partner-b holds every role these RPCs need, so each refusal below
    // is about the identifier.
    let tv = TestVault::start_with_roles(
        b,
        "partner-b",
        &["devices.enroll", "events.publish", "commands.receive"],
    )
    .await?;
    let created = tv
        .subjects("partner-a")
        .await?
        .create_subject(pb::CreateSubjectRequest {
            fields: fields(&[("given_name", "Ada")]),
        })
        .await?
        .into_inner();
    let (theirs, their_token) = (created.subject_id, created.pairwise_token);
    let nobody = "00000000-0000-4000-8000-000000000000".to_owned();
    let no_token = "pw_aaaaaaaaaaaaaaaaaaaaaaaaaa".to_owned();
    let mut b_events = EventServiceClient::new(tv.channel("partner-b").await?);
    let mut b_consent = ConsentServiceClient::new(tv.channel("partner-b").await?);
    let subjects_before = tv.count("SELECT count(*) FROM subjects").await;

    // Events about their subject, by pairwise token and by id.
    let publish = |s: pb::publish_event_request::Subject| pb::PublishEventRequest {
        subject: Some(s),
        event_type: "address.changed".into(),
        event_id: uuid::Uuid::new_v4().to_string(),
        fields: vec![],
    };
    use pb::publish_event_request::Subject as S;
    let by_token = refusal(
        b_events
            .publish_event(publish(S::PairwiseToken(their_token.clone())))
            .await,
    );
    let by_none = refusal(
        b_events
            .publish_event(publish(S::PairwiseToken(no_token)))
            .await,
    );
    assert_eq!(
        by_token, by_none,
        "another's pairwise token must look absent"
    );
    let by_id = refusal(
        b_events
            .publish_event(publish(S::SubjectId(theirs.clone())))
            .await,
    );
    let by_nobody = refusal(
        b_events
            .publish_event(publish(S::SubjectId(nobody.clone())))
            .await,
    );
    assert_eq!(
        by_id, by_nobody,
        "another's subject must look absent to events"
    );
    assert_eq!(by_token.0, tonic::Code::NotFound);

    // Challenges and enrollment codes for their subject.
    let challenge = |s: &str| pb::RequestChallengeRequest {
        subject_id: s.to_owned(),
    };
    let code = |s: &str| pb::IssueEnrollmentCodeRequest {
        subject_id: s.to_owned(),
    };
    // A challenge is issued for any subject id (the person hands theirs to
    // the partner that wants their data), existing or not: no oracle.
    for s in [&theirs, &nobody] {
        let c = b_consent
            .request_challenge(challenge(s))
            .await?
            .into_inner();
        assert_eq!(c.challenge.len(), 32);
    }
    assert_eq!(
        refusal(b_consent.issue_enrollment_code(code(&theirs)).await),
        refusal(b_consent.issue_enrollment_code(code(&nobody)).await),
    );

    // A standing consent the person gave partner-a.
    let mut a_consent = ConsentServiceClient::new(tv.channel("partner-a").await?);
    let mut wallet = DeviceServiceClient::new(tv.channel("wallet").await?);
    let enrollment = a_consent
        .issue_enrollment_code(code(&theirs))
        .await?
        .into_inner()
        .enrollment_code;
    let phone = DeviceKey::generate(&SystemRng::default()).unwrap();
    wallet
        .enroll(phone.enrollment(&theirs, &enrollment).unwrap())
        .await?;
    let ch = a_consent
        .request_challenge(challenge(&theirs))
        .await?
        .into_inner()
        .challenge;
    let now = unix_now();
    let signed = phone
        .sign_grant(
            &GrantRequest {
                subject_id: theirs.clone(),
                audience: A.into(),
                purpose: "kyc".into(),
                fields: vec!["given_name".into()],
                challenge: ch,
                issued_at: now,
                expires_at: now + 3600,
                standing: true,
            },
            &SystemRng::default(),
        )
        .unwrap();
    let consent_id = {
        use prost::Message;
        pb::ConsentGrant::decode(signed.grant.as_slice())?.consent_id
    };
    a_consent
        .release(pb::ReleaseRequest {
            consent: Some(pb::release_request::Consent::Signed(signed)),
            nonce: vec![1; 16],
        })
        .await?;
    let standing = |id: Vec<u8>| pb::ReleaseRequest {
        consent: Some(pb::release_request::Consent::StandingConsentId(id)),
        nonce: vec![2; 16],
    };
    let on_theirs = refusal(b_consent.release(standing(consent_id.clone())).await);
    let on_none = refusal(b_consent.release(standing(vec![0x5a; 16])).await);
    assert_eq!(on_theirs, on_none, "another's consent must look absent");
    assert_eq!(on_theirs.0, tonic::Code::NotFound);
    // partner-a still uses it.
    a_consent.release(standing(consent_id)).await?;

    // A command waiting for partner-b, acknowledged by partner-a.
    let sign = |action| {
        phone
            .sign_request(action, unix_now(), &SystemRng::default())
            .unwrap()
    };
    use pb::device_request::Action;
    for e in [A, B] {
        wallet
            .link_entity(sign(Action::LinkEntity(pb::LinkEntity {
                entity: e.into(),
            })))
            .await?;
    }
    wallet
        .set_rules(sign(Action::SetRules(pb::SetRules {
            rules: vec![pb::Rule {
                rule_id: String::new(),
                source: A.into(),
                event_type: "address.changed".into(),
                target: B.into(),
                command: "update_address".into(),
                fields: vec!["address".into()],
            }],
        })))
        .await?;
    EventServiceClient::new(tv.channel("partner-a").await?)
        .publish_event(pb::PublishEventRequest {
            subject: Some(S::SubjectId(theirs.clone())),
            event_type: "address.changed".into(),
            event_id: "e-1".into(),
            fields: vec![pb::EventField {
                name: "address".into(),
                value: "1 Main St".into(),
            }],
        })
        .await?;
    let command_id: String = sqlx::query_scalar("SELECT command_id FROM command_outbox")
        .fetch_one(tv.db())
        .await?;
    let mut a_commands = CommandServiceClient::new(tv.channel("partner-a").await?);
    let ack = async |c: &mut CommandServiceClient<tonic::transport::Channel>, id: String| {
        c.ack_commands(pb::AckCommandsRequest {
            command_ids: vec![id],
        })
        .await
        .map(|r| r.into_inner().acknowledged)
    };
    assert_eq!(ack(&mut a_commands, command_id.clone()).await?, 0);
    assert_eq!(
        ack(&mut a_commands, format!("cmd_{}", "0".repeat(32))).await?,
        0
    );
    assert_eq!(tv.count("SELECT count(*) FROM command_outbox").await, 1);
    let mut b_commands = CommandServiceClient::new(tv.channel("partner-b").await?);
    assert_eq!(ack(&mut b_commands, command_id).await?, 1);

    assert_eq!(
        tv.count("SELECT count(*) FROM subjects").await,
        subjects_before
    );
    tv.stop().await
}

/// Passes bytes through unchanged, so any bytes can be sent to any method.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

#[derive(Debug)]
struct RawEncoder;

#[derive(Debug)]
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// `depth` messages nested in field 1 of each other.
fn nested(depth: usize) -> Vec<u8> {
    let mut m = Vec::new();
    for _ in 0..depth {
        let mut outer = vec![0x0a];
        let mut n = m.len();
        loop {
            let b = u8::try_from(n & 0x7f).unwrap();
            n >>= 7;
            if n == 0 {
                outer.push(b);
                break;
            }
            outer.push(b | 0x80);
        }
        outer.extend_from_slice(&m);
        m = outer;
    }
    m
}

/// Sends `body` to `method` the way its kind takes messages; the status it
/// ends with (OK when it succeeded).
async fn send_raw(
    ch: tonic::transport::Channel,
    path: &str,
    client_streaming: bool,
    server_streaming: bool,
    body: Vec<u8>,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::try_from(path).unwrap();
    let ok = |_| tonic::Status::ok("");
    match (client_streaming, server_streaming) {
        (false, false) => grpc
            .unary(tonic::Request::new(body), path, RawCodec)
            .await
            .map_or_else(|e| e, ok),
        (false, true) => match grpc
            .server_streaming(tonic::Request::new(body), path, RawCodec)
            .await
        {
            Err(e) => e,
            Ok(r) => drain(r.into_inner()).await,
        },
        (true, false) => grpc
            .client_streaming(
                tonic::Request::new(tokio_stream::iter(vec![body])),
                path,
                RawCodec,
            )
            .await
            .map_or_else(|e| e, ok),
        (true, true) => match grpc
            .streaming(
                tonic::Request::new(tokio_stream::iter(vec![body])),
                path,
                RawCodec,
            )
            .await
        {
            Err(e) => e,
            Ok(r) => drain(r.into_inner()).await,
        },
    }
}

async fn drain(mut s: tonic::codec::Streaming<Vec<u8>>) -> tonic::Status {
    loop {
        match s.message().await {
            Ok(Some(_)) => {}
            Ok(None) => return tonic::Status::ok(""),
            Err(e) => return e,
        }
    }
}

/// Every RPC of every idvault service (read from the compiled descriptor,
/// so a new RPC is covered without editing this test) gets an oversized
/// message and a message nested 5,000 deep: the first is RESOURCE_EXHAUSTED,
/// the second a clear refusal (never an internal error or a dropped
/// connection; OK only for a request type without fields, which skips it
/// as an unknown field), nothing is written, and the vault serves on.
pub async fn every_rpc_refuses_oversized_and_nested_messages(b: Backend) -> anyhow::Result<()> {
    use prost::Message;
    let tv = TestVault::start(b).await?;
    let set =
        prost_types::FileDescriptorSet::decode(idvault_tests::idvault_proto::FILE_DESCRIPTOR_SET)?;
    let before = (
        tv.count("SELECT count(*) FROM subjects").await,
        tv.count("SELECT count(*) FROM consents").await,
        tv.count("SELECT count(*) FROM events").await,
    );
    // Input types without fields: junk in an unknown field is skipped, as
    // protobuf specifies, and the call may succeed (it reads nothing).
    let empty: std::collections::HashSet<String> = set
        .file
        .iter()
        .flat_map(|f| {
            f.message_type
                .iter()
                .filter(|m| m.field.is_empty())
                .map(move |m| format!(".{}.{}", f.package(), m.name()))
        })
        .collect();
    let mut methods = 0;
    for file in &set.file {
        for svc in &file.service {
            let service = format!("{}.{}", file.package(), svc.name());
            for m in &svc.method {
                let path = format!("/{service}/{}", m.name());
                let (cs, ss) = (m.client_streaming(), m.server_streaming());
                let ch = tv.channel("partner-a").await?;
                let big = send_raw(ch.clone(), &path, cs, ss, vec![0x0a; 2 * 1024 * 1024]).await;
                assert_eq!(
                    big.code(),
                    tonic::Code::ResourceExhausted,
                    "{path}: {big:?}"
                );
                let deep = send_raw(ch, &path, cs, ss, nested(5_000)).await;
                let may_succeed = empty.contains(m.input_type());
                assert!(
                    deep.code() != tonic::Code::Ok || may_succeed,
                    "{path}: {deep:?}"
                );
                assert!(
                    !matches!(
                        deep.code(),
                        tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::Unavailable
                    ),
                    "{path}: {deep:?}"
                );
                methods += 1;
            }
        }
    }
    assert!(methods >= 28, "only {methods} RPCs found");
    let after = (
        tv.count("SELECT count(*) FROM subjects").await,
        tv.count("SELECT count(*) FROM consents").await,
        tv.count("SELECT count(*) FROM events").await,
    );
    assert_eq!(before, after);
    create(&tv, "partner-a", &[("city", "Lima")]).await?;
    tv.stop().await
}

/// A database writer without the root key hands partner-b's subject to
/// partner-a by editing `subjects.created_by`. The owner's row MAC no
/// longer verifies, so partner-a can neither issue an enrollment code for
/// it (the way to enroll its own device and have the person's data
/// released to it) nor update, delete or verify it: each is DATA_LOSS,
/// audited as an integrity failure, and nothing changes. Put back, the row
/// verifies again. With its MAC wiped as well (a row "from before owner
/// MACs") a restart seals it only when the subject's CreateSubject audit
/// leaf names the same partner: never the writer's choice.
pub async fn forged_owner_authorises_nothing(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_proto::v1::IssueEnrollmentCodeRequest;
    use idvault_tests::idvault_proto::v1::consent_service_client::ConsentServiceClient;
    let mut tv = TestVault::start(b).await?;
    let theirs = create(&tv, "partner-b", &[("city", "Oslo")]).await?;
    let id = idvault_tests::idvault_core::subject::SubjectId::parse(&theirs)?;
    let set_owner = async |tv: &TestVault, who: &str, wipe_mac: bool| -> anyhow::Result<()> {
        let sql = if wipe_mac {
            "UPDATE subjects SET created_by = $1, mac = NULL, mac_version = NULL \
             WHERE subject_id = $2"
        } else {
            "UPDATE subjects SET created_by = $1 WHERE subject_id = $2"
        };
        sqlx::query(sql)
            .bind(who.to_owned())
            .bind(id.as_bytes().to_vec())
            .execute(tv.db())
            .await?;
        Ok(())
    };
    // Every owner-only call partner-a could make on the subject.
    let attempts = async |tv: &TestVault| -> anyhow::Result<Vec<(tonic::Code, String)>> {
        let mut consent = ConsentServiceClient::new(tv.channel("partner-a").await?);
        let mut subjects = tv.subjects("partner-a").await?;
        Ok(vec![
            refusal(
                consent
                    .issue_enrollment_code(IssueEnrollmentCodeRequest {
                        subject_id: theirs.clone(),
                    })
                    .await,
            ),
            refusal(
                subjects
                    .update_subject(UpdateSubjectRequest {
                        subject_id: theirs.clone(),
                        fields: fields(&[("city", "Rome")]),
                    })
                    .await,
            ),
            refusal(
                subjects
                    .verify_subject_chain(VerifySubjectChainRequest {
                        subject_id: theirs.clone(),
                    })
                    .await,
            ),
        ])
    };
    let all_forged = |got: &[(tonic::Code, String)]| {
        got.iter()
            .all(|(c, m)| *c == tonic::Code::DataLoss && !m.contains("Oslo"))
    };
    let codes = "SELECT count(*) FROM enrollment_codes";
    let packets = "SELECT count(*) FROM packets";
    let (codes_before, packets_before) = (tv.count(codes).await, tv.count(packets).await);

    set_owner(&tv, "partner-a", false).await?;
    let got = attempts(&tv).await?;
    assert!(all_forged(&got), "{got:?}");
    let (_, outcome, detail) = tv.last_audit().await;
    assert_eq!(outcome, "error");
    assert!(detail.contains("integrity: subject owner"), "{detail}");
    assert_eq!(tv.count(codes).await, codes_before);
    assert_eq!(tv.count(packets).await, packets_before);
    // Put back as it was: the MAC verifies again for its real owner.
    set_owner(&tv, "partner-b", false).await?;
    let mut own = tv.subjects("partner-b").await?;
    own.verify_subject_chain(VerifySubjectChainRequest {
        subject_id: theirs.clone(),
    })
    .await?;

    // MAC wiped and owner changed, then a restart: the creation leaf
    // names partner-b, so nothing is sealed for partner-a.
    set_owner(&tv, "partner-a", true).await?;
    tv.restart().await?;
    let got = attempts(&tv).await?;
    assert!(all_forged(&got), "{got:?}");
    assert_eq!(
        tv.count("SELECT count(*) FROM subjects WHERE mac IS NULL")
            .await,
        1
    );
    // MAC wiped, owner as created: the leaf vouches for it at start.
    set_owner(&tv, "partner-b", true).await?;
    tv.restart().await?;
    assert_eq!(
        tv.count("SELECT count(*) FROM subjects WHERE mac IS NULL")
            .await,
        0
    );
    let mut own = tv.subjects("partner-b").await?;
    own.verify_subject_chain(VerifySubjectChainRequest {
        subject_id: theirs.clone(),
    })
    .await?;
    let v = tv.verify_audit().await?;
    assert!(
        matches!(
            v,
            idvault_tests::idvault_server::service::AuditVerdict::Intact { .. }
        ),
        "{v:?}"
    );
    tv.stop().await
}

/// A database writer without the root key points partner-a's
/// cross-reference links at partner-b's entity, or hands partner-a's
/// entity to partner-b. The sealed identifiers still open (their seal key
/// is one for all partners), but the blind index under partner-b's key
/// does not match: partner-b's Detokenize is DATA_LOSS and reveals none
/// of partner-a's customers' identifiers.
pub async fn forged_links_detokenize_for_nobody_else(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_proto::v1::IdentifierType::Account;
    let tv = TestVault::start_with_roles(b, "partner-b", &["tokens.detokenize", "bridge.import"])
        .await?;
    import(
        &tv,
        "partner-a",
        vec![vec![rec("a1", &[(Account, "AC-SECRET-1")])]],
    )
    .await?;
    import(
        &tv,
        "partner-b",
        vec![vec![rec("b1", &[(Account, "AC-B-1")])]],
    )
    .await?;
    let token_of = async |owner: &str| -> anyhow::Result<String> {
        Ok(
            sqlx::query_scalar("SELECT token FROM xref_entities WHERE owner = $1")
                .bind(owner.to_owned())
                .fetch_one(tv.db())
                .await?,
        )
    };
    let (a_token, b_token) = (token_of("partner-a").await?, token_of("partner-b").await?);
    let mut b_tokens = TokenServiceClient::new(tv.channel("partner-b").await?);
    let own = b_tokens
        .detokenize(DetokenizeRequest {
            token: b_token.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(own.identifiers.len(), 1);

    let leaks = |r: &Result<_, tonic::Status>| format!("{r:?}").contains("AC-SECRET");
    let a_links: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT blind_index FROM xref_links WHERE token = $1")
            .bind(a_token.clone())
            .fetch_all(tv.db())
            .await?;
    let move_links = async |to: &str| -> anyhow::Result<()> {
        for bi in &a_links {
            sqlx::query("UPDATE xref_links SET token = $1 WHERE blind_index = $2")
                .bind(to.to_owned())
                .bind(bi.clone())
                .execute(tv.db())
                .await?;
        }
        Ok(())
    };
    // partner-a's link moved onto partner-b's entity.
    move_links(&b_token).await?;
    let r = b_tokens
        .detokenize(DetokenizeRequest {
            token: b_token.clone(),
        })
        .await;
    assert!(!leaks(&r), "{r:?}");
    assert_eq!(refusal(r).0, tonic::Code::DataLoss);
    let (_, outcome, detail) = tv.last_audit().await;
    assert_eq!(outcome, "error");
    assert!(
        detail.contains("integrity: cross-reference link owner"),
        "{detail}"
    );
    move_links(&a_token).await?;
    // partner-a's whole entity handed to partner-b.
    sqlx::query("UPDATE xref_entities SET owner = 'partner-b' WHERE token = $1")
        .bind(a_token.clone())
        .execute(tv.db())
        .await?;
    let r = b_tokens
        .detokenize(DetokenizeRequest { token: a_token })
        .await;
    assert!(!leaks(&r), "{r:?}");
    assert_eq!(refusal(r).0, tonic::Code::DataLoss);
    tv.stop().await
}

/// One partner's requests queued on one subject's row lock hold at most
/// its share of the pool's connections (half of them), so another
/// partner's writes still get one (PostgreSQL, where a transaction holds
/// a pool connection from its first read to its commit). Calls it gives
/// up on while they wait keep their share until their connection is free:
/// cancelling and calling again gains it nothing.
pub async fn one_partner_cannot_hold_every_connection(b: Backend) -> anyhow::Result<()> {
    use std::time::Duration;
    let tv = TestVault::start(b).await?;
    let theirs = create(&tv, "partner-a", &[("city", "Paris")]).await?;
    let own = create(&tv, "partner-b", &[("city", "Oslo")]).await?;
    let share = tv.vault.store().connections_per_partner();
    assert!((1..16).contains(&share), "{share}");
    // The test holds a subject's row lock, as a long transaction would.
    let lock_row = async |subject: &str| -> anyhow::Result<sqlx::Transaction<'_, sqlx::Any>> {
        let id = idvault_tests::idvault_core::subject::SubjectId::parse(subject)?;
        let mut lock = tv.db().begin().await?;
        sqlx::query("SELECT 1 FROM subjects WHERE subject_id = $1 FOR UPDATE")
            .bind(id.as_bytes().to_vec())
            .execute(&mut *lock)
            .await?;
        Ok(lock)
    };
    // Three times a share of updates to `subject` by `client`, `timeout`
    // each.
    let wave =
        |client: &SubjectServiceClient<Channel>, subject: &str, timeout: Option<Duration>| {
            (0..share * 3)
                .map(|i| {
                    let mut c = client.clone();
                    let mut req = tonic::Request::new(UpdateSubjectRequest {
                        subject_id: subject.to_owned(),
                        fields: fields(&[("city", format!("City {i}").as_str())]),
                    });
                    if let Some(t) = timeout {
                        req.set_timeout(t);
                    }
                    tokio::spawn(async move { c.update_subject(req).await })
                })
                .collect::<Vec<_>>()
        };
    let waiting = async || -> anyhow::Result<usize> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(tv.db())
        .await?;
        Ok(usize::try_from(n)?)
    };
    // Transactions waiting on locks once `target` wait (at most 20 s).
    let waiting_reaches = async |target: usize| -> anyhow::Result<usize> {
        let mut n = 0;
        for _ in 0..200 {
            n = waiting().await?;
            if n >= target {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(n)
    };
    let lock = lock_row(&theirs).await?;
    let a = tv.subjects("partner-a").await?;
    // The first wave gives up after 2 s; its share waits on the lock.
    let given_up = wave(&a, &theirs, Some(Duration::from_secs(2)));
    assert_eq!(
        waiting_reaches(share).await?,
        share,
        "partner-a's waiting transactions"
    );
    for call in given_up {
        let refused = call.await?.expect_err("gave up while the lock was held");
        assert!(
            matches!(
                refused.code(),
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ),
            "{refused:?}"
        );
    }
    // The second wave waits for the first one's connections.
    let queued = wave(&a, &theirs, None);
    // partner-b's write needs a connection of its own (it reads the
    // subject first): it gets one while partner-a's wait.
    let mut b_subjects = tv.subjects("partner-b").await?;
    b_subjects
        .update_subject(UpdateSubjectRequest {
            subject_id: own.clone(),
            fields: fields(&[("city", "Bergen")]),
        })
        .await?;
    b_subjects
        .verify_subject_chain(VerifySubjectChainRequest {
            subject_id: own.clone(),
        })
        .await?;
    assert_eq!(
        waiting().await?,
        share,
        "no more of partner-a's transactions wait than its share"
    );
    // partner-b queues on a lock of its own too: together they hold all
    // but the reserved connections, and a write that only inserts (its
    // batch is committed on a reserved one) still goes through.
    let all = 16 - usize::try_from(idvault_tests::idvault_server::store::RESERVED_CONNECTIONS)?;
    let lock_b = lock_row(&own).await?;
    let queued_b = wave(&b_subjects, &own, None);
    assert_eq!(
        waiting_reaches(all).await?,
        all,
        "both partners' waiting transactions"
    );
    create(&tv, "partner-b", &[("city", "Tromso")]).await?;
    assert_eq!(waiting().await?, all);
    lock.commit().await?;
    lock_b.commit().await?;
    for call in queued.into_iter().chain(queued_b) {
        call.await??;
    }
    tv.stop().await
}

/// A partner naming another partner's subject takes no lock on that
/// person's row (PostgreSQL): while something else holds the row, partner-b's
/// update and deletion of it, and an enrollment signed for it with a code
/// for someone else, are refused as absent at once instead of queueing
/// behind the lock (each would otherwise wait out its 10 s deadline, and
/// every such call would stall the owner's writes for as long as it held
/// the row).
pub async fn naming_anothers_subject_takes_no_lock(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_client::device::DeviceKey;
    use idvault_tests::idvault_core::SystemRng;
    use idvault_tests::idvault_proto::v1 as pb;
    let tv = TestVault::start_with_roles(b, "partner-b", &["subjects.delete"]).await?;
    let theirs = create(&tv, "partner-a", &[("city", "Paris")]).await?;
    let other = create(&tv, "partner-a", &[("city", "Lyon")]).await?;
    let id = idvault_tests::idvault_core::subject::SubjectId::parse(&theirs)?;
    let mut lock = tv.db().begin().await?;
    sqlx::query("SELECT 1 FROM subjects WHERE subject_id = $1 FOR UPDATE")
        .bind(id.as_bytes().to_vec())
        .execute(&mut *lock)
        .await?;
    fn within<M>(m: M) -> tonic::Request<M> {
        let mut r = tonic::Request::new(m);
        r.set_timeout(std::time::Duration::from_secs(10));
        r
    }
    let mut b_subjects = tv.subjects("partner-b").await?;
    let update = b_subjects
        .update_subject(within(UpdateSubjectRequest {
            subject_id: theirs.clone(),
            fields: fields(&[("city", "Rome")]),
        }))
        .await;
    assert_eq!(refusal(update).0, tonic::Code::NotFound);
    let delete = b_subjects
        .delete_subject(within(DeleteSubjectRequest {
            subject_id: theirs.clone(),
        }))
        .await;
    assert_eq!(refusal(delete).0, tonic::Code::NotFound);
    // A real code, but for another person: refused before the row is
    // taken.
    let mut consent =
        pb::consent_service_client::ConsentServiceClient::new(tv.channel("partner-a").await?);
    let code = consent
        .issue_enrollment_code(pb::IssueEnrollmentCodeRequest {
            subject_id: other.clone(),
        })
        .await?
        .into_inner()
        .enrollment_code;
    let key = DeviceKey::generate(&SystemRng::default())?;
    let mut wallet =
        pb::device_service_client::DeviceServiceClient::new(tv.channel("wallet").await?);
    let enroll = wallet.enroll(within(key.enrollment(&theirs, &code)?)).await;
    let (code_of, _) = refusal(enroll);
    assert_ne!(code_of, tonic::Code::DeadlineExceeded);
    assert_ne!(code_of, tonic::Code::Ok);
    lock.commit().await?;
    // The owner's own update goes through once the row is free.
    tv.subjects("partner-a")
        .await?
        .update_subject(UpdateSubjectRequest {
            subject_id: theirs,
            fields: fields(&[("city", "Nice")]),
        })
        .await?;
    tv.stop().await
}

/// A partner's calls are bounded from their headers on, before their
/// message is read: calls whose message never comes (here TokenizeLog
/// streams that send nothing) hold at most
/// `MAX_EDGE_CALLS_PER_IDENTITY` places, so one identity cannot make the
/// vault hold without end what it sends slowly. Its next call is refused
/// at once (RESOURCE_EXHAUSTED) and the refusals are audited coalesced;
/// another partner is not affected; the places come back when the calls
/// end.
pub async fn calls_held_open_are_bounded_per_identity(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_proto::v1::TokenizeLogRequest;
    use idvault_tests::idvault_server::service::MAX_EDGE_CALLS_PER_IDENTITY;
    use std::time::Duration;
    let tv = TestVault::start(b).await?;
    // Two connections: the places are per identity, not per connection.
    let channels = [
        tv.channel("partner-a").await?,
        tv.channel("partner-a").await?,
    ];
    let mut held = Vec::new();
    let mut senders = Vec::new();
    // A few more than the places: whichever arrive last are refused, so
    // every place ends up held however the calls race.
    for i in 0..MAX_EDGE_CALLS_PER_IDENTITY + 8 {
        let (tx, rx) = tokio::sync::mpsc::channel::<TokenizeLogRequest>(1);
        senders.push(tx);
        let mut c = TokenServiceClient::new(channels[i % 2].clone());
        held.push(tokio::spawn(async move {
            c.tokenize_log(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map(|_| ())
        }));
    }
    // The calls past the places are refused at once (they end); the
    // others hold every place.
    for _ in 0..100 {
        if held.iter().filter(|h| h.is_finished()).count() >= 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ended = held.iter().filter(|h| h.is_finished()).count();
    assert_eq!(ended, 8, "only the calls past the places end");
    // The next call, whatever it is, is refused at once.
    let mut subjects = SubjectServiceClient::new(channels[0].clone());
    let mut req = tonic::Request::new(idvault_tests::idvault_proto::v1::CreateSubjectRequest {
        fields: fields(&[("city", "Lyon")]),
    });
    req.set_timeout(Duration::from_secs(5));
    let e = subjects.create_subject(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("calls open"), "{}", e.message());
    // Another partner is not affected.
    create(&tv, "partner-b", &[("city", "Oslo")]).await?;
    // The held calls end (the client cancels them): their places return.
    drop(senders);
    for h in &held {
        h.abort();
    }
    drop(channels);
    let mut again = false;
    // Creates made before the cancelled calls' places came back are
    // refused (and counted) too.
    let mut refused_meanwhile: u64 = 0;
    for _ in 0..100 {
        match create(&tv, "partner-a", &[("city", "Lyon")]).await {
            Ok(_) => {
                again = true;
                break;
            }
            Err(e) => {
                if e.downcast_ref::<tonic::Status>()
                    .is_some_and(|s| s.message().contains("calls open"))
                {
                    refused_meanwhile += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again, "partner-a's places came back");
    // The refusals (8 held calls, 1 create, and those meanwhile) are
    // counted in coalesced records, not a record each.
    let expected = 9 + refused_meanwhile;
    let mut details: Vec<String> = Vec::new();
    let mut counted = 0;
    for _ in 0..100 {
        details = sqlx::query_scalar(
            "SELECT detail FROM audit_log WHERE action = 'Refused' \
             AND detail LIKE 'too many calls open%'",
        )
        .fetch_all(tv.db())
        .await?;
        counted = details
            .iter()
            .filter_map(|d| TestVault::coalesced_count(d))
            .sum::<u64>();
        if counted >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counted, expected, "{details:?}");
    assert!(details.len() <= 2, "coalesced: {details:?}");
    tv.stop().await
}

/// A wallet app's identity is shared by every phone, so its calls open at
/// the edge are counted per source address: one source holding calls
/// whose message never arrives takes only its own share
/// (`SHARED_CALLS_PER_SOURCE`), and the wallet's calls from another source
/// are still served.
pub async fn wallet_calls_are_counted_per_source(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_server::sources::SHARED_CALLS_PER_SOURCE;
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;
    let tv = TestVault::start(b).await?;
    let one = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5));
    // Another host in another network (127.0.1.0/24).
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 6));
    const ENROLL: &str = "/idvault.v1.DeviceService/Enroll";
    // Calls to a unary method whose message never comes: each holds its
    // place until the client gives up.
    let channels = [
        tv.channel_from("wallet", one).await?,
        tv.channel_from("wallet", one).await?,
    ];
    let mut senders = Vec::new();
    let mut held = Vec::new();
    // A few calls past the host's share: those are refused at once.
    const PAST: usize = 4;
    for i in 0..SHARED_CALLS_PER_SOURCE + PAST {
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
        senders.push(tx);
        let ch = channels[i % 2].clone();
        held.push(tokio::spawn(async move {
            let mut grpc = tonic::client::Grpc::new(ch);
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unknown(e.to_string()))?;
            grpc.client_streaming(
                tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
                http::uri::PathAndQuery::from_static(ENROLL),
                RawCodec,
            )
            .await
            .map(|_| ())
        }));
    }
    for _ in 0..100 {
        if held.iter().filter(|h| h.is_finished()).count() >= PAST {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = Vec::new();
    for h in &mut held {
        if h.is_finished() {
            refused.push(h.await?.unwrap_err());
        }
    }
    assert_eq!(
        refused.len(),
        PAST,
        "only the calls past the source's share end"
    );
    for e in &refused {
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("this address"), "{}", e.message());
    }
    // The wallet from another source is answered (a malformed enrollment
    // is refused on its merits, not at the edge).
    // A malformed enrollment from `from`: refused on its merits unless
    // refused at the edge.
    let malformed_enroll = async |from| -> anyhow::Result<tonic::Status> {
        let ch = tv.channel_from("wallet", from).await?;
        Ok(send_raw(ch, ENROLL, false, false, vec![0xff]).await)
    };
    let answered = malformed_enroll(other).await?;
    assert_ne!(
        answered.code(),
        tonic::Code::ResourceExhausted,
        "{answered:?}"
    );
    assert_ne!(answered.code(), tonic::Code::Ok, "{answered:?}");
    // Partners are not affected either.
    create(&tv, "partner-a", &[("city", "Lyon")]).await?;
    // The held calls end: their source's places come back.
    drop(senders);
    for h in &held {
        h.abort();
    }
    drop(channels);
    let mut again = false;
    for _ in 0..100 {
        let s = malformed_enroll(one).await?;
        if s.code() != tonic::Code::ResourceExhausted {
            again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again, "the source's places came back");
    tv.stop().await
}

/// A wallet app's requests in flight are counted per source address too:
/// one host's requests held up in the vault (here: behind a lock the test
/// holds on the table enrollments read) take only its host's share
/// (`SHARED_IN_FLIGHT_PER_SOURCE`), and a phone elsewhere is still
/// admitted.
pub async fn wallet_requests_in_flight_are_counted_per_source(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_client::{DeviceKey, SystemRng};
    use idvault_tests::idvault_proto::v1::device_service_client::DeviceServiceClient;
    use idvault_tests::idvault_server::sources::SHARED_IN_FLIGHT_PER_SOURCE;
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;
    let tv = TestVault::start(b).await?;
    let one = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7));
    // Another host in another network (127.0.1.0/24).
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 8));
    // A self-made enrollment: its signature verifies, then the vault reads
    // the (unknown) code in a transaction, which waits for the lock.
    let enrollment = || {
        let key = DeviceKey::generate(&SystemRng::default()).unwrap();
        key.enrollment("0190f3a2-0000-7000-8000-000000000001", "code-1234")
            .unwrap()
    };
    let mut lock = tv.db().acquire().await?;
    match b {
        Backend::Sqlite => {
            sqlx::query("BEGIN IMMEDIATE").execute(&mut *lock).await?;
        }
        Backend::Postgres => {
            sqlx::query("BEGIN").execute(&mut *lock).await?;
            sqlx::query("LOCK TABLE enrollment_codes IN ACCESS EXCLUSIVE MODE")
                .execute(&mut *lock)
                .await?;
        }
    }
    let wallet = DeviceServiceClient::new(tv.channel_from("wallet", one).await?);
    let mut held = Vec::new();
    for _ in 0..SHARED_IN_FLIGHT_PER_SOURCE {
        let mut w = wallet.clone();
        let req = enrollment();
        held.push(tokio::spawn(async move { w.enroll(req).await }));
    }
    // Wait until every one is admitted (they then wait for the lock).
    for _ in 0..200 {
        if tv.vault.shared_requests_in_flight_from(one) >= SHARED_IN_FLIGHT_PER_SOURCE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        tv.vault.shared_requests_in_flight_from(one),
        SHARED_IN_FLIGHT_PER_SOURCE
    );
    assert!(
        held.iter().all(|h| !h.is_finished()),
        "held behind the lock"
    );
    let mut req = tonic::Request::new(enrollment());
    req.set_timeout(Duration::from_secs(5));
    let e = wallet.clone().enroll(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("busy"), "{}", e.message());
    // A phone at another address is admitted (and waits for the lock
    // like the others, until its own deadline).
    let mut req = tonic::Request::new(enrollment());
    req.set_timeout(Duration::from_millis(800));
    let e = DeviceServiceClient::new(tv.channel_from("wallet", other).await?)
        .enroll(req)
        .await
        .unwrap_err();
    assert_ne!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    sqlx::query("ROLLBACK").execute(&mut *lock).await?;
    drop(lock);
    // Once the lock is gone the held enrollments end (refused on their
    // merits: the code is unknown) and the host is admitted again.
    for h in held {
        let e = h.await?.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    }
    let e = wallet.clone().enroll(enrollment()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    tv.stop().await
}
