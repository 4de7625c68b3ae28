//! Backup and restore with the real binary: a backup taken while the vault
//! serves, people deleted after it, then a restore. Whoever was deleted
//! after the backup stays unreadable and unmatchable (from the deletion
//! journal alone, from the replaced database alone), everyone else is
//! intact, and the audit log verifies. On PostgreSQL the documented
//! procedure (pg_dump, pg_restore into a new database, `idvault restore`
//! without --from) is exercised the same way.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;

use std::path::Path;
use std::process::Command;

use idvault_proto::v1 as pb;
use idvault_proto::v1::match_service_client::MatchServiceClient;
use idvault_proto::v1::subject_service_client::SubjectServiceClient;

fn person(i: usize) -> Vec<pb::Field> {
    let given = [
        "Ottoline", "Barnaby", "Cressida", "Ignatius", "Philippa", "Leopold",
    ][i];
    let family = [
        "Fairweather",
        "Quennell",
        "Trelawney",
        "Ashdown",
        "Marchbanks",
        "Vantongeren",
    ][i];
    [
        ("given_name", given.to_owned()),
        ("family_name", family.to_owned()),
        ("date_of_birth", format!("19{}-0{}-1{}", 50 + i, 1 + i, i)),
        (
            "email",
            format!("{}.{}@example.org", given, family).to_lowercase(),
        ),
    ]
    .into_iter()
    .map(|(name, value)| pb::Field {
        name: name.into(),
        value,
    })
    .collect()
}

/// Creates six people; returns `(subject id, pairwise token)` of each.
async fn create_people(server: &Server, dir: &Path) -> Vec<(String, String)> {
    let mut c = SubjectServiceClient::new(server.channel(dir, "partner-a").await);
    let mut out = Vec::new();
    for i in 0..6 {
        let r = c
            .create_subject(pb::CreateSubjectRequest { fields: person(i) })
            .await
            .unwrap()
            .into_inner();
        out.push((r.subject_id, r.pairwise_token));
    }
    out
}

async fn delete(server: &Server, dir: &Path, id: &str) {
    SubjectServiceClient::new(server.channel(dir, "partner-a").await)
        .delete_subject(pb::DeleteSubjectRequest {
            subject_id: id.to_owned(),
        })
        .await
        .unwrap();
}

/// Whether person `i` is readable (its chain verifies) and matchable (an
/// exact query finds its token).
async fn present(server: &Server, dir: &Path, i: usize, who: &(String, String)) -> (bool, bool) {
    let mut s = SubjectServiceClient::new(server.channel(dir, "partner-a").await);
    let readable = match s
        .verify_subject_chain(pb::VerifySubjectChainRequest {
            subject_id: who.0.clone(),
        })
        .await
    {
        Ok(r) => {
            assert!(r.into_inner().intact, "person {i}'s chain is broken");
            true
        }
        Err(e) if e.code() == tonic::Code::NotFound => false,
        Err(e) => panic!("person {i}: {e:?}"),
    };
    let mut m = MatchServiceClient::new(server.channel(dir, "partner-a").await);
    let found = m
        .r#match(pb::MatchRequest {
            query: Some(pb::MatchQuery {
                fields: person(i),
                max_results: 3,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .candidates
        .iter()
        .any(|c| c.pairwise_token == who.1);
    (readable, found)
}

async fn check_after_restore(
    server: &Server,
    dir: &Path,
    people: &[(String, String)],
    deleted: &[usize],
) {
    for (i, who) in people.iter().enumerate() {
        let (readable, matchable) = present(server, dir, i, who).await;
        if deleted.contains(&i) {
            assert!(!readable, "deleted person {i} came back (readable)");
            assert!(!matchable, "deleted person {i} came back (matchable)");
        } else {
            assert!(
                readable && matchable,
                "kept person {i} lost: {readable} {matchable}"
            );
        }
    }
}

/// `idvault restore --from BACKUP` expected to be refused; its output.
fn refused_restore(dir: &Path, backup: &Path) -> String {
    let out = idvault(&[
        "restore",
        "--data-dir",
        dir.to_str().unwrap(),
        "--from",
        backup.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "{}", show(&out));
    show(&out)
}

/// Moves the SQLite database (with its -wal and -shm) from `from` to `to`.
fn move_db(from: &Path, to: &Path) {
    for s in ["", "-wal", "-shm"] {
        let f = from.join(format!("idvault.db{s}"));
        if f.exists() {
            std::fs::rename(&f, to.join(format!("idvault.db{s}"))).unwrap();
        }
    }
}

fn audit_verify(dir: &Path, database_url: Option<&str>) {
    let out = run_cli(dir, &["audit", "verify"], database_url);
    assert!(out.contains("intact"), "{out}");
}

/// Serves, backs up while serving, deletes 0, 2 and 3, stops; returns the
/// people.
async fn back_up_then_delete(dir: &Path) -> Vec<(String, String)> {
    run_cli(dir, &["init", "--dev"], None);
    let server = Server::start(dir, None, 1).await;
    let people = create_people(&server, dir).await;
    // The database is the owner's alone.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["idvault.db", "idvault.db-wal", "idvault.db-shm"] {
            let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{f:?} is mode {mode:o}");
        }
    }
    delete(&server, dir, &people[5].0).await; // before the backup: stays deleted
    let backup = dir.join("backup.db");
    let out = run_cli(dir, &["backup", "--out", backup.to_str().unwrap()], None);
    assert!(out.contains("5 subjects"), "{out}");
    // A backup never overwrites.
    let again = idvault(&[
        "backup",
        "--data-dir",
        dir.to_str().unwrap(),
        "--out",
        backup.to_str().unwrap(),
    ]);
    assert!(!again.status.success() && show(&again).contains("exists already"));
    for i in [0, 2, 3] {
        delete(&server, dir, &people[i].0).await;
    }
    server.terminate().await;
    people
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_restore_from_the_journal_alone_keeps_the_deleted_deleted() {
    let tmp = TempDir::new();
    let dir = tmp.0.as_path();
    let people = back_up_then_delete(dir).await;
    // The database is lost: only the backup and the journal are left.
    for s in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("idvault.db{s}")));
    }
    let backup = dir.join("backup.db");
    let out = run_cli(dir, &["restore", "--from", backup.to_str().unwrap()], None);
    assert!(out.contains("3 subjects shredded"), "{out}");
    assert!(out.contains("audit log intact"), "{out}");
    audit_verify(dir, None);
    let server = Server::start(dir, None, 2).await;
    check_after_restore(&server, dir, &people, &[0, 2, 3, 5]).await;
    // Those match answers are on the record as keyed tags: with the root
    // key, `audit revealed` finds the one that revealed a kept person
    // (once its leaf is in a checkpoint, within about a second).
    let mut listed = String::new();
    for _ in 0..40 {
        listed = run_cli(dir, &["audit", "revealed", &people[1].0], None);
        if !listed.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(
        listed
            .lines()
            .any(|l| l.contains("\tspiffe://idvault.dev/partner/partner-a\t")),
        "{listed}"
    );
    // No restore under a serving vault.
    let busy = refused_restore(dir, &backup);
    assert!(busy.contains("stop every vault process"), "{busy}");
    server.terminate().await;
    audit_verify(dir, None);
    // Every token of this version's database carries its MAC, restored
    // ones included: the upgrade's seal finds none to seal.
    let sealed = run_cli(dir, &["keys", "seal-upgraded-tokens"], None);
    assert!(sealed.contains("pairwise tokens sealed: 0"), "{sealed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_restore_reads_the_replaced_database_and_refuses_blind() {
    let tmp = TempDir::new();
    let dir = tmp.0.as_path();
    let people = back_up_then_delete(dir).await;
    // The journal is lost (or was turned off): the replaced database's
    // audit log still says who was deleted.
    std::fs::remove_file(dir.join("shreds.log")).unwrap();
    let backup = dir.join("backup.db");
    // With neither a journal nor a database to replace, it refuses.
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    move_db(dir, &elsewhere);
    let blind = refused_restore(dir, &backup);
    assert!(blind.contains("would come back"), "{blind}");
    assert!(
        !dir.join("idvault.db").exists(),
        "a refused restore changed nothing"
    );
    move_db(&elsewhere, dir);
    // An unfinished restore (its marker left behind) keeps the vault from
    // starting.
    std::fs::write(dir.join("restore-pending"), "# test\n").unwrap();
    let refused = idvault(&[
        "serve",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    assert!(!refused.status.success(), "{}", show(&refused));
    assert!(
        show(&refused).contains("did not finish"),
        "{}",
        show(&refused)
    );
    let out = run_cli(dir, &["restore", "--from", backup.to_str().unwrap()], None);
    assert!(out.contains("3 subjects shredded"), "{out}");
    assert!(out.contains("kept as"), "{out}");
    assert!(
        !dir.join("restore-pending").exists(),
        "a finished restore leaves no marker"
    );
    let server = Server::start(dir, None, 2).await;
    check_after_restore(&server, dir, &people, &[0, 2, 3, 5]).await;
    server.terminate().await;
    audit_verify(dir, None);
}

/// A restore that stopped after it put the backup in place, where no
/// database was left to set aside (a lost disk), is finished by a rerun
/// without `--from`; a rerun that would finish it from fewer sources than
/// it read, or on another database, is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_unfinished_restore_is_finished_from_what_it_read() {
    let tmp = TempDir::new();
    let dir = tmp.0.as_path();
    let people = back_up_then_delete(dir).await;
    for s in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("idvault.db{s}")));
    }
    // Where `restore --from` stops when shredding again fails: the backup
    // in place, the marker naming a set-aside name that was never used.
    std::fs::copy(dir.join("backup.db"), dir.join("idvault.db")).unwrap();
    let extra = dir.join("elsewhere.log");
    std::fs::copy(dir.join("shreds.log"), &extra).unwrap();
    let never = dir.join("idvault.db.replaced-1-00000000");
    let marker = |target: &str| {
        format!(
            "# test\nset-aside {n}\nswap-aside {n}\ndb-absent\nbackup-leaves 1\n{target}shred-log {j}\nshred-log {e}\n",
            n = never.display(),
            j = std::fs::canonicalize(dir.join("shreds.log"))
                .unwrap()
                .display(),
            e = std::fs::canonicalize(&extra).unwrap().display(),
        )
    };
    let pending = dir.join("restore-pending");
    let rerun = |more: &[&str]| {
        let mut a = vec!["restore", "--data-dir", dir.to_str().unwrap()];
        a.extend_from_slice(more);
        idvault(&a)
    };
    // On another database: refused.
    std::fs::write(
        &pending,
        marker("target sqlite:///elsewhere/idvault.db?mode=rwc\n"),
    )
    .unwrap();
    let out = rerun(&["--shred-log", extra.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("was of the database"), "{}", show(&out));
    assert!(pending.exists(), "a refused rerun keeps the marker");
    // On another file, by its resolved path, whatever the URL's text
    // (a relative path read from another directory): refused.
    std::fs::write(
        &pending,
        marker(&format!(
            "target-path {}\n",
            std::fs::canonicalize(dir)
                .unwrap()
                .join("other.db")
                .display()
        )),
    )
    .unwrap();
    let out = rerun(&["--shred-log", extra.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("was of the database"), "{}", show(&out));
    assert!(pending.exists(), "a refused rerun keeps the marker");
    // Without a journal the first run read: refused.
    std::fs::write(&pending, marker("")).unwrap();
    let out = rerun(&[]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("--shred-log"), "{}", show(&out));
    assert!(pending.exists(), "a refused rerun keeps the marker");
    // A database made since in the backup's place (an empty one, as any
    // command opening the configured URL makes) is not taken for it.
    let kept = dir.join("kept.db");
    std::fs::rename(dir.join("idvault.db"), &kept).unwrap();
    std::fs::write(dir.join("idvault.db"), b"").unwrap();
    let out = rerun(&["--shred-log", extra.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("is not the backup"), "{}", show(&out));
    assert!(pending.exists(), "a refused rerun keeps the marker");
    for s in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("idvault.db{s}")));
    }
    std::fs::rename(&kept, dir.join("idvault.db")).unwrap();
    // With it: finished, the people deleted after the backup shredded.
    let out = rerun(&["--shred-log", extra.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("3 subjects shredded"), "{}", show(&out));
    assert!(!pending.exists(), "a finished restore leaves no marker");
    let server = Server::start(dir, None, 2).await;
    check_after_restore(&server, dir, &people, &[0, 2, 3, 5]).await;
    server.terminate().await;
    audit_verify(dir, None);
}

/// A deletion journal line under a retired key version, about a person the
/// restored database holds and no other record says was deleted, is not
/// applied: whoever kept a copy of the retired root key could write such
/// lines. Genuine lines of that version (people deleted before the
/// rotation) change nothing and stop nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_restore_does_not_apply_retired_key_lines_alone() {
    let tmp = TempDir::new();
    let dir = tmp.0.as_path();
    run_cli(dir, &["init", "--dev"], None);
    let server = Server::start(dir, None, 1).await;
    let people = create_people(&server, dir).await;
    delete(&server, dir, &people[5].0).await; // journaled under version 1
    server.terminate().await;
    // Version 2, everything moved to it, version 1 retired.
    run_cli(dir, &["keys", "rotate"], None);
    run_cli(dir, &["keys", "rewrap"], None);
    for domain in ["logs", "partner-a", "partner-b"] {
        run_cli(dir, &["tokens", "rotate", "--domain", domain], None);
    }
    let out = run_cli(dir, &["keys", "retire", "1"], None);
    assert!(out.contains("retired"), "{out}");
    let backup = dir.join("backup.db");
    run_cli(dir, &["backup", "--out", backup.to_str().unwrap()], None);
    // Someone with a copy of version 1's root key (its journal key is in
    // the key file, as `retired 1 shred-log`) writes a line deleting
    // person 1 long before the backup.
    let key_file = std::fs::read_to_string(dir.join("root.key")).unwrap();
    let key_hex = key_file
        .lines()
        .find_map(|l| l.strip_prefix("retired 1 shred-log "))
        .expect("version 1's journal key is kept");
    let key = hex::decode(key_hex.trim()).unwrap();
    let body = format!(
        "shred1 {} 1 {} {} 1",
        people[1].0,
        "ab".repeat(16),
        "cd".repeat(32)
    );
    let mac = idvault_core::crypto::hmac_sha256(&key, &[body.as_bytes()]);
    let journal = dir.join("shreds.log");
    let mut text = std::fs::read_to_string(&journal).unwrap();
    text.push_str(&format!("{body} {}\n", hex::encode(mac)));
    std::fs::write(&journal, text).unwrap();
    // The database is lost: the backup and the journal are all there is.
    for s in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("idvault.db{s}")));
    }
    let refused = refused_restore(dir, &backup);
    assert!(refused.contains("retired root key version"), "{refused}");
    assert!(
        !dir.join("idvault.db").exists(),
        "a refused restore changed nothing"
    );
    let out = run_cli(
        dir,
        &[
            "restore",
            "--from",
            backup.to_str().unwrap(),
            "--accept-unverified-deletions",
        ],
        None,
    );
    assert!(out.contains("audit log intact"), "{out}");
    let server = Server::start(dir, None, 2).await;
    check_after_restore(&server, dir, &people, &[5]).await;
    server.terminate().await;
}

/// A backup altered to keep people a deletion removes (a trigger that
/// ignores deletes) does not pass for restored: the restore stops when a
/// person it shreds again is still there, and the vault does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_restore_stops_when_a_deleted_person_stays() {
    use sqlx::Connection;
    let tmp = TempDir::new();
    let dir = tmp.0.as_path();
    back_up_then_delete(dir).await;
    let backup = dir.join("backup.db");
    let mut conn = sqlx::sqlite::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new().filename(&backup),
    )
    .await
    .unwrap();
    sqlx::raw_sql(
        "CREATE TRIGGER keep_them BEFORE DELETE ON subjects BEGIN SELECT RAISE(IGNORE); END",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    // Named relative to where it starts: the marker must still name every
    // file by its resolved path, for a rerun started anywhere.
    let parent = dir.parent().unwrap();
    let relative = dir.file_name().unwrap().to_str().unwrap();
    let out = idvault_in(
        parent,
        &[
            "restore",
            "--data-dir",
            relative,
            "--from",
            backup.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("still there"), "{}", show(&out));
    let pending = dir.join("restore-pending");
    assert!(pending.exists(), "the vault does not start on it");
    let marker = std::fs::read_to_string(&pending).unwrap();
    let real = std::fs::canonicalize(dir).unwrap();
    for line in marker.lines().filter(|l| !l.starts_with('#')) {
        if let Some((key, path)) = line.split_once(' ')
            && ["set-aside", "swap-aside", "target-path", "shred-log"].contains(&key)
        {
            assert!(
                Path::new(path).starts_with(&real),
                "{key} is not resolved: {marker}"
            );
        }
    }
    // Rerun from elsewhere, the data directory named absolutely: the
    // restore is found unfinished (the backup is in place), not taken for
    // one that never swapped, and stops at the same person again.
    let out = idvault_in(dir, &["restore", "--data-dir", real.to_str().unwrap()], &[]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("still there"), "{}", show(&out));
    assert!(!show(&out).contains("as it was"), "{}", show(&out));
    assert!(pending.exists(), "the vault still does not start on it");
}

/// A backup of another vault (its checkpoints signed by another key) is
/// refused before anything moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_restore_refuses_another_vaults_backup() {
    let (mine, theirs) = (TempDir::new(), TempDir::new());
    let (dir, other) = (mine.0.as_path(), theirs.0.as_path());
    run_cli(dir, &["init", "--dev"], None);
    run_cli(other, &["init", "--dev"], None);
    let server = Server::start(other, None, 1).await;
    create_people(&server, other).await;
    // Backed up once a checkpoint covers something.
    let foreign = other.join("foreign.db");
    let mut taken = String::new();
    for i in 0..80 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let out = other.join(format!("try-{i}.db"));
        taken = run_cli(other, &["backup", "--out", out.to_str().unwrap()], None);
        if !taken.contains("newest checkpoint 0 leaves") {
            std::fs::rename(&out, &foreign).unwrap();
            break;
        }
    }
    assert!(foreign.exists(), "no checkpoint in 20 s: {taken}");
    server.terminate().await;
    // This vault's database (empty: opening it makes it).
    idvault(&["audit", "verify", "--data-dir", dir.to_str().unwrap()]);
    let before = std::fs::read(dir.join("idvault.db")).unwrap();
    let out = refused_restore(dir, &foreign);
    assert!(out.contains("not a backup of this vault"), "{out}");
    assert_eq!(std::fs::read(dir.join("idvault.db")).unwrap(), before);
    assert!(!dir.join("restore-pending").exists());
}

fn pg_tool(tool: &str, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is needed for the PostgreSQL backup procedure: {e}"));
    assert!(out.status.success(), "{tool} {args:?}: {out:?}");
}

/// docs/operations.md, "PostgreSQL": pg_dump while serving, pg_restore
/// into a new database, then `idvault restore` without --from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_documented_procedure_keeps_the_deleted_deleted() {
    let Some(old) = PgDb::create().await else {
        return;
    };
    let Some(new) = PgDb::create().await else {
        return;
    };
    let tmp = TempDir::new();
    let dir = tmp.0.as_path();
    run_cli(dir, &["init", "--dev"], None);
    let server = Server::start(dir, Some(&old.url), 1).await;
    let people = create_people(&server, dir).await;
    let dump = dir.join("vault.dump");
    pg_tool(
        "pg_dump",
        &[
            "--format=custom",
            "--file",
            dump.to_str().unwrap(),
            &old.url,
        ],
    );
    for i in [1, 4] {
        delete(&server, dir, &people[i].0).await;
    }
    server.terminate().await;
    pg_tool(
        "pg_restore",
        &["--no-owner", "--dbname", &new.url, dump.to_str().unwrap()],
    );
    let out = run_cli(dir, &["restore"], Some(&new.url));
    assert!(out.contains("2 subjects shredded"), "{out}");
    audit_verify(dir, Some(&new.url));
    let server = Server::start(dir, Some(&new.url), 2).await;
    check_after_restore(&server, dir, &people, &[1, 4]).await;
    server.terminate().await;
    audit_verify(dir, Some(&new.url));
    new.drop_now().await;
    old.drop_now().await;
}
