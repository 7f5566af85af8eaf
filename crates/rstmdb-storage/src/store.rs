//! The state store as the rest of the engine sees it: sled, with the values that carry user
//! data sealed when encryption at rest is on.
//!
//! Sealed: instances (`i\0…`, whose ctx is user data), machine definitions (`m\0…`) and
//! idempotency records (`k\0…`, which hold original results including ctx). Each value is
//! AES-256-GCM with its own nonce and the associated data `"rstmdb sled v1\0" ‖ key`, so a
//! value moved or copied under another key fails authentication.
//!
//! Writes go to an in-memory **overlay** first and reach sled in large batches (see
//! [`Overlay`]): one sled batch per group commit cost more than everything else an APPLY does,
//! and a large batch also coalesces repeated writes of one key. Reads and scans merge the
//! overlay over sled, so nothing above this module can tell.
//!
//! Plain: every key (ids and names must stay byte-ordered for LIST_INSTANCES and its `after`
//! cursor), the empty index values, counters, tombstone offsets and the `meta\0…` values
//! (offsets and the encryption marker). `SECURITY.md` says why that is acceptable.

use crate::crypto::{Cipher, SealError};
use crate::state::{self, keys};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

const SLED_AAD_DOMAIN: &[u8] = b"rstmdb sled v1\0";

/// Whether the value under `key` is sealed when encryption is on.
pub(crate) fn is_sealed_key(key: &[u8]) -> bool {
    key.starts_with(keys::INSTANCE) || key.starts_with(keys::MACHINE) || key.starts_with(keys::IDEM)
}

fn aad(key: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(SLED_AAD_DOMAIN.len() + key.len());
    aad.extend_from_slice(SLED_AAD_DOMAIN);
    aad.extend_from_slice(key);
    aad
}

/// What can go wrong reading or writing the state store.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("{0}")]
    Sled(#[from] sled::Error),
    #[error("state store value under key {key:?} cannot be decrypted: {reason}")]
    Decrypt { key: String, reason: String },
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("state store overlay lock poisoned")]
    Poisoned,
}

/// The encryption marker kept under `meta\0encryption`, so a data directory is never opened
/// with the wrong setting: `none`, or `aes-256-gcm:<key id hex>`.
pub(crate) fn marker(cipher: Option<&Cipher>) -> String {
    match cipher {
        Some(c) => format!("aes-256-gcm:{}", c.key_id()),
        None => "none".into(),
    }
}

/// The key id a marker names (`None` for `none`), or why it is not a marker.
pub(crate) fn parse_marker(value: &[u8]) -> Result<Option<String>, String> {
    let text = std::str::from_utf8(value).map_err(|_| "encryption marker is not UTF-8")?;
    if text == "none" {
        return Ok(None);
    }
    match text.strip_prefix("aes-256-gcm:") {
        Some(id) if id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(Some(id.to_owned()))
        }
        _ => Err(format!("unknown encryption marker {text:?}")),
    }
}

/// Whether `new` may replace `old` under [`keys::HIGH_WATER`]: the high-water offset never
/// goes back, or recovery could hand out an offset the store has already applied. Values that
/// do not decode are left to the readers that report them.
fn high_water_keeps_rising(old: Option<&[u8]>, new: Option<&[u8]>) -> bool {
    match (
        old.and_then(state::decode_u64),
        new.and_then(state::decode_u64),
    ) {
        (Some(old), Some(new)) => new >= old,
        _ => true,
    }
}

/// Writes not in sled yet, by key: `Some` = put, `None` = delete. Values are plaintext (sealed
/// when they go to sled).
type Writes = BTreeMap<Vec<u8>, Option<sled::IVec>>;
type OverlayEntry = (Vec<u8>, Option<sled::IVec>);

/// Bounds of the overlay: past either, [`Store::flush_if_full`] writes it to sled. The flush
/// runs on the apply stage, which waits for it: sled takes ~2.5 µs per key it already has and
/// more for new ones, so the key bound is also the longest write stall. 32,768 kept 4,096 hot
/// instances (~12k keys) out of sled entirely (APPLY 64 × 64 in flight: 20 → 11–13 µs) but
/// stalled writes for ~0.5 s per flush under a mixed load that creates instances; 8,192 keeps
/// the worst stall near 0.1 s. Flushing on a thread of its own would allow both.
pub(crate) const OVERLAY_MAX_KEYS: usize = 8192;
pub(crate) const OVERLAY_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Recent writes in memory, in front of sled.
///
/// - `active` takes new writes. A flush moves it to `frozen` (briefly under the write lock),
///   writes `frozen` to sled as one atomic batch without holding the lock, then empties
///   `frozen`. Readers look in `active`, then `frozen`, then sled: under one read lock, so a
///   key found in neither has its latest version in sled already.
/// - sled therefore always holds a prefix of the writes (each flush is atomic and flushes
///   are serialised), which is all recovery needs: the WAL replays the rest.
/// - A failed flush leaves `frozen` in place (still read) and is retried by the next one.
#[derive(Default)]
struct Overlay {
    state: RwLock<OverlayState>,
    /// Serialises flushes (the apply stage and the checkpointer both flush).
    flushing: Mutex<()>,
}

#[derive(Default)]
struct OverlayState {
    active: Writes,
    active_bytes: usize,
    frozen: Arc<Writes>,
}

impl OverlayState {
    fn get(&self, key: &[u8]) -> Option<&Option<sled::IVec>> {
        self.active.get(key).or_else(|| self.frozen.get(key))
    }
}

/// sled, the optional cipher and the write overlay.
#[derive(Clone)]
pub(crate) struct Store {
    db: sled::Db,
    cipher: Option<Arc<Cipher>>,
    overlay: Arc<Overlay>,
}

impl Store {
    pub fn new(db: sled::Db, cipher: Option<Arc<Cipher>>) -> Store {
        Store {
            db,
            cipher,
            overlay: Arc::new(Overlay::default()),
        }
    }

    fn open_value(&self, key: &[u8], stored: sled::IVec) -> Result<Vec<u8>, StoreError> {
        match &self.cipher {
            Some(c) if is_sealed_key(key) => {
                c.open(&aad(key), &stored).map_err(|e| StoreError::Decrypt {
                    key: String::from_utf8_lossy(key).replace('\0', "\\0"),
                    reason: e.to_string(),
                })
            }
            _ => Ok(stored.to_vec()),
        }
    }

    fn read(&self) -> Result<std::sync::RwLockReadGuard<'_, OverlayState>, StoreError> {
        self.overlay.state.read().map_err(|_| StoreError::Poisoned)
    }

    fn write(&self) -> Result<std::sync::RwLockWriteGuard<'_, OverlayState>, StoreError> {
        self.overlay.state.write().map_err(|_| StoreError::Poisoned)
    }

    /// The value under `key`, decrypted.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.read()?.get(key) {
            return Ok(v.as_ref().map(|v| v.to_vec()));
        }
        match self.db.get(key)? {
            Some(v) => self.open_value(key, v).map(Some),
            None => Ok(None),
        }
    }

    /// Entries under `prefix` in key order, values decrypted: the overlay's entries (as they
    /// were when the scan started) merged over sled's. Like sled's own scans, not a snapshot.
    pub fn scan_prefix<'a>(
        &'a self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(sled::IVec, Vec<u8>), StoreError>> + use<'a> {
        let overlay: Result<Vec<OverlayEntry>, StoreError> = self.read().map(|st| {
            let mut merged: Writes = st
                .frozen
                .range(prefix.to_vec()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (k, v) in st
                .active
                .range(prefix.to_vec()..)
                .take_while(|(k, _)| k.starts_with(prefix))
            {
                merged.insert(k.clone(), v.clone());
            }
            merged.into_iter().collect()
        });
        let (overlay, failed) = match overlay {
            Ok(o) => (o, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let sled_items = self.db.scan_prefix(prefix).map(move |item| {
            let (k, v) = item?;
            let v = self.open_value(&k, v)?;
            Ok((k, v))
        });
        failed.map(Err).into_iter().chain(MergeScan {
            overlay: overlay.into_iter().peekable(),
            sled: sled_items.peekable(),
        })
    }

    pub fn batch(&self) -> Batch {
        Batch { writes: Vec::new() }
    }

    /// Adds the batch to the overlay atomically: readers see all of it or none. An error
    /// (a poisoned lock) means nothing was added. Writing to sled is separate
    /// ([`Store::flush_if_full`]), so a failing disk never makes a batch that readers already
    /// see look unapplied.
    pub fn apply_batch(&self, batch: Batch) -> Result<(), StoreError> {
        let mut st = self.write()?;
        for (k, v) in batch.writes {
            debug_assert!(
                k != keys::HIGH_WATER
                    || high_water_keeps_rising(
                        st.get(&k).and_then(|old| old.as_deref()),
                        v.as_deref()
                    ),
                "the overlay's high-water offset went back"
            );
            st.active_bytes = st
                .active_bytes
                .saturating_add(k.len() + v.as_ref().map_or(0, |v| v.len()));
            st.active.insert(k, v);
        }
        Ok(())
    }

    /// Writes the overlay to sled if it has grown past its bounds.
    pub fn flush_if_full(&self) -> Result<(), StoreError> {
        let full = {
            let st = self.read()?;
            st.active.len() >= OVERLAY_MAX_KEYS || st.active_bytes >= OVERLAY_MAX_BYTES
        };
        if full {
            self.flush_overlay()?;
        }
        Ok(())
    }

    /// Writes everything in the overlay to sled (one atomic batch); does not fsync.
    pub fn flush_overlay(&self) -> Result<(), StoreError> {
        let _serial = self
            .overlay
            .flushing
            .lock()
            .map_err(|_| StoreError::Poisoned)?;
        let frozen = {
            let mut st = self.write()?;
            if st.active.is_empty() && st.frozen.is_empty() {
                return Ok(());
            }
            let active = std::mem::take(&mut st.active);
            st.active_bytes = 0;
            if st.frozen.is_empty() {
                st.frozen = Arc::new(active);
            } else {
                // A previous flush failed: its writes go first, newer ones over them.
                let mut merged = (*st.frozen).clone();
                merged.extend(active);
                st.frozen = Arc::new(merged);
            }
            st.frozen.clone()
        };
        let mut batch = sled::Batch::default();
        for (k, v) in frozen.iter() {
            match v {
                Some(v) => match &self.cipher {
                    Some(c) if is_sealed_key(k) => batch.insert(k.as_slice(), c.seal(&aad(k), v)?),
                    _ => batch.insert(k.as_slice(), v.clone()),
                },
                None => batch.remove(k.as_slice()),
            }
        }
        // Once per flush (thousands of writes), and a violation would make recovery reuse
        // offsets: checked in release builds too.
        if let Some(Some(new)) = frozen.get(keys::HIGH_WATER)
            && let Ok(old) = self.db.get(keys::HIGH_WATER)
        {
            assert!(
                high_water_keeps_rising(old.as_deref(), Some(new)),
                "the high-water offset written to sled went back"
            );
        }
        self.db.apply_batch(batch)?;
        reclaim_sled_garbage(frozen.len());
        self.write()?.frozen = Arc::new(Writes::new());
        Ok(())
    }

    /// Writes the overlay to sled and makes sled durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.flush_overlay()?;
        self.db.flush()?;
        Ok(())
    }
}

/// Lets crossbeam-epoch free what sled retired while it took a flush of `writes` keys.
///
/// sled retires the old copy of a tree node on every insert and frees it (and reuses its log
/// segments) only when the global epoch collector runs: on every 128th pin of a thread, at
/// most 8 × 64 retired objects per run. sled reads pin it, but once the instance cache answers
/// the reads hardly anything does, and the garbage piled up without bound (measured: RSS
/// +200 MB/s, state directory +20 MB/s under sustained writes to 4,096 instances). Each
/// pin-and-flush here runs one collection step; steps with nothing due are cheap.
fn reclaim_sled_garbage(writes: usize) {
    for _ in 0..writes / 64 + 16 {
        crossbeam_epoch::pin().flush();
    }
}

/// Merges the overlay's entries (sorted, `None` = deleted) over sled's scan.
struct MergeScan<O: Iterator, S: Iterator> {
    overlay: std::iter::Peekable<O>,
    sled: std::iter::Peekable<S>,
}

impl<O, S> Iterator for MergeScan<O, S>
where
    O: Iterator<Item = OverlayEntry>,
    S: Iterator<Item = Result<(sled::IVec, Vec<u8>), StoreError>>,
{
    type Item = Result<(sled::IVec, Vec<u8>), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let take_overlay = match (self.overlay.peek(), self.sled.peek()) {
                (None, None) => return None,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(_), Some(Err(_))) => false,
                (Some((ok, _)), Some(Ok((sk, _)))) => match ok.as_slice().cmp(sk.as_ref()) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Greater => false,
                    std::cmp::Ordering::Equal => {
                        // The overlay's version is newer: drop sled's.
                        self.sled.next();
                        true
                    }
                },
            };
            if take_overlay {
                match self.overlay.next() {
                    Some((k, Some(v))) => return Some(Ok((sled::IVec::from(k), v.to_vec()))),
                    Some((_, None)) => continue, // deleted
                    None => return None,
                }
            }
            return self.sled.next();
        }
    }
}

/// A set of writes applied to the store atomically. Values are plaintext here; the store
/// seals what [`is_sealed_key`] names on its way to sled.
pub(crate) struct Batch {
    writes: Vec<(Vec<u8>, Option<sled::IVec>)>,
}

impl Batch {
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: Vec<u8>) {
        self.writes
            .push((key.as_ref().to_vec(), Some(sled::IVec::from(value))));
    }

    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.writes.push((key.as_ref().to_vec(), None));
    }
}

/// Re-seals one raw sled entry from `from` to `to` (either may be `None`: plaintext), for
/// `rekey`. Entries whose values are never sealed are returned unchanged.
pub(crate) fn reseal(
    key: &[u8],
    stored: &[u8],
    from: Option<&Cipher>,
    to: Option<&Cipher>,
) -> Result<Vec<u8>, StoreError> {
    if !is_sealed_key(key) {
        return Ok(stored.to_vec());
    }
    let plain = match from {
        Some(c) => c.open(&aad(key), stored).map_err(|e| StoreError::Decrypt {
            key: String::from_utf8_lossy(key).replace('\0', "\\0"),
            reason: e.to_string(),
        })?,
        None => stored.to_vec(),
    };
    match to {
        Some(c) => Ok(c.seal(&aad(key), &plain)?),
        None => Ok(plain),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::crypto::{EncryptionKey, KEY_BYTES};
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, u8),
        Del(u8),
        /// Ends the current batch.
        Commit,
        Flush,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..40, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
            3 => (0u8..40).prop_map(Op::Del),
            3 => Just(Op::Commit),
            1 => Just(Op::Flush),
        ]
    }

    /// Keys under two prefixes, so that scans must stop at the prefix's end.
    fn key(k: u8) -> Vec<u8> {
        let prefix: &[u8] = if k.is_multiple_of(3) {
            keys::INSTANCE
        } else {
            b"x\0"
        };
        [prefix, format!("{k:03}").as_bytes()].concat()
    }

    fn check(store: &Store, model: &BTreeMap<Vec<u8>, Vec<u8>>) {
        for k in 0..40u8 {
            let k = key(k);
            assert_eq!(store.get(&k).unwrap(), model.get(&k).cloned(), "{k:?}");
        }
        for prefix in [keys::INSTANCE, b"x\0".as_slice(), b"x\0 01".as_slice()] {
            let scanned: Vec<(Vec<u8>, Vec<u8>)> = store
                .scan_prefix(prefix)
                .map(|r| r.map(|(k, v)| (k.to_vec(), v)).unwrap())
                .collect();
            let expected: Vec<(Vec<u8>, Vec<u8>)> = model
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(scanned, expected, "prefix {prefix:?}");
        }
    }

    fn run(ops: &[Op], cipher: Option<Arc<Cipher>>) {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let store = Store::new(db.clone(), cipher.clone());
        let mut model = BTreeMap::new();
        let mut pending = BTreeMap::new();
        let mut batch = store.batch();
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    batch.insert(key(*k), vec![*v; 1 + *v as usize % 5]);
                    pending.insert(key(*k), Some(vec![*v; 1 + *v as usize % 5]));
                }
                Op::Del(k) => {
                    batch.remove(key(*k));
                    pending.insert(key(*k), None);
                }
                Op::Commit => {
                    // Nothing of a batch is visible before it is applied.
                    check(&store, &model);
                    store
                        .apply_batch(std::mem::replace(&mut batch, store.batch()))
                        .unwrap();
                    for (k, v) in std::mem::take(&mut pending) {
                        match v {
                            Some(v) => model.insert(k, v),
                            None => model.remove(&k),
                        };
                    }
                    check(&store, &model);
                }
                Op::Flush => {
                    store.flush_overlay().unwrap();
                    check(&store, &model);
                }
            }
        }
        // After a full flush sled alone holds the model (sealed values where they must be).
        store.flush().unwrap();
        let fresh = Store::new(db, cipher);
        check(&fresh, &model);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn reads_and_scans_merge_the_overlay_over_sled(ops in prop::collection::vec(op(), 0..120)) {
            run(&ops, None);
        }

        #[test]
        fn sealed_values_read_back_through_the_overlay_and_sled(ops in prop::collection::vec(op(), 0..60)) {
            run(&ops, Some(Arc::new(Cipher::new(&EncryptionKey::from_bytes([7; KEY_BYTES])))));
        }
    }

    /// While a flush moves writes from the overlay to sled, readers still see them: a value
    /// never goes back or disappears.
    #[test]
    fn reads_during_flushes_never_go_back() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let store = Store::new(db, None);
        // Written before the reader starts (the test used to race its own first write).
        let mut b = store.batch();
        b.insert(b"k", 0u64.to_le_bytes().to_vec());
        store.apply_batch(b).unwrap();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (store, done) = (store.clone(), done.clone());
            std::thread::spawn(move || {
                let mut last = 0u64;
                let mut reads = 0u64;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let v = store
                        .get(b"k")
                        .unwrap()
                        .expect("written before the reader started");
                    let v = u64::from_le_bytes(v.try_into().unwrap());
                    assert!(v >= last, "read {v} after {last}");
                    last = v;
                    reads += 1;
                }
                reads
            })
        };
        for i in 1..20_000u64 {
            let mut b = store.batch();
            b.insert(b"k", i.to_le_bytes().to_vec());
            b.insert(format!("pad{}", i % 500), vec![0; 64]);
            store.apply_batch(b).unwrap();
            if i.is_multiple_of(50) {
                store.flush_overlay().unwrap();
            }
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(reader.join().unwrap() > 0);
    }

    #[test]
    fn the_overlay_flushes_itself_past_its_key_bound() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let store = Store::new(db.clone(), None);
        for i in 0..OVERLAY_MAX_KEYS {
            let mut b = store.batch();
            b.insert(format!("k{i:06}"), vec![1]);
            store.apply_batch(b).unwrap();
            store.flush_if_full().unwrap();
        }
        assert_eq!(
            db.len(),
            OVERLAY_MAX_KEYS,
            "sled holds every key once the bound is hit"
        );
        assert!(store.read().unwrap().active.is_empty());
    }

    fn high_water(store: &Store, seq: u64) -> Result<(), StoreError> {
        let mut b = store.batch();
        b.insert(keys::HIGH_WATER, state::encode_u64(seq));
        store.apply_batch(b)
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "the overlay's high-water offset went back")]
    fn a_high_water_offset_going_back_in_the_overlay_is_caught() {
        let store = Store::new(sled::Config::new().temporary(true).open().unwrap(), None);
        high_water(&store, 5).unwrap();
        let _ = high_water(&store, 3);
    }

    #[test]
    #[should_panic(expected = "the high-water offset written to sled went back")]
    fn a_high_water_offset_going_back_in_sled_is_caught() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        db.insert(keys::HIGH_WATER, state::encode_u64(5)).unwrap();
        // The overlay does not hold the mark, so only the flush can compare it with sled's.
        let store = Store::new(db, None);
        high_water(&store, 3).unwrap();
        let _ = store.flush_overlay();
    }

    #[test]
    fn a_rising_high_water_offset_reaches_sled() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let store = Store::new(db.clone(), None);
        high_water(&store, 3).unwrap();
        high_water(&store, 5).unwrap();
        store.flush_overlay().unwrap();
        high_water(&store, 5).unwrap();
        store.flush_overlay().unwrap();
        let stored = db.get(keys::HIGH_WATER).unwrap().unwrap();
        assert_eq!(state::decode_u64(&stored), Some(5));
    }
}
