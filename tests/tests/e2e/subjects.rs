//! Subject lifecycle over mTLS.

use anyhow::ensure;
use idvault_tests::idvault_core::keys::{WrappedDek, unwrap_dek};
use idvault_tests::idvault_core::packet;
use idvault_tests::idvault_core::subject::SubjectId;
use idvault_tests::idvault_proto::v1::{
    CreateSubjectRequest, DeleteSubjectRequest, Field, UpdateSubjectRequest,
    VerifySubjectChainRequest,
};
use idvault_tests::{Backend, TestVault};
use sqlx::Row;
use tonic::Code;

pub fn fields(pairs: &[(&str, &str)]) -> Vec<Field> {
    pairs
        .iter()
        .map(|(n, v)| Field {
            name: (*n).into(),
            value: (*v).into(),
        })
        .collect()
}

pub async fn create(
    tv: &TestVault,
    partner: &str,
    pairs: &[(&str, &str)],
) -> anyhow::Result<String> {
    let mut c = tv.subjects(partner).await?;
    Ok(c.create_subject(CreateSubjectRequest {
        fields: fields(pairs),
    })
    .await?
    .into_inner()
    .subject_id)
}

pub async fn lifecycle(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let mut c = tv.subjects("partner-a").await?;
    let r = c
        .create_subject(CreateSubjectRequest {
            fields: fields(&[
                ("given_name", "Ada"),
                ("family_name", "Lovelace"),
                ("email", "ada@example.org"),
            ]),
        })
        .await?
        .into_inner();
    assert_eq!(r.chain_length, 3);
    assert_eq!(r.chain_head.len(), 64);
    let u = c
        .update_subject(UpdateSubjectRequest {
            subject_id: r.subject_id.clone(),
            fields: fields(&[("email", "ada@analytical.engine")]),
        })
        .await?
        .into_inner();
    assert_eq!(u.chain_length, 4);
    let v = c
        .verify_subject_chain(VerifySubjectChainRequest {
            subject_id: r.subject_id.clone(),
        })
        .await?
        .into_inner();
    assert!(v.intact);
    assert_eq!(v.packets_checked, 4);
    assert_eq!(v.first_broken_sequence, None);
    assert_eq!(v.chain_head, u.chain_head);

    // Reads return the newest version of each field.
    let id = SubjectId::parse(&r.subject_id)?;
    let row = sqlx::query("SELECT wrapped_dek, kek_version FROM subjects WHERE subject_id = $1")
        .bind(id.as_bytes().to_vec())
        .fetch_one(tv.db())
        .await?;
    let wrapped = WrappedDek {
        kek_version: u32::try_from(row.try_get::<i64, _>("kek_version")?)?,
        bytes: row.try_get("wrapped_dek")?,
    };
    let dek = unwrap_dek(&tv.vault.keys().kek(wrapped.kek_version)?, &id, &wrapped)?;
    let rows = sqlx::query("SELECT packet FROM packets WHERE subject_id = $1 ORDER BY seq")
        .bind(id.as_bytes().to_vec())
        .fetch_all(tv.db())
        .await?;
    let bytes: Vec<Vec<u8>> = rows
        .iter()
        .map(|r| r.try_get("packet"))
        .collect::<Result<_, _>>()?;
    let newest = packet::newest_values(&id, &dek, bytes.iter().map(Vec::as_slice))?;
    let get = |n: &str| {
        newest
            .iter()
            .find(|(k, _)| k.as_str() == n)
            .map(|(_, v)| v.expose().to_owned())
    };
    assert_eq!(get("email").as_deref(), Some("ada@analytical.engine"));
    assert_eq!(get("given_name").as_deref(), Some("Ada"));

    let d = c
        .delete_subject(DeleteSubjectRequest {
            subject_id: r.subject_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(d.packets_destroyed, 4);
    let gone = c
        .verify_subject_chain(VerifySubjectChainRequest {
            subject_id: r.subject_id,
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    let verdict = tv.verify_audit().await?;
    assert!(
        matches!(
            verdict,
            idvault_tests::idvault_server::service::AuditVerdict::Intact {
                leaves: 5,
                pending: 0,
                ..
            }
        ),
        "{verdict:?}"
    );
    tv.stop().await
}

pub async fn write_survives_restart(b: Backend) -> anyhow::Result<()> {
    let mut tv = TestVault::start(b).await?;
    let id = create(
        &tv,
        "partner-a",
        &[("city", "Paris"), ("postcode", "75001")],
    )
    .await?;
    tv.restart().await?;
    let mut c = tv.subjects("partner-a").await?;
    let v = c
        .verify_subject_chain(VerifySubjectChainRequest { subject_id: id })
        .await?
        .into_inner();
    ensure!(
        v.intact && v.packets_checked == 2,
        "chain after restart: {v:?}"
    );
    tv.stop().await
}

pub async fn owner_isolation(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let id = create(&tv, "partner-a", &[("city", "Paris")]).await?;
    let mut other = tv.subjects("partner-b").await?;
    let e = other
        .verify_subject_chain(VerifySubjectChainRequest {
            subject_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::NotFound,
        "another partner's subject looks absent"
    );
    let e = other
        .update_subject(UpdateSubjectRequest {
            subject_id: id.clone(),
            fields: fields(&[("city", "Rome")]),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // partner-b lacks subjects.delete: denied by policy before any lookup.
    let e = other
        .delete_subject(DeleteSubjectRequest { subject_id: id })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(tv.count("SELECT count(*) FROM packets").await, 1);
    tv.stop().await
}

pub async fn crypto_shredding(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let victim = create(
        &tv,
        "partner-a",
        &[("national_id", "AB123456C"), ("phone", "+447700900123")],
    )
    .await?;
    let _other = create(&tv, "partner-a", &[("city", "Oslo")]).await?;
    let vid = SubjectId::parse(&victim)?;
    let old_wrapped: Vec<u8> =
        sqlx::query_scalar("SELECT wrapped_dek FROM subjects WHERE subject_id = $1")
            .bind(vid.as_bytes().to_vec())
            .fetch_one(tv.db())
            .await?;
    let packets: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT packet FROM packets WHERE subject_id = $1")
            .bind(vid.as_bytes().to_vec())
            .fetch_all(tv.db())
            .await?;
    assert_eq!(packets.len(), 2);
    let mut c = tv.subjects("partner-a").await?;
    let d = c
        .delete_subject(DeleteSubjectRequest { subject_id: victim })
        .await?
        .into_inner();
    let receipt = open_deletion_receipt(&tv, &d.receipt)?;

    // Nothing of the subject is left in the tables.
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM packets WHERE subject_id = $1")
        .bind(vid.as_bytes().to_vec())
        .fetch_one(tv.db())
        .await?;
    assert_eq!(left, 0);
    // With the root key, try every wrapped DEK still stored: none opens the
    // subject's packets (a copy of them, as an attacker's backup would hold).
    let rows = sqlx::query("SELECT subject_id, wrapped_dek, kek_version FROM subjects")
        .fetch_all(tv.db())
        .await?;
    assert_eq!(rows.len(), 1);
    for r in &rows {
        let sid = SubjectId::from_slice(&r.try_get::<Vec<u8>, _>("subject_id")?).unwrap();
        let w = WrappedDek {
            kek_version: u32::try_from(r.try_get::<i64, _>("kek_version")?)?,
            bytes: r.try_get("wrapped_dek")?,
        };
        assert!(w.bytes != old_wrapped);
        let kek = tv.vault.keys().kek(w.kek_version)?;
        for as_subject in [sid, vid] {
            if let Ok(dek) = unwrap_dek(&kek, &as_subject, &w) {
                for p in &packets {
                    assert!(packet::parse(p)?.open(&dek).is_err());
                }
            }
        }
    }
    // SQLite: secure_delete plus a WAL checkpoint leave no copy of the
    // wrapped DEK in the database files: at once if the receipt says the
    // WAL was truncated, else (a reader held it back) once a retry is done.
    if b == Backend::Sqlite {
        if receipt.final_when.starts_with(TRUNCATED) {
            ensure!(
                files_holding(&tv, &old_wrapped).is_empty(),
                "the receipt claims the WAL was truncated, yet the files hold the wrapped DEK"
            );
        } else {
            wait_until_files_lack(&tv, &old_wrapped).await?;
        }
    }
    tv.stop().await
}

/// How a SQLite deletion receipt starts when the WAL was truncated.
pub const TRUNCATED: &str = "the database no longer holds it";

/// Opens a deletion receipt with the vault's published receipt keys.
pub fn open_deletion_receipt(
    tv: &TestVault,
    receipt: &str,
) -> anyhow::Result<idvault_tests::idvault_core::receipt::DeletionReceipt> {
    use idvault_tests::idvault_core::tlog::checkpoint::NoteVerifier;
    let origin = tv.vault.audit_settings().origin.clone();
    let verifiers: Vec<NoteVerifier> =
        idvault_tests::idvault_server::service::receipts::receipt_verifier_keys(
            tv.vault.keys(),
            &origin,
        )?
        .iter()
        .map(|k| NoteVerifier::parse(k))
        .collect::<Result<_, _>>()?;
    Ok(idvault_tests::idvault_core::receipt::open_receipt(
        receipt, &verifiers,
    )?)
}

/// Which of the vault's SQLite files hold `bytes`.
fn files_holding(tv: &TestVault, bytes: &[u8]) -> Vec<&'static str> {
    ["idvault.db", "idvault.db-wal"]
        .into_iter()
        .filter(|f| {
            std::fs::read(tv.dir.path().join(f))
                .is_ok_and(|all| all.windows(bytes.len()).any(|w| w == bytes))
        })
        .collect()
}

/// Waits (10 s at most) until neither SQLite file of the vault holds
/// `bytes`. A reader can hold a deletion's truncating checkpoint back; the
/// vault retries it every 200 ms, so the bytes go within a few retries.
pub async fn wait_until_files_lack(tv: &TestVault, bytes: &[u8]) -> anyhow::Result<()> {
    let mut held = Vec::new();
    for _ in 0..100 {
        held = files_holding(tv, bytes);
        if held.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("wrapped DEK bytes survive in {held:?} 10 s after the deletion")
}

/// A subject's chain is capped: an update that would take it past
/// `MAX_CHAIN_PACKETS` is refused (FAILED_PRECONDITION, audited) and
/// writes nothing; one that fits still goes through.
pub async fn chain_length_is_capped(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let id = create(&tv, "partner-a", &[("city", "Lima")]).await?;
    let sid = SubjectId::parse(&id)?;
    // Stand in for a long history: the cap is checked against the head's
    // sequence number before any work.
    sqlx::query("UPDATE subjects SET head_seq = $1 WHERE subject_id = $2")
        .bind(i64::try_from(packet::MAX_CHAIN_PACKETS)? - 1)
        .bind(sid.as_bytes().to_vec())
        .execute(tv.db())
        .await?;
    let mut c = tv.subjects("partner-a").await?;
    let e = c
        .update_subject(UpdateSubjectRequest {
            subject_id: id.clone(),
            fields: fields(&[("city", "Cusco"), ("email", "x@example.org")]),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("at most 10000 packets"),
        "{}",
        e.message()
    );
    let packets: i64 = sqlx::query_scalar("SELECT count(*) FROM packets WHERE subject_id = $1")
        .bind(sid.as_bytes().to_vec())
        .fetch_one(tv.db())
        .await?;
    assert_eq!(packets, 1, "nothing written");
    let outcome: String = sqlx::query_scalar(
        "SELECT outcome FROM audit_log WHERE action = 'UpdateSubject' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(tv.db())
    .await?;
    assert_eq!(outcome, "invalid");
    tv.stop().await
}

/// DeleteSubject answers with a receipt signed by the vault: it verifies
/// with the published receipt key alone, names the subject, the deleter,
/// what was destroyed and the audit leaf that logs it (whose leaf hash is
/// the stored leaf's); any edit breaks it, and another key does not
/// verify it.
pub async fn deletion_receipt_verifies(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_core::receipt::{ReceiptError, open_receipt};
    use idvault_tests::idvault_core::tlog::checkpoint::{NoteError, NoteVerifier};
    use idvault_tests::idvault_core::tlog::merkle::leaf_hash;

    let tv = TestVault::start(b).await?;
    let mut c = tv.subjects("partner-a").await?;
    let id = c
        .create_subject(CreateSubjectRequest {
            fields: [("given_name", "Rosa"), ("email", "rosa@example.org")]
                .iter()
                .map(|(n, v)| Field {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
        })
        .await?
        .into_inner()
        .subject_id;
    let d = c
        .delete_subject(DeleteSubjectRequest {
            subject_id: id.clone(),
        })
        .await?
        .into_inner();
    let origin = tv.vault.audit_settings().origin.clone();
    let published = idvault_tests::idvault_server::service::receipts::receipt_verifier_keys(
        tv.vault.keys(),
        &origin,
    )?;
    let verifiers: Vec<NoteVerifier> = published
        .iter()
        .map(|k| NoteVerifier::parse(k))
        .collect::<Result<_, _>>()?;
    let r = open_receipt(&d.receipt, &verifiers)?;
    assert_eq!(r.subject, id);
    assert_eq!(r.vault, origin);
    assert_eq!(r.deleted_by, "spiffe://idvault.dev/partner/partner-a");
    let count = |w: &str| r.destroyed.iter().find(|(x, _)| x == w).map(|(_, n)| *n);
    assert_eq!(count("packets"), Some(2));
    assert_eq!(count("data-key"), Some(1));
    assert!(count("match-index").is_some_and(|n| n > 0));
    // The leaf it names is the stored leaf of the delete, by request id.
    let row = sqlx::query("SELECT action, leaf FROM audit_log WHERE request_id = $1")
        .bind(r.request_id.to_vec())
        .fetch_one(tv.db())
        .await?;
    let action: String = row.try_get("action")?;
    let leaf: Vec<u8> = row.try_get("leaf")?;
    assert_eq!(action, "DeleteSubject");
    assert_eq!(leaf_hash(&leaf), r.audit_leaf);
    // Any edit breaks it.
    for (from, to) in [
        ("packets=2", "packets=3"),
        (id.as_str(), "00000000-0000-4000-8000-000000000000"),
        ("partner-a", "partner-b"),
    ] {
        let bad = d.receipt.replace(from, to);
        assert!(open_receipt(&bad, &verifiers).is_err(), "{from} -> {to}");
    }
    // Another vault's key (same name) does not verify it.
    let other = idvault_tests::idvault_core::tlog::checkpoint::NoteSigner::from_seed(
        &idvault_tests::idvault_core::receipt::receipt_key_name(&origin),
        &[7; 32],
    )?;
    assert!(matches!(
        open_receipt(&d.receipt, &[other.verifier()]),
        Err(ReceiptError::Note(NoteError::NoKnownSignature))
    ));
    tv.stop().await
}
