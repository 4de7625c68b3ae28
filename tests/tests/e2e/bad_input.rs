//! Bad input: a clear status, no panic, nothing written.

use idvault_tests::idvault_proto::v1::{
    CreateSubjectRequest, Field, UpdateSubjectRequest, VerifySubjectChainRequest,
};
use idvault_tests::{Backend, TestVault};
use tonic::Code;

use crate::subjects::{create, fields};

async fn nothing_written(tv: &TestVault, subjects: i64, packets: i64) {
    assert_eq!(tv.count("SELECT count(*) FROM subjects").await, subjects);
    assert_eq!(tv.count("SELECT count(*) FROM packets").await, packets);
}

pub async fn invalid_fields(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let id = create(&tv, "partner-a", &[("city", "Accra")]).await?;
    let mut c = tv.subjects("partner-a").await?;
    let huge = "x".repeat(5000);
    let many: Vec<(String, String)> = (0..65)
        .map(|i| ("city".to_owned(), format!("{i}")))
        .collect();
    let cases: Vec<(Vec<Field>, &str)> = vec![
        (vec![], "at least one field"),
        (fields(&[("favourite_colour", "blue")]), "unknown field"),
        (fields(&[("city", "")]), "empty value"),
        (fields(&[("city", "   ")]), "empty value"),
        (fields(&[("city", &huge)]), "exceeds 4096"),
        (fields(&[("city", "a\u{0}b")]), "control character"),
        (fields(&[("city", "a"), ("city", "b")]), "more than once"),
        (
            many.iter()
                .map(|(n, v)| Field {
                    name: n.clone(),
                    value: v.clone(),
                })
                .collect(),
            "at most 64",
        ),
    ];
    for (f, expect) in cases {
        let e = c
            .create_subject(CreateSubjectRequest { fields: f.clone() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{expect}: {e:?}");
        assert!(e.message().contains(expect), "{expect}: {}", e.message());
        let e = c
            .update_subject(UpdateSubjectRequest {
                subject_id: id.clone(),
                fields: f,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "update {expect}");
    }
    for bad_id in [
        "",
        "not-a-uuid",
        "00000000000000000000000000000000",
        &"a".repeat(10_000),
    ] {
        let e = c
            .verify_subject_chain(VerifySubjectChainRequest {
                subject_id: bad_id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad_id:.20}");
    }
    nothing_written(&tv, 1, 1).await;
    tv.stop().await
}

/// A message whose field 1 has the wrong wire type for `CreateSubjectRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct WrongWireType {
    #[prost(fixed64, tag = "1")]
    fields: u64,
}

/// `Field` with `value` as bytes, to send invalid UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawField {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawCreate {
    #[prost(message, repeated, tag = "1")]
    fields: Vec<RawField>,
}

async fn raw_create<M: prost::Message + Default + Send + Sync + 'static>(
    tv: &TestVault,
    msg: M,
) -> tonic::Status {
    let ch = tv.channel("partner-a").await.unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/idvault.v1.SubjectService/CreateSubject");
    let codec = tonic_prost::ProstCodec::<M, idvault_tests::idvault_proto::v1::CreateSubjectResponse>::default();
    grpc.unary(tonic::Request::new(msg), path, codec)
        .await
        .unwrap_err()
}

pub async fn malformed_and_oversized_messages(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let e = raw_create(&tv, WrongWireType { fields: 7 }).await;
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("malformed protobuf"),
        "{}",
        e.message()
    );

    let e = raw_create(
        &tv,
        RawCreate {
            fields: vec![RawField {
                name: "city".into(),
                value: vec![0x66, 0xff, 0xfe],
            }],
        },
    )
    .await;
    assert_eq!(e.code(), Code::InvalidArgument, "invalid UTF-8: {e:?}");

    // Over the 1 MiB server limit.
    let e = raw_create(
        &tv,
        RawCreate {
            fields: vec![RawField {
                name: "city".into(),
                value: vec![b'a'; 2 * 1024 * 1024],
            }],
        },
    )
    .await;
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");

    // The server is still healthy and nothing was written.
    nothing_written(&tv, 0, 0).await;
    create(&tv, "partner-a", &[("city", "Nairobi")]).await?;
    nothing_written(&tv, 1, 1).await;
    tv.stop().await
}

/// A message the edge cannot map to a request (a required field missing,
/// an unknown enum value) is refused through the one request pipeline:
/// INVALID_ARGUMENT, and an audit record naming the action, outcome
/// `invalid` and the deciding policies, never the caller's text.
pub async fn edge_refusals_are_audited(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_proto::v1 as pb;
    let tv = TestVault::start(b).await?;
    let expect = async |e: tonic::Status, action: &str| {
        assert_eq!(e.code(), Code::InvalidArgument, "{action}: {e:?}");
        let (a, outcome, detail) = tv.last_audit().await;
        assert_eq!(
            (a.as_str(), outcome.as_str()),
            (action, "invalid"),
            "{detail}"
        );
        assert!(detail.contains("policy="), "{action}: {detail}");
        assert!(detail.starts_with("bad request"), "{action}: {detail}");
    };

    let mut m = pb::match_service_client::MatchServiceClient::new(tv.channel("partner-b").await?);
    let e = m
        .r#match(pb::MatchRequest { query: None })
        .await
        .unwrap_err();
    expect(e, "Match").await;

    let mut c =
        pb::consent_service_client::ConsentServiceClient::new(tv.channel("partner-b").await?);
    let e = c
        .release(pb::ReleaseRequest {
            consent: None,
            nonce: Vec::new(),
        })
        .await
        .unwrap_err();
    // Past the gate (the partner may present consents), so audited as the
    // release it failed to be.
    expect(e, "Release").await;

    let mut ev = pb::event_service_client::EventServiceClient::new(tv.channel("partner-a").await?);
    let e = ev
        .publish_event(pb::PublishEventRequest {
            subject: None,
            event_type: "address.changed".into(),
            event_id: "ev-1".into(),
            fields: Vec::new(),
        })
        .await
        .unwrap_err();
    expect(e, "PublishEvent").await;

    let mut t = pb::token_service_client::TokenServiceClient::new(tv.channel("partner-a").await?);
    let no_settings = pb::TokenizeLogRequest {
        settings: None,
        data: b"{}\n".to_vec(),
    };
    let e = t
        .tokenize_log(tokio_stream::iter([no_settings]))
        .await
        .unwrap_err();
    expect(e, "TokenizeLog").await;
    let bad_mode = pb::TokenizeLogRequest {
        settings: Some(pb::TokenizeSettings {
            format: pb::LogFormat::JsonLines.into(),
            fields: vec!["user.msisdn".into()],
            mode: 99,
            ..Default::default()
        }),
        data: Vec::new(),
    };
    let e = t
        .tokenize_log(tokio_stream::iter([bad_mode]))
        .await
        .unwrap_err();
    expect(e, "TokenizeLog").await;

    let mut audit =
        pb::audit_service_client::AuditServiceClient::new(tv.channel("partner-a").await?);
    for leaf in [
        None,
        Some(pb::get_inclusion_proof_request::Leaf::RequestId(
            "not-hex".into(),
        )),
    ] {
        let e = audit
            .get_inclusion_proof(pb::GetInclusionProofRequest { leaf, tree_size: 0 })
            .await
            .unwrap_err();
        expect(e, "ReadAudit").await;
    }

    nothing_written(&tv, 0, 0).await;
    tv.stop().await
}
