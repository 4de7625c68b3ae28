//! RFC 9162 (section 2.1) Merkle tree hashing, proofs and verification.
//!
//! ```text
//! leaf hash  = SHA-256(0x00 ‖ leaf bytes)
//! node hash  = SHA-256(0x01 ‖ left ‖ right)
//! empty root = SHA-256("")
//! MTH(D[n])  = node_hash(MTH(D[0:k]), MTH(D[k:n]))   k = largest power of two < n
//! ```
//!
//! The store keeps only *perfect* nodes ([`NodeId`]: level `l`, index `i`
//! covers leaves `[i·2^l, (i+1)·2^l)`), written once when they complete
//! ([`Appender::push`]) and never changed. Every other hash a proof needs
//! (the root, and the "ephemeral" right-edge subtrees) is recomputed from
//! the perfect nodes that cover its range, so [`inclusion_nodes`] and
//! [`consistency_nodes`] tell a store exactly which rows to read, and
//! [`inclusion_proof`] / [`consistency_proof`] assemble the RFC 9162
//! `PATH` (2.1.3.1) and `PROOF` (2.1.4.1) from them.
//!
//! Verification ([`verify_inclusion`], [`verify_consistency`]) follows
//! RFC 9162 2.1.3.2 and 2.1.4.2 in the decomposed form of
//! transparency-dev/merkle: the expected proof length is computed from the
//! sizes first, so a hostile proof or size never indexes out of bounds,
//! and the computed roots are compared in constant time.
//!
//! Pure functions only; no function here panics, whatever the sizes
//! (up to `u64::MAX`) or proof contents.

use crate::crypto;

/// A SHA-256 tree hash.
pub type Hash = [u8; 32];

/// Hash of a leaf: `SHA-256(0x00 ‖ leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    crypto::sha256(&[&[0x00], leaf])
}

/// Hash of an interior node: `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    crypto::sha256(&[&[0x01], left, right])
}

/// Root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    crypto::sha256(&[])
}

/// A perfect subtree: leaves [index << level, (index + 1) << level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    /// Height above the leaves (0 = a leaf).
    pub level: u8,
    /// Position among the nodes of this level, from 0.
    pub index: u64,
}

/// Why a proof or root cannot be produced from stored nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError {
    /// The leaf index is not below the tree size.
    #[error("leaf index out of range for the tree size")]
    IndexOutOfRange,
    /// The sizes are not ordered (old tree larger than the new one) or the
    /// tree cannot grow further.
    #[error("tree sizes are out of order")]
    BadSizes,
    /// A perfect node the computation needs is not stored.
    #[error("tree node (level {}, index {}) is missing", .0.level, .0.index)]
    MissingNode(NodeId),
    /// The right-edge nodes given to resume a tree are not those of its size.
    #[error("edge nodes do not match the tree size")]
    EdgeMismatch,
}

/// Why a proof does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The proof has the wrong number of hashes for the sizes.
    #[error("proof has the wrong length")]
    WrongLength,
    /// The proof does not lead to the expected root.
    #[error("proof does not match the root")]
    RootMismatch,
    /// The index or sizes are impossible (index not below size, old > new).
    #[error("index or tree sizes are invalid")]
    BadSizes,
}

/// The perfect nodes covering `[start, start + len)`, largest first, where
/// `start` is a multiple of every power of two in `len`'s decomposition
/// (true of every range the RFC 9162 recursion visits). Empty if `len == 0`.
fn range_nodes(start: u64, len: u64, out: &mut Vec<NodeId>) {
    let mut pos = start;
    for level in (0..64u8).rev() {
        if (len >> level) & 1 == 1 {
            out.push(NodeId {
                level,
                index: pos >> level,
            });
            // Stays <= start + len, which fits in a u64.
            pos = pos.saturating_add(1u64 << level);
        }
    }
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split_point(n: u64) -> u64 {
    let bits = u64::BITS - n.saturating_sub(1).leading_zeros();
    1u64 << bits.saturating_sub(1)
}

/// A leaf range `(start, len)` whose RFC 9162 subtree hash is one proof entry.
type Range = (u64, u64);

/// RFC 9162 2.1.3.1 `PATH(index, D[0:size])` as leaf ranges, leaf to root.
fn inclusion_ranges(index: u64, size: u64) -> Result<Vec<Range>, TreeError> {
    if index >= size {
        return Err(TreeError::IndexOutOfRange);
    }
    let (mut start, mut n, mut m) = (0u64, size, index);
    let mut out = Vec::new();
    while n > 1 {
        let k = split_point(n);
        if m < k {
            out.push((start + k, n - k));
            n = k;
        } else {
            out.push((start, k));
            start += k;
            m -= k;
            n -= k;
        }
    }
    out.reverse();
    Ok(out)
}

/// RFC 9162 2.1.4.1 `PROOF(old, D[0:new])` as leaf ranges, in proof order.
fn consistency_ranges(old: u64, new: u64) -> Result<Vec<Range>, TreeError> {
    if old > new {
        return Err(TreeError::BadSizes);
    }
    if old == 0 || old == new {
        return Ok(Vec::new());
    }
    // SUBPROOF(m, D[start:start+n], b), unrolled; the ranges are collected
    // root-side first, so reversed at the end.
    let (mut start, mut n, mut m, mut complete) = (0u64, new, old, true);
    let mut out = Vec::new();
    loop {
        if m == n {
            if !complete {
                out.push((start, n));
            }
            break;
        }
        let k = split_point(n);
        if m <= k {
            out.push((start + k, n - k));
            n = k;
        } else {
            out.push((start, k));
            start += k;
            m -= k;
            n -= k;
            complete = false;
        }
    }
    out.reverse();
    Ok(out)
}

fn nodes_of(ranges: &[Range]) -> Vec<NodeId> {
    let mut out = Vec::new();
    for &(start, len) in ranges {
        range_nodes(start, len, &mut out);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The RFC 9162 hash of the aligned range `[start, start + len)`, `len > 0`.
fn range_hash(
    start: u64,
    len: u64,
    get: &dyn Fn(NodeId) -> Option<Hash>,
) -> Result<Hash, TreeError> {
    let mut ids = Vec::with_capacity(64);
    range_nodes(start, len, &mut ids);
    let mut acc: Option<Hash> = None;
    for id in ids.into_iter().rev() {
        let h = get(id).ok_or(TreeError::MissingNode(id))?;
        acc = Some(match acc {
            None => h,
            Some(right) => node_hash(&h, &right),
        });
    }
    acc.ok_or(TreeError::BadSizes)
}

/// Perfect nodes needed to compute the root of a tree of `size` (its right
/// edge: one per set bit of size, left to right).
pub fn root_nodes(size: u64) -> Vec<NodeId> {
    let mut out = Vec::new();
    range_nodes(0, size, &mut out);
    out
}

/// Perfect nodes needed by [`inclusion_proof`]`(index, size)`
/// (deduplicated, sorted).
pub fn inclusion_nodes(index: u64, size: u64) -> Result<Vec<NodeId>, TreeError> {
    Ok(nodes_of(&inclusion_ranges(index, size)?))
}

/// Perfect nodes needed by [`consistency_proof`]`(old, new)`
/// (deduplicated, sorted).
pub fn consistency_nodes(old: u64, new: u64) -> Result<Vec<NodeId>, TreeError> {
    Ok(nodes_of(&consistency_ranges(old, new)?))
}

/// The root of the tree of `size` leaves, from stored perfect nodes.
pub fn root(size: u64, get: &dyn Fn(NodeId) -> Option<Hash>) -> Result<Hash, TreeError> {
    if size == 0 {
        return Ok(empty_root());
    }
    range_hash(0, size, get)
}

/// The RFC 9162 (2.1.3.1) inclusion proof of leaf `index` in the tree of
/// `size`, leaf side first.
pub fn inclusion_proof(
    index: u64,
    size: u64,
    get: &dyn Fn(NodeId) -> Option<Hash>,
) -> Result<Vec<Hash>, TreeError> {
    inclusion_ranges(index, size)?
        .into_iter()
        .map(|(s, l)| range_hash(s, l, get))
        .collect()
}

/// The RFC 9162 (2.1.4.1) consistency proof from the tree of `old` leaves
/// to the tree of `new`; empty when `old == new` or `old == 0`.
pub fn consistency_proof(
    old: u64,
    new: u64,
    get: &dyn Fn(NodeId) -> Option<Hash>,
) -> Result<Vec<Hash>, TreeError> {
    consistency_ranges(old, new)?
        .into_iter()
        .map(|(s, l)| range_hash(s, l, get))
        .collect()
}

/// `(inner, border)`: how many proof hashes for leaf `index` of a tree of
/// `size` lie below the fork with the right edge, and how many above.
/// Needs `index < size`.
fn decompose(index: u64, size: u64) -> (usize, usize) {
    let inner = u64::BITS - (index ^ size.saturating_sub(1)).leading_zeros();
    let border = index.checked_shr(inner).unwrap_or(0).count_ones();
    (inner as usize, border as usize)
}

fn chain_inner(mut seed: Hash, proof: &[Hash], index: u64) -> Hash {
    for (i, h) in proof.iter().enumerate() {
        let right_child = index.checked_shr(i as u32).unwrap_or(0) & 1 == 1;
        seed = if right_child {
            node_hash(h, &seed)
        } else {
            node_hash(&seed, h)
        };
    }
    seed
}

fn chain_inner_right(mut seed: Hash, proof: &[Hash], index: u64) -> Hash {
    for (i, h) in proof.iter().enumerate() {
        if index.checked_shr(i as u32).unwrap_or(0) & 1 == 1 {
            seed = node_hash(h, &seed);
        }
    }
    seed
}

fn chain_border_right(mut seed: Hash, proof: &[Hash]) -> Hash {
    for h in proof {
        seed = node_hash(h, &seed);
    }
    seed
}

fn check_root(computed: &Hash, expected: &Hash) -> Result<(), ProofError> {
    if crypto::ct_eq(computed, expected) {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// Verifies an RFC 9162 (2.1.3.2) inclusion proof of the leaf with
/// `leaf_hash` at `index` in the tree of `size` with `root`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf_hash: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::BadSizes);
    }
    let (inner, border) = decompose(index, size);
    if Some(proof.len()) != inner.checked_add(border) {
        return Err(ProofError::WrongLength);
    }
    let (inner_proof, border_proof) = proof
        .split_at_checked(inner)
        .ok_or(ProofError::WrongLength)?;
    let computed = chain_border_right(chain_inner(*leaf_hash, inner_proof, index), border_proof);
    check_root(&computed, root)
}

/// Verifies an RFC 9162 (2.1.4.2) consistency proof between the tree of
/// `old` leaves with `old_root` and the tree of `new` leaves with
/// `new_root`.
///
/// `old == new` needs an empty proof and equal roots; `old == 0` needs an
/// empty proof and `old_root` equal to [`empty_root`] (the empty tree is a
/// prefix of every tree).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::BadSizes);
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return check_root(old_root, new_root);
    }
    if old == 0 {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return check_root(old_root, &empty_root());
    }
    // 0 < old < new.
    let (fork, border) = decompose(old - 1, new);
    let shift = old.trailing_zeros() as usize;
    // The fork lies strictly above the lowest set bit of `old`.
    let inner = fork.checked_sub(shift).ok_or(ProofError::BadSizes)?;
    let old_is_perfect = old.is_power_of_two();
    let skip = usize::from(!old_is_perfect);
    if Some(proof.len()) != skip.checked_add(inner).and_then(|n| n.checked_add(border)) {
        return Err(ProofError::WrongLength);
    }
    let (seed, rest) = if old_is_perfect {
        (*old_root, proof)
    } else {
        let (first, rest) = proof.split_first().ok_or(ProofError::WrongLength)?;
        (*first, rest)
    };
    let (inner_proof, border_proof) = rest
        .split_at_checked(inner)
        .ok_or(ProofError::WrongLength)?;
    let mask = (old - 1) >> shift;
    if !old_is_perfect {
        // The old root must be rebuilt from the same hashes.
        let computed_old =
            chain_border_right(chain_inner_right(seed, inner_proof, mask), border_proof);
        check_root(&computed_old, old_root)?;
    }
    let computed_new = chain_border_right(chain_inner(seed, inner_proof, mask), border_proof);
    check_root(&computed_new, new_root)
}

/// Incremental builder used by the sequencer: resume from a stored tree,
/// append leaf hashes, learn which perfect nodes became complete (to store)
/// and the new root.
#[derive(Debug, Clone, Default)]
pub struct Appender {
    size: u64,
    /// The right edge, largest (leftmost) subtree first.
    edge: Vec<(NodeId, Hash)>,
}

impl Appender {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resumes the tree of `size` leaves from its right-edge nodes (the
    /// [`root_nodes`]`(size)` with their hashes, in any order). Fails with
    /// [`TreeError::EdgeMismatch`] unless exactly those ids are given.
    pub fn resume(size: u64, edge: &[(NodeId, Hash)]) -> Result<Self, TreeError> {
        let ids = root_nodes(size);
        if edge.len() != ids.len() {
            return Err(TreeError::EdgeMismatch);
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let mut found = edge.iter().filter(|(e, _)| *e == id);
            let (Some(&(_, h)), None) = (found.next(), found.next()) else {
                return Err(TreeError::EdgeMismatch);
            };
            out.push((id, h));
        }
        Ok(Self { size, edge: out })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends one leaf hash; returns every perfect node completed by it,
    /// the leaf itself (level 0) first, then upward.
    ///
    /// A tree of `u64::MAX` leaves is full: the call returns an empty list
    /// and leaves the tree unchanged.
    pub fn push(&mut self, leaf_hash: Hash) -> Vec<(NodeId, Hash)> {
        let Some(new_size) = self.size.checked_add(1) else {
            return Vec::new();
        };
        let mut cur = (
            NodeId {
                level: 0,
                index: self.size,
            },
            leaf_hash,
        );
        let mut completed = vec![cur];
        while let Some(&(left, left_hash)) = self.edge.last() {
            if left.level != cur.0.level {
                break;
            }
            self.edge.pop();
            cur = (
                NodeId {
                    level: left.level.saturating_add(1),
                    index: left.index >> 1,
                },
                node_hash(&left_hash, &cur.1),
            );
            completed.push(cur);
        }
        self.edge.push(cur);
        self.size = new_size;
        completed
    }

    /// The current root ([`empty_root`] for the empty tree).
    pub fn root(&self) -> Hash {
        let mut it = self.edge.iter().rev();
        let Some(&(_, mut acc)) = it.next() else {
            return empty_root();
        };
        for (_, h) in it {
            acc = node_hash(h, &acc);
        }
        acc
    }

    /// The current right-edge nodes (== [`root_nodes`]`(size)` with hashes).
    pub fn edge(&self) -> Vec<(NodeId, Hash)> {
        self.edge.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    // The 8-leaf reference tree of certificate-transparency, as published in
    // github.com/transparency-dev/merkle `testonly/constants.go` (commit
    // 417fb0c3, LeafInputs / NodeHashes / RootHashes) and, for the proofs,
    // `proof/verify_test.go` at commit 022f84c (inclusionProofs,
    // consistencyProofs; their leaf numbers are 1-based there).
    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    const LEAF_HASHES: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ];
    /// (0-based leaf index, tree size, proof).
    const INCLUSION: [(u64, u64, &[&str]); 5] = [
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (0, 1, &[]),
    ];
    /// (old size, new size, proof).
    const CONSISTENCY: [(u64, u64, &[&str]); 5] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            6,
            7,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];

    fn h(s: &str) -> Hash {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).unwrap();
        out
    }

    fn hs(s: &[&str]) -> Vec<Hash> {
        s.iter().map(|x| h(x)).collect()
    }

    /// Builds a tree with an Appender; returns every stored node and the
    /// root after each size (index = size).
    fn build(leaf_hashes: &[Hash]) -> (HashMap<NodeId, Hash>, Vec<Hash>) {
        let mut a = Appender::new();
        let mut nodes = HashMap::new();
        let mut roots = vec![a.root()];
        for lh in leaf_hashes {
            nodes.extend(a.push(*lh));
            roots.push(a.root());
        }
        (nodes, roots)
    }

    fn reference() -> (HashMap<NodeId, Hash>, Vec<Hash>) {
        let leaves: Vec<Hash> = LEAVES
            .iter()
            .map(|l| leaf_hash(&hex::decode(l).unwrap()))
            .collect();
        build(&leaves)
    }

    #[test]
    fn tlog_reference_leaf_hashes_and_roots() {
        for (l, want) in LEAVES.iter().zip(LEAF_HASHES) {
            assert_eq!(leaf_hash(&hex::decode(l).unwrap()), h(want));
        }
        assert_eq!(empty_root(), h(ROOTS[0]));
        let (nodes, roots) = reference();
        for (size, want) in ROOTS.iter().enumerate() {
            assert_eq!(roots[size], h(want), "appender root of size {size}");
            let r = root(size as u64, &|id| nodes.get(&id).copied()).unwrap();
            assert_eq!(r, h(want), "stored-node root of size {size}");
        }
    }

    #[test]
    fn tlog_reference_inclusion_proofs() {
        let (nodes, roots) = reference();
        let get = |id| nodes.get(&id).copied();
        for (index, size, proof) in INCLUSION {
            let proof = hs(proof);
            assert_eq!(inclusion_proof(index, size, &get).unwrap(), proof);
            let lh = h(LEAF_HASHES[index as usize]);
            verify_inclusion(index, size, &lh, &proof, &roots[size as usize]).unwrap();
            // A neighbouring index with the same proof fails.
            let other = (index + 1) % size;
            if other != index {
                assert!(verify_inclusion(other, size, &lh, &proof, &roots[size as usize]).is_err());
            }
        }
    }

    #[test]
    fn tlog_reference_consistency_proofs() {
        let (nodes, roots) = reference();
        let get = |id| nodes.get(&id).copied();
        for (old, new, proof) in CONSISTENCY {
            let proof = hs(proof);
            assert_eq!(consistency_proof(old, new, &get).unwrap(), proof);
            verify_consistency(old, new, &roots[old as usize], &roots[new as usize], &proof)
                .unwrap();
            if !proof.is_empty() {
                assert_eq!(
                    verify_consistency(
                        old,
                        new,
                        &roots[new as usize],
                        &roots[new as usize],
                        &proof
                    ),
                    Err(ProofError::RootMismatch)
                );
            }
        }
    }

    /// Our own 3-leaf vector (leaves b"a", b"b", b"c"), published in
    /// docs/audit.md and reproduced independently with a Python RFC 9162
    /// implementation (hashlib only).
    #[test]
    fn tlog_own_three_leaf_vector() {
        let leaves = [leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c")];
        let want_leaves = [
            "022a6979e6dab7aa5ae4c3e5e45f7e977112a7e63593820dbec1ec738a24f93c",
            "57eb35615d47f34ec714cacdf5fd74608a5e8e102724e80b24b287c0c27b6a31",
            "597fcb31282d34654c200d3418fca5705c648ebf326ec73d8ddef11841f876d8",
        ];
        assert_eq!(leaves.to_vec(), hs(&want_leaves));
        let (nodes, roots) = build(&leaves);
        let get = |id| nodes.get(&id).copied();
        let r2 = h("b137985ff484fb600db93107c77b0365c80d78f5b429ded0fd97361d077999eb");
        let r3 = h("36642e73c2540ab121e3a6bf9545b0a24982cd830eb13d3cd19de3ce6c021ec1");
        assert_eq!(roots[2], r2);
        assert_eq!(roots[3], r3);
        let incl0 = hs(&[want_leaves[1], want_leaves[2]]);
        assert_eq!(inclusion_proof(0, 3, &get).unwrap(), incl0);
        verify_inclusion(0, 3, &leaves[0], &incl0, &r3).unwrap();
        let incl2 = vec![r2];
        assert_eq!(inclusion_proof(2, 3, &get).unwrap(), incl2);
        verify_inclusion(2, 3, &leaves[2], &incl2, &r3).unwrap();
        let cons13 = hs(&[want_leaves[1], want_leaves[2]]);
        assert_eq!(consistency_proof(1, 3, &get).unwrap(), cons13);
        verify_consistency(1, 3, &leaves[0], &r3, &cons13).unwrap();
        let cons23 = hs(&[want_leaves[2]]);
        assert_eq!(consistency_proof(2, 3, &get).unwrap(), cons23);
        verify_consistency(2, 3, &r2, &r3, &cons23).unwrap();
        assert_eq!(
            root_nodes(3),
            vec![NodeId { level: 1, index: 0 }, NodeId { level: 0, index: 2 }]
        );
    }

    #[test]
    fn tlog_edge_cases_from_reference_tests() {
        // From transparency-dev/merkle proof/verify_test.go TestVerifyInclusion
        // and TestVerifyConsistency: impossible sizes and non-empty proofs
        // where none is due.
        let some = h("abacaba000000000000000000000000000000000000000000060061e00123456");
        let empty = empty_root();
        for (i, s) in [(0, 0), (1, 0), (2, 1)] {
            assert_eq!(
                verify_inclusion(i, s, &some, &[], &empty),
                Err(ProofError::BadSizes)
            );
        }
        assert_eq!(
            verify_inclusion(0, 1, &some, &[], &empty),
            Err(ProofError::RootMismatch)
        );
        let (r1, r2) = ([1u8; 32], [2u8; 32]);
        assert!(verify_consistency(0, 0, &r1, &r2, &[]).is_err());
        assert!(verify_consistency(1, 1, &r1, &r2, &[]).is_err());
        assert!(verify_consistency(0, 0, &r1, &r1, &[]).is_ok());
        assert!(verify_consistency(1, 1, &r2, &r2, &[]).is_ok());
        assert!(verify_consistency(1, 0, &r1, &r2, &[]).is_err());
        assert!(verify_consistency(2, 1, &r1, &r2, &[]).is_err());
        assert!(verify_consistency(1, 2, &r1, &r2, &[]).is_err());
        assert!(verify_consistency(0, 0, &empty, &empty, &[empty]).is_err());
        assert!(verify_consistency(1, 1, &empty, &empty, &[empty]).is_err());
        // Our convention for the empty old tree.
        assert!(verify_consistency(0, 1, &empty, &r2, &[]).is_ok());
        assert!(verify_consistency(0, 1, &r1, &r2, &[]).is_err());
        assert!(verify_consistency(0, 1, &empty, &r2, &[empty]).is_err());
    }

    #[test]
    fn tlog_huge_sizes_do_not_panic() {
        let z = [0u8; 32];
        let proof = vec![z; 70];
        for (i, s) in [
            (0, u64::MAX),
            (u64::MAX - 1, u64::MAX),
            (1 << 63, u64::MAX),
            (u64::MAX, u64::MAX),
        ] {
            for n in [0, 1, 63, 64, 65, 70] {
                let _ = verify_inclusion(i, s, &z, &proof[..n], &z);
                let _ = verify_consistency(i, s, &z, &z, &proof[..n]);
                let _ = verify_consistency(s, i, &z, &z, &proof[..n]);
            }
            let _ = inclusion_nodes(i, s);
            let _ = consistency_nodes(i, s);
            let _ = consistency_nodes(1, s);
        }
        assert_eq!(root_nodes(u64::MAX).len(), 64);
        assert_eq!(inclusion_nodes(u64::MAX - 1, u64::MAX).unwrap().len(), 63);
        let filled: &dyn Fn(NodeId) -> Option<Hash> = &|_| Some(z);
        assert_eq!(inclusion_proof(0, u64::MAX, filled).unwrap().len(), 64);
        assert_eq!(
            consistency_proof(3, u64::MAX, filled).unwrap().len(),
            64 + 1
        );
        assert!(root(u64::MAX, filled).is_ok());
        assert_eq!(
            root(5, &|_| None),
            Err(TreeError::MissingNode(NodeId { level: 0, index: 4 }))
        );
        assert_eq!(inclusion_nodes(3, 3), Err(TreeError::IndexOutOfRange));
        assert_eq!(consistency_nodes(4, 3), Err(TreeError::BadSizes));
        // A full tree takes no more leaves.
        let edge: Vec<_> = root_nodes(u64::MAX).into_iter().map(|id| (id, z)).collect();
        let mut full = Appender::resume(u64::MAX, &edge).unwrap();
        assert!(full.push(z).is_empty());
        assert_eq!(full.size(), u64::MAX);
    }

    #[test]
    fn tlog_resume_checks_edge_ids() {
        let (_, _) = reference();
        let mut a = Appender::new();
        for i in 0..6u8 {
            a.push(leaf_hash(&[i]));
        }
        let mut edge = a.edge();
        assert_eq!(edge.iter().map(|e| e.0).collect::<Vec<_>>(), root_nodes(6));
        edge.reverse();
        assert_eq!(Appender::resume(6, &edge).unwrap().root(), a.root());
        assert_eq!(
            Appender::resume(7, &edge).unwrap_err(),
            TreeError::EdgeMismatch
        );
        let dup = vec![edge[0], edge[0]];
        assert_eq!(
            Appender::resume(6, &dup).unwrap_err(),
            TreeError::EdgeMismatch
        );
        assert_eq!(Appender::resume(0, &[]).unwrap().root(), empty_root());
    }

    #[test]
    fn tlog_push_reports_completed_nodes() {
        let mut a = Appender::new();
        for i in 0..3u8 {
            a.push(leaf_hash(&[i]));
        }
        let done = a.push(leaf_hash(&[3]));
        let ids: Vec<_> = done.iter().map(|d| (d.0.level, d.0.index)).collect();
        assert_eq!(ids, vec![(0, 3), (1, 1), (2, 0)]);
        assert_eq!(done[2].1, a.root());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn tlog_generated_proofs_verify(
            size in 1u64..400,
            split in 0u64..400,
            flip in 0usize..32,
        ) {
            let leaves: Vec<Hash> = (0..size).map(|i| leaf_hash(&i.to_be_bytes())).collect();
            let (nodes, roots) = build(&leaves);
            let get = |id| nodes.get(&id).copied();
            let new_root = roots[size as usize];

            // Resume from the edge at `split` and continue to the same roots.
            let split = split % (size + 1);
            let a = {
                let mut x = Appender::new();
                for lh in &leaves[..split as usize] { x.push(*lh); }
                x
            };
            let mut resumed = Appender::resume(split, &a.edge()).unwrap();
            for (i, lh) in leaves[split as usize..].iter().enumerate() {
                for (id, hash) in resumed.push(*lh) {
                    prop_assert_eq!(nodes.get(&id), Some(&hash));
                }
                prop_assert_eq!(resumed.root(), roots[split as usize + i + 1]);
            }
            prop_assert_eq!(resumed.edge(), {
                let mut x = Appender::new();
                for lh in &leaves { x.push(*lh); }
                x.edge()
            });

            // Every leaf index and every old size of this tree.
            for (index, old) in (0..size).zip(0..size).chain(std::iter::once((0, size))) {
                let proof = inclusion_proof(index, size, &get).unwrap();
                let needed = inclusion_nodes(index, size).unwrap();
                let only = |id| if needed.contains(&id) { nodes.get(&id).copied() } else { None };
                prop_assert_eq!(&inclusion_proof(index, size, &only).unwrap(), &proof);
                prop_assert!(verify_inclusion(index, size, &leaves[index as usize], &proof, &new_root).is_ok());
                if size > 1 {
                    let wrong = (index + 1) % size;
                    prop_assert!(verify_inclusion(wrong, size, &leaves[index as usize], &proof, &new_root).is_err());
                }
                if !proof.is_empty() {
                    let mut bad = proof.clone();
                    let k = flip % bad.len();
                    bad[k][flip % 32] ^= 1;
                    prop_assert!(verify_inclusion(index, size, &leaves[index as usize], &bad, &new_root).is_err());
                    prop_assert!(verify_inclusion(index, size, &leaves[index as usize], &proof[1..], &new_root).is_err());
                }
                let mut longer = proof.clone();
                longer.push([0; 32]);
                prop_assert!(verify_inclusion(index, size, &leaves[index as usize], &longer, &new_root).is_err());

                let cproof = consistency_proof(old, size, &get).unwrap();
                let needed = consistency_nodes(old, size).unwrap();
                let only = |id| if needed.contains(&id) { nodes.get(&id).copied() } else { None };
                prop_assert_eq!(&consistency_proof(old, size, &only).unwrap(), &cproof);
                let old_root = roots[old as usize];
                prop_assert!(verify_consistency(old, size, &old_root, &new_root, &cproof).is_ok());
                if !cproof.is_empty() {
                    let mut bad = cproof.clone();
                    let k = flip % bad.len();
                    bad[k][flip % 32] ^= 1;
                    prop_assert!(verify_consistency(old, size, &old_root, &new_root, &bad).is_err());
                    prop_assert!(verify_consistency(old, size, &old_root, &new_root, &cproof[1..]).is_err());
                }
                if old > 0 && old < size {
                    // The wrong old size, or a root of another size, fails.
                    prop_assert!(verify_consistency(old - 1, size, &old_root, &new_root, &cproof).is_err());
                    prop_assert!(verify_consistency(old, size, &roots[old as usize - 1], &new_root, &cproof).is_err());
                }
            }
        }
    }
}
