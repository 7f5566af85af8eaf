//! The state store as the rest of the engine sees it: sled, with the values that carry user
//! data sealed when encryption at rest is on.
//!
//! Sealed: instances (`i\0…`, whose ctx is user data), machine definitions (`m\0…`) and
//! idempotency records (`k\0…`, which hold original results including ctx). Each value is
//! AES-256-GCM with its own nonce and the associated data `"rstmdb sled v1\0" ‖ key`, so a
//! value moved or copied under another key fails authentication.
//!
//! Plain: every key (ids and names must stay byte-ordered for LIST_INSTANCES and its `after`
//! cursor), the empty index values, counters, tombstone offsets and the `meta\0…` values
//! (offsets and the encryption marker). `SECURITY.md` says why that is acceptable.

use crate::crypto::{Cipher, SealError};
use crate::state::keys;
use std::sync::Arc;

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

/// sled plus the optional cipher.
#[derive(Clone)]
pub(crate) struct Store {
    db: sled::Db,
    cipher: Option<Arc<Cipher>>,
}

impl Store {
    pub fn new(db: sled::Db, cipher: Option<Arc<Cipher>>) -> Store {
        Store { db, cipher }
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

    /// The value under `key`, decrypted.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.db.get(key)? {
            Some(v) => self.open_value(key, v).map(Some),
            None => Ok(None),
        }
    }

    /// Entries under `prefix` in key order, values decrypted.
    pub fn scan_prefix<'a>(
        &'a self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(sled::IVec, Vec<u8>), StoreError>> + use<'a> {
        self.db.scan_prefix(prefix).map(move |item| {
            let (k, v) = item?;
            let v = self.open_value(&k, v)?;
            Ok((k, v))
        })
    }

    pub fn batch(&self) -> Batch {
        Batch {
            inner: sled::Batch::default(),
            cipher: self.cipher.clone(),
        }
    }

    pub fn apply_batch(&self, batch: Batch) -> Result<(), StoreError> {
        Ok(self.db.apply_batch(batch.inner)?)
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

/// A sled batch that seals the values [`is_sealed_key`] names.
pub(crate) struct Batch {
    inner: sled::Batch,
    cipher: Option<Arc<Cipher>>,
}

impl Batch {
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: Vec<u8>) -> Result<(), SealError> {
        let key = key.as_ref();
        match &self.cipher {
            Some(c) if is_sealed_key(key) => {
                let sealed = c.seal(&aad(key), &value)?;
                self.inner.insert(key, sealed);
            }
            _ => self.inner.insert(key, value),
        }
        Ok(())
    }

    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.inner.remove(key.as_ref());
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
