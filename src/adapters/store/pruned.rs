//! Which sequence numbers have been pruned: a bitmap in chunks of 65,536 sequence numbers
//! (8 KiB each, persisted in the meta tree), so queries and counts skip pruned records without
//! a lookup, and pruning costs one bit per record in memory.

use std::collections::HashMap;

const WORDS: usize = 1024;
/// Sequence numbers per chunk.
pub(crate) const CHUNK: u64 = (WORDS * 64) as u64;

#[derive(Debug, Default)]
pub(crate) struct PrunedSet {
    chunks: HashMap<u64, Box<[u64; WORDS]>>,
    count: u64,
}

impl PrunedSet {
    pub fn contains(&self, sequence: u64) -> bool {
        self.chunks
            .get(&(sequence / CHUNK))
            .is_some_and(|words| bit(words, sequence))
    }

    /// Marks a sequence number; returns its chunk number.
    pub fn insert(&mut self, sequence: u64) -> u64 {
        let chunk = sequence / CHUNK;
        let words = self
            .chunks
            .entry(chunk)
            .or_insert_with(|| Box::new([0; WORDS]));
        let offset = (sequence % CHUNK) as usize;
        let mask = 1u64 << (offset % 64);
        if words[offset / 64] & mask == 0 {
            words[offset / 64] |= mask;
            self.count += 1;
        }
        chunk
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    /// Pruned sequence numbers in `lo..=hi`.
    pub(crate) fn count_in(&self, lo: u64, hi: u64) -> u64 {
        if lo > hi {
            return 0;
        }
        let mut total = 0;
        for (&chunk, words) in &self.chunks {
            let start = chunk * CHUNK;
            let end = start + CHUNK - 1;
            if end < lo || start > hi {
                continue;
            }
            if lo <= start && end <= hi {
                total += words.iter().map(|w| u64::from(w.count_ones())).sum::<u64>();
            } else {
                total += (lo.max(start)..=hi.min(end))
                    .filter(|s| bit(words, *s))
                    .count() as u64;
            }
        }
        total
    }

    /// The persisted form of a chunk.
    pub(crate) fn chunk_bytes(&self, chunk: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(WORDS * 8);
        if let Some(words) = self.chunks.get(&chunk) {
            for word in words.iter() {
                out.extend_from_slice(&word.to_le_bytes());
            }
        }
        out
    }

    /// Loads a persisted chunk.
    pub(crate) fn load_chunk(&mut self, chunk: u64, bytes: &[u8]) -> bool {
        if bytes.len() != WORDS * 8 {
            return false;
        }
        let mut words = Box::new([0u64; WORDS]);
        for (word, raw) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut array = [0u8; 8];
            array.copy_from_slice(raw);
            *word = u64::from_le_bytes(array);
        }
        let ones: u64 = words.iter().map(|w| u64::from(w.count_ones())).sum();
        if let Some(old) = self.chunks.insert(chunk, words) {
            self.count -= old.iter().map(|w| u64::from(w.count_ones())).sum::<u64>();
        }
        self.count += ones;
        true
    }
}

fn bit(words: &[u64; WORDS], sequence: u64) -> bool {
    let offset = (sequence % CHUNK) as usize;
    words[offset / 64] & (1 << (offset % 64)) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_round_trips() {
        let mut set = PrunedSet::default();
        for sequence in [1, 2, 64, CHUNK - 1, CHUNK, CHUNK * 3 + 5] {
            set.insert(sequence);
        }
        set.insert(2);
        assert_eq!(set.len(), 6);
        assert!(set.contains(CHUNK) && !set.contains(3));
        assert_eq!(set.count_in(2, CHUNK), 4);
        assert_eq!(set.count_in(0, u64::MAX / 2), 6);
        let mut copy = PrunedSet::default();
        for chunk in [0, 1, 3] {
            assert!(copy.load_chunk(chunk, &set.chunk_bytes(chunk)));
        }
        assert_eq!(copy.len(), 6);
        assert!(copy.contains(CHUNK * 3 + 5));
    }
}
