//! The audit log's Merkle tree on disk, as *tiles* (the layout of Go's `tlog` and the C2SP
//! `tlog-tiles` logs): tile `(L, k)` holds the hashes of the complete subtrees of height `8·L`
//! with indexes `256·k .. 256·k + 255`, concatenated. Tiles are written for the records the
//! runs cover (up to the index watermark); newer leaves are in memory. Any subtree hash is
//! then at most 255 hash computations away from stored or in-memory hashes, so proofs for a
//! tree of any size need a handful of reads.

use std::sync::Arc;

use super::error::StoreError;
use crate::domain::audit::merkle::{node_hash, Hash, SubtreeHashes};

/// Tree levels per tile level.
const TILE_HEIGHT: u32 = 8;
/// Hashes per full tile.
const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;
/// Enough tile levels for 2^64 leaves.
const MAX_TILE_LEVEL: u8 = 8;

fn tile_key(level: u8, index: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = level;
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The tree as a query sees it: tiles up to `watermark`, then the leaves after it.
pub(crate) struct TreeView<'a> {
    pub tiles: &'a sled::Tree,
    /// Leaves `0 .. watermark` are in the tiles.
    pub watermark: u64,
    /// Leaf hashes `watermark .. watermark + tail.len()`.
    pub tail: Vec<Hash>,
}

impl TreeView<'_> {
    #[cfg(test)]
    pub(crate) fn size(&self) -> u64 {
        self.watermark + self.tail.len() as u64
    }

    /// Hashes of the complete subtrees at tree level `8·level` with indexes `from .. to`.
    fn level_hashes(&self, level: u8, from: u64, to: u64) -> Result<Vec<Hash>, StoreError> {
        let mut out = Vec::with_capacity((to - from) as usize);
        let persisted = shifted(self.watermark, level);
        let stored_end = to.min(persisted);
        let mut index = from;
        while index < stored_end {
            let tile = index / TILE_WIDTH;
            let bytes = self
                .tiles
                .get(tile_key(level, tile))
                .map_err(|e| StoreError::Read(Arc::new(e)))?
                .ok_or_else(|| missing(level, tile))?;
            let end = stored_end.min((tile + 1) * TILE_WIDTH);
            for i in index..end {
                let at = ((i % TILE_WIDTH) * 32) as usize;
                let hash = bytes
                    .get(at..at + 32)
                    .and_then(|b| Hash::try_from(b).ok())
                    .ok_or_else(|| missing(level, tile))?;
                out.push(hash);
            }
            index = end;
        }
        for i in index.max(from)..to {
            if level == 0 {
                let at = (i - self.watermark) as usize;
                out.push(*self.tail.get(at).ok_or_else(|| missing(0, i))?);
            } else {
                let children =
                    self.level_hashes(level - 1, i * TILE_WIDTH, (i + 1) * TILE_WIDTH)?;
                out.push(fold(children, TILE_HEIGHT));
            }
        }
        Ok(out)
    }
}

impl SubtreeHashes for TreeView<'_> {
    type Error = StoreError;

    fn subtree(&self, level: u8, index: u64) -> Result<Hash, StoreError> {
        let tile_level = level / TILE_HEIGHT as u8;
        let rest = u32::from(level % TILE_HEIGHT as u8);
        let from = index << rest;
        let hashes = self.level_hashes(tile_level, from, from + (1 << rest))?;
        Ok(fold(hashes, rest))
    }
}

/// Hashes `levels` levels up: 2^levels hashes become one.
fn fold(mut hashes: Vec<Hash>, levels: u32) -> Hash {
    for _ in 0..levels {
        hashes = hashes
            .chunks(2)
            .map(|pair| match pair {
                [left, right] => node_hash(left, right),
                [single] => *single,
                _ => unreachable!("chunks(2) yields one or two"),
            })
            .collect();
    }
    hashes.first().copied().unwrap_or_default()
}

/// `count >> (8·level)`: how many complete subtrees at tile level `level` `count` leaves hold.
fn shifted(count: u64, level: u8) -> u64 {
    let shift = u32::from(level) * TILE_HEIGHT;
    if shift >= 64 {
        0
    } else {
        count >> shift
    }
}

/// Extends the tiles from `old_watermark` to `new_watermark` leaves, given the new leaves.
pub(crate) fn write_tiles(
    tiles: &sled::Tree,
    old_watermark: u64,
    new_watermark: u64,
    new_leaves: &[Hash],
) -> Result<(), StoreError> {
    debug_assert_eq!(new_leaves.len() as u64, new_watermark - old_watermark);
    for level in 0..MAX_TILE_LEVEL {
        let (lo, hi) = (shifted(old_watermark, level), shifted(new_watermark, level));
        if lo == hi {
            break;
        }
        let hashes = if level == 0 {
            new_leaves.to_vec()
        } else {
            // The level below is already extended to the new watermark.
            let below = TreeView {
                tiles,
                watermark: new_watermark,
                tail: Vec::new(),
            };
            (lo..hi)
                .map(|i| {
                    below
                        .level_hashes(level - 1, i * TILE_WIDTH, (i + 1) * TILE_WIDTH)
                        .map(|children| fold(children, TILE_HEIGHT))
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let mut index = lo;
        while index < hi {
            let tile = index / TILE_WIDTH;
            let end = hi.min((tile + 1) * TILE_WIDTH);
            let key = tile_key(level, tile);
            let mut bytes = tiles
                .get(key)
                .map_err(|e| StoreError::Read(Arc::new(e)))?
                .map(|b| b.to_vec())
                .unwrap_or_default();
            bytes.truncate(((index % TILE_WIDTH) * 32) as usize);
            for hash in &hashes[(index - lo) as usize..(end - lo) as usize] {
                bytes.extend_from_slice(hash);
            }
            tiles
                .insert(key, bytes)
                .map_err(|e| StoreError::Write(Arc::new(e)))?;
            index = end;
        }
    }
    Ok(())
}

/// The stored leaf hashes `from .. to` (all below the watermark), for verification.
pub(crate) fn stored_leaves(
    tiles: &sled::Tree,
    from: u64,
    to: u64,
) -> Result<Vec<Hash>, StoreError> {
    TreeView {
        tiles,
        watermark: to,
        tail: Vec::new(),
    }
    .level_hashes(0, from, to)
}

fn missing(level: u8, index: u64) -> StoreError {
    StoreError::Corrupt {
        key: format!("Merkle tile {level}/{index}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::audit::merkle::{self, leaf_hash};

    #[test]
    fn tiles_answer_every_subtree_like_the_leaves_do() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tiles = db.open_tree("tiles").unwrap();
        let leaves: Vec<Hash> = (0..70_000u32)
            .map(|i| leaf_hash(&i.to_be_bytes()))
            .collect();
        // Extend in uneven steps, as segments of different sizes would.
        let mut watermark = 0u64;
        for step in [1u64, 255, 300, 16_384, 40_000, 3_060] {
            let next = watermark + step;
            write_tiles(
                &tiles,
                watermark,
                next,
                &leaves[watermark as usize..next as usize],
            )
            .unwrap();
            watermark = next;
        }
        assert_eq!(watermark, 60_000);
        let view = TreeView {
            tiles: &tiles,
            watermark,
            tail: leaves[60_000..].to_vec(),
        };
        assert_eq!(view.size(), 70_000);
        struct Memory<'a>(&'a [Hash]);
        impl SubtreeHashes for Memory<'_> {
            type Error = std::convert::Infallible;
            fn subtree(&self, level: u8, index: u64) -> Result<Hash, Self::Error> {
                let start = (index << level) as usize;
                Ok(fold(
                    self.0[start..start + (1 << level)].to_vec(),
                    level.into(),
                ))
            }
        }
        let memory = Memory(&leaves);
        for size in [1u64, 255, 256, 257, 65_535, 65_536, 65_537, 69_999, 70_000] {
            assert_eq!(
                merkle::root(&view, size).unwrap(),
                merkle::root(&memory, size).unwrap(),
                "size {size}"
            );
        }
        let proof = merkle::inclusion_proof(&view, 61_000, 70_000)
            .unwrap()
            .unwrap();
        let root = merkle::root(&memory, 70_000).unwrap();
        merkle::verify_inclusion(&leaves[61_000], 61_000, 70_000, &proof, &root).unwrap();
        assert_eq!(stored_leaves(&tiles, 100, 356).unwrap(), leaves[100..356]);
    }
}
