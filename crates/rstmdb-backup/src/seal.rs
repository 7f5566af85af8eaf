//! Chunk sealing: the per-chunk CRC and, with a key, AES-256-GCM with the chunk index, the
//! flags and the manifest hash as associated data (see the crate docs).

use crate::{AAD_LABEL, Error, Result};
use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};

pub(crate) struct Sealer {
    manifest_hash: [u8; 32],
    cipher: Option<(Aes256Gcm, [u8; 8])>,
}

impl Sealer {
    pub(crate) fn new(manifest_bytes: &[u8], cipher: Option<(Aes256Gcm, [u8; 8])>) -> Sealer {
        Sealer {
            manifest_hash: Sha256::digest(manifest_bytes).into(),
            cipher,
        }
    }

    fn aad(&self, index: u64, flags: u8) -> Vec<u8> {
        let mut aad = Vec::with_capacity(AAD_LABEL.len() + 9 + 32);
        aad.extend_from_slice(AAD_LABEL);
        aad.extend_from_slice(&index.to_le_bytes());
        aad.push(flags);
        aad.extend_from_slice(&self.manifest_hash);
        aad
    }

    fn nonce(salt: &[u8; 8], index: u64) -> Result<[u8; 12]> {
        let i = u32::try_from(index)
            .map_err(|_| Error::Invalid("backup has too many chunks for its nonce space".into()))?;
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(salt);
        n[8..].copy_from_slice(&i.to_be_bytes());
        Ok(n)
    }

    pub(crate) fn crc(&self, index: u64, flags: u8, data: &[u8]) -> u32 {
        let c = crc32c::crc32c(&self.aad(index, flags));
        crc32c::crc32c_append(c, data)
    }

    pub(crate) fn seal(&self, index: u64, flags: u8, plain: &[u8]) -> Result<Vec<u8>> {
        match &self.cipher {
            None => Ok(plain.to_vec()),
            Some((cipher, salt)) => {
                let nonce = Sealer::nonce(salt, index)?;
                let aad = self.aad(index, flags);
                cipher
                    .encrypt(
                        Nonce::from_slice(&nonce),
                        Payload {
                            msg: plain,
                            aad: &aad,
                        },
                    )
                    .map_err(|_| Error::Invalid("encryption failed".into()))
            }
        }
    }

    pub(crate) fn open(&self, index: u64, flags: u8, stored: Vec<u8>) -> Result<Vec<u8>> {
        match &self.cipher {
            None => Ok(stored),
            Some((cipher, salt)) => {
                let nonce = Sealer::nonce(salt, index)?;
                let aad = self.aad(index, flags);
                cipher
                    .decrypt(
                        Nonce::from_slice(&nonce),
                        Payload {
                            msg: &stored,
                            aad: &aad,
                        },
                    )
                    .map_err(|_| {
                        Error::Corrupt(format!(
                            "chunk {index} fails authentication (damaged, reordered or spliced)"
                        ))
                    })
            }
        }
    }
}
