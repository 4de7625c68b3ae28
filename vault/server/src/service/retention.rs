//! The retention job: removes spent single-use records (expired consent
//! challenges and enrollment codes, device request ids past their replay
//! window, expired transaction codes and old wrong-code records, the
//! status entries of expired digital IDs) and
//! processed events older than `[retention] events_days`, in
//! audited batches. It never touches subjects, consents, receipts,
//! devices or the audit log.

use std::sync::Arc;
use std::time::Duration;

use super::pipeline::JOB_ACTOR;
use super::{Caller, Vault, VaultError};
use crate::store::Prunable;

/// Rows per batch: one transaction (and one audit leaf) each, so the job
/// never holds the writer for long.
pub const PRUNE_BATCH: u32 = 1000;

/// Beyond the clock-skew window a device request id stays for this long
/// (ms): a replay must arrive within the window to be accepted at all, so
/// after it the id no longer protects anything.
const REPLAY_MARGIN_MS: i64 = 3_600_000;

impl Vault {
    /// The cut-off (ms since the epoch) before which rows of `kind` go.
    fn prune_before(&self, kind: Prunable, now: i64) -> i64 {
        let r = self.retention_settings();
        let grace = i64::from(r.expired_grace_hours) * 3_600_000;
        match kind {
            Prunable::Challenges | Prunable::EnrollmentCodes => now - grace,
            // A withdrawal expires once no grant it refuses could be
            // presented anyway (`ConsentLimits::withdrawal_secs`): no grace.
            Prunable::Withdrawals => now,
            // An hour after expiry: past any assertion (5 minutes after the
            // answer) and any third party still asking for the outcome.
            Prunable::Transactions => now - super::transactions::TRANSACTION_KEEP_MS,
            // Only the last hour counts towards a device's limit.
            Prunable::CodeFailures => now - super::transactions::FAILURE_WINDOW_MS,
            Prunable::DeviceRequests => {
                // A request is accepted only if issued within ±skew of the
                // vault's clock, so a replay of a request accepted at `t`
                // can only be accepted up to `t + 2·skew`.
                let skew = i64::from(self.consent_settings().clock_skew_seconds) * 1000;
                now - (2 * skew + REPLAY_MARGIN_MS)
            }
            Prunable::Events => now - i64::from(r.events_days) * 86_400_000,
            // A presentation is refused as expired once `exp` plus the
            // skew has passed, before its status is read; its list then
            // publishes the removed row as revoked.
            // At least an hour, whatever the grace: replicas' clocks
            // differ, and one a little behind still checks the status of
            // a credential another one finds expired.
            Prunable::Credentials => {
                let skew = i64::from(self.consent_settings().clock_skew_seconds) * 1000;
                now - grace.max(3_600_000) - skew
            }
        }
    }

    /// Runs the retention job once; returns the rows removed per kind.
    /// Each batch is its own transaction with its own audit record
    /// (`Retention`, `kind=… removed=N before_ms=…`); a kind with nothing
    /// to remove writes nothing.
    pub async fn prune_once(&self) -> Result<Vec<(Prunable, u64)>, VaultError> {
        let system = Caller::new(JOB_ACTOR);
        let now = self.now_millis();
        let mut out = Vec::with_capacity(Prunable::ALL.len());
        for kind in Prunable::ALL {
            let before = self.prune_before(kind, now);
            let mut total = 0;
            loop {
                let mut tx = self
                    .store()
                    .begin_audited_waiting()
                    .await
                    .map_err(VaultError::AuditUnavailable)?;
                let pruned = tx.prune(kind, before, PRUNE_BATCH).await?;
                let n = pruned.removed;
                if n == 0 {
                    // Nothing removed: no record (the transaction is
                    // dropped, writing nothing).
                    break;
                }
                total += n;
                let mut detail = format!("kind={} removed={n} before_ms={before}", kind.name());
                if pruned.unverified > 0 {
                    tracing::error!(
                        kind = kind.name(),
                        unverified = pruned.unverified,
                        "expired rows whose MAC did not verify were removed (edited outside the vault?); the Retention audit record counts them"
                    );
                    detail.push_str(&format!(" unverified={}", pruned.unverified));
                }
                self.commit_job_as(tx, &system, "Retention", detail).await?;
                if kind == Prunable::Credentials {
                    // The lists now publish the removed entries as revoked.
                    self.status_changed();
                }
                if n < u64::from(PRUNE_BATCH) {
                    break;
                }
            }
            out.push((kind, total));
        }
        Ok(out)
    }
}

impl Vault {
    /// Runs [`Vault::prune_once`] every `[retention] interval_minutes`
    /// (the first run one interval after start) until `stop` turns true.
    pub async fn run_retention(self: Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) {
        let every = Duration::from_secs(u64::from(self.retention_settings().interval_minutes) * 60);
        let (this, first) = (&self, tokio::time::Instant::now() + every);
        super::periodic::every(first, every, stop, || async move {
            match this.prune_once().await {
                Ok(done) => {
                    let removed: u64 = done.iter().map(|(_, n)| n).sum();
                    if removed > 0 {
                        tracing::info!(removed, "retention job removed spent rows");
                    }
                }
                Err(e) => tracing::error!(error = %e, "retention job failed"),
            }
        })
        .await;
    }
}
