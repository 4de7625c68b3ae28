//! Blind matching over mTLS: pairwise tokens, refusals, rate limits,
//! deletion, updates, backfill of a new match domain, dataset linking.

use idvault_tests::idvault_core::subject::SubjectId;
use idvault_tests::idvault_proto::v1::match_service_client::MatchServiceClient;
use idvault_tests::idvault_proto::v1::{
    AgreementLevel, CreateSubjectRequest, DeleteSubjectRequest, Field, LinkOptions, LinkRecord,
    LinkRequest, LinkResponse, MatchBatchRequest, MatchCandidate, MatchQuery, MatchRequest,
    UpdateSubjectRequest,
};
use idvault_tests::{Backend, TestVault};
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

fn fields(f: &[(&str, &str)]) -> Vec<Field> {
    f.iter()
        .map(|(n, v)| Field {
            name: (*n).into(),
            value: (*v).into(),
        })
        .collect()
}

const ADA: &[(&str, &str)] = &[
    ("given_name", "William"),
    ("family_name", "Smith"),
    ("date_of_birth", "1990-03-07"),
    ("phone", "07700 900123"),
    ("email", "w.smith+bank@gmail.com"),
    ("postcode", "SW1A 1AA"),
    ("city", "London"),
];

/// Nickname, transposed letters, month-first date, international phone.
const ADA_AS_SEEN_ELSEWHERE: &[(&str, &str)] = &[
    ("given_name", "Bill"),
    ("family_name", "Smtih"),
    ("date_of_birth", "03/07/1990"),
    ("phone", "+44 7700 900123"),
];

async fn client(tv: &TestVault, partner: &str) -> MatchServiceClient<Channel> {
    MatchServiceClient::new(tv.channel(partner).await.unwrap())
}

async fn create(tv: &TestVault, partner: &str, f: &[(&str, &str)]) -> (String, String) {
    let r = tv
        .subjects(partner)
        .await
        .unwrap()
        .create_subject(CreateSubjectRequest { fields: fields(f) })
        .await
        .unwrap()
        .into_inner();
    (r.subject_id, r.pairwise_token)
}

async fn query(
    c: &mut MatchServiceClient<Channel>,
    f: &[(&str, &str)],
) -> Result<Vec<MatchCandidate>, tonic::Status> {
    Ok(c.r#match(MatchRequest {
        query: Some(MatchQuery {
            fields: fields(f),
            max_results: 3,
            ..Default::default()
        }),
    })
    .await?
    .into_inner()
    .candidates)
}

/// Every text column of the audit log, concatenated per row.
async fn audit_text(tv: &TestVault) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT actor || ' ' || action || ' ' || coalesce(subject, '-') || ' ' || outcome || ' ' || detail FROM audit_log ORDER BY id",
    )
    .fetch_all(tv.db())
    .await
    .unwrap()
}

fn assert_no_pii(haystack: &str, values: &[(&str, &str)]) {
    let h = haystack.to_lowercase();
    for (_, v) in values {
        // Short numbers could occur by chance in ids and hashes: skip them.
        let words = v
            .split([' ', '/', '-', '+', '@', '.'])
            .filter(|w| w.len() >= 4)
            .filter(|w| w.len() >= 6 || !w.bytes().all(|b| b.is_ascii_digit()));
        for word in words {
            assert!(!h.contains(&word.to_lowercase()), "'{word}' leaked");
        }
    }
}

pub async fn same_person_gets_a_pairwise_token_per_partner(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let (_, token_a) = create(&tv, "partner-a", ADA).await;
    assert!(
        token_a.starts_with("pw_") && token_a.len() == 29,
        "{token_a}"
    );
    create(
        &tv,
        "partner-a",
        &[
            ("given_name", "Grace"),
            ("family_name", "Hopper"),
            ("date_of_birth", "1906-12-09"),
        ],
    )
    .await;

    let mut a = client(&tv, "partner-a").await;
    let found = query(&mut a, ADA_AS_SEEN_ELSEWHERE).await?;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0].pairwise_token, token_a,
        "creator gets its own token"
    );
    assert!(found[0].score > 0.99, "{found:?}");
    let level = |c: &MatchCandidate, f: &str| {
        c.agreements
            .iter()
            .find(|a| a.field == f)
            .map(|a| a.level())
    };
    assert_eq!(
        level(&found[0], "given_name"),
        Some(AgreementLevel::Nickname)
    );
    assert_eq!(
        level(&found[0], "family_name"),
        Some(AgreementLevel::Similar)
    );
    assert_eq!(
        level(&found[0], "date_of_birth"),
        Some(AgreementLevel::Swapped)
    );
    assert_eq!(level(&found[0], "phone"), Some(AgreementLevel::Exact));

    let mut bq = client(&tv, "partner-b").await;
    let first = query(&mut bq, ADA_AS_SEEN_ELSEWHERE).await?;
    let again = query(&mut bq, &[("email", "WSmith@googlemail.com")]).await?;
    assert_eq!(first.len(), 1);
    assert!(first[0].pairwise_token.starts_with("pw_"));
    assert_ne!(
        first[0].pairwise_token, token_a,
        "partners get unrelated tokens"
    );
    assert_eq!(
        again[0].pairwise_token, first[0].pairwise_token,
        "stable per partner"
    );

    // Somebody else entirely: no candidate.
    let none = query(
        &mut bq,
        &[
            ("given_name", "Alan"),
            ("family_name", "Turing"),
            ("date_of_birth", "1912-06-23"),
        ],
    )
    .await?;
    assert!(none.is_empty(), "{none:?}");

    // Neither answers nor audit records carry personal data.
    let wire = [first.clone(), found.clone()]
        .concat()
        .iter()
        .map(|c| format!("{:?}{}", c, String::from_utf8_lossy(&c.encode_to_vec())))
        .collect::<String>();
    assert_no_pii(&wire, ADA);
    assert_no_pii(&wire, ADA_AS_SEEN_ELSEWHERE);
    let audit = audit_text(&tv).await.join("\n");
    assert_no_pii(&audit, ADA);
    assert_no_pii(&audit, ADA_AS_SEEN_ELSEWHERE);
    assert!(
        !audit.contains(&token_a),
        "tokens stay out of the audit log"
    );
    let matches = audit.lines().filter(|l| l.contains(" Match - ok ")).count();
    assert_eq!(matches, 4, "every query is audited:\n{audit}");
    // Partner-b's own records, which it may read back, do not give it the
    // vault's id of the person it was answered with (it could join its
    // records with partner-a's through it); the vault's record does.
    let ada: String = sqlx::query_scalar(
        "SELECT subject FROM audit_log WHERE action = 'CreateSubject' ORDER BY id LIMIT 1",
    )
    .fetch_one(tv.db())
    .await?;
    let own: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT leaf FROM audit_log WHERE actor = 'spiffe://idvault.dev/partner/partner-b'",
    )
    .fetch_all(tv.db())
    .await?;
    assert_eq!(own.len(), 3);
    assert!(
        own.iter()
            .all(|l| !String::from_utf8_lossy(l).contains(&ada))
    );
    // With the key, the operator finds the three answers that revealed
    // Ada (partner-a's one, partner-b's two), and no other.
    tv.checkpointed().await?;
    let report = tv.vault.audit_revealed(&SubjectId::parse(&ada)?).await?;
    assert_eq!((report.bad_mac, report.unsearchable), (0, 0));
    let revealed = report.found;
    let who: Vec<&str> = revealed.iter().map(|r| r.actor.as_str()).collect();
    assert_eq!(
        who,
        [
            "spiffe://idvault.dev/partner/partner-a",
            "spiffe://idvault.dev/partner/partner-b",
            "spiffe://idvault.dev/partner/partner-b"
        ],
        "{revealed:?}"
    );
    // A database writer planting a record of the earlier form (the id in
    // clear, no key needed) is not believed: its MAC fails, and it counts.
    let planted = idvault_tests::idvault_core::tlog::leaf::AuditLeaf {
        time_ms: 1,
        actor: "spiffe://idvault.dev/partner/partner-b".into(),
        action: "Match".into(),
        subject: None,
        outcome: "ok".into(),
        detail: format!("queries=1 refused=0 matched=1 subjects=[{ada}]"),
        policies: Vec::new(),
        request_id: [9; 16],
        head: None,
    };
    sqlx::query(
        "INSERT INTO audit_log (time_ms, actor, action, subject, outcome, detail, request_id, \
         idx, leaf, key_version, mac) VALUES (1, $1, 'Match', NULL, 'ok', $2, $3, 1000000, $4, 1, $5)",
    )
    .bind(planted.actor.clone())
    .bind(planted.detail.clone())
    .bind(planted.request_id.to_vec())
    .bind(planted.encode())
    .bind(vec![0u8; 32])
    .execute(tv.db())
    .await?;
    let report = tv.vault.audit_revealed(&SubjectId::parse(&ada)?).await?;
    assert_eq!((report.found.len(), report.bad_mac), (3, 1), "{report:?}");
    tv.stop().await
}

/// Concurrent first answers about one subject to one partner: each
/// request whose lookup found no token makes one, one of them is stored,
/// and every answer must carry that one (each reads back the stored token
/// after its commit). Answering with the token a request made itself would
/// give the partner several tokens for one person.
pub async fn concurrent_first_answers_share_one_token(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let (_, token_a) = create(&tv, "partner-a", ADA).await;
    let bq = client(&tv, "partner-b").await;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let mut c = bq.clone();
        calls.spawn(async move { query(&mut c, ADA_AS_SEEN_ELSEWHERE).await });
    }
    let mut tokens = Vec::new();
    while let Some(r) = calls.join_next().await {
        let found = r??;
        assert_eq!(found.len(), 1, "{found:?}");
        tokens.push(found[0].pairwise_token.clone());
    }
    tokens.sort();
    tokens.dedup();
    assert_eq!(
        tokens.len(),
        1,
        "one token per partner and person: {tokens:?}"
    );
    assert_ne!(tokens[0], token_a, "partner-b's own token");
    let mut bq = bq;
    let later = query(&mut bq, ADA_AS_SEEN_ELSEWHERE).await?;
    assert_eq!(later.len(), 1, "{later:?}");
    assert_eq!(later[0].pairwise_token, tokens[0], "the stored one");
    tv.stop().await
}

/// A person whose deletion is under way (its subject row held FOR
/// UPDATE, as a deletion's DELETE holds it until its transaction ends)
/// stalls nobody: a partner's first answer about them, whose token insert
/// joins a batch of every partner's writes, does not wait for it, and
/// neither does another partner's create in that batch. The person is not
/// answered meanwhile; once the row is free again, they are. On SQLite the
/// one writer orders everything, so only the answers are checked there.
pub async fn a_deletion_under_way_stalls_no_batch(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let (ada, _) = create(&tv, "partner-a", ADA).await;
    let mut bq = client(&tv, "partner-b").await;
    let mut held = tv.db().begin().await?;
    if b == Backend::Postgres {
        sqlx::query("SELECT subject_id FROM subjects WHERE subject_id = $1 FOR UPDATE")
            .bind(SubjectId::parse(&ada)?.as_bytes().to_vec())
            .fetch_one(&mut *held)
            .await?;
    }
    let within = std::time::Duration::from_secs(10);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let mut c = bq.clone();
        calls.spawn(async move {
            query(&mut c, ADA_AS_SEEN_ELSEWHERE)
                .await
                .map_err(anyhow::Error::from)
        });
    }
    for n in 0..4 {
        let name = format!("Other{n}");
        let mut subjects = tv.subjects("partner-a").await?;
        calls.spawn(async move {
            subjects
                .create_subject(CreateSubjectRequest {
                    fields: fields(&[("given_name", "Grace"), ("family_name", &name)]),
                })
                .await
                .map(|_| Vec::<MatchCandidate>::new())
                .map_err(anyhow::Error::from)
        });
    }
    let answered = tokio::time::timeout(within, async {
        let mut out = Vec::new();
        while let Some(r) = calls.join_next().await {
            out.push(r);
        }
        out
    })
    .await
    .map_err(|_| anyhow::anyhow!("a batch waited for the deletion under way"))?;
    for r in answered {
        let found = r??;
        if b == Backend::Postgres {
            assert!(
                found.is_empty(),
                "answered with a person being deleted: {found:?}"
            );
        }
    }
    held.rollback().await?;
    let later = query(&mut bq, ADA_AS_SEEN_ELSEWHERE).await?;
    assert_eq!(later.len(), 1, "{later:?}");
    tv.stop().await
}

/// The first page of candidates is ranked by blocking hits alone, and a
/// candidate ranked below it can still score best. Nine people share the
/// query's names, e-mail and phone (exact blocking hits that rank them
/// first) and disagree on everything else; the person sought has no
/// e-mail or phone on file, ranks below all nine, and agrees on every
/// other field. The vault must read past the first page of eight to
/// answer with them (this fails when it stops at that page).
pub async fn candidates_past_the_first_page_are_read(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let query_fields = [
        ("given_name", "Augusta"),
        ("family_name", "Byron"),
        ("date_of_birth", "1815-12-10"),
        ("email", "augusta.byron@example.org"),
        ("phone", "07700 900456"),
        ("postcode", "W1K 3AB"),
        ("city", "London"),
    ];
    for _ in 0..9 {
        create(
            &tv,
            "partner-a",
            &[
                ("given_name", "Augusta"),
                ("family_name", "Byron"),
                ("date_of_birth", "1962-04-30"),
                ("email", "augusta.byron@example.org"),
                ("phone", "07700 900456"),
                ("postcode", "M1 1AE"),
                ("city", "Manchester"),
            ],
        )
        .await;
    }
    let (_, sought) = create(
        &tv,
        "partner-a",
        &[
            ("given_name", "Augusta"),
            ("family_name", "Byron"),
            ("date_of_birth", "1815-12-10"),
            ("postcode", "W1K 3AB"),
            ("city", "London"),
        ],
    )
    .await;

    let mut a = client(&tv, "partner-a").await;
    let found = a
        .r#match(MatchRequest {
            query: Some(MatchQuery {
                fields: fields(&query_fields),
                max_results: 1,
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .candidates;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].pairwise_token, sought, "{found:?}");
    tv.stop().await
}

/// A deleted subject leaves no index row, signature or token in any
/// domain or of any partner (found by key: migration 0024 dropped the
/// indexes by subject), and another subject's rows all stay; so for a
/// subject stored as before migration 0026 (its id as its storage key)
/// and for one created since.
pub async fn deleted_subject_is_no_longer_matchable(b: Backend) -> anyhow::Result<()> {
    const OTHER: &[(&str, &str)] = &[
        ("given_name", "Grace"),
        ("family_name", "Hopper"),
        ("date_of_birth", "1906-12-09"),
        ("postcode", "10001"),
    ];
    const THIRD: &[(&str, &str)] = &[
        ("given_name", "Alan"),
        ("family_name", "Turing"),
        ("date_of_birth", "1912-06-23"),
        ("postcode", "SK9 5AB"),
    ];
    let tv = TestVault::start(b).await?;
    let counts = async || {
        let mut out = Vec::new();
        for sql in [
            "SELECT COUNT(*) FROM match_index",
            "SELECT COUNT(*) FROM match_subjects",
            "SELECT COUNT(*) FROM pairwise_tokens",
        ] {
            out.push(tv.count(sql).await);
        }
        out
    };
    let (id, _) = create(&tv, "partner-a", ADA).await;
    let mut aq = client(&tv, "partner-a").await;
    let mut bq = client(&tv, "partner-b").await;
    assert_eq!(query(&mut bq, ADA_AS_SEEN_ELSEWHERE).await?.len(), 1);
    let ada = counts().await;
    // Another person, known to both partners, on either side in key order
    // or not: their rows must all stay.
    let (other_id, _) = create(&tv, "partner-a", OTHER).await;
    assert_eq!(query(&mut bq, OTHER).await?.len(), 1);
    assert_eq!(query(&mut aq, OTHER).await?.len(), 1);
    // And a third, another partner's, known to both: its rows outlast
    // both deletions.
    let before_third = counts().await;
    create(&tv, "partner-b", THIRD).await;
    assert_eq!(query(&mut aq, THIRD).await?.len(), 1);
    let both = counts().await;
    let third: Vec<i64> = both.iter().zip(&before_third).map(|(b, a)| b - a).collect();
    // Ada as a subject from before migration 0026 is stored: no key of
    // its own, every row under its id; still found.
    let ada_bytes = SubjectId::parse(&id)
        .expect("subject id")
        .as_bytes()
        .to_vec();
    for sql in [
        "UPDATE subjects SET subject_key = NULL WHERE subject_id = $1",
        "UPDATE packets SET subject_key = subject_id WHERE subject_id = $1",
        "UPDATE match_index SET subject_key = subject_id WHERE subject_id = $1",
        "UPDATE match_subjects SET subject_key = subject_id WHERE subject_id = $1",
        "UPDATE pairwise_tokens SET subject_key = subject_id WHERE subject_id = $1",
    ] {
        sqlx::query(sql)
            .bind(ada_bytes.clone())
            .execute(tv.db())
            .await?;
    }
    assert_eq!(query(&mut bq, ADA_AS_SEEN_ELSEWHERE).await?.len(), 1);
    assert!(
        ada.iter().zip(&both).all(|(a, b)| b > a),
        "{ada:?} {both:?}"
    );
    tv.subjects("partner-a")
        .await?
        .delete_subject(DeleteSubjectRequest { subject_id: id })
        .await?;
    assert!(query(&mut bq, ADA_AS_SEEN_ELSEWHERE).await?.is_empty());
    let left = counts().await;
    let others: Vec<i64> = both.iter().zip(&ada).map(|(b, a)| b - a).collect();
    assert_eq!(left, others, "exactly the deleted subject's rows went");
    assert_eq!(query(&mut aq, OTHER).await?.len(), 1);
    // The other, under a storage key of its own, goes whole too.
    tv.subjects("partner-a")
        .await?
        .delete_subject(DeleteSubjectRequest {
            subject_id: other_id,
        })
        .await?;
    assert_eq!(counts().await, third);
    assert!(query(&mut aq, OTHER).await?.is_empty());
    assert_eq!(query(&mut aq, THIRD).await?.len(), 1);
    tv.stop().await
}

/// Match rows (blocking rows and signatures) not under their subject's
/// own storage key (migration 0027), and all match rows: every row of a
/// subject created since 0026 lies under its version-7 key, not its id.
pub(crate) async fn match_rows_off_key(tv: &TestVault) -> (i64, i64) {
    let mut off = 0;
    let mut all = 0;
    for table in ["match_index", "match_subjects"] {
        let count = async |sql: String| {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                .fetch_one(tv.db())
                .await
                .expect("count")
        };
        off += count(format!(
            "SELECT COUNT(*) FROM {table} m WHERE NOT EXISTS (SELECT 1 FROM subjects s \
             WHERE s.subject_id = m.subject_id AND s.subject_key = m.subject_key \
             AND s.subject_key <> s.subject_id)"
        ))
        .await;
        all += count(format!("SELECT COUNT(*) FROM {table}")).await;
    }
    (off, all)
}

/// An update replaces a subject's match rows, under its storage key.
pub async fn update_moves_the_index(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let (id, token) = create(&tv, "partner-a", ADA).await;
    tv.subjects("partner-a")
        .await?
        .update_subject(UpdateSubjectRequest {
            subject_id: id.clone(),
            fields: fields(&[("phone", "+44 7911 123456")]),
        })
        .await?;
    let mut a = client(&tv, "partner-a").await;
    assert!(
        query(&mut a, &[("phone", "07700 900123")])
            .await?
            .is_empty()
    );
    let now = query(&mut a, &[("phone", "07911 123456")]).await?;
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].pairwise_token, token);
    let (off, all) = match_rows_off_key(&tv).await;
    assert!(all > 0);
    assert_eq!(off, 0, "every match row under its subject's key");
    // The other fields still count after the update (the new phone with
    // the names and date as another partner spelled them).
    const ELSEWHERE_NOW: &[(&str, &str)] = &[
        ("given_name", "Bill"),
        ("family_name", "Smtih"),
        ("date_of_birth", "03/07/1990"),
        ("phone", "+44 7911 123456"),
    ];
    let full = query(&mut a, ELSEWHERE_NOW).await?;
    assert_eq!(full.len(), 1);
    assert!(full[0].agreements.iter().any(|g| g.field == "family_name"));
    // Updating a field that is never matched leaves matching as it was.
    tv.subjects("partner-a")
        .await?
        .update_subject(UpdateSubjectRequest {
            subject_id: id,
            fields: fields(&[("country", "GB")]),
        })
        .await?;
    let after = query(&mut a, ELSEWHERE_NOW).await?;
    assert_eq!(
        after.len(),
        1,
        "still matchable after a non-matchable update"
    );
    assert_eq!(after[0].score, full[0].score);
    tv.stop().await
}

pub async fn thin_queries_are_refused_and_audited(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    create(&tv, "partner-a", ADA).await;
    let mut bq = client(&tv, "partner-b").await;
    for (thin, says) in [
        (&[("family_name", "Smith")][..], "too little information"),
        (
            &[("given_name", "William"), ("family_name", "Smith")][..],
            "too little information",
        ),
        (
            &[
                ("given_name", "William"),
                ("family_name", "Smith"),
                ("city", "London"),
            ][..],
            "identifying field",
        ),
        (&[("account_number", "12345678")][..], "not matchable"),
        (&[("date_of_birth", "not a date")][..], "no matchable field"),
    ] {
        let e = query(&mut bq, thin).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{thin:?}");
        assert!(e.message().contains(says), "{thin:?}: {}", e.message());
        assert!(!e.message().contains("Smith"));
    }
    let audit = audit_text(&tv).await;
    let refused = audit
        .iter()
        .filter(|l| l.contains(" Match - invalid "))
        .count();
    assert_eq!(refused, 5, "{audit:#?}");

    // In a batch, a thin query is refused in place; the others are answered.
    let mut out = bq
        .match_stream(tokio_stream::iter([MatchBatchRequest {
            queries: vec![
                MatchQuery {
                    fields: fields(&[("family_name", "Smith")]),
                    query_id: "thin".into(),
                    ..Default::default()
                },
                MatchQuery {
                    fields: fields(ADA_AS_SEEN_ELSEWHERE),
                    query_id: "good".into(),
                    ..Default::default()
                },
            ],
        }]))
        .await?
        .into_inner();
    let r = out.message().await?.unwrap();
    assert_eq!(r.results.len(), 2);
    assert_eq!(r.results[0].query_id, "thin");
    assert!(r.results[0].refused.contains("too little information"));
    assert!(r.results[0].candidates.is_empty());
    assert_eq!(r.results[1].query_id, "good");
    assert!(r.results[1].refused.is_empty());
    assert_eq!(r.results[1].candidates.len(), 1);
    assert!(out.message().await?.is_none());
    tv.stop().await
}

pub async fn stream_answers_batches_in_order(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let people: Vec<[(String, String); 3]> = (0..30)
        .map(|i| {
            [
                ("family_name".to_owned(), format!("Person{i}")),
                (
                    "date_of_birth".to_owned(),
                    format!("1980-01-{:02}", i % 28 + 1),
                ),
                ("email".to_owned(), format!("p{i}@example.org")),
            ]
        })
        .collect();
    let mut tokens = Vec::new();
    for p in &people {
        let f: Vec<(&str, &str)> = p.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        tokens.push(create(&tv, "partner-a", &f).await.1);
    }
    let batches: Vec<MatchBatchRequest> = people
        .chunks(10)
        .map(|chunk| MatchBatchRequest {
            queries: chunk
                .iter()
                .map(|p| MatchQuery {
                    fields: fields(&[("email", &p[2].1.to_uppercase())]),
                    query_id: p[2].1.clone(),
                    ..Default::default()
                })
                .collect(),
        })
        .collect();
    let mut out = client(&tv, "partner-a")
        .await
        .match_stream(tokio_stream::iter(batches))
        .await?
        .into_inner();
    let mut i = 0;
    while let Some(r) = out.message().await? {
        assert_eq!(r.results.len(), 10);
        for res in r.results {
            assert_eq!(res.query_id, format!("p{i}@example.org"));
            assert_eq!(res.candidates[0].pairwise_token, tokens[i]);
            i += 1;
        }
    }
    assert_eq!(i, 30);
    tv.stop().await
}

pub async fn rate_limit_triggers(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start_config(b, |text| {
        text.replace(
            "name = \"partner-b\"\n",
            "name = \"partner-b\"\nmatch_queries_per_second = 1\nmatch_burst = 2\n",
        )
    })
    .await?;
    create(&tv, "partner-a", ADA).await;
    let mut bq = client(&tv, "partner-b").await;
    query(&mut bq, ADA_AS_SEEN_ELSEWHERE).await?;
    query(&mut bq, ADA_AS_SEEN_ELSEWHERE).await?;
    let e = query(&mut bq, ADA_AS_SEEN_ELSEWHERE).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("rate limit"), "{}", e.message());
    // Other partners have their own budget.
    let mut a = client(&tv, "partner-a").await;
    assert_eq!(query(&mut a, ADA_AS_SEEN_ELSEWHERE).await?.len(), 1);
    // A batch larger than the burst can never be served: refused.
    let e = bq
        .match_stream(tokio_stream::iter([MatchBatchRequest {
            queries: vec![
                MatchQuery {
                    fields: fields(ADA_AS_SEEN_ELSEWHERE),
                    ..Default::default()
                };
                3
            ],
        }]))
        .await?
        .into_inner()
        .message()
        .await
        .unwrap_err();
    assert!(e.message().contains("burst"), "{}", e.message());
    let audit = audit_text(&tv).await;
    assert!(
        audit.iter().any(|l| l.contains(" Match - rate_limited ")),
        "{audit:#?}"
    );
    tv.stop().await
}

pub async fn match_needs_the_match_role(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start_config(b, |text| {
        text.replace(
            "\"subjects.verify\", \"subjects.match\", \"tokens.tokenize\"",
            "\"subjects.verify\", \"tokens.tokenize\"",
        )
    })
    .await?;
    create(&tv, "partner-a", ADA).await;
    let e = query(&mut client(&tv, "partner-b").await, ADA_AS_SEEN_ELSEWHERE)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    tv.stop().await
}

pub async fn new_match_domain_is_backfilled_at_start(b: Backend) -> anyhow::Result<()> {
    let mut tv = TestVault::start(b).await?;
    create(&tv, "partner-a", ADA).await;
    let before: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM match_index WHERE domain = 'partner-b'")
            .fetch_one(tv.db())
            .await?;
    assert!(before > 0);
    tv.edit_config(|t| {
        t.replace(
            "name = \"partner-b\"\n",
            "name = \"partner-b\"\nmatch_domain = \"partner-b-2027\"\n",
        )
    })?;
    tv.restart().await?;
    let old: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM match_index WHERE domain = 'partner-b'")
            .fetch_one(tv.db())
            .await?;
    assert_eq!(old, 0, "an unconfigured domain's indexes are dropped");
    let found = query(&mut client(&tv, "partner-b").await, ADA_AS_SEEN_ELSEWHERE).await?;
    assert_eq!(
        found.len(),
        1,
        "existing subjects are indexed for the new domain"
    );
    tv.stop().await
}

/// A partner holds at most a few MatchStreams at once: the next is
/// refused with RESOURCE_EXHAUSTED (a status, not an empty stream), and a
/// closed stream gives its place back.
pub async fn match_streams_per_partner_are_limited(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_server::service::streams::MAX_STREAMS_PER_PARTNER;
    let tv = TestVault::start(b).await?;
    let mut c = MatchServiceClient::new(tv.channel("partner-a").await?);
    let mut open = Vec::new();
    for _ in 0..MAX_STREAMS_PER_PARTNER {
        let (tx, rx) = tokio::sync::mpsc::channel::<MatchBatchRequest>(1);
        let s = c
            .match_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        open.push((tx, s));
    }
    let e = c
        .match_stream(tokio_stream::iter(Vec::<MatchBatchRequest>::new()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("MatchStream streams"),
        "{}",
        e.message()
    );
    let (tx, mut s) = open.pop().expect("a stream");
    drop(tx);
    while s.message().await?.is_some() {}
    let mut s = c
        .match_stream(tokio_stream::iter(Vec::<MatchBatchRequest>::new()))
        .await?
        .into_inner();
    while s.message().await?.is_some() {}
    // Close the others too: a graceful stop waits for open streams.
    drop(open);
    tv.stop().await
}

const GRACE: &[(&str, &str)] = &[
    ("given_name", "Grace"),
    ("family_name", "Hopper"),
    ("date_of_birth", "1906-12-09"),
    ("email", "grace@navy.example"),
];

fn record(id: &str, f: &[(&str, &str)]) -> LinkRecord {
    LinkRecord {
        record_id: id.to_owned(),
        fields: fields(f),
    }
}

/// Runs one Link job: the records in messages of `per`, the options on
/// the first; returns every response.
async fn link(
    tv: &TestVault,
    partner: &str,
    options: LinkOptions,
    records: Vec<LinkRecord>,
    per: usize,
) -> Result<Vec<LinkResponse>, tonic::Status> {
    let mut msgs: Vec<LinkRequest> = records
        .chunks(per)
        .map(|c| LinkRequest {
            options: None,
            records: c.to_vec(),
        })
        .collect();
    if msgs.is_empty() {
        msgs.push(LinkRequest::default());
    }
    msgs[0].options = Some(options);
    let mut out = client(tv, partner)
        .await
        .link(tokio_stream::iter(msgs))
        .await?
        .into_inner();
    let mut all = Vec::new();
    while let Some(m) = out.message().await? {
        all.push(m);
    }
    Ok(all)
}

/// Both spellings of Ada, Grace with a typo'd family name, a record too
/// thin to answer, and a stranger.
fn dataset() -> Vec<LinkRecord> {
    vec![
        record("r1", ADA_AS_SEEN_ELSEWHERE),
        record("r2", ADA),
        record(
            "r3",
            &[
                ("given_name", "Grace"),
                ("family_name", "Hoper"),
                ("date_of_birth", "1906-12-09"),
                ("email", "grace@navy.example"),
            ],
        ),
        record("r4", &[("family_name", "Smith")]),
        record(
            "r5",
            &[
                ("given_name", "Alan"),
                ("family_name", "Turing"),
                ("date_of_birth", "1912-06-23"),
                ("email", "alan@example.org"),
            ],
        ),
    ]
}

/// A one-to-one job's assignment is decided over the whole job, so what
/// its first records get depends on its last: every chunk's audit record
/// is committed before the first chunk is sent, and a client that reads
/// the first answer and goes away has still had every subject the job
/// revealed recorded.
pub async fn one_to_one_link_records_every_chunk_before_answering(
    b: Backend,
) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let (_, ada_token) = create(&tv, "partner-a", ADA).await;
    // 130 records: two chunks; Ada's record is in the second.
    let mut records: Vec<LinkRecord> = (0..129)
        .map(|i| record(&format!("f{i}"), &[("family_name", "Smith")]))
        .collect();
    records.push(record("ada", ADA));
    let mut msgs: Vec<LinkRequest> = records
        .chunks(100)
        .map(|c| LinkRequest {
            options: None,
            records: c.to_vec(),
        })
        .collect();
    msgs[0].options = Some(LinkOptions {
        one_to_one: true,
        min_score: 0.0,
    });
    let mut out = client(&tv, "partner-a")
        .await
        .link(tokio_stream::iter(msgs))
        .await?
        .into_inner();
    let revealed = "SELECT count(*) FROM audit_log WHERE detail LIKE 'link one_to_one queries%'";
    loop {
        let m = out.message().await?.expect("an answer");
        if !m.results.is_empty() {
            assert_eq!(m.results.len(), 100, "the first chunk");
            break;
        }
    }
    // Before reading on: both chunks are on record already.
    assert_eq!(tv.count(revealed).await, 2);
    drop(out);
    let ada: String = sqlx::query_scalar(
        "SELECT detail FROM audit_log WHERE detail LIKE 'link one_to_one queries=30 %'",
    )
    .fetch_one(tv.db())
    .await?;
    assert!(ada.contains("matched=1"), "{ada}");
    assert!(!ada_token.is_empty());
    tv.stop().await
}

/// A one-to-one job that ends while the writer queue is full waits for
/// room and answers, instead of failing with its answers unsent.
pub async fn one_to_one_link_answers_once_the_writer_has_room(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let (_, ada_token) = create(&tv, "partner-a", ADA).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<LinkRequest>(4);
    tx.send(LinkRequest {
        options: Some(LinkOptions {
            one_to_one: true,
            min_score: 0.0,
        }),
        records: vec![record("ada", ADA)],
    })
    .await?;
    let mut out = client(&tv, "partner-a")
        .await
        .link(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    // The lookup is acknowledged; then every place in the writer queue is
    // taken, and the job ends.
    let ack = out.message().await?.expect("an acknowledgement");
    assert!(ack.results.is_empty() && ack.received == 1);
    let held: Vec<_> = (0..idvault_server::store::WRITE_QUEUE)
        .map(|_| tv.vault.store().begin_audited(None))
        .collect::<Result<_, _>>()?;
    drop(tx);
    let answer = tokio::spawn(async move { out.message().await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!answer.is_finished(), "the answer waits for room");
    drop(held);
    let m = answer.await??.expect("the answer");
    assert_eq!(m.results.len(), 1);
    assert_eq!(m.results[0].pairwise_token, ada_token);
    tv.stop().await
}

pub async fn link_answers_each_record_and_one_to_one_holds(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let (ada, ada_token) = create(&tv, "partner-a", ADA).await;
    let (grace, grace_token) = create(&tv, "partner-a", GRACE).await;

    // Best candidate per record, answered message by message.
    let replies = link(&tv, "partner-a", LinkOptions::default(), dataset(), 2).await?;
    assert_eq!(replies.len(), 3, "one answer per message");
    assert_eq!(replies.last().map(|r| r.received), Some(5));
    let results: Vec<_> = replies.into_iter().flat_map(|r| r.results).collect();
    let got: Vec<(&str, &str, bool)> = results
        .iter()
        .map(|r| {
            (
                r.record_id.as_str(),
                r.pairwise_token.as_str(),
                !r.refused.is_empty(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("r1", ada_token.as_str(), false),
            ("r2", ada_token.as_str(), false),
            ("r3", grace_token.as_str(), false),
            ("r4", "", true),
            ("r5", "", false),
        ]
    );
    assert!(results[3].refused.contains("too little information"));
    assert!(results[2].score > 0.5 && results[4].score == 0.0);
    assert!(
        results[2]
            .agreements
            .iter()
            .any(|a| a.field == "family_name" && a.level() != AgreementLevel::Exact)
    );

    // One-to-one: Ada goes to the better-scoring record (r2, exact) only.
    let before = audit_text(&tv).await.len();
    let replies = link(
        &tv,
        "partner-a",
        LinkOptions {
            one_to_one: true,
            min_score: 0.0,
        },
        dataset(),
        2,
    )
    .await?;
    // Three acknowledgements without results, then the answers.
    assert!(replies[..3].iter().all(|r| r.results.is_empty()));
    assert_eq!(replies[2].received, 5);
    let results: Vec<_> = replies.into_iter().flat_map(|r| r.results).collect();
    let tokens: Vec<&str> = results.iter().map(|r| r.pairwise_token.as_str()).collect();
    assert_eq!(
        tokens,
        vec!["", ada_token.as_str(), grace_token.as_str(), "", ""]
    );
    let ids: Vec<&str> = results.iter().map(|r| r.record_id.as_str()).collect();
    assert_eq!(ids, vec!["r1", "r2", "r3", "r4", "r5"]);
    // The lookups revealed nothing; the answer names exactly the subjects
    // it revealed.
    let audit = audit_text(&tv).await;
    let new = &audit[before..];
    let lookups: Vec<&String> = new.iter().filter(|l| l.contains("link lookup")).collect();
    assert_eq!(lookups.len(), 3, "{new:?}");
    assert!(
        lookups
            .iter()
            .all(|l| !l.contains(&ada) && !l.contains(&grace))
    );
    let answers: Vec<&String> = new
        .iter()
        .filter(|l| l.contains("link one_to_one queries"))
        .collect();
    assert_eq!(answers.len(), 1, "{new:?}");
    assert!(answers[0].contains("queries=5 refused=1 matched=2 revealed=v1:["));
    // The partner's own record, which it may read back, names no subject
    // id, only keyed tags; with the key the operator finds both subjects
    // revealed by it.
    assert!(!answers[0].contains(&ada) && !answers[0].contains(&grace));
    tv.checkpointed().await?;
    let answer: Vec<u8> = sqlx::query_scalar(
        "SELECT request_id FROM audit_log WHERE detail LIKE 'link one_to_one queries%'",
    )
    .fetch_one(tv.db())
    .await?;
    // r1 held Ada too and lost her to r2: the record says so, so a job
    // of many variants of one person shows as probing her.
    assert!(answers[0].contains(" contested=["), "{}", answers[0]);
    for (id, contested) in [(&ada, 1), (&grace, 0)] {
        let report = tv.vault.audit_revealed(&SubjectId::parse(id)?).await?;
        assert!(
            report
                .found
                .iter()
                .any(|r| r.request_id == hex::encode(&answer)
                    && r.actor.ends_with("/partner-a")
                    && r.contested == contested),
            "{id}: {report:?}"
        );
    }
    assert_no_pii(&new.join("\n"), ADA);
    assert_no_pii(&new.join("\n"), GRACE);

    // Another partner gets its own tokens; a bad option ends the stream.
    let other = link(&tv, "partner-b", LinkOptions::default(), dataset(), 5).await?;
    let other_ada = &other[0].results[1].pairwise_token;
    assert!(other_ada.starts_with("pw_") && *other_ada != ada_token);
    let bad = link(
        &tv,
        "partner-a",
        LinkOptions {
            one_to_one: false,
            min_score: 0.2,
        },
        dataset(),
        5,
    )
    .await;
    assert_eq!(bad.map(|_| ()).unwrap_err().code(), Code::InvalidArgument);
    // More than 100 records in one message is refused.
    let many: Vec<LinkRecord> = (0..101).map(|i| record(&i.to_string(), ADA)).collect();
    let err = link(&tv, "partner-a", LinkOptions::default(), many, 101)
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    tv.stop().await
}

/// A vault built under an older index scheme (the first generation's
/// rows, before the new variant kinds) is rebuilt at start: the new kinds
/// are backfilled, so a query that only they can answer (a one-digit typo
/// in the national id, given and family names exchanged) finds its
/// subject after the restart. One built by a newer version is refused.
pub async fn new_variant_kinds_are_backfilled_at_start(b: Backend) -> anyhow::Result<()> {
    let mut tv = TestVault::start(b).await?;
    const LIN: &[(&str, &str)] = &[
        ("given_name", "Wei"),
        ("family_name", "Lindqvist"),
        ("national_id", "QQ123456C"),
        ("postcode", "EH1 1YZ"),
    ];
    const TYPO: &[(&str, &str)] = &[
        ("given_name", "Lindqvist"),
        ("family_name", "Wei"),
        ("national_id", "QQ123465C"),
        ("postcode", "EH1 1YZ"),
    ];
    let (_, token) = create(&tv, "partner-a", LIN).await;
    let mut a = client(&tv, "partner-a").await;
    assert_eq!(query(&mut a, TYPO).await?.len(), 1);
    // A subject whose data key no longer opens (a damaged row) is left
    // out of the rebuild and counted; it does not stop the start.
    let (damaged, _) = create(&tv, "partner-a", ADA).await;
    sqlx::query("UPDATE subjects SET wrapped_dek = $1 WHERE subject_id = $2")
        .bind(vec![0u8; 60])
        .bind(SubjectId::parse(&damaged)?.as_bytes().to_vec())
        .execute(tv.db())
        .await?;
    // What a first-generation vault holds: no rows of the new kinds (the
    // rows are emptied here) and its domains marked with scheme 1.
    sqlx::query("DELETE FROM match_index")
        .execute(tv.db())
        .await?;
    sqlx::query("DELETE FROM match_subjects")
        .execute(tv.db())
        .await?;
    sqlx::query("UPDATE match_domains SET scheme = 1")
        .execute(tv.db())
        .await?;
    tv.restart().await?;
    let schemes: Vec<i64> = sqlx::query_scalar("SELECT scheme FROM match_domains")
        .fetch_all(tv.db())
        .await?;
    assert!(
        !schemes.is_empty()
            && schemes
                .iter()
                .all(|s| *s == idvault_tests::idvault_core::matching::INDEX_SCHEME),
        "{schemes:?}"
    );
    assert_eq!(match_rows_off_key(&tv).await.0, 0, "backfilled by key");
    let mut a = client(&tv, "partner-a").await;
    let found = query(&mut a, TYPO).await?;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].pairwise_token, token);
    let levels: Vec<(String, AgreementLevel)> = found[0]
        .agreements
        .iter()
        .map(|g| (g.field.clone(), g.level()))
        .collect();
    assert!(
        levels.contains(&("national_id".into(), AgreementLevel::Similar)),
        "{levels:?}"
    );
    assert!(
        levels.contains(&("given_name".into(), AgreementLevel::Swapped)),
        "{levels:?}"
    );
    // The rebuild is audited.
    let audit = audit_text(&tv).await.join("\n");
    assert!(
        audit.contains("reindex domain=partner-a cleared_rows="),
        "{audit}"
    );
    assert!(audit.contains(" damaged=1"), "{audit}");
    assert!(query(&mut a, ADA_AS_SEEN_ELSEWHERE).await?.is_empty());
    // Indexes a newer version built are never rebuilt down: this version
    // refuses to start, naming the schemes.
    let newer = idvault_tests::idvault_core::matching::INDEX_SCHEME + 1;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE match_domains SET scheme = {newer}"
    )))
    .execute(tv.db())
    .await?;
    let err = tv.restart().await.unwrap_err();
    let why = format!("{err:#}");
    assert!(
        why.contains(&format!(
            "indexed under index scheme {newer} by a newer idvault; this version writes scheme {}",
            newer - 1
        )),
        "{why}"
    );
    tv.stop().await
}

/// A match domain no longer configured is dropped at start in bounded
/// parts (each its own audited transaction), not in one transaction the
/// size of the domain, and forgotten only once its rows are gone.
pub async fn a_dropped_domain_is_cleared_in_parts(b: Backend) -> anyhow::Result<()> {
    let mut tv = TestVault::start(b).await?;
    // 5,000 index rows and 2,500 signatures of a domain no partner has.
    let subject = match b {
        Backend::Sqlite => "randomblob(16)",
        Backend::Postgres => "decode(md5(i::text || 's'), 'hex')",
    };
    let mac = match b {
        Backend::Sqlite => "randomblob(32)",
        Backend::Postgres => "decode(md5(i::text) || md5(i::text || 'm'), 'hex')",
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO match_index (domain, bidx, subject_id, field, key_version, subject_key) \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) \
         SELECT 'gone', i, {subject}, 1, 1, {subject} FROM n"
    )))
    .execute(tv.db())
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO match_subjects (domain, subject_id, fields, signature, mac_version, mac, \
         subject_key) \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2500) \
         SELECT 'gone', {subject}, 1, {subject}, 1, {mac}, {subject} FROM n"
    )))
    .execute(tv.db())
    .await?;
    sqlx::query("INSERT INTO match_domains (domain, indexed_at_ms, scheme) VALUES ('gone', 1, $1)")
        .bind(idvault_tests::idvault_core::matching::INDEX_SCHEME)
        .execute(tv.db())
        .await?;
    tv.restart().await?;
    let left = tv
        .count("SELECT count(*) FROM match_index WHERE domain = 'gone'")
        .await
        + tv.count("SELECT count(*) FROM match_subjects WHERE domain = 'gone'")
            .await
        + tv.count("SELECT count(*) FROM match_domains WHERE domain = 'gone'")
            .await;
    assert_eq!(left, 0);
    let audit = audit_text(&tv).await;
    let parts = audit
        .iter()
        .filter(|l| l.contains("reindex domain=gone cleared_rows="))
        .count();
    assert!(
        parts >= 3,
        "5,000 rows in parts of 2,000: {parts}\n{audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|l| l.contains("reindex dropped_domain=gone rows=5000")),
        "{audit:#?}"
    );
    // The configured domains are untouched and still answer.
    let (_, token) = create(&tv, "partner-a", ADA).await;
    let mut a = client(&tv, "partner-a").await;
    assert_eq!(query(&mut a, ADA).await?[0].pairwise_token, token);
    tv.stop().await
}

/// `estimate_match_model` learns a domain's weights from its own indexes,
/// stores them sealed and audited, and scores with them; a stored row a
/// database writer edits fails its MAC and the hand-set table is used.
pub async fn estimated_weights_are_sealed_and_used(b: Backend) -> anyhow::Result<()> {
    let mut tv = TestVault::start(b).await?;
    let mut subjects = tv.subjects("partner-a").await?;
    for i in 0..60 {
        let f = [
            ("given_name", ["Ann", "Ben", "Cy", "Dee"][i % 4].to_owned()),
            ("family_name", format!("Family{}", i % 7)),
            (
                "date_of_birth",
                format!("19{:02}-0{}-1{}", 50 + i % 40, 1 + i % 9, i % 10),
            ),
            ("email", format!("person{i}@example.org")),
        ];
        let f: Vec<(&str, &str)> = f.iter().map(|(n, v)| (*n, v.as_str())).collect();
        subjects
            .create_subject(CreateSubjectRequest { fields: fields(&f) })
            .await?;
    }
    let before = query(&mut client(&tv, "partner-a").await, ADA).await?;
    assert!(before.is_empty());
    let (_, token) = create(&tv, "partner-a", ADA).await;
    let prior = query(&mut client(&tv, "partner-a").await, ADA_AS_SEEN_ELSEWHERE).await?;
    // A database writer copies Ada's signature row (its MAC does not cover
    // the storage key) under 20 made-up keys: still one sampled subject.
    let ada_id: Vec<u8> = sqlx::query_scalar(
        "SELECT subject_id FROM subjects ORDER BY created_at_ms DESC, subject_id LIMIT 1",
    )
    .fetch_one(tv.db())
    .await?;
    for i in 0..20u8 {
        sqlx::query(
            "INSERT INTO match_subjects (domain, subject_key, subject_id, fields, signature, mac_version, mac) \
             SELECT domain, $1, subject_id, fields, signature, mac_version, mac FROM match_subjects \
             WHERE domain = 'partner-a' AND subject_id = $2 LIMIT 1",
        )
        .bind(vec![0xA0 ^ i; 16])
        .bind(&ada_id)
        .execute(tv.db())
        .await?;
    }
    let est = tv.vault.estimate_match_model("partner-a", 1000).await?;
    assert_eq!(est.population, 61, "copies of one row are not sampled");
    assert!(est.random_pairs > 0);
    let (action, outcome, detail) = tv.last_audit().await;
    assert_eq!((action.as_str(), outcome.as_str()), ("Match", "ok"));
    assert!(
        detail.starts_with("estimate domain=partner-a subjects=61"),
        "{detail}"
    );
    let reports = tv.vault.match_model_reports().await?;
    let mine = reports
        .iter()
        .find(|r| r.domain == "partner-a")
        .expect("domain");
    assert!(mine.problem.is_none() && mine.estimate.is_some());
    // Scored with the estimate now: still found, score may move.
    let learned = query(&mut client(&tv, "partner-a").await, ADA_AS_SEEN_ELSEWHERE).await?;
    assert_eq!(learned[0].pairwise_token, token);
    assert_eq!(prior[0].pairwise_token, token);
    // A database writer raises the stored date: the MAC no longer holds.
    sqlx::query("UPDATE match_models SET estimated_at_ms = estimated_at_ms + 1")
        .execute(tv.db())
        .await?;
    tv.restart().await?;
    let reports = tv.vault.match_model_reports().await?;
    let mine = reports
        .iter()
        .find(|r| r.domain == "partner-a")
        .expect("domain");
    assert!(mine.estimate.is_none());
    assert!(
        mine.problem
            .as_deref()
            .is_some_and(|p| p.contains("match-model")),
        "{:?}",
        mine.problem
    );
    let after = query(&mut client(&tv, "partner-a").await, ADA_AS_SEEN_ELSEWHERE).await?;
    assert_eq!(after[0].score, prior[0].score, "the hand-set table again");
    // An unknown domain is refused.
    assert!(tv.vault.estimate_match_model("nobody", 10).await.is_err());
    tv.stop().await
}

/// A database writer copies one person's match rows, MAC included, onto
/// another subject and removes the person's own: the query about the
/// person is refused as an integrity failure instead of answering with
/// the other subject's token (which a transaction code would then be
/// sent by). Rows the vault writes again verify.
pub async fn copied_match_rows_name_nobody(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let (ada, _) = create(&tv, "partner-a", ADA).await;
    const OTHER: &[(&str, &str)] = &[
        ("given_name", "Mallory"),
        ("family_name", "Quinn"),
        ("date_of_birth", "1971-01-02"),
        ("email", "mq@example.net"),
    ];
    let (other_id, _) = create(&tv, "partner-a", OTHER).await;
    const GRACE: &[(&str, &str)] = &[
        ("given_name", "Grace"),
        ("family_name", "Hopper"),
        ("date_of_birth", "1906-12-09"),
    ];
    create(&tv, "partner-a", GRACE).await;
    let id = |s: &str| SubjectId::parse(s).expect("subject id").as_bytes().to_vec();
    let (ada, other) = (id(&ada), id(&other_id));
    let mut bq = client(&tv, "partner-b").await;
    assert_eq!(query(&mut bq, ADA_AS_SEEN_ELSEWHERE).await?.len(), 1);
    sqlx::query("DELETE FROM pairwise_tokens WHERE partner = 'partner-b'")
        .execute(tv.db())
        .await?;

    // The copy: signature, presence mask and MAC onto the other subject,
    // the blocking rows beside it, the person's own rows gone.
    sqlx::query(
        "UPDATE match_subjects SET fields = v.fields, signature = v.signature, \
         mac_version = v.mac_version, mac = v.mac \
         FROM (SELECT domain, fields, signature, mac_version, mac FROM match_subjects \
               WHERE subject_id = $1) v \
         WHERE match_subjects.domain = v.domain AND match_subjects.subject_id = $2",
    )
    .bind(ada.clone())
    .bind(other.clone())
    .execute(tv.db())
    .await?;
    sqlx::query(
        "INSERT INTO match_index (domain, bidx, subject_id, field, key_version, subject_key) \
         SELECT domain, bidx, $2, field, key_version, \
         (SELECT COALESCE(subject_key, subject_id) FROM subjects WHERE subject_id = $2) \
         FROM match_index WHERE subject_id = $1",
    )
    .bind(ada.clone())
    .bind(other.clone())
    .execute(tv.db())
    .await?;
    for table in ["match_index", "match_subjects"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE subject_id = $1"
        )))
        .bind(ada.clone())
        .execute(tv.db())
        .await?;
    }
    let refused = query(&mut bq, ADA_AS_SEEN_ELSEWHERE)
        .await
        .expect_err("an answer from a copied row");
    assert_eq!(refused.code(), Code::DataLoss, "{}", refused.message());
    let (action, outcome, detail) = tv.last_audit().await;
    assert_eq!((action.as_str(), outcome.as_str()), ("Match", "error"));
    assert!(
        detail.contains("integrity: match signature row MAC"),
        "{detail}"
    );
    // Nothing was revealed: partner-b holds no token for the other subject.
    let tokens: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM pairwise_tokens WHERE partner = 'partner-b'")
            .fetch_one(tv.db())
            .await?;
    assert_eq!(tokens, 0);
    // In a batch the query is refused in its place, counted in the
    // record, and the others are answered.
    let mut out = bq
        .match_stream(tokio_stream::iter([MatchBatchRequest {
            queries: vec![
                MatchQuery {
                    fields: fields(ADA_AS_SEEN_ELSEWHERE),
                    query_id: "copied".into(),
                    ..Default::default()
                },
                MatchQuery {
                    fields: fields(GRACE),
                    query_id: "honest".into(),
                    ..Default::default()
                },
            ],
        }]))
        .await?
        .into_inner();
    let r = out.message().await?.expect("an answer");
    assert_eq!(r.results.len(), 2);
    assert_eq!(
        r.results[0].refused, "integrity: match signature row MAC",
        "{r:?}"
    );
    assert!(r.results[0].candidates.is_empty());
    assert!(r.results[1].refused.is_empty(), "{r:?}");
    assert_eq!(r.results[1].candidates.len(), 1);
    assert!(out.message().await?.is_none());
    let (action, outcome, detail) = tv.last_audit().await;
    assert_eq!((action.as_str(), outcome.as_str()), ("Match", "ok"));
    assert!(
        detail.starts_with("queries=2 refused=1 matched=1 ") && detail.contains("] integrity=1 "),
        "{detail}"
    );
    let tokens: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM pairwise_tokens WHERE partner = 'partner-b'")
            .fetch_one(tv.db())
            .await?;
    assert_eq!(tokens, 1, "only the honest answer's token");

    // An update writes the other subject's rows again, sealed: found by
    // its own values, and the person's values find nobody.
    tv.subjects("partner-a")
        .await?
        .update_subject(UpdateSubjectRequest {
            subject_id: other_id,
            fields: fields(&[("email", "mq2@example.net")]),
        })
        .await?;
    let mut own = OTHER.to_vec();
    own[3] = ("email", "mq2@example.net");
    assert_eq!(query(&mut bq, &own).await?.len(), 1);
    assert!(query(&mut bq, ADA_AS_SEEN_ELSEWHERE).await?.is_empty());
    tv.stop().await
}

/// A pairwise token row that fails its MAC refuses only the answers that
/// rest on it: in a one-to-one Link job (whose answers read every token
/// afresh) the record answered with that person is refused
/// (`integrity: pairwise token row MAC`), the other record is answered,
/// and the stream ends OK; the refused person's token is not revealed.
pub async fn a_forged_token_refuses_only_its_own_answers(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let (_, ada_token) = create(&tv, "partner-a", ADA).await;
    let (grace, grace_token) = create(&tv, "partner-a", GRACE).await;
    // A writer without the root key edits Grace's token row for partner-a.
    let forged = sqlx::query(
        "UPDATE pairwise_tokens SET token = 'pw_forgedforgedforgedforged' \
         WHERE partner = 'partner-a' AND subject_id = $1",
    )
    .bind(SubjectId::parse(&grace)?.as_bytes().to_vec())
    .execute(tv.db())
    .await?;
    assert_eq!(forged.rows_affected(), 1);
    let replies = link(
        &tv,
        "partner-a",
        LinkOptions {
            one_to_one: true,
            min_score: 0.0,
        },
        dataset()[1..3].to_vec(),
        2,
    )
    .await?;
    let results: Vec<_> = replies.into_iter().flat_map(|r| r.results).collect();
    let got: Vec<(&str, &str, &str)> = results
        .iter()
        .map(|r| {
            (
                r.record_id.as_str(),
                r.pairwise_token.as_str(),
                r.refused.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("r2", ada_token.as_str(), ""),
            ("r3", "", "integrity: pairwise token row MAC"),
        ]
    );
    // A MatchStream batch (whose first lookup reads the candidates'
    // tokens with them): the query answered with Grace is refused, the
    // other answered; a unary Match for her fails as a whole (DATA_LOSS).
    let batch = MatchBatchRequest {
        queries: [("ada", ADA), ("grace", GRACE)]
            .iter()
            .map(|(id, f)| MatchQuery {
                fields: fields(f),
                query_id: (*id).to_owned(),
                ..Default::default()
            })
            .collect(),
    };
    let mut out = client(&tv, "partner-a")
        .await
        .match_stream(tokio_stream::iter([batch]))
        .await?
        .into_inner();
    let r = out.message().await?.expect("one answer");
    let got: Vec<(&str, &str, &str)> = r
        .results
        .iter()
        .map(|q| {
            (
                q.query_id.as_str(),
                q.candidates
                    .first()
                    .map_or("", |c| c.pairwise_token.as_str()),
                q.refused.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("ada", ada_token.as_str(), ""),
            ("grace", "", "integrity: pairwise token row MAC"),
        ]
    );
    let mut a = client(&tv, "partner-a").await;
    let e = query(&mut a, GRACE).await.unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    let text = audit_text(&tv).await.join("\n");
    assert!(!text.contains(&grace_token) && !text.contains("pw_forged"));
    tv.stop().await
}
