//! Embedded storage benchmark and crash-test load generator.
//!
//! ```text
//! rstmdb-storage-bench apply   --dir D [--tasks 1,16,64] [--policy every_write|never] [--seconds 5]
//!                              [--key-file K] [--ctx-bytes N]
//! rstmdb-storage-bench restart --dir D [--instances 1000000]
//! rstmdb-storage-bench crypto  --dir D [--bytes 300,1300] [--iterations 200000]
//! rstmdb-storage-bench writer  --dir D [--tasks 16] [--key-file K]
//! rstmdb-storage-bench open    --dir D [--probe ID]      (used by `restart`)
//! rstmdb-storage-bench fill    --dir D [--megabytes 1024] [--ctx-bytes 4096]
//! rstmdb-storage-bench sled    --dir D [--keys 400000] [--batch 8192]
//! ```
//!
//! `sled` measures sled alone, the way the write overlay uses it (`crate::store`): batches of
//! `--batch` keys through `apply_batch`, with the epoch collection the store runs after each.
//! Four shapes, each printed as CPU µs per key written: `fresh` (keys never seen, in the
//! order a CREATE_INSTANCE load makes them: an instance key with a ~200-byte value and an
//! empty by-state index key), `overwrite` (the same 2,000 keys rewritten, as APPLY_EVENT on
//! 1,000 instances does; a batch holds each key once, as the overlay does), `overwrite_wide`
//! (200,000 keys rewritten in random order, the first pass fresh) and `fresh_sorted` (fresh
//! keys in ascending order).
//!
//! `fill` creates instances of machine `bench` (each with a `ctx-bytes` padding) in atomic
//! batches of 100 until about `megabytes` of context is stored, then checkpoints and closes:
//! a large database for the backup benchmark (`scripts/backup-bench.sh`).
//!
//! `apply` and `restart` print one JSON document per measurement. `apply --key-file K` turns
//! on encryption at rest with that key file; `--ctx-bytes N` gives every instance a context
//! of about N bytes (default: `{"n": 0}`); `cpu_us_per_op` is the process's user + system CPU
//! time during the measured phase divided by the operations, which stays meaningful on a
//! machine shared with other work, unlike `ops_per_sec`. `writer` applies durable
//! writes forever and prints `ACK <instance> <n> <wal_offset>` after each acknowledged one;
//! the crash test SIGKILLs it and checks every acknowledged write survived.

use rstmdb_storage::{
    ApplyEvent, BatchMode, BatchOp, CreateInstance, Database, EncryptionKey, FsyncPolicy,
    StorageConfig,
};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// The key named by `--key-file`, if any.
fn key_arg(args: &[String]) -> Option<EncryptionKey> {
    arg(args, "--key-file")
        .map(|k| EncryptionKey::from_file(std::path::Path::new(&k)).unwrap_or_else(|e| fail(e)))
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("rstmdb-storage-bench: {msg}");
    std::process::exit(2)
}

fn machine_def() -> serde_json::Value {
    json!({
        "states": ["a", "b"],
        "initial": "a",
        "transitions": [
            {"from": "a", "event": "GO", "to": "b"},
            {"from": "b", "event": "GO", "to": "a"}
        ]
    })
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU time of this process, in microseconds (`/proc/self/stat` fields 14 and
/// 15, in USER_HZ = 100 ticks per second on Linux).
fn cpu_micros() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // The command name (field 2) may hold spaces; fields after it start past the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After ')': field 3 is index 0, so utime (14) is index 11 and stime (15) index 12.
    (ticks(11) + ticks(12)) * 10_000
}

/// CPU time this thread has run, in nanoseconds (`/proc/thread-self/schedstat`, field 1):
/// unaffected by time spent preempted on a busy machine.
fn thread_cpu_nanos() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// CPU cost of sealing and opening one value of each size with AES-256-GCM, as the storage
/// layer does for every WAL record and every instance value it writes or reads.
fn bench_crypto(sizes: &str, iterations: u64) {
    use rstmdb_storage::Cipher;
    let cipher = Cipher::new(&EncryptionKey::from_bytes([7; 32]));
    let aad = b"rstmdb sled v1\0i\0i00000001";
    for size in sizes.split(',') {
        let size: usize = size.parse().unwrap_or_else(|e| fail(e));
        let plain = vec![b'x'; size];
        let mut sealed = Vec::new();
        let started = thread_cpu_nanos();
        for _ in 0..iterations {
            sealed = cipher.seal(aad, &plain).unwrap_or_else(|e| fail(e));
        }
        let seal_ns = (thread_cpu_nanos() - started) as f64 / iterations as f64;
        let started = thread_cpu_nanos();
        for _ in 0..iterations {
            let opened = cipher.open(aad, &sealed).unwrap_or_else(|e| fail(e));
            std::hint::black_box(opened);
        }
        let open_ns = (thread_cpu_nanos() - started) as f64 / iterations as f64;
        println!(
            "{}",
            json!({
                "bench": "aes_256_gcm",
                "bytes": size,
                "iterations": iterations,
                "seal_cpu_ns": seal_ns.round(),
                "open_cpu_ns": open_ns.round(),
            })
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1e6
}

/// Options of `apply` beyond the policy and task count.
#[derive(Clone, Default)]
struct ApplyOpts {
    key: Option<EncryptionKey>,
    ctx_bytes: usize,
}

async fn setup(dir: &PathBuf, policy: FsyncPolicy, instances: usize) -> Database {
    setup_with(dir, policy, instances, &ApplyOpts::default()).await
}

async fn setup_with(
    dir: &PathBuf,
    policy: FsyncPolicy,
    instances: usize,
    opts: &ApplyOpts,
) -> Database {
    let mut cfg = StorageConfig::new(dir);
    cfg.fsync_policy = policy;
    cfg.encryption = opts.key.clone();
    let ctx = if opts.ctx_bytes == 0 {
        json!({"n": 0})
    } else {
        json!({"n": 0, "fill": "x".repeat(opts.ctx_bytes)})
    };
    let db = Database::open(cfg).unwrap_or_else(|e| fail(e));
    if let Err(e) = db.put_machine("bench", 1, &machine_def()).await {
        fail(e);
    }
    for i in 0..instances {
        let r = db
            .create_instance(CreateInstance {
                instance_id: Some(format!("i{i:08}")),
                machine: "bench".into(),
                version: 1,
                initial_ctx: Some(ctx.clone()),
                idempotency_key: None,
            })
            .await;
        if let Err(e) = r
            && e.code() != rstmdb_core::ErrorCode::InstanceExists
        {
            fail(e);
        }
    }
    db
}

async fn bench_apply(
    dir: PathBuf,
    tasks: usize,
    policy: FsyncPolicy,
    seconds: u64,
    opts: &ApplyOpts,
) {
    let _ = std::fs::remove_dir_all(&dir);
    let db = setup_with(&dir, policy, tasks, opts).await;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let cpu_started = cpu_micros();
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let db = db.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let id = format!("i{t:08}");
            while Instant::now() < deadline {
                let s = Instant::now();
                let r = db
                    .apply_event(ApplyEvent {
                        instance_id: id.clone(),
                        event: "GO".into(),
                        ..Default::default()
                    })
                    .await;
                if let Err(e) = r {
                    fail(e);
                }
                lat.push(s.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap_or_else(|e| fail(e)));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_micros().saturating_sub(cpu_started);
    all.sort_unstable();
    let stats = db.commit_stats();
    let groups = stats
        .groups
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(1);
    let records = stats.records.load(std::sync::atomic::Ordering::Relaxed);
    let fsyncs = stats.fsyncs.load(std::sync::atomic::Ordering::Relaxed);
    let fsync_us = stats
        .fsync_micros_total
        .load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{}",
        json!({
            "bench": "apply_event",
            "policy": format!("{policy:?}"),
            "encryption": opts.key.is_some(),
            "ctx_bytes": opts.ctx_bytes,
            "tasks": tasks,
            "ops": all.len(),
            "ops_per_sec": (all.len() as f64 / elapsed).round(),
            "cpu_us_per_op": (cpu as f64 / all.len().max(1) as f64 * 10.0).round() / 10.0,
            "p50_us": percentile(&all, 0.50).round(),
            "p99_us": percentile(&all, 0.99).round(),
            "max_us": percentile(&all, 1.0).round(),
            "mean_group_size": (records as f64 / groups as f64 * 10.0).round() / 10.0,
            "mean_fsync_us": fsync_us.checked_div(fsyncs).unwrap_or(0),
        })
    );
    if let Err(e) = db.close().await {
        fail(e);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

async fn bench_restart(dir: PathBuf, instances: usize) {
    let _ = std::fs::remove_dir_all(&dir);
    let db = setup(&dir, FsyncPolicy::Never, 0).await;
    // Create in parallel: the commit pipeline groups them.
    let chunk = instances.div_ceil(64).max(1);
    let mut handles = Vec::new();
    for t in 0..64usize {
        let db = db.clone();
        handles.push(tokio::spawn(async move {
            for i in (t * chunk)..((t + 1) * chunk).min(instances) {
                let r = db
                    .create_instance(CreateInstance {
                        instance_id: Some(format!("i{i:08}")),
                        machine: "bench".into(),
                        version: 1,
                        initial_ctx: Some(json!({"n": i})),
                        idempotency_key: None,
                    })
                    .await;
                if let Err(e) = r {
                    fail(e);
                }
            }
        }));
    }
    let load_started = Instant::now();
    for h in handles {
        h.await.unwrap_or_else(|e| fail(e));
    }
    let load_secs = load_started.elapsed().as_secs_f64();
    if let Err(e) = db.close().await {
        fail(e);
    }
    // Measure the restart in a fresh process: its RSS is the restart's alone.
    let out = std::process::Command::new(std::env::current_exe().unwrap_or_else(|e| fail(e)))
        .args(["open", "--dir"])
        .arg(&dir)
        .args(["--probe", &format!("i{:08}", instances / 2)])
        .output()
        .unwrap_or_else(|e| fail(e));
    let opened: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| fail(format!("open output: {e}")));
    println!(
        "{}",
        json!({
            "bench": "restart",
            "instances": instances,
            "load_secs": (load_secs * 10.0).round() / 10.0,
            "restart_ms": opened["open_ms"],
            "rss_after_restart_mib": opened["rss_mib"],
            "probe_ok": opened["probe_ok"],
        })
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn open_only(dir: PathBuf, probe: Option<String>) {
    let started = Instant::now();
    let db = Database::open(StorageConfig::new(&dir)).unwrap_or_else(|e| fail(e));
    let open_ms = started.elapsed().as_secs_f64() * 1e3;
    let probe_ok = probe.is_none_or(|id| db.get_instance(&id).is_ok());
    println!(
        "{}",
        json!({"open_ms": open_ms.round(), "rss_mib": rss_kib() / 1024, "probe_ok": probe_ok})
    );
}

async fn writer(dir: PathBuf, tasks: usize, key: Option<EncryptionKey>) {
    let opts = ApplyOpts { key, ctx_bytes: 0 };
    let db = setup_with(&dir, FsyncPolicy::EveryWrite, tasks, &opts).await;
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let db = db.clone();
        let out = out.clone();
        handles.push(tokio::spawn(async move {
            let id = format!("i{t:08}");
            let mut n: u64 = match db.get_instance(&id) {
                Ok(i) => i.ctx.get("n").and_then(|v| v.as_u64()).unwrap_or(0),
                Err(e) => fail(e),
            };
            loop {
                n += 1;
                let r = db
                    .apply_event(ApplyEvent {
                        instance_id: id.clone(),
                        event: "GO".into(),
                        payload: Some(json!({"n": n})),
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(a) => {
                        if let Ok(mut o) = out.lock() {
                            let _ = writeln!(o, "ACK {id} {n} {}", a.wal_offset);
                            let _ = o.flush();
                        }
                    }
                    Err(e) => fail(e),
                }
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
}

async fn fill(dir: PathBuf, megabytes: u64, ctx_bytes: usize) {
    let started = Instant::now();
    let mut cfg = StorageConfig::new(&dir);
    cfg.fsync_policy = FsyncPolicy::Never;
    let db = Database::open(cfg).unwrap_or_else(|e| fail(e));
    if let Err(e) = db.put_machine("bench", 1, &machine_def()).await
        && e.code() != rstmdb_core::ErrorCode::MachineVersionExists
    {
        fail(e);
    }
    let pad = "x".repeat(ctx_bytes);
    let target = megabytes.saturating_mul(1024 * 1024);
    let per_batch = 100u64;
    let batches = target / (ctx_bytes as u64 * per_batch).max(1) + 1;
    for b in 0..batches {
        let ops = (0..per_batch)
            .map(|i| {
                BatchOp::Create(CreateInstance {
                    instance_id: Some(format!("fill-{b:07}-{i:03}")),
                    machine: "bench".into(),
                    version: 1,
                    initial_ctx: Some(json!({"pad": pad, "n": b * per_batch + i})),
                    idempotency_key: None,
                })
            })
            .collect();
        if let Err(e) = db.batch(BatchMode::Atomic, ops).await {
            fail(format!("{e:?}"));
        }
    }
    if let Err(e) = db.close().await {
        fail(e);
    }
    println!(
        "{}",
        json!({
            "mode": "fill",
            "instances": batches * per_batch,
            "ctx_bytes": ctx_bytes,
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
}

/// The two keys one CREATE_INSTANCE adds (instance, by-state index) for instance `n`.
type KeysOf = Box<dyn Fn(usize) -> [Vec<u8>; 2]>;

/// See the module docs (`sled` mode).
fn bench_sled(dir: &std::path::Path, keys: usize, batch: usize) {
    let value = vec![b'v'; 200];
    // Interleaved connections' ids, as rstmdb-bench's create workload names them.
    let fresh = |n: usize| -> [Vec<u8>; 2] {
        let id = format!("bench-0-{}-{}-4242", n % 16, n / 16);
        [
            format!("i\0{id}").into_bytes(),
            format!("s\0bench\0a\0{id}").into_bytes(),
        ]
    };
    let shapes: [(&str, KeysOf); 4] = [
        ("fresh", Box::new(fresh)),
        ("overwrite", Box::new(move |n: usize| fresh(n % 1000))),
        (
            "overwrite_wide",
            Box::new(move |n: usize| fresh(n.wrapping_mul(2_654_435_761) % 100_000)),
        ),
        (
            "fresh_sorted",
            Box::new(|n: usize| {
                [
                    format!("i\0sorted-{n:012}").into_bytes(),
                    format!("s\0bench\0a\0sorted-{n:012}").into_bytes(),
                ]
            }),
        ),
    ];
    for (name, key_of) in shapes {
        let path = dir.join(format!("sled-{name}"));
        let _ = std::fs::remove_dir_all(&path);
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(128 * 1024 * 1024)
            .flush_every_ms(None)
            .open()
            .unwrap_or_else(|e| fail(e));
        let cpu0 = cpu_micros();
        let t0 = Instant::now();
        let mut written = 0usize;
        let mut n = 0usize;
        while written < keys {
            let mut b = sled::Batch::default();
            let mut in_batch = 0;
            while in_batch < batch && written < keys {
                let [k1, k2] = key_of(n);
                b.insert(k1, value.clone());
                b.insert(k2, Vec::new());
                n += 1;
                in_batch += 2;
                written += 2;
            }
            db.apply_batch(b).unwrap_or_else(|e| fail(e));
            for _ in 0..in_batch / 64 + 16 {
                crossbeam_epoch::pin().flush();
            }
        }
        let cpu = cpu_micros().saturating_sub(cpu0) as f64;
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "{}",
            json!({
                "mode": "sled",
                "shape": name,
                "keys": written,
                "batch": batch,
                "cpu_us_per_key": (cpu / written as f64 * 100.0).round() / 100.0,
                "keys_per_sec": (written as f64 / secs).round(),
            })
        );
        drop(db);
        let _ = std::fs::remove_dir_all(&path);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).cloned().unwrap_or_default();
    let dir = PathBuf::from(arg(&args, "--dir").unwrap_or_else(|| fail("--dir is required")));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(e));
    rt.block_on(async move {
        match mode.as_str() {
            "apply" => {
                let tasks = arg(&args, "--tasks").unwrap_or_else(|| "1,16,64".into());
                let policy = match arg(&args, "--policy").as_deref() {
                    None | Some("every_write") => FsyncPolicy::EveryWrite,
                    Some("never") => FsyncPolicy::Never,
                    Some(other) => fail(format!("unknown policy {other}")),
                };
                let seconds = arg(&args, "--seconds")
                    .map(|s| s.parse().unwrap_or_else(|e| fail(e)))
                    .unwrap_or(5);
                let opts = ApplyOpts {
                    key: key_arg(&args),
                    ctx_bytes: arg(&args, "--ctx-bytes")
                        .map(|s| s.parse().unwrap_or_else(|e| fail(e)))
                        .unwrap_or(0),
                };
                for t in tasks.split(',') {
                    let t: usize = t.parse().unwrap_or_else(|e| fail(e));
                    bench_apply(dir.clone(), t, policy, seconds, &opts).await;
                }
            }
            "restart" => {
                let n = arg(&args, "--instances")
                    .map(|s| s.parse().unwrap_or_else(|e| fail(e)))
                    .unwrap_or(1_000_000);
                bench_restart(dir, n).await;
            }
            "open" => open_only(dir, arg(&args, "--probe")),
            "sled" => bench_sled(
                &dir,
                arg(&args, "--keys")
                    .map(|s| s.parse().unwrap_or_else(|e| fail(e)))
                    .unwrap_or(400_000),
                arg(&args, "--batch")
                    .map(|s| s.parse().unwrap_or_else(|e| fail(e)))
                    .unwrap_or(8192),
            ),
            "crypto" => bench_crypto(
                &arg(&args, "--bytes").unwrap_or_else(|| "300,1300".into()),
                arg(&args, "--iterations")
                    .map(|s| s.parse().unwrap_or_else(|e| fail(e)))
                    .unwrap_or(200_000),
            ),
            "fill" => {
                let mb = arg(&args, "--megabytes")
                    .map(|s| s.parse().unwrap_or_else(|e| fail(e)))
                    .unwrap_or(1024);
                let ctx = arg(&args, "--ctx-bytes")
                    .map(|s| s.parse().unwrap_or_else(|e| fail(e)))
                    .unwrap_or(4096);
                fill(dir, mb, ctx).await;
            }
            "writer" => {
                let tasks = arg(&args, "--tasks")
                    .map(|s| s.parse().unwrap_or_else(|e| fail(e)))
                    .unwrap_or(16);
                writer(dir, tasks, key_arg(&args)).await;
            }
            _ => fail("usage: rstmdb-storage-bench apply|restart|writer|crypto --dir D [options]"),
        }
    });
}
