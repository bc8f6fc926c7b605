//! RFC 6962 Merkle tree hashing (as restated in RFC 9162 §2.1): tree heads, inclusion proofs and
//! consistency proofs, and their verification.
//!
//! Notation follows the RFCs: `D[n]` is the list of `n` leaf inputs, `MTH(D[n])` the tree head,
//! `PATH(m, D[n])` the audit path of leaf `m`, `PROOF(m, D[n])` the consistency proof between the
//! trees of sizes `m` and `n`. Hashes are SHA-256; a leaf is `SHA-256(0x00 ‖ d)` and an interior
//! node `SHA-256(0x01 ‖ left ‖ right)` (RFC 6962 §2.1), so a leaf can never pass for a node.
//!
//! The tree itself lives wherever the caller keeps it: proofs are computed from a
//! [`SubtreeHashes`] source that answers the hash of any complete, aligned subtree.

use ring::digest::{Context, SHA256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// `MTH({})`: the hash of the empty tree, SHA-256 of the empty string.
pub(crate) fn empty_root() -> Hash {
    digest(&[&[]])
}

/// `MTH({d}) = SHA-256(0x00 ‖ d)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    digest(&[&[0x00], data])
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub(crate) fn node_hash(left: &Hash, right: &Hash) -> Hash {
    digest(&[&[0x01], left, right])
}

fn digest(parts: &[&[u8]]) -> Hash {
    let mut context = Context::new(&SHA256);
    for part in parts {
        context.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

/// The largest power of two strictly smaller than `n` (`n >= 2`): the split point `k` of
/// RFC 6962 §2.1.
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// Where the hashes of complete subtrees come from: the subtree of height `level` (2^level
/// leaves) whose leaves are `index·2^level .. (index+1)·2^level`.
pub trait SubtreeHashes {
    type Error;
    fn subtree(&self, level: u8, index: u64) -> Result<Hash, Self::Error>;
}

/// `MTH(D[start:end])` for a range that RFC 6962's recursion produces: `start` is a multiple of
/// the largest power of two not above `end - start`, so the range splits into complete aligned
/// subtrees.
pub(crate) fn range_hash<S: SubtreeHashes>(
    source: &S,
    start: u64,
    end: u64,
) -> Result<Hash, S::Error> {
    let size = end - start;
    if size == 0 {
        return Ok(empty_root());
    }
    if size.is_power_of_two() && start.is_multiple_of(size) {
        let level = size.trailing_zeros() as u8;
        return source.subtree(level, start >> level);
    }
    let k = split(size);
    let left = range_hash(source, start, start + k)?;
    let right = range_hash(source, start + k, end)?;
    Ok(node_hash(&left, &right))
}

/// `MTH(D[n])`, the tree head of the first `size` leaves.
pub fn root<S: SubtreeHashes>(source: &S, size: u64) -> Result<Hash, S::Error> {
    range_hash(source, 0, size)
}

/// `PATH(m, D[n])` (RFC 6962 §2.1.1): the audit path of leaf `index` in the tree of `size`
/// leaves, leaf-side first. None when `index >= size`.
pub(crate) fn inclusion_proof<S: SubtreeHashes>(
    source: &S,
    index: u64,
    size: u64,
) -> Result<Option<Vec<Hash>>, S::Error> {
    if index >= size {
        return Ok(None);
    }
    let mut path = Vec::new();
    // Walk down from D[0:size], remembering the sibling of each step; the path lists them
    // bottom-up, so reverse at the end.
    let (mut start, mut end) = (0, size);
    while end - start > 1 {
        let k = split(end - start);
        if index < start + k {
            path.push(range_hash(source, start + k, end)?);
            end = start + k;
        } else {
            path.push(range_hash(source, start, start + k)?);
            start += k;
        }
    }
    path.reverse();
    Ok(Some(path))
}

/// `PROOF(m, D[n])` (RFC 6962 §2.1.2): proves that the tree of `old_size` leaves is a prefix of
/// the tree of `new_size` leaves. None when `old_size > new_size`; empty when either is 0 or
/// they are equal.
pub fn consistency_proof<S: SubtreeHashes>(
    source: &S,
    old_size: u64,
    new_size: u64,
) -> Result<Option<Vec<Hash>>, S::Error> {
    if old_size > new_size {
        return Ok(None);
    }
    if old_size == 0 || old_size == new_size {
        return Ok(Some(Vec::new()));
    }
    // SUBPROOF(m, D[start:end], complete), unrolled.
    let mut proof = Vec::new();
    let (mut start, mut end, mut m) = (0, new_size, old_size);
    let mut complete = true;
    loop {
        let n = end - start;
        if m == n {
            if !complete {
                proof.push(range_hash(source, start, end)?);
            }
            break;
        }
        let k = split(n);
        if m <= k {
            proof.push(range_hash(source, start + k, end)?);
            end = start + k;
        } else {
            proof.push(range_hash(source, start, start + k)?);
            start += k;
            m -= k;
            complete = false;
        }
    }
    proof.reverse();
    Ok(Some(proof))
}

/// Why a proof does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is outside a tree of {size} leaves")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("the proof has the wrong number of hashes for this index and size")]
    WrongLength,
    #[error("the proof does not lead to the expected root hash")]
    RootMismatch,
    #[error("the old tree is larger than the new one")]
    SizesReversed,
}

/// Checks an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf_hash;
    for p in proof {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    if &r != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Checks a consistency proof between two tree heads (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    proof: &[Hash],
    old_root: &Hash,
    new_root: &Hash,
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizesReversed);
    }
    if old_size == new_size {
        return match (proof.is_empty(), old_root == new_root) {
            (true, true) => Ok(()),
            (false, _) => Err(ProofError::WrongLength),
            (true, false) => Err(ProofError::RootMismatch),
        };
    }
    if old_size == 0 {
        // Every tree extends the empty one.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::WrongLength)
        };
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength);
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut fn_, mut sn) = (old_size - 1, new_size - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let mut fr = path[0];
    let mut sr = path[0];
    for c in &path[1..] {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    if &fr != old_root || &sr != new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// The right edge of a growing tree: the hashes of its complete subtrees, largest first, so a
/// leaf is appended and `MTH(D[n])` computed in O(log n) without the older leaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// `(level, hash)` of each complete subtree along the right edge, left to right.
    peaks: Vec<(u8, Hash)>,
}

impl Frontier {
    #[cfg(test)]
    /// A frontier for a tree whose first `size` leaves are summarised by `peaks` (as returned
    /// by [`Frontier::peaks`]).
    pub(crate) fn from_peaks(size: u64, peaks: Vec<(u8, Hash)>) -> Option<Self> {
        let covered: u64 = peaks.iter().map(|(level, _)| 1u64 << level).sum();
        (covered == size).then_some(Self { size, peaks })
    }

    /// The frontier of the first `size` leaves of `source`.
    pub fn of<S: SubtreeHashes>(source: &S, size: u64) -> Result<Self, S::Error> {
        let mut peaks = Vec::new();
        let mut start = 0;
        for level in (0..64u8).rev() {
            if size & (1 << level) != 0 {
                peaks.push((level, source.subtree(level, start >> level)?));
                start += 1 << level;
            }
        }
        Ok(Self { size, peaks })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    #[cfg(test)]
    pub(crate) fn peaks(&self) -> &[(u8, Hash)] {
        &self.peaks
    }

    /// Appends a leaf hash; returns the complete subtrees this append finished, smallest first,
    /// as `(level, index, hash)` (the leaf itself is level 0).
    pub fn push(&mut self, leaf: Hash) -> Vec<(u8, u64, Hash)> {
        let mut completed = vec![(0, self.size, leaf)];
        let mut level = 0u8;
        let mut hash = leaf;
        while let Some(&(top_level, top_hash)) = self.peaks.last() {
            if top_level != level {
                break;
            }
            self.peaks.pop();
            hash = node_hash(&top_hash, &hash);
            level += 1;
            completed.push((level, self.size >> level, hash));
        }
        self.peaks.push((level, hash));
        self.size += 1;
        completed
    }

    /// `MTH(D[n])` of the leaves pushed so far.
    pub fn root(&self) -> Hash {
        let mut iter = self.peaks.iter().rev();
        match iter.next() {
            None => empty_root(),
            Some(&(_, last)) => iter.fold(last, |acc, (_, hash)| node_hash(hash, &acc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory tree over leaf hashes.
    struct Leaves(Vec<Hash>);

    impl SubtreeHashes for Leaves {
        type Error = std::convert::Infallible;
        fn subtree(&self, level: u8, index: u64) -> Result<Hash, Self::Error> {
            let start = (index << level) as usize;
            let end = start + (1usize << level);
            Ok(naive_root(&self.0[start..end]))
        }
    }

    /// `MTH` straight from the definition (RFC 6962 §2.1).
    fn naive_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&naive_root(&leaves[..k]), &naive_root(&leaves[k..]))
            }
        }
    }

    fn h(hex: &str) -> Hash {
        crate::domain::digest::parse_hex(hex)
            .unwrap()
            .try_into()
            .unwrap()
    }

    // Test vectors: the reference tree of the Certificate Transparency project (RFC 6962's
    // authors), as published in google/certificate-transparency `merkle_tree_test.cc` and
    // transparency-dev/merkle `proof/verify_test.go` (Apache-2.0): eight leaf inputs, the tree
    // head of every size 1..=8, and inclusion and consistency proofs between them.
    const INPUTS: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    /// (1-based leaf, tree size, PATH) from the same sources.
    const INCLUSION: [(u64, u64, &[&str]); 4] = [
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
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            3,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            2,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    /// (old size, new size, PROOF).
    const CONSISTENCY: [(u64, u64, &[&str]); 4] = [
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

    fn reference() -> Leaves {
        Leaves(
            INPUTS
                .iter()
                .map(|input| {
                    leaf_hash(&crate::domain::digest::parse_hex(input).unwrap_or_default())
                })
                .collect(),
        )
    }

    #[test]
    fn tree_heads_match_the_reference_vectors() {
        let tree = reference();
        assert_eq!(empty_root(), h(EMPTY));
        assert_eq!(root(&tree, 0).unwrap(), h(EMPTY));
        let mut frontier = Frontier::default();
        assert_eq!(frontier.root(), h(EMPTY));
        for (size, expected) in (1..=8).zip(ROOTS) {
            assert_eq!(root(&tree, size).unwrap(), h(expected), "size {size}");
            frontier.push(tree.0[size as usize - 1]);
            assert_eq!(frontier.root(), h(expected), "frontier at size {size}");
            assert_eq!(Frontier::of(&tree, size).unwrap(), frontier);
        }
    }

    #[test]
    fn inclusion_proofs_match_the_reference_vectors_and_verify() {
        let tree = reference();
        for (leaf, size, expected) in INCLUSION {
            let proof = inclusion_proof(&tree, leaf - 1, size).unwrap().unwrap();
            let expected: Vec<Hash> = expected.iter().map(|x| h(x)).collect();
            assert_eq!(proof, expected, "leaf {leaf} of {size}");
            let root = h(ROOTS[size as usize - 1]);
            let leaf_hash = tree.0[leaf as usize - 1];
            verify_inclusion(&leaf_hash, leaf - 1, size, &proof, &root).unwrap();
            // Any corruption fails (the probes of transparency-dev's verifier tests).
            assert!(verify_inclusion(&leaf_hash, leaf, size, &proof, &root).is_err());
            assert!(verify_inclusion(&leaf_hash, leaf - 1, size * 2, &proof, &root).is_err());
            assert!(verify_inclusion(&h(EMPTY), leaf - 1, size, &proof, &root).is_err());
            assert!(verify_inclusion(&leaf_hash, leaf - 1, size, &proof, &h(EMPTY)).is_err());
            let mut longer = proof.clone();
            longer.push(root);
            assert!(verify_inclusion(&leaf_hash, leaf - 1, size, &longer, &root).is_err());
            if !proof.is_empty() {
                assert!(verify_inclusion(
                    &leaf_hash,
                    leaf - 1,
                    size,
                    &proof[..proof.len() - 1],
                    &root
                )
                .is_err());
                for i in 0..proof.len() {
                    let mut flipped = proof.clone();
                    flipped[i][0] ^= 8;
                    assert!(verify_inclusion(&leaf_hash, leaf - 1, size, &flipped, &root).is_err());
                }
            }
        }
    }

    #[test]
    fn consistency_proofs_match_the_reference_vectors_and_verify() {
        let tree = reference();
        for (old, new, expected) in CONSISTENCY {
            let proof = consistency_proof(&tree, old, new).unwrap().unwrap();
            let expected: Vec<Hash> = expected.iter().map(|x| h(x)).collect();
            assert_eq!(proof, expected, "{old} -> {new}");
            let (old_root, new_root) = (h(ROOTS[old as usize - 1]), h(ROOTS[new as usize - 1]));
            verify_consistency(old, new, &proof, &old_root, &new_root).unwrap();
            assert!(verify_consistency(old, new, &proof, &new_root, &old_root).is_err());
            assert!(verify_consistency(old + 1, new, &proof, &old_root, &new_root).is_err());
            assert!(verify_consistency(old, new, &[], &old_root, &new_root).is_err());
            for i in 0..proof.len() {
                let mut flipped = proof.clone();
                flipped[i][0] ^= 16;
                assert!(verify_consistency(old, new, &flipped, &old_root, &new_root).is_err());
            }
        }
    }

    #[test]
    fn every_proof_of_every_small_tree_round_trips() {
        let tree = Leaves((0..70u8).map(|i| leaf_hash(&[i, i ^ 0x5a])).collect());
        for size in 1..=70u64 {
            let root_hash = naive_root(&tree.0[..size as usize]);
            assert_eq!(root(&tree, size).unwrap(), root_hash);
            for index in 0..size {
                let proof = inclusion_proof(&tree, index, size).unwrap().unwrap();
                verify_inclusion(&tree.0[index as usize], index, size, &proof, &root_hash)
                    .unwrap_or_else(|e| panic!("leaf {index} of {size}: {e}"));
            }
            assert_eq!(inclusion_proof(&tree, size, size).unwrap(), None);
            for old in 0..=size {
                let proof = consistency_proof(&tree, old, size).unwrap().unwrap();
                let old_root = naive_root(&tree.0[..old as usize]);
                verify_consistency(old, size, &proof, &old_root, &root_hash)
                    .unwrap_or_else(|e| panic!("{old} -> {size}: {e}"));
            }
        }
    }

    #[test]
    fn frontier_reports_the_subtrees_each_append_completes() {
        let mut frontier = Frontier::default();
        let leaves: Vec<Hash> = (0..8u8).map(|i| leaf_hash(&[i])).collect();
        let mut completed = Vec::new();
        for leaf in &leaves {
            completed.extend(frontier.push(*leaf));
        }
        let tree = Leaves(leaves);
        // 8 leaves, 4 + 2 + 1 interior nodes.
        assert_eq!(completed.len(), 15);
        for (level, index, hash) in completed {
            assert_eq!(tree.subtree(level, index).unwrap(), hash);
        }
        let restored = Frontier::from_peaks(frontier.size(), frontier.peaks().to_vec()).unwrap();
        assert_eq!(restored.root(), frontier.root());
        assert!(Frontier::from_peaks(9, frontier.peaks().to_vec()).is_none());
    }
}
