//! Operations: concurrency, key rotation, start-up refusals.

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
    assert_eq!(tv.rotate_root_key().await?, 2);
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

/// The retention job removes spent single-use rows and old processed
/// events, in audited batches, and keeps everything still in use: fresh
/// challenges and codes, device request ids inside their replay window,
/// recent events, live consent withdrawals, the status entries of
/// credentials not long expired.
pub async fn retention_prunes_spent_rows_only(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_server::store::Prunable;
    let tv = TestVault::start(b).await?;
    let now = idvault_tests::idvault_client::unix_now() * 1000;
    let day = 86_400_000i64;
    let old = now - 400 * day;
    let mut t = tv.db().begin().await?;
    for (i, at) in [(1u8, old), (2, now + 300_000)] {
        sqlx::query(
            "INSERT INTO consent_challenges (challenge, partner, subject_id, expires_at_ms) VALUES ($1, 'partner-b', $2, $3)",
        )
        .bind(vec![i; 32])
        .bind(vec![9u8; 16])
        .bind(at)
        .execute(&mut *t)
        .await?;
        sqlx::query(
            "INSERT INTO enrollment_codes (code_hash, subject_id, issued_to, expires_at_ms) VALUES ($1, $2, 'partner-a', $3)",
        )
        .bind(vec![i; 32])
        .bind(vec![9u8; 16])
        .bind(at)
        .execute(&mut *t)
        .await?;
        sqlx::query(
            "INSERT INTO consent_withdrawals (consent_id, subject_id, device_id, withdrawn_at_ms, expires_at_ms) \
             VALUES ($1, $2, 'dev_x', $3, $3)",
        )
        .bind(vec![i; 16])
        .bind(vec![9u8; 16])
        .bind(at)
        .execute(&mut *t)
        .await?;
        // A digital ID's status entry, by its `exp` in seconds; the one
        // expired a minute ago is still inside the grace and stays.
        for (seq, exp) in [(0i64, at), (1, now - 60_000)] {
            sqlx::query(
                "INSERT INTO credentials (list_id, idx, seq, subject_id, device_id, expires_at) \
                 VALUES ($1, $2, $3, $4, 'dev_x', $5)",
            )
            .bind(i64::from(i))
            .bind(seq + 10)
            .bind(seq)
            .bind(vec![9u8; 16])
            .bind(exp / 1000)
            .execute(&mut *t)
            .await?;
        }
        sqlx::query(
            "INSERT INTO events (source, event_id, subject_id, event_type, outcome, commands, accepted_at_ms) \
             VALUES ('partner-a', $1, $2, 'address_changed', 'accepted', 0, $3)",
        )
        .bind(format!("ev-{i}"))
        .bind(vec![9u8; 16])
        .bind(at.min(now))
        .execute(&mut *t)
        .await?;
    }
    // More old replay ids than one batch holds, and one still in its window.
    let n_old = idvault_tests::idvault_server::service::retention::PRUNE_BATCH as usize + 5;
    for i in 0..=n_old {
        let at = if i == n_old { now - 60_000 } else { old };
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(i as u64).to_be_bytes());
        sqlx::query(
            "INSERT INTO device_requests (request_id, device_id, at_ms) VALUES ($1, 'dev_x', $2)",
        )
        .bind(id.to_vec())
        .bind(at)
        .execute(&mut *t)
        .await?;
    }
    // Wrong transaction codes: two of one device in the same old
    // millisecond (distinct rows since migration 0034), one recent.
    for at in [old, old, now - 60_000] {
        sqlx::query("INSERT INTO code_failures (device_id, at_ms) VALUES ('dev_x', $1)")
            .bind(at)
            .execute(&mut *t)
            .await?;
    }
    t.commit().await?;

    let done = tv.vault.prune_once().await?;
    let removed = |k: Prunable| done.iter().find(|(x, _)| *x == k).map(|(_, n)| *n);
    assert_eq!(removed(Prunable::Challenges), Some(1));
    assert_eq!(removed(Prunable::EnrollmentCodes), Some(1));
    assert_eq!(removed(Prunable::Events), Some(1));
    assert_eq!(removed(Prunable::Withdrawals), Some(1));
    assert_eq!(removed(Prunable::DeviceRequests), Some(n_old as u64));
    assert_eq!(removed(Prunable::Credentials), Some(1));
    assert_eq!(removed(Prunable::CodeFailures), Some(2));
    assert_eq!(tv.count("SELECT count(*) FROM code_failures").await, 1);
    assert_eq!(tv.count("SELECT count(*) FROM credentials").await, 3);
    assert_eq!(
        tv.count("SELECT count(*) FROM credentials WHERE list_id = 1 AND seq = 0")
            .await,
        0
    );
    assert_eq!(tv.count("SELECT count(*) FROM consent_challenges").await, 1);
    assert_eq!(tv.count("SELECT count(*) FROM enrollment_codes").await, 1);
    assert_eq!(tv.count("SELECT count(*) FROM events").await, 1);
    assert_eq!(
        tv.count("SELECT count(*) FROM consent_withdrawals").await,
        1
    );
    assert_eq!(tv.count("SELECT count(*) FROM device_requests").await, 1);
    // Audited: one record per batch (device requests took two).
    let details: Vec<String> =
        sqlx::query_scalar("SELECT detail FROM audit_log WHERE action = 'Retention' ORDER BY id")
            .fetch_all(tv.db())
            .await?;
    assert_eq!(details.len(), 8, "{details:?}");
    assert!(
        details
            .iter()
            .any(|d| d.starts_with("kind=device_requests removed=1000 "))
    );
    // The credential rows were written here without a MAC: removed, and
    // the record says so.
    assert!(
        details
            .iter()
            .any(|d| d.starts_with("kind=credentials removed=1 ") && d.ends_with(" unverified=1")),
        "{details:?}"
    );
    // A second run finds nothing and writes nothing.
    let again = tv.vault.prune_once().await?;
    assert!(again.iter().all(|(_, n)| *n == 0));
    assert_eq!(
        tv.count("SELECT count(*) FROM audit_log WHERE action = 'Retention'")
            .await,
        8
    );
    tv.checkpointed().await?;
    assert!(matches!(
        tv.verify_audit().await?,
        idvault_tests::idvault_server::service::AuditVerdict::Intact { .. }
    ));
    tv.stop().await
}

/// `KeyService.Rewrap` needs `keys.admin` (a refusal is audited), streams
/// progress and ends with a report; the data moved is readable after.
pub async fn rewrap_rpc_is_gated_and_reports(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_proto::v1::key_service_client::KeyServiceClient;
    use idvault_tests::idvault_proto::v1::{RewrapRequest, RewrapUpdate};
    let mut tv = TestVault::start(b).await?;
    let id = create(&tv, "partner-a", &[("email", "rewrap@example.org")]).await?;
    let (_, match_rows) = crate::matching::match_rows_off_key(&tv).await;
    assert!(match_rows > 0);
    tv.rotate_root_key().await?;
    let denied = KeyServiceClient::new(tv.channel("partner-b").await?)
        .rewrap(RewrapRequest {})
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    let (action, outcome, _) = tv.last_audit().await;
    assert_eq!(
        (action.as_str(), outcome.as_str()),
        ("RewrapKeys", "denied")
    );

    let mut s = KeyServiceClient::new(tv.channel("partner-a").await?)
        .rewrap(RewrapRequest {})
        .await?
        .into_inner();
    let mut updates: Vec<RewrapUpdate> = Vec::new();
    while let Some(u) = s.message().await? {
        updates.push(u);
    }
    let last = updates.last().expect("a final update");
    assert!(last.finished, "{updates:?}");
    assert_eq!(
        (last.target_version, last.subjects, last.left_behind),
        (2, 1, 0),
        "{last:?}"
    );
    assert!(updates.iter().any(|u| u.phase == "subjects"));
    let versions: Vec<i64> = sqlx::query_scalar("SELECT kek_version FROM subjects")
        .fetch_all(tv.db())
        .await?;
    assert_eq!(versions, [2]);
    // Its match rows written again (under the new key version), under
    // its storage key.
    assert_eq!(
        crate::matching::match_rows_off_key(&tv).await,
        (0, match_rows)
    );
    let index_versions: Vec<i64> =
        sqlx::query_scalar("SELECT DISTINCT key_version FROM match_index")
            .fetch_all(tv.db())
            .await?;
    assert_eq!(index_versions, [2]);
    let r = tv
        .subjects("partner-a")
        .await?
        .verify_subject_chain(VerifySubjectChainRequest { subject_id: id })
        .await?
        .into_inner();
    assert!(r.intact);
    let actors: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT actor FROM audit_log WHERE action = 'KeyRewrap'")
            .fetch_all(tv.db())
            .await?;
    assert_eq!(actors, ["spiffe://idvault.dev/partner/partner-a"]);
    tv.stop().await
}

/// SQLite: the serving vault copies committed WAL frames into the
/// database file on a task of its own (no request pays for it), long
/// before the writer's own 8,192-page fallback. Checked on a copy of the
/// database file alone, without its WAL: it holds acknowledged writes
/// only once a checkpoint has copied them there.
pub async fn wal_is_checkpointed_in_the_background(b: Backend) -> anyhow::Result<()> {
    use sqlx::Connection;
    let tv = TestVault::start(b).await?;
    let main = tv.dir.path().join("idvault.db");
    anyhow::ensure!(main.exists(), "no database file at {}", main.display());
    let copies = tempfile::tempdir()?;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(create(&tv, "partner-a", &[("city", &format!("W{i}"))]).await?);
    }
    let want = tv.count("SELECT count(*) FROM subjects").await;
    // The copy is taken while the vault runs: a copy torn by a checkpoint
    // in progress reads as an error and is taken again.
    let mut seen = -1;
    for attempt in 0..100 {
        let copy = copies.path().join(format!("copy{attempt}.db"));
        std::fs::copy(&main, &copy)?;
        let url = format!("sqlite://{}?mode=ro", copy.display());
        if let Ok(mut conn) = sqlx::SqliteConnection::connect(&url).await
            && let Ok(n) = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM subjects")
                .fetch_one(&mut conn)
                .await
        {
            seen = n;
            if n == want {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::ensure!(
        seen == want,
        "10 s after the writes the database file alone holds {} of {want} subjects",
        if seen < 0 {
            "no table (unreadable)".to_owned()
        } else {
            seen.to_string()
        }
    );
    tv.stop().await
}

/// A reader holds a deletion's truncating checkpoint back: the receipt
/// says the truncation is pending instead of claiming the WAL is clean,
/// and once the reader ends the vault's checkpoint task truncates the WAL,
/// so no copy of the person's wrapped data key is left in either file.
pub async fn held_back_truncation_is_retried(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_proto::v1::DeleteSubjectRequest;
    use sqlx::Connection;

    let tv = TestVault::start(b).await?;
    let victim = create(&tv, "partner-a", &[("national_id", "ZX998877A")]).await?;
    let _other = create(&tv, "partner-a", &[("city", "Oslo")]).await?;
    let vid = idvault_tests::idvault_core::subject::SubjectId::parse(&victim)?;
    let wrapped: Vec<u8> =
        sqlx::query_scalar("SELECT wrapped_dek FROM subjects WHERE subject_id = $1")
            .bind(vid.as_bytes().to_vec())
            .fetch_one(tv.db())
            .await?;
    // A reader on a connection of its own, inside a read transaction: it
    // holds its snapshot (and the WAL frames under it) until it ends.
    let url = format!("sqlite://{}", tv.dir.path().join("idvault.db").display());
    let mut reader = sqlx::SqliteConnection::connect(&url).await?;
    let mut snapshot = reader.begin().await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM subjects")
        .fetch_one(&mut *snapshot)
        .await?;
    anyhow::ensure!(n == 2, "{n} subjects");

    let d = tv
        .subjects("partner-a")
        .await?
        .delete_subject(DeleteSubjectRequest { subject_id: victim })
        .await?
        .into_inner();
    let r = crate::subjects::open_deletion_receipt(&tv, &d.receipt)?;
    anyhow::ensure!(
        r.final_when.contains("the WAL's truncation is pending"),
        "receipt claims more than was done: {}",
        r.final_when
    );

    snapshot.rollback().await?;
    reader.close().await?;
    crate::subjects::wait_until_files_lack(&tv, &wrapped).await?;
    tv.stop().await
}

/// The vault's periodic checkpoints and deletions' truncating ones take
/// turns: with checkpoints running back to back beside them (four loops),
/// every deletion still truncates the WAL and nothing deadlocks. (The
/// race the turns prevent, a deletion's TRUNCATE refused because a
/// PASSIVE is copying, needs a WAL far larger than a test vault's to show
/// often; this checks the turns, not that race.)
pub async fn deletions_truncate_beside_checkpoints(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_proto::v1::DeleteSubjectRequest;

    let tv = TestVault::start(b).await?;
    // Several loops at once, so that some checkpoint is nearly always in
    // progress.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let (store, mut stopped) = (tv.vault.store().clone(), stopped.clone());
            tokio::spawn(async move {
                let mut n = 0u32;
                while !*stopped.borrow_and_update() {
                    store.checkpoint_wal().await?;
                    n += 1;
                }
                anyhow::Ok(n)
            })
        })
        .collect();
    let mut c = tv.subjects("partner-a").await?;
    for i in 0..6 {
        let id = create(&tv, "partner-a", &[("city", &format!("T{i}"))]).await?;
        let d = c
            .delete_subject(DeleteSubjectRequest { subject_id: id })
            .await?
            .into_inner();
        let r = crate::subjects::open_deletion_receipt(&tv, &d.receipt)?;
        anyhow::ensure!(
            r.final_when.starts_with(crate::subjects::TRUNCATED),
            "deletion {i}: {}",
            r.final_when
        );
    }
    stop.send(true)?;
    let mut n = 0;
    for l in loops {
        n += l.await??;
    }
    anyhow::ensure!(n > 24, "only {n} checkpoints ran beside the deletions");
    tv.stop().await
}
