//! Backup encryption keys: parsing, loading from a file or the environment, fingerprints.

use crate::{Error, KEY_ENV, Result, hex, io, unhex};
use aes_gcm::Aes256Gcm;
use aes_gcm::aead::KeyInit;
use sha2::{Digest, Sha256};
use std::path::Path;
use zeroize::Zeroizing;

/// A 256-bit key, wiped from memory when dropped.
pub struct Key(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.fingerprint())
    }
}

impl Key {
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key(Zeroizing::new(bytes))
    }

    /// 32 raw bytes, or 64 hex characters (surrounding whitespace ignored). 32 bytes that are
    /// all printable text are refused: that is a typed passphrase, not random key bytes (32
    /// random bytes are all printable with probability about 4 in 10^14).
    pub fn parse(raw: &[u8]) -> Result<Key> {
        if let Ok(bytes) = <[u8; 32]>::try_from(raw) {
            if looks_like_passphrase(&bytes) {
                return Err(Error::Key(
                    "must be 32 raw bytes or 64 hex characters; found 32 characters of text, \
                     which looks like a passphrase rather than a key: use `openssl rand -hex 32`"
                        .into(),
                ));
            }
            return Ok(Key::from_bytes(bytes));
        }
        let text = std::str::from_utf8(raw)
            .map_err(|_| Error::Key("must be 32 raw bytes or 64 hex characters".into()))?
            .trim();
        let bytes = unhex(text)
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or_else(|| Error::Key("must be 32 raw bytes or 64 hex characters".into()))?;
        Ok(Key::from_bytes(bytes))
    }

    /// Reads a key file; refuses one that group or others can read (like ssh).
    pub fn from_file(path: &Path) -> Result<Key> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path)
                .map_err(io(format!("reading key file {}", path.display())))?;
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(Error::Key(format!(
                    "key file {} is readable by group or others (mode {:o}); chmod 600 it",
                    path.display(),
                    mode & 0o777
                )));
            }
        }
        let raw = Zeroizing::new(
            std::fs::read(path).map_err(io(format!("reading key file {}", path.display())))?,
        );
        Key::parse(&raw)
    }

    /// The key from `--key-file` if given, else from [`KEY_ENV`] (`env` is its value).
    pub fn load(key_file: Option<&Path>, env: Option<String>) -> Result<Option<Key>> {
        if let Some(p) = key_file {
            return Key::from_file(p).map(Some);
        }
        match env {
            Some(v) if !v.trim().is_empty() => {
                let v = Zeroizing::new(v);
                Key::parse(v.as_bytes())
                    .map(Some)
                    .map_err(|e| Error::Key(format!("{KEY_ENV}: {e}")))
            }
            _ => Ok(None),
        }
    }

    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"rstmdb-backup-key-fingerprint");
        h.update(self.0.as_slice());
        hex(&h.finalize()[..8])
    }

    pub(crate) fn cipher(&self) -> Result<Aes256Gcm> {
        Aes256Gcm::new_from_slice(self.0.as_slice()).map_err(|e| Error::Key(e.to_string()))
    }
}

/// True when every byte is printable ASCII or a space, tab or newline: 32 such bytes are a
/// typed passphrase, not 32 random bytes (all 32 random bytes are printable with probability
/// (98/256)^32, about 4 in 10^14), so a key reader refuses them rather than use them as a key.
/// Shared with the storage engine's key file reader.
pub fn looks_like_passphrase(raw: &[u8]) -> bool {
    raw.iter()
        .all(|&b| (0x20..=0x7e).contains(&b) || matches!(b, b'\t' | b'\n' | b'\r'))
}
