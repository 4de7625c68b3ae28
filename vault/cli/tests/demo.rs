//! `idvault demo` with the real binary: every step of the story does what
//! it says, on SQLite and on a fresh PostgreSQL database; the command
//! exits 0 only then.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;

fn demo(database_url: Option<&str>) {
    let mut args = vec!["demo"];
    if let Some(u) = database_url {
        args.extend(["--database-url", u]);
    }
    let out = idvault(&args);
    let text = show(&out);
    assert!(out.status.success(), "{text}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for step in 1..=9 {
        assert!(stdout.contains(&format!("[{step}/9]")), "{text}");
    }
    assert!(stdout.contains("All 9 steps did what they say"), "{text}");
    assert!(!stdout.contains("FAILED"), "{text}");
}

#[test]
fn demo_on_sqlite_tells_every_step() {
    demo(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_postgres_tells_every_step() {
    let Some(db) = PgDb::create().await else {
        return;
    };
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || demo(Some(&url)))
        .await
        .unwrap();
    db.drop_now().await;
}
