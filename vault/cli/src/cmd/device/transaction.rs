//! `idvault device transaction show|answer`: the phone's side of one-time
//! transaction codes (docs/digital-id.md, "Transaction codes").

use std::path::PathBuf;

use clap::Subcommand;
use idvault_client::device::unix_now;
use idvault_core::SystemRng;
use idvault_proto::v1 as pb;

use super::{DeviceArgs, load_key};

#[derive(Subcommand, Debug)]
pub(crate) enum TransactionCommand {
    /// Look up a code the person typed: prints who asks, the binding
    /// message to show, the claims wanted and the transaction id.
    Show {
        #[arg(long)]
        key: PathBuf,
        /// The code, as typed (`XXXX-XXXX`; case, spaces and dashes do not
        /// matter).
        #[arg(long)]
        code: String,
    },
    /// Answer a transaction: looks the code up again, prints what it is
    /// (as `show` does) and answers exactly that: --approve (sharing every
    /// claim asked for, or only --claims) or --deny. Refused if the
    /// transaction is not --transaction.
    Answer {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        code: String,
        /// The transaction id `show` printed.
        #[arg(long)]
        transaction: String,
        #[arg(long, conflicts_with = "deny", required_unless_present = "deny")]
        approve: bool,
        #[arg(long)]
        deny: bool,
        /// Share only these claims, comma-separated (`--claims ''`: none).
        #[arg(long, value_delimiter = ',', requires = "approve")]
        claims: Option<Vec<String>>,
    },
}

async fn lookup(
    args: &DeviceArgs,
    key: &std::path::Path,
    code: &str,
    rng: &SystemRng,
) -> anyhow::Result<pb::LookupTransactionResponse> {
    let action =
        pb::device_request::Action::LookupTransaction(pb::LookupTransaction { code: code.into() });
    let req = load_key(key)?.sign_request(action, unix_now(), rng)?;
    Ok(args
        .client()
        .await?
        .lookup_transaction(req)
        .await?
        .into_inner())
}

fn print_shown(r: &pb::LookupTransactionResponse) {
    println!("transaction={}", r.transaction_id);
    println!("requester={}", r.requester);
    println!("binding_message={}", r.binding_message);
    println!("claims={}", r.claims.join(","));
    println!("expires_at={}", r.expires_at);
}

pub(crate) async fn device(args: &DeviceArgs, c: &TransactionCommand) -> anyhow::Result<()> {
    let rng = SystemRng::default();
    match c {
        TransactionCommand::Show { key, code } => {
            let r = lookup(args, key, code, &rng).await?;
            print_shown(&r);
        }
        TransactionCommand::Answer {
            key,
            code,
            transaction,
            approve,
            claims,
            ..
        } => {
            let shown = lookup(args, key, code, &rng).await?;
            print_shown(&shown);
            anyhow::ensure!(
                shown.transaction_id == *transaction,
                "this code is for {}, not {transaction}",
                shown.transaction_id
            );
            let claims: Vec<String> = claims
                .clone()
                .unwrap_or_else(|| shown.claims.clone())
                .into_iter()
                .filter(|c| !c.is_empty())
                .collect();
            let action =
                idvault_client::device::transaction_answer(&shown, code, *approve, &claims);
            let req = load_key(key)?.sign_request(action, unix_now(), &rng)?;
            let r = args
                .client()
                .await?
                .answer_transaction(req)
                .await?
                .into_inner();
            println!("{} {transaction}", r.state);
        }
    }
    Ok(())
}
