//! The audit log: tamper detection, fail-closed writes, no PII.

use idvault_tests::idvault_core::tlog::checkpoint::{NoteVerifier, open_checkpoint};
use idvault_tests::idvault_core::tlog::leaf::{self, AuditLeaf};
use idvault_tests::idvault_core::tlog::merkle;
use idvault_tests::idvault_proto::v1::audit_service_client::AuditServiceClient;
use idvault_tests::idvault_proto::v1::{
    CreateSubjectRequest, GetCheckpointRequest, GetConsistencyProofRequest,
    GetInclusionProofRequest, UpdateSubjectRequest, VerifySubjectChainRequest,
    get_inclusion_proof_request::Leaf,
};
use idvault_tests::idvault_server::service::AuditVerdict;
use idvault_tests::idvault_server::service::audit::{AuditFault, verify_audit_log};
use idvault_tests::{Backend, TestVault};
use tonic::Code;

use crate::subjects::{create, fields};

/// Writes `n` subjects and waits for their checkpoint.
async fn log_of(b: Backend, n: usize) -> anyhow::Result<TestVault> {
    let tv = TestVault::start(b).await?;
    for i in 0..n {
        create(&tv, "partner-a", &[("city", &format!("Lima {i}"))]).await?;
    }
    let v = tv.verify_audit().await?;
    assert!(
        matches!(v, AuditVerdict::Intact { leaves, pending: 0, .. } if leaves == n as u64),
        "{v:?}"
    );
    Ok(tv)
}

async fn verdict(tv: &TestVault) -> anyhow::Result<AuditVerdict> {
    Ok(tv.vault.verify_own_audit_log().await?)
}

/// The vault's audit verifier keys, parsed as a partner would.
fn verifiers(tv: &TestVault) -> anyhow::Result<Vec<NoteVerifier>> {
    Ok(tv
        .vault
        .audit_verifier_keys()?
        .iter()
        .map(|k| NoteVerifier::parse(k))
        .collect::<Result<_, _>>()?)
}

async fn public_verdict(tv: &TestVault) -> anyhow::Result<AuditVerdict> {
    let keys = verifiers(tv)?;
    Ok(verify_audit_log(tv.vault.store(), &keys, keys[0].name(), None).await?)
}

async fn leaf_at(tv: &TestVault, idx: i64) -> anyhow::Result<AuditLeaf> {
    let bytes: Vec<u8> = sqlx::query_scalar("SELECT leaf FROM audit_log WHERE idx = $1")
        .bind(idx)
        .fetch_one(tv.db())
        .await?;
    Ok(AuditLeaf::decode(&bytes)?)
}

async fn rewrite_leaf(tv: &TestVault, idx: i64, leaf: &AuditLeaf) -> anyhow::Result<()> {
    sqlx::query("UPDATE audit_log SET leaf = $1, actor = $2 WHERE idx = $3")
        .bind(leaf.encode())
        .bind(leaf.actor.clone())
        .bind(idx)
        .execute(tv.db())
        .await?;
    Ok(())
}

fn broken(v: AuditVerdict) -> AuditFault {
    match v {
        AuditVerdict::Broken(f) => f,
        other => panic!("expected a fault, got {other:?}"),
    }
}

/// Editing a leaf's column, its bytes, or its bytes and its tree node:
/// each is named, with the public key alone.
pub async fn edited_record_is_named(b: Backend) -> anyhow::Result<()> {
    let tv = log_of(b, 4).await?;
    assert!(matches!(
        public_verdict(&tv).await?,
        AuditVerdict::Intact { leaves: 4, .. }
    ));
    // A column edited (what an operator's query would show).
    sqlx::query(
        "UPDATE audit_log SET actor = 'spiffe://idvault.dev/partner/partner-b' WHERE idx = 1",
    )
    .execute(tv.db())
    .await?;
    let f = broken(public_verdict(&tv).await?);
    assert_eq!(
        f,
        AuditFault::LeafEdited {
            index: Some(1),
            row: f_row(&f)
        }
    );
    assert!(f.to_string().contains("leaf 1"), "{f}");
    // The leaf bytes re-encoded to agree with the column: its stored
    // tree node no longer matches.
    let mut leaf = leaf_at(&tv, 1).await?;
    leaf.actor = "spiffe://idvault.dev/partner/partner-b".into();
    rewrite_leaf(&tv, 1, &leaf).await?;
    assert!(matches!(
        broken(public_verdict(&tv).await?),
        AuditFault::LeafEdited { index: Some(1), .. }
    ));
    // The node rewritten too: the signed root does not match.
    sqlx::query("UPDATE audit_nodes SET hash = $1 WHERE level = 0 AND idx = 1")
        .bind(merkle::leaf_hash(&leaf.encode()).to_vec())
        .execute(tv.db())
        .await?;
    let f = broken(public_verdict(&tv).await?);
    assert!(matches!(f, AuditFault::CheckpointRoot { .. }), "{f:?}");
    // With the root key the forged leaf's MAC is named first.
    assert!(matches!(
        broken(verdict(&tv).await?),
        AuditFault::BadMac { index: Some(1), .. }
    ));
    tv.stop().await
}

fn f_row(f: &AuditFault) -> i64 {
    match f {
        AuditFault::LeafEdited { row, .. } | AuditFault::BadMac { row, .. } => *row,
        _ => -1,
    }
}

/// Deleting the newest leaves after they were checkpointed, or swapping
/// two leaves, is caught with the public key alone.
pub async fn removed_and_reordered_leaves_are_named(b: Backend) -> anyhow::Result<()> {
    let tv = log_of(b, 5).await?;
    sqlx::query("DELETE FROM audit_log WHERE idx >= 3")
        .execute(tv.db())
        .await?;
    assert_eq!(
        broken(public_verdict(&tv).await?),
        AuditFault::LeafMissing { index: 3 }
    );
    tv.stop().await?;

    let tv = log_of(b, 5).await?;
    // Swap leaves 1 and 2 (through a free index: idx is unique).
    for sql in [
        "UPDATE audit_log SET idx = 1000 WHERE idx = 1",
        "UPDATE audit_log SET idx = 1 WHERE idx = 2",
        "UPDATE audit_log SET idx = 2 WHERE idx = 1000",
    ] {
        sqlx::query(sql).execute(tv.db()).await?;
    }
    assert!(matches!(
        broken(public_verdict(&tv).await?),
        AuditFault::LeafEdited { index: Some(1), .. }
    ));
    tv.stop().await
}

/// A checkpoint whose note was altered (a different root signed by no
/// one) is named by its size.
pub async fn forged_checkpoint_is_named(b: Backend) -> anyhow::Result<()> {
    let tv = log_of(b, 3).await?;
    let (size, note): (i64, String) = sqlx::query_as(
        "SELECT tree_size, note FROM audit_checkpoints ORDER BY tree_size DESC LIMIT 1",
    )
    .fetch_one(tv.db())
    .await?;
    let forged = note.replacen(&format!("\n{size}\n"), &format!("\n{}\n", size + 1), 1);
    assert_ne!(forged, note);
    sqlx::query("UPDATE audit_checkpoints SET note = $1 WHERE tree_size = $2")
        .bind(forged)
        .bind(size)
        .execute(tv.db())
        .await?;
    assert_eq!(
        broken(public_verdict(&tv).await?),
        AuditFault::CheckpointSignature { size: size as u64 }
    );
    tv.stop().await
}

/// A leaf inserted by a database writer without the audit key is never
/// signed into the tree, and the root key names it.
pub async fn forged_leaf_is_not_sequenced(b: Backend) -> anyhow::Result<()> {
    let tv = log_of(b, 2).await?;
    let mut leaf = leaf_at(&tv, 0).await?;
    leaf.actor = "spiffe://idvault.dev/partner/partner-b".into();
    leaf.request_id = [7; 16];
    sqlx::query(
        "INSERT INTO audit_log (time_ms, actor, action, subject, outcome, detail, request_id, \
         head_seq, leaf, key_version, mac) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10)",
    )
    .bind(leaf.time_ms)
    .bind(leaf.actor.clone())
    .bind(leaf.action.clone())
    .bind(leaf.subject.clone())
    .bind(leaf.outcome.clone())
    .bind(leaf.detail.clone())
    .bind(leaf.request_id.to_vec())
    .bind(leaf.head.map(|(s, _)| s as i64))
    .bind(leaf.encode())
    .bind(vec![0u8; 32])
    .execute(tv.db())
    .await?;
    // A real write after it is sequenced; the forged one never is.
    create(&tv, "partner-a", &[("city", "Oslo")]).await?;
    for _ in 0..100 {
        if tv
            .count("SELECT count(*) FROM audit_log WHERE idx IS NOT NULL")
            .await
            == 3
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        tv.count("SELECT count(*) FROM audit_log WHERE idx IS NOT NULL")
            .await,
        3
    );
    assert_eq!(
        tv.count("SELECT count(*) FROM audit_log WHERE idx IS NULL")
            .await,
        1
    );
    assert!(matches!(
        broken(verdict(&tv).await?),
        AuditFault::BadMac { index: None, .. }
    ));
    tv.stop().await
}

/// How many leaves are signed, once `want` are or after 10 s.
async fn signed_leaves(tv: &TestVault, want: i64) -> i64 {
    let q = "SELECT count(*) FROM audit_log WHERE idx IS NOT NULL";
    for _ in 0..100 {
        if tv.count(q).await == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tv.count(q).await
}

/// Copies `audit_log` row `id` as a new row (every column but the id and
/// the index); the copy's row id.
async fn copy_leaf_row(tv: &TestVault, id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO audit_log (time_ms, actor, action, subject, outcome, detail, request_id, \
         head_seq, leaf, key_version, nonce, mac) \
         SELECT time_ms, actor, action, subject, outcome, detail, request_id, head_seq, leaf, \
         key_version, nonce, mac FROM audit_log WHERE id = $1 RETURNING id",
    )
    .bind(id)
    .fetch_one(tv.db())
    .await
}

/// Inserts `leaf` (no subject, no head) as a build before migration 0035
/// wrote a leaf row: no nonce, its MAC over the leaf hash alone under the
/// current audit key; the row's id.
async fn insert_leaf_without_nonce(tv: &TestVault, leaf: &AuditLeaf) -> anyhow::Result<i64> {
    let bytes = leaf.encode();
    let keys = tv.vault.keys();
    let key = keys.audit_key(keys.current_version())?;
    let mac = leaf::row_mac(&key, &merkle::leaf_hash(&bytes), None);
    Ok(sqlx::query_scalar(
        "INSERT INTO audit_log (time_ms, actor, action, subject, outcome, detail, request_id, \
         head_seq, leaf, key_version, mac) VALUES ($1, $2, $3, NULL, $4, $5, $6, NULL, $7, $8, $9) \
         RETURNING id",
    )
    .bind(leaf.time_ms)
    .bind(leaf.actor.clone())
    .bind(leaf.action.clone())
    .bind(leaf.outcome.clone())
    .bind(leaf.detail.clone())
    .bind(leaf.request_id.to_vec())
    .bind(bytes)
    .bind(i64::from(key.version()))
    .bind(mac.to_vec())
    .fetch_one(tv.db())
    .await?)
}

/// A database writer without the root key copies a genuine, signed leaf
/// row. The nonce its MAC covers is unique: the copy is refused by the
/// index, and with the index dropped it is stored but never signed, and
/// the root key names it. A row from before nonces (MAC over the leaf
/// alone) is still signed, and a copy of it is not either, nor one whose
/// leaf is over a day old.
pub async fn copied_leaf_is_not_signed(b: Backend) -> anyhow::Result<()> {
    let tv = log_of(b, 2).await?;
    let first: i64 = sqlx::query_scalar("SELECT id FROM audit_log WHERE idx = 0")
        .fetch_one(tv.db())
        .await?;
    let nonce: Option<Vec<u8>> = sqlx::query_scalar("SELECT nonce FROM audit_log WHERE id = $1")
        .bind(first)
        .fetch_one(tv.db())
        .await?;
    assert_eq!(nonce.map(|n| n.len()), Some(16), "new rows carry a nonce");
    let refused = copy_leaf_row(&tv, first).await;
    assert!(refused.is_err(), "the nonce index refuses a copy");
    sqlx::query("DROP INDEX audit_log_nonce")
        .execute(tv.db())
        .await?;
    let copy = copy_leaf_row(&tv, first).await?;
    create(&tv, "partner-a", &[("city", "Oslo")]).await?;
    assert_eq!(signed_leaves(&tv, 3).await, 3);
    // Give the sequencer another round at the copy.
    create(&tv, "partner-a", &[("city", "Quito")]).await?;
    assert_eq!(signed_leaves(&tv, 4).await, 4);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(signed_leaves(&tv, 4).await, 4, "the copy is never signed");
    assert_eq!(
        broken(verdict(&tv).await?),
        AuditFault::LeafCopied {
            index: None,
            row: copy
        }
    );
    sqlx::query("DELETE FROM audit_log WHERE id = $1")
        .bind(copy)
        .execute(tv.db())
        .await?;

    // A row as a build before nonces wrote it, then its copy.
    let mut old = leaf_at(&tv, 1).await?;
    old.request_id = [0x5a; 16];
    old.subject = None;
    old.head = None;
    let legacy = insert_leaf_without_nonce(&tv, &old).await?;
    assert_eq!(
        signed_leaves(&tv, 5).await,
        5,
        "a row from before nonces is signed"
    );
    let copy = copy_leaf_row(&tv, legacy).await?;
    // And one without a nonce over a day old, as a copy of a leaf signed
    // long ago with its request id column changed would be: nothing in
    // the database can vouch it is no copy, so it is not signed either.
    let mut stale = old.clone();
    stale.request_id = [0x5b; 16];
    stale.time_ms -= 25 * 3_600_000;
    insert_leaf_without_nonce(&tv, &stale).await?;
    create(&tv, "partner-a", &[("city", "Accra")]).await?;
    assert_eq!(signed_leaves(&tv, 6).await, 6);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        signed_leaves(&tv, 6).await,
        6,
        "neither the copy nor the day-old row is signed"
    );
    assert_eq!(
        broken(verdict(&tv).await?),
        AuditFault::LeafCopied {
            index: None,
            row: copy
        }
    );
    // The public key alone cannot tell a copy: only the MAC vouches for
    // the nonce.
    assert!(
        matches!(
            public_verdict(&tv).await?,
            AuditVerdict::Intact { pending: 2, .. }
        ),
        "public verification sees two unsigned rows"
    );
    tv.stop().await
}

/// A database writer without the root key stages a forged leaf as if it
/// were already sequenced: the leaf row with the next index, the tree
/// nodes its hash gives, and a checkpoint row of the larger size (first
/// with a made-up note, then with the genuine newest note copied). The
/// sequencer resumes only from a tree the newest signed note signs, so it
/// signs nothing over the forgery: real leaves wait unsequenced, no
/// checkpoint past the forged size appears, and once the rows are gone it
/// goes on and the log verifies.
pub async fn forged_tree_state_is_not_signed(b: Backend) -> anyhow::Result<()> {
    let tv = log_of(b, 3).await?;
    let mut tree = merkle::Appender::new();
    let mut nodes = Vec::new();
    for i in 0..3i64 {
        let bytes: Vec<u8> = sqlx::query_scalar("SELECT leaf FROM audit_log WHERE idx = $1")
            .bind(i)
            .fetch_one(tv.db())
            .await?;
        nodes.extend(tree.push(merkle::leaf_hash(&bytes)));
    }
    let mut forged = leaf_at(&tv, 0).await?;
    forged.actor = "spiffe://idvault.dev/partner/partner-b".into();
    forged.action = "Release".into();
    forged.request_id = [9; 16];
    let added = tree.push(merkle::leaf_hash(&forged.encode()));
    sqlx::query(
        "INSERT INTO audit_log (time_ms, actor, action, subject, outcome, detail, request_id, \
         head_seq, leaf, key_version, mac, idx) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10, 3)",
    )
    .bind(forged.time_ms)
    .bind(forged.actor.clone())
    .bind(forged.action.clone())
    .bind(forged.subject.clone())
    .bind(forged.outcome.clone())
    .bind(forged.detail.clone())
    .bind(forged.request_id.to_vec())
    .bind(forged.head.map(|(s, _)| s as i64))
    .bind(forged.encode())
    .bind(vec![0u8; 32])
    .execute(tv.db())
    .await?;
    for (id, hash) in &added {
        sqlx::query(
            "INSERT INTO audit_nodes (level, idx, hash) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(i64::from(id.level))
        .bind(id.index as i64)
        .bind(hash.to_vec())
        .execute(tv.db())
        .await?;
    }
    let genuine: String =
        sqlx::query_scalar("SELECT note FROM audit_checkpoints WHERE tree_size = 3")
            .fetch_one(tv.db())
            .await?;
    let past = "SELECT count(*) FROM audit_checkpoints WHERE tree_size > 4";
    let waiting = "SELECT count(*) FROM audit_log WHERE idx IS NULL";
    for note in ["x".to_owned(), genuine] {
        sqlx::query("DELETE FROM audit_checkpoints WHERE tree_size = 4")
            .execute(tv.db())
            .await?;
        sqlx::query(
            "INSERT INTO audit_checkpoints (tree_size, root, note, time_ms) VALUES (4, $1, $2, 0)",
        )
        .bind(tree.root().to_vec())
        .bind(note)
        .execute(tv.db())
        .await?;
        // A real write: it waits, and nothing is signed over the forgery.
        create(&tv, "partner-a", &[("city", "Quito")]).await?;
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert_eq!(tv.count(past).await, 0, "a checkpoint over the forged leaf");
        assert!(tv.count(waiting).await >= 1);
    }
    // The forgery removed: sequencing goes on, and the log verifies.
    sqlx::query("DELETE FROM audit_checkpoints WHERE tree_size = 4")
        .execute(tv.db())
        .await?;
    sqlx::query("DELETE FROM audit_log WHERE idx = 3")
        .execute(tv.db())
        .await?;
    for (id, _) in &added {
        sqlx::query("DELETE FROM audit_nodes WHERE level = $1 AND idx = $2")
            .bind(i64::from(id.level))
            .bind(id.index as i64)
            .execute(tv.db())
            .await?;
    }
    tv.checkpointed().await?;
    let v = verdict(&tv).await?;
    assert!(
        matches!(
            v,
            AuditVerdict::Intact {
                leaves: 5,
                pending: 0,
                ..
            }
        ),
        "{v:?}"
    );
    tv.stop().await
}

/// A database writer cuts a running vault's log back to an older signed
/// checkpoint (newer checkpoints and nodes deleted, later leaves' indexes
/// cleared, one of them removed): re-sequencing would sign a fork at sizes
/// already signed. The vault remembers the newest checkpoint it saw, so
/// it signs nothing until it is restarted.
pub async fn cut_back_log_is_not_signed_again(b: Backend) -> anyhow::Result<()> {
    let tv = log_of(b, 3).await?;
    for city in ["Cusco", "Arequipa"] {
        create(&tv, "partner-a", &[("city", city)]).await?;
    }
    tv.checkpointed().await?;
    let newest = "SELECT max(tree_size) FROM audit_checkpoints";
    assert_eq!(tv.count(newest).await, 5);
    // Let every replica's follower see size 5.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    sqlx::query("DELETE FROM audit_checkpoints WHERE tree_size > 3")
        .execute(tv.db())
        .await?;
    for level in 0..4i64 {
        for idx in 0..8i64 {
            if (idx + 1) << level > 3 {
                sqlx::query("DELETE FROM audit_nodes WHERE level = $1 AND idx = $2")
                    .bind(level)
                    .bind(idx)
                    .execute(tv.db())
                    .await?;
            }
        }
    }
    sqlx::query("DELETE FROM audit_log WHERE idx = 3")
        .execute(tv.db())
        .await?;
    sqlx::query("UPDATE audit_log SET idx = NULL WHERE idx > 3")
        .execute(tv.db())
        .await?;
    create(&tv, "partner-a", &[("city", "Puno")]).await?;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(tv.count(newest).await, 3, "nothing signed over the cut");
    assert_eq!(
        tv.count("SELECT count(*) FROM audit_log WHERE idx IS NULL")
            .await,
        2
    );
    tv.stop().await
}

/// The newest checkpoint deleted: its leaves keep their indexes but no
/// signed checkpoint covers them (and their bytes could then be edited
/// unnoticed); `audit verify` names the first.
pub async fn uncovered_leaves_are_named(b: Backend) -> anyhow::Result<()> {
    let tv = log_of(b, 2).await?;
    for city in ["Cusco", "Arequipa"] {
        create(&tv, "partner-a", &[("city", city)]).await?;
    }
    tv.checkpointed().await?;
    let newest: i64 = sqlx::query_scalar("SELECT max(tree_size) FROM audit_checkpoints")
        .fetch_one(tv.db())
        .await?;
    assert_eq!(newest, 4);
    sqlx::query("DELETE FROM audit_checkpoints WHERE tree_size = 4")
        .execute(tv.db())
        .await?;
    let covered: i64 = sqlx::query_scalar("SELECT max(tree_size) FROM audit_checkpoints")
        .fetch_one(tv.db())
        .await?;
    assert!(matches!(
        broken(verdict(&tv).await?),
        AuditFault::Uncovered { index } if index == covered as u64
    ));
    tv.stop().await
}

/// Rolls subject `raw`'s chain back to its first packet as a database
/// writer would: its second packet dropped, its head reset to the first.
async fn roll_back_to_first_packet(tv: &TestVault, raw: Vec<u8>) -> anyhow::Result<()> {
    let prev: Vec<u8> =
        sqlx::query_scalar("SELECT packet FROM packets WHERE subject_id = $1 AND seq = 1")
            .bind(raw.clone())
            .fetch_one(tv.db())
            .await?;
    let head = idvault_tests::idvault_core::packet::packet_hash(&prev);
    sqlx::query("DELETE FROM packets WHERE subject_id = $1 AND seq = 2")
        .bind(raw.clone())
        .execute(tv.db())
        .await?;
    sqlx::query("UPDATE subjects SET head_seq = 1, head_hash = $1 WHERE subject_id = $2")
        .bind(head.to_vec())
        .bind(raw)
        .execute(tv.db())
        .await?;
    Ok(())
}

/// A subject's chain rolled back (newest packet dropped, head reset) is
/// caught by `audit verify` and by VerifySubjectChain.
pub async fn rolled_back_chain_is_detected(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let id = create(&tv, "partner-a", &[("city", "Lima")]).await?;
    let mut c = tv.subjects("partner-a").await?;
    c.update_subject(UpdateSubjectRequest {
        subject_id: id.clone(),
        fields: fields(&[("city", "Cusco")]),
    })
    .await?;
    assert!(matches!(
        tv.verify_audit().await?,
        AuditVerdict::Intact { .. }
    ));
    let raw = hex::decode(id.replace('-', ""))?;
    roll_back_to_first_packet(&tv, raw).await?;
    let f = broken(verdict(&tv).await?);
    assert_eq!(
        f,
        AuditFault::SubjectRolledBack {
            subject: id.clone()
        }
    );
    let v = c
        .verify_subject_chain(VerifySubjectChainRequest { subject_id: id })
        .await?
        .into_inner();
    assert!(!v.intact, "{v:?}");
    tv.stop().await
}

/// A subject never updated has only its creation leaf to compare its head
/// with, found through the creating request its row names (migration
/// 0029), not by subject: its chain rolled back is still caught by
/// VerifySubjectChain and by `audit verify`. Its row pointed at another
/// subject's creation request finds a leaf that names that subject, which
/// does not vouch for this one; pointed back, it verifies again.
pub async fn rolled_back_creation_is_detected(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let id = create(&tv, "partner-a", &[("city", "Lima"), ("postcode", "15001")]).await?;
    let other = create(&tv, "partner-a", &[("city", "Quito")]).await?;
    let raw = hex::decode(id.replace('-', ""))?;
    let other_raw = hex::decode(other.replace('-', ""))?;
    let check = async |id: &str| {
        anyhow::Ok(
            tv.subjects("partner-a")
                .await?
                .verify_subject_chain(VerifySubjectChainRequest {
                    subject_id: id.to_owned(),
                })
                .await?
                .into_inner()
                .intact,
        )
    };
    assert!(check(&id).await?);
    let created: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT created_request FROM subjects WHERE subject_id = $1")
            .bind(raw.clone())
            .fetch_one(tv.db())
            .await?;
    assert_eq!(created.as_ref().map(Vec::len), Some(16));
    let others: Vec<u8> =
        sqlx::query_scalar("SELECT created_request FROM subjects WHERE subject_id = $1")
            .bind(other_raw)
            .fetch_one(tv.db())
            .await?;
    let point = async |to: Option<Vec<u8>>| -> anyhow::Result<()> {
        sqlx::query("UPDATE subjects SET created_request = $1 WHERE subject_id = $2")
            .bind(to)
            .bind(raw.clone())
            .execute(tv.db())
            .await?;
        Ok(())
    };
    point(Some(others)).await?;
    assert!(
        !check(&id).await?,
        "another subject's leaf vouches for nothing"
    );
    point(created).await?;
    assert!(check(&id).await?);

    roll_back_to_first_packet(&tv, raw).await?;
    assert!(!check(&id).await?, "rolled back");
    assert!(check(&other).await?, "the other is untouched");
    assert_eq!(
        broken(verdict(&tv).await?),
        AuditFault::SubjectRolledBack { subject: id }
    );
    tv.stop().await
}

/// The 32-byte hashes of a proof answer.
fn proof_hashes(v: &[Vec<u8>]) -> anyhow::Result<Vec<[u8; 32]>> {
    Ok(v.iter()
        .map(|h| h.as_slice().try_into())
        .collect::<Result<_, _>>()?)
}

/// Over gRPC: a partner gets the signed checkpoint, proves its own
/// request is in the tree by the request id its response carried, and
/// checks consistency with an older checkpoint; another partner's leaf is
/// not found for it.
pub async fn proofs_over_grpc(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let mut c = tv.subjects("partner-a").await?;
    let resp = c
        .create_subject(CreateSubjectRequest {
            fields: fields(&[("city", "Lima")]),
        })
        .await?;
    let request_id = resp
        .metadata()
        .get("idvault-request-id")
        .expect("request id header")
        .to_str()?
        .to_owned();
    assert_eq!(request_id.len(), 32);
    tv.checkpointed().await?;
    let keys = verifiers(&tv)?;
    let origin = keys[0].name().to_owned();
    let mut audit = AuditServiceClient::new(tv.channel("partner-a").await?);
    let first = audit
        .get_checkpoint(GetCheckpointRequest {})
        .await?
        .into_inner();
    let first_cp = open_checkpoint(&first.note, &keys, &origin)?;
    let p = audit
        .get_inclusion_proof(GetInclusionProofRequest {
            leaf: Some(Leaf::RequestId(request_id.clone())),
            tree_size: 0,
        })
        .await?
        .into_inner();
    let cp = open_checkpoint(&p.checkpoint, &keys, &origin)?;
    let hashes = proof_hashes(&p.hashes)?;
    merkle::verify_inclusion(
        p.leaf_index,
        cp.size,
        &merkle::leaf_hash(&p.leaf),
        &hashes,
        &cp.root,
    )?;
    let leaf = AuditLeaf::decode(&p.leaf)?;
    assert_eq!(hex::encode(leaf.request_id), request_id);
    assert_eq!(leaf.action, "CreateSubject");
    // More writes, a newer checkpoint, consistent with the first.
    for i in 0..3 {
        create(&tv, "partner-b", &[("city", &format!("Rome {i}"))]).await?;
    }
    tv.checkpointed().await?;
    let newer = audit
        .get_consistency_proof(GetConsistencyProofRequest {
            old_size: first_cp.size,
            new_size: 0,
        })
        .await?
        .into_inner();
    let new_cp = open_checkpoint(&newer.checkpoint, &keys, &origin)?;
    assert!(new_cp.size > first_cp.size);
    let hashes = proof_hashes(&newer.hashes)?;
    merkle::verify_consistency(
        first_cp.size,
        new_cp.size,
        &first_cp.root,
        &new_cp.root,
        &hashes,
    )?;
    // From size 0 the proof is empty (docs/audit.md, "Proofs"), and the
    // empty tree is consistent with any; past the newest size is refused.
    let from_empty = audit
        .get_consistency_proof(GetConsistencyProofRequest {
            old_size: 0,
            new_size: 0,
        })
        .await?
        .into_inner();
    assert_eq!((from_empty.old_size, from_empty.new_size), (0, new_cp.size));
    assert!(from_empty.hashes.is_empty());
    let e = audit
        .get_consistency_proof(GetConsistencyProofRequest {
            old_size: new_cp.size + 1,
            new_size: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Sizes and indexes past what the store holds are the caller's
    // mistake, not a storage fault to retry.
    let e = audit
        .get_consistency_proof(GetConsistencyProofRequest {
            old_size: 1,
            new_size: 1 << 63,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    for (index, size) in [(1 << 63, 0), (0, u64::MAX)] {
        let e = audit
            .get_inclusion_proof(GetInclusionProofRequest {
                leaf: Some(Leaf::LeafIndex(index)),
                tree_size: size,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }
    // partner-b's leaves are not partner-a's to read.
    let b_leaf: i64 = sqlx::query_scalar(
        "SELECT idx FROM audit_log WHERE actor = 'spiffe://idvault.dev/partner/partner-b' ORDER BY idx LIMIT 1",
    )
    .fetch_one(tv.db())
    .await?;
    let e = audit
        .get_inclusion_proof(GetInclusionProofRequest {
            leaf: Some(Leaf::LeafIndex(b_leaf as u64)),
            tree_size: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // The wallet app holds no audit.read role.
    let mut audit_w = AuditServiceClient::new(tv.channel("wallet").await?);
    let e = audit_w
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
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
        tv.count("SELECT count(*) FROM audit_log").await,
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
        tv.count("SELECT count(*) FROM audit_log").await,
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
    assert!(matches!(
        tv.verify_audit().await?,
        AuditVerdict::Intact {
            leaves: 2,
            pending: 0,
            ..
        }
    ));
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
        sqlx::query_as("SELECT actor, outcome, detail FROM audit_log ORDER BY id")
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

/// Group commit: many concurrent writes share batches; one that fails
/// after writing leaves the others committed and its own writes absent.
/// Commits `tx` with a test leaf of `action` numbered `i` (request id
/// `[i; 16]`), MACed with audit key version 1.
async fn commit_test_leaf(
    tx: idvault_tests::idvault_server::store::AuditedTx,
    key: &[u8; 32],
    action: &str,
    i: u8,
) -> anyhow::Result<()> {
    use idvault_tests::idvault_core::crypto;
    use idvault_tests::idvault_server::store::NewLeaf;
    let leaf = AuditLeaf {
        time_ms: 1,
        actor: "idvault-test".into(),
        action: action.into(),
        subject: None,
        outcome: "ok".into(),
        detail: format!("i={i}"),
        policies: Vec::new(),
        request_id: [i; 16],
        head: None,
    };
    let bytes = leaf.encode();
    let mut random = [0u8; 8];
    random.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
    let nonce = leaf::row_nonce(leaf.time_ms, random);
    let mac = crypto::hmac_sha256(key, &[&merkle::leaf_hash(&bytes), &nonce]);
    tx.commit(&NewLeaf {
        leaf: &leaf,
        bytes: &bytes,
        key_version: 1,
        nonce,
        mac,
    })
    .await?;
    Ok(())
}

/// Subject rows with ids `[id; 16]` and nothing else: for tests where only
/// a subject's existence matters (pairwise tokens are stored only for one).
async fn bare_subjects(tv: &TestVault, ids: impl IntoIterator<Item = u8>) -> anyhow::Result<()> {
    for id in ids {
        sqlx::query(
            "INSERT INTO subjects (subject_id, created_by, wrapped_dek, kek_version, \
             head_seq, head_hash, created_at_ms, updated_at_ms) \
             VALUES ($1, 'group-test', $2, 1, 0, $3, 0, 0)",
        )
        .bind(vec![id; 16])
        .bind(vec![0u8; 60])
        .bind(vec![0u8; 32])
        .execute(tv.db())
        .await?;
    }
    Ok(())
}

/// How request 7 of [`one_of_24_fails`] fails.
#[derive(Clone, Copy)]
enum Spoil {
    /// A second statement, run at once, fails (duplicate key).
    SecondStatement,
    /// A row left for the commit fails there (the pairwise token "taken"
    /// is another subject's): on SQLite it goes with the RELEASE and the
    /// batch COMMIT in one call.
    LastRows,
}

/// 24 concurrent requests, each creating the xref token `tok-{i}` of
/// `owner` (a statement run at once, so each holds the writer on SQLite)
/// and committing a leaf of `action`; request 7 is spoiled. Checks that it
/// alone failed, that none of its rows stayed (its first insert
/// included), that the others are committed, and that the vault writes
/// on and its log verifies.
async fn one_of_24_fails(
    tv: &TestVault,
    owner: &'static str,
    action: &'static str,
    spoil: Spoil,
) -> anyhow::Result<()> {
    use idvault_tests::idvault_core::subject::SubjectId;
    let store = tv.vault.store().clone();
    let key = tv.vault.keys().audit_key(1)?;
    let key_bytes = *key.expose();
    let mut tasks = Vec::new();
    for i in 0..24u8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = store.begin_audited(None)?;
            tx.xref_create(owner, &format!("tok-{i}"), 1).await?;
            match spoil {
                _ if i != 7 => {}
                Spoil::SecondStatement => {
                    tx.xref_create(owner, &format!("tok-{i}"), 1).await?;
                }
                Spoil::LastRows => tx.pairwise_insert(
                    "group-test",
                    &[(
                        SubjectId::from_slice(&[101; 16]).expect("16"),
                        "taken".into(),
                    )],
                )?,
            }
            commit_test_leaf(tx, &key_bytes, action, i).await?;
            anyhow::Ok(())
        }));
    }
    let mut failed = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        if t.await?.is_err() {
            failed.push(i);
        }
    }
    assert_eq!(failed, [7]);
    let tokens: Vec<String> =
        sqlx::query_scalar("SELECT token FROM xref_entities WHERE owner = $1 ORDER BY token")
            .bind(owner)
            .fetch_all(tv.db())
            .await?;
    assert_eq!(tokens.len(), 23, "{tokens:?}");
    assert!(!tokens.contains(&"tok-7".to_owned()));
    let leaves: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = $1")
        .bind(action)
        .fetch_one(tv.db())
        .await?;
    assert_eq!(leaves, 23);
    // The vault goes on writing after it.
    let mut tx = store.begin_audited(None)?;
    tx.xref_create(owner, "after", 1).await?;
    commit_test_leaf(tx, &key_bytes, action, 99).await?;
    assert!(matches!(
        tv.verify_audit().await?,
        AuditVerdict::Intact { .. }
    ));
    Ok(())
}

pub async fn group_commit_isolates_a_failed_request(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    one_of_24_fails(&tv, "group-test", "GroupCommitTest", Spoil::SecondStatement).await?;
    tv.stop().await
}

/// A request holding the writer whose last rows fail (they are written
/// with its RELEASE and the batch COMMIT, in one call on SQLite) fails
/// alone.
pub async fn group_commit_isolates_a_request_whose_last_rows_fail(
    b: Backend,
) -> anyhow::Result<()> {
    use idvault_tests::idvault_core::subject::SubjectId;
    let tv = TestVault::start(b).await?;
    bare_subjects(&tv, [100, 101]).await?;
    let key = tv.vault.keys().audit_key(1)?;
    let mut tx = tv.vault.store().begin_audited(None)?;
    tx.pairwise_insert(
        "group-test",
        &[(
            SubjectId::from_slice(&[100; 16]).expect("16"),
            "taken".into(),
        )],
    )?;
    commit_test_leaf(tx, key.expose(), "LastRowsSetup", 200).await?;
    one_of_24_fails(&tv, "last-rows", "LastRowsTest", Spoil::LastRows).await?;
    assert_eq!(
        tv.count("SELECT count(*) FROM pairwise_tokens WHERE partner = 'group-test'")
            .await,
        1
    );
    tv.stop().await
}

/// Batched write sets (requests that only insert): one member of a batch
/// failing (its token is taken) leaves the others committed and none of its
/// own rows, its leaf included. A pairwise token is only stored for a live
/// subject (a match may reveal one deleted since its lookup).
pub async fn write_set_batch_isolates_a_failed_request(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_core::subject::SubjectId;
    use idvault_tests::idvault_server::store::Store;
    let tv = TestVault::start(b).await?;
    let store = tv.vault.store().clone();
    let key = tv.vault.keys().audit_key(1)?;
    let key_bytes = *key.expose();
    // The subjects the tokens name.
    bare_subjects(&tv, (0..48u8).chain([100]).flat_map(|i| [i, i | 0x80])).await?;
    async fn one(store: Store, key: [u8; 32], i: u8, token: String) -> anyhow::Result<()> {
        let mut tx = store.begin_audited(None)?;
        tx.pairwise_insert(
            "group-test",
            &[(SubjectId::from_slice(&[i; 16]).expect("16"), token)],
        )?;
        // A second row of the same request, written only if all of it is.
        tx.pairwise_insert(
            "group-test",
            &[(
                SubjectId::from_slice(&[i | 0x80; 16]).expect("16"),
                format!("second-{i}"),
            )],
        )?;
        commit_test_leaf(tx, &key, "WriteSetTest", i).await
    }
    one(store.clone(), key_bytes, 100, "taken".into()).await?;
    let mut tasks = Vec::new();
    for i in 0..48u8 {
        let token = if i == 7 {
            "taken".to_owned()
        } else {
            format!("tok-{i}")
        };
        tasks.push(tokio::spawn(one(store.clone(), key_bytes, i, token)));
    }
    let mut failed = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        if t.await?.is_err() {
            failed.push(i);
        }
    }
    assert_eq!(failed, [7]);
    assert_eq!(
        tv.count("SELECT count(*) FROM pairwise_tokens WHERE partner = 'group-test'")
            .await,
        2 * 47 + 2,
    );
    assert_eq!(
        tv.count("SELECT count(*) FROM pairwise_tokens WHERE token = 'second-7'")
            .await,
        0
    );
    assert_eq!(
        tv.count("SELECT count(*) FROM audit_log WHERE action = 'WriteSetTest'")
            .await,
        48
    );
    // No subject 0x55: the request commits (its leaf), its token is not
    // stored, and its other row is.
    let mut tx = store.begin_audited(None)?;
    tx.pairwise_insert(
        "group-test",
        &[
            (
                SubjectId::from_slice(&[0x55; 16]).expect("16"),
                "gone".into(),
            ),
            (SubjectId::from_slice(&[1; 16]).expect("16"), "other".into()),
        ],
    )?;
    tx.pairwise_insert(
        "group-test-2",
        &[(SubjectId::from_slice(&[2; 16]).expect("16"), "live".into())],
    )?;
    commit_test_leaf(tx, &key_bytes, "WriteSetTest", 200).await?;
    assert_eq!(
        tv.count("SELECT count(*) FROM pairwise_tokens WHERE token IN ('gone', 'other')")
            .await,
        0,
        "no token for a missing subject; (group-test, 1) already had one"
    );
    assert_eq!(
        tv.count("SELECT count(*) FROM pairwise_tokens WHERE token = 'live'")
            .await,
        1
    );
    assert_eq!(
        tv.count("SELECT count(*) FROM audit_log WHERE action = 'WriteSetTest'")
            .await,
        49
    );
    assert!(matches!(
        tv.verify_audit().await?,
        AuditVerdict::Intact { .. }
    ));
    tv.stop().await
}

/// Admission control: while the writer is held, a flood of calls from one
/// partner gets RESOURCE_EXHAUSTED at once beyond its in-flight limit (no
/// task left waiting), and the refusals are audited coalesced.
pub async fn flood_is_refused_at_once(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    // Hold the writer (a transaction takes it at its first statement): on
    // SQLite every write now queues behind it.
    let mut held = tv.vault.store().begin_audited(None)?;
    let nobody =
        idvault_tests::idvault_core::subject::SubjectId::from_slice(&[0; 16]).expect("16 bytes");
    assert!(held.subject(&nobody).await?.is_none());
    let channel = tv.channel("partner-a").await?;
    let mut calls = Vec::new();
    for i in 0..200 {
        let mut c =
            idvault_tests::idvault_proto::v1::subject_service_client::SubjectServiceClient::new(
                channel.clone(),
            );
        calls.push(tokio::spawn(async move {
            let mut req = tonic::Request::new(CreateSubjectRequest {
                fields: fields(&[("city", &format!("Flood {i}"))]),
            });
            req.set_timeout(std::time::Duration::from_secs(3));
            c.create_subject(req)
                .await
                .map(|_| ())
                .map_err(|e| e.code())
        }));
    }
    // Give the flood time to arrive, then let the writer go.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    drop(held);
    let mut exhausted = 0;
    let mut ok = 0;
    for c in calls {
        match c.await? {
            Ok(()) => ok += 1,
            Err(Code::ResourceExhausted) => exhausted += 1,
            Err(Code::DeadlineExceeded) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(ok <= 64, "at most the in-flight limit ran: {ok}");
    assert!(exhausted >= 200 - 64, "refused at once: {exhausted}");
    assert_eq!(
        tv.count("SELECT count(*) FROM subjects").await,
        ok as i64,
        "every acknowledged write, and only those"
    );
    // The refusals are coalesced leaves, not one each: those past the
    // in-flight limit ("overloaded") and those past the calls an identity
    // may hold open at the edge (the flood is wider than both).
    tv.checkpointed().await?;
    let mut counted = 0;
    let mut details = Vec::new();
    for _ in 0..50 {
        details = sqlx::query_scalar::<_, String>(
            "SELECT detail FROM audit_log WHERE action = 'Refused' \
             AND (detail LIKE 'overloaded%' OR detail LIKE 'too many calls open%')",
        )
        .fetch_all(tv.db())
        .await?;
        counted = details
            .iter()
            .filter_map(|d| TestVault::coalesced_count(d))
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
            .sum::<usize>();
        if counted >= exhausted {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(counted, exhausted, "{details:?}");
    assert!(details.len() <= 4, "coalesced: {details:?}");
    tv.stop().await
}

/// A COMMIT that fails leaves the request's outcome unknown to the vault
/// (a connection lost during it may have committed): the caller gets
/// UNKNOWN saying so, not UNAVAILABLE, which gRPC clients retry on their
/// own and which would then create a second subject. Here PostgreSQL
/// refuses the commit through a deferred trigger on the audit log.
pub async fn failed_commit_reports_an_unknown_outcome(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    sqlx::query(
        "CREATE FUNCTION audit_late() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused at commit'; END $$ LANGUAGE plpgsql",
    )
    .execute(tv.db())
    .await?;
    sqlx::query(
        "CREATE CONSTRAINT TRIGGER audit_late AFTER INSERT ON audit_log \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION audit_late()",
    )
    .execute(tv.db())
    .await?;
    create_reports_an_unknown_outcome(&tv).await?;
    tv.stop().await
}

/// Creates a subject that the database does not keep, and checks the
/// caller is told the outcome is unknown (UNKNOWN, no value echoed) and
/// nothing was stored; returns the client for more calls.
async fn create_reports_an_unknown_outcome(
    tv: &TestVault,
) -> anyhow::Result<
    idvault_tests::idvault_proto::v1::subject_service_client::SubjectServiceClient<
        tonic::transport::Channel,
    >,
> {
    let mut c = tv.subjects("partner-a").await?;
    let e = c
        .create_subject(CreateSubjectRequest {
            fields: fields(&[("city", "Lima")]),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unknown, "{e:?}");
    assert!(
        e.message().contains("outcome is unknown"),
        "{}",
        e.message()
    );
    assert!(!e.message().contains("Lima"), "{}", e.message());
    assert_eq!(tv.count("SELECT count(*) FROM subjects").await, 0);
    Ok(c)
}

/// PostgreSQL: a batch of inserts runs as one statement that commits on
/// its own (no `BEGIN`/`COMMIT`). If its session ends while it runs (a
/// `FATAL`, as a shutdown sends, or the connection lost), the commit may
/// or may not have happened: the request is told its outcome is unknown,
/// and it is not applied again (a retry could write it twice). Here the
/// backend terminates itself from inside the statement (57P01 at
/// `FATAL`), so in fact nothing was stored.
pub async fn lost_connection_during_a_batch_reports_an_unknown_outcome(
    b: Backend,
) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    sqlx::query(
        "CREATE FUNCTION audit_gone() RETURNS trigger AS $$ \
         BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END \
         $$ LANGUAGE plpgsql",
    )
    .execute(tv.db())
    .await?;
    sqlx::query(
        "CREATE TRIGGER audit_gone BEFORE INSERT ON audit_log \
         FOR EACH ROW WHEN (NEW.action = 'CreateSubject') EXECUTE FUNCTION audit_gone()",
    )
    .execute(tv.db())
    .await?;
    let mut c = create_reports_an_unknown_outcome(&tv).await?;
    // The vault goes on: the pool replaces the lost connection.
    sqlx::query("DROP TRIGGER audit_gone ON audit_log")
        .execute(tv.db())
        .await?;
    c.create_subject(CreateSubjectRequest {
        fields: fields(&[("city", "Lima")]),
    })
    .await?;
    assert_eq!(tv.count("SELECT count(*) FROM subjects").await, 1);
    tv.stop().await
}
