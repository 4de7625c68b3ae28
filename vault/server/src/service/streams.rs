//! Long-lived streams a partner may hold open, counted per kind: each one
//! holds a task and buffers, so a partner gets a few of each, never an
//! unbounded number.

use std::sync::Arc;

use super::{Vault, VaultError};

/// Most streams of one kind one partner may have open at once.
pub const MAX_STREAMS_PER_PARTNER: usize = 4;

/// A kind of long-lived stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// `ReceiveCommands`.
    Commands,
    /// `TokenizeLog`.
    TokenizeLog,
    /// `MatchStream`.
    Match,
    /// `ImportBridge`.
    ImportBridge,
}

impl std::fmt::Display for StreamKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Commands => "command",
            Self::TokenizeLog => "TokenizeLog",
            Self::Match => "MatchStream",
            Self::ImportBridge => "ImportBridge",
        })
    }
}

/// An open stream's place in its partner's allowance; freed on drop.
#[derive(Debug)]
pub struct StreamSlot {
    vault: Arc<Vault>,
    key: (StreamKind, String),
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.vault.open_streams.lock()
            && let Some(n) = m.get_mut(&self.key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

impl Vault {
    /// Takes one of `partner`'s slots for a stream of `kind`, or refuses
    /// with [`VaultError::TooManyStreams`].
    pub(crate) fn take_stream_slot(
        self: &Arc<Self>,
        kind: StreamKind,
        partner: &str,
    ) -> Result<StreamSlot, VaultError> {
        let key = (kind, partner.to_owned());
        let taken = match self.open_streams.lock() {
            Ok(mut m) => {
                let n = m.entry(key.clone()).or_insert(0);
                if *n >= MAX_STREAMS_PER_PARTNER {
                    false
                } else {
                    *n += 1;
                    true
                }
            }
            Err(_) => false,
        };
        if !taken {
            return Err(VaultError::TooManyStreams(kind, MAX_STREAMS_PER_PARTNER));
        }
        Ok(StreamSlot {
            vault: Arc::clone(self),
            key,
        })
    }
}

impl Vault {
    /// Authorises a `MatchStream` and takes one of the partner's slots for
    /// it (refusals audited; each batch is audited as it is answered).
    pub async fn open_match_stream(
        self: &Arc<Self>,
        caller: &super::Caller,
    ) -> Result<StreamSlot, VaultError> {
        self.handle(
            caller,
            idvault_policies::Action::MatchSubjects,
            async |req| self.take_stream_slot(StreamKind::Match, &req.partner.name),
        )
        .await
    }
}

impl Vault {
    /// Authorises an `ImportBridge` stream and takes one of the partner's
    /// slots for it (a refusal is audited; each message is audited as it
    /// commits). The stream holds its running summary, so a partner gets
    /// a few at a time, like the other streams.
    pub async fn open_import_stream(
        self: &Arc<Self>,
        caller: &super::Caller,
    ) -> Result<StreamSlot, VaultError> {
        self.handle(
            caller,
            idvault_policies::Action::ImportBridge,
            async |req| self.take_stream_slot(StreamKind::ImportBridge, &req.partner.name),
        )
        .await
    }
}

/// Most chain verifications one partner may run at once: each reads and
/// decrypts a whole history on one of the pool's connections, which serve
/// every partner's reads (8 readers on SQLite, 16 connections on
/// PostgreSQL), so one partner verifying long chains over and over must
/// leave most of them to the others. More wait their turn, within their
/// deadline (the partner's requests in flight are bounded already).
pub const MAX_CHAIN_CHECKS_PER_PARTNER: usize = 2;

impl Vault {
    /// Waits for one of `partner`'s [`MAX_CHAIN_CHECKS_PER_PARTNER`]
    /// places for a chain verification's reads, at most until `deadline`
    /// (then `DeadlineExceeded`: nothing was done). Held while the chain
    /// is read and checked, not while its record is written.
    pub async fn chain_check_slot(
        &self,
        partner: &str,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, VaultError> {
        let places = {
            let mut m = self
                .chain_checks
                .lock()
                .map_err(|_| VaultError::Internal("chain check places"))?;
            // One entry per registered partner name (unregistered callers
            // are refused before any handler runs), so the map is bounded.
            Arc::clone(m.entry(partner.to_owned()).or_insert_with(|| {
                Arc::new(tokio::sync::Semaphore::new(MAX_CHAIN_CHECKS_PER_PARTNER))
            }))
        };
        let wait = places.acquire_owned();
        let permit = match deadline {
            Some(d) => tokio::time::timeout_at(d, wait)
                .await
                .map_err(|_| VaultError::DeadlineExceeded)?,
            None => wait.await,
        };
        permit.map_err(|_| VaultError::Internal("chain check places"))
    }
}
