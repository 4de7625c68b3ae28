//! Tokenizing logs inside the vault, detokenization and key rotation.

use idvault_tests::idvault_core::SystemRng;
use idvault_tests::idvault_proto::v1::token_service_client::TokenServiceClient;
use idvault_tests::idvault_proto::v1::{
    DetokenizeRequest, IdentifierType, LogFormat, TokenizeLogRequest, TokenizeMode,
    TokenizeSettings,
};
use idvault_tests::{Backend, TestVault};
use idvault_tokenizer::DomainKey;
use tonic::Code;

use crate::bridge::{import, rec};

struct Output {
    data: String,
    rejected: Vec<(u64, String)>,
}

async fn tokenize(
    tv: &TestVault,
    partner: &str,
    mode: TokenizeMode,
    input: &[u8],
    split: usize,
) -> Result<Output, tonic::Status> {
    tokenize_in(tv, partner, "logs", mode, input, split).await
}

/// The sample log through cross-reference mode as `partner`.
async fn xref_log(tv: &TestVault, partner: &str) -> Result<Output, tonic::Status> {
    tokenize(
        tv,
        partner,
        TokenizeMode::CrossReference,
        LOG.as_bytes(),
        1000,
    )
    .await
}

async fn tokenize_in(
    tv: &TestVault,
    partner: &str,
    domain: &str,
    mode: TokenizeMode,
    input: &[u8],
    split: usize,
) -> Result<Output, tonic::Status> {
    let mut c = TokenServiceClient::new(tv.channel(partner).await.unwrap());
    let settings = TokenizeSettings {
        format: LogFormat::JsonLines.into(),
        fields: vec!["user.msisdn".into(), "account_id".into()],
        mode: mode.into(),
        domain: domain.into(),
        default_country_code: 44,
        ..Default::default()
    };
    let mut reqs = vec![TokenizeLogRequest {
        settings: Some(settings),
        data: Vec::new(),
    }];
    // Split the input at arbitrary byte positions, not at record ends.
    reqs.extend(input.chunks(split).map(|c| TokenizeLogRequest {
        settings: None,
        data: c.to_vec(),
    }));
    let mut stream = c.tokenize_log(tokio_stream::iter(reqs)).await?.into_inner();
    let mut out = Output {
        data: String::new(),
        rejected: Vec::new(),
    };
    while let Some(m) = stream.message().await? {
        out.data.push_str(std::str::from_utf8(&m.data).unwrap());
        out.rejected
            .extend(m.rejected.into_iter().map(|r| (r.line, r.reason)));
    }
    Ok(out)
}

const LOG: &str = concat!(
    "{\"ts\":1,\"user\":{\"msisdn\":\"07700 900001\"},\"account_id\":\"AC-1\"}\n",
    "{\"ts\":2,\"user\":{\"msisdn\":\"+447700900001\"},\"account_id\":\"AC-2\"}\n",
    "{\"ts\":3,\"user\":{\"msisdn\":\"+447700900009\"},\"account_id\":\"AC-1\"}\n",
    "{\"ts\":4,\"user\":{}}\n",
    "{\"ts\":5,\"user\":{\"msisdn\":\"+447700900001\"},\"account_id\":\"AC-1\"}",
);

fn domain_key(tv: &TestVault, version: u32) -> DomainKey {
    let k = tv.vault.keys().token_key("logs", version).unwrap();
    DomainKey::new("logs", version, k.expose()).unwrap()
}

pub async fn tokenize_stream_stateless(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let out = tokenize(&tv, "partner-a", TokenizeMode::Stateless, LOG.as_bytes(), 7).await?;
    let k = domain_key(&tv, 1);
    let t = k.token(idvault_tokenizer::IdentifierType::Msisdn, "+447700900001");
    let lines: Vec<&str> = out.data.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(
        lines[0].contains(&t) && lines[1].contains(&t) && lines[3].contains(&t),
        "{}",
        out.data
    );
    assert!(!out.data.contains("7700"));
    assert_eq!(
        out.rejected,
        vec![(4, "missing field user.msisdn".to_owned())]
    );
    let audited: String =
        sqlx::query_scalar("SELECT detail FROM audit_log WHERE action = 'TokenizeLog'")
            .fetch_one(tv.db())
            .await?;
    assert_eq!(
        audited,
        "mode=stateless domain=logs v1 policy=tokens-tokenize"
    );
    // Bad settings are refused up front.
    // partner-b may not tokenize in partner-a's domain (it could otherwise
    // build a dictionary of partner-a's tokens); its own domain is unlinkable.
    let e = tokenize_in(
        &tv,
        "partner-b",
        "logs",
        TokenizeMode::Stateless,
        LOG.as_bytes(),
        64,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(e.code(), Code::PermissionDenied);
    let own = tokenize_in(
        &tv,
        "partner-b",
        "partner-b",
        TokenizeMode::Stateless,
        LOG.as_bytes(),
        64,
    )
    .await?;
    assert!(own.data.contains("tk_partner-b_v1_") && !own.data.contains(&t));
    let mut c = TokenServiceClient::new(tv.channel("partner-a").await?);
    let bad = TokenizeLogRequest {
        settings: Some(TokenizeSettings {
            format: LogFormat::JsonLines.into(),
            fields: vec!["a".into()],
            mode: TokenizeMode::Stateless.into(),
            domain: "Bad_Domain".into(),
            ..Default::default()
        }),
        data: Vec::new(),
    };
    let e = c
        .tokenize_log(tokio_stream::iter(vec![bad]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    tv.stop().await
}

pub async fn tokenize_stream_cross_reference(b: Backend) -> anyhow::Result<()> {
    use IdentifierType::*;
    let tv = TestVault::start(b).await?;
    import(
        &tv,
        "partner-a",
        vec![vec![
            rec("c1", &[(Msisdn, "+447700900001"), (Account, "AC-1")]),
            rec("c2", &[(Account, "AC-2")]),
        ]],
    )
    .await?;
    let out = xref_log(&tv, "partner-a").await?;
    let lines: Vec<&str> = out.data.lines().collect();
    let entities: Vec<String> =
        sqlx::query_scalar("SELECT token FROM xref_entities ORDER BY token")
            .fetch_all(tv.db())
            .await?;
    assert_eq!(entities.len(), 2);
    // Line 1: phone and account are the same customer: one entity token twice.
    let e1 = lines[0]
        .split('"')
        .find(|s| s.starts_with("et_"))
        .unwrap()
        .to_owned();
    assert_eq!(lines[0].matches(&e1).count(), 2, "{}", lines[0]);
    // Line 2: same phone, account AC-2 belongs to the other entity.
    assert!(lines[1].contains(&e1));
    assert_eq!(lines.len(), 3, "{}", out.data);
    assert_eq!(
        out.rejected,
        vec![
            (
                3,
                "field user.msisdn: identifier is not linked to any entity".to_owned()
            ),
            (4, "missing field user.msisdn".to_owned())
        ]
    );
    // A record joining the two customers merges them; the (cached) lookup
    // now answers with the survivor for both.
    import(
        &tv,
        "partner-a",
        vec![vec![rec("join", &[(Account, "AC-1"), (Account, "AC-2")])]],
    )
    .await?;
    let survivor = entities.iter().min().unwrap().clone();
    let out = xref_log(&tv, "partner-a").await?;
    let first_two: Vec<&str> = out.data.lines().take(2).collect();
    assert!(
        first_two.iter().all(|l| l.matches(&survivor).count() == 2),
        "{}",
        out.data
    );
    tv.stop().await
}

pub async fn detokenize_is_role_gated_and_audited(b: Backend) -> anyhow::Result<()> {
    use IdentifierType::*;
    let tv = TestVault::start(b).await?;
    import(
        &tv,
        "partner-a",
        vec![vec![
            rec("a", &[(Account, "A-1")]),
            rec("b", &[(Msisdn, "07700 900001"), (Email, "B@Example.org")]),
        ]],
    )
    .await?;
    let tokens: Vec<String> = sqlx::query_scalar("SELECT token FROM xref_entities ORDER BY token")
        .fetch_all(tv.db())
        .await?;
    import(
        &tv,
        "partner-a",
        vec![vec![rec(
            "ab",
            &[(Account, "A-1"), (Email, "b@example.org")],
        )]],
    )
    .await?;
    let alias = tokens.iter().max().unwrap().clone();
    let mut c = TokenServiceClient::new(tv.channel("partner-a").await?);
    let d = c
        .detokenize(DetokenizeRequest {
            token: alias.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(
        &d.token,
        tokens.iter().min().unwrap(),
        "an alias resolves to the survivor"
    );
    let mut ids: Vec<(i32, String)> = d
        .identifiers
        .into_iter()
        .map(|i| (i.r#type, i.value))
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![
            (i32::from(Msisdn), "+447700900001".to_owned()),
            (i32::from(Email), "b@example.org".to_owned()),
            (i32::from(Account), "A-1".to_owned()),
        ]
    );
    let e = c
        .detokenize(DetokenizeRequest {
            token: "et_aaaaaaaaaaaaaaaaaaaaaaaaaa".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .detokenize(DetokenizeRequest {
            token: "tk_logs_v1_x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let mut other = TokenServiceClient::new(tv.channel("partner-b").await?);
    let e = other
        .detokenize(DetokenizeRequest { token: alias })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let outcomes: Vec<String> =
        sqlx::query_scalar("SELECT outcome FROM audit_log WHERE action = 'Detokenize' ORDER BY id")
            .fetch_all(tv.db())
            .await?;
    assert_eq!(outcomes, ["ok", "not_found", "invalid", "denied"]);
    tv.stop().await
}

pub async fn rotation_keeps_tokens_resolvable(b: Backend) -> anyhow::Result<()> {
    use IdentifierType::*;
    let mut tv = TestVault::start(b).await?;
    import(
        &tv,
        "partner-a",
        vec![vec![rec(
            "c1",
            &[(Msisdn, "+447700900001"), (Account, "AC-1")],
        )]],
    )
    .await?;
    let before = tokenize(
        &tv,
        "partner-a",
        TokenizeMode::CrossReference,
        LOG.as_bytes(),
        64,
    )
    .await?;
    let v1_stateless = tokenize(
        &tv,
        "partner-a",
        TokenizeMode::Stateless,
        LOG.as_bytes(),
        64,
    )
    .await?;
    assert!(v1_stateless.data.contains("tk_logs_v1_"));

    tv.rotate_root_key().await?;

    // Identifiers linked under v1 are still found, by every live version.
    let after = tokenize(
        &tv,
        "partner-a",
        TokenizeMode::CrossReference,
        LOG.as_bytes(),
        64,
    )
    .await?;
    assert_eq!(after.data, before.data);
    // A record mixing a v1-linked identifier with a new one reuses the token.
    let s = import(
        &tv,
        "partner-a",
        vec![vec![rec("c1b", &[(Account, "AC-1"), (Account, "AC-2")])]],
    )
    .await?;
    assert_eq!((s.entities_created, s.identifiers_linked), (0, 1));
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT key_version FROM xref_links ORDER BY key_version")
            .fetch_all(tv.db())
            .await?;
    assert_eq!(versions, [1, 1, 2]);
    // Stateless tokens move to v2; v1 tokens still verify with the v1 key.
    let v2 = tokenize(
        &tv,
        "partner-a",
        TokenizeMode::Stateless,
        LOG.as_bytes(),
        64,
    )
    .await?;
    assert!(v2.data.contains("tk_logs_v2_") && !v2.data.contains("tk_logs_v1_"));
    let t1 = domain_key(&tv, 1).token(idvault_tokenizer::IdentifierType::Msisdn, "+447700900001");
    assert!(
        v1_stateless.data.contains(&t1),
        "old tokens are reproducible from the retained v1 key"
    );
    // Detokenize opens identifiers sealed under both versions.
    let token = after
        .data
        .split('"')
        .find(|s| s.starts_with("et_"))
        .unwrap()
        .to_owned();
    let d = TokenServiceClient::new(tv.channel("partner-a").await?)
        .detokenize(DetokenizeRequest { token })
        .await?
        .into_inner();
    assert_eq!(d.identifiers.len(), 3);
    tv.stop().await
}

pub async fn oversized_stream_message_is_resource_exhausted(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let big = vec![b'{'; 2 * 1024 * 1024];
    let e = match tokenize(&tv, "partner-a", TokenizeMode::Stateless, &big, big.len()).await {
        Err(e) => e,
        Ok(_) => anyhow::bail!("a 2 MiB message was accepted"),
    };
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    tv.stop().await
}

/// Short identifiers grow into 43-byte tokens: a 256 KiB message of them
/// rewrites to several MiB, which must come back in several responses.
/// A quote inside an unquoted CSV field is a literal, not an opening quote.
pub async fn tokenize_stream_output_growth_and_csv_quotes(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let mut input = String::from("id,note\n");
    for i in 0..200_000 {
        input.push_str(&format!("A{i},27\" monitor\n"));
    }
    let mut c = TokenServiceClient::new(tv.channel("partner-a").await?);
    let settings = TokenizeSettings {
        format: LogFormat::Csv.into(),
        fields: vec!["id=account".into()],
        mode: TokenizeMode::Stateless.into(),
        domain: "logs".into(),
        csv_header: b"id,note\n".to_vec(),
        ..Default::default()
    };
    let body = &input.as_bytes()["id,note\n".len()..];
    let mut reqs = vec![TokenizeLogRequest {
        settings: Some(settings),
        data: Vec::new(),
    }];
    reqs.extend(body.chunks(256 * 1024).map(|c| TokenizeLogRequest {
        settings: None,
        data: c.to_vec(),
    }));
    let mut stream = c.tokenize_log(tokio_stream::iter(reqs)).await?.into_inner();
    let (mut data, mut rewritten, mut rejected, mut messages) = (Vec::new(), 0, 0, 0);
    while let Some(m) = stream.message().await? {
        messages += 1;
        data.extend_from_slice(&m.data);
        rewritten += m.records_rewritten;
        rejected += m.rejected.len();
    }
    assert_eq!((rewritten, rejected), (200_000, 0));
    let text = String::from_utf8(data)?;
    assert_eq!(text.lines().count(), 200_000);
    assert!(
        text.lines()
            .all(|l| l.starts_with("tk_logs_v1_") && l.ends_with(",\"27\"\" monitor\"")),
        "{}",
        &text[..200]
    );
    assert!(messages > 8, "output was split into {messages} responses");
    tv.stop().await
}

/// A CSV stream reads the same records however its client splits the
/// bytes into messages: a lone `\r` ends a record (as in the csv crate),
/// so a quote after it opens a field whose newline ends nothing. Settings
/// that would be misread (a header holding two records, a quote as the
/// delimiter) are refused.
pub async fn tokenize_stream_reads_csv_the_same_however_split(b: Backend) -> anyhow::Result<()> {
    let tv = TestVault::start(b).await?;
    let mut c = TokenServiceClient::new(tv.channel("partner-a").await?);
    let settings = |header: &[u8], delimiter: u32| TokenizeSettings {
        format: LogFormat::Csv.into(),
        fields: vec!["id=account".into()],
        mode: TokenizeMode::Stateless.into(),
        domain: "logs".into(),
        csv_header: header.to_vec(),
        csv_delimiter: delimiter,
        ..Default::default()
    };
    let body: &[u8] = b"x,A1\r\"n\n2\",A2\r\nq,A3\n\"r\r\ns\",A4\n";
    let mut answers = Vec::new();
    for piece in [body.len(), 1, 3, 7] {
        let mut reqs = vec![TokenizeLogRequest {
            settings: Some(settings(b"note,id\n", 0)),
            data: Vec::new(),
        }];
        reqs.extend(body.chunks(piece).map(|p| TokenizeLogRequest {
            settings: None,
            data: p.to_vec(),
        }));
        let mut stream = c.tokenize_log(tokio_stream::iter(reqs)).await?.into_inner();
        let (mut data, mut rewritten, mut rejected) = (Vec::new(), 0, 0);
        while let Some(m) = stream.message().await? {
            data.extend_from_slice(&m.data);
            rewritten += m.records_rewritten;
            rejected += m.rejected.len();
        }
        assert_eq!((rewritten, rejected), (4, 0), "pieces of {piece} bytes");
        answers.push(String::from_utf8(data)?);
    }
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    let key = domain_key(&tv, 1);
    let account = |v: &str| key.token(idvault_tokenizer::IdentifierType::Account, v);
    assert_eq!(
        answers[0],
        format!(
            "x,{}\n\"n\n2\",{}\nq,{}\n\"r\r\ns\",{}\n",
            account("A1"),
            account("A2"),
            account("A3"),
            account("A4")
        )
    );
    for (header, delimiter) in [(&b"id,note\nA0,w\n"[..], 0), (b"id\"note", u32::from(b'"'))] {
        let reqs = vec![TokenizeLogRequest {
            settings: Some(settings(header, delimiter)),
            data: Vec::new(),
        }];
        let e = match c.tokenize_log(tokio_stream::iter(reqs)).await {
            Err(e) => e,
            Ok(r) => match r.into_inner().message().await {
                Err(e) => e,
                Ok(m) => anyhow::bail!("settings {header:?} were accepted: {m:?}"),
            },
        };
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    tv.stop().await
}

fn stateless_settings() -> TokenizeSettings {
    TokenizeSettings {
        format: LogFormat::JsonLines.into(),
        fields: vec!["user.msisdn=msisdn".into()],
        mode: TokenizeMode::Stateless.into(),
        domain: "logs".into(),
        ..Default::default()
    }
}

/// Outside bytes that would make the vault hold many times their size are
/// refused with INVALID_ARGUMENT: a field path over 256 bytes (each
/// refused record's reason names its field), and a record over 8 MiB
/// even when its end arrives in the same message as its last bytes
/// (before, only a record still unfinished was measured, so one of
/// 8 MiB plus a message was rewritten whole, several times its size).
pub async fn tokenize_refuses_long_paths_and_records(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_tokenizer::pipeline::MAX_RECORD_BYTES;
    let tv = TestVault::start(b).await?;
    let mut c = TokenServiceClient::new(tv.channel("partner-a").await?);
    let long_path = TokenizeSettings {
        fields: vec![format!("{}=msisdn", "a".repeat(257))],
        ..stateless_settings()
    };
    let reqs = vec![
        TokenizeLogRequest {
            settings: Some(long_path),
            data: Vec::new(),
        },
        TokenizeLogRequest {
            settings: None,
            data: b"{}\n".repeat(1_000),
        },
    ];
    let e = c
        .tokenize_log(tokio_stream::iter(reqs))
        .await
        .map(tonic::Response::into_inner);
    let e = match e {
        Err(e) => e,
        Ok(mut stream) => loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => anyhow::bail!("a 257-byte field path was accepted"),
                Err(e) => break e,
            }
        },
    };
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("256 bytes"), "{}", e.message());
    assert!(e.message().len() < 200, "the path is not echoed");

    // One record of 8 MiB and 100 bytes, its newline in its last message,
    // after a short record in the first.
    let piece = 512 * 1024;
    let mut record = b"{\"user\":{\"msisdn\":\"+447700900123\"},\"pad\":\"".to_vec();
    record.resize(MAX_RECORD_BYTES + 100, b'x');
    record.extend_from_slice(b"\"}\n");
    let mut data = b"{\"user\":{\"msisdn\":\"+447700900123\"}}\n".to_vec();
    data.extend_from_slice(&record);
    let mut reqs = vec![TokenizeLogRequest {
        settings: Some(stateless_settings()),
        data: Vec::new(),
    }];
    reqs.extend(data.chunks(piece).map(|c| TokenizeLogRequest {
        settings: None,
        data: c.to_vec(),
    }));
    let mut stream = c.tokenize_log(tokio_stream::iter(reqs)).await?.into_inner();
    let mut rewritten = 0;
    let e = loop {
        match stream.message().await {
            Ok(Some(m)) => rewritten += m.records_rewritten,
            Ok(None) => anyhow::bail!("a record over {MAX_RECORD_BYTES} bytes was accepted"),
            Err(e) => break e,
        }
    };
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("record longer than"),
        "{}",
        e.message()
    );
    assert!(rewritten <= 1, "{rewritten} records rewritten");
    tv.stop().await
}

/// Rejects are capped: a message of one-byte junk lines (about 500,000
/// rejects in 1 MB) ends the stream with RESOURCE_EXHAUSTED instead of
/// being held in memory, and so does a stream whose messages add up past
/// the per-stream cap. A message within the caps is answered normally.
pub async fn tokenize_rejects_are_capped(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_server::service::tokens::log::{
        MAX_REJECTS_PER_MESSAGE, MAX_REJECTS_PER_STREAM,
    };
    let tv = TestVault::start(b).await?;
    let mut c = TokenServiceClient::new(tv.channel("partner-a").await?);
    let junk = b"x\n".repeat(500_000);
    let reqs = vec![
        TokenizeLogRequest {
            settings: Some(stateless_settings()),
            data: Vec::new(),
        },
        TokenizeLogRequest {
            settings: None,
            data: junk,
        },
    ];
    let mut stream = c.tokenize_log(tokio_stream::iter(reqs)).await?.into_inner();
    let e = loop {
        match stream.message().await {
            Ok(Some(m)) => assert!(m.rejected.is_empty(), "rejects sent before the cap"),
            Ok(None) => anyhow::bail!("the stream ended without a status"),
            Err(e) => break e,
        }
    };
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("rejected records in one message"),
        "{}",
        e.message()
    );

    // Each message under the per-message cap; together over the stream's.
    let per = MAX_REJECTS_PER_MESSAGE - 1;
    let messages = MAX_REJECTS_PER_STREAM / per + 1;
    let mut reqs = vec![TokenizeLogRequest {
        settings: Some(stateless_settings()),
        data: Vec::new(),
    }];
    reqs.extend((0..messages).map(|_| TokenizeLogRequest {
        settings: None,
        data: b"x\n".repeat(per),
    }));
    let mut stream = c.tokenize_log(tokio_stream::iter(reqs)).await?.into_inner();
    let mut rejected = 0;
    let e = loop {
        match stream.message().await {
            Ok(Some(m)) => rejected += m.rejected.len(),
            Ok(None) => anyhow::bail!("the stream ended without a status"),
            Err(e) => break e,
        }
    };
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("in one stream"), "{}", e.message());
    assert!(rejected <= MAX_REJECTS_PER_STREAM, "{rejected}");

    // Cross-reference mode: well-formed identifiers linked to nothing are
    // rejects too, and their lookups stop at the cap.
    let mut junk = String::new();
    for i in 0..(2 * MAX_REJECTS_PER_MESSAGE) {
        junk.push_str(&format!("{{\"user\":{{\"msisdn\":\"+4477{i:08}\"}}}}\n"));
    }
    let mut settings = stateless_settings();
    settings.mode = TokenizeMode::CrossReference.into();
    settings.domain = String::new();
    let reqs = vec![
        TokenizeLogRequest {
            settings: Some(settings),
            data: Vec::new(),
        },
        TokenizeLogRequest {
            settings: None,
            data: junk.into_bytes(),
        },
    ];
    let mut stream = c.tokenize_log(tokio_stream::iter(reqs)).await?.into_inner();
    let e = loop {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("the stream ended without a status"),
            Err(e) => break e,
        }
    };
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("in one message"), "{}", e.message());
    tv.stop().await
}

/// A partner holds at most a few TokenizeLog streams at once; the next is
/// refused with RESOURCE_EXHAUSTED (and audited), another partner is not
/// affected, and a closed stream gives its place back.
pub async fn tokenize_streams_per_partner_are_limited(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_server::service::streams::MAX_STREAMS_PER_PARTNER;
    let tv = TestVault::start(b).await?;
    let mut c = TokenServiceClient::new(tv.channel("partner-a").await?);
    // Streams whose request side stays open: each holds its place.
    let mut open = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..MAX_STREAMS_PER_PARTNER {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(TokenizeLogRequest {
            settings: Some(stateless_settings()),
            data: Vec::new(),
        })
        .await?;
        open.push(
            c.tokenize_log(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner(),
        );
        senders.push(tx);
    }
    let one = || {
        tokio_stream::iter(vec![TokenizeLogRequest {
            settings: Some(stateless_settings()),
            data: b"{\"user\":{\"msisdn\":\"+447700900123\"}}\n".to_vec(),
        }])
    };
    let e = c.tokenize_log(one()).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("TokenizeLog streams"),
        "{}",
        e.message()
    );
    // Another partner is not affected.
    let mut other = TokenServiceClient::new(tv.channel("partner-b").await?);
    let mut settings = stateless_settings();
    settings.domain = "partner-b".into();
    let mut s = other
        .tokenize_log(tokio_stream::iter(vec![TokenizeLogRequest {
            settings: Some(settings),
            data: Vec::new(),
        }]))
        .await?
        .into_inner();
    while s.message().await?.is_some() {}
    // Closing one stream frees its place.
    drop(senders.pop());
    let mut closed = open.pop().expect("a stream");
    while closed.message().await?.is_some() {}
    let mut s = c.tokenize_log(one()).await?.into_inner();
    let mut rewritten = 0;
    while let Some(m) = s.message().await? {
        rewritten += m.records_rewritten;
    }
    assert_eq!(rewritten, 1);
    let refused = tv
        .count(
            "SELECT count(*) FROM audit_log WHERE action = 'TokenizeLog' AND outcome = 'rate_limited'",
        )
        .await;
    assert_eq!(refused, 1);
    // Close the others too: a graceful stop waits for open streams.
    drop(senders);
    drop(open);
    tv.stop().await
}

/// A hostile client fills every TokenizeLog place it has with streams that
/// send a lot and never read an answer: each stream's task gives up at the
/// call's deadline (its sends wait for room at most that long), so its
/// place and buffers come back, and the partner can stream again. Without
/// send deadlines the places would stay held for as long as the client
/// liked.
pub async fn streams_that_never_read_are_ended_at_their_deadline(b: Backend) -> anyhow::Result<()> {
    use idvault_tests::idvault_server::service::streams::MAX_STREAMS_PER_PARTNER;
    let tv = TestVault::start(b).await?;
    let mut c = TokenServiceClient::new(tv.channel("partner-a").await?);
    let line = b"{\"user\":{\"msisdn\":\"+447700900123\",\"email\":\"a@example.org\"}}\n";
    let chunk: Vec<u8> = line.repeat(200_000 / line.len());
    let mut unread = Vec::new();
    for _ in 0..MAX_STREAMS_PER_PARTNER {
        let mut msgs = vec![TokenizeLogRequest {
            settings: Some(stateless_settings()),
            data: Vec::new(),
        }];
        msgs.extend((0..60).map(|_| TokenizeLogRequest {
            settings: None,
            data: chunk.clone(),
        }));
        let mut req = tonic::Request::new(tokio_stream::iter(msgs));
        req.set_timeout(std::time::Duration::from_secs(3));
        // The response stream is kept and never polled.
        unread.push(c.tokenize_log(req).await?.into_inner());
    }
    let one = || {
        tokio_stream::iter(vec![TokenizeLogRequest {
            settings: Some(stateless_settings()),
            data: line.to_vec(),
        }])
    };
    // Another connection of the same partner (the unread streams' data
    // holds the first connection's flow-control window).
    let first = c;
    let mut c = TokenServiceClient::new(tv.channel("partner-a").await?);
    // Every place is taken now…
    assert_eq!(
        c.tokenize_log(one()).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    // …and free again once the deadline passed, though nothing was read.
    let mut freed = false;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        if let Ok(r) = c.tokenize_log(one()).await {
            let mut s = r.into_inner();
            while s.message().await?.is_some() {}
            freed = true;
            break;
        }
    }
    assert!(freed, "streams that never read kept their places");
    // A stream cut short ends with DEADLINE_EXCEEDED after what it did
    // send, never with OK: read late, it must not pass for a whole answer.
    // (The other unread streams go first: their buffered data holds the
    // connection's flow-control window.)
    let mut late = unread.pop().expect("a stream");
    drop(unread);
    let (mut rewritten, mut records) = (0u64, 0u64);
    let end = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match late.message().await {
                Ok(Some(m)) => {
                    rewritten += m.records_rewritten;
                    records += m.records_rewritten + m.rejected.len() as u64;
                }
                Ok(None) => break None,
                Err(e) => break Some(e.code()),
            }
        }
    })
    .await
    .expect("the cut stream ends");
    // Either it was cut (DEADLINE_EXCEEDED after part of the answer), or,
    // on a machine fast enough to finish before its deadline, it is whole.
    let whole = u64::try_from(60 * (chunk.len() / line.len()))?;
    assert!(
        end == Some(Code::DeadlineExceeded) || (end.is_none() && records == whole),
        "{end:?} after {rewritten} of {whole} records"
    );
    drop(late);
    drop(first);
    tv.stop().await
}

/// Rotating one token domain moves only its tokens: the other domains'
/// stay byte for byte; a domain already on the newest root version gets a
/// new root version, a domain behind it moves up without one.
pub async fn token_domain_rotation_is_per_domain(b: Backend) -> anyhow::Result<()> {
    let mut tv = TestVault::start(b).await?;
    let run = async |tv: &TestVault, domain: &str| {
        tokenize_in(
            tv,
            "partner-a",
            domain,
            TokenizeMode::Stateless,
            LOG.as_bytes(),
            64,
        )
        .await
        .unwrap()
        .data
    };
    let (logs1, own1) = (run(&tv, "logs").await, run(&tv, "partner-a").await);
    assert!(logs1.contains("tk_logs_v1_") && own1.contains("tk_partner-a_v1_"));
    let root = tv.dir.path().join("root.key");
    let domains: Vec<String> = vec!["logs".into(), "partner-a".into(), "partner-b".into()];
    let r = idvault_tests::idvault_server::keyfile::rotate_token_domain(
        &root,
        None,
        &SystemRng::default(),
        "logs",
        &domains,
    )?;
    assert_eq!((r.from, r.to, r.added_root_version), (1, 2, true));
    tv.restart().await?;
    let (logs2, own2) = (run(&tv, "logs").await, run(&tv, "partner-a").await);
    assert!(logs2.contains("tk_logs_v2_") && !logs2.contains("tk_logs_v1_"));
    assert_eq!(own2, own1, "the other domain's tokens are unchanged");
    // The old version's tokens are still reproducible from its key.
    let t1 = domain_key(&tv, 1).token(idvault_tokenizer::IdentifierType::Msisdn, "+447700900001");
    assert!(logs1.contains(&t1));
    // partner-a is behind the newest root version: it moves up, no new root.
    let r = idvault_tests::idvault_server::keyfile::rotate_token_domain(
        &root,
        None,
        &SystemRng::default(),
        "partner-a",
        &domains,
    )?;
    assert_eq!((r.from, r.to, r.added_root_version), (1, 2, false));
    tv.restart().await?;
    let (logs3, own3) = (run(&tv, "logs").await, run(&tv, "partner-a").await);
    assert_eq!(logs3, logs2, "logs is unchanged by partner-a's rotation");
    assert!(own3.contains("tk_partner-a_v2_") && own3 != own1);
    tv.stop().await
}
