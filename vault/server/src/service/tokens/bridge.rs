//! Identity-bridge import: link a customer's identifiers to one entity
//! token, merging fragments (see [`idvault_core::xref`]).

use std::collections::HashMap;

use idvault_policies::Action;
use idvault_tokenizer::{IdentifierType, NormalizeOptions, normalize};

use crate::service::{Caller, Vault, VaultError};
use idvault_core::crypto::HASH_LEN;
use idvault_core::keys::KeyError;
use idvault_core::xref::{blind_index, plan_record};

/// Most records in one import batch (one transaction).
pub const MAX_BATCH: usize = 1000;

/// Most identifiers in one record.
pub const MAX_RECORD_IDENTIFIERS: usize = 64;

/// Most identifiers one customer (entity) may have linked. A record whose
/// links or merge would take its customer past it is refused, and a
/// customer found past it anyway (rows written behind the vault's back)
/// is not detokenized: one detokenization reads, opens and checks every
/// identifier of the customer at once, and a partner chaining identifiers
/// onto one customer must not make that unbounded.
pub const MAX_ENTITY_LINKS: u64 = 1_000;

/// Most identifiers in one import batch, all records together. Each new
/// link is a row at a random place in the link and index B-trees, and on
/// SQLite a transaction keeps the earlier content of every page it changes
/// in memory: 1,000 records of 64 identifiers each would change some
/// 200 MiB of pages in one transaction.
pub const MAX_BATCH_IDENTIFIERS: usize = 10_000;

/// Longest `record_id`, in bytes.
pub const MAX_RECORD_ID: usize = 128;

/// An identifier as received: in clear, or sealed with the bridge key.
/// `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub enum IdValue {
    /// Clear text.
    Plain(String),
    /// `seal_bridge_identifier` output.
    Sealed(Vec<u8>),
}

impl std::fmt::Debug for IdValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain(v) => write!(f, "Plain({} bytes, redacted)", v.len()),
            Self::Sealed(v) => write!(f, "Sealed({} bytes)", v.len()),
        }
    }
}

/// One bridge record as received (its `Debug` redacts identifier values).
#[derive(Debug, Clone, Default)]
pub struct BridgeRecord {
    /// The sender's record id, echoed in errors and merges (not PII).
    pub record_id: String,
    /// The customer's identifiers.
    pub identifiers: Vec<(IdentifierType, IdValue)>,
    /// Customer location code (validated, not a link key).
    pub customer_location: Option<String>,
    /// Address location code (validated, not a link key).
    pub address_location: Option<String>,
}

/// A merge the import performed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merge {
    /// Record that revealed the fragments.
    pub record_id: String,
    /// Token that survives.
    pub surviving: String,
    /// Tokens that became aliases of it.
    pub merged: Vec<String>,
}

/// A record that was not imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    /// Position in the batch.
    pub index: usize,
    /// The record's id.
    pub record_id: String,
    /// Why (names the identifier type, never the value).
    pub reason: String,
}

/// Import counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Records received.
    pub records: u64,
    /// New entities.
    pub entities_created: u64,
    /// New identifier links.
    pub identifiers_linked: u64,
    /// Records that changed nothing (already imported).
    pub records_unchanged: u64,
    /// Fragment merges.
    pub merges: Vec<Merge>,
    /// Records refused.
    pub rejected: Vec<RecordError>,
}

impl ImportSummary {
    /// Adds another batch's counts, keeping at most `keep` merges and
    /// rejected records (the first ones): a stream's summary stays bounded
    /// whatever the stream held. Returns how many of each it was given.
    pub fn absorb(&mut self, other: Self, keep: usize) -> (u64, u64) {
        let given = (other.merges.len() as u64, other.rejected.len() as u64);
        self.records += other.records;
        self.entities_created += other.entities_created;
        self.identifiers_linked += other.identifiers_linked;
        self.records_unchanged += other.records_unchanged;
        let room = keep.saturating_sub(self.merges.len());
        self.merges.extend(other.merges.into_iter().take(room));
        let room = keep.saturating_sub(self.rejected.len());
        self.rejected.extend(other.rejected.into_iter().take(room));
        given
    }

    /// Whether the batch changed any link or entity.
    pub fn changed_links(&self) -> bool {
        self.entities_created > 0 || self.identifiers_linked > 0 || !self.merges.is_empty()
    }
}

/// A record ready to link: what [`prepare_record`] makes of a
/// [`BridgeRecord`]. `Debug` shows the record id and the identifier
/// types, never a value.
pub struct Prepared {
    index: usize,
    record_id: String,
    /// (type, blind indexes for every live key version newest first, normalised value)
    ids: Vec<(
        IdentifierType,
        Vec<[u8; HASH_LEN]>,
        zeroize::Zeroizing<String>,
    )>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("record_id", &self.record_id)
            .field(
                "types",
                &self.ids.iter().map(|(t, _, _)| *t).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Vault {
    fn prepare(
        &self,
        owner: &str,
        index: usize,
        r: BridgeRecord,
        opts: &NormalizeOptions,
        keys: &[idvault_core::xref::XrefIndexKey],
    ) -> Result<Prepared, RecordError> {
        prepare_record(owner, index, r, opts, keys, &|v| {
            self.keys().bridge_seal_key(owner, v).ok()
        })
    }
}

/// Checks one record of partner `owner` at `index` of its batch, opens its
/// sealed identifiers (`seal_key` gives the partner's bridge seal key of a
/// version) and computes their blind indexes under `keys`, newest first.
/// A refusal names the identifier type, never the value.
pub fn prepare_record(
    owner: &str,
    index: usize,
    r: BridgeRecord,
    opts: &NormalizeOptions,
    keys: &[idvault_core::xref::XrefIndexKey],
    seal_key: &dyn Fn(u32) -> Option<idvault_core::xref::BridgeSealKey>,
) -> Result<Prepared, RecordError> {
    if r.record_id.len() > MAX_RECORD_ID || r.record_id.chars().any(char::is_control) {
        // Not echoed: it is what is wrong, and echoing it would let
        // the refusals of one stream hold whatever the sender put there.
        return Err(RecordError {
            index,
            record_id: String::new(),
            reason: format!(
                "record_id must be at most {MAX_RECORD_ID} bytes of printable characters"
            ),
        });
    }
    let fail = |reason: String| RecordError {
        index,
        record_id: r.record_id.clone(),
        reason,
    };
    if r.identifiers.is_empty() {
        return Err(fail("no identifiers".into()));
    }
    if r.identifiers.len() > MAX_RECORD_IDENTIFIERS {
        return Err(fail(format!(
            "more than {MAX_RECORD_IDENTIFIERS} identifiers"
        )));
    }
    for loc in [&r.customer_location, &r.address_location]
        .into_iter()
        .flatten()
    {
        normalize(IdentifierType::Location, loc, opts).map_err(|e| fail(e.to_string()))?;
    }
    let mut ids: Vec<(
        IdentifierType,
        Vec<[u8; HASH_LEN]>,
        zeroize::Zeroizing<String>,
    )> = Vec::new();
    for (ty, value) in &r.identifiers {
        let opened;
        let raw: &str = match value {
            IdValue::Plain(v) => v,
            IdValue::Sealed(bytes) => {
                // The caller's own key and name: a file sealed for
                // another partner does not open here.
                let key = idvault_core::xref::sealed_bridge_version(bytes)
                    .and_then(seal_key)
                    .ok_or_else(|| fail(format!("sealed {ty} names an unknown key version")))?;
                opened = idvault_core::xref::open_bridge_identifier(&key, owner, *ty, bytes)
                    .map_err(|_| {
                        fail(format!(
                            "sealed {ty} does not open with this partner's bridge key"
                        ))
                    })?;
                &opened
            }
        };
        let n = normalize(*ty, raw, opts).map_err(|e| fail(e.to_string()))?;
        let idx: Vec<[u8; HASH_LEN]> = keys.iter().map(|k| blind_index(k, *ty, &n)).collect();
        if !ids.iter().any(|(_, other, _)| other.first() == idx.first()) {
            ids.push((*ty, idx, zeroize::Zeroizing::new(n.into_owned())));
        }
    }
    Ok(Prepared {
        index,
        record_id: r.record_id,
        ids,
    })
}

impl Vault {
    /// Imports one batch of bridge records in one audited transaction.
    /// Invalid records are reported, not imported; valid ones are.
    pub async fn import_bridge(
        &self,
        caller: &Caller,
        records: Vec<BridgeRecord>,
        opts: NormalizeOptions,
    ) -> Result<ImportSummary, VaultError> {
        let summary = self
            .handle(caller, Action::ImportBridge, async |req| {
                if records.len() > MAX_BATCH {
                    return Err(VaultError::BadRequest(format!(
                        "at most {MAX_BATCH} records per ImportBridge message"
                    )));
                }
                if records.iter().map(|r| r.identifiers.len()).sum::<usize>()
                    > MAX_BATCH_IDENTIFIERS
                {
                    return Err(VaultError::BadRequest(format!(
                        "at most {MAX_BATCH_IDENTIFIERS} identifiers per ImportBridge message, \
                         all records together"
                    )));
                }
                let summary = self.import_batch(req, records, &opts).await?;
                // Links or merges changed: this partner's cached lookups
                // may be stale (other partners' namespaces are untouched).
                // An import that changed nothing leaves the cache alone.
                if summary.changed_links() {
                    self.xref_cache().clear_owner(&req.partner.name);
                }
                Ok(summary)
            })
            .await?;
        Ok(summary)
    }

    async fn import_batch(
        &self,
        req: &crate::service::pipeline::Request<'_>,
        records: Vec<BridgeRecord>,
        opts: &NormalizeOptions,
    ) -> Result<ImportSummary, VaultError> {
        let owner = &req.partner.name;
        let current = self.keys().current_version();
        // Newest version first: new links use it; older ones still find old links.
        let keys = self
            .keys()
            .versions()
            .into_iter()
            .rev()
            .map(|v| self.keys().xref_index_key(owner, v))
            .collect::<Result<Vec<_>, KeyError>>()?;
        let mut summary = ImportSummary {
            records: records.len() as u64,
            ..ImportSummary::default()
        };
        let seal_key = self.keys().xref_seal_key(current)?;
        let mut prepared = Vec::with_capacity(records.len());
        for (i, r) in records.into_iter().enumerate() {
            match self.prepare(owner, i, r, opts, &keys) {
                Ok(p) => prepared.push(p),
                Err(e) => summary.rejected.push(e),
            }
        }
        let now = self.now_millis();
        let mut tx = self.begin().await?;
        if !prepared.is_empty() {
            // Before the first lookup: this import reads what the one
            // before it committed (PostgreSQL; SQLite's writer orders them).
            tx.xref_lock_owner(owner).await?;
        }
        // Links each customer this batch touched holds now: counted once
        // from the database, then kept up to date by the batch's own
        // writes (the batch holds its owner's import lock), so records
        // aimed at one customer do not recount it each time.
        let mut links_held: HashMap<String, u64> = HashMap::new();
        for p in &prepared {
            // One query for every identifier and key version of the record.
            let all: Vec<[u8; HASH_LEN]> = p
                .ids
                .iter()
                .flat_map(|(_, idx, _)| idx.iter().copied())
                .collect();
            let found = tx.xref_lookup(owner, &all).await?;
            let existing: Vec<Option<String>> = p
                .ids
                .iter()
                .map(|(_, idx, _)| idx.iter().find_map(|i| found.get(i)).cloned())
                .collect();
            let mut fresh_err = None;
            let plan = plan_record(&existing, || {
                let mut b = [0u8; 16];
                if let Err(e) = self.rng().fill(&mut b) {
                    fresh_err = Some(e);
                }
                idvault_tokenizer::token::entity_token(&b)
            });
            if let Some(e) = fresh_err {
                return Err(VaultError::Key(e.into()));
            }
            if plan.is_noop() {
                summary.records_unchanged += 1;
                continue;
            }
            if !plan.merged.is_empty() || !plan.new_links.is_empty() {
                let mut joined = plan.merged.clone();
                if !plan.created {
                    joined.push(plan.token.clone());
                }
                let mut held: u64 = 0;
                for t in &joined {
                    let n = match links_held.get(t) {
                        Some(n) => *n,
                        None => {
                            let n = tx.xref_link_count(t, MAX_ENTITY_LINKS).await?;
                            links_held.insert(t.clone(), n);
                            n
                        }
                    };
                    held = held.saturating_add(n);
                }
                let after = held.saturating_add(plan.new_links.len() as u64);
                if after > MAX_ENTITY_LINKS {
                    summary.rejected.push(RecordError {
                        index: p.index,
                        record_id: p.record_id.clone(),
                        reason: format!(
                            "its customer would have more than {MAX_ENTITY_LINKS} identifiers"
                        ),
                    });
                    continue;
                }
                for m in &plan.merged {
                    links_held.remove(m);
                }
                links_held.insert(plan.token.clone(), after);
            }
            if plan.created {
                tx.xref_create(owner, &plan.token, now).await?;
                summary.entities_created += 1;
            }
            if !plan.merged.is_empty() {
                tx.xref_merge(&plan.token, &plan.merged).await?;
                summary.merges.push(Merge {
                    record_id: p.record_id.clone(),
                    surviving: plan.token.clone(),
                    merged: plan.merged.clone(),
                });
            }
            for &i in &plan.new_links {
                if let Some((ty, idx, value)) = p.ids.get(i)
                    && let Some(bi) = idx.first()
                {
                    let sealed =
                        idvault_core::xref::seal_identifier(&seal_key, bi, value, self.rng())
                            .map_err(|e| VaultError::Key(e.into()))?;
                    tx.xref_link(bi, current, ty.name(), owner, &plan.token, sealed)
                        .await?;
                    summary.identifiers_linked += 1;
                }
            }
        }
        // In the batch's order: refusals at the customer cap come after
        // the per-record checks.
        summary.rejected.sort_by_key(|r| r.index);
        let detail = format!(
            "records={} created={} linked={} merged={} unchanged={} rejected={}",
            summary.records,
            summary.entities_created,
            summary.identifiers_linked,
            summary.merges.len(),
            summary.records_unchanged,
            summary.rejected.len()
        );
        if summary.entities_created + summary.identifiers_linked > 0 || !summary.merges.is_empty() {
            tx.xref_bump_generation(owner).await?;
        }
        self.commit(tx, req, None, detail).await?;
        Ok(summary)
    }
}

/// What detokenization reveals. `Debug` shows the token and identifier
/// types, never the identifiers.
pub struct Detokenized {
    /// The canonical entity token (differs from the input for an alias).
    pub token: String,
    /// The customer's identifiers, normalised.
    pub identifiers: Vec<(IdentifierType, zeroize::Zeroizing<String>)>,
}

impl std::fmt::Debug for Detokenized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let types: Vec<&str> = self.identifiers.iter().map(|(t, _)| t.name()).collect();
        write!(
            f,
            "Detokenized({}, identifiers {types:?}, values redacted)",
            self.token
        )
    }
}

impl Vault {
    /// Resolves an entity token (or alias) to its customer's identifiers.
    /// Only for partners whose role allows it; always audited. The reads
    /// come from one snapshot outside the writer, so a concurrent merge is
    /// seen whole; nothing is answered unless the audit leaf commits.
    pub async fn detokenize(
        &self,
        caller: &Caller,
        token: &str,
    ) -> Result<Detokenized, VaultError> {
        self.handle(caller, Action::Detokenize, async |req| {
            if !idvault_tokenizer::token::is_entity_token(token) {
                return Err(VaultError::BadRequest(
                    "not an entity token (et_ followed by 26 base32 characters)".into(),
                ));
            }
            self.detokenize_in(req, token).await
        })
        .await
    }

    async fn detokenize_in(
        &self,
        req: &crate::service::pipeline::Request<'_>,
        token: &str,
    ) -> Result<Detokenized, VaultError> {
        // Read (one snapshot) and opened outside the writer; only the leaf
        // goes through it, and nothing is answered unless it commits.
        let (canonical, links) = self
            .store()
            .xref_detokenize(&req.partner.name, token, MAX_ENTITY_LINKS)
            .await?
            .ok_or(VaultError::NotFound)?;
        if links.len() as u64 > MAX_ENTITY_LINKS {
            return Err(VaultError::Limit(
                "this customer has more identifiers than one detokenization answers (1,000)",
            ));
        }
        let mut identifiers = Vec::with_capacity(links.len());
        for (ty, version, bi, sealed) in links {
            let key = self.keys().xref_seal_key(version)?;
            let value = idvault_core::xref::open_identifier(&key, &bi, &sealed)
                .map_err(|_| VaultError::Integrity("sealed identifier"))?;
            let ty = IdentifierType::parse(&ty).ok_or(VaultError::Integrity("identifier type"))?;
            // The seal proves the vault wrote the identifier, not for whom:
            // its key is one for every partner, and the link's `token` and
            // the entity's `owner` and `alias_of` columns are not sealed. A
            // database writer could point another partner's link at this
            // caller's entity. The blind index is keyed per partner, so
            // the link is the caller's only if the caller's key gives that
            // index for the identifier it seals (as the rewrap checks).
            let index_key = self.keys().xref_index_key(&req.partner.name, version)?;
            let ours = blind_index(&index_key, ty, &value);
            if !idvault_core::crypto::ct_eq(&ours, &bi) {
                return Err(VaultError::Integrity("cross-reference link owner"));
            }
            identifiers.push((ty, value));
        }
        let detail = format!(
            "token={token} canonical={canonical} identifiers={}",
            identifiers.len()
        );
        let tx = self.begin().await?;
        self.commit(tx, req, None, detail).await?;
        Ok(Detokenized {
            token: canonical,
            identifiers,
        })
    }
}
