//! WAL_READ, WAL_STATS.

use super::reply::{Answer, Ctx, engine, to_value, value};
use rstmdb_protocol::{IoStats, WalReadParams, WalReadResult, WalRecord, WalStatsResult};
use serde_json::Value;

pub(super) fn wal_read(ctx: Ctx<'_>, p: WalReadParams) -> Answer {
    let limit = p.limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
    let page = engine(ctx.db.wal_read(p.from_offset, limit))?;
    debug_assert!(
        page.records.windows(2).all(|w| w[0].offset < w[1].offset),
        "WAL_READ records must ascend"
    );
    let records = page
        .records
        .into_iter()
        .map(|r| WalRecord {
            sequence: r.offset,
            offset: r.offset,
            entry: r.entry,
        })
        .collect();
    let result = WalReadResult {
        records,
        next_offset: page.next_offset,
    };
    value(to_value(&result)?, None)
}

pub(super) async fn wal_stats(ctx: Ctx<'_>) -> Answer {
    let s = engine(ctx.db.wal_stats().await)?;
    let result = WalStatsResult {
        entry_count: s.entry_count,
        segment_count: s.segment_count,
        total_size_bytes: s.total_size_bytes,
        latest_offset: Some(s.latest_offset),
        io_stats: IoStats {
            bytes_written: s.bytes_written,
            bytes_read: s.bytes_read,
            writes: s.writes,
            reads: s.reads,
            fsyncs: s.fsyncs,
        },
        earliest_offset: s.earliest_offset,
        checkpoint_offset: Some(s.checkpoint_offset),
    };
    let mut v = to_value(&result)?;
    // Added after the client's `IoStats` was fixed; kept out of it so the CLI's `--json`
    // output stays as it was.
    if let Some(io) = v.get_mut("io_stats").and_then(Value::as_object_mut) {
        io.insert("archive_failures".into(), Value::from(s.archive_failures));
    }
    value(v, None)
}
