//! The backup file reader (rstmdb-backup): container header, chunk framing, checksums and
//! AES-256-GCM tags, the body's record lines, and `verify`.
//!
//! Properties: never panics; a file `verify` accepts reads back through `Reader::records`
//! without an error and with as many records as its manifest counts; flipping one bit of a
//! file `verify` accepted makes `verify` refuse it.
//!
//! Input: byte 0 is a mode. Bit 1 set = the backup is encrypted (a fixed key). Bit 0 set =
//! the rest is a *body*: it is wrapped in a valid container whose manifest counts what the
//! body holds (libFuzzer cannot forge CRC-32C, SHA-256 or GCM tags, so without this the record
//! decoding and `verify`'s checks behind them would go unexercised). Bit 0 clear = the rest
//! is a whole file. Bits 2..8 pick the bit flipped for the third property.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rstmdb_backup::{
    Counts, FORMAT_VERSION, Key, Manifest, Reader, Record, Writer, hex, verify,
};
use sha2::{Digest, Sha256};

fn manifest(body: &[u8], counts: Counts) -> Manifest {
    Manifest {
        format_version: FORMAT_VERSION,
        created_at: 1,
        server_version: "fuzz".into(),
        base_offset: 0,
        wal_end: counts.wal_records,
        counts,
        body_bytes: body.len() as u64,
        body_sha256: hex(&Sha256::digest(body)),
        chunk_bytes: 0,
        encryption: None,
    }
}

fn wrap(body: &[u8], counts: Counts, key: Option<&Key>) -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), manifest(body, counts), key)
        .unwrap_or_else(|e| panic!("writing a header: {e}"));
    w.write_body(body).unwrap_or_else(|e| panic!("writing a body: {e}"));
    w.finish().unwrap_or_else(|e| panic!("finishing: {e}"))
}

/// What the body's records count, as far as they decode.
fn count(file: &[u8], key: Option<&Key>) -> Counts {
    let mut c = Counts::default();
    if let Ok(r) = Reader::open(file, key) {
        for rec in r.records().flatten() {
            match rec {
                Record::Machine { .. } => c.machines += 1,
                Record::Instance { .. } => c.instances += 1,
                Record::Idempotency { .. } => c.idempotency_records += 1,
                Record::Wal { .. } => c.wal_records += 1,
            }
        }
    }
    c
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = (mode & 2 != 0).then(|| Key::from_bytes([0x5a; 32]));
    let key = key.as_ref();
    let file = if mode & 1 == 1 {
        let first = wrap(rest, Counts::default(), key);
        wrap(rest, count(&first, key), key)
    } else {
        rest.to_vec()
    };

    let Ok(summary) = verify(file.as_slice(), key, |_| {}) else {
        // Refused input must also be read without a panic.
        if let Ok(r) = Reader::open(file.as_slice(), key) {
            for _ in r.records() {}
        }
        return;
    };
    let reader = Reader::open(file.as_slice(), key)
        .unwrap_or_else(|e| panic!("verified, but does not open: {e}"));
    let mut n = 0u64;
    for rec in reader.records() {
        rec.unwrap_or_else(|e| panic!("verified, but a record fails: {e}"));
        n += 1;
    }
    let c = summary.counts;
    assert_eq!(
        n,
        c.machines + c.instances + c.idempotency_records + c.wal_records,
        "records read differ from the manifest's counts"
    );

    if !file.is_empty() {
        let mut flipped = file.clone();
        let bit = usize::from(mode >> 2);
        let at = (bit * 7919) % flipped.len();
        flipped[at] ^= 1 << (bit % 8);
        assert!(
            verify(flipped.as_slice(), key, |_| {}).is_err(),
            "a flipped bit at byte {at} of a verified file went unnoticed"
        );
    }
});
