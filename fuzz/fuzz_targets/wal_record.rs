//! The WAL record decoder: the scan recovery runs over a segment file (header shape, CRC,
//! version/flags/seq checks), then `WalEntry` decoding of every payload it accepts.
//!
//! Properties: never panics; the valid prefix never exceeds the image; a scan that stops
//! early says why, one that does not covers every byte; records come out with consecutive
//! seqs from the segment's first seq, each as long as its header (24 bytes for version 1 =
//! term 0, 32 for version 2 = any other term) plus its payload; every entry that decodes
//! re-encodes to an equal entry.
//!
//! Input: byte 0 is a mode. Bit 0 set = before scanning, walk the image and write the correct
//! CRC into each record header of either version (libFuzzer cannot forge CRC-32C, so without
//! this nearly every mutation would stop at the checksum and the checks and entry decoding
//! behind it would go unexercised). Bits 1..8 add to the first seq (1 + byte >> 1). The rest
//! is the image.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rstmdb_storage::WalEntry;
use rstmdb_storage::wal::{RECORD_HEADER_BYTES, RECORD_HEADER_V2_BYTES, scan_segment_image};

/// Header size of the record whose version byte is `version` (docs/wal-format.md): 32 for
/// version 2, 24 otherwise.
fn header_len(version: u8) -> usize {
    if version == 2 {
        RECORD_HEADER_V2_BYTES
    } else {
        RECORD_HEADER_BYTES
    }
}

/// Header layouts (docs/wal-format.md): payload_len at 8..12 (LE), the CRC in the last 4
/// header bytes, covering the header bytes before it and then the payload.
fn fix_crcs(image: &mut [u8]) {
    let mut at = 0usize;
    while image.len().saturating_sub(at) >= RECORD_HEADER_BYTES {
        let hlen = header_len(image[at + 4]);
        if image.len() - at < hlen {
            return;
        }
        let h = &image[at..at + hlen];
        let payload_len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
        let end = at + hlen + payload_len;
        if end > image.len() {
            return;
        }
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&image[at..at + hlen - 4]),
            &image[at + hlen..end],
        );
        image[at + hlen - 4..at + hlen].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, image)) = data.split_first() else {
        return;
    };
    let mut image = image.to_vec();
    if mode & 1 == 1 {
        fix_crcs(&mut image);
    }
    let first_seq = 1 + u64::from(mode >> 1);

    let mut next_seq = first_seq;
    let mut record_bytes = 0u64;
    let scan = scan_segment_image(&image, first_seq, |seq, term, payload| {
        assert_eq!(seq, next_seq, "records out of sequence");
        next_seq += 1;
        // A term above 0 is only ever read from a version 2 (32-byte) header.
        let hlen = if term == 0 {
            RECORD_HEADER_BYTES
        } else {
            RECORD_HEADER_V2_BYTES
        };
        record_bytes += (hlen + payload.len()) as u64;
        if let Ok(entry) = WalEntry::from_bytes(payload) {
            let bytes = entry
                .to_bytes()
                .unwrap_or_else(|e| panic!("a decoded entry does not serialise: {e}"));
            let again = WalEntry::from_bytes(&bytes)
                .unwrap_or_else(|e| panic!("a re-encoded entry does not decode: {e}"));
            assert_eq!(again, entry, "entry round trip");
        }
    });

    assert_eq!(scan.records, next_seq - first_seq, "record count");
    assert_eq!(
        scan.valid_len, record_bytes,
        "valid length is not the sum of the records"
    );
    assert!(
        scan.valid_len <= image.len() as u64,
        "valid prefix past the end"
    );
    match &scan.invalid {
        None => assert_eq!(scan.valid_len, image.len() as u64, "stopped early silently"),
        Some(_) => assert!(
            scan.valid_len < image.len() as u64,
            "invalid record at the end"
        ),
    }
    if scan.definite {
        assert!(
            scan.invalid.is_some(),
            "definite corruption without a reason"
        );
    }
});
