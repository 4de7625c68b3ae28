//! A hostile partner with a valid certificate, probing with another
//! partner's identifiers: every RPC that takes one answers exactly as for
//! an identifier that does not exist (same code, same message), and
//! changes nothing.

use idvault_tests::idvault_proto::v1::token_service_client::TokenServiceClient;
use idvault_tests::idvault_proto::v1::{
    DeleteSubjectRequest, DetokenizeRequest, IdentifierType, UpdateSubjectRequest,
    VerifySubjectChainRequest,
};
use idvault_tests::{Backend, TestVault};

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
