//! Human output formats shared by the one-shot commands and the REPL (operations.md §6.3),
//! and writing to stdout without panicking when the reader has gone away.

use std::io::Write;

use rstmdb_client::{Event, ReplicationStatusResult, WalRecord};
use serde::Serialize;
use serde_json::Value;

/// Writes one line to stdout. Returns false when stdout is closed (e.g. piped into `head`),
/// so long-running commands can stop instead of panicking like `println!`.
pub fn line(text: impl AsRef<str>) -> bool {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", text.as_ref()).is_ok() && out.flush().is_ok()
}

/// Pretty JSON (two-space indent, keys sorted as serde_json's map keeps them).
pub fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// `<n> B`, or `<x.xx> KB|MB|GB` with 1024 as the base.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 3] = ["KB", "MB", "GB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

fn str_field<'a>(entry: &'a Value, key: &str) -> &'a str {
    entry.get(key).and_then(Value::as_str).unwrap_or("?")
}

/// The lines `wal-read` prints for one record: the header, plus a detail line for
/// `create_instance` and `apply_event`.
pub fn wal_record(record: &WalRecord) -> Vec<String> {
    let kind = str_field(&record.entry, "type");
    let mut lines = vec![format!(
        "[{:>6}] {:>12} | {kind}",
        record.sequence, record.offset
    )];
    let e = &record.entry;
    match kind {
        "create_instance" => lines.push(format!(
            "         Instance: {}, Machine: {} v{}",
            str_field(e, "instance_id"),
            str_field(e, "machine"),
            e.get("version").and_then(Value::as_u64).unwrap_or(0)
        )),
        "apply_event" => lines.push(format!(
            "         Instance: {}, Event: {}, {} → {}",
            str_field(e, "instance_id"),
            str_field(e, "event"),
            str_field(e, "from_state"),
            str_field(e, "to_state")
        )),
        _ => {}
    }
    lines
}

/// An event as the reference CLI prints it: compact JSON, fields in protocol order,
/// `payload` and `ctx` left out when null or not requested.
pub fn event_line(event: &Event) -> String {
    #[derive(Serialize)]
    struct Line<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        subscription_id: &'a str,
        instance_id: &'a str,
        machine: &'a str,
        version: u32,
        wal_offset: u64,
        from_state: &'a str,
        to_state: &'a str,
        event: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        payload: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ctx: Option<&'a Value>,
    }
    let line = Line {
        kind: "event",
        subscription_id: &event.subscription_id,
        instance_id: &event.instance_id,
        machine: &event.machine,
        version: event.version,
        wal_offset: event.wal_offset,
        from_state: &event.from_state,
        to_state: &event.to_state,
        event: &event.event,
        payload: Some(&event.payload).filter(|v| !v.is_null()),
        ctx: event.ctx.as_ref().filter(|v| !v.is_null()),
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// (states, transitions) counts of a definition.
pub fn definition_counts(definition: &Value) -> (usize, usize) {
    let count = |key| {
        definition
            .get(key)
            .and_then(Value::as_array)
            .map_or(0, Vec::len)
    };
    (count("states"), count("transitions"))
}

/// The `replication-status` lines: 0.3.0's layout for each role (a table of replicas on a
/// primary, lag on a replica, one sentence on a standalone node), then any field beyond
/// 0.3.0's as `  name: value`, then (as 0.3.0) an empty line after the table.
pub fn replication_status(r: &ReplicationStatusResult) -> Vec<String> {
    let extra = r.extra.iter().map(|(k, v)| match v {
        Value::String(s) => format!("  {k}: {s}"),
        other => format!("  {k}: {other}"),
    });
    match r.role.as_str() {
        "standalone" => {
            let mut lines = vec!["Server is not configured for replication".to_owned()];
            lines.extend(extra);
            lines
        }
        "primary" => {
            let mut lines = vec![
                "Replication status".to_owned(),
                "  Role:                primary".to_owned(),
                format!(
                    "  Mode:                {}",
                    r.mode.as_deref().unwrap_or("?")
                ),
                format!("  Primary sequence:    {}", r.primary_sequence.unwrap_or(0)),
                format!(
                    "  Connected replicas:  {}",
                    r.connected_replicas.unwrap_or(0)
                ),
            ];
            lines.extend(extra);
            lines.push(String::new());
            match r.replicas.as_deref() {
                Some(list) if !list.is_empty() => {
                    lines.push(format!(
                        "  {:<20} {:>14} {:>14}",
                        "REPLICA-ID", "LAST-ACKED", "LAG-ENTRIES"
                    ));
                    for rep in list {
                        lines.push(format!(
                            "  {:<20} {:>14} {:>14}",
                            rep.replica_id, rep.last_acked_sequence, rep.lag_entries
                        ));
                    }
                }
                _ => lines.push("  (no replicas connected)".to_owned()),
            }
            lines.push(String::new());
            lines
        }
        "replica" => {
            let mut lines = vec![
                "Replication status".to_owned(),
                "  Role:              replica".to_owned(),
                format!(
                    "  Upstream:          {}",
                    r.upstream.as_deref().unwrap_or("?")
                ),
                format!("  Primary sequence:  {}", r.primary_sequence.unwrap_or(0)),
                format!(
                    "  Last applied:      {}",
                    r.last_applied_sequence.unwrap_or(0)
                ),
                format!("  Lag (entries):     {}", r.lag_entries.unwrap_or(0)),
                format!("  Lag (seconds):     {:.3}", r.lag_seconds.unwrap_or(0.0)),
            ];
            lines.extend(extra);
            lines.push(String::new());
            lines
        }
        _ => serde_json::to_value(r)
            .map(|v| pretty(&v))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect(),
    }
}

/// `value` as one line of JSON with `--json`, else the human layout `human` prints.
pub fn print<T: Serialize>(json_out: bool, value: &T, human: impl FnOnce()) {
    if json_out {
        line(serde_json::to_string(value).unwrap_or_default());
    } else {
        human();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::json;

    fn status(v: Value) -> ReplicationStatusResult {
        serde_json::from_value(v).unwrap()
    }

    /// The texts 0.3.0's `rstmdb-cli replication-status` prints for each role (its
    /// `format_replication_status`, without colours), line by line.
    #[test]
    fn replication_status_follows_the_reference_layout_per_role() {
        assert_eq!(
            replication_status(&status(json!({"role": "standalone"}))),
            ["Server is not configured for replication"]
        );
        let primary = status(json!({
            "role": "primary", "mode": "sync", "primary_sequence": 42, "connected_replicas": 1,
            "replicas": [{"replica_id": "replica-1", "last_acked_sequence": 40, "lag_entries": 2}],
        }));
        assert_eq!(
            replication_status(&primary),
            [
                "Replication status",
                "  Role:                primary",
                "  Mode:                sync",
                "  Primary sequence:    42",
                "  Connected replicas:  1",
                "",
                "  REPLICA-ID               LAST-ACKED    LAG-ENTRIES",
                "  replica-1                        40              2",
                "",
            ]
        );
        let alone = status(json!({
            "role": "primary", "mode": "async", "primary_sequence": 0, "connected_replicas": 0,
            "replicas": [],
        }));
        assert_eq!(
            replication_status(&alone)[5..],
            ["", "  (no replicas connected)", ""]
        );
        let replica = status(json!({
            "role": "replica", "upstream": "10.0.0.1:7401", "last_applied_sequence": 7,
            "primary_sequence": 9, "lag_entries": 2, "lag_seconds": 0.25,
        }));
        assert_eq!(
            replication_status(&replica),
            [
                "Replication status",
                "  Role:              replica",
                "  Upstream:          10.0.0.1:7401",
                "  Primary sequence:  9",
                "  Last applied:      7",
                "  Lag (entries):     2",
                "  Lag (seconds):     0.250",
                "",
            ]
        );
    }

    #[test]
    fn replication_status_shows_fields_beyond_the_reference_and_unknown_roles() {
        let r = status(json!({"role": "standalone", "node_id": "n1"}));
        assert_eq!(
            replication_status(&r),
            ["Server is not configured for replication", "  node_id: n1"]
        );
        let odd = replication_status(&status(json!({"role": "witness"})));
        assert_eq!(odd.join("\n"), "{\n  \"role\": \"witness\"\n}");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.00 KB");
        assert_eq!(bytes(67_108_864), "64.00 MB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.00 GB");
    }

    #[test]
    fn wal_record_lines() {
        let r = WalRecord {
            sequence: 2,
            offset: 2,
            entry: json!({"type": "apply_event", "instance_id": "o1", "event": "PAY",
                          "from_state": "pending", "to_state": "paid"}),
        };
        assert_eq!(
            wal_record(&r),
            [
                "[     2]            2 | apply_event",
                "         Instance: o1, Event: PAY, pending → paid"
            ]
        );
    }

    #[test]
    fn event_line_keeps_protocol_order_and_drops_nulls() {
        let e = Event {
            subscription_id: "s".into(),
            instance_id: "i".into(),
            machine: "m".into(),
            version: 1,
            wal_offset: 7,
            from_state: "a".into(),
            to_state: "b".into(),
            event: "E".into(),
            payload: Value::Null,
            ctx: Some(json!({"k": 1})),
        };
        assert_eq!(
            event_line(&e),
            r#"{"type":"event","subscription_id":"s","instance_id":"i","machine":"m","version":1,"wal_offset":7,"from_state":"a","to_state":"b","event":"E","ctx":{"k":1}}"#
        );
    }
}
