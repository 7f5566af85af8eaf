//! JSON lines, mixed frame/line input, and mode-switching output.

// Helpers outside `#[test]` fns unwrap too: in a test, a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::{Bytes, BytesMut};
use rstmdb_protocol::{
    FrameCodec, FrameError, Inbound, InboundCodec, JsonlCodec, OutboundCodec, WireKind, WireMode,
};
use tokio_util::codec::{Decoder, Encoder};

fn lines(codec: &mut JsonlCodec, input: &[u8]) -> Result<Vec<Bytes>, FrameError> {
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    while let Some(line) = codec.decode_eof(&mut buf)? {
        out.push(line.freeze());
    }
    Ok(out)
}

fn inbound(codec: &mut InboundCodec, input: &[u8]) -> Result<Vec<Inbound>, FrameError> {
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    while let Some(message) = codec.decode_eof(&mut buf)? {
        out.push(message);
    }
    Ok(out)
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    FrameCodec::new().encode(payload, &mut buf).unwrap();
    buf.to_vec()
}

#[test]
fn jsonl_splits_on_newlines() {
    let out = lines(&mut JsonlCodec::new(), b"{\"a\":1}\n{\"b\":2}\n").unwrap();
    assert_eq!(out, ["{\"a\":1}", "{\"b\":2}"]);
}

#[test]
fn jsonl_tolerates_crlf_and_skips_blank_lines() {
    let out = lines(
        &mut JsonlCodec::new(),
        b"\n\r\n{\"a\":1}\r\n  \n\t\r\n{\"b\":2}\n\n",
    )
    .unwrap();
    assert_eq!(out, ["{\"a\":1}", "{\"b\":2}"]);
}

#[test]
fn jsonl_unterminated_last_line_is_truncated() {
    let error = lines(&mut JsonlCodec::new(), b"{\"a\":1}\n{\"b\":").unwrap_err();
    assert!(matches!(error, FrameError::Truncated { buffered: 5 }));
}

#[test]
fn jsonl_trailing_whitespace_at_eof_is_clean() {
    let out = lines(&mut JsonlCodec::new(), b"{\"a\":1}\n  \r").unwrap();
    assert_eq!(out, ["{\"a\":1}"]);
}

#[test]
fn jsonl_line_at_the_limit_is_accepted() {
    let out = lines(&mut JsonlCodec::with_max_line_bytes(4), b"1234\r\n5678\n").unwrap();
    assert_eq!(out, ["1234", "5678"]);
}

#[test]
fn jsonl_line_over_the_limit_is_rejected() {
    let error = lines(&mut JsonlCodec::with_max_line_bytes(4), b"12345\n").unwrap_err();
    assert!(matches!(error, FrameError::LineTooLong { len: 5, max: 4 }));
}

#[test]
fn jsonl_line_over_the_limit_is_rejected_before_its_newline_arrives() {
    let mut codec = JsonlCodec::with_max_line_bytes(4);
    let mut buf = BytesMut::from(&b"12345"[..]);
    // Could still be "1234\r\n": wait.
    assert_eq!(codec.decode(&mut buf).unwrap(), None);
    buf.extend_from_slice(b"6");
    assert!(matches!(
        codec.decode(&mut buf),
        Err(FrameError::LineTooLong { len: 6, max: 4 })
    ));
}

#[test]
fn jsonl_lines_fed_one_byte_at_a_time_decode() {
    let input = b"{\"a\":1}\r\n\n{\"b\":\"x y\"}\n";
    let mut codec = JsonlCodec::new();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for &byte in input {
        buf.extend_from_slice(&[byte]);
        while let Some(line) = codec.decode(&mut buf).unwrap() {
            out.push(line);
        }
    }
    assert_eq!(out, ["{\"a\":1}", "{\"b\":\"x y\"}"]);
}

#[test]
fn jsonl_encoder_appends_a_newline() {
    let mut buf = BytesMut::new();
    JsonlCodec::new()
        .encode(&b"{\"a\":1}"[..], &mut buf)
        .unwrap();
    assert_eq!(&buf[..], b"{\"a\":1}\n");
}

#[test]
fn jsonl_encoder_refuses_raw_newlines() {
    let mut buf = BytesMut::new();
    let error = JsonlCodec::new()
        .encode(&b"{\n}"[..], &mut buf)
        .unwrap_err();
    assert!(matches!(error, FrameError::NewlineInPayload));
    assert!(buf.is_empty());
}

#[test]
fn jsonl_encoder_refuses_oversized_payloads() {
    let mut buf = BytesMut::new();
    let error = JsonlCodec::with_max_line_bytes(2)
        .encode(&b"{ }"[..], &mut buf)
        .unwrap_err();
    assert!(matches!(
        error,
        FrameError::PayloadTooLarge { len: 3, max: 2 }
    ));
}

#[test]
fn inbound_accepts_frames_and_lines_interleaved() {
    let mut input = frame(b"{\"n\":1}");
    input.extend_from_slice(b"{\"n\":2}\n");
    input.extend(frame(b"{\"n\":3}"));
    input.extend_from_slice(b"\r\n  {\"n\":4}\r\n");
    input.extend(frame(b"{\"n\":5}"));

    let out = inbound(&mut InboundCodec::new(), &input).unwrap();
    let kinds: Vec<_> = out.iter().map(|m| m.kind).collect();
    let payloads: Vec<_> = out.iter().map(|m| m.payload.clone()).collect();
    assert_eq!(
        kinds,
        [
            WireKind::Frame,
            WireKind::Line,
            WireKind::Frame,
            WireKind::Line,
            WireKind::Frame
        ]
    );
    assert_eq!(
        payloads,
        [
            "{\"n\":1}",
            "{\"n\":2}",
            "{\"n\":3}",
            "{\"n\":4}",
            "{\"n\":5}"
        ]
    );
}

#[test]
fn inbound_mixed_input_fed_one_byte_at_a_time_decodes() {
    let mut input = b"\n{\"n\":1}\n".to_vec();
    input.extend(frame(b"{\"n\":2}"));
    input.extend_from_slice(b"{\"n\":3}\r\n");

    let mut codec = InboundCodec::new();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for &byte in &input {
        buf.extend_from_slice(&[byte]);
        while let Some(message) = codec.decode(&mut buf).unwrap() {
            out.push((message.kind, message.payload));
        }
    }
    assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
    assert_eq!(
        out,
        [
            (WireKind::Line, BytesMut::from(&b"{\"n\":1}"[..])),
            (WireKind::Frame, BytesMut::from(&b"{\"n\":2}"[..])),
            (WireKind::Line, BytesMut::from(&b"{\"n\":3}"[..])),
        ]
    );
}

#[test]
fn inbound_rejects_an_unknown_first_byte() {
    for input in [&b"[1,2]\n"[..], b"GET / HTTP/1.1\r\n", b"\x00", b"\n\nx"] {
        let error = inbound(&mut InboundCodec::new(), input).unwrap_err();
        let expected = input
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .copied()
            .unwrap();
        assert!(
            matches!(error, FrameError::UnknownMessageStart(b) if b == expected),
            "{input:?}: {error:?}"
        );
    }
}

#[test]
fn inbound_frame_errors_pass_through() {
    let mut input = frame(b"{}");
    input[3] = b'Y';
    let error = inbound(&mut InboundCodec::new(), &input).unwrap_err();
    assert!(matches!(error, FrameError::BadMagic(m) if &m == b"RCPY"));
}

#[test]
fn inbound_eof_inside_a_message_is_truncated() {
    let error = inbound(&mut InboundCodec::new(), b"{\"n\":1}\n{\"n\"").unwrap_err();
    assert!(matches!(error, FrameError::Truncated { buffered: 4 }));

    let partial = frame(b"{}");
    let error = inbound(&mut InboundCodec::new(), &partial[..10]).unwrap_err();
    assert!(matches!(error, FrameError::Truncated { buffered: 10 }));
}

#[test]
fn inbound_whitespace_only_input_is_clean_at_eof() {
    assert_eq!(inbound(&mut InboundCodec::new(), b" \r\n\t\n").unwrap(), []);
}

#[test]
fn inbound_limit_applies_to_lines_and_frames() {
    let mut codec = InboundCodec::with_max_payload_bytes(3);
    let error = inbound(&mut codec, b"{ } \n").unwrap_err();
    assert!(matches!(error, FrameError::LineTooLong { len: 4, max: 3 }));

    let mut codec = InboundCodec::with_max_payload_bytes(3);
    let error = inbound(&mut codec, &frame(b"{ } ")).unwrap_err();
    assert!(matches!(
        error,
        FrameError::PayloadTooLarge { len: 4, max: 3 }
    ));
}

#[test]
fn outbound_switches_between_frames_and_lines() {
    let mut codec = OutboundCodec::new();
    assert_eq!(codec.mode(), WireMode::BinaryJson);

    let mut buf = BytesMut::new();
    codec
        .encode(Bytes::from_static(b"{\"n\":1}"), &mut buf)
        .unwrap();
    assert_eq!(&buf[..], &frame(b"{\"n\":1}")[..]);

    codec.set_mode(WireMode::Jsonl);
    let mut buf = BytesMut::new();
    codec
        .encode(Bytes::from_static(b"{\"n\":2}"), &mut buf)
        .unwrap();
    assert_eq!(&buf[..], b"{\"n\":2}\n");

    codec.set_mode(WireMode::BinaryJson);
    let mut buf = BytesMut::new();
    codec.encode(&b"{\"n\":3}"[..], &mut buf).unwrap();
    assert_eq!(&buf[..], &frame(b"{\"n\":3}")[..]);
}

#[test]
fn outbound_output_reads_back_through_inbound() {
    let mut out = OutboundCodec::new();
    let mut buf = BytesMut::new();
    out.encode(Bytes::from_static(b"{\"n\":1}"), &mut buf)
        .unwrap();
    out.set_mode(WireMode::Jsonl);
    out.encode(Bytes::from_static(b"{\"n\":2}"), &mut buf)
        .unwrap();

    let messages = inbound(&mut InboundCodec::new(), &buf).unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0].kind, WireKind::Frame);
    assert_eq!(messages[1].kind, WireKind::Line);
}

#[test]
fn outbound_limit_applies_in_both_modes() {
    let mut codec = OutboundCodec::with_max_payload_bytes(2);
    let mut buf = BytesMut::new();
    assert!(matches!(
        codec.encode(&b"{ }"[..], &mut buf),
        Err(FrameError::PayloadTooLarge { .. })
    ));
    codec.set_mode(WireMode::Jsonl);
    assert!(matches!(
        codec.encode(&b"{ }"[..], &mut buf),
        Err(FrameError::PayloadTooLarge { .. })
    ));
    assert!(buf.is_empty());
}
