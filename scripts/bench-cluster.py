#!/usr/bin/env python3
"""A three-node loopback cluster against a single node, same machine, same run.

    scripts/bench-cluster.py [--seconds N] [--kills N] [--out DIR]

Builds the release binaries, then for each row starts fresh data directories and measures
with rstmdb-bench (a client runtime on 2 threads, 1,000 instances shared by every
connection, one request in flight per connection):

  single-get-64      GET, 64 connections, one node                  (the baseline for reads)
  single-apply-64    durable APPLY, 64 connections, one node
  cluster-apply-64   durable APPLY, 64 connections, on the leader of a 3-node cluster
  follower-stale-64  GET, 64 connections, on a follower, read_consistency: stale
  follower-lin-64    GET, 64 connections, on a follower, read_consistency: linearizable

and then --kills times (default 20): SIGKILL of the leader, time until a write on a
surviving node is acknowledged (forwarding on), restart of the killed node. Every node runs on
this machine's 2 cores and one disk, with fsync_policy every_write. Prints a table and writes
the raw numbers to DIR/raw.json.
"""
import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = os.path.join(ROOT, "target/release/rstmdb")
BENCH = os.path.join(ROOT, "target/release/rstmdb-bench")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def yaml_of(d, indent=0):
    out = []
    for k, v in d.items():
        pad = "  " * indent
        if isinstance(v, dict):
            out.append(f"{pad}{k}:")
            out.append(yaml_of(v, indent + 1))
        else:
            out.append(f"{pad}{k}: {json.dumps(v)}")
    return "\n".join(out)


class Node:
    def __init__(self, workdir, name, config):
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.config_path = os.path.join(self.dir, "config.yaml")
        with open(self.config_path, "w") as f:
            f.write(yaml_of(config) + "\n")
        self.proc = None
        self.log = open(os.path.join(self.dir, "server.log"), "ab")

    def start(self, port):
        self.proc = subprocess.Popen(
            [SERVER, "--config", self.config_path],
            stdout=self.log, stderr=self.log, cwd=self.dir,
            env={k: v for k, v in os.environ.items() if not k.startswith("RSTMDB_")},
        )
        wait_port(port, self.proc)

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill9()


def base(data_dir, port):
    return {
        "network": {"bind_addr": f"127.0.0.1:{port}", "max_connections": 4096},
        "storage": {"data_dir": data_dir, "fsync_policy": "every_write"},
        "logging": {"level": "warn"},
    }


def bench(addr, workload, conns, seconds, pid):
    cmd = [BENCH, "--addr", addr, "--workload", workload, "--connections", str(conns),
           "--seconds", str(seconds), "--threads", "2", "--instances", "1000",
           "--format", "json", "--server-pid", str(pid)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 10 + 120)
    if out.returncode != 0:
        raise RuntimeError(f"rstmdb-bench failed: {out.stderr}")
    line = [l for l in out.stdout.splitlines() if l.startswith("{")][-1]
    return json.loads(line)


def single(workdir, workload, seconds):
    port = free_port()
    node = Node(workdir, f"single-{workload}", base(os.path.join(workdir, f"single-{workload}", "data"), port))
    node.start(port)
    try:
        return bench(f"127.0.0.1:{port}", workload, 64, seconds, node.proc.pid)
    finally:
        node.stop()


def start_cluster(workdir, tag, read_consistency):
    ports = {i: (free_port(), free_port(), free_port()) for i in (1, 2, 3)}
    members = {i: {"client": f"127.0.0.1:{c}", "raft": f"127.0.0.1:{r}"} for i, (c, r, _) in ports.items()}
    nodes = {}
    for i, (c, r, m) in ports.items():
        name = f"{tag}-{i}"
        cfg = base(os.path.join(workdir, name, "data"), c)
        cfg["metrics"] = {"enabled": True, "bind_addr": f"127.0.0.1:{m}"}
        cfg["cluster"] = {
            "cluster_id": "bench", "node_id": i, "raft_listen": f"127.0.0.1:{r}",
            "initial_members": members,
            "insecure_plaintext": True, "read_consistency": read_consistency,
        }
        node = Node(workdir, name, cfg)
        nodes[i] = (node, c, m)
    for i, (node, c, _) in nodes.items():
        node.proc = subprocess.Popen(
            [SERVER, "--config", node.config_path], stdout=node.log, stderr=node.log, cwd=node.dir,
            env={k: v for k, v in os.environ.items() if not k.startswith("RSTMDB_")})
    for i, (node, c, _) in nodes.items():
        wait_port(c, node.proc)
    return nodes


def leader_of(nodes, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for i, (node, c, m) in nodes.items():
            if node.proc.poll() is not None:
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{m}/leader", timeout=0.5) as r:
                    if r.status == 200:
                        return i
            except Exception:
                pass
        time.sleep(0.05)
    raise RuntimeError("no leader")


def stop_all(nodes):
    for node, _, _ in nodes.values():
        node.stop()


def request(port, op, params, timeout=2):
    """One request over JSON lines (after a HELLO choosing them); the response, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            f = s.makefile("rwb")
            for rid, (o, p) in enumerate(((
                "HELLO", {"protocol_version": 1, "wire_modes": ["jsonl"]}), (op, params))):
                req = {"type": "request", "id": str(rid), "op": o, "params": p}
                f.write((json.dumps(req) + "\n").encode())
                f.flush()
                line = f.readline()
                if not line:
                    return None
            return json.loads(line)
    except (OSError, ValueError):
        return None


def write_ok(port):
    """One CREATE_INSTANCE with a fresh id; True when acknowledged."""
    r = request(port, "CREATE_INSTANCE",
                {"instance_id": f"probe-{time.time_ns()}", "machine": "probe", "version": 1})
    return bool(r) and r.get("status") == "ok"


def put_probe_machine(port):
    r = request(port, "PUT_MACHINE", {"machine": "probe", "version": 1, "definition": {
        "states": ["on"], "initial": "on", "transitions": []}}, timeout=10)
    if not r or r.get("status") != "ok":
        raise RuntimeError(f"PUT_MACHINE failed: {r}")


def failover(workdir, kills):
    nodes = start_cluster(workdir, "failover", "linearizable")
    times = []
    try:
        leader = leader_of(nodes)
        put_probe_machine(nodes[leader][1])
        for _ in range(kills):
            leader = leader_of(nodes)
            survivor = next(i for i in nodes if i != leader)
            node = nodes[leader][0]
            node.kill9()
            t0 = time.monotonic()
            while not write_ok(nodes[survivor][1]):
                if time.monotonic() - t0 > 30:
                    raise RuntimeError("no write acknowledged 30 s after the kill")
                time.sleep(0.01)
            times.append((time.monotonic() - t0) * 1000)
            node.proc = subprocess.Popen(
                [SERVER, "--config", node.config_path], stdout=node.log, stderr=node.log, cwd=node.dir,
                env={k: v for k, v in os.environ.items() if not k.startswith("RSTMDB_")})
            wait_port(nodes[leader][1], node.proc)
            time.sleep(1.0)  # let it catch up before the next kill
    finally:
        stop_all(nodes)
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--out", default=os.path.join(ROOT, "target/bench-cluster"))
    ap.add_argument("--only-failover", action="store_true", help="skip the throughput rows")
    args = ap.parse_args()
    print("== building (release)", flush=True)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "rstmdb", "--bin", "rstmdb-bench"],
                   cwd=ROOT, check=True)
    os.makedirs(args.out, exist_ok=True)
    raw = {}
    with tempfile.TemporaryDirectory(prefix="rstmdb-bench-cluster-") as work:
        if args.only_failover:
            t = sorted(failover(work, args.kills))
            p99 = t[min(len(t) - 1, int(round(0.99 * (len(t) - 1))))]
            print(f"failover (SIGKILL of the leader → first acknowledged write), {len(t)} kills: "
                  f"median {statistics.median(t):.0f} ms, p99 {p99:.0f} ms, max {t[-1]:.0f} ms; all: "
                  + ", ".join(f"{x:.0f}" for x in t))
            return 0
        raw["single-get-64"] = single(work, "get", args.seconds)
        print("single-get-64", raw["single-get-64"]["ops_per_sec"], flush=True)
        raw["single-apply-64"] = single(work, "apply", args.seconds)
        print("single-apply-64", raw["single-apply-64"]["ops_per_sec"], flush=True)
        for rc, tag in (("stale", "follower-stale-64"), ("linearizable", "follower-lin-64")):
            nodes = start_cluster(work, tag, rc)
            try:
                leader = leader_of(nodes)
                if rc == "linearizable":
                    r = bench(f"127.0.0.1:{nodes[leader][1]}", "apply", 64, args.seconds, nodes[leader][0].proc.pid)
                    raw["cluster-apply-64"] = r
                    print("cluster-apply-64", r["ops_per_sec"], flush=True)
                follower = next(i for i in nodes if i != leader)
                r = bench(f"127.0.0.1:{nodes[follower][1]}", "get", 64, args.seconds, nodes[follower][0].proc.pid)
                raw[tag] = r
                print(tag, r["ops_per_sec"], flush=True)
            finally:
                stop_all(nodes)
        if args.kills > 0:
            raw["failover_ms"] = failover(work, args.kills)
    with open(os.path.join(args.out, "raw.json"), "w") as f:
        json.dump(raw, f, indent=1)
    ops = lambda k: raw[k]["ops_per_sec"]
    print()
    print("| row | ops/s | server CPU µs/op (the node measured) | ratio |")
    print("|---|---|---|---|")
    print(f"| single-get-64 | {ops('single-get-64'):,.0f} | {raw['single-get-64'].get('server_cpu_us_per_op')} | 1.00 (baseline) |")
    print(f"| follower-stale-64 | {ops('follower-stale-64'):,.0f} | {raw['follower-stale-64'].get('server_cpu_us_per_op')} | {ops('follower-stale-64') / ops('single-get-64'):.2f}× single GET |")
    print(f"| follower-lin-64 | {ops('follower-lin-64'):,.0f} | {raw['follower-lin-64'].get('server_cpu_us_per_op')} | {ops('follower-lin-64') / ops('single-get-64'):.2f}× single GET |")
    print(f"| single-apply-64 | {ops('single-apply-64'):,.0f} | {raw['single-apply-64'].get('server_cpu_us_per_op')} | 1.00 (baseline) |")
    print(f"| cluster-apply-64 | {ops('cluster-apply-64'):,.0f} | {raw['cluster-apply-64'].get('server_cpu_us_per_op')} | {ops('cluster-apply-64') / ops('single-apply-64'):.2f}× single APPLY |")
    if raw.get("failover_ms"):
        t = sorted(raw["failover_ms"])
        p99 = t[min(len(t) - 1, int(round(0.99 * (len(t) - 1))))]
        print(f"\nfailover (SIGKILL of the leader → first acknowledged write), {len(t)} kills: "
              f"median {statistics.median(t):.0f} ms, p99 {p99:.0f} ms, max {t[-1]:.0f} ms")


if __name__ == "__main__":
    sys.exit(main())
