//! Records the vault keeps about a subject, as domain values. The store
//! maps its rows to these (every column checked first); this module holds
//! them and decides nothing.

use crate::keys::WrappedDek;
use crate::packet::ChainHead;
use crate::subject::SubjectId;

/// What the vault keeps about one subject besides its packets: who
/// created it, its wrapped data key and its chain head.
#[derive(Debug, Clone)]
pub struct SubjectRecord {
    /// The subject.
    pub id: SubjectId,
    /// Partner name that created it. It is the subject's owner only when
    /// [`Self::owner_verified`].
    pub created_by: String,
    /// Whether the row's MAC over its id, `created_by` and creation time
    /// verified when it was read (`idvault_core::rowmac::subject_owner`):
    /// a row a database writer edited, or one written before row MACs
    /// that no audit leaf vouches for, has no owner. Set by the store.
    pub owner_verified: bool,
    /// The wrapped DEK (deleting it is crypto-shredding).
    pub wrapped_dek: WrappedDek,
    /// Newest packet.
    pub head: ChainHead,
    /// Creation time.
    pub created_at_ms: i64,
    /// Last update time.
    pub updated_at_ms: i64,
}
