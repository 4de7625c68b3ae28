//! Operations: concurrency, key rotation, start-up refusals.

use idvault_tests::idvault_core::SystemRng;
use idvault_tests::idvault_proto::v1::{
    CreateSubjectRequest, UpdateSubjectRequest, VerifySubjectChainRequest,
};
use idvault_tests::idvault_server::service::AuditVerdict;
use idvault_tests::{Backend, TestVault};

use crate::subjects::{create, fields};

/// Many partners' writes at once: every one lands, and the audit chain
/// stays a single unbroken chain (no lost or forked records).
pub async fn concurrent_writes_keep_one_audit_chain(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let id = create(&tv, "partner-a", &[("city", "Start")]).await?;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let mut c = tv
            .subjects(if i % 2 == 0 { "partner-a" } else { "partner-b" })
            .await?;
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            if i % 4 == 0 {
                c.update_subject(UpdateSubjectRequest {
                    subject_id: id,
                    fields: fields(&[("city", &format!("C{i}"))]),
                })
                .await
                .map(|_| ())
            } else {
                c.create_subject(CreateSubjectRequest {
                    fields: fields(&[("city", &format!("C{i}"))]),
                })
                .await
                .map(|_| ())
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    assert_eq!(tv.count("SELECT count(*) FROM subjects").await, 31);
    let v = tv
        .subjects("partner-a")
        .await?
        .verify_subject_chain(VerifySubjectChainRequest { subject_id: id })
        .await?
        .into_inner();
    assert!(v.intact && v.packets_checked == 11, "{v:?}");
    assert_eq!(
        tv.verify_audit().await?,
        AuditVerdict::Intact {
            leaves: 42,
            checkpoints: tv.count("SELECT count(*) FROM audit_checkpoints").await as u64,
            pending: 0
        }
    );
    tv.stop().await
}

/// Rotating the root key: new subjects use the new version, old ones stay
/// readable and updatable, and the audit log verifies across versions.
pub async fn root_key_rotation_keeps_old_data(b: Backend) -> anyhow::Result<()> {
    let mut tv = TestVault::start(b).await?;
    let old = create(&tv, "partner-a", &[("email", "old@example.org")]).await?;
    let v = idvault_tests::idvault_server::keyfile::rotate(
        &tv.dir.path().join("root.key"),
        &SystemRng::default(),
    )?;
    assert_eq!(v, 2);
    tv.restart().await?;
    let new = create(&tv, "partner-a", &[("email", "new@example.org")]).await?;
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT kek_version FROM subjects ORDER BY created_at_ms, kek_version")
            .fetch_all(tv.db())
            .await?;
    assert_eq!(versions, [1, 2]);
    let mut c = tv.subjects("partner-a").await?;
    c.update_subject(UpdateSubjectRequest {
        subject_id: old.clone(),
        fields: fields(&[("city", "Bern")]),
    })
    .await?;
    for id in [old, new] {
        let r = c
            .verify_subject_chain(VerifySubjectChainRequest { subject_id: id })
            .await?
            .into_inner();
        assert!(r.intact, "{r:?}");
    }
    let key_versions: Vec<i64> =
        sqlx::query_scalar("SELECT DISTINCT key_version FROM audit_log ORDER BY key_version")
            .fetch_all(tv.db())
            .await?;
    assert_eq!(key_versions, [1, 2]);
    assert_eq!(
        tv.verify_audit().await?,
        AuditVerdict::Intact {
            leaves: 5,
            checkpoints: tv.count("SELECT count(*) FROM audit_checkpoints").await as u64,
            pending: 0
        }
    );
    tv.stop().await
}

/// A start without keys or certificates names what is missing and what to run.
pub async fn start_refuses_missing_material(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    std::fs::remove_file(tv.dir.path().join("tls/server.key"))?;
    std::fs::remove_file(tv.dir.path().join("root.key"))?;
    let err = idvault_tests::idvault_server::app::load(&tv.config, &tv.database_url)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.key") && err.contains("root.key"),
        "{err}"
    );
    assert!(err.contains("idvault init --dev"), "{err}");
    tv.stop().await
}

/// A group-readable root key file is refused.
pub async fn loose_key_file_permissions_refused(b: Backend) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tv = TestVault::start(b).await?;
    let p = tv.dir.path().join("root.key");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640))?;
    let err = idvault_tests::idvault_server::app::load(&tv.config, &tv.database_url)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("chmod 600"), "{err}");
    tv.stop().await
}
