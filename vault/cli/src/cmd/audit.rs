//! `idvault audit …`: verify the audit log.

use clap::Subcommand;

use super::DataDir;

#[derive(Subcommand, Debug)]
pub(crate) enum AuditCommand {
    /// Walk the hash chain and MACs of the audit log; name the first bad record.
    Verify {
        #[command(flatten)]
        dir: DataDir,
        /// Database URL (overrides the config).
        #[arg(long, env = "IDVAULT_DATABASE_URL")]
        database_url: Option<String>,
    },
}

pub(crate) async fn audit_verify(
    dir: &DataDir,
    database_url: Option<String>,
) -> anyhow::Result<()> {
    let cfg = dir.load()?;
    let keys = idvault_server::app::open_keys(&cfg)?;
    let url = database_url.unwrap_or_else(|| cfg.database_url());
    let store = idvault_server::store::Store::connect(&url).await?;
    let verdict = idvault_server::service::verify_audit_log(&store, &keys).await?;
    store.close().await;
    match verdict {
        idvault_server::service::AuditVerdict::Intact { records } => {
            println!("audit log intact: {records} records verified");
            Ok(())
        }
        idvault_server::service::AuditVerdict::Broken { seq, fault } => {
            println!("audit log BROKEN at record {seq}: {fault}");
            std::process::exit(1);
        }
    }
}

/// Runs an `audit` subcommand.
pub(crate) async fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { dir, database_url } => audit_verify(&dir, database_url).await,
    }
}
