//! `rstmdb-bench`: drives a running rstmdb server over TCP.
//!
//! ```text
//! rstmdb-bench --addr 127.0.0.1:7401 --connections 1,16,64 --workload apply|get --seconds 5 [--server-pid PID]
//! ```
//!
//! Closed loop: every connection has one request in flight and sends the next as soon as the
//! answer arrives. Prints one JSON line per (workload, connections): ops/s, latency
//! percentiles and, with `--server-pid`, the server's CPU time (utime + stime from
//! `/proc/PID/stat`) per operation.

use bytes::Bytes;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use rstmdb_protocol::FrameCodec;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

#[derive(Debug, Parser)]
#[command(name = "rstmdb-bench", version, about = "Load generator for rstmdb")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:7401")]
    addr: String,
    /// Comma-separated connection counts, one run each.
    #[arg(long, default_value = "1,16,64")]
    connections: String,
    /// `apply` (durable APPLY_EVENT, each connection on its own instance) or `get`.
    #[arg(long, default_value = "apply")]
    workload: String,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// The server's pid, to report its CPU time per operation.
    #[arg(long)]
    server_pid: Option<u32>,
}

type Conn = Framed<TcpStream, FrameCodec>;

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("rstmdb-bench: {msg}");
    std::process::exit(2)
}

async fn call(conn: &mut Conn, id: u64, op: &str, params: Value) -> Result<Value, String> {
    let req = json!({"type": "request", "id": id.to_string(), "op": op, "params": params});
    let bytes = serde_json::to_vec(&req).map_err(|e| e.to_string())?;
    conn.send(Bytes::from(bytes))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let frame = conn
            .next()
            .await
            .ok_or("connection closed")?
            .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&frame.payload).map_err(|e| e.to_string())?;
        if v["type"] == "response" {
            if v["status"] == "ok" {
                return Ok(v["result"].clone());
            }
            return Err(v["error"].to_string());
        }
    }
}

async fn connect(addr: &str) -> Conn {
    let s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| fail(format!("connect {addr}: {e}")));
    let _ = s.set_nodelay(true);
    Framed::new(s, FrameCodec::new())
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

async fn setup(addr: &str, connections: usize, run: usize) {
    let mut c = connect(addr).await;
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
    for i in 0..connections {
        let id = format!("bench-{run}-{i}");
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
}

async fn run_one(args: &Args, connections: usize, run: usize) {
    setup(&args.addr, connections, run).await;
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let cpu_before = args.server_pid.and_then(cpu_secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..connections {
        let addr = args.addr.clone();
        let workload = args.workload.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = connect(&addr).await;
            let instance = format!("bench-{run}-{i}");
            let mut lat = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let t = Instant::now();
                let r = match workload.as_str() {
                    "get" => {
                        call(
                            &mut conn,
                            n,
                            "GET_INSTANCE",
                            json!({"instance_id": instance}),
                        )
                        .await
                    }
                    _ => {
                        call(
                            &mut conn,
                            n,
                            "APPLY_EVENT",
                            json!({"instance_id": instance, "event": "GO"}),
                        )
                        .await
                    }
                };
                if let Err(e) = r {
                    fail(e);
                }
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_else(|e| fail(e)));
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_after = args.server_pid.and_then(cpu_secs);
    all.sort_unstable();
    let ops = all.len() as f64;
    let cpu_us_per_op = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) if ops > 0.0 => Some(((b - a) / ops * 1e6 * 10.0).round() / 10.0),
        _ => None,
    };
    println!(
        "{}",
        json!({
            "workload": args.workload,
            "connections": connections,
            "ops": all.len(),
            "ops_per_sec": (ops / secs).round(),
            "p50_us": pct(&all, 0.5),
            "p99_us": pct(&all, 0.99),
            "p999_us": pct(&all, 0.999),
            "max_us": pct(&all, 1.0),
            "server_cpu_us_per_op": cpu_us_per_op,
        })
    );
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(e));
    rt.block_on(async {
        for (run, c) in args.connections.split(',').enumerate() {
            let c: usize = c
                .trim()
                .parse()
                .unwrap_or_else(|e| fail(format!("--connections: {e}")));
            run_one(&args, c, run).await;
        }
    });
}
