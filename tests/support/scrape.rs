//! Reading the real server's `/metrics` endpoint (shared by the metrics and long-connection
//! tests).
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use super::{Server, wait_for};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Where the server's metrics endpoint listens, from its startup log.
pub fn metrics_addr(s: &Server) -> SocketAddr {
    let found = wait_for(Duration::from_secs(10), || {
        let out = s.stdout();
        let at = out.find("Metrics server listening on http://")? + 35;
        let rest = &out[at..];
        rest[..rest.find('/')?].parse().ok()
    });
    found.unwrap_or_else(|| panic!("no metrics address in the log:\n{}", s.stdout()))
}

/// (status line, headers, body) of one HTTP GET.
pub fn get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

/// The value of the sample line starting with `series ` (exact series incl. labels).
pub fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in\n{body}"))
        .trim()
        .parse()
        .unwrap()
}

/// Checks an exposition with `promtool check metrics` (skipped, with a notice, when promtool
/// is not installed).
pub fn promtool_check(body: &str) {
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed: exposition format not checked by promtool");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The reference names two gauges `*_total`, which promtool's linter flags; the names are
    // kept for existing dashboards (decisions.md), so exactly those two findings are allowed.
    // A parse error or any other finding fails.
    const KEPT_FOR_COMPATIBILITY: [&str; 2] = [
        "rstmdb_instances_total non-counter metrics should not have \"_total\" suffix",
        "rstmdb_machines_total non-counter metrics should not have \"_total\" suffix",
    ];
    let unexpected: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !KEPT_FOR_COMPATIBILITY.contains(&l.trim()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "promtool check metrics (exit {:?}) found:\n{text}",
        out.status.code()
    );
}
