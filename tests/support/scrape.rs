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
