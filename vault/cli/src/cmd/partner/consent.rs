//! `idvault partner enrollment-code|challenge|release|release-keygen`
//! (docs/consent.md).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use idvault_client::ReleaseKey;
use idvault_core::SystemRng;
use idvault_proto::v1 as pb;
use idvault_proto::v1::consent_service_client::ConsentServiceClient;
use prost::Message;

use crate::cmd::{ConnectArgs, read_pem, write_secret_file};

/// Consent commands of `idvault partner`.
#[derive(Subcommand, Debug)]
pub(crate) enum PartnerConsentCommand {
    /// Issue a one-time device enrollment code for a subject.
    EnrollmentCode { subject_id: String },
    /// Ask for a single-use consent challenge for a subject (printed as hex).
    Challenge { subject_id: String },
    /// Present a signed consent (file written by `idvault device sign-consent`)
    /// or a standing consent id, and print the released fields.
    Release {
        /// SignedConsent file (binary protobuf).
        #[arg(
            long,
            conflicts_with = "standing",
            required_unless_present = "standing"
        )]
        consent: Option<PathBuf>,
        /// Hex id of a standing consent presented before.
        #[arg(long)]
        standing: Option<String>,
        /// Release private key (default: DATA_DIR/tls/NAME.release.key).
        #[arg(long)]
        key: Option<PathBuf>,
        /// The vault's release verification keys, one per line, as
        /// `idvault keys release-public-key --all` prints them (default:
        /// DATA_DIR/tls/vault.release.pub, written by `init --dev`).
        /// Releases not signed by one of them are refused.
        #[arg(long)]
        vault_key: Option<PathBuf>,
    },
    /// Make a release key pair: writes the private key (PKCS#8 PEM, mode
    /// 0600) and prints the `release_key` line to register.
    ReleaseKeygen {
        #[arg(long)]
        out: PathBuf,
    },
}

pub(crate) async fn partner(
    conn: &ConnectArgs,
    command: PartnerConsentCommand,
) -> anyhow::Result<()> {
    match command {
        PartnerConsentCommand::ReleaseKeygen { out } => {
            let k = ReleaseKey::generate(&SystemRng::default())?;
            write_secret_file(&out, &k.to_pem()?)?;
            println!("release_key = \"{}\"", k.public_hex());
        }
        PartnerConsentCommand::EnrollmentCode { subject_id } => {
            let mut c = ConsentServiceClient::new(conn.channel().await?);
            let r = c
                .issue_enrollment_code(pb::IssueEnrollmentCodeRequest { subject_id })
                .await?
                .into_inner();
            println!(
                "enrollment_code={} expires_at={}",
                r.enrollment_code, r.expires_at
            );
        }
        PartnerConsentCommand::Challenge { subject_id } => {
            let mut c = ConsentServiceClient::new(conn.channel().await?);
            let r = c
                .request_challenge(pb::RequestChallengeRequest { subject_id })
                .await?
                .into_inner();
            println!(
                "challenge={} expires_at={}",
                hex::encode(r.challenge),
                r.expires_at
            );
        }
        PartnerConsentCommand::Release {
            consent,
            standing,
            key,
            vault_key,
        } => {
            let key_path = key.unwrap_or_else(|| {
                conn.dir
                    .data_dir
                    .join("tls")
                    .join(format!("{}.release.key", conn.name))
            });
            let key = ReleaseKey::from_pem(&read_pem(&key_path)?)
                .with_context(|| key_path.display().to_string())?;
            let vault_path = vault_key.unwrap_or_else(|| {
                conn.dir
                    .data_dir
                    .join("tls")
                    .join(idvault_server::devinit::RELEASE_VERIFIER_FILE)
            });
            let vault = std::fs::read_to_string(&vault_path)
                .with_context(|| {
                    format!(
                        "cannot read the vault's release key {} (get it with \
                         `idvault keys release-public-key` and pass --vault-key FILE)",
                        vault_path.display()
                    )
                })
                .and_then(|t| {
                    idvault_client::ReleaseVerifier::from_text(&t)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", vault_path.display()))
                })?;
            let (req, consent_id) = match (consent, standing) {
                (Some(f), _) => {
                    let bytes = std::fs::read(&f)
                        .with_context(|| format!("cannot read {}", f.display()))?;
                    let s = pb::SignedConsent::decode(bytes.as_slice())
                        .context("the consent file is not a SignedConsent")?;
                    let grant = pb::ConsentGrant::decode(s.grant.as_slice())
                        .context("the consent file's grant does not decode")?;
                    (pb::release_request::Consent::Signed(s), grant.consent_id)
                }
                (None, Some(h)) => {
                    let id = hex::decode(h.trim()).context("--standing takes a hex consent id")?;
                    (
                        pb::release_request::Consent::StandingConsentId(id.clone()),
                        id,
                    )
                }
                (None, None) => bail!("give --consent FILE or --standing ID"),
            };
            let nonce = idvault_client::release_nonce(&SystemRng::default())?;
            let mut c = ConsentServiceClient::new(conn.channel().await?);
            let r = c
                .release(pb::ReleaseRequest {
                    consent: Some(req),
                    nonce: nonce.to_vec(),
                })
                .await?
                .into_inner();
            // The release must answer this request: this consent, this nonce.
            let expected = idvault_client::Expected {
                subject: None,
                consent_id: Some(&consent_id),
                nonce: &nonce,
            };
            let fields = key.open(&r, &expected, &vault)?;
            println!(
                "subject_id={} consent_id={} receipt_id={} grant_hash={}",
                r.subject_id,
                hex::encode(&r.consent_id),
                r.receipt_id,
                hex::encode(&r.grant_hash)
            );
            for (name, value) in &fields {
                println!("{name}={}", value.as_str());
            }
        }
    }
    Ok(())
}
