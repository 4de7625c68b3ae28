//! Identity bridge import over mTLS: linking, idempotence, fragment merges.

use idvault_tests::idvault_proto::v1::token_service_client::TokenServiceClient;
use idvault_tests::idvault_proto::v1::{
    BridgeIdentifier, BridgeRecord, IdentifierType, ImportBridgeRequest, ImportBridgeResponse,
};
use idvault_tests::{Backend, TestVault};
use tonic::Code;

pub fn rec(id: &str, ids: &[(IdentifierType, &str)]) -> BridgeRecord {
    BridgeRecord {
        record_id: id.into(),
        identifiers: ids
            .iter()
            .map(|(t, v)| BridgeIdentifier {
                r#type: (*t).into(),
                value: (*v).into(),
                sealed_value: Vec::new(),
            })
            .collect(),
        customer_location: "lon-01".into(),
        address_location: String::new(),
    }
}

pub async fn import(
    tv: &TestVault,
    partner: &str,
    batches: Vec<Vec<BridgeRecord>>,
) -> Result<ImportBridgeResponse, tonic::Status> {
    let mut c = TokenServiceClient::new(tv.channel(partner).await.unwrap());
    let reqs: Vec<ImportBridgeRequest> = batches
        .into_iter()
        .map(|records| ImportBridgeRequest {
            records,
            default_country_code: 44,
        })
        .collect();
    c.import_bridge(tokio_stream::iter(reqs))
        .await
        .map(tonic::Response::into_inner)
}

async fn token_of(tv: &TestVault) -> Vec<(String, Option<String>)> {
    sqlx::query_as("SELECT token, alias_of FROM xref_entities ORDER BY token")
        .fetch_all(tv.db())
        .await
        .unwrap()
}

pub async fn import_links_and_is_idempotent(b: Backend) -> anyhow::Result<()> {
    use IdentifierType::*;
    let tv = TestVault::start(b).await?;
    let file = vec![
        vec![
            rec(
                "r1",
                &[
                    (Msisdn, "07700 900001"),
                    (Account, "AC-1"),
                    (Email, "Ann@Example.org"),
                ],
            ),
            rec("r2", &[(Msisdn, "+44 7700 900002")]),
        ],
        vec![
            // Same customer as r1, spelt differently: reuses r1's token.
            rec("r3", &[(Msisdn, "+447700900001"), (Service, "tv-9")]),
            rec("bad", &[(Msisdn, "not a phone")]),
            rec("empty", &[]),
        ],
    ];
    let s = import(&tv, "partner-a", file.clone()).await?;
    assert_eq!(
        (
            s.records,
            s.entities_created,
            s.identifiers_linked,
            s.records_unchanged
        ),
        (5, 2, 5, 0)
    );
    assert!(s.merges.is_empty());
    let rejected: Vec<(u64, &str, &str)> = s
        .rejected
        .iter()
        .map(|e| (e.index, e.record_id.as_str(), e.reason.as_str()))
        .collect();
    assert_eq!(
        rejected,
        vec![
            (3, "bad", "msisdn is not an E.164 number"),
            (4, "empty", "no identifiers")
        ]
    );
    let before = token_of(&tv).await;
    assert_eq!(before.len(), 2);
    assert!(
        before
            .iter()
            .all(|(t, a)| t.starts_with("et_") && a.is_none())
    );

    // The same file again changes nothing.
    let again = import(&tv, "partner-a", file).await?;
    assert_eq!(
        (
            again.entities_created,
            again.identifiers_linked,
            again.records_unchanged
        ),
        (0, 0, 3)
    );
    assert_eq!(token_of(&tv).await, before);
    assert_eq!(tv.count("SELECT count(*) FROM xref_links").await, 5);

    // No cleartext identifier is stored anywhere in the cross-reference tables.
    let ids: Vec<String> = sqlx::query_scalar("SELECT id_type || token FROM xref_links")
        .fetch_all(tv.db())
        .await?;
    assert!(
        ids.iter()
            .all(|r| !r.contains("7700") && !r.contains("AC-1"))
    );
    tv.stop().await
}

pub async fn fragments_merge_into_one_customer(b: Backend) -> anyhow::Result<()> {
    use IdentifierType::*;
    let tv = TestVault::start(b).await?;
    // Three fragments of one customer, seen separately first.
    let s = import(
        &tv,
        "partner-a",
        vec![vec![
            rec("a", &[(Account, "A")]),
            rec("b", &[(Account, "B")]),
            rec("c", &[(Account, "C")]),
        ]],
    )
    .await?;
    assert_eq!(s.entities_created, 3);
    let tokens: Vec<String> = token_of(&tv).await.into_iter().map(|(t, _)| t).collect();
    // Records that chain A–B and B–C reveal one customer.
    let s = import(
        &tv,
        "partner-a",
        vec![vec![
            rec("ab", &[(Account, "A"), (Account, "B")]),
            rec("bc", &[(Account, "B"), (Account, "C")]),
        ]],
    )
    .await?;
    assert_eq!(s.merges.len(), 2, "{:?}", s.merges);
    let survivor = tokens.iter().min().unwrap().clone();
    // Each merge keeps the smallest token it saw; the last one sees them all.
    assert_eq!(s.merges.last().unwrap().surviving_token, survivor);
    let entities = token_of(&tv).await;
    for (t, alias) in &entities {
        if *t == survivor {
            assert_eq!(alias, &None);
        } else {
            assert_eq!(
                alias.as_deref(),
                Some(survivor.as_str()),
                "every fragment is an alias of the survivor"
            );
        }
    }
    // Aliases still resolve, and every link points at the survivor.
    for t in &tokens {
        assert_eq!(
            tv.vault
                .store()
                .xref_resolve("partner-a", t)
                .await?
                .as_deref(),
            Some(survivor.as_str())
        );
    }
    let link_tokens: Vec<String> = sqlx::query_scalar("SELECT DISTINCT token FROM xref_links")
        .fetch_all(tv.db())
        .await?;
    assert_eq!(link_tokens, vec![survivor.clone()]);
    // Importing the merge records again is a no-op.
    let s = import(
        &tv,
        "partner-a",
        vec![vec![rec("ab", &[(Account, "A"), (Account, "B")])]],
    )
    .await?;
    assert_eq!((s.records_unchanged, s.merges.len()), (1, 0));
    tv.stop().await
}

pub async fn import_needs_the_bridge_role(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let e = import(
        &tv,
        "partner-b",
        vec![vec![rec("x", &[(IdentifierType::Account, "A")])]],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(tv.count("SELECT count(*) FROM xref_entities").await, 0);
    let (action, outcome, _) = tv.last_audit().await;
    assert_eq!(
        (action.as_str(), outcome.as_str()),
        ("ImportBridge", "denied")
    );
    tv.stop().await
}

pub async fn sealed_identifiers_import_like_plain_ones(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_core::SystemRng;
    use idvault_tests::idvault_core::xref::{BridgeSealKey, seal_bridge_identifier};
    let tv = TestVault::start(b).await?;
    import(
        &tv,
        "partner-a",
        vec![vec![rec(
            "plain",
            &[(IdentifierType::Msisdn, "+447700900001")],
        )]],
    )
    .await?;
    let key = tv.vault.keys().bridge_seal_key("partner-a", 1)?;
    let rng = SystemRng::default();
    let sealed = seal_bridge_identifier(
        &key,
        "partner-a",
        idvault_tokenizer::IdentifierType::Msisdn,
        "07700 900001",
        &rng,
    )?;
    let wrong = seal_bridge_identifier(
        &BridgeSealKey::from_bytes([1; 32], 1),
        "partner-a",
        idvault_tokenizer::IdentifierType::Account,
        "X",
        &rng,
    )?;
    let id = |t: IdentifierType, s: Vec<u8>| BridgeIdentifier {
        r#type: t.into(),
        value: String::new(),
        sealed_value: s,
    };
    let recs = vec![
        BridgeRecord {
            record_id: "sealed".into(),
            identifiers: vec![
                id(IdentifierType::Msisdn, sealed.clone()),
                BridgeIdentifier {
                    r#type: IdentifierType::Account.into(),
                    value: "AC-7".into(),
                    sealed_value: Vec::new(),
                },
            ],
            ..Default::default()
        },
        BridgeRecord {
            record_id: "wrong-key".into(),
            identifiers: vec![id(IdentifierType::Account, wrong)],
            ..Default::default()
        },
        // Sealed as an msisdn, presented as an account: the type is bound in.
        BridgeRecord {
            record_id: "wrong-type".into(),
            identifiers: vec![id(IdentifierType::Account, sealed.clone())],
            ..Default::default()
        },
        BridgeRecord {
            record_id: "both".into(),
            identifiers: vec![BridgeIdentifier {
                r#type: IdentifierType::Account.into(),
                value: "A".into(),
                sealed_value: sealed,
            }],
            ..Default::default()
        },
    ];
    let s = import(&tv, "partner-a", vec![recs]).await?;
    // The sealed phone is the plain one: no new entity, the account joins it.
    assert_eq!(
        (s.entities_created, s.identifiers_linked, s.merges.len()),
        (0, 1, 0)
    );
    let reasons: Vec<&str> = s.rejected.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "sealed account does not open with this partner's bridge key",
            "sealed account does not open with this partner's bridge key",
            "identifier with an unknown type, or not exactly one of value and sealed_value"
        ]
    );
    tv.stop().await
}

/// A bridge file sealed for partner-a does not open for partner-b, even
/// though partner-b may import and detokenize: each partner has its own
/// seal key, and the partner is in the associated data. So partner-b
/// cannot turn partner-a's sealed identifiers into plaintext through its
/// own namespace.
pub async fn sealed_bridge_file_opens_only_for_its_partner(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_core::SystemRng;
    use idvault_tests::idvault_core::xref::seal_bridge_identifier;
    // partner-b may import and detokenize too.
    let tv = TestVault::start_with_roles(b, "partner-b", &["bridge.import", "tokens.detokenize"])
        .await?;
    let rng = SystemRng::default();
    let a_key = tv.vault.keys().bridge_seal_key("partner-a", 1)?;
    let sealed = |key, partner| {
        seal_bridge_identifier(
            key,
            partner,
            idvault_tokenizer::IdentifierType::Msisdn,
            "+447700900001",
            &rng,
        )
    };
    let record = |bytes: Vec<u8>| BridgeRecord {
        record_id: "r1".into(),
        identifiers: vec![BridgeIdentifier {
            r#type: IdentifierType::Msisdn.into(),
            value: String::new(),
            sealed_value: bytes,
        }],
        ..Default::default()
    };
    let for_a = sealed(&a_key, "partner-a")?;
    // partner-b replays partner-a's file: refused, nothing linked.
    let s = import(&tv, "partner-b", vec![vec![record(for_a.clone())]]).await?;
    assert_eq!((s.entities_created, s.identifiers_linked), (0, 0));
    assert_eq!(s.rejected.len(), 1);
    // Re-labelled for partner-b under partner-a's key: still refused.
    let relabelled = sealed(&a_key, "partner-b")?;
    let s = import(&tv, "partner-b", vec![vec![record(relabelled)]]).await?;
    assert_eq!(s.rejected.len(), 1);
    // partner-a imports its own file.
    let s = import(&tv, "partner-a", vec![vec![record(for_a)]]).await?;
    assert_eq!((s.entities_created, s.rejected.len()), (1, 0));
    assert_eq!(
        tv.count("SELECT count(*) FROM xref_entities WHERE owner = 'partner-b'")
            .await,
        0
    );
    tv.stop().await
}

/// An ImportBridge stream holds its running summary, so a partner has at
/// most `MAX_STREAMS_PER_PARTNER` open at once: one more is
/// RESOURCE_EXHAUSTED at once, another partner is not affected, and
/// closing one frees its place. The summary keeps the first 1,000 of each
/// list while its totals count them all; a record id that is refused for
/// its length is not echoed; and a message that fails says the stream's
/// earlier messages were imported and stay.
pub async fn import_streams_and_summaries_are_bounded(b: Backend) -> anyhow::Result<()> {
    use IdentifierType::Account;
    use idvault_tests::idvault_server::service::streams::MAX_STREAMS_PER_PARTNER;
    use tokio_stream::wrappers::ReceiverStream;
    let tv = TestVault::start_with_roles(b, "partner-b", &["bridge.import"]).await?;
    let c = TokenServiceClient::new(tv.channel("partner-a").await?);
    let mut senders = Vec::new();
    let mut calls = Vec::new();
    for i in 0..MAX_STREAMS_PER_PARTNER {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(ImportBridgeRequest {
            records: vec![rec(&format!("held-{i}"), &[(Account, &format!("AC-H{i}"))])],
            default_country_code: 44,
        })
        .await?;
        let mut c = c.clone();
        calls.push(tokio::spawn(async move {
            c.import_bridge(ReceiverStream::new(rx)).await
        }));
        senders.push(tx);
    }
    // Each stream's first message is committed (and audited) by the
    // handler that holds its place.
    let held = "SELECT count(*) FROM audit_log WHERE action = 'ImportBridge' AND outcome = 'ok'";
    for _ in 0..1000 {
        if tv.count(held).await >= MAX_STREAMS_PER_PARTNER as i64 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(tv.count(held).await, MAX_STREAMS_PER_PARTNER as i64);
    let one = || vec![vec![rec("one", &[(Account, "AC-1")])]];
    let e = import(&tv, "partner-a", one()).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("ImportBridge streams"),
        "{}",
        e.message()
    );
    import(&tv, "partner-b", one()).await?;
    drop(senders.pop());
    let closed = calls.pop().expect("a call").await??.into_inner();
    assert_eq!(closed.records, 1);
    import(&tv, "partner-a", one()).await?;
    drop(senders);
    for call in calls {
        call.await??;
    }

    // 1,200 refused records in two messages: 1,000 listed, 1,200 counted.
    let empty = |n: usize, from: usize| -> Vec<BridgeRecord> {
        (from..from + n)
            .map(|i| rec(&format!("e{i}"), &[]))
            .collect()
    };
    let r = import(&tv, "partner-a", vec![empty(600, 0), empty(600, 600)]).await?;
    assert_eq!((r.records, r.rejected_total), (1200, 1200));
    assert_eq!(r.rejected.len(), 1000);
    assert_eq!(r.rejected.last().map(|e| e.index), Some(999));
    // A record id too long to accept is not echoed back.
    let long = "x".repeat(5000);
    let r = import(
        &tv,
        "partner-a",
        vec![vec![rec(&long, &[(Account, "AC-L")])]],
    )
    .await?;
    assert_eq!(r.rejected.len(), 1);
    assert!(r.rejected[0].record_id.is_empty());
    assert!(
        r.rejected[0].reason.contains("128"),
        "{}",
        r.rejected[0].reason
    );
    // The second message is refused whole; the first stays imported.
    let too_many: Vec<BridgeRecord> = (0..1001)
        .map(|i| rec(&format!("m{i}"), &[(Account, &format!("AC-M{i}"))]))
        .collect();
    let e = import(
        &tv,
        "partner-a",
        vec![vec![rec("first", &[(Account, "AC-FIRST")])], too_many],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message()
            .contains("earlier messages, 1 records sent, were committed and stay"),
        "{}",
        e.message()
    );
    // So is one of more than 10,000 identifiers (here 1,000 records of 11),
    // and nothing of it is written.
    let wide: Vec<BridgeRecord> = (0..1000)
        .map(|i| {
            let ids: Vec<String> = (0..11).map(|j| format!("AC-W{i}-{j}")).collect();
            let ids: Vec<(IdentifierType, &str)> =
                ids.iter().map(|v| (Account, v.as_str())).collect();
            rec(&format!("w{i}"), &ids)
        })
        .collect();
    let links = tv.count("SELECT count(*) FROM xref_links").await;
    let e = import(&tv, "partner-a", vec![wide]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("10000 identifiers"), "{}", e.message());
    assert_eq!(tv.count("SELECT count(*) FROM xref_links").await, links);
    // A stream cut while reading, after its first message committed (the
    // next one is larger than the vault decodes), says so too.
    let too_big = vec![rec(&"y".repeat(1024 * 1024 + 1), &[(Account, "AC-BIG")])];
    let e = import(
        &tv,
        "partner-a",
        vec![vec![rec("before", &[(Account, "AC-BEFORE")])], too_big],
    )
    .await
    .unwrap_err();
    assert!(
        e.message()
            .contains("earlier messages, 1 records sent, were committed and stay"),
        "{}",
        e.message()
    );
    tv.stop().await
}

/// Concurrent imports of one partner whose records overlap in a chain
/// (each record links accounts a and a + 1, and the callers' records
/// interleave): every import succeeds, every account ends up on one
/// customer, and no entity is an alias of an alias (lookups follow one
/// hop).
pub async fn concurrent_overlapping_imports_merge_into_one(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_server::service::Caller;
    use idvault_tests::idvault_server::service::tokens::bridge::{
        BridgeRecord as BridgeRecordIn, IdValue,
    };
    use idvault_tests::idvault_tokenizer::{IdentifierType::Account, NormalizeOptions};
    const MESSAGES: usize = 4;
    const RECORDS: usize = 50;
    let tv = TestVault::start(b).await?;
    // Called in process, all at once (a partner's four streams would send
    // them in turns): message j of caller k holds accounts 100j + 4r + k
    // and the next one, so the callers' j-th messages chain into each
    // other.
    let vault = tv.vault.clone();
    let mut calls = Vec::new();
    for k in 0..4 {
        for j in 0..MESSAGES {
            let records: Vec<BridgeRecordIn> = (0..RECORDS)
                .map(|r| {
                    let a = 100 * j + 4 * r + k;
                    BridgeRecordIn {
                        record_id: format!("r{k}-{j}-{r}"),
                        identifiers: [a, a + 1]
                            .iter()
                            .map(|n| (Account, IdValue::Plain(format!("AC-{n}"))))
                            .collect(),
                        customer_location: None,
                        address_location: None,
                    }
                })
                .collect();
            let vault = vault.clone();
            calls.push(tokio::spawn(async move {
                let caller = Caller::new("spiffe://idvault.dev/partner/partner-a");
                vault
                    .import_bridge(&caller, records, NormalizeOptions::default())
                    .await
            }));
        }
    }
    for call in calls {
        let r = call.await?;
        assert!(r.is_ok(), "{r:?}");
    }
    let accounts = 100 * (MESSAGES - 1) + 4 * RECORDS + 1;
    let roots: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT COALESCE(e.alias_of, e.token) FROM xref_links l \
         JOIN xref_entities e ON e.token = l.token",
    )
    .fetch_all(tv.db())
    .await?;
    assert_eq!(roots.len(), 1, "{roots:?}");
    assert_eq!(
        tv.count("SELECT count(*) FROM xref_links").await,
        accounts as i64
    );
    let chained = tv
        .count(
            "SELECT count(*) FROM xref_entities a JOIN xref_entities b \
             ON a.alias_of = b.token WHERE b.alias_of IS NOT NULL",
        )
        .await;
    assert_eq!(chained, 0);
    let mut c = TokenServiceClient::new(tv.channel("partner-a").await?);
    let all = c
        .detokenize(idvault_tests::idvault_proto::v1::DetokenizeRequest {
            token: roots[0].clone(),
        })
        .await?
        .into_inner();
    assert_eq!(all.identifiers.len(), accounts);
    tv.stop().await
}

/// On PostgreSQL an import first takes its owner's transaction lock, so
/// two imports of one partner never read each other's links half changed
/// (they would merge on stale reads, leaving an alias of an alias, or
/// collide on one new link). Held from outside, the lock holds up an
/// import of its owner until released, and no other partner's.
pub async fn imports_of_one_owner_wait_for_each_other(b: Backend) -> anyhow::Result<()> {
    use IdentifierType::Account;
    use idvault_tests::idvault_server::store::xref_import_lock;
    let tv = TestVault::start_with_roles(b, "partner-b", &["bridge.import"]).await?;
    let (class, key) = xref_import_lock("partner-a");
    let mut held = tv.db().begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(class)
        .bind(key)
        .execute(&mut *held)
        .await?;
    let c = TokenServiceClient::new(tv.channel("partner-a").await?);
    let waiting = tokio::spawn(async move {
        let mut c = c;
        c.import_bridge(tokio_stream::iter(vec![ImportBridgeRequest {
            records: vec![rec("w1", &[(Account, "AC-W1")])],
            default_country_code: 44,
        }]))
        .await
    });
    import(
        &tv,
        "partner-b",
        vec![vec![rec("b1", &[(Account, "AC-B1")])]],
    )
    .await?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "partner-a's import ran under its lock"
    );
    held.commit().await?;
    let done = waiting.await??.into_inner();
    assert_eq!(done.identifiers_linked, 1);
    tv.stop().await
}

/// A customer holds at most `MAX_ENTITY_LINKS` identifiers: a record whose
/// links would take it past that is refused (and writes nothing), so one
/// detokenization stays bounded; a customer found past it anyway (rows
/// written behind the vault's back) is refused with RESOURCE_EXHAUSTED
/// instead of being read whole.
pub async fn a_customer_holds_a_bounded_number_of_identifiers(b: Backend) -> anyhow::Result<()> {
    use IdentifierType::Account;
    use idvault_tests::idvault_server::service::tokens::bridge::{
        MAX_ENTITY_LINKS, MAX_RECORD_IDENTIFIERS,
    };
    let tv = TestVault::start(b).await?;
    // Each record brings the previous record's last account and new ones
    // (the record's maximum), so one customer grows until the cap.
    let per = MAX_RECORD_IDENTIFIERS - 1;
    let fits = usize::try_from(MAX_ENTITY_LINKS)? - 1;
    let mut held = 1;
    let mut next = 0;
    let mut records = Vec::new();
    while held + per <= fits {
        let accounts: Vec<String> = (next..=next + per).map(|i| format!("CAP-{i}")).collect();
        let ids: Vec<(IdentifierType, &str)> =
            accounts.iter().map(|a| (Account, a.as_str())).collect();
        records.push(rec(&format!("r{}", records.len()), &ids));
        next += per;
        held += per;
    }
    let r = import(&tv, "partner-a", vec![records]).await?;
    assert!(r.rejected.is_empty(), "{:?}", r.rejected);
    let linked = tv.count("SELECT count(*) FROM xref_links").await;
    assert_eq!(linked, held as i64);
    // The customer's token, and one more record that would pass the cap.
    let (token,): (String,) =
        sqlx::query_as("SELECT token FROM xref_entities WHERE alias_of IS NULL")
            .fetch_one(tv.db())
            .await?;
    let over: Vec<String> = (next..=next + per).map(|i| format!("CAP-{i}")).collect();
    let ids: Vec<(IdentifierType, &str)> = over.iter().map(|a| (Account, a.as_str())).collect();
    let r = import(&tv, "partner-a", vec![vec![rec("too-many", &ids)]]).await?;
    assert_eq!(r.rejected.len(), 1, "{r:?}");
    assert_eq!(r.rejected[0].record_id, "too-many");
    assert!(
        r.rejected[0].reason.contains("more than 1000 identifiers"),
        "{:?}",
        r.rejected[0]
    );
    assert_eq!(tv.count("SELECT count(*) FROM xref_links").await, linked);
    // Exactly to the cap: taken; one more, in the same batch (counted
    // with the batch's own links): refused.
    let cap = usize::try_from(MAX_ENTITY_LINKS)?;
    let upto: Vec<String> = (next..next + 1 + cap - held)
        .map(|i| format!("CAP-{i}"))
        .collect();
    next += cap - held;
    let ids: Vec<(IdentifierType, &str)> = upto.iter().map(|a| (Account, a.as_str())).collect();
    let to_the_cap = rec("to-the-cap", &ids);
    let added = cap - held;
    let held = cap;
    let one_more = [format!("CAP-{next}"), format!("CAP-{}", next + 1)];
    let ids: Vec<(IdentifierType, &str)> = one_more.iter().map(|a| (Account, a.as_str())).collect();
    let r = import(
        &tv,
        "partner-a",
        vec![vec![to_the_cap, rec("one-more", &ids)]],
    )
    .await?;
    assert_eq!(r.rejected.len(), 1, "{r:?}");
    assert_eq!(r.rejected[0].record_id, "one-more");
    assert_eq!(r.identifiers_linked, added as u64);
    // Two customers each under the cap are not merged past it.
    let other: Vec<String> = (0..per + 1).map(|i| format!("OTHER-{i}")).collect();
    let ids: Vec<(IdentifierType, &str)> = other.iter().map(|a| (Account, a.as_str())).collect();
    let r = import(&tv, "partner-a", vec![vec![rec("other", &ids)]]).await?;
    assert!(r.rejected.is_empty(), "{:?}", r.rejected);
    let bridge = ["CAP-0".to_owned(), "OTHER-0".to_owned()];
    let ids: Vec<(IdentifierType, &str)> = bridge.iter().map(|a| (Account, a.as_str())).collect();
    let r = import(&tv, "partner-a", vec![vec![rec("merge", &ids)]]).await?;
    assert_eq!(r.rejected.len(), 1, "{r:?}");
    assert!(r.merges.is_empty(), "{r:?}");
    // Answered whole at the cap.
    let mut c = TokenServiceClient::new(tv.channel("partner-a").await?);
    let detok = |t: String| idvault_tests::idvault_proto::v1::DetokenizeRequest { token: t };
    let all = c.detokenize(detok(token.clone())).await?.into_inner();
    assert_eq!(all.identifiers.len(), held);
    // A database writer copies links onto the customer past the cap.
    let copy = match b {
        Backend::Sqlite => {
            "INSERT INTO xref_links (blind_index, key_version, id_type, owner, token, sealed) \
             SELECT randomblob(32), key_version, id_type, owner, token, sealed FROM xref_links"
        }
        Backend::Postgres => {
            "INSERT INTO xref_links (blind_index, key_version, id_type, owner, token, sealed) \
             SELECT sha256(blind_index || 'copy'::bytea), key_version, id_type, owner, token, \
             sealed FROM xref_links"
        }
    };
    sqlx::query(copy).execute(tv.db()).await?;
    let e = c.detokenize(detok(token)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    tv.stop().await
}
