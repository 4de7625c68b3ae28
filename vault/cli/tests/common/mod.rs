//! The harness the kill tests share: the real `idvault` binary in a
//! scratch data directory, started, SIGKILLed or stopped; fresh PostgreSQL
//! databases; CLI runs with a time limit.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tonic::transport::Channel;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_idvault");
/// Upper bound for any single step (start-up, one RPC, one CLI run), so a
/// hang fails the test instead of blocking it forever.
pub(crate) const STEP: Duration = Duration::from_secs(60);

pub(crate) fn random_hex() -> String {
    hex::encode(uuid::Uuid::new_v4().as_bytes())
}

/// A random duration in `lo ..= hi` milliseconds.
pub(crate) fn random_ms(lo: u64, hi: u64) -> Duration {
    let r = uuid::Uuid::new_v4().as_u128() % u128::from(hi - lo + 1);
    Duration::from_millis(lo + u64::try_from(r).unwrap())
}

pub(crate) async fn step<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A scratch data directory, removed at the end (kept when the test
/// failed, for inspection).
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new() -> Self {
        let p = std::env::temp_dir().join(format!(
            "idvault-{}-{}",
            env!("CARGO_CRATE_NAME"),
            random_hex()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{}: data dir kept at {}",
                env!("CARGO_CRATE_NAME"),
                self.0.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A running `idvault serve` child; SIGKILLed and reaped when dropped.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) log: PathBuf,
}

impl Server {
    /// Starts `idvault serve` on a free port and waits for its
    /// "listening on" line. `n` names its log file (`serve-N.log`).
    pub(crate) async fn start(dir: &Path, database_url: Option<&str>, n: u32) -> Self {
        Self::start_env(dir, database_url, n, &[]).await
    }

    /// [`Server::start`] with extra environment variables for the child.
    pub(crate) async fn start_env(
        dir: &Path,
        database_url: Option<&str>,
        n: u32,
        env: &[(&str, &str)],
    ) -> Self {
        let log = dir.join(format!("serve-{n}.log"));
        let mut cmd = Command::new(BIN);
        cmd.envs(env.iter().copied());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "127.0.0.1:0"])
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

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL (std's `Child::kill` on unix) and reap: no shutdown path
    /// runs, as in a crash or an OOM kill.
    pub(crate) fn kill9(mut self) {
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
    pub(crate) async fn terminate(mut self) {
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

    pub(crate) async fn channel(&self, dir: &Path, partner: &str) -> Channel {
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
                "{}: serve stderr ({}):\n{}",
                env!("CARGO_CRATE_NAME"),
                self.log.display(),
                self.stderr()
            );
        }
    }
}

pub(crate) fn postgres_admin_url() -> String {
    std::env::var("IDVAULT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub(crate) fn with_database(url: &str, db: &str) -> String {
    match url.rfind('/') {
        Some(i) if i > url.find("://").map_or(0, |s| s + 2) => format!("{}/{db}", &url[..i]),
        _ => format!("{url}/{db}"),
    }
}

pub(crate) async fn drop_database(admin: &str, name: &str) -> Result<(), sqlx::Error> {
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
pub(crate) struct PgDb {
    pub(crate) admin: String,
    pub(crate) name: String,
    pub(crate) url: String,
    pub(crate) dropped: bool,
}

impl PgDb {
    /// Creates the database; `None` (after a loud banner) when PostgreSQL
    /// is unreachable and not required here.
    pub(crate) async fn create() -> Option<Self> {
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
        let name = format!("idvault_{}_{}", env!("CARGO_CRATE_NAME"), random_hex());
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

    pub(crate) async fn drop_now(mut self) {
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
                eprintln!(
                    "{}: could not drop database {name}: {e}",
                    env!("CARGO_CRATE_NAME")
                );
            }
        })
        .join();
    }
}

pub(crate) fn unreachable_pg(why: &str) -> Option<PgDb> {
    let required = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
        || std::env::var("IDVAULT_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
    if required {
        panic!("PostgreSQL is REQUIRED here (CI) but unreachable: {why}");
    }
    eprintln!(
        "\n*** PostgreSQL kill test DID NOT RUN: {why}\n*** Start PostgreSQL or set IDVAULT_TEST_POSTGRES_URL.\n"
    );
    None
}

/// The SQLite database of a data dir (the config's default).
pub(crate) fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("idvault.db").display())
}

/// `idvault <args…>` with no data dir and no database from the
/// environment, run from a directory without `./idvault-data`; killed
/// (and the test failed) if it runs longer than [`STEP`].
pub(crate) fn idvault(args: &[&str]) -> Output {
    idvault_env(args, &[])
}

/// [`idvault`] with extra environment variables.
pub(crate) fn idvault_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    idvault_in(&std::env::temp_dir(), args, env)
}

/// [`idvault_env`] started in the directory `cwd`.
pub(crate) fn idvault_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("IDVAULT_DATABASE_URL")
        .env_remove("IDVAULT_DATA_DIR")
        .current_dir(cwd)
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

/// `idvault partner --data-dir DIR --server <server> <args…>`.
pub(crate) fn partner(dir: &Path, server: &Server, args: &[&str]) -> Output {
    let url = format!("https://{}", server.addr);
    let mut all = vec![
        "partner",
        "--data-dir",
        dir.to_str().unwrap(),
        "--server",
        url.as_str(),
    ];
    all.extend(args);
    idvault(&all)
}

pub(crate) fn show(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `idvault <args…> --data-dir DIR [--database-url URL]`, expected to
/// succeed; returns stdout.
pub(crate) fn run_cli(dir: &Path, args: &[&str], database_url: Option<&str>) -> String {
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
