//! Migrations on databases that hold data from before them.

use anyhow::Context;
use idvault_server::store::Store;
use idvault_tests::idvault_core::subject::SubjectId;
use idvault_tests::{Backend, create_postgres_database};
use sqlx::AnyPool;

/// A database with the migrations before `first_new` applied (copies of
/// the files, so the vault's own run later finds their checksums), and
/// its URL.
async fn database_before(
    b: Backend,
    dir: &std::path::Path,
    first_new: &str,
) -> anyhow::Result<String> {
    let backend = match b {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../vault/server/migrations")
        .join(backend);
    let older = dir.join("older-migrations");
    std::fs::create_dir(&older)?;
    for entry in std::fs::read_dir(&all)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("migration file name")?
            .to_owned();
        if name.as_str() < first_new {
            std::fs::copy(&path, older.join(&name))?;
        }
    }
    sqlx::any::install_default_drivers();
    let url = match b {
        Backend::Sqlite => format!("sqlite://{}?mode=rwc", dir.join("v.db").display()),
        // Dropped by the harness after the test, whatever its outcome.
        Backend::Postgres => create_postgres_database("idvault_upgrade").await?.0,
    };
    let pool = AnyPool::connect(&url).await?;
    sqlx::migrate::Migrator::new(older.as_path())
        .await?
        .run(&pool)
        .await?;
    pool.close().await;
    Ok(url)
}

/// A subject row of partner-a's with head 1 and storage key `key` (`None`:
/// a subject from before migration 0026), as the migrations after 0026
/// found it.
async fn subject_row(pool: &AnyPool, s: SubjectId, key: Option<Vec<u8>>) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO subjects (subject_id, created_by, wrapped_dek, kek_version, \
         head_seq, head_hash, created_at_ms, updated_at_ms, subject_key) \
         VALUES ($1, 'partner-a', $2, 1, 1, $3, 1, 1, $4)",
    )
    .bind(s.as_bytes().to_vec())
    .bind(vec![0u8; 60])
    .bind(vec![0u8; 32])
    .bind(key)
    .execute(pool)
    .await?;
    Ok(())
}

/// Migration 0026 (packets keyed by the subject's storage key) on a
/// database holding packets: they stay readable under the subject's id
/// as its key, and a packet a tool then inserts by subject id alone is
/// found with them.
pub async fn packets_from_before_0026_survive_it(b: Backend) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = database_before(b, dir.path(), "0026").await?;
    let id = SubjectId::from_bytes([5; 16]);
    let other = SubjectId::from_bytes([6; 16]);
    {
        let pool = AnyPool::connect(&url).await?;
        for s in [id, other] {
            sqlx::query(
                "INSERT INTO subjects (subject_id, created_by, wrapped_dek, kek_version, \
                 head_seq, head_hash, created_at_ms, updated_at_ms) \
                 VALUES ($1, 'partner-a', $2, 1, 3, $3, 1, 1)",
            )
            .bind(s.as_bytes().to_vec())
            .bind(vec![0u8; 60])
            .bind(vec![0u8; 32])
            .execute(&pool)
            .await?;
        }
        for (s, seq, field) in [(id, 1i64, "email"), (id, 2, "city"), (other, 1, "email")] {
            sqlx::query(
                "INSERT INTO packets (subject_id, seq, field_name, packet) VALUES ($1, $2, $3, $4)",
            )
            .bind(s.as_bytes().to_vec())
            .bind(seq)
            .bind(field)
            .bind(vec![u8::try_from(seq)?; 8])
            .execute(&pool)
            .await?;
        }
        pool.close().await;
    }
    let store = Store::connect(&url).await?;
    let (_, newest) = store
        .subject_with_packets_to_head(&id)
        .await?
        .context("the subject is there")?;
    let rows = |v: Vec<idvault_tests::idvault_server::store::StoredPacket>| {
        v.into_iter()
            .map(|p| (p.seq, p.field, p.packet))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        rows(newest),
        vec![
            (1, "email".into(), vec![1; 8]),
            (2, "city".into(), vec![2; 8])
        ]
    );
    let pool = AnyPool::connect(&url).await?;
    let keys: Vec<(Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT subject_key, subject_id FROM packets ORDER BY subject_id, seq")
            .fetch_all(&pool)
            .await?;
    assert_eq!(keys.len(), 3);
    assert!(
        keys.iter().all(|(k, s)| k == s),
        "each packet keyed by its subject's id"
    );
    let unset: i64 = sqlx::query_scalar("SELECT count(*) FROM subjects WHERE subject_key IS NULL")
        .fetch_one(&pool)
        .await?;
    assert_eq!(unset, 2, "subjects from before keep no key of their own");
    sqlx::query(
        "INSERT INTO packets (subject_id, seq, field_name, packet) VALUES ($1, 3, 'email', $2)",
    )
    .bind(id.as_bytes().to_vec())
    .bind(vec![3u8; 8])
    .execute(&pool)
    .await?;
    pool.close().await;
    let (_, newest) = store
        .subject_with_packets_to_head(&id)
        .await?
        .context("the subject is there")?;
    assert_eq!(
        rows(newest),
        vec![
            (2, "city".into(), vec![2; 8]),
            (3, "email".into(), vec![3; 8])
        ]
    );
    store.close().await;
    Ok(())
}

/// Migration 0027 (match rows found by the subject's storage key) on a
/// database holding match rows of a subject from before 0026 (no key of
/// its own) and of one created after it: each row takes its subject's
/// key (the id for the first), and both subjects are still ranked and
/// their signatures read.
pub async fn match_rows_from_before_0027_survive_it(b: Backend) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = database_before(b, dir.path(), "0027").await?;
    let old = SubjectId::from_bytes([5; 16]);
    let new = SubjectId::from_bytes([6; 16]);
    let new_key = [7u8; 16];
    {
        let pool = AnyPool::connect(&url).await?;
        for (s, key) in [(old, None), (new, Some(new_key.to_vec()))] {
            subject_row(&pool, s, key).await?;
            // One blocking key both hold, one each of their own.
            for (bidx, field) in [(100i64, 2i64), (i64::from(s.as_bytes()[0]), 5)] {
                sqlx::query(
                    "INSERT INTO match_index (domain, bidx, subject_id, field, key_version) \
                     VALUES ('d', $1, $2, $3, 1)",
                )
                .bind(bidx)
                .bind(s.as_bytes().to_vec())
                .bind(field)
                .execute(&pool)
                .await?;
            }
            sqlx::query(
                "INSERT INTO match_subjects (domain, subject_id, fields, signature, \
                 mac_version, mac) VALUES ('d', $1, 3, $2, 1, $3)",
            )
            .bind(s.as_bytes().to_vec())
            .bind(vec![s.as_bytes()[0]; 12])
            .bind(vec![0u8; 32])
            .execute(&pool)
            .await?;
        }
        pool.close().await;
    }
    let store = Store::connect(&url).await?;
    let pool = AnyPool::connect(&url).await?;
    for table in ["match_index", "match_subjects"] {
        let keys: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT subject_id, subject_key FROM {table} ORDER BY subject_id"
        )))
        .fetch_all(&pool)
        .await?;
        assert!(!keys.is_empty(), "{table} kept its rows");
        for (s, k) in keys {
            let want = if s == old.as_bytes() {
                old.as_bytes().to_vec()
            } else {
                new_key.to_vec()
            };
            assert_eq!(k, want, "{table}: each row under its subject's key");
        }
    }
    pool.close().await;
    let ranked = store.match_ranks("d", &[(100, 1.0), (6, 2.0)], 8).await?;
    let order: Vec<_> = ranked.iter().map(|r| r.subject).collect();
    assert_eq!(order, vec![new, old], "ranked by their rows' gains");
    let read = store.match_signatures("d", &ranked).await?;
    let signatures: Vec<_> = read
        .iter()
        .map(|c| (c.subject, c.signature.clone()))
        .collect();
    assert_eq!(
        signatures,
        vec![(new, vec![6; 12]), (old, vec![5; 12])],
        "each signature found under its key"
    );
    store.close().await;
    Ok(())
}

/// Migrations 0028 (pairwise tokens found by the subject's storage key)
/// and 0029 (a subject's creation leaf found through its creating
/// request) on a database holding a token and a creation leaf of a
/// subject from before 0026 (no key of its own) and of one created after
/// it: each token takes its subject's key (the id for the first), each
/// subject row names the request of its `ok` CreateSubject leaf (not of
/// a later leaf, nor of another subject's), and the leaf is found by it.
pub async fn tokens_and_creation_leaves_from_before_0028_survive_them(
    b: Backend,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = database_before(b, dir.path(), "0028").await?;
    let old = SubjectId::from_bytes([5; 16]);
    let new = SubjectId::from_bytes([0xa6; 16]);
    let new_key = [7u8; 16];
    // (subject, action, request id, head): its creation, then an update.
    let leaves = [
        (old, "CreateSubject", [1u8; 16], Some(1i64)),
        (new, "CreateSubject", [2u8; 16], Some(1)),
        (old, "UpdateSubject", [3u8; 16], Some(2)),
    ];
    {
        let pool = AnyPool::connect(&url).await?;
        for (s, key) in [(old, None), (new, Some(new_key.to_vec()))] {
            subject_row(&pool, s, key).await?;
            sqlx::query(
                "INSERT INTO pairwise_tokens (partner, subject_id, token, mac_version, mac) \
                 VALUES ('partner-a', $1, $2, 1, $3)",
            )
            .bind(s.as_bytes().to_vec())
            .bind(format!("pw_{}", s.as_bytes()[0]))
            .bind(vec![0u8; 32])
            .execute(&pool)
            .await?;
        }
        for (i, (s, action, request, head)) in leaves.iter().enumerate() {
            sqlx::query(
                "INSERT INTO audit_log (time_ms, actor, action, subject, outcome, detail, \
                 request_id, head_seq, leaf, key_version, mac) \
                 VALUES ($1, 'spiffe://idvault.test/partner/partner-a', $2, $3, 'ok', '', $4, $5, \
                 $6, 1, $7)",
            )
            .bind(i64::try_from(i)?)
            .bind(*action)
            .bind(s.to_string())
            .bind(request.to_vec())
            .bind(*head)
            .bind(vec![u8::try_from(i)?; 8])
            .bind(vec![0u8; 32])
            .execute(&pool)
            .await?;
        }
        pool.close().await;
    }
    let store = Store::connect(&url).await?;
    let pool = AnyPool::connect(&url).await?;
    let tokens: Vec<(Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT subject_id, subject_key FROM pairwise_tokens ORDER BY subject_id")
            .fetch_all(&pool)
            .await?;
    assert_eq!(
        tokens,
        vec![
            (old.as_bytes().to_vec(), old.as_bytes().to_vec()),
            (new.as_bytes().to_vec(), new_key.to_vec()),
        ],
        "each token under its subject's key"
    );
    let created: Vec<(Vec<u8>, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT subject_id, created_request FROM subjects ORDER BY subject_id")
            .fetch_all(&pool)
            .await?;
    assert_eq!(
        created,
        vec![
            (old.as_bytes().to_vec(), Some(vec![1; 16])),
            (new.as_bytes().to_vec(), Some(vec![2; 16])),
        ],
        "each subject names its own creation's request"
    );
    pool.close().await;
    for (s, leaf) in [(old, 0u8), (new, 1)] {
        let found = store
            .creation_leaf(&s)
            .await?
            .context("the creation leaf is found")?;
        assert_eq!(found.bytes, vec![leaf; 8]);
    }
    store.close().await;
    Ok(())
}

/// Migration 0034 (a primary key for `code_failures`) on a database holding
/// wrong codes from before it, two of one device in the same millisecond:
/// every row survives and is counted, a new one can be recorded beside
/// them, and afterwards every table of the PostgreSQL schema has a
/// primary key (a table without one refuses deletes under logical
/// replication).
pub async fn code_failures_from_before_0034_survive_it(b: Backend) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = database_before(b, dir.path(), "0034").await?;
    {
        let pool = AnyPool::connect(&url).await?;
        for (device, at) in [("dev-1", 1_000i64), ("dev-1", 1_000), ("dev-2", 2_000)] {
            sqlx::query("INSERT INTO code_failures (device_id, at_ms) VALUES ($1, $2)")
                .bind(device)
                .bind(at)
                .execute(&pool)
                .await?;
        }
        pool.close().await;
    }
    let store = Store::connect(&url).await?;
    assert_eq!(store.code_failures_since("dev-1", 0).await?, 2);
    assert_eq!(store.code_failures_since("dev-2", 2_000).await?, 1);
    assert_eq!(store.code_failures_since("dev-2", 2_001).await?, 0);
    let pool = AnyPool::connect(&url).await?;
    sqlx::query("INSERT INTO code_failures (device_id, at_ms) VALUES ('dev-1', 1000)")
        .execute(&pool)
        .await?;
    assert_eq!(store.code_failures_since("dev-1", 0).await?, 3);
    // On SQLite every table but a WITHOUT ROWID one is keyed by its
    // rowid (`packets` and `pairwise_tokens` keep theirs on purpose:
    // new rows append), and nothing refuses deletes without a key.
    if b == Backend::Postgres {
        let keyless: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::TEXT FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname = current_schema() \
             AND NOT EXISTS (SELECT 1 FROM pg_index i \
               WHERE i.indrelid = c.oid AND i.indisprimary) \
             ORDER BY 1",
        )
        .fetch_all(&pool)
        .await?;
        assert!(
            keyless.is_empty(),
            "tables without a primary key: {keyless:?}"
        );
    }
    pool.close().await;
    store.close().await;
    Ok(())
}
