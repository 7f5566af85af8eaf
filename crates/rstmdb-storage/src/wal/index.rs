//! A sparse in-memory index per segment: one (seq, file offset) pair every
//! [`INDEX_INTERVAL_BYTES`], so a reader starting at any seq scans at most that much of a
//! segment instead of the whole 64 MiB.

/// Distance in bytes between two index entries of a segment. A 64 MiB segment needs 256
/// entries (4 KiB of memory); a read starting mid-segment skips at most this many bytes.
pub(crate) const INDEX_INTERVAL_BYTES: u64 = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IndexEntry {
    seq: u64,
    offset: u64,
}

/// Entries in ascending seq (and offset) order. The first record of a segment (offset 0) is
/// implicit and never stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SparseIndex {
    entries: Vec<IndexEntry>,
    last_offset: u64,
}

impl SparseIndex {
    /// Called for every record, in file order: remembers it if it starts far enough from the
    /// previous entry. The result depends only on the record offsets, so an index built while
    /// writing equals one built by scanning the file later.
    pub fn note(&mut self, seq: u64, offset: u64) {
        if offset >= self.last_offset.saturating_add(INDEX_INTERVAL_BYTES) {
            debug_assert!(self.entries.last().is_none_or(|e| e.seq < seq));
            self.entries.push(IndexEntry { seq, offset });
            self.last_offset = offset;
        }
    }

    /// Forgets entries at or past `len` (the file was truncated to `len`).
    pub fn truncate(&mut self, len: u64) {
        while self.entries.last().is_some_and(|e| e.offset >= len) {
            self.entries.pop();
        }
        self.last_offset = self.entries.last().map_or(0, |e| e.offset);
    }

    /// Where to start reading to find `want`: the closest known record at or before it, as
    /// (seq, offset). `first_seq` is the segment's first sequence number (at offset 0).
    pub fn start_for(&self, first_seq: u64, want: u64) -> (u64, u64) {
        let after = self.entries.partition_point(|e| e.seq <= want);
        match after.checked_sub(1).and_then(|i| self.entries.get(i)) {
            Some(e) => (e.seq, e.offset),
            None => (first_seq, 0),
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1000 records of 100 KiB starting at seq 10.
    fn built() -> SparseIndex {
        let mut ix = SparseIndex::default();
        for i in 0..1000u64 {
            ix.note(10 + i, i * 100 * 1024);
        }
        ix
    }

    #[test]
    fn entries_are_about_one_interval_apart() {
        let ix = built();
        // 100 000 KiB / 256 KiB, entries every third record (300 KiB apart).
        assert_eq!(ix.len(), 333);
        for w in ix.entries.windows(2) {
            assert!(w[1].offset - w[0].offset >= INDEX_INTERVAL_BYTES);
            assert!(w[1].offset - w[0].offset < 2 * INDEX_INTERVAL_BYTES);
        }
    }

    #[test]
    fn start_is_the_closest_entry_at_or_before_the_wanted_seq() {
        let ix = built();
        assert_eq!(ix.start_for(10, 5), (10, 0));
        assert_eq!(ix.start_for(10, 10), (10, 0));
        assert_eq!(ix.start_for(10, 12), (10, 0));
        assert_eq!(ix.start_for(10, 13), (13, 3 * 100 * 1024));
        assert_eq!(ix.start_for(10, 15), (13, 3 * 100 * 1024));
        assert_eq!(ix.start_for(10, 5000), (1009, 999 * 100 * 1024));
    }

    #[test]
    fn truncation_then_rewrite_equals_a_fresh_build() {
        let mut ix = built();
        ix.truncate(500 * 100 * 1024);
        for i in 500..1000u64 {
            ix.note(10 + i, i * 100 * 1024);
        }
        assert_eq!(ix, built());
    }
}
