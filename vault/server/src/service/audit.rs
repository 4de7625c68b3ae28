//! The audit log as a transparency log (docs/audit.md): the sequencer that
//! extends the tree and signs checkpoints, the proofs partners ask for, and
//! the verifier behind `idvault audit verify`.
//!
//! Requests never wait for any of this: each writes its leaf in its own
//! transaction ([`super::pipeline`]). The sequencer runs beside them, one
//! per database (on PostgreSQL the replica holding the advisory lock),
//! gives the new leaves consecutive indexes in one batch, stores the
//! completed perfect subtrees and a signed checkpoint, all in one
//! transaction.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use idvault_core::crypto;
use idvault_core::keys::KeyHierarchy;
use idvault_core::secret::AuditKey;
use idvault_core::tlog::checkpoint::{self, Checkpoint, NoteSigner, NoteVerifier};
use idvault_core::tlog::leaf::{self, AuditLeaf};
use idvault_core::tlog::merkle::{self, Appender, Hash, NodeId};
use idvault_policies::Action;

use super::{Caller, Vault, VaultError};
use crate::store::{CheckpointRow, LeafColumns, LeafRow, SequencerLease, Store};

/// Leaves one sequencer batch takes at most.
const SEQUENCE_BATCH: u32 = 20_000;

/// Bad leaves (MAC does not verify) the sequencer remembers skipping.
const MAX_SKIPPED: usize = 10_000;

/// How long a stopping vault waits for its background jobs' steps in
/// progress before it drops them.
const JOBS_STOP_WAIT: Duration = Duration::from_secs(5);

/// A signed checkpoint handed to a partner.
#[derive(Debug, Clone)]
pub struct SignedCheckpoint {
    /// The signed note.
    pub note: String,
    /// Tree size.
    pub size: u64,
    /// Root hash.
    pub root: Hash,
}

/// An inclusion proof of one of the caller's leaves.
#[derive(Debug, Clone)]
pub struct Inclusion {
    /// Leaf index.
    pub index: u64,
    /// Tree size proved against.
    pub size: u64,
    /// Audit path.
    pub hashes: Vec<Hash>,
    /// Canonical leaf bytes.
    pub leaf: Vec<u8>,
    /// The signed checkpoint of `size`.
    pub checkpoint: String,
}

/// A consistency proof between two tree sizes.
#[derive(Debug, Clone)]
pub struct Consistency {
    /// Older size.
    pub old_size: u64,
    /// Newer size (a published checkpoint).
    pub new_size: u64,
    /// The proof.
    pub hashes: Vec<Hash>,
    /// The signed checkpoint of `new_size`.
    pub checkpoint: String,
}

/// Which leaf an inclusion proof is for.
#[derive(Debug, Clone)]
pub enum LeafRef {
    /// By tree index.
    Index(u64),
    /// By the request id an audited response carried.
    Request([u8; 16]),
}

/// The audit signing key of root key `version`, named by `origin`.
pub fn audit_signer(
    keys: &KeyHierarchy,
    origin: &str,
    version: u32,
) -> Result<NoteSigner, VaultError> {
    let seed = keys.audit_signing_seed(version)?;
    NoteSigner::from_seed(origin, seed.expose())
        .map_err(|_| VaultError::Internal("audit signing key"))
}

/// The verifier keys (signed-note form) of every root key version, oldest
/// first: the held versions' and the kept public keys of retired ones, so
/// checkpoints a retired version signed still verify.
pub fn verifier_keys(keys: &KeyHierarchy, origin: &str) -> Result<Vec<String>, VaultError> {
    let mut out: Vec<(u32, String)> = keys
        .retired_public_keys(idvault_core::keys::RetiredPurpose::AuditSigning)
        .into_iter()
        .map(|r| {
            NoteVerifier::from_public(origin, r.public)
                .map(|v| (r.version, v.to_vkey()))
                .map_err(|_| VaultError::Internal("retired audit key"))
        })
        .collect::<Result<_, _>>()?;
    for v in keys.versions() {
        out.push((v, audit_signer(keys, origin, v)?.verifier_key()));
    }
    out.sort_by_key(|(v, _)| *v);
    Ok(out.into_iter().map(|(_, k)| k).collect())
}

/// Sequencer state kept between batches.
#[derive(Debug, Default)]
pub struct SequencerState {
    lease: Option<SequencerLease>,
    skipped: HashSet<(i64, Hash)>,
    keys: HashMap<u32, AuditKey>,
    /// The vault's own checkpoint verifiers, made once.
    verifiers: Vec<NoteVerifier>,
    /// The largest tree this process saw signed (size, root), kept by
    /// every replica whether it sequences or not: the stored newest
    /// checkpoint may only be it or a consistent extension of it, so a log
    /// cut back (or forked) while this process runs is refused, not
    /// signed again, by this replica or after it takes the lease over.
    seen: Option<(u64, Hash)>,
}

/// A sequenced `Match` leaf whose answer revealed a given subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revealed {
    /// Tree index.
    pub index: u64,
    /// Milliseconds since the epoch.
    pub time_ms: i64,
    /// The partner answered.
    pub actor: String,
    /// Its request id, 32 hex digits.
    pub request_id: String,
    /// For a chunk of a one-to-one `Link` job: how many other records of
    /// the job ranked the subject above what they were given, or were
    /// given nothing (each learned that a heavier record took it). 0
    /// otherwise.
    pub contested: u64,
}

/// What [`revealed_to_partners`] found, and what it could not check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevealReport {
    /// The answers that revealed the subject, in tree order.
    pub found: Vec<Revealed>,
    /// `Match` leaves whose MAC did not verify (edited or planted in the
    /// database, or MACed under a version no longer held): not read.
    pub bad_mac: u64,
    /// `Match` leaves whose tags are under a key version no longer held
    /// (retired): they cannot be searched.
    pub unsearchable: u64,
}

/// The subjects-revealed list of a `Match` leaf's detail: the key version
/// and hex tags of `revealed=v<N>:[…]`, or the ids of the earlier form
/// `subjects=[…]` (version `None`).
fn revealed_list(detail: &str) -> Option<(Option<u32>, Vec<&str>)> {
    fn list(rest: &str) -> Option<Vec<&str>> {
        let inner = rest.strip_prefix('[')?.split(']').next()?;
        Some(inner.split(',').filter(|t| !t.is_empty()).collect())
    }
    if let Some((_, rest)) = detail.split_once("revealed=v") {
        let (version, rest) = rest.split_once(':')?;
        return Some((Some(version.parse().ok()?), list(rest)?));
    }
    let (_, rest) = detail.split_once("subjects=")?;
    Some((None, list(rest)?))
}

/// How many other records of a one-to-one job held the subject whose tag
/// is `tag`: its `tag*N` entry in the detail's `contested=[…]`, or 0.
fn contested_count(detail: &str, tag: &str) -> u64 {
    let Some((_, rest)) = detail.split_once(" contested=[") else {
        return 0;
    };
    let inner = rest.split(']').next().unwrap_or_default();
    inner
        .split(',')
        .filter_map(|e| e.split_once('*'))
        .find(|(t, _)| crypto::ct_eq(t.as_bytes(), tag.as_bytes()))
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0)
}

/// The sequenced `Match` leaves whose answers revealed `subject` to their
/// partner, in tree order: what a person's history shows about who
/// matched them. Each leaf's MAC is checked first (a row edited or
/// planted by a database writer is counted, not believed); then its tags
/// ([`idvault_core::tlog::leaf::reveal_tag`]) are compared with the
/// subject's under the reveal key of the version the leaf names (leaves
/// of the earlier form list the ids). Tags under a retired version cannot
/// be searched any more and are counted. Needs the root key.
pub async fn revealed_to_partners(
    store: &Store,
    keys: &KeyHierarchy,
    subject: &idvault_core::subject::SubjectId,
) -> Result<RevealReport, VaultError> {
    let id = subject.to_string();
    let mut mac_keys: HashMap<u32, AuditKey> = HashMap::new();
    let mut reveal_keys: HashMap<u32, Option<idvault_core::secret::AuditRevealKey>> =
        HashMap::new();
    let mut report = RevealReport::default();
    let mut from = 0;
    loop {
        let page = store
            .action_leaves_from(Action::MatchSubjects.name(), from, PAGE)
            .await?;
        let Some(last) = page.last() else { break };
        from = last.idx.map_or(u64::MAX, |i| i.saturating_add(1));
        for row in page {
            if !mac_ok(keys, &mut mac_keys, &row) {
                report.bad_mac += 1;
                continue;
            }
            let (Some(index), Ok(leaf)) = (row.idx, AuditLeaf::decode(&row.bytes)) else {
                continue;
            };
            let Some((version, list)) = revealed_list(&leaf.detail) else {
                continue;
            };
            let mut contested = 0;
            let found = match version {
                None => list.contains(&id.as_str()),
                Some(v) => {
                    let key = reveal_keys
                        .entry(v)
                        .or_insert_with(|| keys.audit_reveal_key(v).ok());
                    let Some(key) = key else {
                        report.unsearchable += 1;
                        continue;
                    };
                    let tag = hex::encode(idvault_core::tlog::leaf::reveal_tag(
                        key,
                        &leaf.request_id,
                        subject.as_bytes(),
                    ));
                    let found = list
                        .iter()
                        .any(|t| crypto::ct_eq(t.as_bytes(), tag.as_bytes()));
                    contested = contested_count(&leaf.detail, &tag);
                    found
                }
            };
            if found {
                report.found.push(Revealed {
                    index,
                    time_ms: leaf.time_ms,
                    actor: leaf.actor,
                    request_id: hex::encode(leaf.request_id),
                    contested,
                });
            }
        }
    }
    Ok(report)
}

/// Whether a caller's own leaf is of a form written before the vault kept
/// out of partners' records what they may not read (docs/audit.md, "Leaf
/// bytes"): the subject ids a match answer revealed, what a published
/// event did, the subject of a transaction named by token. Such a leaf
/// stays in the tree (consistency proofs cover it) but its bytes are not
/// handed back, or an upgraded vault would still give partners those ids.
fn withheld(leaf: &AuditLeaf) -> bool {
    match leaf.action.as_str() {
        "Match" => leaf.detail.contains("subjects=["),
        "PublishEvent" => leaf.detail.starts_with("outcome="),
        "RequestTransactionCode" | "AwaitTransaction" | "RevokeCredential" => {
            leaf.subject.is_some()
        }
        _ => false,
    }
}

impl Vault {
    fn signer(&self) -> Result<NoteSigner, VaultError> {
        audit_signer(
            self.keys(),
            &self.audit_settings().origin,
            self.keys().current_version(),
        )
    }

    /// The verifier keys of this vault's audit log.
    pub fn audit_verifier_keys(&self) -> Result<Vec<String>, VaultError> {
        verifier_keys(self.keys(), &self.audit_settings().origin)
    }

    /// One sequencer step: when this process holds (or takes) the lease,
    /// sequences the waiting leaves and publishes a checkpoint. Returns
    /// how many leaves it sequenced (`None` when another replica holds the
    /// lease).
    pub async fn sequence_once(&self, st: &mut SequencerState) -> Result<Option<u64>, VaultError> {
        if st.verifiers.is_empty() {
            st.verifiers = self
                .audit_verifier_keys()?
                .iter()
                .map(|k| NoteVerifier::parse(k))
                .collect::<Result<_, _>>()
                .map_err(|_| VaultError::Internal("audit verifier key"))?;
        }
        // Every replica, lease or not: a refusal keeps the lease where it
        // is, so no replica without this one's memory signs over a log
        // cut back meanwhile (as long as its connection, and so the
        // lock, lives: checked while it refuses).
        if let Err(e) = self.follow_checkpoints(&st.verifiers, &mut st.seen).await {
            if let Some(lease) = st.lease.as_mut()
                && !lease.alive().await
            {
                st.lease = None;
            }
            return Err(e);
        }
        if st.lease.is_none() {
            st.lease = self.store().sequencer_lease().await?;
        }
        let Some(lease) = st.lease.as_mut() else {
            return Ok(None);
        };
        let resume = Resume {
            verifiers: &st.verifiers,
            seen: &mut st.seen,
        };
        match sequence(self, lease, &mut st.skipped, &mut st.keys, resume).await {
            Ok(n) => Ok(Some(n)),
            // Kept: this replica refuses to sign, and so must the next.
            Err(e @ VaultError::Integrity(_)) => Err(e),
            Err(e) => {
                // The lease's connection may be gone with its lock: take
                // the lease again next time (another replica may have it).
                st.lease = None;
                Err(e)
            }
        }
    }

    /// Checks the newest stored checkpoint against the newest this
    /// process saw (`seen`) and moves `seen` to it: its note must verify
    /// and sign its size and root, and it must be `seen` or, proved from
    /// the stored nodes, a consistent extension of it. Nothing here trusts
    /// a row: the proof is checked against two signed roots.
    async fn follow_checkpoints(
        &self,
        verifiers: &[NoteVerifier],
        seen: &mut Option<(u64, Hash)>,
    ) -> Result<(), VaultError> {
        let origin = &self.audit_settings().origin;
        let Some(cp) = self.store().latest_checkpoint().await? else {
            return match seen {
                None => Ok(()),
                Some((size, _)) => Err(cut_back(*size, 0)),
            };
        };
        signed_tree(verifiers, origin, &cp.note, cp.size, &cp.root)?;
        if let Some((size, root)) = *seen {
            let extends = if cp.size < size {
                false
            } else if cp.size == size {
                crypto::ct_eq(&cp.root, &root)
            } else {
                extends_by_stored_nodes(self.store(), (size, &root), (cp.size, &cp.root)).await?
            };
            if !extends {
                return Err(cut_back(size, cp.size));
            }
        }
        *seen = Some((cp.size, cp.root));
        Ok(())
    }

    /// Runs the sequencer and the coalesced-refusal flush until `stop`
    /// turns true, then runs one last step; runs the other background jobs
    /// (retention, status lists, match weights, WAL checkpoints) beside
    /// them, and returns once all have ended.
    pub async fn run_background(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let every = Duration::from_millis(self.audit_settings().checkpoint_interval_ms);
        let mut st = SequencerState::default();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_flush = tokio::time::Instant::now();
        // On tasks of their own: a long first clean-up must not delay
        // checkpoints.
        let jobs = [
            tokio::spawn(Arc::clone(&self).run_retention(stop.clone())),
            tokio::spawn(Arc::clone(&self).run_status_lists(stop.clone())),
            tokio::spawn(Arc::clone(&self).run_match_models(stop.clone())),
            tokio::spawn(Arc::clone(&self).run_wal_checkpoints(stop.clone())),
        ];
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                r = stop.changed() => r.is_err() || *stop.borrow(),
            };
            if stopping {
                break;
            }
            if last_flush.elapsed() >= REFUSAL_INTERVAL {
                last_flush = tokio::time::Instant::now();
                self.flush_refusals_logged().await;
            }
            self.sequence_logged(&mut st).await;
        }
        // The jobs end before the last step, which then sequences what
        // they committed; none may still touch the store once this
        // returns (the caller closes it next). A job step that outlasts
        // the wait (a retention clean-up of a large backlog) is dropped:
        // each of its transactions commits whole or not at all.
        let ending = tokio::time::Instant::now() + JOBS_STOP_WAIT;
        for mut job in jobs {
            if tokio::time::timeout_at(ending, &mut job).await.is_err() {
                tracing::warn!("a background job did not stop in time; dropped");
                job.abort();
                let _ = job.await;
            }
        }
        self.flush_refusals_logged().await;
        self.sequence_logged(&mut st).await;
        if let Err(e) = self.store().settle_wal().await {
            tracing::warn!(error = %e, "last WAL truncation failed; the next start retries it");
        }
    }

    async fn flush_refusals_logged(&self) {
        if let Err(e) = self.flush_refusals().await {
            tracing::error!(error = %e, "auditing coalesced refusals failed");
        }
    }

    async fn sequence_logged(&self, st: &mut SequencerState) {
        if let Err(e) = self.sequence_once(st).await {
            tracing::error!(error = %e, source = ?std::error::Error::source(&e).map(ToString::to_string), "audit sequencer step failed");
        }
    }

    /// Checkpoints the SQLite WAL every
    /// [`crate::store::WAL_CHECKPOINT_EVERY`] until `stop`, off the request
    /// path (see `Store::checkpoint_wal`).
    async fn run_wal_checkpoints(self: Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) {
        if self.store().backend() != crate::store::Backend::Sqlite {
            return;
        }
        let (this, period) = (&self, crate::store::WAL_CHECKPOINT_EVERY);
        super::periodic::every(tokio::time::Instant::now(), period, stop, || async move {
            // Monotonic, for the debug timing only (never a decision).
            let started = tokio::time::Instant::now();
            match this.store().checkpoint_wal().await {
                Ok(Some(c)) => tracing::debug!(
                    frames = c.frames,
                    copied = c.copied,
                    busy = c.busy,
                    step_us = started.elapsed().as_micros(),
                    "WAL checkpoint timing"
                ),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
            }
        })
        .await;
    }

    /// The newest signed checkpoint.
    pub async fn audit_checkpoint(&self, caller: &Caller) -> Result<SignedCheckpoint, VaultError> {
        self.handle(caller, Action::ReadAudit, async |_req| {
            let cp = self.store().latest_checkpoint().await?.ok_or_else(|| {
                VaultError::BadRequest("no checkpoint has been published yet".into())
            })?;
            Ok(SignedCheckpoint {
                note: cp.note,
                size: cp.size,
                root: cp.root,
            })
        })
        .await
    }

    /// An inclusion proof for one of the caller's own leaves, against the
    /// checkpoint of `size` (0 = the newest).
    pub async fn audit_inclusion(
        &self,
        caller: &Caller,
        leaf: LeafRef,
        size: u64,
    ) -> Result<Inclusion, VaultError> {
        self.handle(caller, Action::ReadAudit, async |_req| {
            in_range(size, "tree_size")?;
            let row = match leaf {
                LeafRef::Index(i) => self.store().leaf_at(in_range(i, "leaf_index")?).await?,
                LeafRef::Request(id) => self.store().leaf_by_request(&id).await?,
            };
            // Another partner's leaf is as absent as a missing one: its
            // content is not this caller's to read.
            let row = row
                .filter(|r| crypto::ct_eq(r.columns.actor.as_bytes(), caller.spiffe_id.as_bytes()))
                .ok_or(VaultError::NotFound)?;
            if AuditLeaf::decode(&row.bytes).is_ok_and(|l| withheld(&l)) {
                return Err(VaultError::BadRequest(
                    "this record was written before records stopped naming what a partner may \
                     not read; its proof is not served"
                        .into(),
                ));
            }
            let Some(index) = row.idx else {
                return Err(VaultError::BadRequest(
                    "the leaf is not in a checkpoint yet; retry in a second".into(),
                ));
            };
            let cp = self.checkpoint_of(size).await?;
            if index >= cp.size {
                return Err(VaultError::BadRequest(
                    "the leaf is not in that checkpoint; ask for a newer one".into(),
                ));
            }
            let get = self
                .nodes(&merkle::inclusion_nodes(index, cp.size).map_err(tree_err)?)
                .await?;
            let hashes = merkle::inclusion_proof(index, cp.size, &|id| get.get(&id).copied())
                .map_err(tree_err)?;
            Ok(Inclusion {
                index,
                size: cp.size,
                hashes,
                leaf: row.bytes,
                checkpoint: cp.note,
            })
        })
        .await
    }

    /// A consistency proof from `old` to the checkpoint of `new` (0 = the
    /// newest).
    pub async fn audit_consistency(
        &self,
        caller: &Caller,
        old: u64,
        new: u64,
    ) -> Result<Consistency, VaultError> {
        self.handle(caller, Action::ReadAudit, async |_req| {
            let cp = self.checkpoint_of(in_range(new, "new_size")?).await?;
            if old > cp.size {
                return Err(VaultError::BadRequest(format!(
                    "old_size must be 0 ..= {} (the new checkpoint's size)",
                    cp.size
                )));
            }
            if old == 0 {
                // The empty tree is a prefix of every tree: its proof is
                // empty (docs/audit.md, "Proofs").
                return Ok(Consistency {
                    old_size: 0,
                    new_size: cp.size,
                    hashes: Vec::new(),
                    checkpoint: cp.note,
                });
            }
            let get = self
                .nodes(&merkle::consistency_nodes(old, cp.size).map_err(tree_err)?)
                .await?;
            let hashes = merkle::consistency_proof(old, cp.size, &|id| get.get(&id).copied())
                .map_err(tree_err)?;
            Ok(Consistency {
                old_size: old,
                new_size: cp.size,
                hashes,
                checkpoint: cp.note,
            })
        })
        .await
    }

    async fn checkpoint_of(&self, size: u64) -> Result<CheckpointRow, VaultError> {
        let cp = if size == 0 {
            self.store().latest_checkpoint().await?
        } else {
            self.store().checkpoint(size).await?
        };
        cp.ok_or_else(|| VaultError::BadRequest("no checkpoint of that size".into()))
    }

    async fn nodes(&self, ids: &[NodeId]) -> Result<HashMap<NodeId, Hash>, VaultError> {
        let found = self.store().audit_nodes(ids).await?;
        if found.len() != ids.len() {
            return Err(VaultError::Integrity("audit tree nodes missing"));
        }
        Ok(found.into_iter().collect())
    }
}

/// How often coalesced refusals are written.
const REFUSAL_INTERVAL: Duration = Duration::from_secs(1);

fn tree_err(_: merkle::TreeError) -> VaultError {
    VaultError::Integrity("audit tree")
}

/// Whether `row`'s MAC verifies under the audit key of its version
/// (keys are cached in `cache`).
pub(crate) fn mac_ok(
    keys: &KeyHierarchy,
    cache: &mut HashMap<u32, AuditKey>,
    row: &LeafRow,
) -> bool {
    if let std::collections::hash_map::Entry::Vacant(e) = cache.entry(row.key_version) {
        match keys.audit_key(row.key_version) {
            Ok(k) => {
                e.insert(k);
            }
            Err(_) => return false,
        }
    }
    cache.get(&row.key_version).is_some_and(|k| {
        leaf::row_mac_ok(
            k,
            &merkle::leaf_hash(&row.bytes),
            row.nonce.as_ref(),
            &row.mac,
        )
    })
}

/// `v`, if the store can hold it (sizes and indexes are stored as signed
/// 64-bit integers): a larger one names nothing, and is the caller's
/// mistake, not a storage fault to retry.
fn in_range(v: u64, what: &str) -> Result<u64, VaultError> {
    if i64::try_from(v).is_ok() {
        Ok(v)
    } else {
        Err(VaultError::BadRequest(format!("{what} must be below 2^63")))
    }
}

/// The refusal of a stored tree the sequencer will not extend.
const NOT_SEQUENCING: VaultError = VaultError::Integrity(
    "audit: the stored tree does not match the newest signed checkpoint; not sequencing",
);

/// Checks that `note` is this log's, signed by one of `verifiers`, for
/// `size` and `root`.
fn signed_tree(
    verifiers: &[NoteVerifier],
    origin: &str,
    note: &str,
    size: u64,
    root: &Hash,
) -> Result<(), VaultError> {
    let cp = checkpoint::open_checkpoint(note, verifiers, origin);
    if matches!(cp, Err(checkpoint::NoteError::NoKnownSignature)) {
        // Most likely signed under a root key version this process does
        // not hold yet (a rolling rotation), or for another origin.
        tracing::error!(
            size,
            "the newest checkpoint is not signed by a key of this process for this origin: not sequencing; restart it with the current key file and configuration (or run `idvault audit verify`)"
        );
        return Err(NOT_SEQUENCING);
    }
    if !cp.is_ok_and(|cp| cp.size == size && crypto::ct_eq(&cp.root, root)) {
        tracing::error!(
            size,
            "the newest checkpoint's note does not sign the stored tree: audit rows edited; not sequencing (run `idvault audit verify`)"
        );
        return Err(NOT_SEQUENCING);
    }
    Ok(())
}

/// The refusal of a newest checkpoint (`size`) that is not an extension of
/// the one this process saw (`seen`).
fn cut_back(seen: u64, size: u64) -> VaultError {
    tracing::error!(
        size,
        seen,
        "the newest checkpoint does not extend one this process saw signed: the log was cut back or forked; not sequencing (run `idvault audit verify`; after a database restore, or a failover that lost recent commits, restart the process)"
    );
    NOT_SEQUENCING
}

/// What the sequencer checks the stored tree against before extending it.
struct Resume<'a> {
    verifiers: &'a [NoteVerifier],
    seen: &'a mut Option<(u64, Hash)>,
}

impl Resume<'_> {
    /// The tree to extend: the stored right edge, accepted only when it
    /// hashes to the root the newest checkpoint's note signs, and when
    /// that checkpoint does not go back on one this process saw.
    ///
    /// Guards against a database writer without the root key: the edge
    /// nodes, the leaf rows already given an index and the checkpoint
    /// rows are all writable, and a sequencer that extended whatever they
    /// hold would sign a forged leaf into the tree (a placeholder
    /// checkpoint row of a larger size, nodes made from the forged leaf's
    /// hash). Only a signed note pins what was signed.
    fn check(
        &mut self,
        origin: &str,
        size: u64,
        note: Option<&str>,
        edge: &[(NodeId, Hash)],
    ) -> Result<Appender, VaultError> {
        let tree = Appender::resume(size, edge).map_err(tree_err)?;
        let root = tree.root();
        match note {
            Some(note) => signed_tree(self.verifiers, origin, note, size, &root)?,
            None if size != 0 => return Err(NOT_SEQUENCING),
            None => {}
        }
        // `seen` was just moved to the newest checkpoint
        // (`follow_checkpoints`), and only this lease holder adds one: any
        // other tree now is a writer's.
        let same = match *self.seen {
            Some((seen, seen_root)) => size == seen && crypto::ct_eq(&seen_root, &root),
            None => size == 0,
        };
        if !same {
            return Err(cut_back(self.seen.map_or(0, |(s, _)| s), size));
        }
        Ok(tree)
    }
}

async fn sequence(
    vault: &Vault,
    lease: &mut SequencerLease,
    skipped: &mut HashSet<(i64, Hash)>,
    keys: &mut HashMap<u32, AuditKey>,
    mut resume: Resume<'_>,
) -> Result<u64, VaultError> {
    let store = vault.store();
    // Monotonic, for the debug phase timings only (never a decision).
    let started = tokio::time::Instant::now();
    // Everything is read and computed before the batch starts, outside
    // the writer (see `SequencerLease::tree_state`): on SQLite the batch
    // holds the one writer, and every request's commit waits meanwhile.
    let extra = u32::try_from(skipped.len()).unwrap_or(u32::MAX);
    let pending = lease
        .pending(store, SEQUENCE_BATCH.saturating_add(extra))
        .await?;
    if pending.is_empty() {
        return Ok(0);
    }
    // A process left behind by a rewrap or retire (the key floor above its
    // current version) cannot check the newer leaves' MACs and would sign
    // with a key about to be retired: it sequences nothing, and says so.
    let floor = store.key_floor().await?;
    if vault.keys().current_version() < floor {
        tracing::error!(
            floor,
            current = vault.keys().current_version(),
            "this process's root key file is behind the database's key floor: not sequencing; restart it with the current key file"
        );
        return Ok(0);
    }
    let origin = &vault.audit_settings().origin;
    // Once more now that the lease is held: a previous holder may have
    // committed a checkpoint since the follow at the start of the step.
    vault
        .follow_checkpoints(resume.verifiers, resume.seen)
        .await?;
    let (size, note, edge) = lease.tree_state(store, merkle::root_nodes).await?;
    let mut tree = resume.check(origin, size, note.as_deref(), &edge)?;
    // A row's nonce is unique in the log (`audit_log_nonce`, which a
    // writer able to drop it could): one a signed leaf carries already,
    // or an earlier row of this batch, marks a copy.
    let nonces: Vec<_> = pending.iter().filter_map(|r| r.nonce).collect();
    let signed = store.sequenced_nonces(&nonces).await?;
    let mut taken = HashSet::with_capacity(nonces.len());
    let mut assigned = Vec::with_capacity(pending.len());
    let mut nodes = Vec::new();
    for row in &pending {
        // Keyed by content too: a reused row id with other bytes is a
        // new leaf and gets its own check.
        let hash = merkle::leaf_hash(&row.bytes);
        if skipped.contains(&(row.id, hash)) {
            continue;
        }
        // A row a database writer inserted without the audit key is never
        // signed into the tree; `audit verify` reports it.
        let refused = if !mac_ok(vault.keys(), keys, row) {
            Some("audit leaf MAC does not verify; not sequenced")
        } else if match row.nonce {
            Some(n) => signed.contains(&n) || !taken.insert(n),
            None => held_back_without_nonce(store, row, vault.now_millis(), &mut taken).await?,
        } {
            Some(
                "audit leaf row is a copy of another (same nonce; or, without one, the same bytes or over a day old); not sequenced",
            )
        } else {
            None
        };
        if let Some(why) = refused {
            tracing::error!(row = row.id, "{why}");
            if skipped.len() < MAX_SKIPPED {
                skipped.insert((row.id, hash));
            }
            continue;
        }
        let index = tree.size();
        nodes.extend(tree.push(hash));
        assigned.push((row.id, index));
    }
    if assigned.is_empty() {
        return Ok(0);
    }
    let cp = Checkpoint {
        origin: vault.audit_settings().origin.clone(),
        size: tree.size(),
        root: tree.root(),
    };
    let note = vault
        .signer()?
        .sign_checkpoint(&cp)
        .map_err(|_| VaultError::Internal("checkpoint signing"))?;
    let prepared = started.elapsed();
    let mut tx = lease.begin(store).await?;
    let began = started.elapsed();
    tx.assign(&assigned).await?;
    let assigned_at = started.elapsed();
    tx.insert_nodes(&nodes).await?;
    tx.insert_checkpoint(&CheckpointRow {
        size: cp.size,
        root: cp.root,
        note,
        time_ms: vault.now_millis(),
    })
    .await?;
    let written = started.elapsed();
    tx.commit().await.map_err(VaultError::AuditUnavailable)?;
    *resume.seen = Some((cp.size, cp.root));
    // For latency work (`RUST_LOG=idvault_server::service::audit=debug`):
    // only the phases from `begin_us` on hold the SQLite writer.
    tracing::debug!(
        leaves = assigned.len(),
        nodes = nodes.len(),
        prepare_us = prepared.as_micros(),
        begin_us = (began - prepared).as_micros(),
        assign_us = (assigned_at - began).as_micros(),
        nodes_us = (written - assigned_at).as_micros(),
        commit_us = (started.elapsed() - written).as_micros(),
        "sequencer batch timings"
    );
    Ok(assigned.len() as u64)
}

/// Whether the sequencer holds back `row`, a leaf row without a nonce (as
/// every row written before migration 0035 is). Its MAC covers only the
/// leaf, so a copy of such a row verifies; what tells one:
/// - its leaf's time (which the MAC covers) is more than
///   [`WITHOUT_NONCE_GRACE_MS`] old: rows of older builds still waiting
///   when the vault was upgraded (or written by replicas not yet
///   upgraded) are signed within seconds, so one that old is a copy of a
///   signed leaf, or was left unsigned so long that nothing vouches for
///   it; a day after the upgrade no row without a nonce is signed again;
/// - its bytes are those of an earlier row of this batch (`taken` holds
///   the batch's nonces, and for rows without one their leaf hash in a
///   nonce-sized key no real nonce takes);
/// - its bytes are a signed leaf's without a nonce of its request.
///
/// The last two read columns a database writer can change meanwhile
/// (hide the original, and the copy is signed; `audit verify` with the
/// root key cannot tell it afterwards either), which the time bound
/// limits to leaves of the last day. Genuine leaves of one request can be
/// identical (a job's batches in one millisecond): the second of such a
/// pair written by an older build and not yet signed at the upgrade is
/// held back too, the safer error.
async fn held_back_without_nonce(
    store: &Store,
    row: &LeafRow,
    now_ms: i64,
    taken: &mut HashSet<[u8; leaf::ROW_NONCE_LEN]>,
) -> Result<bool, VaultError> {
    let Ok(decoded) = AuditLeaf::decode(&row.bytes) else {
        // Its MAC verified, so a vault wrote it; `audit verify` names
        // bytes that do not decode.
        return Ok(false);
    };
    if decoded.time_ms < now_ms.saturating_sub(WITHOUT_NONCE_GRACE_MS) {
        return Ok(true);
    }
    let hash = merkle::leaf_hash(&row.bytes);
    // All ones first: a real nonce starts with a time before the year
    // 292 million.
    let mut key = [0xff; leaf::ROW_NONCE_LEN];
    key[8..].copy_from_slice(&hash[..8]);
    Ok(!taken.insert(key) || repeats_signed_leaf(store, row).await?)
}

/// How old a leaf row without a nonce may be and still be signed.
const WITHOUT_NONCE_GRACE_MS: i64 = 24 * 3_600_000;

/// Whether `row`, a leaf row without a nonce, repeats byte for byte a
/// signed leaf without one of the request its bytes name.
async fn repeats_signed_leaf(store: &Store, row: &LeafRow) -> Result<bool, VaultError> {
    let Ok(decoded) = AuditLeaf::decode(&row.bytes) else {
        return Ok(false);
    };
    Ok(store
        .signed_leaf_without_nonce(&decoded.request_id, &row.bytes)
        .await?)
}

/// Whether a checkpoint committed while [`verify_audit_log`] ran covers the
/// whole `tree` it read: the newest stored one, its note verified, is the
/// tree, or proves (from the stored nodes, against both roots) to extend
/// it. The nodes are not trusted: a proof from them holds only if the
/// leaves read hash to a prefix of the signed tree.
async fn signed_since(
    store: &Store,
    verifiers: &[NoteVerifier],
    origin: &str,
    tree: &Appender,
) -> Result<bool, VaultError> {
    let Some(c) = store.latest_checkpoint().await? else {
        return Ok(false);
    };
    let signed = checkpoint::open_checkpoint(&c.note, verifiers, origin)
        .is_ok_and(|cp| cp.size == c.size && crypto::ct_eq(&cp.root, &c.root));
    let (size, root) = (tree.size(), tree.root());
    if !signed || c.size < size {
        return Ok(false);
    }
    if c.size == size {
        return Ok(crypto::ct_eq(&c.root, &root));
    }
    extends_by_stored_nodes(store, (size, &root), (c.size, &c.root)).await
}

/// Whether the tree `new` extends the tree `old` (sizes and roots, both
/// trusted, `old` the smaller), by a consistency proof built from the
/// stored nodes: the nodes are not trusted, the proof holds only if they
/// hash to both roots. Missing nodes prove nothing.
async fn extends_by_stored_nodes(
    store: &Store,
    (old, old_root): (u64, &Hash),
    (new, new_root): (u64, &Hash),
) -> Result<bool, VaultError> {
    let ids = merkle::consistency_nodes(old, new).map_err(tree_err)?;
    let found: HashMap<NodeId, Hash> = store.audit_nodes(&ids).await?.into_iter().collect();
    Ok(
        merkle::consistency_proof(old, new, &|id| found.get(&id).copied()).is_ok_and(|proof| {
            merkle::verify_consistency(old, new, old_root, new_root, &proof).is_ok()
        }),
    )
}

/// Outcome of [`verify_audit_log`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditVerdict {
    /// Everything checked verified.
    Intact {
        /// Sequenced leaves checked.
        leaves: u64,
        /// Checkpoints checked.
        checkpoints: u64,
        /// Leaves written but not yet in a checkpoint (checked too).
        pending: u64,
    },
    /// The first fault found.
    Broken(AuditFault),
}

/// What is wrong, and where: the first bad leaf, checkpoint or subject.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditFault {
    /// A checkpoint's signature does not verify with the given keys, or
    /// the note is malformed or for another log.
    CheckpointSignature {
        /// Its tree size as stored.
        size: u64,
    },
    /// The stored leaves do not hash to a signed checkpoint's root: a leaf
    /// in `(from, size]` was edited, inserted or reordered.
    CheckpointRoot {
        /// The checkpoint's size.
        size: u64,
        /// The previous checkpoint's size.
        from: u64,
    },
    /// A leaf a signed checkpoint covers is missing (deleted).
    LeafMissing {
        /// Its index.
        index: u64,
    },
    /// A leaf has an index but no signed checkpoint covers it: a newer
    /// checkpoint was deleted (the sequencer writes both in one
    /// transaction).
    Uncovered {
        /// The first such index.
        index: u64,
    },
    /// A leaf's bytes no longer hash to the tree's stored node for it, or
    /// do not decode, or its columns disagree with its bytes (edited).
    LeafEdited {
        /// Its index (or, unsequenced, `None`).
        index: Option<u64>,
        /// Its row id.
        row: i64,
    },
    /// A leaf row carries the nonce of a row before it (a genuine row
    /// copied by a database writer; checked with the root key).
    LeafCopied {
        /// Its index (or, unsequenced, `None`).
        index: Option<u64>,
        /// Its row id.
        row: i64,
    },
    /// A leaf's MAC does not verify with the root key (forged).
    BadMac {
        /// Its index (or, unsequenced, `None`).
        index: Option<u64>,
        /// Its row id.
        row: i64,
    },
    /// A subject's stored chain head is not the head its newest leaf
    /// recorded (its chain was rolled back, or a deleted subject is back).
    SubjectRolledBack {
        /// The subject id.
        subject: String,
    },
}

impl std::fmt::Display for AuditFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = |i: &Option<u64>, row: &i64| match i {
            Some(i) => format!("leaf {i}"),
            None => format!("unsequenced leaf (row {row})"),
        };
        match self {
            Self::CheckpointSignature { size } => write!(
                f,
                "checkpoint of size {size}: signature does not verify (or malformed, or another log's)"
            ),
            Self::CheckpointRoot { size, from } => write!(
                f,
                "checkpoint of size {size}: the stored leaves {from}..{size} do not hash to its signed root (edited, inserted or reordered)"
            ),
            Self::LeafMissing { index } => {
                write!(
                    f,
                    "leaf {index}: missing, though a signed checkpoint covers it (deleted)"
                )
            }
            Self::Uncovered { index } => write!(
                f,
                "leaf {index}: sequenced, but no signed checkpoint covers it (a newer checkpoint was deleted)"
            ),
            Self::LeafEdited { index, row } => {
                write!(
                    f,
                    "{}: edited (bytes, columns or tree node disagree)",
                    at(index, row)
                )
            }
            Self::LeafCopied { index, row } => {
                write!(
                    f,
                    "{}: a copy of an earlier leaf row (its nonce is that row's)",
                    at(index, row)
                )
            }
            Self::BadMac { index, row } => {
                write!(
                    f,
                    "{}: MAC does not verify (forged without the audit key)",
                    at(index, row)
                )
            }
            Self::SubjectRolledBack { subject } => write!(
                f,
                "subject {subject}: stored chain head differs from the head its newest leaf recorded (rolled back)"
            ),
        }
    }
}

const PAGE: u32 = 2_000;

/// Nonces shared by several rows that `audit verify` looks into (the
/// first copy it meets is the fault it names).
const MAX_COPIES_LISTED: u32 = 1_000;

/// Walks the whole log: every checkpoint's signature (`verifiers`, for the
/// log named `origin`), every leaf against its stored node and the signed
/// roots (consecutive checkpoints are consistent exactly when both roots
/// come from one leaf sequence), leaf columns against leaf bytes, subject
/// chain heads against their newest leaves, and, given the root key
/// (`keys`), every leaf's MAC. Returns the first fault.
pub async fn verify_audit_log(
    store: &Store,
    verifiers: &[NoteVerifier],
    origin: &str,
    keys: Option<&KeyHierarchy>,
) -> Result<AuditVerdict, VaultError> {
    let mut cps = Vec::new();
    let mut after = 0;
    loop {
        let page = store.checkpoints_after(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.size;
        for c in page {
            let good = checkpoint::open_checkpoint(&c.note, verifiers, origin)
                .is_ok_and(|cp| cp.size == c.size && crypto::ct_eq(&cp.root, &c.root));
            if !good {
                return Ok(AuditVerdict::Broken(AuditFault::CheckpointSignature {
                    size: c.size,
                }));
            }
            cps.push((c.size, c.root));
        }
    }
    // Copies are told by their nonce, which only the MAC vouches for, so
    // only with the root key.
    let copies: HashSet<i64> = match keys {
        Some(_) => store
            .copied_leaf_rows(MAX_COPIES_LISTED)
            .await?
            .into_iter()
            .collect(),
        None => HashSet::new(),
    };
    let mut tree = Appender::new();
    let mut next_cp = cps.iter().peekable();
    let mut prev_cp = 0;
    let mut mac_keys = HashMap::new();
    let mut heads: HashMap<String, Option<(u64, Hash)>> = HashMap::new();
    loop {
        let from = tree.size();
        let page = store.leaves_from(from, PAGE).await?;
        if page.is_empty() {
            break;
        }
        let stored = store
            .audit_nodes(
                &(from..from + page.len() as u64)
                    .map(|index| NodeId { level: 0, index })
                    .collect::<Vec<_>>(),
            )
            .await?
            .into_iter()
            .collect::<HashMap<_, _>>();
        for row in &page {
            let index = tree.size();
            if row.idx != Some(index) {
                return Ok(AuditVerdict::Broken(AuditFault::LeafMissing { index }));
            }
            let hash = merkle::leaf_hash(&row.bytes);
            let node_ok = stored
                .get(&NodeId { level: 0, index })
                .is_some_and(|h| crypto::ct_eq(h, &hash));
            if let Some(fault) = check_leaf(row, keys, &copies, &mut mac_keys, &mut heads) {
                return Ok(AuditVerdict::Broken(fault));
            }
            if !node_ok {
                return Ok(AuditVerdict::Broken(AuditFault::LeafEdited {
                    index: Some(index),
                    row: row.id,
                }));
            }
            tree.push(hash);
            if let Some((size, root)) = next_cp.peek()
                && *size == tree.size()
            {
                if !crypto::ct_eq(root, &tree.root()) {
                    return Ok(AuditVerdict::Broken(AuditFault::CheckpointRoot {
                        size: *size,
                        from: prev_cp,
                    }));
                }
                prev_cp = *size;
                next_cp.next();
            }
        }
    }
    if let Some((size, _)) = next_cp.peek()
        && *size > tree.size()
    {
        return Ok(AuditVerdict::Broken(AuditFault::LeafMissing {
            index: tree.size(),
        }));
    }
    // Leaves past the newest checkpoint read: the sequencer gives indexes
    // and their checkpoint in one transaction, so such leaves mean a
    // newer checkpoint was deleted (and their bytes could then be edited
    // unnoticed), unless one was committed while this ran.
    let covered = cps.last().map_or(0, |(size, _)| *size);
    if tree.size() > covered && !signed_since(store, verifiers, origin, &tree).await? {
        return Ok(AuditVerdict::Broken(AuditFault::Uncovered {
            index: covered,
        }));
    }
    let leaves = tree.size();
    let mut pending = 0u64;
    let mut after_id = i64::MIN;
    loop {
        let page = store.unsequenced_leaves(after_id, PAGE).await?;
        let Some(last) = page.last() else { break };
        after_id = last.id;
        for row in &page {
            if let Some(fault) = check_leaf(row, keys, &copies, &mut mac_keys, &mut heads) {
                return Ok(AuditVerdict::Broken(fault));
            }
            // A row without a nonce the sequencer holds back as a copy of
            // a signed one (`held_back_without_nonce`).
            if keys.is_some() && row.nonce.is_none() && repeats_signed_leaf(store, row).await? {
                return Ok(AuditVerdict::Broken(AuditFault::LeafCopied {
                    index: None,
                    row: row.id,
                }));
            }
            pending += 1;
        }
    }
    let mut subjects: Vec<_> = heads.into_iter().collect();
    subjects.sort();
    for (subject, head) in subjects {
        let Ok(id) = idvault_core::subject::SubjectId::parse(&subject) else {
            continue;
        };
        let row = store.subject_row(&id).await?;
        let matches = match (&row, head) {
            (None, None) => true,
            (Some(r), Some((seq, hash))) => r.head.seq == seq && crypto::ct_eq(&r.head.hash, &hash),
            _ => false,
        };
        if !matches {
            return Ok(AuditVerdict::Broken(AuditFault::SubjectRolledBack {
                subject,
            }));
        }
    }
    Ok(AuditVerdict::Intact {
        leaves,
        checkpoints: cps.len() as u64,
        pending,
    })
}

/// Checks one leaf row: bytes decode, columns agree, MAC (with keys); and
/// notes the subject head it records.
fn check_leaf(
    row: &LeafRow,
    keys: Option<&KeyHierarchy>,
    copies: &HashSet<i64>,
    mac_keys: &mut HashMap<u32, AuditKey>,
    heads: &mut HashMap<String, Option<(u64, Hash)>>,
) -> Option<AuditFault> {
    let edited = AuditFault::LeafEdited {
        index: row.idx,
        row: row.id,
    };
    let Ok(leaf) = AuditLeaf::decode(&row.bytes) else {
        return Some(edited);
    };
    let head_seq = leaf.head.map(|(s, _)| i64::try_from(s).unwrap_or(-1));
    if LeafColumns::of(&leaf) != row.columns
        || row.request_id != leaf.request_id
        || row.head_seq != head_seq
    {
        return Some(edited);
    }
    if let Some(k) = keys
        && !mac_ok(k, mac_keys, row)
    {
        return Some(AuditFault::BadMac {
            index: row.idx,
            row: row.id,
        });
    }
    if copies.contains(&row.id) {
        return Some(AuditFault::LeafCopied {
            index: row.idx,
            row: row.id,
        });
    }
    if let Some(subject) = &leaf.subject
        && leaf.outcome == "ok"
    {
        if let Some(h) = leaf.head {
            // A chain only grows: a head at or below one already recorded
            // is a replayed leaf (a rollback dressed up as a new leaf).
            if let Some(Some((seen, _))) = heads.get(subject)
                && h.0 <= *seen
            {
                return Some(AuditFault::SubjectRolledBack {
                    subject: subject.clone(),
                });
            }
            heads.insert(subject.clone(), Some(h));
        } else if leaf.action == Action::DeleteSubject.name() {
            heads.insert(subject.clone(), None);
        }
    }
    None
}

impl Vault {
    /// Whether `row`'s chain head is the one its newest head-recording
    /// leaf names, and that leaf is authentic (its MAC verifies). A subject
    /// with no such leaf (written before leaves recorded heads) passes.
    pub(crate) fn head_matches_leaf(
        &self,
        row: &idvault_core::records::SubjectRecord,
        leaf: Option<&LeafRow>,
    ) -> bool {
        let Some(l) = leaf else { return true };
        let mut cache = HashMap::new();
        if !mac_ok(self.keys(), &mut cache, l) {
            return false;
        }
        // The leaf must be about this subject and agree with the columns
        // that selected it (they are not under the MAC).
        let Ok(leaf) = AuditLeaf::decode(&l.bytes) else {
            return false;
        };
        // The request id too: the creation leaf is found by it (migration
        // 0029).
        if leaf.subject.as_deref() != Some(row.id.to_string().as_str())
            || LeafColumns::of(&leaf) != l.columns
            || leaf.request_id.as_slice() != l.request_id.as_slice()
        {
            return false;
        }
        match leaf.head {
            Some((seq, hash)) => seq == row.head.seq && crypto::ct_eq(&hash, &row.head.hash),
            None => false,
        }
    }

    /// [`revealed_to_partners`] over this vault's log and keys.
    pub async fn audit_revealed(
        &self,
        subject: &idvault_core::subject::SubjectId,
    ) -> Result<RevealReport, VaultError> {
        revealed_to_partners(self.store(), self.keys(), subject).await
    }

    /// [`verify_audit_log`] of this vault's own log with its own keys
    /// (signatures and MACs).
    pub async fn verify_own_audit_log(&self) -> Result<AuditVerdict, VaultError> {
        let verifiers = self
            .audit_verifier_keys()?
            .iter()
            .map(|k| NoteVerifier::parse(k))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| VaultError::Internal("audit verifier key"))?;
        verify_audit_log(
            self.store(),
            &verifiers,
            &self.audit_settings().origin,
            Some(self.keys()),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(action: &str, subject: Option<&str>, detail: &str) -> AuditLeaf {
        AuditLeaf {
            time_ms: 0,
            actor: "spiffe://idvault.dev/partner/partner-b".into(),
            action: action.into(),
            subject: subject.map(Into::into),
            outcome: "ok".into(),
            detail: detail.into(),
            policies: Vec::new(),
            request_id: [0; 16],
            head: None,
        }
    }

    #[test]
    fn revealed_lists_are_read_in_both_forms() {
        assert_eq!(
            revealed_list("link queries=2 refused=0 matched=1 revealed=v3:[aa,bb] policy=p"),
            Some((Some(3), vec!["aa", "bb"]))
        );
        assert_eq!(
            revealed_list("queries=1 refused=0 matched=0 revealed=v1:[]"),
            Some((Some(1), vec![]))
        );
        assert_eq!(
            revealed_list("queries=1 refused=0 matched=1 subjects=[s-1,s-2]"),
            Some((None, vec!["s-1", "s-2"]))
        );
        assert_eq!(revealed_list("queries=1 revealed=vX:[aa]"), None);
        let one_to_one = "link one_to_one queries=2 refused=0 matched=2 revealed=v1:[aa,bb] contested=[aa*3,cc*1]";
        assert_eq!(contested_count(one_to_one, "aa"), 3);
        assert_eq!(contested_count(one_to_one, "bb"), 0);
        assert_eq!(contested_count("queries=1 revealed=v1:[aa]", "aa"), 0);
        assert_eq!(revealed_list("link lookup one_to_one queries=3"), None);
    }

    /// Leaves of the earlier forms are not handed back; today's are, and
    /// so is every other action's, subject or not.
    #[test]
    fn earlier_forms_of_partner_records_are_withheld() {
        let id = "8222fe1c-08ad-460e-9dc6-92834823430b";
        let old_match = format!("queries=1 refused=0 matched=1 subjects=[{id}]");
        let old_link = format!("link one_to_one queries=2 refused=0 matched=1 subjects=[{id}]");
        for (l, hidden) in [
            (leaf("Match", None, &old_match), true),
            (leaf("Match", None, &old_link), true),
            (
                leaf("Match", None, "queries=1 refused=0 matched=1 subjects=1"),
                false,
            ),
            (
                leaf("PublishEvent", Some(id), "outcome=ignored_no_rule"),
                true,
            ),
            (
                leaf(
                    "PublishEvent",
                    None,
                    "outcome=delivered commands=1 ids=cmd_1",
                ),
                true,
            ),
            (
                leaf("PublishEvent", Some(id), "accepted policy=events-publish"),
                false,
            ),
            (
                leaf("RequestTransactionCode", Some(id), "op=request_code"),
                true,
            ),
            (
                leaf("RequestTransactionCode", None, "op=request_code"),
                false,
            ),
            (leaf("AwaitTransaction", Some(id), "op=outcome"), true),
            (leaf("AwaitTransaction", None, "op=outcome"), false),
            (leaf("CreateSubject", Some(id), "fields=3"), false),
            (leaf("Release", Some(id), "consent=00"), false),
        ] {
            assert_eq!(withheld(&l), hidden, "{l:?}");
        }
    }
}
