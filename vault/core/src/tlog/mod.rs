//! The audit transparency log (pure part): RFC 9162 Merkle trees, C2SP
//! checkpoints in signed notes, and the canonical audit leaf.
//!
//! ```text
//! audited call ──AuditLeaf::encode──▶ leaf bytes ──leaf_hash──▶ tree leaf
//! perfect nodes (stored once) ──root / proofs──▶ Checkpoint { origin, size, root }
//! Checkpoint ──NoteSigner (Ed25519, key "idvault/v1/audit-signing")──▶ signed note
//! partner: open_checkpoint(note, pinned vkey) + verify_inclusion / verify_consistency
//! ```
//!
//! * [`merkle`]: leaf and node hashing, proof generation from stored
//!   perfect nodes, proof verification, and the sequencer's [`Appender`].
//! * [`checkpoint`]: the checkpoint body, signing and opening notes,
//!   verifier keys (interoperable with golang.org/x/mod/sumdb/note).
//! * [`leaf`]: the canonical bytes of an audit leaf.
//!
//! The formats are written down for partners in `docs/audit.md`. Nothing
//! here stores, sends or times anything; the server sequences leaves,
//! stores nodes and serves checkpoints and proofs.

pub mod checkpoint;
pub mod leaf;
pub mod merkle;

pub use checkpoint::{Checkpoint, NoteError, NoteSigner, NoteVerifier, open_checkpoint, open_note};
pub use leaf::{AuditLeaf, LeafError, MAX_LEAF_BYTES, request_id_hex};
pub use merkle::{
    Appender, Hash, NodeId, ProofError, TreeError, consistency_proof, empty_root, inclusion_proof,
    leaf_hash, node_hash, verify_consistency, verify_inclusion,
};
