//! `idvault keys …`: root key versions, their custody and lifecycle.

use anyhow::bail;
use clap::Subcommand;
use idvault_core::SystemRng;
use idvault_core::keys::{KeyProvider, RetiredPublicKey, RetiredPurpose, StaticKeyProvider};
use idvault_server::config::Config;
use idvault_server::keyfile::Protection;

use super::DataDir;

#[derive(Subcommand, Debug)]
pub(crate) enum KeysCommand {
    /// Add a new root key version; older versions stay and keep old data
    /// readable. Token domains stay on the version they use (move one with
    /// `idvault tokens rotate --domain D`). Takes effect at the next start
    /// of each vault process.
    Rotate {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Move everything stored forward to the current root key version, in
    /// audited batches, while the vault serves: data keys, match indexes,
    /// cross-reference links, row MACs and audit leaf MACs. Resumable: run
    /// it again after a crash. Run it after `keys rotate` and a restart
    /// of every vault process.
    Rewrap {
        #[command(flatten)]
        dir: DataDir,
        /// Database URL (overrides the config).
        #[arg(long, env = "IDVAULT_DATABASE_URL")]
        database_url: Option<String>,
    },
    /// Remove root key version N from the key file, only when nothing
    /// stored references it any more (run `keys rewrap` first); refuses
    /// with a count of what still does. Its audit and receipt verification
    /// keys stay in the file, so what it signed stays verifiable.
    Retire {
        #[command(flatten)]
        dir: DataDir,
        /// The version to retire.
        version: u32,
        /// Database URL (overrides the config).
        #[arg(long, env = "IDVAULT_DATABASE_URL")]
        database_url: Option<String>,
    },
    /// Show the root key versions, the token domains' versions, the
    /// rewrap backlog and what references each older version.
    Status {
        #[command(flatten)]
        dir: DataDir,
        /// Database URL (overrides the config).
        #[arg(long, env = "IDVAULT_DATABASE_URL")]
        database_url: Option<String>,
    },
    /// Once, right after upgrading a database from before pairwise token
    /// MACs (migration 0019): seal every pairwise token that carries no
    /// MAC, as it is, in audited batches. The vault never does this on its
    /// own; at any other time a token without a MAC was put in the
    /// database by hand, and names nobody. Resumable.
    SealUpgradedTokens {
        #[command(flatten)]
        dir: DataDir,
        /// Database URL (overrides the config).
        #[arg(long, env = "IDVAULT_DATABASE_URL")]
        database_url: Option<String>,
    },
    /// Seal an existing plain root key file with a PKCS#11 (HSM) key,
    /// made in the token if absent; the PIN comes from `[keys] pin_file`
    /// or IDVAULT_PKCS11_PIN.
    Seal {
        #[command(flatten)]
        dir: DataDir,
        /// PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so).
        #[arg(long)]
        module: std::path::PathBuf,
        /// Label of the token holding the seal key.
        #[arg(long)]
        token_label: String,
        /// Label of the AES seal key.
        #[arg(long)]
        key_label: String,
    },
    /// Print the vault's release verification key (Ed25519, 64 hex digits):
    /// partners check every release's signature with it
    /// (docs/consent.md); with --all, one line per root key version,
    /// oldest first.
    ReleasePublicKey {
        #[command(flatten)]
        dir: DataDir,
        /// Every version's key (the last is current).
        #[arg(long)]
        all: bool,
    },
    /// Print the vault's deletion receipt verifier key in signed-note form
    /// (`name+keyid+base64`): anyone checks a receipt with it
    /// (`idvault partner verify-receipt`); with --all, one per version,
    /// retired ones included, oldest first.
    ReceiptPublicKey {
        #[command(flatten)]
        dir: DataDir,
        /// Every version's key (the last is current).
        #[arg(long)]
        all: bool,
    },
}

pub(crate) fn pin_file(cfg: &Config) -> Option<std::path::PathBuf> {
    cfg.file.keys.pin_file.as_ref().map(|p| cfg.resolve(p))
}

/// Every token domain a partner may use, sorted.
pub(crate) fn configured_domains(cfg: &Config) -> Vec<String> {
    let mut out: Vec<String> = cfg
        .registry
        .partners()
        .iter()
        .flat_map(|p| p.token_domains.iter().cloned())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Adds a root key version, pinning every configured token domain that
/// is not pinned yet to the version it used so far.
fn rotate(cfg: &Config) -> anyhow::Result<()> {
    let (v, pinned) = idvault_server::keyfile::rotate(
        &cfg.resolve(&cfg.file.keys.root_key_file),
        pin_file(cfg).as_deref(),
        &SystemRng::default(),
        &configured_domains(cfg),
    )?;
    println!(
        "root key version {v} is now current (from each vault process's next start); older \
         versions remain for reading until `idvault keys rewrap` moves data forward"
    );
    if !pinned.is_empty() {
        println!(
            "token domains kept on their version: {} (move one with `idvault tokens rotate --domain D`)",
            pinned.join(", ")
        );
    }
    Ok(())
}

async fn seal_upgraded_tokens(dir: &DataDir, database_url: Option<String>) -> anyhow::Result<()> {
    let cfg = dir.load()?;
    let url = database_url.unwrap_or_else(|| cfg.database_url());
    // Not during a restore (it holds the lock exclusively).
    let _lock =
        idvault_server::backup::DataDirLock::shared(&cfg.base_dir).map_err(anyhow::Error::msg)?;
    let vault = idvault_server::app::open_vault(&cfg, &url).await?;
    let sealed = vault.seal_upgraded_pairwise_tokens().await;
    vault.store().close().await;
    println!("pairwise tokens sealed: {}", sealed?);
    Ok(())
}

async fn rewrap(dir: &DataDir, database_url: Option<String>) -> anyhow::Result<()> {
    let cfg = dir.load()?;
    let url = database_url.unwrap_or_else(|| cfg.database_url());
    // Not during a restore (it holds the lock exclusively).
    let _lock =
        idvault_server::backup::DataDirLock::shared(&cfg.base_dir).map_err(anyhow::Error::msg)?;
    let vault = idvault_server::app::open_vault(&cfg, &url).await?;
    let target = vault.keys().current_version();
    // A vault process started before the key file last changed (the
    // rotation) and still writing under an older version would find data
    // moved to `target` unreadable: its newest audit record tells.
    let changed_ms = std::fs::metadata(cfg.resolve(&cfg.file.keys.root_key_file))?
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    if vault
        .store()
        .recent_leaves_below(target, changed_ms)
        .await?
        > 0
    {
        vault.store().close().await;
        bail!(
            "the newest audit record was written under a root key version below {target} after \
             the key file changed: a vault process still runs without version {target}. Restart \
             every vault process after `keys rotate`, then rewrap (data moved to a version a \
             running process does not hold would be unreadable to it)"
        );
    }
    let backlog = vault.rewrap_backlog().await?;
    println!(
        "rewrap to root key version {target}: {}",
        backlog
            .iter()
            .map(|(what, n)| format!("{n} {what}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let pb = crate::progress::progress_bar();
    #[allow(clippy::disallowed_methods)] // progress on a terminal: elapsed wall time
    let started = std::time::Instant::now();
    let actor = idvault_server::service::Caller::new("idvault");
    let report = vault
        .rewrap(&actor, |p| {
            if let Some(pb) = &pb {
                pb.set_message(format!(
                    "{}: {}/{} ({:.0}/s)",
                    p.phase,
                    p.done,
                    p.total,
                    p.done as f64 / started.elapsed().as_secs_f64().max(1e-9)
                ));
            }
        })
        .await;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    vault.store().close().await;
    let r = report?;
    println!(
        "rewrapped in {:.1} s: {} subjects, {} links, {} row MACs, {} audit leaf MACs ({} batches)",
        started.elapsed().as_secs_f64(),
        r.subjects,
        r.links,
        r.row_macs,
        r.leaves,
        r.batches
    );
    if r.left_behind() > 0 {
        bail!(
            "left under older versions: {} subjects whose data key or packets do not open, {} links \
             whose identifier does not open, {} rows and {} audit leaves whose MAC does not verify. \
             They were altered or damaged outside the vault (`idvault audit verify`); `keys retire` \
             refuses while they exist",
            r.damaged_subjects,
            r.damaged_links,
            r.forged_rows,
            r.forged_leaves
        );
    }
    Ok(())
}

/// What references `version`: the database's counts and the key file's
/// token domain pins.
async fn references(
    vault: &idvault_server::service::Vault,
    keys: &StaticKeyProvider,
    version: u32,
) -> anyhow::Result<Vec<(String, u64)>> {
    let mut refs = vault.version_references(version).await?;
    for (d, v) in keys.token_domains() {
        if *v == version {
            refs.push((format!("token domain '{d}' (its tokens)"), 1));
        }
    }
    Ok(refs)
}

fn show_refs(refs: &[(String, u64)]) -> String {
    refs.iter()
        .map(|(what, n)| format!("  {n} {what}"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn retire(dir: &DataDir, version: u32, database_url: Option<String>) -> anyhow::Result<()> {
    let cfg = dir.load()?;
    let url = database_url.unwrap_or_else(|| cfg.database_url());
    let path = cfg.resolve(&cfg.file.keys.root_key_file);
    let pin = pin_file(&cfg);
    let (file, _) = idvault_server::keyfile::load_with_protection(&path, pin.as_deref())?;
    if version == file.current_version() {
        bail!("version {version} is current: rotate first (`idvault keys rotate`), then rewrap");
    }
    if file.root_key(version).is_err() {
        bail!("the key file holds no version {version}");
    }
    // Not during a restore (it holds the lock exclusively).
    let _lock =
        idvault_server::backup::DataDirLock::shared(&cfg.base_dir).map_err(anyhow::Error::msg)?;
    let vault = idvault_server::app::open_vault(&cfg, &url).await?;
    // No process may write under `version` from now on (its audit leaves
    // fall below the floor and its writes fail), so nothing can start
    // naming it between this count and the key file's edit. Only processes
    // whose current version is `version` are stopped: any newer one writes
    // on.
    vault
        .store()
        .raise_key_floor(version.saturating_add(1))
        .await?;
    let refs = references(&vault, &file, version).await?;
    if !refs.is_empty() {
        vault.store().close().await;
        bail!(
            "root key version {version} is still referenced; not retired:\n{}\n(`idvault keys rewrap` \
             moves data forward; credentials wait for their expiry; a token domain moves with \
             `idvault tokens rotate --domain D`)",
            show_refs(&refs)
        );
    }
    // The public halves of what this version signed stay verifiable.
    let keys = vault.keys();
    let origin = vault.audit_settings().origin.clone();
    let audit = idvault_server::service::audit::audit_signer(keys, &origin, version)?;
    let receipt = idvault_server::service::receipts::receipt_signer(keys, &origin, version)?;
    let public = vec![
        RetiredPublicKey {
            version,
            purpose: RetiredPurpose::AuditSigning,
            public: audit.public_key(),
        },
        RetiredPublicKey {
            version,
            purpose: RetiredPurpose::ReceiptSigning,
            public: receipt.public_key(),
        },
    ];
    idvault_server::keyfile::update(&path, pin.as_deref(), &SystemRng::default(), |cur| {
        cur.without_version(version, public)
    })?;
    vault.store().close().await;
    println!(
        "root key version {version} retired: removed from {} (its audit and receipt verification \
         keys and its deletion-journal MAC key kept). Copies of data made before the rewrap (backups) that only version {version} \
         opens are now unreadable",
        path.display()
    );
    Ok(())
}

async fn status(dir: &DataDir, database_url: Option<String>) -> anyhow::Result<()> {
    let cfg = dir.load()?;
    let url = database_url.unwrap_or_else(|| cfg.database_url());
    let path = cfg.resolve(&cfg.file.keys.root_key_file);
    let (file, protection) =
        idvault_server::keyfile::load_with_protection(&path, pin_file(&cfg).as_deref())?;
    let current = file.current_version();
    println!(
        "key file {} ({})",
        path.display(),
        match protection {
            Protection::Plain => "plain".to_owned(),
            Protection::Pkcs11(p) => format!(
                "sealed by PKCS#11 key '{}' on token '{}'",
                p.key_label, p.token_label
            ),
        }
    );
    println!(
        "root key versions: {} (current {current})",
        file.versions()
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    for d in configured_domains(&cfg) {
        let v = file.token_domain_version(&d);
        println!(
            "token domain {d}: version {}{}",
            v.unwrap_or(current),
            if v.is_some() {
                " (pinned)"
            } else {
                " (follows the current version)"
            }
        );
    }
    // Not during a restore (it holds the lock exclusively).
    let _lock =
        idvault_server::backup::DataDirLock::shared(&cfg.base_dir).map_err(anyhow::Error::msg)?;
    let vault = idvault_server::app::open_vault(&cfg, &url).await?;
    let backlog = vault.rewrap_backlog().await?;
    println!(
        "below version {current}: {}",
        backlog
            .iter()
            .map(|(what, n)| format!("{n} {what}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for v in file.versions().into_iter().filter(|v| *v != current) {
        let refs = references(&vault, &file, v).await?;
        if refs.is_empty() {
            println!("version {v}: nothing references it; `idvault keys retire {v}` removes it");
        } else {
            println!("version {v} is referenced by:\n{}", show_refs(&refs));
        }
    }
    vault.store().close().await;
    Ok(())
}

/// Runs a `keys` subcommand.
pub(crate) async fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Rotate { dir } => rotate(&dir.load()?),
        KeysCommand::Rewrap { dir, database_url } => rewrap(&dir, database_url).await,
        KeysCommand::SealUpgradedTokens { dir, database_url } => {
            seal_upgraded_tokens(&dir, database_url).await
        }
        KeysCommand::Retire {
            dir,
            version,
            database_url,
        } => retire(&dir, version, database_url).await,
        KeysCommand::Status { dir, database_url } => status(&dir, database_url).await,
        KeysCommand::Seal {
            dir,
            module,
            token_label,
            key_label,
        } => {
            let cfg = dir.load()?;
            let path = cfg.resolve(&cfg.file.keys.root_key_file);
            idvault_server::keyfile::seal_existing(
                &path,
                &idvault_server::keyfile::pkcs11::Pkcs11Params {
                    module,
                    token_label,
                    key_label,
                },
                pin_file(&cfg).as_deref(),
                &SystemRng::default(),
            )?;
            println!(
                "{}: sealed (the plain file was replaced by rename; copies of it in backups or \
                 in the disk's free blocks are not: docs/keys.md, \"Seals\")",
                path.display()
            );
            Ok(())
        }
        KeysCommand::ReleasePublicKey { dir, all } => {
            let cfg = dir.load()?;
            let keys = idvault_server::app::open_keys(&cfg)?;
            let v = idvault_server::service::consent::release_verifier(&keys)?;
            let skip = if all {
                0
            } else {
                v.keys().len().saturating_sub(1)
            };
            for k in v.keys().iter().skip(skip) {
                println!("{}", hex::encode(k));
            }
            Ok(())
        }
        KeysCommand::ReceiptPublicKey { dir, all } => {
            let cfg = dir.load()?;
            let keys = idvault_server::app::open_keys(&cfg)?;
            let v = idvault_server::service::receipts::receipt_verifier_keys(
                &keys,
                &cfg.file.audit.origin,
            )?;
            let skip = if all { 0 } else { v.len().saturating_sub(1) };
            for k in v.iter().skip(skip) {
                println!("{k}");
            }
            Ok(())
        }
    }
}
