//! `idvault issuer …`: the digital-ID issuer keys (docs/digital-id.md).

use clap::Subcommand;

use super::DataDir;

#[derive(Subcommand, Debug)]
pub(crate) enum IssuerCommand {
    /// Print the issuer's public keys as a JWK Set (every root key
    /// version's, so credentials signed before a rotation still verify),
    /// computed from the root key file: a relying party can pin them
    /// offline.
    Jwks {
        #[command(flatten)]
        dir: DataDir,
    },
}

/// Runs an `issuer` subcommand.
pub(crate) fn run(command: IssuerCommand) -> anyhow::Result<()> {
    match command {
        IssuerCommand::Jwks { dir } => {
            let cfg = dir.load()?;
            let keys = idvault_server::app::open_keys(&cfg)?;
            let jwks = idvault_server::service::credentials::issuer_jwks(&keys)?;
            println!("{}", jwks.to_json());
            Ok(())
        }
    }
}
