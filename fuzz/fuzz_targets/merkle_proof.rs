//! Audit proofs as a partner checks them (`verify_inclusion`,
//! `verify_consistency`; RFC 9162 2.1.3.2 and 2.1.4.2) on sizes, indexes
//! and hashes from the network: nothing may panic, whatever the sizes. And
//! a differential check: a tree of up to 300 leaves built from the input
//! with the sequencer's `Appender`, whose proofs (`inclusion_proof`,
//! `consistency_proof`, from the nodes it stored) must verify against its
//! roots, and must stop verifying once a hash is changed.
#![no_main]
use std::collections::HashMap;

use idvault_core::tlog::merkle::{
    self, Appender, Hash, NodeId, verify_consistency, verify_inclusion,
};
use libfuzzer_sys::fuzz_target;

fn u64_at(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    for (i, x) in data.iter().skip(at).take(8).enumerate() {
        b[i] = *x;
    }
    u64::from_le_bytes(b)
}

fn hash_at(data: &[u8], at: usize) -> Hash {
    let mut h = [0u8; 32];
    for (i, x) in data.iter().skip(at).take(32).enumerate() {
        h[i] = *x;
    }
    h
}

fuzz_target!(|data: &[u8]| {
    // Raw: whatever a proxy sends.
    let (a, b) = (u64_at(data, 0), u64_at(data, 8));
    let hashes: Vec<Hash> = (0..data.len().saturating_sub(16) / 32)
        .take(80)
        .map(|i| hash_at(data, 16 + 32 * i))
        .collect();
    let (x, y) = (hash_at(data, 16), hash_at(data, 48));
    let _ = verify_inclusion(a, b, &x, &hashes, &y);
    let _ = verify_consistency(a, b, &x, &y, &hashes);
    let _ = verify_inclusion(a % 1024, b % 1024, &x, &hashes, &y);
    let _ = verify_consistency(a % 1024, b % 1024, &x, &y, &hashes);

    // Differential: a real tree and its own proofs.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let size = 1 + u64::from(n) + u64::from(rest.first().copied().unwrap_or(0) & 0x2f);
    let mut tree = Appender::new();
    let mut nodes: HashMap<NodeId, Hash> = HashMap::new();
    let mut roots = vec![merkle::empty_root()];
    for i in 0..size {
        let leaf = [&i.to_le_bytes()[..], rest].concat();
        for (id, h) in tree.push(merkle::leaf_hash(&leaf)) {
            nodes.insert(id, h);
        }
        roots.push(tree.root());
    }
    let get = |id: NodeId| nodes.get(&id).copied();
    let index = a % size;
    let old = b % (size + 1);
    let leaf = [&index.to_le_bytes()[..], rest].concat();
    let leaf_hash = merkle::leaf_hash(&leaf);
    let root = roots[size as usize];
    let proof = merkle::inclusion_proof(index, size, &get).expect("a stored tree's proof");
    assert!(verify_inclusion(index, size, &leaf_hash, &proof, &root).is_ok());
    let old_root = roots[old as usize];
    let cons = merkle::consistency_proof(old, size, &get).expect("a stored tree's proof");
    assert!(verify_consistency(old, size, &old_root, &root, &cons).is_ok());
    // Any changed proof hash is refused.
    let flip = |p: &[Hash], at: usize| {
        let mut p = p.to_vec();
        let i = at % p.len();
        p[i][at % 32] ^= 1;
        p
    };
    let at = usize::from(rest.get(1).copied().unwrap_or(0));
    if !proof.is_empty() {
        assert!(verify_inclusion(index, size, &leaf_hash, &flip(&proof, at), &root).is_err());
    }
    if !cons.is_empty() {
        assert!(verify_consistency(old, size, &old_root, &root, &flip(&cons, at)).is_err());
    }
});
