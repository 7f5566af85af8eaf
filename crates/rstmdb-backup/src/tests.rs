#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use serde_json::json;

fn body() -> (Vec<u8>, Counts) {
    let mut out = Vec::new();
    let recs = vec![
        Record::Machine {
            machine: "m".into(),
            version: 1,
            checksum: "00".into(),
            definition: json!({"states": ["a"]}),
            wal_offset: 1,
        },
        Record::Instance {
            instance: json!({"id": "i-1", "machine": "m", "state": "a"}),
        },
        Record::Wal {
            offset: 3,
            entry: json!({"type": "delete_instance", "instance_id": "i-1", "updated_at": 1}),
        },
        Record::Wal {
            offset: 4,
            entry: json!({"type": "flush_all", "timestamp": 2}),
        },
    ];
    for r in &recs {
        encode_record(r, &mut out).unwrap();
    }
    let counts = Counts {
        machines: 1,
        instances: 1,
        idempotency_records: 0,
        wal_records: 2,
    };
    (out, counts)
}

fn file(key: Option<&Key>, pad: usize) -> Vec<u8> {
    let (mut b, counts) = body();
    // A long instance line spreads the body over several chunks.
    if pad > 0 {
        let mut extra = Vec::new();
        encode_record(
            &Record::Instance {
                instance: json!({"id": "big", "machine": "m", "state": "a", "ctx": {"x": "y".repeat(pad)}}),
            },
            &mut extra,
        )
        .unwrap();
        let at = b.iter().position(|&c| c == b'\n').unwrap() + 1;
        b.splice(at..at, extra);
    }
    let mut counts = counts;
    if pad > 0 {
        counts.instances += 1;
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        created_at: 1,
        server_version: "t".into(),
        base_offset: 2,
        wal_end: 4,
        counts,
        body_bytes: b.len() as u64,
        body_sha256: hex(&Sha256::digest(&b)),
        chunk_bytes: 0,
        encryption: None,
    };
    let mut w = Writer::new(Vec::new(), manifest, key).unwrap();
    // Uneven writes.
    for part in b.chunks(7777) {
        w.write_body(part).unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn plain_and_encrypted_files_verify_and_read_back() {
    let key = Key::from_bytes([7; 32]);
    for k in [None, Some(&key)] {
        for pad in [0, 3 * CHUNK_BYTES] {
            let f = file(k, pad);
            let s = verify(&f[..], k, |_| {}).unwrap();
            assert_eq!(s.wal_first, Some(3));
            assert_eq!(s.wal_last, Some(4));
            let recs: Vec<Record> = Reader::open(&f[..], k)
                .unwrap()
                .records()
                .collect::<Result<_>>()
                .unwrap();
            assert_eq!(recs.len(), if pad > 0 { 5 } else { 4 });
        }
    }
}

#[test]
fn encrypted_body_is_not_plaintext_and_needs_the_right_key() {
    let key = Key::from_bytes([7; 32]);
    let f = file(Some(&key), 0);
    assert!(
        !f.windows(4).any(|w| w == b"i-1\""),
        "plaintext in the file"
    );
    assert!(matches!(
        verify(&f[..], None, |_| {}),
        Err(Error::KeyRequired)
    ));
    let wrong = Key::from_bytes([8; 32]);
    assert!(matches!(
        verify(&f[..], Some(&wrong), |_| {}),
        Err(Error::WrongKey { .. })
    ));
}

#[test]
fn every_flipped_byte_and_every_truncation_fails() {
    let key = Key::from_bytes([9; 32]);
    for k in [None, Some(&key)] {
        let f = file(k, 0);
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x01;
            assert!(verify(&g[..], k, |_| {}).is_err(), "flip at {i} passed");
        }
        for len in 0..f.len() {
            assert!(verify(&f[..len], k, |_| {}).is_err(), "cut at {len} passed");
        }
        let mut longer = f.clone();
        longer.push(0);
        assert!(verify(&longer[..], k, |_| {}).is_err());
    }
}

#[test]
fn keys_parse_from_raw_or_hex_and_reject_anything_else() {
    assert!(Key::parse(&[1u8; 32]).is_ok());
    assert!(Key::parse(format!("{}\n", "ab".repeat(32)).as_bytes()).is_ok());
    assert!(Key::parse(b"short").is_err());
    // A 32-character passphrase (key file or RSTMDB_BACKUP_KEY) is not taken as raw bytes.
    let e = Key::parse(b"correct horse battery staple 123").unwrap_err();
    assert!(e.to_string().contains("passphrase"), "{e}");
    assert!(Key::parse("zz".repeat(32).as_bytes()).is_err());
    assert!(Key::load(None, None).unwrap().is_none());
    assert!(Key::load(None, Some("ab".repeat(32))).unwrap().is_some());
    assert!(Key::load(None, Some("nothex".into())).is_err());
}

#[cfg(unix)]
#[test]
fn a_key_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k");
    std::fs::write(&p, "cd".repeat(32)).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(Key::from_file(&p).is_err());
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(Key::from_file(&p).is_ok());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn small_file() -> Vec<u8> {
        file(None, 0)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        /// Any bytes: an error or a summary, never a panic or a huge allocation.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = verify(&bytes[..], None, |_| {});
            let _ = read_manifest(&mut &bytes[..]);
        }

        /// A valid file with any byte changed never verifies.
        #[test]
        fn any_changed_byte_of_a_valid_file_is_caught(pos in any::<prop::sample::Index>(), x in 1u8..=255) {
            let mut f = small_file();
            let i = pos.index(f.len());
            f[i] ^= x;
            let r = verify(&f[..], None, |_| ());
            prop_assert!(r.is_err());
        }

        /// A valid header followed by arbitrary chunk bytes never panics.
        #[test]
        fn valid_header_then_garbage(tail in proptest::collection::vec(any::<u8>(), 0..256)) {
            let f = small_file();
            let (_, m) = read_manifest(&mut &f[..]).unwrap();
            let header_len = 14 + m.len() + 4;
            let mut g = f[..header_len].to_vec();
            g.extend_from_slice(&tail);
            let r = verify(&g[..], None, |_| ());
            prop_assert!(r.is_err());
        }
    }
}
