//! `idvault device …`: act as a person's phone (docs/consent.md,
//! docs/events.md).

mod credential;
mod rules;
mod transaction;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use idvault_client::device::{DeviceKey, GrantRequest, unix_now};
use idvault_core::SystemRng;
use idvault_proto::v1 as pb;
use idvault_proto::v1::device_service_client::DeviceServiceClient;
use prost::Message;

use crate::cmd::{DataDir, read_pem, write_secret_file};

/// How a device command reaches the vault: through a wallet app's
/// client certificate.
#[derive(Args, Debug)]
pub(crate) struct DeviceArgs {
    #[command(flatten)]
    pub(crate) dir: DataDir,
    /// Wallet app whose certificate to use (DATA_DIR/tls/NAME.crt and .key).
    #[arg(long, default_value = "wallet")]
    name: String,
    /// Vault URL.
    #[arg(long, default_value = "https://127.0.0.1:50051")]
    server: String,
    /// Name to verify in the server certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    #[command(subcommand)]
    command: DeviceCommand,
}

#[derive(Subcommand, Debug)]
enum DeviceCommand {
    /// Make a device key (PKCS#8 PEM, mode 0600); prints its device id.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Enroll the device key to a subject with a one-time code.
    Enroll {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        subject: String,
        #[arg(long)]
        code: String,
    },
    /// Sign a consent grant; writes the SignedConsent for the partner.
    SignConsent {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        subject: String,
        /// The partner's SPIFFE id.
        #[arg(long)]
        audience: String,
        #[arg(long)]
        purpose: String,
        /// A consented field (repeatable).
        #[arg(long = "field", required = true)]
        fields: Vec<String>,
        /// The partner's challenge (hex).
        #[arg(long)]
        challenge: String,
        /// Seconds until the grant expires.
        #[arg(long, default_value_t = 300)]
        valid_for: i64,
        /// A standing consent (used again until it expires or is revoked).
        #[arg(long)]
        standing: bool,
        /// Output file (binary protobuf SignedConsent).
        #[arg(long)]
        out: PathBuf,
    },
    /// List the releases made under this person's consents.
    Receipts {
        #[arg(long)]
        key: PathBuf,
    },
    /// List this person's devices.
    Devices {
        #[arg(long)]
        key: PathBuf,
    },
    /// Revoke a consent (hex id).
    RevokeConsent {
        #[arg(long)]
        key: PathBuf,
        consent_id: String,
    },
    /// Revoke a device (default: this one).
    Revoke {
        #[arg(long)]
        key: PathBuf,
        device_id: Option<String>,
    },
    #[command(flatten)]
    Rules(rules::DeviceRulesCommand),
    /// Hold and present a digital ID (SD-JWT VC).
    Credential {
        #[command(subcommand)]
        command: credential::CredentialCommand,
    },
    /// Answer a third party's one-time transaction code.
    Transaction {
        #[command(subcommand)]
        command: transaction::TransactionCommand,
    },
}

fn print_revoked(revoked: bool) {
    println!(
        "{}",
        if revoked {
            "revoked"
        } else {
            "not revoked (unknown or already revoked)"
        }
    );
}

pub(crate) fn load_key(path: &Path) -> anyhow::Result<DeviceKey> {
    DeviceKey::from_pem(&read_pem(path)?).with_context(|| path.display().to_string())
}

impl DeviceArgs {
    pub(crate) async fn client(
        &self,
    ) -> anyhow::Result<DeviceServiceClient<tonic::transport::Channel>> {
        let creds = idvault_client::PartnerCredentials::from_dir(
            &self.dir.data_dir.join("tls"),
            &self.name,
        )?;
        Ok(DeviceServiceClient::new(
            idvault_client::connect(&self.server, &self.server_name, &creds).await?,
        ))
    }
}

pub(crate) async fn run(args: DeviceArgs) -> anyhow::Result<()> {
    let rng = SystemRng::default();
    use pb::device_request::Action;
    let signed = |key: &DeviceKey, action: Action| key.sign_request(action, unix_now(), &rng);
    match &args.command {
        DeviceCommand::Rules(c) => rules::device(&args, c).await?,
        DeviceCommand::Credential { command } => credential::device(&args, command).await?,
        DeviceCommand::Transaction { command } => transaction::device(&args, command).await?,
        DeviceCommand::Keygen { out } => {
            let k = DeviceKey::generate(&rng)?;
            write_secret_file(out, &k.to_pem()?)?;
            println!(
                "device_id={} public_key={}",
                k.device_id(),
                hex::encode(k.public_key())
            );
        }
        DeviceCommand::Enroll { key, subject, code } => {
            let k = load_key(key)?;
            let r = args
                .client()
                .await?
                .enroll(k.enrollment(subject, code)?)
                .await?
                .into_inner();
            println!("device_id={}", r.device_id);
        }
        DeviceCommand::SignConsent {
            key,
            subject,
            audience,
            purpose,
            fields,
            challenge,
            valid_for,
            standing,
            out,
        } => {
            let k = load_key(key)?;
            let now = unix_now();
            let s = k.sign_grant(
                &GrantRequest {
                    subject_id: subject.clone(),
                    audience: audience.clone(),
                    purpose: purpose.clone(),
                    fields: fields.clone(),
                    challenge: hex::decode(challenge.trim())
                        .context("--challenge takes the hex the partner printed")?,
                    issued_at: now,
                    expires_at: now + valid_for,
                    standing: *standing,
                },
                &rng,
            )?;
            let g = pb::ConsentGrant::decode(s.grant.as_slice())?;
            std::fs::write(out, s.encode_to_vec())
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "consent_id={} written to {}",
                hex::encode(g.consent_id),
                out.display()
            );
        }
        DeviceCommand::Receipts { key } => {
            let k = load_key(key)?;
            let req = signed(&k, Action::ListReceipts(pb::ListReceipts {}))?;
            let r = args.client().await?.list_receipts(req).await?.into_inner();
            if r.receipts.is_empty() {
                println!("no releases");
            }
            for x in r.receipts {
                println!(
                    "{} released_at_ms={} partner={} purpose={} fields={} consent_id={} grant_hash={}",
                    x.receipt_id,
                    x.released_at_ms,
                    x.partner,
                    x.purpose,
                    x.fields.join(","),
                    hex::encode(&x.consent_id),
                    hex::encode(&x.grant_hash)
                );
            }
        }
        DeviceCommand::Devices { key } => {
            let k = load_key(key)?;
            let req = signed(&k, Action::ListDevices(pb::ListDevices {}))?;
            let r = args.client().await?.list_devices(req).await?.into_inner();
            for d in r.devices {
                let state = if d.revoked_at_ms == 0 {
                    "active".to_owned()
                } else {
                    format!("revoked_at_ms={}", d.revoked_at_ms)
                };
                println!(
                    "{} enrolled_at_ms={} {state}",
                    d.device_id, d.enrolled_at_ms
                );
            }
        }
        DeviceCommand::RevokeConsent { key, consent_id } => {
            let k = load_key(key)?;
            let id = hex::decode(consent_id.trim()).context("consent id must be hex")?;
            let req = signed(
                &k,
                Action::RevokeConsent(pb::RevokeConsent { consent_id: id }),
            )?;
            let r = args.client().await?.revoke_consent(req).await?.into_inner();
            print_revoked(r.revoked);
        }
        DeviceCommand::Revoke { key, device_id } => {
            let k = load_key(key)?;
            let target = device_id.clone().unwrap_or_else(|| k.device_id());
            let req = signed(
                &k,
                Action::RevokeDevice(pb::RevokeDevice { device_id: target }),
            )?;
            let r = args.client().await?.revoke_device(req).await?.into_inner();
            print_revoked(r.revoked);
        }
    }
    Ok(())
}
