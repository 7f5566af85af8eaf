//! Encryption at rest: the key, its id, and AES-256-GCM sealing of WAL payloads and sled
//! values. `SECURITY.md` ("Encryption at rest") explains what is and is not protected.
//!
//! A sealed value is `key_id (4) ‖ nonce (12) ‖ ciphertext ‖ tag (16)`: 32 bytes more than the
//! plaintext. The key id (the first 4 bytes of SHA-256 of a domain string and the key) lets a
//! reader say "written with a different key" instead of a bare authentication failure; the
//! GCM tag is what actually decides.
//!
//! Nonces are unique per key by construction within a session and random across sessions: a
//! nonce is a 64-bit prefix drawn from the OS CSPRNG when a [`Cipher`] is made (and again
//! after 2^32 nonces) followed by a 32-bit counter. Two nonces can only repeat if two
//! sessions draw the same 64-bit prefix; with `s` sessions (process starts, rekeys) that has
//! probability below `s² / 2^65`, and each session may seal 2^32 values per prefix before it
//! draws another. This does not wear out with the number of records the way fully random
//! 96-bit nonces do (NIST's 2^32-messages bound).

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{AeadInPlace, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use zeroize::{Zeroize, Zeroizing};

/// Size of a key in bytes (AES-256).
pub const KEY_BYTES: usize = 32;
/// Bytes of the key id stored in front of every sealed value.
pub const KEY_ID_BYTES: usize = 4;
/// Bytes of the AES-GCM nonce.
pub const NONCE_BYTES: usize = 12;
/// Bytes of the AES-GCM authentication tag.
pub const TAG_BYTES: usize = 16;
/// How much larger a sealed value is than its plaintext.
pub const SEAL_OVERHEAD: usize = KEY_ID_BYTES + NONCE_BYTES + TAG_BYTES;
/// A key file is at most this long (64 hex characters and a CRLF); anything longer is refused
/// before it is read whole.
const MAX_KEY_FILE_BYTES: u64 = 66;
const KEY_ID_DOMAIN: &[u8] = b"rstmdb key id v1\0";

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("encryption key file {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "encryption key file {} is accessible by group or others (mode {mode:04o}); it must be \
         0600 or 0400: run `chmod 600 {}`",
        .path.display(),
        .path.display()
    )]
    Insecure { path: PathBuf, mode: u32 },
    #[error("encryption key file {}: {reason}", .path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// Identifies a key without revealing it: the first 4 bytes of SHA-256("rstmdb key id v1\0" ‖
/// key). Shown in hex in errors and stored in the state store's encryption marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_BYTES]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A 256-bit key for encryption at rest. The bytes are wiped from memory when the last copy is
/// dropped; `Debug` shows only the key id.
#[derive(Clone)]
pub struct EncryptionKey {
    bytes: Zeroizing<[u8; KEY_BYTES]>,
    id: KeyId,
}

impl EncryptionKey {
    /// A key from its 32 bytes (embedded use; the server reads a key file).
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> EncryptionKey {
        let bytes = Zeroizing::new(bytes);
        let digest = Sha256::new()
            .chain_update(KEY_ID_DOMAIN)
            .chain_update(bytes.as_slice())
            .finalize();
        let mut id = [0u8; KEY_ID_BYTES];
        id.copy_from_slice(&digest[..KEY_ID_BYTES]);
        EncryptionKey {
            bytes,
            id: KeyId(id),
        }
    }

    /// A fresh key from the OS CSPRNG, for data that only this process must read back (the
    /// server's backup spools): it is never written anywhere.
    pub fn generate() -> Result<EncryptionKey, SealError> {
        let mut bytes = [0u8; KEY_BYTES];
        OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| SealError(format!("the OS random source failed: {e}")))?;
        let key = EncryptionKey::from_bytes(bytes);
        bytes.zeroize();
        Ok(key)
    }

    /// Reads a key file: exactly 32 raw bytes, or 64 hex characters optionally followed by
    /// one newline (`\n` or `\r\n`). On Unix the file must not be readable or writable by
    /// group or others (0600 or 0400).
    pub fn from_file(path: &Path) -> Result<EncryptionKey, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let invalid = |reason: String| KeyError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(invalid("not a regular file".into()));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Insecure {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        let mut raw = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_BYTES as usize + 1));
        file.take(MAX_KEY_FILE_BYTES + 1)
            .read_to_end(&mut raw)
            .map_err(io)?;
        let expected = "expected exactly 32 raw bytes, or 64 hex characters and an optional \
                        newline";
        if raw.len() == KEY_BYTES {
            if rstmdb_backup::looks_like_passphrase(&raw) {
                return Err(invalid(format!(
                    "{expected}; found 32 bytes of printable text, which looks like a \
                     passphrase rather than random key bytes: write the key as 64 hex \
                     characters (`openssl rand -hex 32`)"
                )));
            }
            let mut bytes = [0u8; KEY_BYTES];
            bytes.copy_from_slice(&raw);
            let key = EncryptionKey::from_bytes(bytes);
            bytes.zeroize();
            return Ok(key);
        }
        let text = raw
            .strip_suffix(b"\r\n")
            .or_else(|| raw.strip_suffix(b"\n"))
            .unwrap_or(&raw);
        if text.len() != 2 * KEY_BYTES {
            let found = if raw.len() as u64 > MAX_KEY_FILE_BYTES {
                format!("more than {MAX_KEY_FILE_BYTES} bytes")
            } else {
                format!("{} bytes", raw.len())
            };
            return Err(invalid(format!("{expected}; found {found}")));
        }
        let mut bytes = [0u8; KEY_BYTES];
        for (i, pair) in text.chunks_exact(2).enumerate() {
            match (hex_digit(pair[0]), hex_digit(pair[1])) {
                (Some(h), Some(l)) => bytes[i] = (h << 4) | l,
                _ => {
                    bytes.zeroize();
                    return Err(invalid(format!(
                        "{expected}; found 64 characters that are not all hex digits"
                    )));
                }
            }
        }
        let key = EncryptionKey::from_bytes(bytes);
        bytes.zeroize();
        Ok(key)
    }

    /// The key's id (not secret).
    pub fn id(&self) -> KeyId {
        self.id
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionKey")
            .field("id", &format_args!("{}", self.id))
            .finish_non_exhaustive()
    }
}

impl PartialEq for EncryptionKey {
    fn eq(&self, other: &Self) -> bool {
        // Constant time: no early exit on the first differing byte.
        self.bytes
            .iter()
            .zip(other.bytes.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Eq for EncryptionKey {}

/// Why a sealed value could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenFailure {
    /// Shorter than the key id, nonce and tag.
    TooShort(usize),
    /// Sealed under another key (by its id).
    OtherKey { found: KeyId, configured: KeyId },
    /// The tag does not match: the bytes or their context (associated data) were changed,
    /// or the value was moved or swapped.
    Authentication,
}

impl fmt::Display for OpenFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenFailure::TooShort(n) => write!(
                f,
                "sealed value of {n} bytes is shorter than the {SEAL_OVERHEAD}-byte envelope"
            ),
            OpenFailure::OtherKey { found, configured } => write!(
                f,
                "encrypted with a different key (key id {found}; the configured key has id \
                 {configured})"
            ),
            OpenFailure::Authentication => write!(
                f,
                "authentication failed: the data was modified, moved or swapped (AES-GCM tag \
                 mismatch)"
            ),
        }
    }
}

/// Why sealing failed: only the OS random source can fail.
#[derive(Debug, thiserror::Error)]
#[error("encryption failed: {0}")]
pub struct SealError(String);

struct NonceState {
    prefix: [u8; 8],
    next: u32,
    /// False until a prefix was drawn, and again when the counter ran out.
    fresh: bool,
}

/// An AES-256-GCM cipher for one key, shared by the WAL writer, its readers and the state
/// store. `Debug` shows only the key id.
pub struct Cipher {
    aead: Aes256Gcm,
    id: KeyId,
    nonces: Mutex<NonceState>,
}

impl Cipher {
    pub fn new(key: &EncryptionKey) -> Cipher {
        Cipher {
            aead: Aes256Gcm::new(key.bytes.as_slice().into()),
            id: key.id,
            nonces: Mutex::new(NonceState {
                prefix: [0; 8],
                next: 0,
                fresh: false,
            }),
        }
    }

    pub fn key_id(&self) -> KeyId {
        self.id
    }

    fn next_nonce(&self) -> Result<[u8; NONCE_BYTES], SealError> {
        // Nothing panics under the lock, so a poisoned one is still consistent.
        let mut st = self.nonces.lock().unwrap_or_else(PoisonError::into_inner);
        if !st.fresh {
            OsRng
                .try_fill_bytes(&mut st.prefix)
                .map_err(|e| SealError(format!("the OS random source failed: {e}")))?;
            st.next = 0;
            st.fresh = true;
        }
        let mut nonce = [0u8; NONCE_BYTES];
        nonce[..8].copy_from_slice(&st.prefix);
        nonce[8..].copy_from_slice(&st.next.to_be_bytes());
        match st.next.checked_add(1) {
            Some(n) => st.next = n,
            None => st.fresh = false,
        }
        Ok(nonce)
    }

    /// Appends `key_id ‖ nonce ‖ AES-GCM(plain, aad) ‖ tag` to `out`.
    pub fn seal_into(&self, out: &mut Vec<u8>, aad: &[u8], plain: &[u8]) -> Result<(), SealError> {
        let nonce = self.next_nonce()?;
        out.reserve(plain.len() + SEAL_OVERHEAD);
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = self
            .aead
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut out[start..])
            .map_err(|_| SealError("AES-GCM refused the input (too large)".into()))?;
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// `seal_into` a fresh vector.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut out = Vec::with_capacity(plain.len() + SEAL_OVERHEAD);
        self.seal_into(&mut out, aad, plain)?;
        Ok(out)
    }

    /// The key id a sealed value names, if it is long enough to name one.
    pub(crate) fn sealed_key_id(sealed: &[u8]) -> Option<KeyId> {
        let mut id = [0u8; KEY_ID_BYTES];
        id.copy_from_slice(sealed.get(..KEY_ID_BYTES)?);
        Some(KeyId(id))
    }

    /// Checks the key id of a sealed value without decrypting it.
    pub(crate) fn check_key_id(&self, sealed: &[u8]) -> Result<(), OpenFailure> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(OpenFailure::TooShort(sealed.len()));
        }
        match Self::sealed_key_id(sealed) {
            Some(found) if found != self.id => Err(OpenFailure::OtherKey {
                found,
                configured: self.id,
            }),
            _ => Ok(()),
        }
    }

    /// Verifies and decrypts a value made by `seal` with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenFailure> {
        self.check_key_id(sealed)?;
        let nonce = &sealed[KEY_ID_BYTES..KEY_ID_BYTES + NONCE_BYTES];
        let body = &sealed[KEY_ID_BYTES + NONCE_BYTES..];
        let (ct, tag) = body.split_at(body.len() - TAG_BYTES);
        let mut plain = ct.to_vec();
        self.aead
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                aad,
                &mut plain,
                Tag::from_slice(tag),
            )
            .map_err(|_| OpenFailure::Authentication)?;
        Ok(plain)
    }
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cipher")
            .field("key_id", &format_args!("{}", self.id))
            .finish_non_exhaustive()
    }
}

impl PartialEq for Cipher {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Cipher {}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> EncryptionKey {
        EncryptionKey::from_bytes([b; KEY_BYTES])
    }

    #[test]
    fn generated_keys_differ_and_seal() {
        let a = EncryptionKey::generate().unwrap();
        let b = EncryptionKey::generate().unwrap();
        assert_ne!(a, b);
        assert_ne!(a.id(), b.id());
        let sealed = Cipher::new(&a).seal(b"ctx", b"secret").unwrap();
        assert_eq!(Cipher::new(&a).open(b"ctx", &sealed).unwrap(), b"secret");
        assert!(Cipher::new(&b).open(b"ctx", &sealed).is_err());
    }

    #[test]
    fn sealed_values_open_only_with_the_same_key_and_context() {
        let c = Cipher::new(&key(1));
        let sealed = c.seal(b"ctx", b"secret").unwrap();
        assert_eq!(sealed.len(), 6 + SEAL_OVERHEAD);
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(c.open(b"ctx", &sealed).unwrap(), b"secret");
        assert_eq!(c.open(b"other", &sealed), Err(OpenFailure::Authentication));
        let mut flipped = sealed.clone();
        flipped[20] ^= 1;
        assert_eq!(c.open(b"ctx", &flipped), Err(OpenFailure::Authentication));
        let other = Cipher::new(&key(2));
        assert!(matches!(
            other.open(b"ctx", &sealed),
            Err(OpenFailure::OtherKey { .. })
        ));
        assert_eq!(
            c.open(b"ctx", &sealed[..10]),
            Err(OpenFailure::TooShort(10))
        );
    }

    #[test]
    fn nonces_do_not_repeat_within_a_session_or_across_ciphers() {
        let c = Cipher::new(&key(1));
        let a = c.next_nonce().unwrap();
        let b = c.next_nonce().unwrap();
        assert_eq!(a[..8], b[..8]);
        assert_ne!(a, b);
        let d = Cipher::new(&key(1)).next_nonce().unwrap();
        assert_ne!(a[..8], d[..8], "a new session draws a new prefix");
    }

    #[test]
    fn the_counter_running_out_draws_a_new_prefix() {
        let c = Cipher::new(&key(1));
        let first = c.next_nonce().unwrap();
        c.nonces.lock().unwrap().next = u32::MAX;
        let last = c.next_nonce().unwrap();
        assert_eq!(last[..8], first[..8]);
        assert_eq!(last[8..], u32::MAX.to_be_bytes());
        let after = c.next_nonce().unwrap();
        assert_ne!(after[..8], first[..8]);
        assert_eq!(after[8..], [0, 0, 0, 0]);
    }

    #[test]
    fn key_ids_differ_and_debug_hides_the_key() {
        assert_ne!(key(1).id(), key(2).id());
        let shown = format!("{:?}", key(7));
        assert!(shown.contains(&key(7).id().to_string()));
        assert!(!shown.contains("7, 7"));
        assert_eq!(key(1), key(1));
        assert_ne!(key(1), key(2));
    }
}
