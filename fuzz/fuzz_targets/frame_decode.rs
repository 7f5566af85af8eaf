//! Binary RCP frames (`FrameCodec`) and the server's mixed frame/JSON-line decoder
//! (`InboundCodec`) on arbitrary bytes.
//!
//! Besides "never panics", two properties: the bytes arriving in small pieces decode to
//! exactly what they decode to in one piece (same messages, same error), and every decoded
//! payload survives an encode/decode round trip.
//!
//! Input: byte 0 picks the payload limit (small limits reach the oversize checks with short
//! inputs), byte 1 the chunk size of the piecewise run, the rest is the stream.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rstmdb_protocol::{FrameCodec, FrameError, InboundCodec, MAX_FRAME_PAYLOAD_BYTES};
use tokio_util::codec::{Decoder, Encoder};

/// What a decoder made of a stream: the messages, then how it ended.
#[derive(Debug, PartialEq)]
struct Outcome {
    messages: Vec<(u16, Vec<u8>)>,
    error: Option<std::mem::Discriminant<FrameError>>,
}

/// Feeds `stream` to a decoder in pieces of `chunk` bytes (0 = all at once), as a socket
/// would, then signals end of stream; stops at the first error as the server does.
fn run<D, F>(mut decoder: D, stream: &[u8], chunk: usize, item: F) -> Outcome
where
    D: Decoder<Error = FrameError>,
    F: Fn(D::Item) -> (u16, Vec<u8>),
{
    let mut out = Outcome {
        messages: Vec::new(),
        error: None,
    };
    let mut buf = BytesMut::new();
    let pieces: Vec<&[u8]> = if chunk == 0 {
        vec![stream]
    } else {
        stream.chunks(chunk).collect()
    };
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(m)) => out.messages.push(item(m)),
                Ok(None) => break,
                Err(e) => {
                    out.error = Some(std::mem::discriminant(&e));
                    return out;
                }
            }
        }
    }
    // At end of stream tokio keeps calling decode_eof until it yields nothing.
    for _ in 0..=stream.len() {
        match decoder.decode_eof(&mut buf) {
            Ok(Some(m)) => out.messages.push(item(m)),
            Ok(None) => return out,
            Err(e) => {
                out.error = Some(std::mem::discriminant(&e));
                return out;
            }
        }
    }
    panic!("decode_eof kept returning messages past the end of the input");
}

fuzz_target!(|data: &[u8]| {
    let [limit_knob, chunk_knob, stream @ ..] = data else {
        return;
    };
    let max = match limit_knob {
        0..=127 => usize::from(*limit_knob) * 2,
        _ => MAX_FRAME_PAYLOAD_BYTES,
    };
    let chunk = usize::from(chunk_knob % 32);

    let frame = |f: rstmdb_protocol::Frame| (f.flags, f.payload.to_vec());
    let whole = run(FrameCodec::with_max_payload_bytes(max), stream, 0, frame);
    let pieces = run(
        FrameCodec::with_max_payload_bytes(max),
        stream,
        chunk,
        frame,
    );
    assert_eq!(
        whole, pieces,
        "frames: piecewise decoding differs (chunk {chunk})"
    );

    // Every frame we accept can be re-encoded within the same limit and decodes back.
    let codec = FrameCodec::with_max_payload_bytes(max);
    for (_, payload) in &whole.messages {
        let mut buf = BytesMut::new();
        let mut enc = codec;
        enc.encode(&payload[..], &mut buf)
            .unwrap_or_else(|e| panic!("re-encoding an accepted payload failed: {e}"));
        let back = enc
            .decode(&mut buf)
            .ok()
            .flatten()
            .map(|f| f.payload.to_vec());
        assert_eq!(back.as_ref(), Some(payload), "frame round trip");
        assert!(buf.is_empty());
    }

    let inbound = |m: rstmdb_protocol::Inbound| (m.kind as u16, m.payload.to_vec());
    let whole = run(
        InboundCodec::with_max_payload_bytes(max),
        stream,
        0,
        inbound,
    );
    let pieces = run(
        InboundCodec::with_max_payload_bytes(max),
        stream,
        chunk,
        inbound,
    );
    assert_eq!(
        whole, pieces,
        "inbound: piecewise decoding differs (chunk {chunk})"
    );
    for (_, payload) in &whole.messages {
        assert!(payload.len() <= max, "inbound message over the limit");
    }
});
