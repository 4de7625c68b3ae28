//! Moving stored rows forward to a newer root key version, and counting
//! what still names a version (docs/keys.md, "Rewrap and retire").
//!
//! Every change here is conditional on the row being as read (its old
//! MAC, or its old version where it has no MAC): a request that rewrote
//! the row meanwhile wrote it under the current version already, and the
//! rewrap leaves it alone.
//! A row whose MAC does not verify is never re-MACed (that would bless a
//! forgery); it keeps naming its old version, and `keys retire` counts it.

use std::collections::{HashMap, HashSet};

use sqlx::Row;
use sqlx::any::AnyRow;

use super::matching::placeholders;
use super::rows::{self, u64_to_i64};
use super::rows::{fixed, list_col, subject_col};
use super::{AuditedTx, Store, StoreError, check_row, seal_row};
use idvault_core::consent::{Challenge, EnrollmentCode};
use idvault_core::keys::WrappedDek;
use idvault_core::packet;
use idvault_core::records::SubjectRecord;
use idvault_core::rowmac::{self, RowBytes, RowMac};
use idvault_core::subject::SubjectId;

/// A table whose rows carry row MACs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacTable {
    /// `subjects` (the owner's MAC)
    Subjects,
    /// `devices`
    Devices,
    /// `enrollment_codes`
    EnrollmentCodes,
    /// `consent_challenges`
    ConsentChallenges,
    /// `consents`
    Consents,
    /// `entity_links`
    EntityLinks,
    /// `subject_rules`
    SubjectRules,
    /// `status_lists`
    StatusLists,
    /// `credentials`
    Credentials,
    /// `transactions`
    Transactions,
    /// `pairwise_tokens`
    PairwiseTokens,
    /// `match_models` (a domain's learned weights)
    MatchModels,
}

/// How a key column binds.
#[derive(Debug, Clone, Copy)]
enum KeyKind {
    Blob,
    Text,
    Int,
}

/// A primary key value to bind.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pk {
    Blob(Vec<u8>),
    Text(String),
    Int(i64),
}

/// `q` with key value `k` bound next.
fn bind_pk<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    k: Pk,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    match k {
        Pk::Blob(b) => q.bind(b),
        Pk::Text(t) => q.bind(t),
        Pk::Int(i) => q.bind(i),
    }
}

impl MacTable {
    /// Every MACed table.
    pub const ALL: [Self; 12] = [
        Self::Subjects,
        Self::Devices,
        Self::EnrollmentCodes,
        Self::ConsentChallenges,
        Self::Consents,
        Self::EntityLinks,
        Self::SubjectRules,
        Self::StatusLists,
        Self::Credentials,
        Self::Transactions,
        Self::PairwiseTokens,
        Self::MatchModels,
    ];

    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Subjects => "subjects",
            Self::Devices => "devices",
            Self::EnrollmentCodes => "enrollment_codes",
            Self::ConsentChallenges => "consent_challenges",
            Self::Consents => "consents",
            Self::EntityLinks => "entity_links",
            Self::SubjectRules => "subject_rules",
            Self::StatusLists => "status_lists",
            Self::Credentials => "credentials",
            Self::Transactions => "transactions",
            Self::PairwiseTokens => "pairwise_tokens",
            Self::MatchModels => "match_models",
        }
    }

    /// The columns a re-MAC reads (the key's among them).
    fn columns(self) -> &'static str {
        match self {
            Self::Subjects => "subject_id, created_by, created_at_ms, mac_version, mac",
            Self::Devices => {
                "device_id, subject_id, public_key, enrolled_by, enrolled_at_ms, revoked_at_ms, \
                 mac_version, mac"
            }
            Self::EnrollmentCodes => {
                "code_hash, subject_id, issued_to, expires_at_ms, used_at_ms, mac_version, mac"
            }
            Self::ConsentChallenges => {
                "challenge, partner, subject_id, expires_at_ms, used_at_ms, mac_version, mac"
            }
            Self::Consents => {
                "consent_id, subject_id, device_id, audience, purpose, fields, standing, issued_at, \
                 expires_at, grant_hash, presented_at_ms, revoked_at_ms, grant_bytes, grant_signature, \
                 mac_version, mac"
            }
            Self::EntityLinks => "subject_id, entity, linked_at_ms, mac_version, mac",
            Self::SubjectRules => {
                "subject_id, rule_id, source, event_type, target, command, fields, mac_version, mac"
            }
            Self::StatusLists => "list_id, log2, key_version, next_seq, mac_version, mac",
            Self::Credentials => {
                "list_id, idx, seq, subject_id, device_id, expires_at, revoked_at_ms, mac_version, mac"
            }
            Self::Transactions => {
                "transaction_id, code_mac, partner, subject_id, pairwise_token, binding_message, \
                 claims, created_at_ms, expires_at_ms, attempts, state, answered_by, answered_at_ms, \
                 approved, mac_version, mac"
            }
            Self::PairwiseTokens => "partner, subject_id, token, mac_version, mac",
            Self::MatchModels => "domain, estimated_at_ms, model, mac_version, mac",
        }
    }

    /// The columns of the unique key the walk goes by (the primary key's
    /// but for pairwise tokens), in its order, and how each binds.
    fn key(self) -> &'static [(&'static str, KeyKind)] {
        use KeyKind::{Blob, Int, Text};
        match self {
            Self::Subjects => &[("subject_id", Blob)],
            Self::Devices => &[("device_id", Text)],
            Self::EnrollmentCodes => &[("code_hash", Blob)],
            Self::ConsentChallenges => &[("challenge", Blob)],
            Self::Consents => &[("consent_id", Blob)],
            Self::EntityLinks => &[("subject_id", Blob), ("entity", Text)],
            Self::SubjectRules => &[("subject_id", Blob), ("rule_id", Text)],
            Self::StatusLists => &[("list_id", Int)],
            Self::Credentials => &[("list_id", Int), ("idx", Int)],
            Self::Transactions => &[("transaction_id", Blob)],
            // The token: unique, never NULL, and what the row is found
            // by; its key is `(partner, subject_key, subject_id)` with the
            // storage key filled in by a trigger for rows written by id
            // alone (migration 0028).
            Self::PairwiseTokens => &[("token", Text)],
            Self::MatchModels => &[("domain", Text)],
        }
    }

    /// The next `$N` keys and versions in primary-key order (`N` the last
    /// parameter), after the key bound first when `after`: a bounded
    /// window, whatever versions its rows hold.
    ///
    /// Primary-key order rather than version order: the tables keep no
    /// index on `mac_version` (migration 0024: every insert paid for one
    /// on a random page), and a walk from the last key read visits each
    /// row once, forged rows included, whatever rows come and go behind
    /// it. A window of keys rather than `LIMIT` rows below the target:
    /// with few rows left below it, such a statement would read on to
    /// the table's end (a long read snapshot on SQLite, perhaps a
    /// sequential scan on PostgreSQL). Built from this type's constant
    /// names only.
    fn window(self, after: bool) -> String {
        let key = self.key();
        let order = key.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", ");
        let (from, limit) = if after {
            let params = (1..=key.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            // A one-column key compares as a value; a composite one as a
            // row value, which both backends answer from the key's index.
            let cond = if key.len() == 1 {
                format!(" WHERE {order} > {params}")
            } else {
                format!(" WHERE ({order}) > ({params})")
            };
            (cond, key.len() + 1)
        } else {
            (String::new(), 1)
        };
        format!(
            "SELECT {order}, mac_version FROM {}{from} ORDER BY {order} LIMIT ${limit}",
            self.name()
        )
    }

    /// The row whose key is `$1…`, if it is still MACed below the last
    /// parameter: read again inside the batch's transaction, so the MAC
    /// checked is the one the update replaces. On PostgreSQL it is locked
    /// from here to the commit; with [`Remac::SkipHeld`] a row another
    /// transaction holds is not read at all.
    fn row_below(self, backend: super::Backend, how: Remac) -> String {
        let key = self.key();
        let eq = key
            .iter()
            .enumerate()
            .map(|(i, (c, _))| format!("{c} = ${}", i + 1))
            .collect::<Vec<_>>()
            .join(" AND ");
        let lock = match (backend, how) {
            (super::Backend::Sqlite, _) => "",
            (super::Backend::Postgres, Remac::SkipHeld) => " FOR NO KEY UPDATE SKIP LOCKED",
            (super::Backend::Postgres, Remac::Wait) => " FOR NO KEY UPDATE",
        };
        format!(
            "SELECT {} FROM {} WHERE {eq} AND mac_version < ${}{lock}",
            self.columns(),
            self.name(),
            key.len() + 1
        )
    }

    /// The key of row `r` of a window: a key to re-MAC, or the cursor of
    /// the next window. Read straight from its columns, so a row that does
    /// not verify still moves the walk on.
    fn key_of(self, r: &AnyRow) -> Result<Vec<Pk>, StoreError> {
        self.key()
            .iter()
            .map(|&(c, kind)| {
                Ok(match kind {
                    KeyKind::Blob => Pk::Blob(r.try_get(c)?),
                    KeyKind::Text => Pk::Text(r.try_get(c)?),
                    KeyKind::Int => Pk::Int(r.try_get(c)?),
                })
            })
            .collect()
    }

    /// Sets `(mac_version, mac) = ($1, $2)` where the key is `$3…` and
    /// the MAC is still the one read (last parameter).
    fn update(self) -> &'static str {
        match self {
            Self::Subjects => {
                "UPDATE subjects SET mac_version = $1, mac = $2 WHERE subject_id = $3 AND mac = $4"
            }
            Self::Devices => {
                "UPDATE devices SET mac_version = $1, mac = $2 WHERE device_id = $3 AND mac = $4"
            }
            Self::EnrollmentCodes => {
                "UPDATE enrollment_codes SET mac_version = $1, mac = $2 WHERE code_hash = $3 AND mac = $4"
            }
            Self::ConsentChallenges => {
                "UPDATE consent_challenges SET mac_version = $1, mac = $2 WHERE challenge = $3 AND mac = $4"
            }
            Self::Consents => {
                "UPDATE consents SET mac_version = $1, mac = $2 WHERE consent_id = $3 AND mac = $4"
            }
            Self::EntityLinks => {
                "UPDATE entity_links SET mac_version = $1, mac = $2 \
                 WHERE subject_id = $3 AND entity = $4 AND mac = $5"
            }
            Self::SubjectRules => {
                "UPDATE subject_rules SET mac_version = $1, mac = $2 \
                 WHERE subject_id = $3 AND rule_id = $4 AND mac = $5"
            }
            Self::StatusLists => {
                "UPDATE status_lists SET mac_version = $1, mac = $2 WHERE list_id = $3 AND mac = $4"
            }
            Self::Credentials => {
                "UPDATE credentials SET mac_version = $1, mac = $2 \
                 WHERE list_id = $3 AND idx = $4 AND mac = $5"
            }
            Self::Transactions => {
                "UPDATE transactions SET mac_version = $1, mac = $2 WHERE transaction_id = $3 AND mac = $4"
            }
            Self::PairwiseTokens => {
                "UPDATE pairwise_tokens SET mac_version = $1, mac = $2 \
                 WHERE token = $3 AND partner = $4 AND subject_id = $5 AND mac = $6"
            }
            Self::MatchModels => {
                "UPDATE match_models SET mac_version = $1, mac = $2 WHERE domain = $3 AND mac = $4"
            }
        }
    }

    /// Rows MACed under exactly `$1`.
    fn count_at(self) -> &'static str {
        match self {
            Self::Subjects => "SELECT COUNT(*) FROM subjects WHERE mac_version = $1",
            Self::Devices => "SELECT COUNT(*) FROM devices WHERE mac_version = $1",
            Self::EnrollmentCodes => "SELECT COUNT(*) FROM enrollment_codes WHERE mac_version = $1",
            Self::ConsentChallenges => {
                "SELECT COUNT(*) FROM consent_challenges WHERE mac_version = $1"
            }
            Self::Consents => "SELECT COUNT(*) FROM consents WHERE mac_version = $1",
            Self::EntityLinks => "SELECT COUNT(*) FROM entity_links WHERE mac_version = $1",
            Self::SubjectRules => "SELECT COUNT(*) FROM subject_rules WHERE mac_version = $1",
            Self::StatusLists => "SELECT COUNT(*) FROM status_lists WHERE mac_version = $1",
            Self::Credentials => "SELECT COUNT(*) FROM credentials WHERE mac_version = $1",
            Self::Transactions => "SELECT COUNT(*) FROM transactions WHERE mac_version = $1",
            Self::PairwiseTokens => "SELECT COUNT(*) FROM pairwise_tokens WHERE mac_version = $1",
            Self::MatchModels => "SELECT COUNT(*) FROM match_models WHERE mac_version = $1",
        }
    }

    /// Rows MACed under a version below `$1`.
    fn count_below(self) -> &'static str {
        match self {
            Self::Subjects => "SELECT COUNT(*) FROM subjects WHERE mac_version < $1",
            Self::Devices => "SELECT COUNT(*) FROM devices WHERE mac_version < $1",
            Self::EnrollmentCodes => "SELECT COUNT(*) FROM enrollment_codes WHERE mac_version < $1",
            Self::ConsentChallenges => {
                "SELECT COUNT(*) FROM consent_challenges WHERE mac_version < $1"
            }
            Self::Consents => "SELECT COUNT(*) FROM consents WHERE mac_version < $1",
            Self::EntityLinks => "SELECT COUNT(*) FROM entity_links WHERE mac_version < $1",
            Self::SubjectRules => "SELECT COUNT(*) FROM subject_rules WHERE mac_version < $1",
            Self::StatusLists => "SELECT COUNT(*) FROM status_lists WHERE mac_version < $1",
            Self::Credentials => "SELECT COUNT(*) FROM credentials WHERE mac_version < $1",
            Self::Transactions => "SELECT COUNT(*) FROM transactions WHERE mac_version < $1",
            Self::PairwiseTokens => "SELECT COUNT(*) FROM pairwise_tokens WHERE mac_version < $1",
            Self::MatchModels => "SELECT COUNT(*) FROM match_models WHERE mac_version < $1",
        }
    }

    /// The row's MACed bytes, its stored MAC checked first, and its key.
    fn row(self, keys: &RowMac, r: &AnyRow) -> Result<(RowBytes, Vec<Pk>), StoreError> {
        let blob = |c: &str| -> Result<Pk, StoreError> { Ok(Pk::Blob(r.try_get(c)?)) };
        let text = |c: &str| -> Result<Pk, StoreError> { Ok(Pk::Text(r.try_get(c)?)) };
        let int = |c: &str| -> Result<Pk, StoreError> { Ok(Pk::Int(r.try_get(c)?)) };
        Ok(match self {
            Self::Subjects => {
                let subject = subject_col(r, "subject_id")?;
                let created_by: String = r.try_get("created_by")?;
                let bytes =
                    rowmac::subject_owner(&subject, &created_by, r.try_get("created_at_ms")?);
                check_row(keys, &bytes, r)?;
                (bytes, vec![blob("subject_id")?])
            }
            Self::Devices => {
                let d = super::consent::device(keys, r)?;
                (rowmac::device(&d), vec![text("device_id")?])
            }
            Self::EnrollmentCodes => {
                let hash: [u8; 32] = fixed(r, "code_hash")?;
                let code = EnrollmentCode {
                    subject: subject_col(r, "subject_id")?,
                    issued_to: r.try_get("issued_to")?,
                    expires_at_ms: r.try_get("expires_at_ms")?,
                    used: r.try_get::<Option<i64>, _>("used_at_ms")?.is_some(),
                };
                let bytes = rowmac::enrollment_code(&hash, &code);
                check_row(keys, &bytes, r)?;
                (bytes, vec![blob("code_hash")?])
            }
            Self::ConsentChallenges => {
                let challenge: [u8; 32] = fixed(r, "challenge")?;
                let c = Challenge {
                    partner: r.try_get("partner")?,
                    subject: subject_col(r, "subject_id")?,
                    expires_at_ms: r.try_get("expires_at_ms")?,
                    used: r.try_get::<Option<i64>, _>("used_at_ms")?.is_some(),
                };
                let bytes = rowmac::challenge(&challenge, &c);
                check_row(keys, &bytes, r)?;
                (bytes, vec![blob("challenge")?])
            }
            Self::Consents => {
                let c = super::consent::consent(keys, r)?;
                (rowmac::consent(&c), vec![blob("consent_id")?])
            }
            Self::EntityLinks => {
                let subject = subject_col(r, "subject_id")?;
                let (entity, at) = super::events::link_from_row(keys, &subject, r)?;
                (
                    rowmac::entity_link(&subject, &entity, at),
                    vec![blob("subject_id")?, text("entity")?],
                )
            }
            Self::SubjectRules => {
                let subject = subject_col(r, "subject_id")?;
                let rule = super::events::rule_from_row(keys, &subject, r)?;
                // The rule id is the row's key, derived from the rule.
                let _: Vec<String> = list_col(r, "fields")?;
                (
                    rowmac::rule(&subject, &rule),
                    vec![blob("subject_id")?, text("rule_id")?],
                )
            }
            Self::StatusLists => {
                let l = super::credentials::list_row(keys, r)?;
                (rowmac::status_list(&l), vec![int("list_id")?])
            }
            Self::Credentials => {
                let (e, ok) = super::credentials::entry_row(keys, r)?;
                if !ok {
                    return Err(StoreError::Forged("credential"));
                }
                (
                    rowmac::credential_entry(&e),
                    vec![int("list_id")?, int("idx")?],
                )
            }
            Self::Transactions => {
                let t = super::transactions::transaction(keys, r)?;
                (rowmac::transaction(&t), vec![blob("transaction_id")?])
            }
            Self::PairwiseTokens => {
                let partner: String = r.try_get("partner")?;
                let subject = subject_col(r, "subject_id")?;
                let token: String = r.try_get("token")?;
                let bytes = rowmac::pairwise_token(&partner, &subject, &token);
                check_row(keys, &bytes, r)?;
                // Partner and subject too: the new MAC is over the row as read.
                (
                    bytes,
                    vec![text("token")?, text("partner")?, blob("subject_id")?],
                )
            }
            Self::MatchModels => {
                let domain: String = r.try_get("domain")?;
                let model: Vec<u8> = r.try_get("model")?;
                let bytes = rowmac::match_model(&domain, r.try_get("estimated_at_ms")?, &model);
                check_row(keys, &bytes, r)?;
                (bytes, vec![text("domain")?])
            }
        })
    }
}

/// Where a re-MAC walk stands: the primary key of the last row read.
#[derive(Clone, PartialEq, Eq)]
pub struct MacCursor(Vec<Pk>);

/// One window of a re-MAC walk: the keys of a table's rows below the
/// target version among the next few in key order, read from the pool.
pub struct MacPage {
    table: MacTable,
    /// Keys of the rows below the target, in key order.
    below: Vec<Vec<Pk>>,
    /// Rows the window read, at any version, and the most it could.
    read: usize,
    window: usize,
    /// Where the next window starts: after the last row read (`None` when
    /// none was).
    pub next: Option<MacCursor>,
}

/// Keys a walk window reads (keys and versions only): the service's
/// [`Store::mac_rows_page`] argument.
pub const MAC_WALK_WINDOW: u32 = 1000;

impl MacPage {
    /// Whether the walk has read the table's last row.
    pub fn last(&self) -> bool {
        self.read < self.window
    }

    /// The window's rows below the target, `n` at a time: each chunk one
    /// batch transaction.
    pub fn chunks(&self, n: usize) -> impl Iterator<Item = MacKeys<'_>> {
        self.below.chunks(n.max(1)).map(|keys| MacKeys {
            table: self.table,
            keys,
        })
    }
}

/// Keys of one re-MAC batch (see [`MacPage::chunks`]).
#[derive(Clone, Copy)]
pub struct MacKeys<'a> {
    table: MacTable,
    keys: &'a [Vec<Pk>],
}

impl<'a> MacKeys<'a> {
    /// The table the keys are of.
    pub fn table(&self) -> MacTable {
        self.table
    }

    /// The batch's `i`-th key alone (see [`RemacBatch::missed`]).
    pub fn one(&self, i: usize) -> Option<MacKeys<'a>> {
        Some(MacKeys {
            table: self.table,
            keys: self.keys.get(i..=i)?,
        })
    }
}

// Keys pair partners with subjects and name codes and challenges: a walk's
// types show only how many they hold, whatever logs them.
impl std::fmt::Debug for MacPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MacPage")
            .field("table", &self.table)
            .field("below", &self.below.len())
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for MacKeys<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MacKeys")
            .field("table", &self.table)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl std::fmt::Debug for MacCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacCursor(..)")
    }
}

/// How a re-MAC batch takes its rows on PostgreSQL (SQLite's one writer
/// orders everything already).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remac {
    /// Skips a row another transaction holds. A batch holds the rows it
    /// re-MACed while it takes the next ones, in its walk's key order;
    /// waiting there for a call that locks rows of the same table in
    /// another order (and then wants one of the batch's) would deadlock.
    /// A batch that never waits is never part of a cycle. What it
    /// skipped is still below the target afterwards, for [`Remac::Wait`].
    SkipHeld,
    /// Waits for the row's holder: only for a batch of one row, which
    /// then holds nothing else while it waits.
    Wait,
}

/// What one re-MAC batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemacBatch {
    /// Rows read.
    pub seen: u64,
    /// Rows re-MACed under the current version.
    pub moved: u64,
    /// Rows whose MAC did not verify (left as they are).
    pub forged: u64,
    /// The positions in the batch of the keys not read: gone or moved
    /// meanwhile, or (with [`Remac::SkipHeld`]) held by another
    /// transaction, to be taken again with [`Remac::Wait`] ([`MacKeys::one`]).
    pub missed: Vec<usize>,
}

/// One cross-reference link as stored.
#[derive(Debug, Clone)]
pub struct LinkRow {
    /// Its blind index (the primary key).
    pub blind_index: [u8; 32],
    /// The version of its index and seal keys.
    pub key_version: u32,
    /// Identifier type.
    pub id_type: String,
    /// Owning partner.
    pub owner: String,
    /// Entity token.
    pub token: String,
    /// The sealed identifier.
    pub sealed: Vec<u8>,
}

/// One audit leaf's MAC as stored.
#[derive(Debug, Clone)]
pub struct LeafMacRow {
    /// Its row id.
    pub id: i64,
    /// The leaf bytes.
    pub leaf: Vec<u8>,
    /// MAC key version.
    pub key_version: u32,
    /// The row's nonce (`None` on rows from before migration 0035).
    pub nonce: Option<[u8; idvault_core::tlog::leaf::ROW_NONCE_LEN]>,
    /// The MAC.
    pub mac: Vec<u8>,
}

fn version_col(r: &AnyRow, col: &'static str) -> Result<u32, StoreError> {
    u32::try_from(r.try_get::<i64, _>(col)?).map_err(|_| StoreError::Corrupt(col))
}

impl Store {
    /// Up to `limit` subjects after `after` (by id) whose data key is
    /// wrapped under a version below `target`.
    pub async fn subjects_below(
        &self,
        after: Option<&SubjectId>,
        target: u32,
        limit: u32,
    ) -> Result<Vec<SubjectId>, StoreError> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT subject_id FROM subjects WHERE subject_id > $1 AND kek_version < $2 \
             ORDER BY subject_id LIMIT $3",
        )
        .bind(after.map_or_else(Vec::new, |s| s.as_bytes().to_vec()))
        .bind(i64::from(target))
        .bind(u64_to_i64(u64::from(limit))?)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|b| SubjectId::from_slice(b).ok_or(StoreError::Corrupt("subjects.subject_id")))
            .collect()
    }

    /// Up to `limit` cross-reference links after `after` (by blind index)
    /// under a version below `target`.
    pub async fn links_below(
        &self,
        after: Option<&[u8; 32]>,
        target: u32,
        limit: u32,
    ) -> Result<Vec<LinkRow>, StoreError> {
        let rows = sqlx::query(
            // A version out of range (a writer's edit) is never selected:
            // left as it is, and `keys retire` counts it.
            "SELECT blind_index, key_version, id_type, owner, token, sealed FROM xref_links \
             WHERE blind_index > $1 AND key_version < $2 AND key_version >= 0 \
             ORDER BY blind_index LIMIT $3",
        )
        .bind(after.map_or_else(Vec::new, |b| b.to_vec()))
        .bind(i64::from(target))
        .bind(u64_to_i64(u64::from(limit))?)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LinkRow {
                    blind_index: fixed(r, "blind_index")?,
                    key_version: version_col(r, "key_version")?,
                    id_type: r.try_get("id_type")?,
                    owner: r.try_get("owner")?,
                    token: r.try_get("token")?,
                    sealed: r.try_get("sealed")?,
                })
            })
            .collect()
    }

    /// Up to `limit` audit leaves after row `after` MACed under a version
    /// below `target`.
    pub async fn leaf_macs_below(
        &self,
        after: i64,
        target: u32,
        limit: u32,
    ) -> Result<Vec<LeafMacRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, leaf, key_version, nonce, mac FROM audit_log WHERE id > $1 AND key_version < $2 \
             AND key_version >= 0 ORDER BY id LIMIT $3",
        )
        .bind(after)
        .bind(i64::from(target))
        .bind(u64_to_i64(u64::from(limit))?)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LeafMacRow {
                    id: r.try_get("id")?,
                    leaf: r.try_get("leaf")?,
                    key_version: version_col(r, "key_version")?,
                    nonce: rows::opt_fixed(r, "nonce")?,
                    mac: r.try_get("mac")?,
                })
            })
            .collect()
    }

    /// The key version floor (migration 0013): no audit leaf, and so no
    /// write, below it.
    pub async fn key_floor(&self) -> Result<u32, StoreError> {
        let v: i64 = sqlx::query_scalar("SELECT version FROM key_floor WHERE id = 1")
            .fetch_one(self.pool())
            .await?;
        u32::try_from(v).map_err(|_| StoreError::Corrupt("key_floor.version"))
    }

    /// Refreshes the planner's statistics of the tables a rewrap walks
    /// (PostgreSQL; SQLite plans by its indexes without them). Without
    /// them, as after a bulk load with autovacuum off or behind, the
    /// batch's delete of its subjects' match rows (then by `subject_id IN
    /// (…)`, now by storage key) was planned as a sequential scan of
    /// every match row: measured at 1,000,000 subjects,
    /// about 100 subjects/s before and 1,000/s after.
    pub async fn analyze_for_rewrap(&self) -> Result<(), StoreError> {
        if self.backend == super::Backend::Postgres {
            sqlx::query("ANALYZE subjects, packets, match_index, match_subjects, xref_links")
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Raises the key version floor to `version` (never lowers it). On
    /// PostgreSQL it takes the floor's advisory lock exclusively (every
    /// leaf insert takes it shared, migration 0014), so it returns only
    /// once no transaction that checked the old floor can still commit.
    pub async fn raise_key_floor(&self, version: u32) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        if self.backend() == super::Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(7418210)")
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE key_floor SET version = $1 WHERE id = 1 AND version < $1")
            .bind(i64::from(version))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// 1 if the newest audit leaf was written after `since_ms` under a
    /// MAC key version below `target` (a vault process that does not hold
    /// `target` yet is writing), else 0.
    pub async fn recent_leaves_below(&self, target: u32, since_ms: i64) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT key_version, time_ms FROM audit_log ORDER BY id DESC LIMIT 1) t \
             WHERE t.key_version < $1 AND t.time_ms > $2",
        )
        .bind(i64::from(target))
        .bind(since_ms)
        .fetch_one(self.pool())
        .await?;
        Ok(n.unsigned_abs())
    }

    async fn scalar(&self, sql: &'static str, v: u32) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(sql)
            .bind(i64::from(v))
            .fetch_one(self.pool())
            .await?;
        Ok(n.unsigned_abs())
    }

    /// What still names root key version `version`, as `(what, count)`
    /// pairs with a non-zero count. `now_s` dates credentials (a list's
    /// permutation key and the issuer key are needed until the last
    /// credential placed in it expires).
    pub async fn version_references(
        &self,
        version: u32,
        now_s: i64,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        let mut add = |what: &str, n: u64| {
            if n > 0 {
                out.push((what.to_owned(), n));
            }
        };
        // A subject's match signature may mix versions from its kek
        // version up to the current one, so every subject wrapped at or
        // below `version` may still hold an index under it.
        add(
            "subjects (data keys or match signatures)",
            self.scalar(
                "SELECT COUNT(*) FROM subjects WHERE kek_version <= $1",
                version,
            )
            .await?,
        );
        add(
            "match index rows",
            self.scalar(
                "SELECT COUNT(*) FROM match_index WHERE key_version = $1",
                version,
            )
            .await?,
        );
        // Rewritten with the subject's indexes when it is rewrapped (so
        // never the last reference to a version), counted in case one is
        // left: a signature whose key is retired could never be answered.
        add(
            "match signatures (row MACs)",
            self.scalar(
                "SELECT COUNT(*) FROM match_subjects WHERE mac_version = $1",
                version,
            )
            .await?,
        );
        add(
            "cross-reference links",
            self.scalar(
                "SELECT COUNT(*) FROM xref_links WHERE key_version = $1",
                version,
            )
            .await?,
        );
        for t in MacTable::ALL {
            add(
                &format!("{} rows (row MACs)", t.name()),
                self.scalar(t.count_at(), version).await?,
            );
        }
        add(
            "audit leaves (MACs)",
            self.scalar(
                "SELECT COUNT(*) FROM audit_log WHERE key_version = $1",
                version,
            )
            .await?,
        );
        let live: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM credentials c JOIN status_lists l ON c.list_id = l.list_id \
             WHERE l.key_version = $1 AND c.expires_at > $2 AND c.revoked_at_ms IS NULL",
        )
        .bind(i64::from(version))
        .bind(now_s)
        .fetch_one(self.pool())
        .await?;
        add(
            "unexpired credentials (issuer key and status list permutation)",
            live.unsigned_abs(),
        );
        Ok(out)
    }

    /// Rows of `table` MACed below `target`.
    pub async fn mac_rows_below(&self, table: MacTable, target: u32) -> Result<u64, StoreError> {
        self.scalar(table.count_below(), target).await
    }

    /// The next `window` rows of `table`'s walk after `after` (from the
    /// start when `None`): the keys of those MACed below `target`.
    ///
    /// Read from the pool, a bounded statement: the writer is held only
    /// for each batch's point reads and updates.
    pub async fn mac_rows_page(
        &self,
        table: MacTable,
        target: u32,
        window: u32,
        after: Option<&MacCursor>,
    ) -> Result<MacPage, StoreError> {
        let sql = table.window(after.is_some());
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for k in after.map_or(&[][..], |c| &c.0) {
            q = bind_pk(q, k.clone());
        }
        let rows = q
            .bind(i64::from(window.max(1)))
            .fetch_all(self.pool())
            .await?;
        let mut below = Vec::new();
        for r in &rows {
            // Unsealed rows (no version yet) are sealed at start, not here.
            if let Some(v) = r.try_get::<Option<i64>, _>("mac_version")?
                && v < i64::from(target)
            {
                below.push(table.key_of(r)?);
            }
        }
        let next = match rows.last() {
            Some(last) => Some(MacCursor(table.key_of(last)?)),
            None => None,
        };
        Ok(MacPage {
            table,
            below,
            read: rows.len(),
            window: usize::try_from(window.max(1)).unwrap_or(usize::MAX),
            next,
        })
    }

    /// Work left for a rewrap to `target`: `(what, rows)`.
    pub async fn rewrap_backlog(&self, target: u32) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = vec![
            (
                "subjects".to_owned(),
                self.scalar(
                    "SELECT COUNT(*) FROM subjects WHERE kek_version < $1",
                    target,
                )
                .await?,
            ),
            (
                "cross-reference links".to_owned(),
                self.scalar(
                    "SELECT COUNT(*) FROM xref_links WHERE key_version < $1",
                    target,
                )
                .await?,
            ),
        ];
        let mut macs = 0;
        for t in MacTable::ALL {
            macs += self.scalar(t.count_below(), target).await?;
        }
        out.push(("row MACs".to_owned(), macs));
        out.push((
            "audit leaf MACs".to_owned(),
            self.scalar(
                "SELECT COUNT(*) FROM audit_log WHERE key_version < $1",
                target,
            )
            .await?,
        ));
        Ok(out)
    }
}

/// A subject row of a rewrap batch with its packets (`(field, bytes)`,
/// in sequence order).
pub(crate) type SubjectWithPackets = (SubjectRecord, Vec<(String, Vec<u8>)>);

/// What [`AuditedTx::subjects_for_rewrap`] read of a page of subject ids.
#[derive(Debug)]
pub struct RewrapBatch {
    /// The subjects to rewrap, with their packets.
    pub(crate) found: Vec<SubjectWithPackets>,
    /// Rows left as they are: they do not decode or verify, or hold more
    /// packets than a chain can ([`packet::MAX_CHAIN_PACKETS`]).
    pub damaged: u64,
    /// The last id of the page this batch covers; the next page starts
    /// after it. Below the page's last id when the packets read reached
    /// the byte budget: the subjects after it are read by the next batch.
    pub through: SubjectId,
}

impl RewrapBatch {
    /// The ids of the subjects to rewrap, in order.
    pub fn found_ids(&self) -> Vec<SubjectId> {
        self.found.iter().map(|(s, _)| s.id).collect()
    }
}

impl AuditedTx {
    /// Loads the subjects of `ids` (ascending) still wrapped below
    /// `target`, with their packets, in three statements whatever the
    /// batch size (one round trip per subject made PostgreSQL rewraps
    /// round-trip bound). On PostgreSQL the subject rows stay locked until
    /// the transaction ends: a concurrent update of one of them waits for
    /// the batch, or the batch reads the update.
    ///
    /// The packets are held in memory, so a batch takes subjects only up
    /// to `budget` bytes of packets (a chain holds up to 10,000 packets of
    /// up to 4 KiB values: a page of full chains would be gigabytes) and
    /// covers the subjects before the first it did not take
    /// ([`RewrapBatch::through`]); see `rewrap_sizes`.
    pub async fn subjects_for_rewrap(
        &mut self,
        ids: &[SubjectId],
        target: u32,
        budget: usize,
    ) -> Result<Option<RewrapBatch>, StoreError> {
        let Some(last) = ids.last().copied() else {
            return Ok(None);
        };
        // As `locked!`: excludes other writers of these subjects, not a
        // match's token insert.
        let lock = match self.store.backend {
            super::Backend::Postgres => " FOR NO KEY UPDATE",
            super::Backend::Sqlite => "",
        };
        let sql = format!(
            "SELECT {}, COALESCE(subject_key, subject_id) AS subject_key FROM subjects \
             WHERE kek_version < $1 AND subject_id IN ({}) ORDER BY subject_id{lock}",
            subject_columns!(),
            placeholders(2, ids.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(i64::from(target));
        for id in ids {
            q = q.bind(id.as_bytes().to_vec());
        }
        let rows: Vec<AnyRow> = q.fetch_all(self.conn().await?).await?;
        let keys = self.store.row_mac.clone();
        let mut subjects = Vec::with_capacity(rows.len());
        // A row that does not decode or verify (a column a database writer
        // set out of range, an owner MAC that fails) is left as it is and
        // counted: it must not stop the rewrap of every subject after it.
        // Its id (when it has one) places it before or after a cut.
        let mut damaged: Vec<Option<SubjectId>> = Vec::new();
        for r in &rows {
            let record = match rows::subject_record(r, keys.as_deref()) {
                Ok(record) => record,
                Err(StoreError::Corrupt(_) | StoreError::Forged(_)) => {
                    damaged.push(subject_col(r, "subject_id").ok());
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Ok(key) = fixed(r, "subject_key") else {
                damaged.push(Some(record.id));
                continue;
            };
            // Kept for their match rows, written again by the caller.
            self.keep_subject_key(record.id, key);
            subjects.push(record);
        }
        let (taken, cut) = self.rewrap_sizes(&subjects, budget, &mut damaged).await?;
        let mut packets: HashMap<SubjectId, Vec<(String, Vec<u8>)>> = HashMap::new();
        if !taken.is_empty() {
            let sql = format!(
                "SELECT s.subject_id, p.seq, p.field_name, p.packet FROM subjects s \
                 JOIN packets p ON p.subject_key = COALESCE(s.subject_key, s.subject_id) \
                 AND p.subject_id = s.subject_id WHERE s.subject_id IN ({}) \
                 AND LENGTH(p.packet) <= {} ORDER BY s.subject_id, p.seq",
                placeholders(1, taken.len()),
                packet::MAX_PACKET_LEN
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in &taken {
                q = q.bind(id.as_bytes().to_vec());
            }
            // In sequence order (the statement's), with the field each row
            // is stored under: the caller checks they link up to the head.
            for r in q.fetch_all(self.conn().await?).await? {
                packets
                    .entry(subject_col(&r, "subject_id")?)
                    .or_default()
                    .push((r.try_get("field_name")?, r.try_get("packet")?));
            }
        }
        let before_cut = |id: &SubjectId| cut.is_none_or(|c| *id < c);
        let found = subjects
            .into_iter()
            .filter(|s| taken.contains(&s.id))
            .map(|s| {
                let p = packets.remove(&s.id).unwrap_or_default();
                (s, p)
            })
            .collect();
        let damaged = damaged
            .iter()
            .filter(|d| d.as_ref().is_none_or(before_cut))
            .count() as u64;
        let through = match cut {
            Some(c) => ids
                .iter()
                .copied()
                .filter(|id| *id < c)
                .max()
                .unwrap_or(last),
            None => last,
        };
        Ok(Some(RewrapBatch {
            found,
            damaged,
            through,
        }))
    }

    /// Which of `subjects` (ascending) a rewrap batch takes: their packet
    /// counts and sizes are read first, so that only the taken subjects'
    /// packets are ever fetched. Subjects are taken in order until the
    /// next would bring the packets held past `budget` (the first is always
    /// taken); that one is the cut, and it and those after it are left to
    /// the next batch. A subject before the cut with more packets than a
    /// chain holds, or a packet longer than the vault writes, is counted
    /// in `damaged` and not taken: those rows are not the vault's.
    async fn rewrap_sizes(
        &mut self,
        subjects: &[SubjectRecord],
        budget: usize,
        damaged: &mut Vec<Option<SubjectId>>,
    ) -> Result<(Vec<SubjectId>, Option<SubjectId>), StoreError> {
        if subjects.is_empty() {
            return Ok((Vec::new(), None));
        }
        let sql = format!(
            "SELECT s.subject_id, COUNT(*) AS n, CAST(SUM(LENGTH(p.packet)) AS BIGINT) AS bytes, \
             CAST(MAX(LENGTH(p.packet)) AS BIGINT) AS longest FROM subjects s \
             JOIN packets p ON p.subject_key = COALESCE(s.subject_key, s.subject_id) \
             AND p.subject_id = s.subject_id WHERE s.subject_id IN ({}) GROUP BY s.subject_id",
            placeholders(1, subjects.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for s in subjects {
            q = q.bind(s.id.as_bytes().to_vec());
        }
        let mut sizes = HashMap::new();
        for r in q.fetch_all(self.conn().await?).await? {
            let int = |col: &'static str| -> Result<u64, StoreError> {
                u64::try_from(r.try_get::<i64, _>(col)?).map_err(|_| StoreError::Corrupt(col))
            };
            sizes.insert(
                subject_col(&r, "subject_id")?,
                (int("n")?, int("bytes")?, int("longest")?),
            );
        }
        let max_len = u64::try_from(packet::MAX_PACKET_LEN).unwrap_or(u64::MAX);
        let budget = u64::try_from(budget).unwrap_or(u64::MAX);
        let (mut taken, mut held) = (Vec::new(), 0u64);
        for s in subjects {
            // A subject without packets is taken: the caller finds it
            // does not link up to its head and counts it.
            let (n, bytes, longest) = sizes.get(&s.id).copied().unwrap_or_default();
            if n > packet::MAX_CHAIN_PACKETS || longest > max_len {
                damaged.push(Some(s.id));
                continue;
            }
            if !taken.is_empty() && held.saturating_add(bytes) > budget {
                return Ok((taken, Some(s.id)));
            }
            held = held.saturating_add(bytes);
            taken.push(s.id);
        }
        Ok((taken, None))
    }

    /// Replaces the wrapped data keys of `moves` `(subject, old version,
    /// new key)`, each only if still wrapped under its old version, in one
    /// statement; returns the subjects that moved.
    pub async fn rewrap_subject_keys(
        &mut self,
        moves: &[(SubjectId, u32, WrappedDek)],
    ) -> Result<HashSet<SubjectId>, StoreError> {
        if moves.is_empty() {
            return Ok(HashSet::new());
        }
        // `VALUES` names its columns column1… on both backends; UPDATE …
        // FROM and RETURNING need SQLite 3.35 (sqlx bundles newer).
        let values = (0..moves.len())
            .map(|i| format!("({})", placeholders(i * 4 + 1, 4)))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "UPDATE subjects SET wrapped_dek = v.column3, kek_version = v.column4 \
             FROM (VALUES {values}) AS v \
             WHERE subjects.subject_id = v.column1 AND subjects.kek_version = v.column2 \
             RETURNING subject_id"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (id, old, new) in moves {
            q = q
                .bind(id.as_bytes().to_vec())
                .bind(i64::from(*old))
                .bind(new.bytes.clone())
                .bind(i64::from(new.kek_version));
        }
        q.fetch_all(self.conn().await?)
            .await?
            .iter()
            .map(|r| subject_col(r, "subject_id"))
            .collect()
    }

    /// Removes every blocking row of `ids` (subjects this transaction
    /// read by row), in every domain (their signatures are rewritten whole
    /// by the caller).
    pub async fn match_delete_subjects(&mut self, ids: &[SubjectId]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let keys = ids
            .iter()
            .map(|id| self.subject_key(id))
            .collect::<Result<Vec<_>, _>>()?;
        // By key (`match_index_key`), each row's id among the batch's
        // too: a row a database writer moved under one of these keys from
        // a subject outside the batch stays. A row of one batch subject
        // under another's key goes, and its subject's rows are written
        // again anyway.
        let sql = format!(
            "DELETE FROM match_index WHERE subject_key IN ({}) AND subject_id IN ({})",
            placeholders(1, ids.len()),
            placeholders(1 + ids.len(), ids.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for key in &keys {
            q = q.bind(key.to_vec());
        }
        for id in ids {
            q = q.bind(id.as_bytes().to_vec());
        }
        q.execute(self.conn().await?).await?;
        Ok(())
    }

    /// Moves a link to its new blind index and seal, if it is still under
    /// its old version, owner and type as read; returns whether it moved.
    /// It keeps the entity the link names *now*: an import may have merged
    /// it into another entity of its owner since the link was read (the
    /// caller holds the owner's import lock from before the move, not
    /// from before the read).
    pub async fn relink(
        &mut self,
        old: &LinkRow,
        new_index: &[u8; 32],
        new_version: u32,
        sealed: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let token: Option<String> = sqlx::query_scalar(
            "DELETE FROM xref_links WHERE blind_index = $1 AND key_version = $2 AND owner = $3 \
             AND id_type = $4 RETURNING token",
        )
        .bind(old.blind_index.to_vec())
        .bind(i64::from(old.key_version))
        .bind(old.owner.clone())
        .bind(old.id_type.clone())
        .fetch_optional(self.conn().await?)
        .await?;
        let Some(token) = token else {
            return Ok(false);
        };
        // A link under the new index can only exist if the same identifier
        // was linked again meanwhile; it is then the one that counts.
        sqlx::query(
            "INSERT INTO xref_links (blind_index, key_version, id_type, owner, token, sealed) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (blind_index) DO NOTHING",
        )
        .bind(new_index.to_vec())
        .bind(i64::from(new_version))
        .bind(old.id_type.clone())
        .bind(old.owner.clone())
        .bind(token)
        .bind(sealed)
        .execute(self.conn().await?)
        .await?;
        Ok(true)
    }

    /// Replaces a leaf's MAC if it is still the one read.
    pub async fn remac_leaf(
        &mut self,
        row: &LeafMacRow,
        version: u32,
        mac: &[u8; 32],
    ) -> Result<bool, StoreError> {
        // The new MAC covers the nonce read with the row: the update takes
        // effect only if neither changed since.
        let n = sqlx::query(
            "UPDATE audit_log SET key_version = $1, mac = $2 WHERE id = $3 AND mac = $4 \
             AND (nonce = $5 OR (nonce IS NULL AND $5 IS NULL))",
        )
        .bind(i64::from(version))
        .bind(mac.to_vec())
        .bind(row.id)
        .bind(row.mac.clone())
        .bind(row.nonce.map(|n| n.to_vec()))
        .execute(self.conn().await?)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Re-MACs the rows of `batch` still below `target` under the current
    /// row MAC key. Each is read again here, inside the transaction (on
    /// SQLite under the writer, so nothing changes it before its update),
    /// checked, and updated only if its MAC is still the one read. Rows
    /// that do not verify are left as they are and counted.
    pub async fn remac_rows(
        &mut self,
        batch: MacKeys<'_>,
        target: u32,
        how: Remac,
    ) -> Result<RemacBatch, StoreError> {
        let table = batch.table;
        debug_assert!(
            how == Remac::SkipHeld || batch.keys.len() <= 1,
            "a batch that waits for rows holds only one"
        );
        let keys = self.store.row_keys()?;
        let sql = table.row_below(self.store.backend, how);
        let mut rows = Vec::with_capacity(batch.keys.len());
        let mut missed = Vec::new();
        for (i, k) in batch.keys.iter().enumerate() {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            for v in k {
                q = bind_pk(q, v.clone());
            }
            // Gone or moved meanwhile, or held (when skipped).
            match q
                .bind(i64::from(target))
                .fetch_optional(self.conn().await?)
                .await?
            {
                Some(r) => rows.push(r),
                None => missed.push(i),
            }
        }
        let mut out = RemacBatch {
            missed,
            ..RemacBatch::default()
        };
        for r in &rows {
            out.seen += 1;
            // A row that does not verify or does not even parse (a
            // database writer's, or damage) is left as it is and counted:
            // one bad row must not stop the whole run.
            let (bytes, pk) = match table.row(&keys, r) {
                Ok(x) => x,
                Err(
                    StoreError::Forged(_)
                    | StoreError::Corrupt(_)
                    | StoreError::Database(sqlx::Error::ColumnDecode { .. }),
                ) => {
                    out.forged += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let old_mac: Vec<u8> = r
                .try_get::<Option<Vec<u8>>, _>("mac")?
                .ok_or(StoreError::Corrupt("mac"))?;
            let (v, mac) = seal_row(&keys, &bytes);
            let mut q = sqlx::query(table.update()).bind(v).bind(mac);
            for k in pk {
                q = bind_pk(q, k);
            }
            let n = q
                .bind(old_mac)
                .execute(self.conn().await?)
                .await?
                .rows_affected();
            out.moved += n;
        }
        Ok(out)
    }
}
