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

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use idvault_proto::v1 as pb;
use idvault_proto::v1::subject_service_client::SubjectServiceClient;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_idvault");
/// Upper bound for any single step (start-up, one RPC, one join), so a
/// hang fails the test instead of blocking it forever.
const STEP: Duration = Duration::from_secs(60);
/// How long the sequencer may take to catch up once writes stop.
const SEQUENCED_WITHIN: Duration = Duration::from_secs(30);
/// Kill cycles per backend.
const CYCLES: u32 = 20;
/// Concurrent writers per kill cycle.
const WRITERS: usize = 8;
const REQUEST_ID_HEADER: &str = "idvault-request-id";

fn random_hex() -> String {
    hex::encode(uuid::Uuid::new_v4().as_bytes())
}

/// A random duration in `lo ..= hi` milliseconds.
fn random_ms(lo: u64, hi: u64) -> Duration {
    let r = uuid::Uuid::new_v4().as_u128() % u128::from(hi - lo + 1);
    Duration::from_millis(lo + u64::try_from(r).unwrap())
}

async fn step<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A scratch data directory, removed at the end (kept when the test
/// failed, for inspection).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(format!("idvault-audit-kill-{}", random_hex()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("audit_kill: data dir kept at {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A running `idvault serve` child; SIGKILLed and reaped when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Server {
    /// Starts `idvault serve` on a free port and waits for its
    /// "listening on" line. `n` names its log file (`serve-N.log`).
    async fn start(dir: &Path, database_url: Option<&str>, n: u32) -> Self {
        let log = dir.join(format!("serve-{n}.log"));
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("IDVAULT_DATABASE_URL")
            .env_remove("IDVAULT_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(url) = database_url {
            cmd.args(["--database-url", url]);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        // Reads until the listening line, then keeps draining stdout so
        // the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("listening on")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line);
                }
            }
        });
        let mut server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let line = match tokio::time::timeout(STEP, rx).await {
            Ok(Ok(line)) => line,
            Ok(Err(_)) => panic!(
                "idvault serve exited before listening; stderr:\n{}",
                server.stderr()
            ),
            Err(_) => panic!(
                "idvault serve did not report listening in time; stderr:\n{}",
                server.stderr()
            ),
        };
        // "idvault listening on 127.0.0.1:PORT (mTLS), storage …"
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected listening line: {line}"));
        server.addr = addr
            .parse()
            .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
        assert_ne!(server.addr.port(), 0, "{line}");
        let storage = line.split("storage ").nth(1).unwrap_or_default();
        match database_url.and_then(|u| u.rsplit('/').next()) {
            Some(db) => assert!(
                storage.starts_with("postgres") && storage.ends_with(db),
                "{line}"
            ),
            None => assert!(storage.starts_with("sqlite"), "{line}"),
        }
        server
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL (std's `Child::kill` on unix) and reap: no shutdown path
    /// runs, as in a crash or an OOM kill.
    fn kill9(mut self) {
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(9), "{status}");
        }
        #[cfg(not(unix))]
        let _ = status;
    }

    /// SIGTERM and wait for a clean exit (the graceful shutdown path).
    async fn terminate(mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid}: {sent}");
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "idvault serve exited with {status} on SIGTERM; stderr:\n{}",
                    self.stderr()
                );
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "idvault serve did not stop on SIGTERM; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn channel(&self, dir: &Path, partner: &str) -> Channel {
        let creds = idvault_client::PartnerCredentials::from_dir(&dir.join("tls"), partner)
            .unwrap_or_else(|e| panic!("{partner} credentials: {e}"));
        step(
            "connect",
            idvault_client::connect(&format!("https://{}", self.addr), "localhost", &creds),
        )
        .await
        .unwrap_or_else(|e| panic!("connect as {partner}: {e}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "audit_kill: serve stderr ({}):\n{}",
                self.log.display(),
                self.stderr()
            );
        }
    }
}

fn postgres_admin_url() -> String {
    std::env::var("IDVAULT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn with_database(url: &str, db: &str) -> String {
    match url.rfind('/') {
        Some(i) if i > url.find("://").map_or(0, |s| s + 2) => format!("{}/{db}", &url[..i]),
        _ => format!("{url}/{db}"),
    }
}

async fn drop_database(admin: &str, name: &str) -> Result<(), sqlx::Error> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(admin).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&pool)
    .await?;
    pool.close().await;
    Ok(())
}

/// A fresh PostgreSQL database, dropped at the end (also when the test
/// fails).
struct PgDb {
    admin: String,
    name: String,
    url: String,
    dropped: bool,
}

impl PgDb {
    /// Creates the database; `None` (after a loud banner) when PostgreSQL
    /// is unreachable and not required here.
    async fn create() -> Option<Self> {
        sqlx::any::install_default_drivers();
        let admin = postgres_admin_url();
        let pool = match tokio::time::timeout(
            Duration::from_secs(5),
            sqlx::AnyPool::connect(&admin),
        )
        .await
        {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return unreachable_pg(&format!("{admin}: {e}")),
            Err(_) => return unreachable_pg(&format!("{admin}: timed out")),
        };
        let name = format!("idvault_audit_kill_{}", random_hex());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let url = with_database(&admin, &name);
        Some(Self {
            admin,
            name,
            url,
            dropped: false,
        })
    }

    async fn drop_now(mut self) {
        self.dropped = true;
        drop_database(&self.admin, &self.name).await.unwrap();
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // Failure path: drop it from a fresh runtime on another thread
        // (this may run inside the test's runtime).
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            if let Err(e) = rt.block_on(drop_database(&admin, &name)) {
                eprintln!("audit_kill: could not drop database {name}: {e}");
            }
        })
        .join();
    }
}

fn unreachable_pg(why: &str) -> Option<PgDb> {
    let required = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
        || std::env::var("IDVAULT_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
    if required {
        panic!("PostgreSQL is REQUIRED here (CI) but unreachable: {why}");
    }
    eprintln!(
        "\n*** PostgreSQL audit kill test DID NOT RUN: {why}\n*** Start PostgreSQL or set IDVAULT_TEST_POSTGRES_URL.\n"
    );
    None
}

/// The SQLite database of a data dir (the config's default).
fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("idvault.db").display())
}

/// `idvault <args…>` with no data dir and no database from the
/// environment, run from a directory without `./idvault-data`; killed
/// (and the test failed) if it runs longer than [`STEP`].
fn idvault(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("IDVAULT_DATABASE_URL")
        .env_remove("IDVAULT_DATA_DIR")
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = tokio::time::Instant::now() + STEP;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let (o, e) = (stdout.join().unwrap(), stderr.join().unwrap());
            panic!(
                "idvault {args:?} did not finish within {STEP:?}; stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&o),
                String::from_utf8_lossy(&e)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn show(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `idvault <args…> --data-dir DIR [--database-url URL]`, expected to
/// succeed; returns stdout.
fn run_cli(dir: &Path, args: &[&str], database_url: Option<&str>) -> String {
    let mut all: Vec<&str> = args.to_vec();
    let d = dir.to_str().unwrap();
    all.extend(["--data-dir", d]);
    if let Some(url) = database_url {
        all.extend(["--database-url", url]);
    }
    let out = idvault(&all);
    assert!(
        out.status.success(),
        "idvault {all:?} failed: {}",
        show(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

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
async fn advisory_locks(url: &str) -> i64 {
    scalar(
        url,
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()",
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
