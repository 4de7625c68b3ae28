//! Key custody with the real binary: a root key file sealed by an HSM key
//! through PKCS#11 (SoftHSM2), on SQLite and on a fresh PostgreSQL
//! database. The vault starts sealed and serves; it refuses to start,
//! with a message naming the cause, on a wrong PIN, no PIN, an altered
//! sealed file, a token that is gone and a seal key that is gone.
//!
//! SoftHSM2 (`softhsm2-util`, `libsofthsm2.so`, Debian package
//! `softhsm2`) is required when `CI` is set (or `IDVAULT_REQUIRE_SOFTHSM=1`);
//! elsewhere its absence is reported loudly and the test passes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use idvault_proto::v1 as pb;
use idvault_proto::v1::subject_service_client::SubjectServiceClient;

const PIN: &str = "4711-custody";
const TOKEN: &str = "idvault-test";
const KEY: &str = "idvault-root-seal";

/// A SoftHSM2 token store of the test's own (its own config file, so the
/// machine's tokens are never touched).
struct SoftHsm {
    conf: PathBuf,
    module: PathBuf,
}

impl SoftHsm {
    fn module() -> Option<PathBuf> {
        std::env::var_os("IDVAULT_TEST_PKCS11_MODULE")
            .map(PathBuf::from)
            .into_iter()
            .chain(
                [
                    "/usr/lib/softhsm/libsofthsm2.so",
                    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
                    "/usr/local/lib/softhsm/libsofthsm2.so",
                ]
                .map(PathBuf::from),
            )
            .find(|p| p.exists())
    }

    /// A fresh store under `dir` with one initialised token; `None` (after
    /// a loud banner) when SoftHSM2 is missing and not required.
    fn new(dir: &Path) -> Option<Self> {
        let Some(module) = Self::module() else {
            let required = std::env::var_os("CI").is_some()
                || std::env::var_os("IDVAULT_REQUIRE_SOFTHSM").is_some();
            assert!(
                !required,
                "SoftHSM2 is required (CI or IDVAULT_REQUIRE_SOFTHSM is set) but libsofthsm2.so \
                 was not found: apt-get install softhsm2"
            );
            eprintln!(
                "\n==== key_custody: SoftHSM2 NOT FOUND, the PKCS#11 tests DID NOT RUN \
                 (apt-get install softhsm2) ====\n"
            );
            return None;
        };
        let tokens = dir.join("hsm-tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let hsm = Self { conf, module };
        hsm.init_token(TOKEN);
        Some(hsm)
    }

    fn util(&self, args: &[&str]) {
        let out = Command::new("softhsm2-util")
            .args(args)
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .expect("softhsm2-util runs");
        assert!(out.status.success(), "softhsm2-util {args:?}: {out:?}");
    }

    fn init_token(&self, label: &str) {
        self.util(&[
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            PIN,
            "--so-pin",
            "so-4711",
        ]);
    }

    fn delete_token(&self, label: &str) {
        self.util(&["--delete-token", "--token", label]);
    }

    /// `idvault init --dev --seal pkcs11` of data directory `d` with the
    /// test token's seal key and PIN.
    fn init_sealed(&self, d: &Path) -> std::process::Output {
        let module = self.module.to_str().unwrap().to_owned();
        idvault_env(
            &[
                "init",
                "--dev",
                "--data-dir",
                d.to_str().unwrap(),
                "--seal",
                "pkcs11",
                "--module",
                &module,
                "--token-label",
                TOKEN,
                "--key-label",
                KEY,
            ],
            &self.env(Some(PIN)),
        )
    }

    fn env<'a>(&'a self, pin: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
        let mut env = vec![("SOFTHSM2_CONF", self.conf.to_str().unwrap())];
        if let Some(pin) = pin {
            env.push(("IDVAULT_PKCS11_PIN", pin));
        }
        env
    }
}

/// `idvault serve` expected to refuse to start; returns its stderr.
fn refused_start(dir: &Path, database_url: Option<&str>, env: &[(&str, &str)]) -> String {
    let mut args = vec![
        "serve",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    if let Some(u) = database_url {
        args.extend(["--database-url", u]);
    }
    let out = idvault_env(&args, env);
    assert!(!out.status.success(), "serve started: {}", show(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn sealed_start(database_url: Option<&str>) {
    let dir = TempDir::new();
    let d = dir.0.as_path();
    let Some(hsm) = SoftHsm::new(d) else {
        return;
    };
    let out = hsm.init_sealed(d);
    assert!(out.status.success(), "{}", show(&out));
    let sealed = std::fs::read_to_string(d.join("root.key")).unwrap();
    assert!(
        sealed.starts_with("idvault-sealed-root-keys v1\nseal pkcs11\n"),
        "{sealed}"
    );
    assert!(!sealed.contains("idvault-root-keys v1"));

    // Starts sealed and serves; a subject written survives a restart.
    let server = Server::start_env(d, database_url, 1, &hsm.env(Some(PIN))).await;
    let ch = server.channel(d, "partner-a").await;
    let id = SubjectServiceClient::new(ch.clone())
        .create_subject(pb::CreateSubjectRequest {
            fields: vec![pb::Field {
                name: "email".into(),
                value: "sealed@example.org".into(),
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .subject_id;
    server.terminate().await;

    // Rotation keeps the file sealed.
    let rotated = idvault_env(
        &["keys", "rotate", "--data-dir", d.to_str().unwrap()],
        &hsm.env(Some(PIN)),
    );
    assert!(rotated.status.success(), "{}", show(&rotated));
    assert!(
        std::fs::read_to_string(d.join("root.key"))
            .unwrap()
            .starts_with("idvault-sealed-root-keys v1\n")
    );

    let server = Server::start_env(d, database_url, 2, &hsm.env(Some(PIN))).await;
    let ch = server.channel(d, "partner-a").await;
    // Verifying the chain decrypts every packet under the unsealed keys.
    let got = SubjectServiceClient::new(ch)
        .verify_subject_chain(pb::VerifySubjectChainRequest {
            subject_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.intact && got.packets_checked == 1, "{got:?}");
    server.terminate().await;

    // Refusals, each naming its cause and never the PIN.
    let wrong = refused_start(d, database_url, &hsm.env(Some("0000-wrong")));
    assert!(wrong.contains("login refused"), "{wrong}");
    assert!(
        !wrong.contains("0000-wrong"),
        "the PIN is never printed: {wrong}"
    );
    let none = refused_start(d, database_url, &hsm.env(None));
    assert!(none.contains("needs a PIN"), "{none}");

    // An altered sealed file does not open.
    let good = std::fs::read_to_string(d.join("root.key")).unwrap();
    let at = good.find("sealed ").unwrap() + 7 + 20;
    let mut bytes = good.clone().into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(d.join("root.key"), &bytes).unwrap();
    let altered = refused_start(d, database_url, &hsm.env(Some(PIN)));
    assert!(altered.contains("did not open"), "{altered}");
    // So does one whose authenticated header was edited.
    std::fs::write(
        d.join("root.key"),
        good.replace(&format!("key-label {KEY}"), &format!("key-label {KEY}x")),
    )
    .unwrap();
    let relabelled = refused_start(d, database_url, &hsm.env(Some(PIN)));
    assert!(relabelled.contains("no AES key labelled"), "{relabelled}");
    std::fs::write(d.join("root.key"), &good).unwrap();

    // The token, then the seal key, gone.
    hsm.delete_token(TOKEN);
    let gone = refused_start(d, database_url, &hsm.env(Some(PIN)));
    assert!(gone.contains("no token labelled"), "{gone}");
    hsm.init_token(TOKEN);
    let no_key = refused_start(d, database_url, &hsm.env(Some(PIN)));
    assert!(no_key.contains("no AES key labelled"), "{no_key}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sealed_start_sqlite() {
    sealed_start(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sealed_start_postgres() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    sealed_start(Some(&db.url)).await;
    db.drop_now().await;
}

/// Not a test of its own: run by [`a_seal_key_usable_without_the_pin_is_refused`]
/// in a child process whose environment names the token store
/// (`SOFTHSM2_CONF`), it makes the seal key `IDVAULT_TEST_WEAK_KEY`
/// describes (`public`: not private; `aes128`: 16 bytes), otherwise as
/// the vault makes it.
#[test]
fn make_weak_seal_key() {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    let Some(kind) = std::env::var_os("IDVAULT_TEST_WEAK_KEY") else {
        return;
    };
    let module = SoftHsm::module().unwrap();
    let ctx = Pkcs11::new(module).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == TOKEN)
        .unwrap();
    let session = ctx.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::from(PIN)))
        .unwrap();
    let (private, len) = match kind.to_str().unwrap() {
        "public" => (false, 32u64),
        "aes128" => (true, 16),
        other => panic!("unknown kind {other}"),
    };
    session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Label(KEY.as_bytes().to_vec()),
                Attribute::ValueLen(len.into()),
                Attribute::Token(true),
                Attribute::Private(private),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
            ],
        )
        .unwrap();
}

/// A seal key any session may use without the PIN (not `CKA_PRIVATE`), or
/// one shorter than AES-256, is refused: `init --seal` does not seal the
/// root key under it.
#[test]
fn a_seal_key_usable_without_the_pin_is_refused() {
    for kind in ["public", "aes128"] {
        let dir = TempDir::new();
        let d = dir.0.as_path();
        let Some(hsm) = SoftHsm::new(d) else {
            return;
        };
        let made = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "make_weak_seal_key", "--nocapture"])
            .env("SOFTHSM2_CONF", &hsm.conf)
            .env("IDVAULT_TEST_WEAK_KEY", kind)
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        let out = hsm.init_sealed(d);
        assert!(!out.status.success(), "{kind}: {}", show(&out));
        assert!(show(&out).contains("not private"), "{kind}: {}", show(&out));
        assert!(!d.join("root.key").exists(), "{kind}: nothing sealed");
    }
}

// ---------------------------------------------------------------------------
// Rewrap killed at random points under load, resumed, then retire.

use idvault_proto::v1::match_service_client::MatchServiceClient;
use idvault_proto::v1::token_service_client::TokenServiceClient;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// People to find again: `(subject id, given, family, birth date)`.
type Person = (String, String, String, String);

fn person_fields(p: &Person) -> Vec<pb::Field> {
    [
        ("given_name", &p.1),
        ("family_name", &p.2),
        ("date_of_birth", &p.3),
    ]
    .iter()
    .map(|(n, v)| pb::Field {
        name: (*n).into(),
        value: (*v).clone(),
    })
    .collect()
}

async fn match_token(ch: &tonic::transport::Channel, p: &Person) -> Option<String> {
    MatchServiceClient::new(ch.clone())
        .r#match(pb::MatchRequest {
            query: Some(pb::MatchQuery {
                fields: person_fields(p),
                max_results: 1,
                ..Default::default()
            }),
        })
        .await
        .unwrap_or_else(|e| panic!("match {}: {e}", p.0))
        .into_inner()
        .candidates
        .first()
        .map(|c| c.pairwise_token.clone())
}

fn bridge_records() -> Vec<pb::BridgeRecord> {
    (0..20)
        .map(|i| pb::BridgeRecord {
            record_id: format!("r{i}"),
            identifiers: vec![
                pb::BridgeIdentifier {
                    r#type: pb::IdentifierType::Msisdn.into(),
                    value: format!("+4477009{i:05}"),
                    sealed_value: Vec::new(),
                },
                pb::BridgeIdentifier {
                    r#type: pb::IdentifierType::Account.into(),
                    value: format!("AC-{i}"),
                    sealed_value: Vec::new(),
                },
            ],
            customer_location: "lon-01".into(),
            address_location: String::new(),
        })
        .collect()
}

async fn import(ch: &tonic::transport::Channel) -> pb::ImportBridgeResponse {
    TokenServiceClient::new(ch.clone())
        .import_bridge(tokio_stream::iter(vec![pb::ImportBridgeRequest {
            records: bridge_records(),
            default_country_code: 44,
        }]))
        .await
        .unwrap()
        .into_inner()
}

/// Every person's chain verifies and every person matches to the token
/// they matched to before; every link is found again.
async fn check_everything(server: &Server, d: &Path, people: &[Person], tokens: &[String]) {
    let ch = server.channel(d, "partner-a").await;
    let mut subjects = SubjectServiceClient::new(ch.clone());
    for (p, t) in people.iter().zip(tokens) {
        let r = subjects
            .verify_subject_chain(pb::VerifySubjectChainRequest {
                subject_id: p.0.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.intact, "{}: {r:?}", p.0);
        assert_eq!(
            match_token(&ch, p).await.as_ref(),
            Some(t),
            "{} matches",
            p.0
        );
    }
    let again = import(&ch).await;
    assert_eq!(
        (again.entities_created, again.identifiers_linked),
        (0, 0),
        "every link is found"
    );
}

/// Calls CreateSubject and Match in a loop until told to stop; counts
/// calls and failures.
fn spawn_load(
    ch: tonic::transport::Channel,
    people: Vec<Person>,
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut i = 0usize;
        while !stop.load(Ordering::SeqCst) {
            i += 1;
            let created = SubjectServiceClient::new(ch.clone())
                .create_subject(pb::CreateSubjectRequest {
                    fields: vec![pb::Field {
                        name: "email".into(),
                        value: format!("load{i}@example.org"),
                    }],
                })
                .await;
            if let Err(e) = created {
                failures.lock().unwrap().push(format!("create: {e}"));
            }
            let p = &people[i % people.len()];
            let m = MatchServiceClient::new(ch.clone())
                .r#match(pb::MatchRequest {
                    query: Some(pb::MatchQuery {
                        fields: person_fields(p),
                        max_results: 1,
                        ..Default::default()
                    }),
                })
                .await;
            match m {
                Ok(r) if !r.get_ref().candidates.is_empty() => {}
                Ok(_) => failures
                    .lock()
                    .unwrap()
                    .push(format!("match: {} not found", p.0)),
                Err(e) => failures.lock().unwrap().push(format!("match: {e}")),
            }
            calls.fetch_add(2, Ordering::SeqCst);
        }
    })
}

async fn v1_subjects(url: &str) -> i64 {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM subjects WHERE kek_version = 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

async fn rewrap_killed_and_resumed(database_url: Option<&str>) {
    const PEOPLE: usize = 300;
    let dir = TempDir::new();
    let d = dir.0.as_path();
    let ds = d.to_str().unwrap();
    run_cli(d, &["init", "--dev"], None);
    // Matching every person twice, under load, is far above the default
    // per-partner match rate.
    let cfg = d.join("idvault.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let anchor = "token_domains = [\"logs\", \"partner-a\"]\n";
    assert!(text.contains(anchor), "dev config shape changed");
    std::fs::write(
        &cfg,
        text.replace(
            anchor,
            &format!("{anchor}match_queries_per_second = 100000\nmatch_burst = 100000\n"),
        ),
    )
    .unwrap();
    let server = Server::start(d, database_url, 1).await;
    let ch = server.channel(d, "partner-a").await;
    let mut people: Vec<Person> = Vec::new();
    for i in 0..PEOPLE {
        let p = (
            String::new(),
            format!("Given{i}"),
            format!("Family{}", i * 13 % 997),
            format!("19{:02}-{:02}-{:02}", 30 + i % 60, 1 + i % 12, 1 + i % 28),
        );
        let id = SubjectServiceClient::new(ch.clone())
            .create_subject(pb::CreateSubjectRequest {
                fields: person_fields(&p),
            })
            .await
            .unwrap()
            .into_inner()
            .subject_id;
        people.push((id, p.1, p.2, p.3));
    }
    let mut tokens = Vec::new();
    for p in &people {
        tokens.push(match_token(&ch, p).await.expect("matches before"));
    }
    let first = import(&ch).await;
    assert_eq!(first.entities_created, 20);
    server.terminate().await;

    run_cli(d, &["keys", "rotate"], None);
    let server = Server::start(d, database_url, 2).await;
    let load_ch = server.channel(d, "partner-a").await;
    let (stop, calls, failures) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(std::sync::Mutex::new(Vec::new())),
    );
    let load = spawn_load(
        load_ch,
        people.clone(),
        Arc::clone(&stop),
        Arc::clone(&calls),
        Arc::clone(&failures),
    );

    let mut rewrap_args = vec!["keys", "rewrap", "--data-dir", ds];
    if let Some(u) = database_url {
        rewrap_args.extend(["--database-url", u]);
    }
    let url = database_url.map_or_else(|| sqlite_url(d), str::to_owned);
    let mut kills = 0;
    let mut lefts = Vec::new();
    for cycle in 0..6 {
        let before = v1_subjects(&url).await;
        let mut child = Command::new(BIN)
            .args(&rewrap_args)
            .env_remove("IDVAULT_DATABASE_URL")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if cycle % 2 == 0 || before == 0 {
            // Anywhere: in its start-up, or in its work.
            tokio::time::sleep(random_ms(50, 1500)).await;
        } else {
            // Inside its work: once it has committed a batch (however slow
            // the machine), within a random few batches more.
            let deadline = tokio::time::Instant::now() + STEP;
            while child.try_wait().unwrap().is_none()
                && v1_subjects(&url).await == before
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(random_ms(0, 150)).await;
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        let status = child.wait().unwrap();
        let left = v1_subjects(&url).await;
        eprintln!("key_custody: rewrap cycle {cycle}: {status}, {left} subjects left on version 1");
        lefts.push(left);
    }
    // Killed runs made progress (the odd cycles waited for it).
    assert!(
        lefts.last().is_some_and(|l| *l < PEOPLE as i64),
        "no killed run made progress: {lefts:?}"
    );
    // Whatever is left still names version 1: retiring it is refused.
    let mut retire = vec!["keys", "retire", "1", "--data-dir", ds];
    if let Some(u) = database_url {
        retire.extend(["--database-url", u]);
    }
    // (Token domains are still pinned to version 1 here, so it is
    // referenced whatever the killed runs got through.)
    let refused = idvault(&retire);
    assert!(!refused.status.success(), "{}", show(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("still referenced"),
        "{}",
        show(&refused)
    );
    // Resumed to the end.
    let out = run_cli(d, &["keys", "rewrap"], database_url);
    assert!(out.contains("rewrapped"), "{out}");
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let failed = failures.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "calls failed during the rewrap: {failed:?}"
    );
    let n = calls.load(Ordering::SeqCst);
    assert!(n > 0);
    eprintln!("key_custody: {kills} rewraps killed; {n} calls under load, none failed");
    check_everything(&server, d, &people, &tokens).await;

    // Every domain off version 1, then version 1 retired.
    for domain in ["logs", "partner-a", "partner-b"] {
        run_cli(d, &["tokens", "rotate", "--domain", domain], None);
    }
    let out = run_cli(d, &["keys", "retire", "1"], database_url);
    assert!(out.contains("retired"), "{out}");
    let key_file = std::fs::read_to_string(d.join("root.key")).unwrap();
    assert!(
        !key_file.lines().any(|l| l.starts_with("1 ")),
        "version 1 is gone"
    );
    server.terminate().await;

    // Without version 1: everything still works and the log verifies.
    let server = Server::start(d, database_url, 3).await;
    check_everything(&server, d, &people, &tokens).await;
    server.terminate().await;
    let out = run_cli(d, &["audit", "verify"], database_url);
    assert!(out.contains("audit log intact"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rewrap_killed_and_resumed_sqlite() {
    rewrap_killed_and_resumed(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rewrap_killed_and_resumed_postgres() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    rewrap_killed_and_resumed(Some(&db.url)).await;
    db.drop_now().await;
}
