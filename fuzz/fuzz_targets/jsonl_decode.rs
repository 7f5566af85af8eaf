//! JSON lines (`JsonlCodec`) on arbitrary bytes: never panics, decodes the same whether the
//! bytes arrive at once or in pieces (its `scanned` bookkeeping must not skip a `\n`), never
//! yields a line over the limit or one containing `\n`, and every payload it accepts
//! round-trips through the encoder.
//!
//! Input: byte 0 picks the line limit, byte 1 the chunk size, the rest is the stream.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rstmdb_protocol::{FrameError, JsonlCodec, MAX_FRAME_PAYLOAD_BYTES};
use tokio_util::codec::{Decoder, Encoder};

#[derive(Debug, PartialEq)]
struct Outcome {
    lines: Vec<Vec<u8>>,
    error: Option<std::mem::Discriminant<FrameError>>,
}

fn run(max: usize, stream: &[u8], chunk: usize) -> Outcome {
    let mut codec = JsonlCodec::with_max_line_bytes(max);
    let mut out = Outcome {
        lines: Vec::new(),
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
            match codec.decode(&mut buf) {
                Ok(Some(line)) => out.lines.push(line.to_vec()),
                Ok(None) => break,
                Err(e) => {
                    out.error = Some(std::mem::discriminant(&e));
                    return out;
                }
            }
        }
    }
    for _ in 0..=stream.len() {
        match codec.decode_eof(&mut buf) {
            Ok(Some(line)) => out.lines.push(line.to_vec()),
            Ok(None) => return out,
            Err(e) => {
                out.error = Some(std::mem::discriminant(&e));
                return out;
            }
        }
    }
    panic!("decode_eof kept returning lines past the end of the input");
}

fuzz_target!(|data: &[u8]| {
    let [limit_knob, chunk_knob, stream @ ..] = data else {
        return;
    };
    let max = match limit_knob {
        0..=127 => usize::from(*limit_knob),
        _ => MAX_FRAME_PAYLOAD_BYTES,
    };
    let chunk = usize::from(chunk_knob % 32);

    let whole = run(max, stream, 0);
    let pieces = run(max, stream, chunk);
    assert_eq!(whole, pieces, "piecewise decoding differs (chunk {chunk})");

    let codec = JsonlCodec::with_max_line_bytes(max);
    for line in &whole.lines {
        assert!(line.len() <= max, "line over the limit: {}", line.len());
        assert!(!line.contains(&b'\n'), "line contains a newline");
        assert!(
            !line
                .iter()
                .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')),
            "blank line yielded"
        );
        // A trailing `\r` is stripped on decode by design, so it cannot round-trip.
        if line.last() == Some(&b'\r') {
            continue;
        }
        let mut buf = BytesMut::new();
        let mut enc = codec;
        enc.encode(&line[..], &mut buf)
            .unwrap_or_else(|e| panic!("re-encoding an accepted line failed: {e}"));
        let back = enc.decode(&mut buf).ok().flatten().map(|l| l.to_vec());
        assert_eq!(back.as_ref(), Some(line), "line round trip");
    }
});
