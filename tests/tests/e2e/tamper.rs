//! Tampering with stored packets is detected and the broken link named.

use idvault_tests::idvault_core::subject::SubjectId;
use idvault_tests::idvault_proto::v1::{
    ChainBreakReason, UpdateSubjectRequest, VerifySubjectChainRequest, VerifySubjectChainResponse,
};
use idvault_tests::{Backend, TestVault};

use crate::subjects::{create, fields};

async fn three_packets(tv: &TestVault) -> anyhow::Result<(String, SubjectId)> {
    let id = create(
        tv,
        "partner-a",
        &[("given_name", "Grace"), ("family_name", "Hopper")],
    )
    .await?;
    tv.subjects("partner-a")
        .await?
        .update_subject(UpdateSubjectRequest {
            subject_id: id.clone(),
            fields: fields(&[("city", "Arlington")]),
        })
        .await?;
    let sid = SubjectId::parse(&id)?;
    Ok((id, sid))
}

async fn delete_packet(tv: &TestVault, sid: &SubjectId, seq: i64) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM packets WHERE subject_id = $1 AND seq = $2")
        .bind(sid.as_bytes().to_vec())
        .bind(seq)
        .execute(tv.db())
        .await?;
    Ok(())
}

/// Flips one bit of packet `seq`'s ciphertext (before its tag).
async fn flip_ciphertext_byte(tv: &TestVault, sid: &SubjectId, seq: i64) -> anyhow::Result<()> {
    let mut p: Vec<u8> =
        sqlx::query_scalar("SELECT packet FROM packets WHERE subject_id = $1 AND seq = $2")
            .bind(sid.as_bytes().to_vec())
            .bind(seq)
            .fetch_one(tv.db())
            .await?;
    let last = p.len() - 20; // inside the ciphertext, before the tag
    p[last] ^= 0x01;
    sqlx::query("UPDATE packets SET packet = $1 WHERE subject_id = $2 AND seq = $3")
        .bind(p)
        .bind(sid.as_bytes().to_vec())
        .bind(seq)
        .execute(tv.db())
        .await?;
    Ok(())
}

async fn verify(tv: &TestVault, id: &str) -> anyhow::Result<VerifySubjectChainResponse> {
    Ok(tv
        .subjects("partner-a")
        .await?
        .verify_subject_chain(VerifySubjectChainRequest {
            subject_id: id.into(),
        })
        .await?
        .into_inner())
}

pub async fn flipped_ciphertext_byte(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let (id, sid) = three_packets(&tv).await?;
    flip_ciphertext_byte(&tv, &sid, 2).await?;
    let v = verify(&tv, &id).await?;
    assert!(!v.intact);
    assert_eq!(v.first_broken_sequence, Some(2));
    assert_eq!(v.reason(), ChainBreakReason::DecryptionFailed);
    assert_eq!(v.packets_checked, 1);
    tv.stop().await
}

pub async fn packet_moved_to_other_subject(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let (a, aid) = three_packets(&tv).await?;
    let (bsub, bid) = three_packets(&tv).await?;
    // Replace B's packet 2 with A's packet 2.
    delete_packet(&tv, &bid, 2).await?;
    sqlx::query("UPDATE packets SET subject_id = $1 WHERE subject_id = $2 AND seq = 2")
        .bind(bid.as_bytes().to_vec())
        .bind(aid.as_bytes().to_vec())
        .execute(tv.db())
        .await?;
    let v = verify(&tv, &bsub).await?;
    assert_eq!(
        (v.first_broken_sequence, v.reason()),
        (Some(2), ChainBreakReason::WrongSubject)
    );
    let v = verify(&tv, &a).await?;
    assert_eq!(
        (v.first_broken_sequence, v.reason()),
        (Some(2), ChainBreakReason::SequenceGap)
    );
    tv.stop().await
}

pub async fn middle_packet_deleted(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let (id, sid) = three_packets(&tv).await?;
    delete_packet(&tv, &sid, 2).await?;
    let v = verify(&tv, &id).await?;
    assert_eq!(
        (v.first_broken_sequence, v.reason()),
        (Some(2), ChainBreakReason::SequenceGap)
    );
    // Deleting the newest packet is caught by the stored head.
    delete_packet(&tv, &sid, 3).await?;
    let v = verify(&tv, &id).await?;
    assert_eq!(
        (v.first_broken_sequence, v.reason()),
        (Some(2), ChainBreakReason::HeadMismatch)
    );
    tv.stop().await
}

/// A history longer than a page of the snapshot read (256 packets) is
/// checked page by page: intact, every packet counted; a packet flipped
/// on a later page is named. A partner runs at most two verifications at
/// once: a third waits its turn (here past its deadline), and runs once
/// one ends.
pub async fn long_chain_is_checked_a_page_at_a_time(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_server::service::streams::MAX_CHAIN_CHECKS_PER_PARTNER;
    let tv = TestVault::start(b).await?;
    let id = create(&tv, "partner-a", &[("city", "Quito")]).await?;
    let sid = SubjectId::parse(&id)?;
    let mut c = tv.subjects("partner-a").await?;
    for i in 0..100 {
        c.update_subject(UpdateSubjectRequest {
            subject_id: id.clone(),
            fields: fields(&[
                ("city", format!("City {i}").as_str()),
                ("given_name", format!("Name {i}").as_str()),
                ("family_name", format!("Family {i}").as_str()),
            ]),
        })
        .await?;
    }
    let v = verify(&tv, &id).await?;
    assert!(v.intact, "{v:?}");
    assert_eq!(v.packets_checked, 301);

    // With the partner's places all taken, a verification waits its turn:
    // here until its 1 s deadline, and nothing is done.
    let mut held = Vec::new();
    for _ in 0..MAX_CHAIN_CHECKS_PER_PARTNER {
        held.push(tv.vault.chain_check_slot("partner-a", None).await?);
    }
    let checks = "SELECT count(*) FROM audit_log WHERE action = 'VerifySubjectChain'";
    let before = tv.count(checks).await;
    let mut late = tonic::Request::new(VerifySubjectChainRequest {
        subject_id: id.clone(),
    });
    late.set_timeout(std::time::Duration::from_secs(1));
    let e = tv
        .subjects("partner-a")
        .await?
        .verify_subject_chain(late)
        .await
        .unwrap_err();
    // The vault's DEADLINE_EXCEEDED, or the client's own timeout firing
    // first (tonic enforces the deadline it sends).
    assert!(
        matches!(
            e.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{e:?}"
    );
    assert_eq!(tv.count(checks).await, before, "nothing was done");
    // Another partner's places are its own.
    drop(tv.vault.chain_check_slot("partner-b", None).await?);
    // A place freed, the next one runs.
    held.pop();
    assert!(verify(&tv, &id).await?.intact);
    drop(held);

    flip_ciphertext_byte(&tv, &sid, 300).await?;
    let v = verify(&tv, &id).await?;
    assert!(!v.intact);
    assert_eq!(v.first_broken_sequence, Some(300));
    assert_eq!(v.reason(), ChainBreakReason::DecryptionFailed);
    assert_eq!(v.packets_checked, 299);
    tv.stop().await
}

/// A packet row relabelled as another field (its `field_name` column, by
/// which a field's newest packet is found, no longer the field its
/// authenticated header names) is a broken link: otherwise the older value
/// of the field would be served as the newest, unseen by the chain.
pub async fn packet_relabelled_as_another_field(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let (id, sid) = three_packets(&tv).await?;
    sqlx::query("UPDATE packets SET field_name = 'given_name' WHERE subject_id = $1 AND seq = 3")
        .bind(sid.as_bytes().to_vec())
        .execute(tv.db())
        .await?;
    let v = verify(&tv, &id).await?;
    assert!(!v.intact);
    assert_eq!(v.first_broken_sequence, Some(3));
    assert_eq!(v.reason(), ChainBreakReason::Malformed);
    assert_eq!(v.packets_checked, 2);
    tv.stop().await
}
