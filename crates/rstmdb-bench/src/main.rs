//! `rstmdb-bench`: drives a running rstmdb server over TCP or TLS.
//!
//! ```text
//! rstmdb-bench --addr 127.0.0.1:7401 --connections 1,16,64 \
//!     --workload apply|create|get|mixed|watch-fanout --seconds 5 \
//!     [--rate OPS_PER_SEC] [--watchers N] [--server-pid PID] [--format json|text] \
//!     [--tls-ca ca.pem [--server-name localhost] [--client-cert c.pem --client-key k.pem]] \
//!     [--token TOKEN] [--threads N] [--pipeline N] [--instances N]
//! ```
//!
//! Workloads: `apply` (durable APPLY_EVENT, each connection on its own instance), `create`
//! (CREATE_INSTANCE with fresh ids), `get` (GET_INSTANCE), `mixed` (per request: 80 % GET,
//! 15 % APPLY, 5 % CREATE), `watch-fanout` (APPLY load while `--watchers` connections each
//! WATCH_ALL; reports events delivered per second and the event delay behind the write).
//!
//! Shapes: by default each connection drives its own instance from a client with one thread
//! that sends every connection's request in one burst. What services do is closer to
//! `--instances 1000 --threads 2`: a pool of instances shared by all connections, each
//! request on a random one, from a client on several threads. Runs of 20 s and more also
//! print a `drift` line comparing their first and last 10 s (ops/s, server CPU per op and
//! RSS with `--server-pid`), which shows state that grows with a connection's history.
//!
//! Closed loop by default: every connection has one request in flight and sends the next as
//! soon as the answer arrives. With `--rate`, requests are scheduled at a fixed total rate
//! spread over the connections and latency is measured from the scheduled send time, so a
//! stalled server shows up in the percentiles instead of silently lowering the load.
//! Output: one line per (workload, connections): ops/s, p50/p99/p999/max latency and, with
//! `--server-pid`, the server's CPU time (utime + stime from `/proc/PID/stat`) per operation.

use bytes::Bytes;
use clap::Parser;
use futures::{FutureExt, SinkExt, StreamExt};
use rstmdb_protocol::FrameCodec;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

#[derive(Debug, Parser, Clone)]
#[command(name = "rstmdb-bench", version, about = "Load generator for rstmdb")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:7401")]
    addr: String,
    /// Comma-separated connection counts, one run each.
    #[arg(long, default_value = "1,16,64")]
    connections: String,
    /// apply, create, get, mixed or watch-fanout.
    #[arg(long, default_value = "apply")]
    workload: String,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Total target rate (requests per second over all connections); closed loop if absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Subscribers for `watch-fanout`.
    #[arg(long, default_value_t = 4)]
    watchers: usize,
    /// The server's pid, to report its CPU time per operation.
    #[arg(long)]
    server_pid: Option<u32>,
    /// `json` (one object per line) or `text`.
    #[arg(long, default_value = "json")]
    format: String,
    /// Connect with TLS, trusting this CA bundle (PEM).
    #[arg(long)]
    tls_ca: Option<String>,
    /// Name to check in the server certificate (default: the host part of --addr).
    #[arg(long)]
    server_name: Option<String>,
    /// Client certificate and key (PEM) for mTLS.
    #[arg(long, requires = "client_key")]
    client_cert: Option<String>,
    #[arg(long, requires = "client_cert")]
    client_key: Option<String>,
    /// Bearer token sent with AUTH on every connection.
    #[arg(long, env = "RSTMDB_TOKEN")]
    token: Option<String>,
    /// Threads of the load generator's runtime. One thread drives thousands of
    /// connections and leaves the rest of the machine to the server; more threads cost
    /// extra wake-ups per request.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Requests in flight per connection (closed loop only). With N > 1 each connection
    /// drives N instances, so its requests never wait on each other's instance lock.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pipeline: u64,
    /// Instances shared by all connections, each request on a random one (created before
    /// the run). Without it every connection (and pipeline slot) has an instance of its own.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    instances: Option<u64>,
}

/// splitmix64: a cheap, well-mixed pseudo-random sequence for picking instances (the load
/// generator needs spread, not unpredictability).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id()))
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z % n.max(1) as u64) as usize
    }
}

/// The instances a run drives: one per (connection, slot), or a shared pool.
#[derive(Clone)]
enum Instances {
    Own,
    Shared(Arc<Vec<String>>),
}

impl Instances {
    /// The instance for request `n` of connection `i` in pipeline slot `slot`.
    fn pick(&self, run: usize, i: usize, slot: usize, rng: &mut Rng) -> String {
        match self {
            Instances::Own => instance_name(run, i, slot),
            Instances::Shared(pool) => pool[rng.below(pool.len())].clone(),
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Conn = Framed<Box<dyn Io>, FrameCodec>;

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("rstmdb-bench: {msg}");
    std::process::exit(2)
}

fn request_bytes(id: u64, op: &str, params: Value) -> Result<Bytes, String> {
    let req = json!({"type": "request", "id": id.to_string(), "op": op, "params": params});
    serde_json::to_vec(&req)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

async fn send(conn: &mut Conn, id: u64, op: &str, params: Value) -> Result<(), String> {
    let bytes = request_bytes(id, op, params)?;
    conn.send(bytes).await.map_err(|e| e.to_string())
}

/// Buffers a request without flushing it.
async fn feed(conn: &mut Conn, id: u64, op: &str, params: Value) -> Result<(), String> {
    let bytes = request_bytes(id, op, params)?;
    conn.feed(bytes).await.map_err(|e| e.to_string())
}

/// The next message (response or event).
async fn recv(conn: &mut Conn) -> Result<Value, String> {
    let frame = conn
        .next()
        .await
        .ok_or("connection closed")?
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&frame.payload).map_err(|e| e.to_string())
}

async fn call(conn: &mut Conn, id: u64, op: &str, params: Value) -> Result<Value, String> {
    send(conn, id, op, params).await?;
    loop {
        let v = recv(conn).await?;
        if v["type"] == "response" {
            if v["status"] == "ok" {
                return Ok(v["result"].clone());
            }
            return Err(v["error"].to_string());
        }
    }
}

fn tls_config(args: &Args) -> Option<Arc<tokio_rustls::rustls::ClientConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let ca = args.tls_ca.as_ref()?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap_or_else(|e| fail(format!("{ca}: {e}"))) {
        let c = c.unwrap_or_else(|e| fail(format!("{ca}: {e}")));
        roots.add(c).unwrap_or_else(|e| fail(format!("{ca}: {e}")));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| fail(e))
        .with_root_certificates(roots);
    let cfg = match (&args.client_cert, &args.client_key) {
        (Some(c), Some(k)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(c)
                .unwrap_or_else(|e| fail(format!("{c}: {e}")))
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| fail(format!("{c}: {e}")));
            let key = PrivateKeyDer::from_pem_file(k).unwrap_or_else(|e| fail(format!("{k}: {e}")));
            builder
                .with_client_auth_cert(chain, key)
                .unwrap_or_else(|e| fail(e))
        }
        _ => builder.with_no_client_auth(),
    };
    Some(Arc::new(cfg))
}

#[derive(Clone)]
struct Target {
    addr: String,
    tls: Option<(Arc<tokio_rustls::rustls::ClientConfig>, String)>,
    token: Option<String>,
}

async fn connect(t: &Target) -> Conn {
    let s = TcpStream::connect(&t.addr)
        .await
        .unwrap_or_else(|e| fail(format!("connect {}: {e}", t.addr)));
    let _ = s.set_nodelay(true);
    let io: Box<dyn Io> = match &t.tls {
        None => Box::new(s),
        Some((cfg, name)) => {
            let name = rustls_pki_types::ServerName::try_from(name.clone())
                .unwrap_or_else(|e| fail(format!("--server-name: {e}")));
            let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, s)
                .await
                .unwrap_or_else(|e| fail(format!("TLS handshake: {e}")));
            Box::new(tls)
        }
    };
    let mut conn = Framed::new(io, FrameCodec::new());
    if let Some(token) = &t.token {
        call(
            &mut conn,
            0,
            "AUTH",
            json!({"method": "bearer", "token": token}),
        )
        .await
        .unwrap_or_else(|e| fail(format!("AUTH: {e}")));
    }
    conn
}

/// CPU seconds (utime + stime) of a process.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0) // USER_HZ is 100 on Linux
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    (sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e6).round()
}

/// The instance that request slot `slot` of connection `i` drives.
fn instance_name(run: usize, i: usize, slot: usize) -> String {
    match slot {
        0 => format!("bench-{run}-{i}"),
        s => format!("bench-{run}-{i}-p{s}"),
    }
}

async fn setup(
    t: &Target,
    connections: usize,
    run: usize,
    pipeline: usize,
    shared: Option<u64>,
) -> Instances {
    let mut c = connect(t).await;
    let def = json!({"states": ["a", "b"], "initial": "a", "transitions": [
        {"from": "a", "event": "GO", "to": "b"}, {"from": "b", "event": "GO", "to": "a"}]});
    call(
        &mut c,
        1,
        "PUT_MACHINE",
        json!({"machine": "bench", "version": 1, "definition": def}),
    )
    .await
    .unwrap_or_else(|e| fail(e));
    let names: Vec<String> = match shared {
        Some(n) => (0..n).map(|j| format!("bench-{run}-s{j}")).collect(),
        None => (0..connections)
            .flat_map(|i| (0..pipeline).map(move |s| instance_name(run, i, s)))
            .collect(),
    };
    for id in &names {
        let r = call(
            &mut c,
            2,
            "CREATE_INSTANCE",
            json!({"instance_id": id, "machine": "bench", "version": 1}),
        )
        .await;
        if let Err(e) = r
            && !e.contains("INSTANCE_EXISTS")
        {
            fail(e);
        }
    }
    match shared {
        Some(_) => Instances::Shared(Arc::new(names)),
        None => Instances::Own,
    }
}

/// A cheap deterministic mix (no RNG dependency): request n of connection i.
fn mixed_op(i: usize, n: u64) -> &'static str {
    match (n.wrapping_mul(2_654_435_761).wrapping_add(i as u64)) % 20 {
        0 => "CREATE_INSTANCE",
        1..=3 => "APPLY_EVENT",
        _ => "GET_INSTANCE",
    }
}

fn request(workload: &str, i: usize, n: u64, instance: &str, run: usize) -> (&'static str, Value) {
    let op = match workload {
        "get" => "GET_INSTANCE",
        "create" => "CREATE_INSTANCE",
        "mixed" => mixed_op(i, n),
        _ => "APPLY_EVENT",
    };
    let params = match op {
        "GET_INSTANCE" => json!({"instance_id": instance}),
        "CREATE_INSTANCE" => json!({
            "instance_id": format!("bench-{run}-{i}-{n}-{}", std::process::id()),
            "machine": "bench", "version": 1,
            "initial_ctx": {"n": n}
        }),
        _ => json!({"instance_id": instance, "event": "GO"}),
    };
    (op, params)
}

/// Subscribers for watch-fanout: each counts events and their delay behind the write
/// (measured against the writer's clock through the payload's `t_us`).
fn spawn_watchers(
    t: &Target,
    n: usize,
    epoch: Instant,
    stop: Instant,
) -> Vec<tokio::task::JoinHandle<(u64, Vec<Duration>)>> {
    (0..n)
        .map(|_| {
            let t = t.clone();
            tokio::spawn(async move {
                let mut conn = connect(&t).await;
                call(&mut conn, 1, "WATCH_ALL", json!({"machines": ["bench"]}))
                    .await
                    .unwrap_or_else(|e| fail(format!("WATCH_ALL: {e}")));
                let mut events = 0u64;
                let mut delays = Vec::new();
                // Events still in flight when the writers stop are drained for 2 s.
                let grace = stop + Duration::from_secs(2);
                while Instant::now() < grace {
                    let left = grace.saturating_duration_since(Instant::now());
                    let Ok(Ok(v)) = tokio::time::timeout(left, recv(&mut conn)).await else {
                        break;
                    };
                    if v["type"] != "event" {
                        continue;
                    }
                    events += 1;
                    if let Some(sent) = v["payload"]["t_us"].as_u64() {
                        let now = epoch.elapsed().as_micros() as u64;
                        delays.push(Duration::from_micros(now.saturating_sub(sent)));
                    }
                }
                (events, delays)
            })
        })
        .collect()
}

/// Operations of a run, counted as they complete (for the drift samples).
#[derive(Default)]
struct Counters {
    completed: AtomicU64,
    errors: AtomicU64,
}

/// Runs of at least this many seconds print a `drift` line.
const DRIFT_MIN_SECS: u64 = 20;
/// The windows the drift line compares: the first and the last this many seconds.
const DRIFT_WINDOW: Duration = Duration::from_secs(10);

/// One reading taken every second during a run.
#[derive(Clone, Copy)]
struct Sample {
    at: Duration,
    completed: u64,
    server_cpu: Option<f64>,
    server_rss_kib: Option<u64>,
}

/// Resident set size of a process (VmRSS from `/proc/PID/status`).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Takes a [`Sample`] every second from `started` until `deadline`.
async fn sample_run(
    counters: Arc<Counters>,
    server_pid: Option<u32>,
    started: Instant,
    deadline: Instant,
) -> Vec<Sample> {
    let take = || Sample {
        at: started.elapsed(),
        completed: counters.completed.load(Ordering::Relaxed),
        server_cpu: server_pid.and_then(cpu_secs),
        server_rss_kib: server_pid.and_then(rss_kib),
    };
    let mut samples = vec![take()];
    let mut tick = tokio::time::interval_at(
        (started + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    while Instant::now() < deadline {
        tick.tick().await;
        samples.push(take());
    }
    samples
}

/// The `drift` object: the first and last [`DRIFT_WINDOW`] of a run side by side.
fn drift(samples: &[Sample]) -> Option<Value> {
    let last = *samples.last()?;
    let first_end = *samples.iter().find(|s| s.at >= DRIFT_WINDOW)?;
    let last_start = *samples
        .iter()
        .rev()
        .find(|s| s.at + DRIFT_WINDOW <= last.at)?;
    let window = |a: Sample, b: Sample| {
        let secs = (b.at - a.at).as_secs_f64();
        let ops = b.completed.saturating_sub(a.completed) as f64;
        let cpu = match (a.server_cpu, b.server_cpu) {
            (Some(x), Some(y)) if ops > 0.0 => Some(((y - x) / ops * 1e7).round() / 10.0),
            _ => None,
        };
        json!({
            "ops_per_sec": (ops / secs.max(1e-9)).round(),
            "server_cpu_us_per_op": cpu,
            "server_rss_kib_at_end": b.server_rss_kib,
        })
    };
    let first = window(samples[0], first_end);
    let end = window(last_start, last);
    let ratio = match (first["ops_per_sec"].as_f64(), end["ops_per_sec"].as_f64()) {
        (Some(a), Some(b)) if a > 0.0 => json!((b / a * 1000.0).round() / 1000.0),
        _ => Value::Null,
    };
    Some(json!({
        "first_10s": first,
        "last_10s": end,
        "last_over_first_ops": ratio,
        "server_rss_kib_at_start": samples[0].server_rss_kib,
    }))
}

/// Closed loop with `depth` requests in flight on one connection. Responses come back in
/// request order (protocol.md), so request n drives instance slot n mod depth and a slot
/// never has two requests in flight.
#[allow(clippy::too_many_arguments)]
async fn pipelined(
    conn: &mut Conn,
    workload: &str,
    i: usize,
    run: usize,
    depth: usize,
    instances: &Instances,
    deadline: Instant,
    counters: &Counters,
) -> Vec<Duration> {
    let mut inflight: std::collections::VecDeque<(u64, Instant)> = Default::default();
    let mut lat = Vec::new();
    let mut n = 0u64;
    let mut rng = Rng::new(i as u64);
    let mut send_next = |n: u64| {
        let instance = instances.pick(run, i, (n as usize - 1) % depth, &mut rng);
        request(workload, i, n, &instance, run)
    };
    while inflight.len() < depth {
        n += 1;
        let (op, params) = send_next(n);
        feed(conn, n, op, params).await.unwrap_or_else(|e| fail(e));
        inflight.push_back((n, Instant::now()));
    }
    // Requests are buffered and flushed only when no response is ready to read, the way a
    // pipelining client batches its writes.
    while let Some((id, t0)) = inflight.pop_front() {
        let v = loop {
            let frame = match conn.next().now_or_never() {
                Some(f) => f,
                None => {
                    SinkExt::<Bytes>::flush(conn)
                        .await
                        .unwrap_or_else(|e| fail(e));
                    conn.next().await
                }
            };
            let frame = frame
                .unwrap_or_else(|| fail("connection closed"))
                .unwrap_or_else(|e| fail(e));
            let v: Value = serde_json::from_slice(&frame.payload).unwrap_or_else(|e| fail(e));
            if v["type"] == "response" {
                break v;
            }
        };
        if v["id"].as_str() != Some(id.to_string().as_str()) {
            fail(format!("response {} arrived for request {id}", v["id"]));
        }
        if v["status"] == "ok" {
            lat.push(t0.elapsed());
            counters.completed.fetch_add(1, Ordering::Relaxed);
        } else {
            let e = v["error"].to_string();
            if e.contains("RATE_LIMITED") || e.contains("CONFLICT") {
                counters.errors.fetch_add(1, Ordering::Relaxed);
            } else {
                fail(e);
            }
        }
        if Instant::now() < deadline {
            n += 1;
            let (op, params) = send_next(n);
            feed(conn, n, op, params).await.unwrap_or_else(|e| fail(e));
            inflight.push_back((n, Instant::now()));
        }
    }
    lat
}

async fn run_one(args: &Args, t: &Target, connections: usize, run: usize) {
    let depth = args.pipeline as usize;
    if depth > 1 && (args.rate.is_some() || args.workload == "watch-fanout") {
        fail("--pipeline works only in the closed loop, without --rate or watch-fanout");
    }
    let instances = setup(t, connections, run, depth, args.instances).await;
    let epoch = Instant::now();
    let fanout = args.workload == "watch-fanout";
    let stop = Instant::now() + Duration::from_secs(args.seconds);
    let watchers = if fanout {
        let w = spawn_watchers(t, args.watchers, epoch, stop);
        // Give the subscriptions a moment to be in place before writes start.
        tokio::time::sleep(Duration::from_millis(200)).await;
        w
    } else {
        Vec::new()
    };
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let cpu_before = args.server_pid.and_then(cpu_secs);
    let own_cpu_before = cpu_secs(std::process::id());
    let started = Instant::now();
    let counters = Arc::new(Counters::default());
    let sampler = (args.seconds >= DRIFT_MIN_SECS).then(|| {
        tokio::spawn(sample_run(
            counters.clone(),
            args.server_pid,
            started,
            deadline,
        ))
    });
    let interval = args
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(connections as f64 / r));
    let mut tasks = Vec::new();
    for i in 0..connections {
        let t = t.clone();
        let workload = args.workload.clone();
        let counters = counters.clone();
        let instances = instances.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = connect(&t).await;
            if depth > 1 {
                return pipelined(
                    &mut conn, &workload, i, run, depth, &instances, deadline, &counters,
                )
                .await;
            }
            let mut rng = Rng::new(i as u64);
            let mut lat = Vec::new();
            let mut n = 0u64;
            // Spread the connections' schedules over one interval.
            let mut next = interval
                .map(|iv| Instant::now() + iv.mul_f64(i as f64 / connections.max(1) as f64));
            while Instant::now() < deadline {
                n += 1;
                let t0 = match (next, interval) {
                    (Some(at), Some(iv)) => {
                        tokio::time::sleep_until(at.into()).await;
                        next = Some(at + iv);
                        at
                    }
                    _ => Instant::now(),
                };
                let instance = instances.pick(run, i, 0, &mut rng);
                let (op, mut params) = request(&workload, i, n, &instance, run);
                if fanout {
                    params["payload"] = json!({"t_us": epoch.elapsed().as_micros() as u64});
                }
                match call(&mut conn, n, op, params).await {
                    Ok(_) => {
                        lat.push(t0.elapsed());
                        counters.completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.contains("RATE_LIMITED") || e.contains("CONFLICT") => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => fail(e),
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap_or_else(|e| fail(e)));
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_after = args.server_pid.and_then(cpu_secs);
    let own_cpu_after = cpu_secs(std::process::id());
    all.sort_unstable();
    let ops = all.len() as f64;
    let per_op = |before: Option<f64>, after: Option<f64>| match (before, after) {
        (Some(a), Some(b)) if ops > 0.0 => Some(((b - a) / ops * 1e6 * 10.0).round() / 10.0),
        _ => None,
    };
    let cpu_us_per_op = per_op(cpu_before, cpu_after);
    let client_cpu_us_per_op = per_op(own_cpu_before, own_cpu_after);
    let mut out = json!({
        "workload": args.workload,
        "connections": connections,
        "pipeline": depth,
        "instances": args.instances,
        "threads": args.threads,
        "target_rate": args.rate,
        "ops": all.len(),
        "errors": counters.errors.load(Ordering::Relaxed),
        "ops_per_sec": (ops / secs).round(),
        "p50_us": pct(&all, 0.5),
        "p99_us": pct(&all, 0.99),
        "p999_us": pct(&all, 0.999),
        "max_us": pct(&all, 1.0),
        "server_cpu_us_per_op": cpu_us_per_op,
        "client_cpu_us_per_op": client_cpu_us_per_op,
    });
    if let Some(sampler) = sampler {
        let samples = sampler.await.unwrap_or_else(|e| fail(e));
        out["drift"] = drift(&samples).unwrap_or(Value::Null);
    }
    if fanout {
        let mut events = 0u64;
        let mut delays = Vec::new();
        for w in watchers {
            let (e, d) = w.await.unwrap_or_else(|e| fail(e));
            events += e;
            delays.extend(d);
        }
        delays.sort_unstable();
        out["watchers"] = json!(args.watchers);
        out["events_delivered"] = json!(events);
        out["events_expected"] = json!(all.len() as u64 * args.watchers as u64);
        out["events_per_sec"] = json!((events as f64 / secs).round());
        out["event_delay_p50_us"] = json!(pct(&delays, 0.5));
        out["event_delay_p99_us"] = json!(pct(&delays, 0.99));
    }
    if args.format == "text" {
        let o = &out;
        println!(
            "{:<12} conns={:<4} depth={:<3} ops/s={:<8} p50={}µs p99={}µs p999={}µs max={}µs errors={} cpu/op={} client_cpu/op={}{}",
            args.workload,
            connections,
            depth,
            o["ops_per_sec"],
            o["p50_us"],
            o["p99_us"],
            o["p999_us"],
            o["max_us"],
            o["errors"],
            o["server_cpu_us_per_op"]
                .as_f64()
                .map_or("-".to_string(), |v| format!("{v}µs")),
            o["client_cpu_us_per_op"]
                .as_f64()
                .map_or("-".to_string(), |v| format!("{v}µs")),
            if fanout {
                format!(
                    " events/s={} delivered={}/{} delay_p50={}µs delay_p99={}µs",
                    o["events_per_sec"],
                    o["events_delivered"],
                    o["events_expected"],
                    o["event_delay_p50_us"],
                    o["event_delay_p99_us"]
                )
            } else {
                String::new()
            }
        );
        let d = &o["drift"];
        if !d.is_null() {
            println!(
                "drift        first 10 s: ops/s={} cpu/op={}µs  last 10 s: ops/s={} cpu/op={}µs  last/first={}  server RSS {} → {} KiB",
                d["first_10s"]["ops_per_sec"],
                d["first_10s"]["server_cpu_us_per_op"],
                d["last_10s"]["ops_per_sec"],
                d["last_10s"]["server_cpu_us_per_op"],
                d["last_over_first_ops"],
                d["server_rss_kib_at_start"],
                d["last_10s"]["server_rss_kib_at_end"],
            );
        }
    } else {
        println!("{out}");
    }
}

fn main() {
    let args = Args::parse();
    if !["apply", "create", "get", "mixed", "watch-fanout"].contains(&args.workload.as_str()) {
        fail(format!(
            "--workload {}: expected apply, create, get, mixed or watch-fanout",
            args.workload
        ));
    }
    if !["json", "text"].contains(&args.format.as_str()) {
        fail("--format: expected json or text");
    }
    let tls = tls_config(&args).map(|cfg| {
        let name = args.server_name.clone().unwrap_or_else(|| {
            args.addr
                .rsplit_once(':')
                .map_or(args.addr.clone(), |(h, _)| {
                    h.trim_matches(['[', ']']).to_string()
                })
        });
        (cfg, name)
    });
    let target = Target {
        addr: args.addr.clone(),
        tls,
        token: args.token.clone(),
    };
    let rt = match args.threads {
        0 => fail("--threads: at least 1"),
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
    .unwrap_or_else(|e| fail(e));
    rt.block_on(async {
        for (run, c) in args.connections.split(',').enumerate() {
            let c: usize = c
                .trim()
                .parse()
                .unwrap_or_else(|e| fail(format!("--connections: {e}")));
            run_one(&args, &target, c, run).await;
        }
    });
}
