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
    let module = hsm.module.to_str().unwrap().to_owned();
    let out = idvault_env(
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
        &hsm.env(Some(PIN)),
    );
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
