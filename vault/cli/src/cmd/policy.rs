//! `idvault policy …`: check a Cedar policy directory offline.
use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub(crate) enum PolicyCommand {
    /// Validate a policy directory (one .cedarschema, any .cedar files) as
    /// the vault does at start: errors name file, line and column.
    Check { dir: PathBuf },
}

/// Runs a `policy` subcommand.
pub(crate) fn run(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Check { dir } => {
            let compiled = idvault_server::policy::read_dir(&dir)
                .and_then(|src| idvault_policies::compile(&src));
            match compiled {
                Ok(c) => {
                    println!(
                        "{}: {} policies valid against the schema ({})",
                        dir.display(),
                        c.ids().len(),
                        c.ids().join(", ")
                    );
                    Ok(())
                }
                Err(d) => {
                    eprintln!("{}", idvault_server::policy::report(&d));
                    std::process::exit(1);
                }
            }
        }
    }
}
