//! Byte formats of the index: order-preserving keys and compact pages of entries.
//!
//! An index *run* covers a contiguous range of sequence numbers. For each index kind, its
//! entries `(value, sequence, summary)` are sorted by `(value, sequence)` and cut into pages of
//! about [`PAGE_TARGET_BYTES`]; one sled key per page:
//!
//! ```text
//! page key  = run (first sequence u64 ‖ tier u8) ‖ kind u8 ‖ escape(value) ‖ 0x00 0x00 ‖ sequence u64
//!             (the page's first entry; escape: 0x00 → 0x00 0xFF, so keys sort like (value, seq))
//! page      = count varint, then per entry:
//!             flags u8 (bit 0: issued, has validity; bit 1: same value as the previous entry)
//!             [shared prefix len varint, suffix len varint, suffix]   unless same value
//!             sequence: delta varint (same value) or varint
//!             [NotBefore zigzag varint, lifetime varint]              if issued
//! ```

use crate::domain::audit::{IndexKind, Summary};

/// Pages are cut once their encoding reaches this size.
#[cfg(not(test))]
pub(crate) const PAGE_TARGET_BYTES: usize = 4096;
/// Unit tests cut tiny pages, so values span many pages and every page-boundary case runs.
#[cfg(test)]
pub(crate) const PAGE_TARGET_BYTES: usize = 96;

/// Identifies a run: its first sequence number and its compaction tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunId {
    pub first: u64,
    pub tier: u8,
}

impl RunId {
    pub(crate) const LEN: usize = 9;

    pub fn prefix(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&self.first.to_be_bytes());
        out[8] = self.tier;
        out
    }

    pub(crate) fn from_prefix(bytes: &[u8]) -> Option<Self> {
        Some(Self {
            first: u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?),
            tier: *bytes.get(8)?,
        })
    }
}

/// `run ‖ kind`: the prefix of every page of one index kind in one run.
pub(crate) fn kind_prefix(run: RunId, kind: IndexKind) -> Vec<u8> {
    let mut key = Vec::with_capacity(RunId::LEN + 1);
    key.extend_from_slice(&run.prefix());
    key.push(kind.code());
    key
}

/// Appends `value` escaped so that escaped values sort like the values and no escaped value is
/// a prefix of another's terminator.
pub(crate) fn escape_into(key: &mut Vec<u8>, value: &[u8]) {
    for &byte in value {
        key.push(byte);
        if byte == 0 {
            key.push(0xff);
        }
    }
}

/// The page key of entry `(value, sequence)` in `run`/`kind`.
pub(crate) fn entry_key(run: RunId, kind: IndexKind, value: &[u8], sequence: u64) -> Vec<u8> {
    let mut key = kind_prefix(run, kind);
    escape_into(&mut key, value);
    key.extend_from_slice(&[0, 0]);
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

/// `run ‖ kind ‖ escape(prefix)`: every page key of a value starting with `prefix` starts so
/// (only pages that *begin* inside the range; the page before may hold its first entries).
pub(crate) fn value_prefix_key(run: RunId, kind: IndexKind, prefix: &[u8]) -> Vec<u8> {
    let mut key = kind_prefix(run, kind);
    escape_into(&mut key, prefix);
    key
}

/// One entry of a decoded page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageEntry {
    /// Index into [`IndexPage::values`].
    pub value: u32,
    pub sequence: u64,
    pub summary: Summary,
}

/// A decoded page: distinct values in order, and the entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IndexPage {
    pub values: Vec<Vec<u8>>,
    pub entries: Vec<PageEntry>,
}

impl IndexPage {
    pub fn value(&self, entry: &PageEntry) -> &[u8] {
        &self.values[entry.value as usize]
    }
}

/// Builds pages from entries given in `(value, sequence)` order.
#[derive(Debug, Default)]
pub(crate) struct PageWriter {
    buffer: Vec<u8>,
    count: u64,
    previous_value: Vec<u8>,
    previous_sequence: u64,
    first: Option<(Vec<u8>, u64)>,
}

impl PageWriter {
    /// Adds an entry; returns a finished page `(first value, first sequence, bytes)` when this
    /// entry filled one.
    pub fn push(
        &mut self,
        value: &[u8],
        sequence: u64,
        summary: Summary,
    ) -> Option<(Vec<u8>, u64, Vec<u8>)> {
        let same = self.count > 0 && value == self.previous_value.as_slice();
        let mut flags = 0u8;
        if summary.validity.is_some() {
            flags |= 1;
        }
        if same {
            flags |= 2;
        }
        self.buffer.push(flags);
        if same {
            put_varint(&mut self.buffer, sequence - self.previous_sequence);
        } else {
            let shared = if self.count == 0 {
                0
            } else {
                common_prefix(&self.previous_value, value)
            };
            put_varint(&mut self.buffer, shared as u64);
            put_varint(&mut self.buffer, (value.len() - shared) as u64);
            self.buffer.extend_from_slice(&value[shared..]);
            put_varint(&mut self.buffer, sequence);
            self.previous_value.clear();
            self.previous_value.extend_from_slice(value);
        }
        if let Some((not_before, not_after)) = summary.validity {
            put_varint(&mut self.buffer, zigzag(not_before));
            put_varint(&mut self.buffer, zigzag(not_after.wrapping_sub(not_before)));
        }
        if self.count == 0 {
            self.first = Some((value.to_vec(), sequence));
        }
        self.previous_sequence = sequence;
        self.count += 1;
        (self.buffer.len() >= PAGE_TARGET_BYTES)
            .then(|| self.finish())
            .flatten()
    }

    /// The last, partly filled page, if any.
    pub fn finish(&mut self) -> Option<(Vec<u8>, u64, Vec<u8>)> {
        let (value, sequence) = self.first.take()?;
        let mut page = Vec::with_capacity(self.buffer.len() + 5);
        put_varint(&mut page, self.count);
        page.append(&mut self.buffer);
        self.count = 0;
        self.previous_value.clear();
        Some((value, sequence, page))
    }
}

/// Decodes a page; None if it is malformed.
pub(crate) fn decode_page(bytes: &[u8]) -> Option<IndexPage> {
    let mut input = bytes;
    let count = get_varint(&mut input)?;
    let mut page = IndexPage {
        values: Vec::new(),
        entries: Vec::with_capacity(count.min(4096) as usize),
    };
    let mut sequence = 0u64;
    for _ in 0..count {
        let (&flags, rest) = input.split_first()?;
        input = rest;
        if flags & 2 != 0 && !page.values.is_empty() {
            sequence = sequence.checked_add(get_varint(&mut input)?)?;
        } else {
            let shared = get_varint(&mut input)? as usize;
            let suffix_len = get_varint(&mut input)? as usize;
            let previous = page.values.last().map(Vec::as_slice).unwrap_or(&[]);
            if shared > previous.len() || suffix_len > input.len() {
                return None;
            }
            let mut value = previous[..shared].to_vec();
            value.extend_from_slice(&input[..suffix_len]);
            input = &input[suffix_len..];
            page.values.push(value);
            sequence = get_varint(&mut input)?;
        }
        let validity = if flags & 1 != 0 {
            let not_before = unzigzag(get_varint(&mut input)?);
            let lifetime = unzigzag(get_varint(&mut input)?);
            Some((not_before, not_before.wrapping_add(lifetime)))
        } else {
            None
        };
        page.entries.push(PageEntry {
            value: (page.values.len() - 1) as u32,
            sequence,
            summary: Summary { validity },
        });
    }
    input.is_empty().then_some(page)
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub(crate) fn get_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_like_value_then_sequence() {
        let run = RunId { first: 1, tier: 0 };
        let mut keys = vec![
            (b"ab".to_vec(), 9),
            (b"ab\0".to_vec(), 1),
            (b"a".to_vec(), 100),
            (b"ab".to_vec(), 2),
            (b"b".to_vec(), 0),
            (vec![], 5),
            (b"a\xff".to_vec(), 1),
        ];
        let mut by_key = keys.clone();
        by_key.sort_by_key(|(v, s)| entry_key(run, IndexKind::Serial, v, *s));
        keys.sort();
        assert_eq!(by_key, keys);
        assert!(
            entry_key(run, IndexKind::Serial, b"abc", 1).starts_with(&value_prefix_key(
                run,
                IndexKind::Serial,
                b"ab"
            ))
        );
    }

    #[test]
    fn pages_round_trip_and_are_cut_near_the_target_size() {
        let mut writer = PageWriter::default();
        let mut pages = Vec::new();
        let mut expected = Vec::new();
        for value in 0..300u32 {
            let text = format!("spiffe://td/ns/n{}/sa/s{}", value / 7, value);
            for sequence in [value as u64 * 3, value as u64 * 3 + 1] {
                let summary = Summary {
                    validity: (value % 2 == 0)
                        .then_some((1_800_000_000 + value as i64, 1_800_086_400)),
                };
                expected.push((text.clone().into_bytes(), sequence, summary));
                pages.extend(writer.push(text.as_bytes(), sequence, summary));
            }
        }
        pages.extend(writer.finish());
        assert!(pages.len() > 1, "{} pages", pages.len());
        let mut decoded = Vec::new();
        for (first_value, first_sequence, bytes) in &pages {
            assert!(bytes.len() < PAGE_TARGET_BYTES + 200);
            let page = decode_page(bytes).unwrap();
            let first = &page.entries[0];
            assert_eq!(page.value(first), first_value.as_slice());
            assert_eq!(first.sequence, *first_sequence);
            for entry in &page.entries {
                decoded.push((page.value(entry).to_vec(), entry.sequence, entry.summary));
            }
        }
        assert_eq!(decoded, expected);
        assert_eq!(decode_page(&pages[0].2[..10]), None);
    }

    #[test]
    fn varints_and_zigzag_round_trip() {
        for value in [0u64, 1, 127, 128, 300, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            let mut input = out.as_slice();
            assert_eq!(get_varint(&mut input), Some(value));
            assert!(input.is_empty());
        }
        for value in [0i64, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(value)), value);
        }
    }
}
