//! Crash loop (issue 8, item 2): durable load from several connections, SIGKILL at a random
//! moment, restart on the same data directory, and check the server against a ledger the
//! clients kept of every answer they received.
//!
//! What must hold after every restart (decisions.md "WAL, durability and recovery" and
//! "Idempotency"):
//! - every acknowledged CREATE_INSTANCE / APPLY_EVENT is there: the instance's state, ctx and
//!   `last_wal_offset` are those of its last acknowledged write (or of the one write that was
//!   in flight when the server died), and the WAL holds a record at each acknowledged
//!   `wal_offset` carrying that request's idempotency key;
//! - nothing appears twice: no idempotency key is in two WAL records, no instance was created
//!   twice, no instance exists that no client asked for;
//! - offsets only grow: per instance, across the log, and across restarts (never reused);
//! - a request in doubt (sent, then the connection died) retried with the same idempotency key
//!   resolves to exactly one application: a replay (`applied: false`, the original offset) if
//!   it had become durable, a fresh write otherwise.
//!
//! Every write is also a replay test: the last acknowledged apply of each touched instance is
//! sent again after the restart and must come back unchanged without writing.
//!
//! CI runs 10 cycles; `CRASH_CYCLES=100 scripts/crash-loop.sh` runs more. `CRASH_SEED`
//! replays a run's kill timings (the seed is printed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/mod.rs"]
mod support;

use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::*;

/// Concurrent client connections, each with its own instances.
const WORKERS: usize = 6;
/// Applies per instance before a worker moves on to a new instance.
const APPLIES_PER_INSTANCE: u64 = 12;
/// A cycle's load runs this long at least before the kill …
const MIN_LOAD_MS: u64 = 20;
/// … plus a random share of this.
const MAX_EXTRA_LOAD_MS: u64 = 600;
const MACHINE: &str = "crash";
/// One state per apply modulo 4, so a lost or doubled apply shows in the state too.
const STATES: [&str; 4] = ["s0", "s1", "s2", "s3"];
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Some bulk in every record, so group commits carry real bytes.
const PAD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn definition() -> Value {
    let transitions: Vec<Value> = (0..STATES.len())
        .map(|i| json!({"from": STATES[i], "event": "inc", "to": STATES[(i + 1) % STATES.len()]}))
        .collect();
    json!({"states": STATES, "initial": STATES[0], "transitions": transitions})
}

fn state_after(n: u64) -> &'static str {
    STATES[(n % STATES.len() as u64) as usize]
}

fn expected_ctx(owner: &str, n: u64) -> Value {
    json!({"owner": owner, "n": n, "pad": PAD})
}

fn create_key(id: &str) -> String {
    format!("create:{id}")
}

fn apply_key(id: &str, n: u64) -> String {
    format!("apply:{id}:{n}")
}

fn create_params(inst: &Inst) -> Value {
    json!({
        "instance_id": inst.id, "machine": MACHINE, "version": 1,
        "initial_ctx": expected_ctx(&inst.owner, 0),
        "idempotency_key": create_key(&inst.id),
    })
}

fn apply_params(inst: &Inst, n: u64) -> Value {
    json!({
        "instance_id": inst.id, "event": "inc", "payload": {"n": n},
        "idempotency_key": apply_key(&inst.id, n),
    })
}

/// splitmix64: kill timings need to vary, not to be cryptographic.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n.max(1)
    }
}

// ---------------------------------------------------------------------------------------------
// The ledger
// ---------------------------------------------------------------------------------------------

/// The request that was on the wire when the connection died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Create,
    /// The apply that would make the count `n`.
    Apply(u64),
}

/// What the clients know about one instance.
#[derive(Debug)]
struct Inst {
    id: String,
    owner: String,
    /// CREATE acknowledged (or resolved after a crash).
    created: bool,
    /// Acknowledged applies; the ctx holds `n` = this.
    acked_n: u64,
    /// `wal_offset` of the last acknowledged write.
    last_offset: u64,
    in_doubt: Option<Pending>,
    /// Written to in the current cycle.
    touched: bool,
}

/// One acknowledged write, to be found in the WAL at `offset`.
#[derive(Debug, Clone)]
struct Ack {
    offset: u64,
    instance: String,
    key: String,
}

#[derive(Debug)]
struct Worker {
    index: usize,
    insts: Vec<Inst>,
    acks: Vec<Ack>,
    failures: Vec<String>,
}

#[derive(Debug, Default)]
struct Stats {
    acked_creates: u64,
    acked_applies: u64,
    in_doubt: u64,
    in_doubt_found_applied: u64,
    in_doubt_applied_on_retry: u64,
    replays_checked: u64,
    lost: u64,
    duplicates: u64,
    wal_records_checked: u64,
}

/// Cross-cycle checks on the WAL.
#[derive(Debug, Default)]
struct WalCheck {
    /// `from_offset` for the next WAL_READ.
    cursor: u64,
    /// Highest offset seen so far; new writes must land above it.
    max_offset: u64,
    apply_keys: HashSet<(String, String)>,
    created: HashSet<String>,
    /// Acknowledged writes not yet matched with their WAL record.
    unconfirmed: HashMap<u64, Ack>,
}

// ---------------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------------

/// Writes closed-loop (one request at a time) until the connection dies. `floor` is the
/// highest offset in the log before this cycle: every acknowledged offset must be above it.
fn run_worker(mut w: Worker, addr: SocketAddr, floor: u64) -> Worker {
    let Ok(mut c) = Client::try_connect(addr, Duration::from_secs(2)) else {
        return w;
    };
    loop {
        if w.insts
            .last()
            .is_none_or(|i| i.created && i.acked_n >= APPLIES_PER_INSTANCE)
        {
            let k = w.insts.len();
            w.insts.push(Inst {
                id: format!("w{}-i{k:05}", w.index),
                owner: format!("w{}", w.index),
                created: false,
                acked_n: 0,
                last_offset: 0,
                in_doubt: None,
                touched: false,
            });
        }
        let inst = w.insts.last_mut().expect("an instance");
        inst.touched = true;
        let (op, params, pending) = if inst.created {
            let n = inst.acked_n + 1;
            ("APPLY_EVENT", apply_params(inst, n), Pending::Apply(n))
        } else {
            ("CREATE_INSTANCE", create_params(inst), Pending::Create)
        };
        let resp = match c.try_request(op, params, REQUEST_TIMEOUT) {
            Ok(r) => r,
            Err(_) => {
                inst.in_doubt = Some(pending);
                return w;
            }
        };
        if resp["status"] != "ok" {
            w.failures.push(format!(
                "{op} on {} answered with an error: {resp}",
                inst.id
            ));
            inst.in_doubt = Some(pending);
            return w;
        }
        let r = &resp["result"];
        let offset = r["wal_offset"].as_u64().unwrap_or(0);
        if offset <= floor.max(inst.last_offset) {
            w.failures.push(format!(
                "{op} on {} acknowledged offset {offset}, not above {} (log) / {} (instance)",
                inst.id, floor, inst.last_offset
            ));
        }
        let key = match pending {
            Pending::Create => {
                if r["instance_id"] != json!(inst.id) || r["state"] != state_after(0) {
                    w.failures.push(format!("CREATE {} answered {r}", inst.id));
                }
                inst.created = true;
                create_key(&inst.id)
            }
            Pending::Apply(n) => {
                let good = r["from_state"] == state_after(n - 1)
                    && r["to_state"] == state_after(n)
                    && r["ctx"] == expected_ctx(&inst.owner, n)
                    && r["applied"] == true;
                if !good {
                    w.failures
                        .push(format!("APPLY {} #{n} answered {r}", inst.id));
                }
                inst.acked_n = n;
                apply_key(&inst.id, n)
            }
        };
        inst.last_offset = offset;
        w.acks.push(Ack {
            offset,
            instance: inst.id.clone(),
            key,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Verification after a restart
// ---------------------------------------------------------------------------------------------

/// What GET_INSTANCE says, reduced to what the ledger can predict.
#[derive(Debug)]
struct Seen {
    n: u64,
    last_offset: u64,
}

fn get_instance(c: &mut Client, inst: &Inst, problems: &mut Vec<String>) -> Option<Seen> {
    let r = c.request("GET_INSTANCE", json!({"instance_id": inst.id}));
    if r["status"] == "error" {
        assert_eq!(
            r["error"]["code"], "INSTANCE_NOT_FOUND",
            "GET {}: {r}",
            inst.id
        );
        return None;
    }
    let r = &r["result"];
    let n = r["ctx"]["n"].as_u64().unwrap_or(u64::MAX);
    if r["ctx"] != expected_ctx(&inst.owner, n) || r["state"] != state_after(n) {
        problems.push(format!(
            "{}: state/ctx inconsistent after restart: {r}",
            inst.id
        ));
    }
    Some(Seen {
        n,
        last_offset: u64_of(&r["last_wal_offset"]),
    })
}

/// Checks one instance against the ledger and resolves its in-doubt request.
fn verify_instance(
    c: &mut Client,
    inst: &mut Inst,
    stats: &mut Stats,
    wal: &mut WalCheck,
    problems: &mut Vec<String>,
) {
    let seen = get_instance(c, inst, problems);
    if !inst.created {
        // Only a create that was in flight can have left an instance the ledger lacks.
        if inst.in_doubt != Some(Pending::Create) {
            if seen.is_some() {
                stats.duplicates += 1;
                problems.push(format!("{}: exists but was never created", inst.id));
            }
            return;
        }
        stats.in_doubt += 1;
        let r = c.request("CREATE_INSTANCE", create_params(inst));
        assert_eq!(r["status"], "ok", "retrying CREATE {}: {r}", inst.id);
        let offset = u64_of(&r["result"]["wal_offset"]);
        match &seen {
            Some(s) => {
                stats.in_doubt_found_applied += 1;
                if s.n != 0 || offset != s.last_offset {
                    problems.push(format!(
                        "{}: in-doubt CREATE was durable (n {}, offset {}) but the retry said {r}",
                        inst.id, s.n, s.last_offset
                    ));
                }
            }
            None => {
                stats.in_doubt_applied_on_retry += 1;
                wal.unconfirmed.insert(
                    offset,
                    Ack {
                        offset,
                        instance: inst.id.clone(),
                        key: create_key(&inst.id),
                    },
                );
            }
        }
        inst.created = true;
        inst.last_offset = offset;
        inst.in_doubt = None;
        return;
    }

    let Some(seen) = seen else {
        stats.lost += 1 + inst.acked_n;
        problems.push(format!(
            "{}: acknowledged instance is gone ({} acknowledged applies)",
            inst.id, inst.acked_n
        ));
        return;
    };
    let a = inst.acked_n;
    let doubt_n = match inst.in_doubt {
        Some(Pending::Apply(n)) => Some(n),
        _ => None,
    };
    if seen.n < a {
        stats.lost += a - seen.n;
        problems.push(format!(
            "{}: {} acknowledged applies, the server has {}",
            inst.id, a, seen.n
        ));
        return;
    }
    if seen.n > a && Some(seen.n) != doubt_n {
        stats.duplicates += seen.n - a;
        problems.push(format!(
            "{}: {} acknowledged applies (in doubt: {doubt_n:?}), the server has {}",
            inst.id, a, seen.n
        ));
        return;
    }
    if seen.n == a && seen.last_offset != inst.last_offset {
        problems.push(format!(
            "{}: last_wal_offset {} but the last acknowledged write was at {}",
            inst.id, seen.last_offset, inst.last_offset
        ));
    }

    if let Some(n) = doubt_n {
        stats.in_doubt += 1;
        let r = c.request("APPLY_EVENT", apply_params(inst, n));
        assert_eq!(r["status"], "ok", "retrying APPLY {} #{n}: {r}", inst.id);
        let r = &r["result"];
        let offset = u64_of(&r["wal_offset"]);
        if r["to_state"] != state_after(n) || r["ctx"] != expected_ctx(&inst.owner, n) {
            problems.push(format!("{}: retry of #{n} answered {r}", inst.id));
        }
        if seen.n == n {
            stats.in_doubt_found_applied += 1;
            if r["applied"] != false || offset != seen.last_offset {
                problems.push(format!(
                    "{}: #{n} was durable at {} but the retry answered {r}",
                    inst.id, seen.last_offset
                ));
            }
        } else {
            stats.in_doubt_applied_on_retry += 1;
            if r["applied"] != true || offset <= inst.last_offset.max(wal.max_offset) {
                problems.push(format!(
                    "{}: #{n} was not durable; the retry should write above {}: {r}",
                    inst.id,
                    inst.last_offset.max(wal.max_offset)
                ));
            }
            wal.unconfirmed.insert(
                offset,
                Ack {
                    offset,
                    instance: inst.id.clone(),
                    key: apply_key(&inst.id, n),
                },
            );
        }
        // Exactly once, whichever way it went.
        match get_instance(c, inst, problems) {
            Some(after) if after.n == n && after.last_offset == offset => {}
            other => problems.push(format!(
                "{}: after retrying #{n}: {other:?}, expected n {n} at {offset}",
                inst.id
            )),
        }
        inst.acked_n = n;
        inst.last_offset = offset;
        inst.in_doubt = None;
    } else if a > 0 {
        // An acknowledged apply sent again is a replay: same answer, no write.
        stats.replays_checked += 1;
        let r = c.request("APPLY_EVENT", apply_params(inst, a));
        let ok = r["status"] == "ok"
            && r["result"]["applied"] == false
            && u64_of(&r["result"]["wal_offset"]) == inst.last_offset
            && r["result"]["ctx"] == expected_ctx(&inst.owner, a);
        if !ok {
            problems.push(format!("{}: replay of #{a} answered {r}", inst.id));
        }
    }
}

/// LIST_INSTANCES over the whole machine: exactly the created instances, each at its
/// acknowledged state and offset.
fn sweep_list(c: &mut Client, workers: &[Worker], stats: &mut Stats, problems: &mut Vec<String>) {
    let mut listed: HashMap<String, (String, u64)> = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut p = json!({"machine": MACHINE, "limit": 1000});
        if let Some(a) = &after {
            p["after"] = json!(a);
        }
        let page = c.ok("LIST_INSTANCES", p);
        let items = page["instances"].as_array().cloned().unwrap_or_default();
        for it in &items {
            let id = it["id"].as_str().unwrap().to_string();
            let state = it["state"].as_str().unwrap().to_string();
            if listed
                .insert(id.clone(), (state, u64_of(&it["last_wal_offset"])))
                .is_some()
            {
                problems.push(format!("LIST returned {id} twice"));
            }
            after = Some(id);
        }
        if items.is_empty() || page["has_more"] != true {
            break;
        }
    }
    let mut expected = 0usize;
    for inst in workers.iter().flat_map(|w| &w.insts).filter(|i| i.created) {
        expected += 1;
        match listed.get(&inst.id) {
            None => {
                stats.lost += 1 + inst.acked_n;
                problems.push(format!("LIST lacks acknowledged instance {}", inst.id));
            }
            Some((state, offset)) => {
                if state != state_after(inst.acked_n) || *offset != inst.last_offset {
                    problems.push(format!(
                        "LIST has {} in {state} at {offset}; ledger: {} at {}",
                        inst.id,
                        state_after(inst.acked_n),
                        inst.last_offset
                    ));
                }
            }
        }
    }
    if listed.len() != expected {
        stats.duplicates += listed.len().saturating_sub(expected) as u64;
        problems.push(format!(
            "LIST has {} instances, the ledger {expected}",
            listed.len()
        ));
    }
}

/// Reads the WAL written since the last check: offsets increase, no key twice, and every
/// acknowledged offset holds the acknowledged request.
fn scan_wal(c: &mut Client, wal: &mut WalCheck, stats: &mut Stats, problems: &mut Vec<String>) {
    loop {
        let page = c.ok(
            "WAL_READ",
            json!({"from_offset": wal.cursor, "limit": 1000}),
        );
        let records = page["records"].as_array().cloned().unwrap_or_default();
        if records.is_empty() {
            break;
        }
        for rec in &records {
            stats.wal_records_checked += 1;
            let offset = u64_of(&rec["offset"]);
            if offset <= wal.max_offset {
                problems.push(format!(
                    "WAL offset {offset} after {} (not increasing)",
                    wal.max_offset
                ));
            }
            wal.max_offset = wal.max_offset.max(offset);
            let e = &rec["entry"];
            let id = e["instance_id"].as_str().unwrap_or("").to_string();
            let key = e["idempotency_key"].as_str().unwrap_or("").to_string();
            let twice = match e["type"].as_str() {
                Some("create_instance") => !wal.created.insert(id.clone()),
                Some("apply_event") => !wal.apply_keys.insert((id.clone(), key.clone())),
                _ => false,
            };
            if twice {
                stats.duplicates += 1;
                problems.push(format!(
                    "WAL record at {offset} repeats an earlier write: {e}"
                ));
            }
            if let Some(ack) = wal.unconfirmed.remove(&offset)
                && (ack.instance != id || ack.key != key)
            {
                stats.lost += 1;
                problems.push(format!(
                    "acknowledged {} ({}) at {offset}, but the WAL has {e} there",
                    ack.key, ack.instance
                ));
            }
        }
        match page["next_offset"].as_u64() {
            Some(next) => wal.cursor = next,
            None => break,
        }
    }
    if !wal.unconfirmed.is_empty() {
        stats.lost += wal.unconfirmed.len() as u64;
        let mut missing: Vec<_> = wal.unconfirmed.values().map(|a| a.key.clone()).collect();
        missing.sort();
        missing.truncate(10);
        problems.push(format!(
            "{} acknowledged writes have no WAL record, e.g. {missing:?}",
            wal.unconfirmed.len()
        ));
        wal.unconfirmed.clear();
    }
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn acknowledged_writes_survive_repeated_sigkill() {
    let cycles = env_u64("CRASH_CYCLES").unwrap_or(10);
    let seed = env_u64("CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    println!("crash loop: {cycles} cycles, CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let started = Instant::now();

    // Frequent checkpoints so some kills land during one; segments big enough that
    // compaction never removes log the checks below still have to read.
    let mut s = Server::with_config(json!({
        "storage": {"wal_segment_size_mb": 1024, "fsync_policy": "every_write"},
        "compaction": {"enabled": true, "events_threshold": 2000, "min_interval_secs": 0}
    }));
    {
        let mut c = s.connect();
        put_machine(&mut c, MACHINE, 1, definition());
    }

    let mut workers: Vec<Worker> = (0..WORKERS)
        .map(|index| Worker {
            index,
            insts: Vec::new(),
            acks: Vec::new(),
            failures: Vec::new(),
        })
        .collect();
    let mut stats = Stats::default();
    let mut wal = WalCheck::default();
    let mut problems: Vec<String> = Vec::new();

    for cycle in 0..cycles {
        let addr = s.addr();
        let floor = wal.max_offset;
        let handles: Vec<_> = workers
            .drain(..)
            .map(|mut w| {
                for i in &mut w.insts {
                    i.touched = false;
                }
                std::thread::spawn(move || run_worker(w, addr, floor))
            })
            .collect();
        let load_ms = MIN_LOAD_MS + rng.below(MAX_EXTRA_LOAD_MS);
        std::thread::sleep(Duration::from_millis(load_ms));
        s.kill_9();
        workers = handles
            .into_iter()
            .map(|h| h.join().expect("worker thread"))
            .collect();
        let mut acked_this_cycle = 0u64;
        for w in &mut workers {
            for ack in w.acks.drain(..) {
                if ack.key.starts_with("create:") {
                    stats.acked_creates += 1;
                } else {
                    stats.acked_applies += 1;
                }
                acked_this_cycle += 1;
                wal.unconfirmed.insert(ack.offset, ack);
            }
            for f in w.failures.drain(..) {
                problems.push(format!("cycle {cycle}: {f}"));
            }
        }

        s.restart();
        let mut c = s.connect();
        let last = cycle + 1 == cycles;
        for w in &mut workers {
            for inst in &mut w.insts {
                if last || inst.touched || inst.in_doubt.is_some() {
                    verify_instance(&mut c, inst, &mut stats, &mut wal, &mut problems);
                }
            }
        }
        sweep_list(&mut c, &workers, &mut stats, &mut problems);
        scan_wal(&mut c, &mut wal, &mut stats, &mut problems);
        println!(
            "cycle {cycle:3}: killed after {load_ms:3} ms, {acked_this_cycle:4} writes acknowledged, \
             log at offset {}",
            wal.max_offset
        );
        assert!(
            problems.is_empty(),
            "cycle {cycle} (CRASH_SEED={seed}):\n{}\n{}",
            problems.join("\n"),
            s.all_logs()
        );
    }

    let instances: usize = workers.iter().map(|w| w.insts.len()).sum();
    println!(
        "CRASH SUMMARY cycles={cycles} writes_acknowledged={} creates={} applies={} \
         instances={instances} in_doubt={} in_doubt_durable={} in_doubt_applied_on_retry={} \
         replays_checked={} wal_records_checked={} lost={} duplicates={} seconds={:.1}",
        stats.acked_creates + stats.acked_applies,
        stats.acked_creates,
        stats.acked_applies,
        stats.in_doubt,
        stats.in_doubt_found_applied,
        stats.in_doubt_applied_on_retry,
        stats.replays_checked,
        stats.wal_records_checked,
        stats.lost,
        stats.duplicates,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(stats.lost, 0, "acknowledged writes lost");
    assert_eq!(stats.duplicates, 0, "writes applied twice");
    assert!(
        stats.acked_creates + stats.acked_applies > 0,
        "the load never got an acknowledgement"
    );
}
