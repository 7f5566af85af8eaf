//! Binary frames: the header checks of protocol.md §2.4, in order, on hand-built bytes.

// Helpers outside `#[test]` fns unwrap too: in a test, a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::{BufMut, Bytes, BytesMut};
use rstmdb_protocol::{
    FRAME_HEADER_BYTES, Frame, FrameCodec, FrameError, MAX_FRAME_PAYLOAD_BYTES, crc32c, flags,
};
use tokio_util::codec::{Decoder, Encoder};

const PING: &[u8] = br#"{"type":"request","id":"1","op":"PING","params":{}}"#;

/// A frame with every header field chosen by the test; `crc: None` computes the right one.
fn raw_frame(version: u16, flags: u16, ext: &[u8], payload: &[u8], crc: Option<u32>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"RCPX");
    out.put_u16(version);
    out.put_u16(flags);
    out.put_u16(u16::try_from(ext.len()).unwrap());
    out.put_u32(u32::try_from(payload.len()).unwrap());
    out.put_u32(crc.unwrap_or_else(|| crc32c(payload)));
    out.extend_from_slice(ext);
    out.extend_from_slice(payload);
    out
}

fn valid_frame(payload: &[u8]) -> Vec<u8> {
    raw_frame(1, flags::CRC_PRESENT, &[], payload, None)
}

/// A header announcing `payload_len` bytes, with no body.
fn header_only(payload_len: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"RCPX");
    out.put_u16(1);
    out.put_u16(0);
    out.put_u16(0);
    out.put_u32(payload_len);
    out.put_u32(0);
    out
}

fn decode_all(codec: &mut FrameCodec, bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    while let Some(frame) = codec.decode_eof(&mut buf)? {
        frames.push(frame);
    }
    Ok(frames)
}

#[test]
fn ping_example_encodes_byte_exactly() {
    let mut dst = BytesMut::new();
    FrameCodec::new().encode(PING, &mut dst).unwrap();

    let mut expected = vec![
        0x52, 0x43, 0x50, 0x58, // RCPX
        0x00, 0x01, // version 1
        0x00, 0x01, // flags CRC_PRESENT
        0x00, 0x00, // header_len 0
        0x00, 0x00, 0x00, 0x33, // payload_len 51
        0xc3, 0x20, 0x09, 0xc4, // crc32c
    ];
    expected.extend_from_slice(PING);
    assert_eq!(PING.len(), 51);
    assert_eq!(&dst[..], &expected[..]);
}

#[test]
fn ping_example_decodes() {
    let frames = decode_all(&mut FrameCodec::new(), &valid_frame(PING)).unwrap();
    assert_eq!(
        frames,
        [Frame {
            flags: flags::CRC_PRESENT,
            payload: BytesMut::from(PING)
        }]
    );
}

#[test]
fn bad_magic_is_rejected() {
    let mut bytes = valid_frame(PING);
    bytes[..4].copy_from_slice(b"RCP1");
    let error = decode_all(&mut FrameCodec::new(), &bytes).unwrap_err();
    assert!(matches!(error, FrameError::BadMagic(magic) if &magic == b"RCP1"));
}

#[test]
fn unsupported_version_is_rejected() {
    let bytes = raw_frame(2, flags::CRC_PRESENT, &[], PING, None);
    let error = decode_all(&mut FrameCodec::new(), &bytes).unwrap_err();
    assert!(matches!(error, FrameError::UnsupportedVersion(2)));
}

#[test]
fn reserved_flag_bits_are_rejected() {
    for bit in 4..16 {
        let flag = 1u16 << bit;
        let bytes = raw_frame(1, flags::CRC_PRESENT | flag, &[], PING, None);
        let error = decode_all(&mut FrameCodec::new(), &bytes).unwrap_err();
        assert!(
            matches!(error, FrameError::InvalidFlags(f) if f == flags::CRC_PRESENT | flag),
            "bit {bit}: {error:?}"
        );
    }
}

#[test]
fn crc_mismatch_is_rejected() {
    let bytes = raw_frame(1, flags::CRC_PRESENT, &[], PING, Some(0xdead_beef));
    let error = decode_all(&mut FrameCodec::new(), &bytes).unwrap_err();
    assert!(matches!(
        error,
        FrameError::CrcMismatch {
            expected: 0xdead_beef,
            actual: 0xc320_09c4
        }
    ));
}

#[test]
fn flipped_payload_bit_is_caught_by_crc() {
    let mut bytes = valid_frame(PING);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let error = decode_all(&mut FrameCodec::new(), &bytes).unwrap_err();
    assert!(matches!(error, FrameError::CrcMismatch { .. }));
}

#[test]
fn crc_is_ignored_when_flag_is_clear() {
    let bytes = raw_frame(1, 0, &[], PING, Some(0xdead_beef));
    let frames = decode_all(&mut FrameCodec::new(), &bytes).unwrap();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].payload, PING);
    assert_eq!(frames[0].flags, 0);
}

#[test]
fn compressed_stream_and_end_stream_flags_are_accepted_and_ignored() {
    for flag in [
        flags::COMPRESSED,
        flags::STREAM,
        flags::END_STREAM,
        flags::KNOWN,
    ] {
        let bytes = raw_frame(1, flag | flags::CRC_PRESENT, &[], PING, None);
        let frames = decode_all(&mut FrameCodec::new(), &bytes).unwrap();
        assert_eq!(frames[0].payload, PING, "flag {flag:#x}");
    }
}

#[test]
fn header_extension_is_skipped() {
    let ext = b"opaque extension bytes, even RCPX-looking ones: RCPX";
    let bytes = raw_frame(1, flags::CRC_PRESENT, ext, PING, None);
    let frames = decode_all(&mut FrameCodec::new(), &bytes).unwrap();
    assert_eq!(frames[0].payload, PING);
}

#[test]
fn maximum_header_extension_is_skipped() {
    let ext = vec![0xAB; usize::from(u16::MAX)];
    let bytes = raw_frame(1, flags::CRC_PRESENT, &ext, PING, None);
    let frames = decode_all(&mut FrameCodec::new(), &bytes).unwrap();
    assert_eq!(frames[0].payload, PING);
}

#[test]
fn empty_payload_is_a_frame() {
    let frames = decode_all(&mut FrameCodec::new(), &valid_frame(b"")).unwrap();
    assert_eq!(frames[0].payload, Bytes::new());
}

#[test]
fn frames_fed_one_byte_at_a_time_decode() {
    let payloads: [&[u8]; 4] = [PING, b"", b"{\"x\":1}", &[0xFF; 300]];
    let mut stream = Vec::new();
    for (i, payload) in payloads.iter().enumerate() {
        let ext = vec![7u8; i * 5];
        stream.extend(raw_frame(1, flags::CRC_PRESENT, &ext, payload, None));
    }

    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    for byte in stream {
        buf.put_u8(byte);
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            decoded.push(frame.payload);
        }
    }
    assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
    assert_eq!(decoded, payloads);
}

#[test]
fn nothing_is_decoded_before_the_header_is_complete() {
    let bytes = valid_frame(PING);
    let mut codec = FrameCodec::new();
    for len in 0..bytes.len() {
        let mut buf = BytesMut::from(&bytes[..len]);
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            None,
            "prefix of {len} bytes"
        );
        assert_eq!(buf.len(), len, "a partial frame is left in the buffer");
    }
}

#[test]
fn eof_inside_a_frame_is_truncated() {
    let bytes = valid_frame(PING);
    for len in [
        1,
        FRAME_HEADER_BYTES - 1,
        FRAME_HEADER_BYTES,
        bytes.len() - 1,
    ] {
        let error = decode_all(&mut FrameCodec::new(), &bytes[..len]).unwrap_err();
        assert!(
            matches!(error, FrameError::Truncated { buffered } if buffered == len),
            "{len}: {error:?}"
        );
    }
}

#[test]
fn eof_on_a_frame_boundary_is_clean() {
    let mut stream = valid_frame(PING);
    stream.extend(valid_frame(b"{}"));
    let frames = decode_all(&mut FrameCodec::new(), &stream).unwrap();
    assert_eq!(frames.len(), 2);
}

#[test]
fn header_checks_run_in_protocol_order() {
    // Bad magic wins over a bad version, flags and length.
    let mut bytes = header_only(u32::MAX);
    bytes[..4].copy_from_slice(b"XXXX");
    bytes[5] = 9;
    bytes[6] = 0xFF;
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(matches!(
        FrameCodec::new().decode(&mut buf),
        Err(FrameError::BadMagic(_))
    ));

    // Then the version, before flags and length.
    let mut bytes = header_only(u32::MAX);
    bytes[5] = 9;
    bytes[6] = 0xFF;
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(matches!(
        FrameCodec::new().decode(&mut buf),
        Err(FrameError::UnsupportedVersion(9))
    ));

    // Then the flags, before the length.
    let mut bytes = header_only(u32::MAX);
    bytes[6] = 0xFF;
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(matches!(
        FrameCodec::new().decode(&mut buf),
        Err(FrameError::InvalidFlags(0xFF00))
    ));
}

#[test]
fn payload_of_exactly_16_mib_is_accepted_from_the_header() {
    let limit = u32::try_from(MAX_FRAME_PAYLOAD_BYTES).unwrap();
    let mut buf = BytesMut::from(&header_only(limit)[..]);
    // No error: the codec waits for the body.
    assert_eq!(FrameCodec::new().decode(&mut buf).unwrap(), None);
    // …without reserving the whole announced body up front.
    assert!(buf.capacity() < MAX_FRAME_PAYLOAD_BYTES);
}

#[test]
fn payload_of_16_mib_plus_one_is_rejected_from_the_header_alone() {
    let limit = u32::try_from(MAX_FRAME_PAYLOAD_BYTES).unwrap();
    let mut buf = BytesMut::from(&header_only(limit + 1)[..]);
    let error = FrameCodec::new().decode(&mut buf).unwrap_err();
    assert!(matches!(
        error,
        FrameError::PayloadTooLarge { len, max }
            if len == u64::from(limit) + 1 && max == u64::from(limit)
    ));
}

#[test]
fn payload_of_exactly_16_mib_round_trips() {
    let payload = vec![b'x'; MAX_FRAME_PAYLOAD_BYTES];
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::new();
    codec.encode(&payload[..], &mut buf).unwrap();
    let frame = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(frame.payload.len(), MAX_FRAME_PAYLOAD_BYTES);
    assert!(buf.is_empty());
}

#[test]
fn encoding_over_the_limit_fails_and_writes_nothing() {
    let payload = vec![b'x'; MAX_FRAME_PAYLOAD_BYTES + 1];
    let mut buf = BytesMut::new();
    let error = FrameCodec::new()
        .encode(&payload[..], &mut buf)
        .unwrap_err();
    assert!(matches!(error, FrameError::PayloadTooLarge { .. }));
    assert!(buf.is_empty());
}

#[test]
fn configured_limit_applies_to_both_directions() {
    let mut codec = FrameCodec::with_max_payload_bytes(4);
    assert_eq!(codec.max_payload_bytes(), 4);

    let mut buf = BytesMut::new();
    codec.encode(Bytes::from_static(b"1234"), &mut buf).unwrap();
    assert!(matches!(
        codec.encode(Bytes::from_static(b"12345"), &mut buf),
        Err(FrameError::PayloadTooLarge { len: 5, max: 4 })
    ));
    assert_eq!(codec.decode(&mut buf).unwrap().unwrap().payload, "1234");

    let mut buf = BytesMut::from(&valid_frame(b"12345")[..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(FrameError::PayloadTooLarge { len: 5, max: 4 })
    ));
}

#[test]
fn output_frames_always_carry_version_1_crc_present_and_no_extension() {
    let mut buf = BytesMut::new();
    FrameCodec::new()
        .encode(Bytes::from_static(b"{}"), &mut buf)
        .unwrap();
    assert_eq!(&buf[4..6], &[0, 1]);
    assert_eq!(&buf[6..8], &[0, 1]);
    assert_eq!(&buf[8..10], &[0, 0]);
    assert_eq!(&buf[14..18], &crc32c(b"{}").to_be_bytes());
}

#[test]
fn io_errors_convert_for_the_codec_traits() {
    let error = FrameError::from(std::io::Error::other("reset"));
    assert!(matches!(error, FrameError::Io(_)));
}

#[test]
fn a_decoded_payload_is_the_received_bytes_and_can_be_wiped_in_place() {
    // Issue 18 finding 8: the server wipes an AUTH request's bytes once decoded. A frozen
    // `Bytes` payload shared the read buffer's allocation and could not be written, so the
    // wipe never happened; the payload is now a `BytesMut` owning its range of that buffer.
    let secret = br#"{"type":"request","id":"1","op":"AUTH","params":{"method":"bearer","token":"s3cr3t-token"}}"#;
    let mut wire = valid_frame(secret);
    wire.extend_from_slice(&valid_frame(PING));
    let mut src = BytesMut::from(&wire[..]);
    let (start, end) = (src.as_ptr() as usize, src.as_ptr() as usize + src.len());
    let mut codec = FrameCodec::new();
    let mut frame = codec.decode(&mut src).unwrap().unwrap();
    let at = frame.payload.as_ptr() as usize;
    assert!(
        (start..end).contains(&at),
        "the payload is the read buffer's bytes, not a copy"
    );
    frame.payload.as_mut().fill(0);
    assert!(frame.payload.iter().all(|&b| b == 0));
    // The rest of the buffer is untouched and still decodes.
    let next = codec.decode(&mut src).unwrap().unwrap();
    assert_eq!(&next.payload[..], PING);
}
