//! `idvault device credential …`: hold and present a digital ID
//! (docs/digital-id.md).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use idvault_client::device::unix_now;
use idvault_core::SystemRng;

use super::{DeviceArgs, load_key};
use crate::cmd::write_secret_file;

#[derive(Subcommand, Debug)]
pub(crate) enum CredentialCommand {
    /// Ask the vault for a digital ID bound to this device key; writes it
    /// (mode 0600: it holds the person's data) to --out.
    Get {
        #[arg(long)]
        key: PathBuf,
        /// Where to write the credential (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Claims wanted, comma-separated (default: every claim the
        /// person's fields allow).
        #[arg(long, value_delimiter = ',')]
        claims: Vec<String>,
        /// The issuer keys, pinned (`idvault issuer jwks`): the credential
        /// must be signed by one of them.
        #[arg(long, value_name = "FILE")]
        jwks: Option<PathBuf>,
    },
    /// Present a held credential: only the --disclose claims, bound to
    /// --audience and --nonce with the device key. Prints the
    /// presentation (or writes it to --out).
    Present {
        #[arg(long)]
        key: PathBuf,
        /// The credential file `get` wrote.
        #[arg(long)]
        credential: PathBuf,
        /// Claims to disclose, comma-separated (none: prove holding only).
        #[arg(long, value_delimiter = ',')]
        disclose: Vec<String>,
        /// The relying party's identifier (its SPIFFE id, for the vault's
        /// VerifyPresentation).
        #[arg(long)]
        audience: String,
        /// The nonce the relying party gave.
        #[arg(long)]
        nonce: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke a held credential: its status list entry turns invalid, so
    /// no relying party accepts it any more (docs/digital-id.md,
    /// "Revocation").
    Revoke {
        #[arg(long)]
        key: PathBuf,
        /// The credential file `get` wrote.
        #[arg(long)]
        credential: PathBuf,
    },
}

fn read_credential(path: &PathBuf) -> anyhow::Result<zeroize::Zeroizing<String>> {
    Ok(zeroize::Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
    ))
}

pub(crate) async fn device(args: &DeviceArgs, c: &CredentialCommand) -> anyhow::Result<()> {
    match c {
        CredentialCommand::Get {
            key,
            out,
            claims,
            jwks,
        } => {
            let pinned = match jwks {
                Some(f) => Some(idvault_core::sdjwt::Jwks::parse(
                    &std::fs::read_to_string(f)
                        .with_context(|| format!("cannot read {}", f.display()))?,
                )?),
                None => None,
            };
            let k = load_key(key)?;
            let (req, pending) = k.request_credential(claims, unix_now(), &SystemRng::default())?;
            let r = args
                .client()
                .await?
                .issue_credential(req)
                .await?
                .into_inner();
            let (credential, parsed) = pending.open(&r, pinned.as_ref())?;
            write_secret_file(out, &credential)?;
            let status = parsed
                .status()
                .map_or_else(|_| "-".to_owned(), |s| format!("{}#{}", s.uri, s.idx));
            println!(
                "credential written to {} kid={} expires_at={} status={status} claims={}",
                out.display(),
                parsed.kid().unwrap_or("-"),
                parsed.expires_at().unwrap_or_default(),
                parsed.claim_names().join(",")
            );
        }
        CredentialCommand::Present {
            key,
            credential,
            disclose,
            audience,
            nonce,
            out,
        } => {
            let k = load_key(key)?;
            let text = read_credential(credential)?;
            let names: Vec<&str> = disclose.iter().map(String::as_str).collect();
            let p = k.present_credential(&text, &names, audience, nonce, unix_now())?;
            match out {
                Some(path) => {
                    write_secret_file(path, &p)?;
                    println!("presentation written to {}", path.display());
                }
                None => println!("{}", p.as_str()),
            }
        }
        CredentialCommand::Revoke { key, credential } => {
            let k = load_key(key)?;
            let status =
                idvault_core::sdjwt::Credential::parse(&read_credential(credential)?)?.status()?;
            let action = idvault_proto::v1::device_request::Action::RevokeCredential(
                idvault_proto::v1::RevokeCredential {
                    status_list_uri: status.uri.clone(),
                    index: status.idx,
                },
            );
            let req = k.sign_request(action, unix_now(), &SystemRng::default())?;
            let r = args
                .client()
                .await?
                .revoke_credential(req)
                .await?
                .into_inner();
            println!(
                "{} {}#{}",
                if r.revoked {
                    "revoked"
                } else {
                    "already revoked"
                },
                status.uri,
                status.idx
            );
        }
    }
    Ok(())
}
