//! The audit log: tamper detection, fail-closed writes, no PII.

use idvault_tests::idvault_core::audit::AuditFault;
use idvault_tests::idvault_proto::v1::{
    CreateSubjectRequest, UpdateSubjectRequest, VerifySubjectChainRequest,
};
use idvault_tests::idvault_server::service::{AuditVerdict, verify_audit_log};
use idvault_tests::{Backend, TestVault};
use tonic::Code;

use crate::subjects::{create, fields};

pub async fn edited_record_is_named(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    for _ in 0..3 {
        create(&tv, "partner-a", &[("city", "Lima")]).await?;
    }
    assert_eq!(
        verify_audit_log(tv.vault.store(), tv.vault.keys()).await?,
        AuditVerdict::Intact { records: 3 }
    );
    sqlx::query(
        "UPDATE audit_log SET actor = 'spiffe://idvault.dev/partner/partner-b' WHERE seq = 2",
    )
    .execute(tv.db())
    .await?;
    assert_eq!(
        verify_audit_log(tv.vault.store(), tv.vault.keys()).await?,
        AuditVerdict::Broken {
            seq: 2,
            fault: AuditFault::ContentMismatch
        }
    );
    // Removing the last record is caught by the head.
    sqlx::query(
        "UPDATE audit_log SET actor = 'spiffe://idvault.dev/partner/partner-a' WHERE seq = 2",
    )
    .execute(tv.db())
    .await?;
    sqlx::query("DELETE FROM audit_log WHERE seq = 3")
        .execute(tv.db())
        .await?;
    assert_eq!(
        verify_audit_log(tv.vault.store(), tv.vault.keys()).await?,
        AuditVerdict::Broken {
            seq: 3,
            fault: AuditFault::HeadMismatch
        }
    );
    tv.stop().await
}

async fn make_audit_unwritable(tv: &TestVault) -> anyhow::Result<()> {
    match tv.backend {
        Backend::Sqlite => {
            sqlx::query(
                "CREATE TRIGGER audit_ro BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'audit log is read-only'); END",
            )
            .execute(tv.db())
            .await?;
        }
        Backend::Postgres => {
            sqlx::query(
                "CREATE FUNCTION audit_ro() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'audit log is read-only'; END $$ LANGUAGE plpgsql",
            )
            .execute(tv.db())
            .await?;
            sqlx::query("CREATE TRIGGER audit_ro BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_ro()")
                .execute(tv.db())
                .await?;
        }
    }
    Ok(())
}

pub async fn fail_closed(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let id = create(&tv, "partner-a", &[("city", "Quito")]).await?;
    make_audit_unwritable(&tv).await?;
    let before = (
        tv.count("SELECT count(*) FROM subjects").await,
        tv.count("SELECT count(*) FROM packets").await,
        tv.count("SELECT seq FROM audit_head").await,
    );
    let mut c = tv.subjects("partner-a").await?;
    let e = c
        .create_subject(CreateSubjectRequest {
            fields: fields(&[("city", "Bogotá")]),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("audit"), "{}", e.message());
    let e = c
        .update_subject(UpdateSubjectRequest {
            subject_id: id.clone(),
            fields: fields(&[("city", "Cusco")]),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    let e = c
        .verify_subject_chain(VerifySubjectChainRequest {
            subject_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "reads fail closed too");
    let after = (
        tv.count("SELECT count(*) FROM subjects").await,
        tv.count("SELECT count(*) FROM packets").await,
        tv.count("SELECT seq FROM audit_head").await,
    );
    assert_eq!(before, after, "nothing changed");
    let drop = match b {
        Backend::Sqlite => "DROP TRIGGER audit_ro",
        Backend::Postgres => "DROP TRIGGER audit_ro ON audit_log",
    };
    sqlx::query(drop).execute(tv.db()).await?;
    let v = c
        .verify_subject_chain(VerifySubjectChainRequest { subject_id: id })
        .await?
        .into_inner();
    assert!(v.intact && v.packets_checked == 1);
    assert_eq!(
        verify_audit_log(tv.vault.store(), tv.vault.keys()).await?,
        AuditVerdict::Intact { records: 2 }
    );
    tv.stop().await
}

pub async fn refusals_are_audited_without_pii(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let secret = "Zanzibar-Quokka-7731";
    let mut c = tv.subjects("partner-a").await?;
    let ok = c
        .create_subject(CreateSubjectRequest {
            fields: fields(&[("family_name", secret)]),
        })
        .await?
        .into_inner();
    let bad = c
        .create_subject(CreateSubjectRequest {
            fields: fields(&[("family_name", &format!("{secret}\u{7}"))]),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(!bad.message().contains(secret));
    let mut pb = tv.subjects("partner-b").await?;
    let denied = pb
        .delete_subject(idvault_tests::idvault_proto::v1::DeleteSubjectRequest {
            subject_id: ok.subject_id,
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT actor, outcome, detail FROM audit_log ORDER BY seq")
            .fetch_all(tv.db())
            .await?;
    let outcomes: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(outcomes, ["ok", "invalid", "denied"]);
    assert_eq!(rows[2].0, "spiffe://idvault.dev/partner/partner-b");
    let all: Vec<String> = sqlx::query_scalar(
        "SELECT actor || action || coalesce(subject, '') || outcome || detail FROM audit_log",
    )
    .fetch_all(tv.db())
    .await?;
    assert!(
        all.iter().all(|r| !r.contains("Zanzibar")),
        "PII in audit log"
    );
    tv.stop().await
}
