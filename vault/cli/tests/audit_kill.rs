//! Crash safety of the audit transparency log, with the real `idvault`
//! binary over real mTLS:
//!
//! - writes are SIGKILLed mid-flight over and over (SQLite and PostgreSQL);
//!   every acknowledged CreateSubject has its subject and an `ok` audit
//!   leaf carrying the response's `idvault-request-id`, and the log then
//!   verifies with the public key alone and with the root key;
//! - on PostgreSQL, a second replica takes over sequencing when the one
//!   holding the sequencer lock is SIGKILLed;
//! - deleting a checkpointed leaf makes `idvault audit verify` fail
//!   (SQLite and PostgreSQL).
//!
//! PostgreSQL: when it is unreachable the PostgreSQL tests say loudly that
//! they DID NOT RUN and pass, unless `CI` is set (or
//! `IDVAULT_REQUIRE_POSTGRES=1`), in which case they fail.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use idvault_proto::v1 as pb;
use idvault_proto::v1::subject_service_client::SubjectServiceClient;
use tonic::transport::Channel;

/// How long the sequencer may take to catch up once writes stop.
const SEQUENCED_WITHIN: Duration = Duration::from_secs(30);
/// Kill cycles per backend.
const CYCLES: u32 = 20;
/// Concurrent writers per kill cycle.
const WRITERS: usize = 8;
const REQUEST_ID_HEADER: &str = "idvault-request-id";

/// Writes the verifier key (`idvault audit public-key`) to a file.
fn public_key_file(dir: &Path) -> PathBuf {
    let key = run_cli(dir, &["audit", "public-key"], None);
    assert_eq!(key.trim().lines().count(), 1, "one verifier key: {key:?}");
    let path = dir.join("audit.pub");
    std::fs::write(&path, key).unwrap();
    path
}

/// `idvault audit verify --public-key FILE --database-url URL`: the public
/// key alone, no data dir.
fn verify_public(key: &Path, url: &str) -> Output {
    idvault(&[
        "audit",
        "verify",
        "--public-key",
        key.to_str().unwrap(),
        "--database-url",
        url,
    ])
}

fn assert_intact(out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("audit log intact"),
        "{}",
        show(out)
    );
}

async fn pool(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    step("connect to the database", sqlx::AnyPool::connect(url))
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

async fn scalar(url: &str, sql: &'static str) -> i64 {
    let p = pool(url).await;
    let n: i64 = step(sql, sqlx::query_scalar(sql).fetch_one(&p))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    p.close().await;
    n
}

async fn pending_leaves(url: &str) -> i64 {
    scalar(url, "SELECT count(*) FROM audit_log WHERE idx IS NULL").await
}

/// Polls until every leaf has its tree index, while a server runs.
async fn wait_sequenced(url: &str) {
    let deadline = tokio::time::Instant::now() + SEQUENCED_WITHIN;
    loop {
        let n = pending_leaves(url).await;
        if n == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} audit leaves still unsequenced after {SEQUENCED_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The newest checkpoint's tree size (0 when there is none).
async fn newest_checkpoint(url: &str) -> i64 {
    scalar(
        url,
        "SELECT COALESCE(MAX(tree_size), 0) FROM audit_checkpoints",
    )
    .await
}

/// An acknowledged (Ok) CreateSubject.
#[derive(Debug, Clone)]
struct Acked {
    subject_id: String,
    request_id: Vec<u8>,
    partner: &'static str,
}

#[derive(Debug, Default)]
struct WriterResult {
    acked: Vec<Acked>,
    /// Calls that failed after the stop flag was set (cut by the kill).
    cut: u32,
}

/// Concurrent CreateSubject writers against one server, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<WriterResult>>,
}

impl Load {
    async fn start(server: &Server, dir: &Path, writers: usize, tag: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::with_capacity(writers);
        for w in 0..writers {
            let partner = if w % 2 == 0 { "partner-a" } else { "partner-b" };
            let ch = server.channel(dir, partner).await;
            let stop = Arc::clone(&stop);
            let tag = format!("{tag}w{w}");
            tasks.push(tokio::spawn(writer(ch, partner, stop, tag)));
        }
        Self { stop, tasks }
    }

    /// Tells the writers to stop starting calls; calls in flight go on.
    fn signal_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    async fn join(self) -> WriterResult {
        self.signal_stop();
        let mut all = WriterResult::default();
        for t in self.tasks {
            let r = step("writer task", t)
                .await
                .unwrap_or_else(|e| panic!("writer task failed: {e}"));
            all.acked.extend(r.acked);
            all.cut += r.cut;
        }
        all
    }
}

async fn writer(
    ch: Channel,
    partner: &'static str,
    stop: Arc<AtomicBool>,
    tag: String,
) -> WriterResult {
    let mut client = SubjectServiceClient::new(ch);
    let mut out = WriterResult::default();
    let mut n = 0u32;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let f = |name: &str, value: String| pb::Field {
            name: name.into(),
            value,
        };
        let req = pb::CreateSubjectRequest {
            fields: vec![
                f("given_name", format!("Ada{tag}n{n}")),
                f("family_name", "Lovelace".into()),
                f("email", format!("ada.{tag}.{n}@example.com")),
            ],
        };
        match tokio::time::timeout(STEP, client.create_subject(req)).await {
            Err(_) => panic!("CreateSubject {tag}#{n} hung"),
            Ok(Ok(resp)) => {
                let rid = resp
                    .metadata()
                    .get(REQUEST_ID_HEADER)
                    .unwrap_or_else(|| panic!("no {REQUEST_ID_HEADER} header: {resp:?}"))
                    .to_str()
                    .unwrap()
                    .to_owned();
                assert_eq!(rid.len(), 32, "{REQUEST_ID_HEADER}: {rid:?}");
                let request_id = hex::decode(&rid).unwrap();
                let subject_id = resp.into_inner().subject_id;
                out.acked.push(Acked {
                    subject_id,
                    request_id,
                    partner,
                });
            }
            Ok(Err(status)) => {
                // The kill comes after the stop flag, so a failure seen
                // before it is a real error.
                assert!(
                    stop.load(Ordering::SeqCst),
                    "CreateSubject {tag}#{n} failed with the server up: {status:?}"
                );
                out.cut += 1;
                break;
            }
        }
    }
    out
}

/// Every acknowledged subject is stored, and a leaf with its request id
/// and outcome `ok` names it.
async fn check_acked(url: &str, acked: &[Acked]) {
    let p = pool(url).await;
    let subjects: HashSet<Vec<u8>> = step(
        "read subjects",
        sqlx::query_scalar::<_, Vec<u8>>("SELECT subject_id FROM subjects").fetch_all(&p),
    )
    .await
    .unwrap()
    .into_iter()
    .collect();
    let rows: Vec<(Vec<u8>, String, Option<String>)> = step(
        "read audit_log",
        sqlx::query_as("SELECT request_id, outcome, subject FROM audit_log").fetch_all(&p),
    )
    .await
    .unwrap();
    p.close().await;
    let mut leaves: HashMap<Vec<u8>, Vec<(String, Option<String>)>> = HashMap::new();
    for (rid, outcome, subject) in rows {
        leaves.entry(rid).or_default().push((outcome, subject));
    }
    for a in acked {
        let id = uuid::Uuid::parse_str(&a.subject_id)
            .unwrap_or_else(|e| panic!("subject id {:?}: {e}", a.subject_id));
        assert!(
            subjects.contains(id.as_bytes().as_slice()),
            "acknowledged subject {} (request {}) lost",
            a.subject_id,
            hex::encode(&a.request_id)
        );
        let got = leaves.get(&a.request_id).unwrap_or_else(|| {
            panic!(
                "no audit leaf for acknowledged request {} (subject {})",
                hex::encode(&a.request_id),
                a.subject_id
            )
        });
        assert!(
            got.iter()
                .any(|(o, s)| o == "ok" && s.as_deref() == Some(a.subject_id.as_str())),
            "request {}: no ok leaf about subject {}: {got:?}",
            hex::encode(&a.request_id),
            a.subject_id
        );
    }
}

/// A few acknowledged subjects verify over the API (as their creator).
async fn verify_chains(server: &Server, dir: &Path, acked: &[Acked]) {
    for a in acked.iter().rev().take(3) {
        let mut c = SubjectServiceClient::new(server.channel(dir, a.partner).await);
        let r = step(
            "VerifySubjectChain",
            c.verify_subject_chain(pb::VerifySubjectChainRequest {
                subject_id: a.subject_id.clone(),
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("VerifySubjectChain {}: {e:?}", a.subject_id))
        .into_inner();
        assert!(r.intact, "{}: {r:?}", a.subject_id);
    }
}

async fn kill_during_writes(database_url: Option<&str>) {
    let started = tokio::time::Instant::now();
    let dir = TempDir::new();
    let d = dir.0.as_path();
    run_cli(d, &["init", "--dev"], None);
    let url = database_url.map_or_else(|| sqlite_url(d), str::to_owned);

    let mut acked: Vec<Acked> = Vec::new();
    let mut cut = 0u32;
    for cycle in 1..=CYCLES {
        let server = Server::start(d, database_url, cycle).await;
        // Everything acknowledged before the earlier kills is there.
        check_acked(&url, &acked).await;
        verify_chains(&server, d, &acked).await;
        let load = Load::start(&server, d, WRITERS, &format!("c{cycle}")).await;
        tokio::time::sleep(random_ms(100, 600)).await;
        // Kill with calls in flight.
        load.signal_stop();
        server.kill9();
        let r = load.join().await;
        eprintln!(
            "audit_kill: cycle {cycle}: {} acknowledged, {} cut by the kill",
            r.acked.len(),
            r.cut
        );
        acked.extend(r.acked);
        cut += r.cut;
    }
    assert!(!acked.is_empty(), "no write was acknowledged");
    assert!(cut > 0, "no call was in flight at any kill");

    // Last life: everything is there, the sequencer catches up.
    let server = Server::start(d, database_url, CYCLES + 1).await;
    check_acked(&url, &acked).await;
    verify_chains(&server, d, &acked).await;
    wait_sequenced(&url).await;
    server.kill9();
    assert_eq!(pending_leaves(&url).await, 0);
    let leaves = scalar(&url, "SELECT count(*) FROM audit_log").await;
    assert_eq!(
        newest_checkpoint(&url).await,
        leaves,
        "the newest checkpoint covers every leaf"
    );

    // The log verifies with the public key alone, and with the root key.
    let key = public_key_file(d);
    assert_intact(&verify_public(&key, &url));
    let out = run_cli(d, &["audit", "verify"], database_url);
    assert!(out.contains("audit log intact"), "{out}");
    eprintln!(
        "audit_kill: {CYCLES} kills, {} acknowledged writes, {cut} cut, {leaves} leaves, {:?}",
        acked.len(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_during_writes_sqlite() {
    kill_during_writes(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_during_writes_postgres() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    kill_during_writes(Some(&db.url)).await;
    db.drop_now().await;
}

/// Granted PostgreSQL advisory locks in the current database.
/// Holders of the sequencer's advisory lock (key 0x696476736571, "idvseq":
/// pg_locks shows a bigint key as its high and low 32 bits). Writers take
/// another advisory lock, the key floor's, shared while they insert a leaf.
async fn advisory_locks(url: &str) -> i64 {
    scalar(
        url,
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database() \
         AND l.classid = 26980 AND l.objid = 1987274097",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn sequencer_failover_postgres() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    let started = tokio::time::Instant::now();
    let dir = TempDir::new();
    let d = dir.0.as_path();
    run_cli(d, &["init", "--dev"], None);
    let url = db.url.clone();

    // A first, so it takes the sequencer lock; then B.
    let a = Server::start(d, Some(&url), 1).await;
    let b = Server::start(d, Some(&url), 2).await;
    let load_a = Load::start(&a, d, 4, "A").await;
    let load_b = Load::start(&b, d, 4, "B").await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A has published a checkpoint.
    let deadline = tokio::time::Instant::now() + SEQUENCED_WITHIN;
    while newest_checkpoint(&url).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint within {SEQUENCED_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(advisory_locks(&url).await, 1, "one sequencer");
    let before_kill = newest_checkpoint(&url).await;

    // Kill A with its calls in flight; B keeps taking writes.
    load_a.signal_stop();
    a.kill9();
    let ra = load_a.join().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rb = load_b.join().await;
    eprintln!(
        "audit_kill: A acknowledged {} ({} cut), B acknowledged {}",
        ra.acked.len(),
        ra.cut,
        rb.acked.len()
    );
    assert!(!ra.acked.is_empty() && !rb.acked.is_empty());

    // B takes over: every leaf (A's last ones, B's after the kill) gets
    // sequenced and checkpointed.
    wait_sequenced(&url).await;
    let leaves = scalar(&url, "SELECT count(*) FROM audit_log").await;
    let newest = newest_checkpoint(&url).await;
    assert_eq!(newest, leaves, "the newest checkpoint covers every leaf");
    assert!(
        newest > before_kill,
        "B checkpointed past A's last ({before_kill} -> {newest})"
    );
    assert_eq!(advisory_locks(&url).await, 1, "B holds the sequencer lock");
    let mut acked = ra.acked;
    acked.extend(rb.acked);
    check_acked(&url, &acked).await;
    verify_chains(&b, d, &acked).await;
    b.kill9();

    let key = public_key_file(d);
    assert_intact(&verify_public(&key, &url));
    let out = run_cli(d, &["audit", "verify"], Some(&url));
    assert!(out.contains("audit log intact"), "{out}");
    eprintln!(
        "audit_kill: failover: {} acknowledged, {leaves} leaves, {:?}",
        acked.len(),
        started.elapsed()
    );
    db.drop_now().await;
}

/// Writes, a checkpoint, a graceful stop; then deletes the newest
/// sequenced leaf: verification names a broken leaf and exits 1.
async fn deleted_leaf_breaks_verify(database_url: Option<&str>) {
    let dir = TempDir::new();
    let d = dir.0.as_path();
    run_cli(d, &["init", "--dev"], None);
    let url = database_url.map_or_else(|| sqlite_url(d), str::to_owned);

    let server = Server::start(d, database_url, 1).await;
    let load = Load::start(&server, d, 4, "t").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = load.join().await;
    assert_eq!(r.cut, 0, "no call fails with the server up");
    assert!(!r.acked.is_empty());
    check_acked(&url, &r.acked).await;
    wait_sequenced(&url).await;
    assert!(newest_checkpoint(&url).await > 0, "a checkpoint");
    // A graceful stop (SIGTERM) exits cleanly.
    server.terminate().await;

    let key = public_key_file(d);
    assert_intact(&verify_public(&key, &url));

    // Remove the newest sequenced leaf.
    let p = pool(&url).await;
    let deleted = sqlx::query("DELETE FROM audit_log WHERE idx = (SELECT max(idx) FROM audit_log)")
        .execute(&p)
        .await
        .unwrap()
        .rows_affected();
    p.close().await;
    assert_eq!(deleted, 1);

    let mut root_key = vec!["audit", "verify", "--data-dir", d.to_str().unwrap()];
    if let Some(u) = database_url {
        root_key.extend(["--database-url", u]);
    }
    for out in [verify_public(&key, &url), idvault(&root_key)] {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{}", show(&out));
        assert!(
            stdout.contains("BROKEN") && stdout.contains("leaf"),
            "{}",
            show(&out)
        );
        eprintln!("audit_kill: after the deletion: {}", stdout.trim());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_leaf_breaks_verify_sqlite() {
    deleted_leaf_breaks_verify(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_leaf_breaks_verify_postgres() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    deleted_leaf_breaks_verify(Some(&db.url)).await;
    db.drop_now().await;
}

/// A SIGTERM sent the moment the vault says it listens takes the graceful
/// path (its handlers are in place before that line), several times over:
/// a supervisor that stops a vault right after start must not kill it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_listening_stops_gracefully() {
    let tmp = TempDir::new();
    let dir = tmp.0.as_path();
    run_cli(dir, &["init", "--dev"], None);
    for i in 0..5 {
        Server::start(dir, None, i).await.terminate().await;
    }
}
