//! `idvault partner transaction request|await`: a third party's side of
//! one-time transaction codes (docs/digital-id.md, "Transaction codes").

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use idvault_client::device::unix_now;
use idvault_core::sdjwt::Jwks;
use idvault_core::transaction as txn;
use idvault_proto::v1 as pb;
use idvault_proto::v1::credential_service_client::CredentialServiceClient;
use idvault_proto::v1::transaction_service_client::TransactionServiceClient;

use crate::cmd::ConnectArgs;

/// Transaction-code commands of `idvault partner`.
#[derive(Subcommand, Debug)]
pub(crate) enum PartnerTransactionCommand {
    /// Ask for a one-time code authenticating a person (named by your
    /// pairwise token) for one transaction (role `transactions.request`).
    /// Prints the transaction id and the code to show the person.
    Request {
        /// Your pairwise token for the person (`pw_…`).
        pairwise_token: String,
        /// Shown on the person's phone before they answer.
        #[arg(long)]
        message: String,
        /// Claims wanted in the assertion, comma-separated.
        #[arg(long, value_delimiter = ',')]
        claims: Vec<String>,
        /// How long the code lives, seconds (at most 300).
        #[arg(long, default_value_t = 300)]
        ttl: u32,
    },
    /// Wait for a transaction's outcome (up to --wait seconds). Approved:
    /// verifies the assertion with the issuer keys (pinned with --jwks, or
    /// fetched) and prints its claims as JSON (the assertion itself to
    /// --out). Any other outcome prints its name and exits 1.
    Await {
        transaction_id: String,
        #[arg(long, default_value_t = 30)]
        wait: u32,
        #[arg(long, value_name = "FILE")]
        jwks: Option<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub(crate) async fn partner(
    conn: &ConnectArgs,
    c: PartnerTransactionCommand,
) -> anyhow::Result<()> {
    let channel = conn.channel().await?;
    let mut client = TransactionServiceClient::new(channel.clone());
    match c {
        PartnerTransactionCommand::Request {
            pairwise_token,
            message,
            claims,
            ttl,
        } => {
            let r = client
                .request_code(pb::RequestCodeRequest {
                    pairwise_token,
                    binding_message: message,
                    claims,
                    ttl_seconds: ttl,
                })
                .await?
                .into_inner();
            println!(
                "transaction={} code={} expires_at={}",
                r.transaction_id, r.code, r.expires_at
            );
        }
        PartnerTransactionCommand::Await {
            transaction_id,
            wait,
            jwks,
            out,
        } => {
            let r = client
                .await_transaction(pb::AwaitTransactionRequest {
                    transaction_id: transaction_id.clone(),
                    wait_seconds: wait,
                })
                .await?
                .into_inner();
            if r.state != "approved" {
                println!("{}", r.state);
                std::process::exit(1);
            }
            let jwks = match jwks {
                Some(f) => std::fs::read_to_string(&f)
                    .with_context(|| format!("cannot read {}", f.display()))?,
                None => {
                    CredentialServiceClient::new(channel)
                        .get_issuer_keys(pb::GetIssuerKeysRequest {})
                        .await?
                        .into_inner()
                        .jwks
                }
            };
            let audience = format!(
                "spiffe://{}/partner/{}",
                conn.dir.load()?.file.server.trust_domain,
                conn.name
            );
            let a = txn::verify_assertion(
                &r.assertion,
                &Jwks::parse(&jwks)?,
                &audience,
                &transaction_id,
                unix_now(),
                120,
            )?;
            if let Some(path) = out {
                crate::cmd::write_secret_file(&path, &r.assertion)?;
            }
            println!("{}", serde_json::Value::Object(a.claims));
        }
    }
    Ok(())
}
