//! `idvault partner audit-check` with the real binary against a real vault
//! over mTLS: the first check keeps the checkpoint, the next proves the
//! newer one extends it, a request is proven included, a failed inclusion
//! step still keeps the checkpoint it proved, and a log cut back is a
//! ROLLBACK (exit 1) that leaves the kept checkpoint as it was.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;

use std::path::Path;
use std::time::Duration;

use idvault_proto::v1 as pb;
use idvault_proto::v1::subject_service_client::SubjectServiceClient;

/// Creates a subject; returns the response's request id (32 hex digits).
async fn create(server: &Server, dir: &Path, city: &str) -> String {
    let mut c = SubjectServiceClient::new(server.channel(dir, "partner-a").await);
    let r = c
        .create_subject(pb::CreateSubjectRequest {
            fields: vec![pb::Field {
                name: "city".into(),
                value: city.into(),
            }],
        })
        .await
        .unwrap();
    r.metadata()
        .get("idvault-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

async fn scalar(url: &str, sql: &'static str) -> i64 {
    sqlx::any::install_default_drivers();
    let p = sqlx::AnyPool::connect(url).await.unwrap();
    let n: i64 = sqlx::query_scalar(sql).fetch_one(&p).await.unwrap();
    p.close().await;
    n
}

/// Waits until every leaf is in a checkpoint.
async fn checkpointed(url: &str) {
    for _ in 0..200 {
        if scalar(url, "SELECT count(*) FROM audit_log WHERE idx IS NULL").await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("leaves still unsequenced after 20 s");
}

fn check(
    dir: &Path,
    server: &Server,
    vkey: &Path,
    state: &Path,
    id: Option<&str>,
) -> (bool, String) {
    let mut all = vec![
        "audit-check",
        "--public-key",
        vkey.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
    ];
    if let Some(id) = id {
        all.extend(["--request-id", id]);
    }
    let out = partner(dir, server, &all);
    (out.status.success(), show(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_check_keeps_extends_includes_and_catches_a_rollback() {
    let tmp = TempDir::new();
    let dir = tmp.0.as_path();
    run_cli(dir, &["init", "--dev"], None);
    let url = sqlite_url(dir);
    let server = Server::start(dir, None, 1).await;
    let vkey = dir.join("vault-audit.vkey");
    std::fs::write(&vkey, run_cli(dir, &["audit", "public-key"], None)).unwrap();
    let state = dir.join("kept-checkpoint");

    let first = create(&server, dir, "Lima").await;
    checkpointed(&url).await;
    let (ok, out) = check(dir, &server, &vkey, &state, None);
    assert!(ok && out.contains("first check"), "{out}");
    let kept_first = std::fs::read_to_string(&state).unwrap();

    for city in ["Cusco", "Puno"] {
        create(&server, dir, city).await;
    }
    checkpointed(&url).await;
    let (ok, out) = check(dir, &server, &vkey, &state, Some(&first));
    assert!(
        ok && out.contains("consistent with the kept checkpoint"),
        "{out}"
    );
    assert!(out.contains(&format!("request {first} is leaf 0")), "{out}");
    let kept = std::fs::read_to_string(&state).unwrap();
    assert_ne!(kept, kept_first, "the newer checkpoint is kept");

    // An inclusion that cannot be proven fails the run, but the checkpoint
    // proven consistent before it is kept.
    create(&server, dir, "Tacna").await;
    checkpointed(&url).await;
    let (ok, out) = check(dir, &server, &vkey, &state, Some(&random_hex()));
    assert!(!ok && out.contains("FAILED"), "{out}");
    let after_failed = std::fs::read_to_string(&state).unwrap();
    assert_ne!(after_failed, kept, "kept despite the failed inclusion step");
    assert!(after_failed.contains("\n4\n"), "{after_failed}");

    // The newest checkpoints deleted (a log cut back): a ROLLBACK, and the
    // kept checkpoint stays the newer one.
    sqlx::any::install_default_drivers();
    let p = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query("DELETE FROM audit_checkpoints WHERE tree_size > 1")
        .execute(&p)
        .await
        .unwrap();
    p.close().await;
    let (ok, out) = check(dir, &server, &vkey, &state, None);
    assert!(!ok && out.contains("FAILED"), "{out}");
    assert!(
        out.to_lowercase().contains("rollback") || out.contains("rolled back"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&state).unwrap(), after_failed);
    server.terminate().await;
}
