//! `idvault partner verify-presentation|status-list|revoke-credential`:
//! a relying party's and the operator's side of digital IDs
//! (docs/digital-id.md).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use idvault_client::device::unix_now;
use idvault_core::sdjwt::{self, Jwks, SdJwtError, status};
use idvault_proto::v1 as pb;
use idvault_proto::v1::credential_service_client::CredentialServiceClient;

use crate::cmd::ConnectArgs;

/// Clock skew tolerated offline (the vault's default).
const OFFLINE_SKEW_SECS: i64 = 120;
/// Oldest key binding accepted offline (the vault's default).
const OFFLINE_KB_AGE_SECS: i64 = 300;

/// Digital-ID commands of `idvault partner`.
#[derive(Subcommand, Debug)]
pub(crate) enum PartnerCredentialCommand {
    /// Verify a digital-ID presentation (docs/digital-id.md): by the vault
    /// (VerifyPresentation), or with --offline against a pinned JWK Set
    /// (`idvault issuer jwks`) and a status list token
    /// (`idvault partner status-list`). Prints the disclosed claims as
    /// JSON; a refused presentation exits 1 with the reason.
    VerifyPresentation {
        /// The presentation file (`<jwt>~<disclosure>~…~<kb-jwt>`).
        file: PathBuf,
        /// The nonce this partner gave the wallet.
        #[arg(long)]
        nonce: String,
        /// The audience the key binding must name (default: this
        /// partner's SPIFFE id, as the vault sees it; required with
        /// --offline).
        #[arg(long)]
        audience: Option<String>,
        /// Verify here, with the issuer keys in --jwks and the status list
        /// token in --status-list, without the vault.
        #[arg(long, requires_all = ["jwks", "status_list"])]
        offline: bool,
        /// JWK Set file for --offline.
        #[arg(long, value_name = "FILE")]
        jwks: Option<PathBuf>,
        /// Status list token file for --offline (its `sub` must be the
        /// list the credential names).
        #[arg(long, value_name = "FILE")]
        status_list: Option<PathBuf>,
    },
    /// Fetch a signed status list token (the newest list, or --uri) and
    /// check its signature against the issuer keys (pinned with --jwks, or
    /// else as the vault answers them over the same connection); prints it
    /// or writes it to --out.
    StatusList {
        /// The list's URI (a credential's `status.status_list.uri`).
        #[arg(long)]
        uri: Option<String>,
        #[arg(long)]
        out: Option<PathBuf>,
        /// Pinned JWK Set (`idvault issuer jwks`).
        #[arg(long, value_name = "FILE")]
        jwks: Option<PathBuf>,
    },
    /// Revoke a credential as the operator (role `credentials.revoke`), by
    /// its status list entry: --uri and --index, or read from a
    /// --credential (or presentation) file.
    RevokeCredential {
        #[arg(long, conflicts_with_all = ["uri", "index"], required_unless_present_all = ["uri", "index"])]
        credential: Option<PathBuf>,
        #[arg(long, requires = "index")]
        uri: Option<String>,
        #[arg(long, requires = "uri")]
        index: Option<u64>,
    },
}

fn read(path: &Path) -> anyhow::Result<zeroize::Zeroizing<String>> {
    Ok(zeroize::Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
    ))
}

fn refused(e: &SdJwtError) -> ! {
    eprintln!("refused ({}): {e}", e.code());
    std::process::exit(1);
}

pub(crate) async fn partner(conn: &ConnectArgs, c: PartnerCredentialCommand) -> anyhow::Result<()> {
    match c {
        PartnerCredentialCommand::VerifyPresentation {
            file,
            nonce,
            audience,
            offline,
            jwks,
            status_list,
        } => {
            let text = read(&file)?;
            let claims = match (offline, jwks, status_list) {
                (true, Some(jwks), Some(list)) => {
                    let audience = audience.context("--offline needs --audience")?;
                    offline_verify(&text, &read(&jwks)?, &read(&list)?, &audience, &nonce)?
                }
                _ => vault_verify(conn, &text, audience.as_deref(), &nonce).await?,
            };
            println!("{claims}");
        }
        PartnerCredentialCommand::StatusList { uri, out, jwks } => {
            let mut client = CredentialServiceClient::new(conn.channel().await?);
            let token = client
                .get_status_list(pb::GetStatusListRequest {
                    uri: uri.clone().unwrap_or_default(),
                })
                .await?
                .into_inner()
                .status_list_token;
            let jwks = match jwks {
                Some(f) => read(&f)?.to_string(),
                None => {
                    client
                        .get_issuer_keys(pb::GetIssuerKeysRequest {})
                        .await?
                        .into_inner()
                        .jwks
                }
            };
            let t = status::verify_status_list(
                &token,
                &Jwks::parse(&jwks)?,
                uri.as_deref(),
                unix_now(),
                OFFLINE_SKEW_SECS,
            )?;
            let revoked = (0..t.list.len() as u64)
                .filter(|i| t.list.get(*i) != Some(status::VALID))
                .count();
            match out {
                Some(path) => {
                    std::fs::write(&path, format!("{token}\n"))
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!(
                        "status list {} written to {}: {} entries, {revoked} revoked, iat={} exp={} ttl={}",
                        t.uri,
                        path.display(),
                        t.list.len(),
                        t.issued_at,
                        t.expires_at,
                        t.ttl.unwrap_or_default()
                    );
                }
                None => println!("{token}"),
            }
        }
        PartnerCredentialCommand::RevokeCredential {
            credential,
            uri,
            index,
        } => {
            let r = match (credential, uri, index) {
                (Some(f), _, _) => {
                    let text = read(&f)?;
                    // A presentation ends with its KB-JWT; the credential
                    // part is everything up to the last '~'.
                    let cut = text.rfind('~').map_or(text.len(), |i| i + 1);
                    sdjwt::Credential::parse(&text[..cut])?.status()?
                }
                (None, Some(uri), Some(idx)) => status::StatusRef { idx, uri },
                _ => anyhow::bail!("give --credential FILE, or --uri and --index"),
            };
            let out = CredentialServiceClient::new(conn.channel().await?)
                .revoke_credential(pb::RevokeCredentialRequest {
                    credential: Some(pb::RevokeCredential {
                        status_list_uri: r.uri.clone(),
                        index: r.idx,
                    }),
                })
                .await?
                .into_inner();
            println!(
                "{} {}#{}",
                if out.revoked {
                    "revoked"
                } else {
                    "already revoked"
                },
                r.uri,
                r.idx
            );
        }
    }
    Ok(())
}

/// Verifies a presentation here: issuer signature, disclosures and key
/// binding, then its status in a verified status list token.
fn offline_verify(
    text: &str,
    jwks: &str,
    list: &str,
    audience: &str,
    nonce: &str,
) -> anyhow::Result<String> {
    let keys = Jwks::parse(jwks)?;
    let now = unix_now();
    let expect = sdjwt::Expectations {
        typ: sdjwt::TYP_CREDENTIAL,
        audience,
        nonce,
        now,
        skew_secs: OFFLINE_SKEW_SECS,
        max_key_binding_age_secs: OFFLINE_KB_AGE_SECS,
    };
    let checked = sdjwt::verify_presentation(text, &keys, &expect).and_then(|v| {
        let token = status::verify_status_list(list, &keys, None, now, OFFLINE_SKEW_SECS)?;
        // Past its ttl the vault has re-signed the list: a revocation since
        // this copy was fetched is not in it (the copy is refused at exp).
        if let Some(ttl) = token.ttl
            && now > token.issued_at.saturating_add_unsigned(ttl) + OFFLINE_SKEW_SECS
        {
            eprintln!(
                "warning: the status list is {} s old, past its ttl of {ttl} s; fetch a new one (idvault partner status-list)",
                now - token.issued_at
            );
        }
        status::check_status(&v, &token)?;
        Ok(v)
    });
    match checked {
        Ok(v) => Ok(serde_json::Value::Object(v.disclosed).to_string()),
        Err(e) => refused(&e),
    }
}

/// Asks the vault (`VerifyPresentation`).
async fn vault_verify(
    conn: &ConnectArgs,
    text: &str,
    audience: Option<&str>,
    nonce: &str,
) -> anyhow::Result<String> {
    let mut client = CredentialServiceClient::new(conn.channel().await?);
    let r = client
        .verify_presentation(pb::VerifyPresentationRequest {
            presentation: text.to_owned(),
            audience: audience.unwrap_or_default().to_owned(),
            nonce: nonce.to_owned(),
        })
        .await;
    match r {
        Ok(r) => Ok(r.into_inner().claims_json),
        Err(s) if s.code() == tonic::Code::InvalidArgument => {
            let reason = s
                .metadata()
                .get("idvault-refusal")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("invalid")
                .to_owned();
            eprintln!("refused ({reason}): {}", s.message());
            std::process::exit(1);
        }
        Err(s) => Err(s.into()),
    }
}
