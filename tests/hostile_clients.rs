//! Hostile clients (issue 8, item 5): connection floods, slowloris, oversized frames,
//! garbage, a watcher that never reads, a thousand subscriptions. In every case the server
//! must shed the offender, keep answering a normal client within a second, and keep its
//! memory bounded. Each test prints the server's resident set size (VmRSS, and the peak
//! VmHWM) from /proc, so a run's output records the figures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/mod.rs"]
mod support;

use serde_json::json;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use support::*;

/// The tests run one at a time: each measures latency and memory, which a neighbour pushing
/// 17 MiB of garbage or opening 10,000 sockets on the same two cores would distort.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What "still responsive" means: a request answered within this.
const RESPONSIVE: Duration = Duration::from_secs(1);
/// Connections the flood test opens by default (fewer if the fd limit is lower);
/// `HOSTILE_FLOOD_CONNECTIONS=10000` runs the issue's full figure. The default keeps CI
/// short: the server refuses surplus connections at only a few hundred per second here
/// (each costs an accept, a close and a log line), so 10,000 take about 50 s.
const FLOOD_CONNECTIONS: usize = 2_000;
/// The server's connection limit in the flood test.
const FLOOD_MAX_CONNECTIONS: usize = 256;

/// (VmRSS, VmHWM) of a process in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn report_rss(s: &Server, test: &str) -> u64 {
    let (rss, hwm) = memory_kib(s.pid());
    println!(
        "HOSTILE RSS {test}: VmRSS={} MiB VmHWM={} MiB",
        rss / 1024,
        hwm / 1024
    );
    rss
}

/// A PING on `c` must come back within [`RESPONSIVE`]; returns how long it took.
fn assert_responsive(c: &mut Client, during: &str) -> Duration {
    let start = Instant::now();
    let r = c
        .try_request("PING", json!({}), RESPONSIVE)
        .unwrap_or_else(|e| panic!("no PING answer within {RESPONSIVE:?} during {during}: {e:?}"));
    assert_eq!(r["status"], "ok", "{r}");
    let took = start.elapsed();
    assert!(took < RESPONSIVE, "PING took {took:?} during {during}");
    took
}

/// Whether the server has closed `s` (EOF or reset); `false` while it is open and silent.
fn closed_by_server(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let closed = match s.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

/// Soft limit on open files for this process.
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// Raises this process's soft open-files limit to `want` (or the hard limit) with prlimit(1),
/// where it exists; returns the limit in force afterwards.
fn raise_open_files_limit(want: u64) -> u64 {
    if open_files_limit() < want {
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={want}:")])
            .status();
        if open_files_limit() < want {
            // Over the hard limit: take the hard limit.
            let _ = std::process::Command::new("sh")
                .args([
                    "-c",
                    &format!("prlimit --pid {pid} --nofile=$(ulimit -Hn):"),
                ])
                .status();
        }
    }
    open_files_limit()
}

#[test]
fn connection_flood_beyond_max_connections_is_refused_and_the_server_stays_responsive() {
    let _serial = serial();
    let s = Server::with_config(json!({"network": {"max_connections": FLOOD_MAX_CONNECTIONS}}));
    let mut normal = s.connect();
    assert_responsive(&mut normal, "startup");
    report_rss(&s, "flood/before");

    // Each connection costs this process one fd; keep some for the test itself.
    let want = std::env::var("HOSTILE_FLOOD_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(FLOOD_CONNECTIONS);
    let limit = raise_open_files_limit(want as u64 + 512);
    let n = want.min(limit.saturating_sub(256) as usize);
    println!("HOSTILE flood: {n} connections (open files limit {limit})");
    assert!(
        n > FLOOD_MAX_CONNECTIONS * 2,
        "fd limit {limit} too low to flood"
    );

    // Several threads connect at once: a connection the server refuses can cost its client a
    // SYN retransmission (1 s) when the accept queue is momentarily full, and in parallel
    // those waits overlap.
    let started = Instant::now();
    let addr = s.addr();
    let threads = 8;
    let mut conns: Vec<TcpStream> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let share = n / threads + usize::from(t < n % threads);
                    (0..share)
                        .map(|i| {
                            TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                                .unwrap_or_else(|e| panic!("thread {t}: connect #{i}: {e}"))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        while handles.iter().any(|h| !h.is_finished()) {
            assert_responsive(&mut normal, "the flood");
            std::thread::sleep(Duration::from_millis(250));
        }
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("connect thread"))
            .collect()
    });
    assert_eq!(conns.len(), n);
    println!(
        "HOSTILE flood: {n} connections opened in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_responsive(&mut normal, "the flood");

    // The server keeps exactly its limit (the normal client holds one slot) and closes the
    // rest right after accepting them.
    let keep = FLOOD_MAX_CONNECTIONS - 1;
    let refused = wait_for(Duration::from_secs(30), || {
        let refused = conns.iter().filter(|c| closed_by_server(c)).count();
        (refused == n - keep).then_some(refused)
    });
    let refused_now = conns.iter().filter(|c| closed_by_server(c)).count();
    assert_eq!(
        refused,
        Some(n - keep),
        "expected {} refused and {keep} kept, got {refused_now} refused",
        n - keep
    );
    let took = assert_responsive(&mut normal, "a full connection table");
    println!("HOSTILE flood: PING answered in {took:?} with {keep} idle connections held");
    let rss = report_rss(&s, "flood/full");

    // The held connections work, and freeing them frees slots.
    let kept: Vec<usize> = (0..n).filter(|&i| !closed_by_server(&conns[i])).collect();
    assert_eq!(kept.len(), keep);
    let mut one = conns.swap_remove(kept[0]);
    one.write_all(&frame(br#"{"type":"request","id":"x","op":"PING"}"#))
        .unwrap();
    one.set_read_timeout(Some(RESPONSIVE)).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(one.read(&mut b).unwrap(), 1, "a held connection answers");
    drop(one);
    drop(conns);
    let mut fresh = wait_for(Duration::from_secs(10), || {
        let mut c = Client::try_connect(s.addr(), Duration::from_secs(1)).ok()?;
        c.try_request("PING", json!({}), RESPONSIVE).ok()?;
        Some(c)
    })
    .expect("a new connection works once the flood is gone");
    assert_responsive(&mut fresh, "after the flood");
    assert!(
        rss < 512 * 1024,
        "RSS {rss} KiB with a full connection table"
    );
}

#[test]
fn slowloris_is_closed_by_the_idle_timeout() {
    let _serial = serial();
    let s = Server::with_config(json!({"network": {"idle_timeout_secs": 2}}));
    let mut normal = s.connect();

    // One header byte per second: never a complete message, so never a reset idle timer.
    let addr = s.addr();
    let drip = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        let header = frame(br#"{"type":"request","id":"s","op":"PING"}"#);
        let start = Instant::now();
        for b in header.iter().take(support::HEADER_LEN) {
            if c.write_all(std::slice::from_ref(b)).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
            if closed_by_server(&c) {
                return (true, start.elapsed());
            }
        }
        (closed_by_server(&c), start.elapsed())
    });
    // The normal client keeps itself busy (it would idle out too) and stays answered.
    while !drip.is_finished() {
        assert_responsive(&mut normal, "slowloris");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (closed, after) = drip.join().unwrap();
    println!("HOSTILE slowloris: closed={closed} after {after:?} (idle timeout 2 s)");
    assert!(closed, "a byte-per-second client must be cut off");
    assert!(
        after < Duration::from_secs(6),
        "closed only after {after:?}"
    );
    report_rss(&s, "slowloris");
}

#[test]
fn frame_one_byte_over_16_mib_is_refused_from_its_header() {
    let _serial = serial();
    let s = Server::start();
    let mut normal = s.connect();
    let mut c = s.connect();

    let mut big = RawFrame::new(Vec::new());
    big.payload_len = Some(MAX_PAYLOAD + 1);
    let header = big.encode();
    c.send_raw(&header);
    // Closed without waiting for (or buffering) a single payload byte.
    for m in c.expect_closed(CLOSE_TIMEOUT) {
        assert_ne!(
            m.value["status"], "ok",
            "an unreadable frame got {}",
            m.value
        );
    }
    assert_responsive(&mut normal, "an oversized frame");

    // Same again, really sending the 16 MiB + 1 bytes: the server stops reading at the
    // header, so the upload fails or is discarded, and memory does not grow by 16 MiB.
    let before = memory_kib(s.pid()).0;
    let mut c = TcpStream::connect(s.addr()).unwrap();
    let mut bytes = header.clone();
    bytes.resize(header.len() + MAX_PAYLOAD as usize + 1, b'x');
    let sent = c.write_all(&bytes);
    println!("HOSTILE oversized: sending 16 MiB + 1 after the header: {sent:?}");
    c.set_read_timeout(Some(CLOSE_TIMEOUT)).unwrap();
    let mut sink = Vec::new();
    let closed = c.read_to_end(&mut sink);
    assert!(
        closed.is_ok()
            || closed
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::ConnectionReset),
        "not closed within {CLOSE_TIMEOUT:?}: {closed:?}"
    );
    assert_responsive(&mut normal, "an oversized upload");
    let after = memory_kib(s.pid()).0;
    println!(
        "HOSTILE oversized: VmRSS {} -> {} MiB",
        before / 1024,
        after / 1024
    );

    // The largest legal frame (exactly 16 MiB) is still read and answered.
    let mut ok = s.connect();
    let pad = "x".repeat(MAX_PAYLOAD as usize - 128);
    let mut payload =
        format!(r#"{{"type":"request","id":"big","op":"PING","params":{{"pad":"{pad}"}}}}"#);
    // Trailing JSON whitespace brings it to exactly the limit.
    payload.push_str(&" ".repeat(MAX_PAYLOAD as usize - payload.len()));
    assert_eq!(payload.len(), MAX_PAYLOAD as usize);
    ok.send_frame(payload.as_bytes());
    let r = ok.read_response("big");
    assert_eq!(r["status"], "ok", "{r}");
    assert_responsive(&mut normal, "a 16 MiB frame");
    let rss = report_rss(&s, "oversized");
    assert!(rss < 512 * 1024, "RSS {rss} KiB after 16 MiB frames");
}

#[test]
fn garbage_streams_close_only_their_own_connection() {
    let _serial = serial();
    let s = Server::start();
    let mut normal = s.connect();
    put_counter(&mut normal, "ctr");

    // Noise that starts neither a frame nor a line.
    let mut noise = Vec::with_capacity(1 << 20);
    let mut x: u32 = 0x1234_5678;
    while noise.len() < (1 << 20) {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        noise.push((x >> 24) as u8);
    }
    noise[0] = 0x00;
    // Looks like a frame, is not: bad magic after an `R`.
    let mut bad_magic = b"RCPY".to_vec();
    bad_magic.extend_from_slice(&noise[..4096]);
    // A JSON line that never ends: the server may buffer up to its 16 MiB limit, no more.
    let mut endless = b"{\"type\":\"request\",\"pad\":\"".to_vec();
    endless.resize(17 * 1024 * 1024, b'a');

    for (name, bytes) in [
        ("noise", &noise),
        ("bad magic", &bad_magic),
        ("endless line", &endless),
    ] {
        let mut c = TcpStream::connect(s.addr()).unwrap();
        let start = Instant::now();
        let _ = c.write_all(bytes);
        c.set_read_timeout(Some(CLOSE_TIMEOUT)).unwrap();
        let mut sink = Vec::new();
        match c.read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{name}: connection not closed within {CLOSE_TIMEOUT:?}: {e}"),
        }
        println!(
            "HOSTILE garbage {name}: {} bytes sent, closed after {:?}",
            bytes.len(),
            start.elapsed()
        );
        assert_responsive(&mut normal, name);
    }
    // The server still does real work.
    create(&mut normal, "ctr", "c1", json!({}));
    apply(&mut normal, "c1", "inc", json!({"n": 1}));
    let rss = report_rss(&s, "garbage");
    assert!(rss < 512 * 1024, "RSS {rss} KiB after garbage");
}

/// A connection that subscribes to everything and then never reads, while a writer applies
/// events with a 64 KiB ctx until the subscription's queue (64 events) and both socket
/// buffers must have overflowed. Returns the writer, the lazy client and the slowest apply.
fn flood_a_lazy_watcher(s: &Server) -> (Client, Client, Duration) {
    let mut writer = s.connect();
    put_counter(&mut writer, "ctr");
    create(&mut writer, "ctr", "c1", json!({}));
    let mut lazy = s.connect();
    lazy.ok("WATCH_ALL", json!({"include_ctx": true}));

    let blob = "z".repeat(64 * 1024);
    let mut slowest = Duration::ZERO;
    for n in 0..600u64 {
        let start = Instant::now();
        apply(&mut writer, "c1", "inc", json!({"n": n, "blob": blob}));
        slowest = slowest.max(start.elapsed());
    }
    println!("HOSTILE lazy watcher: 600 applies of 64 KiB, slowest {slowest:?}");
    (writer, lazy, slowest)
}

#[test]
fn a_watcher_that_never_reads_neither_slows_writers_nor_grows_memory() {
    let _serial = serial();
    let s = Server::with_config(json!({"network": {"subscription_queue_depth": 64}}));
    let (mut writer, _lazy, slowest) = flood_a_lazy_watcher(&s);
    assert!(
        slowest < RESPONSIVE,
        "writers slowed to {slowest:?} by a lazy watcher"
    );
    assert_responsive(&mut writer, "a lazy watcher");
    let mut other = s.connect();
    assert_responsive(&mut other, "a lazy watcher");
    let rss = report_rss(&s, "lazy watcher");
    assert!(rss < 512 * 1024, "RSS {rss} KiB with a lazy watcher");
}

/// decisions.md: "a subscriber that cannot keep up has its connection closed (logged, counted
/// in metrics)". The session's writes to a peer whose TCP window is full must not park it:
/// the overflow signal (or a stall as long as the idle timeout) ends the connection.
#[test]
fn a_watcher_that_never_reads_is_disconnected() {
    let _serial = serial();
    let s = Server::with_config(json!({"network": {"subscription_queue_depth": 64}}));
    let (_writer, lazy, _) = flood_a_lazy_watcher(&s);
    let logged = wait_for(Duration::from_secs(5), || {
        s.stdout().contains("fell behind").then_some(())
    });
    assert!(
        logged.is_some(),
        "the server should close (and log closing) a subscriber that never reads"
    );
    let mut raw = lazy.stream().try_clone().unwrap();
    raw.set_read_timeout(Some(CLOSE_TIMEOUT)).unwrap();
    let mut buffered = Vec::new();
    let end = raw.read_to_end(&mut buffered);
    assert!(
        end.is_ok()
            || end
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::ConnectionReset),
        "the lazy watcher's connection is still open: {end:?}"
    );
}

#[test]
fn a_thousand_subscriptions_on_one_connection() {
    let _serial = serial();
    const SUBS: usize = 1000;
    let s = Server::with_config(json!({"network": {"max_subscriptions_per_connection": SUBS}}));
    let mut normal = s.connect();
    put_counter(&mut normal, "ctr");
    create(&mut normal, "ctr", "c1", json!({}));
    report_rss(&s, "subscriptions/before");

    let mut watcher = s.connect();
    let start = Instant::now();
    for i in 0..SUBS {
        let (op, params) = if i % 2 == 0 {
            ("WATCH_INSTANCE", json!({"instance_id": "c1"}))
        } else {
            ("WATCH_ALL", json!({}))
        };
        watcher.send_request(&format!("w{i}"), op, Some(params));
    }
    for i in 0..SUBS {
        let r = watcher.read_response(&format!("w{i}"));
        assert_eq!(r["status"], "ok", "subscription {i}: {r}");
    }
    println!(
        "HOSTILE subscriptions: {SUBS} made in {:?}",
        start.elapsed()
    );
    let e = watcher.err("WATCH_ALL", json!({}));
    assert_eq!(e["code"], "BAD_REQUEST", "one over the limit: {e}");
    assert_responsive(&mut normal, "1000 subscriptions");

    // One apply fans out to every subscription.
    let start = Instant::now();
    apply(&mut normal, "c1", "inc", json!({"n": 1}));
    let took = start.elapsed();
    assert!(
        took < RESPONSIVE,
        "apply with {SUBS} subscribers took {took:?}"
    );
    for i in 0..SUBS {
        watcher.next_event(READ_TIMEOUT);
        if i == 0 {
            println!(
                "HOSTILE subscriptions: first event after {:?}",
                start.elapsed()
            );
        }
    }
    println!(
        "HOSTILE subscriptions: {SUBS} events delivered in {:?}",
        start.elapsed()
    );
    assert_responsive(&mut normal, "the fan-out");
    let rss = report_rss(&s, "subscriptions");
    assert!(rss < 512 * 1024, "RSS {rss} KiB with {SUBS} subscriptions");
}

/// SHA-256 of "secret".
const SECRET_HASH: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";
/// Unauthenticated connections in the pre-auth test (issue 18's figure).
const PREAUTH_CONNECTIONS: usize = 2_000;
/// The frame each of them sends: large, but well under the 16 MiB frame limit.
const PREAUTH_FRAME_BYTES: usize = 1024 * 1024;

#[test]
fn unauthenticated_clients_sending_large_frames_hold_little_memory() {
    // Issue 18 finding 4: before AUTH a client could make the server buffer a frame up to the
    // full frame limit, and a read buffer kept its largest size. 2,000 of them must leave the
    // server under 300 MB and an authenticated client served.
    let _serial = serial();
    let s = Server::with_config(json!({
        "auth": {"required": true, "token_hashes": [SECRET_HASH]},
        // Every flooding connection is let in (one address here), so each meets the pre-auth
        // frame limit rather than the per-address count.
        "network": {"max_connections": PREAUTH_CONNECTIONS + 100,
                    "max_unauthenticated_per_address": PREAUTH_CONNECTIONS + 100},
    }));
    let mut authed = s.connect();
    authed.ok("AUTH", json!({"method": "bearer", "token": "secret"}));
    assert_responsive(&mut authed, "startup");
    report_rss(&s, "preauth/before");
    let limit = raise_open_files_limit(PREAUTH_CONNECTIONS as u64 + 512);
    let n = PREAUTH_CONNECTIONS.min(limit.saturating_sub(256) as usize);
    assert!(n >= PREAUTH_CONNECTIONS / 2, "fd limit {limit} too low");

    // A well-formed request padded to the frame size, so nothing but its size is hostile.
    let pad = "x".repeat(PREAUTH_FRAME_BYTES - 128);
    let mut payload =
        format!(r#"{{"type":"request","id":"big","op":"PING","params":{{"pad":"{pad}"}}}}"#);
    payload.push_str(&" ".repeat(PREAUTH_FRAME_BYTES - payload.len()));
    let bytes = frame(payload.as_bytes());
    let addr = s.addr();
    let threads = 8;
    let started = Instant::now();
    let conns: Vec<TcpStream> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let bytes = &bytes;
                scope.spawn(move || {
                    let share = n / threads + usize::from(t < n % threads);
                    (0..share)
                        .filter_map(|_| {
                            let mut c =
                                TcpStream::connect_timeout(&addr, Duration::from_secs(10)).ok()?;
                            c.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
                            // Refused from the header: the rest of the write may fail.
                            let _ = c.write_all(bytes);
                            Some(c)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        while handles.iter().any(|h| !h.is_finished()) {
            assert_responsive(&mut authed, "the pre-auth flood");
            std::thread::sleep(Duration::from_millis(250));
        }
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("flood thread"))
            .collect()
    });
    println!(
        "HOSTILE preauth: {} connections sent {} KiB frames in {:.1} s",
        conns.len(),
        PREAUTH_FRAME_BYTES / 1024,
        started.elapsed().as_secs_f64()
    );
    // Let the server read whatever it will read.
    std::thread::sleep(Duration::from_secs(2));
    let took = assert_responsive(&mut authed, "after the pre-auth flood");
    let rss = report_rss(&s, "preauth/flooded");
    println!("HOSTILE preauth: PING answered in {took:?}");
    assert!(
        rss < 300 * 1024,
        "RSS {} MiB with {} unauthenticated large frames",
        rss / 1024,
        conns.len()
    );
    authed.ok("INFO", json!({}));
    drop(conns);
}

#[test]
fn unauthenticated_connections_are_limited_per_address_and_timed_out() {
    // Issue 18 finding 4: without a credential a client held a slot until the idle timeout
    // (forever with PING) and could open as many as max_connections.
    let _serial = serial();
    let logs = tempdir();
    let audit = logs.path().join("audit.log");
    let s = Server::with_config(json!({
        "auth": {"required": true, "token_hashes": [SECRET_HASH]},
        "network": {"auth_timeout_secs": 2, "max_unauthenticated_per_address": 3},
        "audit": {"path": audit.to_string_lossy()},
    }));
    let mut held: Vec<Client> = (0..3).map(|_| s.connect()).collect();
    for c in &mut held {
        c.ok("PING", json!({}));
    }
    // A fourth unauthenticated connection from the same address is closed at once.
    let fourth = TcpStream::connect(s.addr()).unwrap();
    let closed = wait_for(Duration::from_secs(5), || {
        closed_by_server(&fourth).then_some(())
    });
    assert!(
        closed.is_some(),
        "a 4th unauthenticated connection stayed open"
    );
    let refused = wait_for(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        text.lines()
            .any(|l| l.contains("\"CONNECTION_REFUSED\"") && l.contains("UNAUTHENTICATED_LIMIT"))
            .then_some(())
    });
    assert!(refused.is_some(), "the refusal is not in the audit log");
    // One that authenticates leaves the count, so another may come in.
    held[0].ok("AUTH", json!({"method": "bearer", "token": "secret"}));
    let mut fifth = wait_for(Duration::from_secs(5), || {
        let mut c = Client::try_connect(s.addr(), Duration::from_secs(1)).ok()?;
        c.try_request("PING", json!({}), RESPONSIVE).ok()?;
        Some(c)
    })
    .expect("a slot freed by AUTH is usable");
    // PING does not keep an unauthenticated connection alive past the auth timeout; the
    // authenticated one stays.
    let start = Instant::now();
    let mut pinger = held.pop().unwrap();
    let gone = wait_for(Duration::from_secs(10), || {
        pinger
            .try_request("PING", json!({}), RESPONSIVE)
            .is_err()
            .then_some(())
    });
    assert!(
        gone.is_some(),
        "a pinging unauthenticated client was never closed"
    );
    println!(
        "HOSTILE preauth: unauthenticated connection closed after {:?}",
        start.elapsed()
    );
    assert!(start.elapsed() < Duration::from_secs(8));
    held[0].ok("INFO", json!({}));
    drop(fifth.try_request("PING", json!({}), RESPONSIVE));
}

#[test]
fn listing_every_instance_does_not_stall_other_connections() {
    // Issue 18 finding 11: LIST_INSTANCES without filters (or with include_deleted) scans and
    // decrypts every instance for its total; it ran on a runtime thread, so with one worker
    // thread every other connection waited for it. It now runs on the blocking pool.
    let _serial = serial();
    let keys = tempdir();
    let key = keys.path().join("data.key");
    std::fs::write(&key, "c2".repeat(32)).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let s = Server::with_config(json!({
        "network": {"worker_threads": 1},
        "storage": {"encryption": {"key_file": key.to_string_lossy()}},
    }));
    let mut c = s.connect();
    put_counter(&mut c, "ctr");
    const N: usize = 10_000;
    for b in 0..N / 100 {
        let ops: Vec<_> = (0..100)
            .map(|i| {
                json!({"op": "CREATE_INSTANCE", "params": {"instance_id": format!("i{b}-{i}"),
                    "machine": "ctr", "version": 1, "initial_ctx": {"pad": "x".repeat(200)}}})
            })
            .collect();
        c.ok("BATCH", json!({"mode": "atomic", "ops": ops}));
    }
    let list = json!({"include_deleted": true, "limit": 1});
    let started = Instant::now();
    let r = c.ok("LIST_INSTANCES", list.clone());
    let one_list = started.elapsed();
    assert_eq!(r["total"], N as u64, "{r}");
    println!("HOSTILE list: one LIST over {N} encrypted instances took {one_list:?}");
    if one_list < Duration::from_millis(300) {
        println!("HOSTILE list: too fast here to tell a stall from noise; not judged");
        return;
    }
    // Lists back to back on one connection; PINGs on another must not wait for them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lister = {
        let stop = stop.clone();
        let mut l = s.connect();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                l.ok("LIST_INSTANCES", list.clone());
            }
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let mut pinger = s.connect();
    let mut worst = Duration::ZERO;
    let until = Instant::now() + one_list * 4;
    while Instant::now() < until {
        let t = Instant::now();
        pinger.ok("PING", json!({}));
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    lister.join().unwrap();
    println!("HOSTILE list: slowest PING during the lists {worst:?}");
    assert!(
        worst < one_list / 2,
        "a PING waited {worst:?} behind lists of {one_list:?}"
    );
}
