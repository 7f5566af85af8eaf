//! A three-node cluster on loopback (issue 19): real `rstmdb` processes, each with its own
//! data directory, client port and peer port, started with nothing but their config files.
//!
//! - formation and replication: a write acknowledged by the leader is readable on every node
//!   and every node's WAL_READ returns the same records at the same offsets;
//! - with `forward_writes: false` a write sent to a follower is refused as not written
//!   (`WAL_IO_ERROR`, retryable, naming the leader); with `true` (the default) it is
//!   forwarded to the leader and answered as if the follower had run it;
//! - reads are linearizable by default: any node asked right after a write was
//!   acknowledged (by any node) shows it;
//! - a write on a leader that lost its quorum times out as `REPLICATION_TIMEOUT`
//!   (`commit_timeout`, committed "unknown"); retried with its idempotency key once the
//!   quorum is back, it is applied exactly once;
//! - a node down while the leader snapshots, purges its log and deletes the segments catches
//!   up by installing the snapshot;
//! - a WATCH_ALL consumer resumes on another node with `from_offset` = last seen + 1 and
//!   gets every later event once, in order;
//! - failover: SIGKILL of the leader under a stream of acknowledged writes, repeatedly; the
//!   others elect a new leader, every acknowledged write survives, none is applied twice, and
//!   the killed node rejoins and catches up;
//! - TLS (`tls.enabled`): the peer link runs mutual TLS with certificates of one CA; a node
//!   whose certificate comes from another CA is refused at the handshake and never joins,
//!   until SIGHUP gives it a certificate of the cluster CA.
//! - operating it: CLUSTER_STATUS, INFO's `cluster`, the raft metrics, `/leader` and
//!   `/readyz` on every node; adding a fourth node (started without `initial_members`) as a
//!   learner, then a voter that serves earlier data; removing a follower (its id refused
//!   afterwards), the leader itself, and refusing to remove the last voter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/pki.rs"]
mod pki;
#[path = "support/mod.rs"]
mod support;

use pki::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

const NODES: u64 = 3;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Cluster {
    nodes: BTreeMap<u64, Server>,
    /// With TLS on, how the test's clients connect (trusting the cluster CA).
    client_tls: Option<Arc<rustls::ClientConfig>>,
}

/// The TLS setup of a test cluster: one CA for every node, except `outsider`, whose
/// certificate comes from another CA (it trusts the cluster CA, so only the others' mTLS
/// keeps it out).
struct ClusterPki {
    pki: Pki,
    other_ca: Ca,
    outsider: Option<u64>,
}

impl ClusterPki {
    fn new(outsider: Option<u64>) -> ClusterPki {
        ClusterPki {
            pki: Pki::new(),
            other_ca: new_ca("another CA"),
            outsider,
        }
    }
}

/// Writes node `id`'s certificate and key into `dir`, signed by `ca`; returns the `tls:`
/// section that uses them, with the cluster CA as client CA.
fn node_tls(dir: &std::path::Path, ca: &Ca, cluster_ca: &std::path::Path, id: u64) -> Value {
    let l = node_leaf(ca, &format!("node-{id}"));
    write_600(&dir.join("node.pem"), &l.cert_pem);
    write_600(&dir.join("node-key.pem"), &l.key_pem);
    json!({
        "enabled": true,
        "cert_path": dir.join("node.pem"),
        "key_path": dir.join("node-key.pem"),
        "client_ca_path": cluster_ca,
    })
}

impl Cluster {
    /// Followers refuse writes (the probe in `wait_leader` relies on it).
    fn start() -> Cluster {
        Cluster::start_with(false)
    }

    fn start_with(forward_writes: bool) -> Cluster {
        Cluster::start_opts(forward_writes, 5000)
    }

    fn start_opts(forward_writes: bool, write_timeout_ms: u64) -> Cluster {
        Cluster::start_full(
            json!({"cluster": {
                "forward_writes": forward_writes,
                "write_timeout_ms": write_timeout_ms
            }}),
            None,
        )
    }

    fn start_tls(tls: &ClusterPki) -> Cluster {
        Cluster::start_full(json!({}), Some(tls))
    }

    /// Three nodes with `overrides` deep-merged into each node's config.
    fn start_full(overrides: Value, tls: Option<&ClusterPki>) -> Cluster {
        // The test's clients trust both CAs: they must reach the outsider's client port too.
        let client_tls = tls.map(|t| {
            write_600(&t.pki.path("ca.pem"), &t.pki.ca.cert.pem());
            let both = format!("{}{}", t.pki.ca.cert.pem(), t.other_ca.cert.pem());
            client_config(&both, None)
        });
        let ports: BTreeMap<u64, (u16, u16)> = (1..=NODES)
            .map(|id| (id, (free_port(), free_port())))
            .collect();
        let members: serde_json::Map<String, Value> = ports
            .iter()
            .map(|(id, (c, r))| {
                (
                    id.to_string(),
                    json!({"client": format!("127.0.0.1:{c}"), "raft": format!("127.0.0.1:{r}")}),
                )
            })
            .collect();
        // Start them all before waiting for any: a node waits for its peers to elect.
        let nodes = ports
            .iter()
            .map(|(id, (c, r))| {
                let dir = tempdir();
                let mut cfg = base_config(&dir.path().join("data"));
                if let Some(t) = tls {
                    let ca = if t.outsider == Some(*id) {
                        &t.other_ca
                    } else {
                        &t.pki.ca
                    };
                    let section = node_tls(dir.path(), ca, &t.pki.path("ca.pem"), *id);
                    merge(&mut cfg, &json!({"tls": section}));
                }
                merge(
                    &mut cfg,
                    &json!({
                        "network": {"bind_addr": format!("127.0.0.1:{c}")},
                        "metrics": {"enabled": true, "bind_addr": "127.0.0.1:0"},
                        "cluster": {
                            "cluster_id": "it-cluster",
                            "node_id": id,
                            "raft_listen": format!("127.0.0.1:{r}"),
                            "initial_members": members,
                            "insecure_plaintext": tls.is_none(),
                            "election_timeout_ms": [300, 600],
                            "heartbeat_ms": 50,
                            "write_timeout_ms": 5000,
                            "forward_writes": false
                        }
                    }),
                );
                merge(&mut cfg, &overrides);
                // Member ids are YAML integers, as an operator writes them.
                let mut yaml = to_yaml(&cfg);
                for id in 1..=NODES {
                    yaml = yaml.replace(&format!("'{id}':"), &format!("{id}:"));
                }
                let server =
                    Server::try_start_in(dir, &yaml, ConfigVia::Flag, &[]).unwrap_or_else(|f| {
                        panic!(
                            "node {id} did not start: {:?}\n{}\n{}",
                            f.status, f.stdout, f.stderr
                        )
                    });
                (*id, server)
            })
            .collect();
        Cluster { nodes, client_tls }
    }

    fn connect(&self, id: u64) -> Client {
        let server = &self.nodes[&id];
        match &self.client_tls {
            None => server.connect(),
            Some(cfg) => Client::try_connect_tls(server.addr(), cfg.clone(), "127.0.0.1")
                .unwrap_or_else(|e| panic!("TLS connection to node {id}: {e}")),
        }
    }

    fn instance(&self, node: u64, id: &str) -> Value {
        let mut c = self.connect(node);
        c.request("GET_INSTANCE", json!({"instance_id": id}))
    }

    /// Waits until node `node` has applied instance `id` with counter `n`.
    fn wait_instance(&self, node: u64, id: &str, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.instance(node, id);
            if r["status"] == "ok" && r["result"]["ctx"]["n"] == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {node} did not apply {id} (n = {n}) within {timeout:?}: {r}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|(id, s)| format!("===== node {id}\n{}", s.all_logs()))
            .collect()
    }

    /// The node that accepts a write now: a CREATE_INSTANCE of a fresh probe id is acknowledged
    /// only by the leader (a follower refuses it as not written).
    fn wait_leader(&mut self, timeout: Duration, probe: &mut u64) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                if !self.nodes.get_mut(&id).unwrap().is_running() {
                    continue;
                }
                *probe += 1;
                let mut c = self.connect(id);
                let r = c.request(
                    "CREATE_INSTANCE",
                    json!({"instance_id": format!("probe-{probe}"), "machine": "probe", "version": 1}),
                );
                if r["status"] == "ok" {
                    return id;
                }
                let mut code = r["error"]["code"].as_str().unwrap_or_default().to_owned();
                // Before the probe machine exists every node says MACHINE_NOT_FOUND: only
                // the leader can store it.
                if code == "MACHINE_NOT_FOUND" {
                    let r = c.request(
                        "PUT_MACHINE",
                        json!({"machine": "probe", "version": 1, "definition": counter_definition()}),
                    );
                    if r["status"] == "ok" {
                        return id;
                    }
                    code = r["error"]["code"].as_str().unwrap_or_default().to_owned();
                }
                assert!(
                    code == "WAL_IO_ERROR" || code == "INTERNAL_ERROR",
                    "unexpected answer from node {id} while looking for the leader: {r}"
                );
            }
            assert!(
                Instant::now() < deadline,
                "no leader within {timeout:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// PUT_MACHINE `counter` through node `id`, retried until some node leads (with
    /// forwarding on, any node answers a write once there is a leader).
    fn put_counter_through(&self, id: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut c = self.nodes[&id].connect();
            let r = c.request(
                "PUT_MACHINE",
                json!({"machine": "counter", "version": 1, "definition": counter_definition()}),
            );
            if r["status"] == "ok" {
                return;
            }
            assert!(
                ["REPLICATION_TIMEOUT", "WAL_IO_ERROR"]
                    .contains(&r["error"]["code"].as_str().unwrap_or_default()),
                "{r}"
            );
            assert!(Instant::now() < deadline, "no leader: {r}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The node with the longest log: after writes through every node have been
    /// acknowledged, the leader (whose log every other converges to).
    fn wait_leader_by_log(&self) -> u64 {
        let mut best = (0, 0);
        for id in self.nodes.keys() {
            let n = self.wal(*id).last().map_or(0, |(o, _)| *o);
            if n >= best.1 {
                best = (*id, n);
            }
        }
        best.0
    }

    /// Every record of node `id`'s log (offset, entry), read with WAL_READ.
    fn wal(&self, id: u64) -> Vec<(u64, Value)> {
        let mut c = self.connect(id);
        let mut out = Vec::new();
        let mut from = 0u64;
        loop {
            let page = c.ok("WAL_READ", json!({"from_offset": from, "limit": 1000}));
            let records = page["records"].as_array().cloned().unwrap_or_default();
            for r in &records {
                out.push((r["offset"].as_u64().unwrap(), r["entry"].clone()));
            }
            // A page of raft's own records only is empty but still moves `next_offset` on.
            match page["next_offset"].as_u64() {
                Some(n) if n > from => from = n,
                _ => return out,
            }
        }
    }

    /// Waits until every running node's log equals the leader's (same records, same offsets).
    fn wait_converged(&mut self, leader: u64, timeout: Duration) -> Vec<(u64, Value)> {
        let deadline = Instant::now() + timeout;
        loop {
            let want = self.wal(leader);
            let mut all = true;
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                if id == leader || !self.nodes.get_mut(&id).unwrap().is_running() {
                    continue;
                }
                if self.wal(id) != want {
                    all = false;
                }
            }
            if all {
                return want;
            }
            assert!(
                Instant::now() < deadline,
                "the nodes' logs did not converge within {timeout:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Starts node `id` on client port `client` and peer port `raft`, with its metrics endpoint
/// on. Without `members` it has no initial membership: it waits to be added.
fn start_node(
    id: u64,
    client: u16,
    raft: u16,
    members: Option<&serde_json::Map<String, Value>>,
) -> Server {
    let dir = tempdir();
    let mut cfg = base_config(&dir.path().join("data"));
    merge(
        &mut cfg,
        &json!({
            "network": {"bind_addr": format!("127.0.0.1:{client}")},
            "metrics": {"enabled": true, "bind_addr": "127.0.0.1:0"},
            "cluster": {
                "cluster_id": "it-cluster",
                "node_id": id,
                "raft_listen": format!("127.0.0.1:{raft}"),
                "insecure_plaintext": true,
                "election_timeout_ms": [300, 600],
                "heartbeat_ms": 50,
                "write_timeout_ms": 5000,
                "forward_writes": false
            }
        }),
    );
    if let Some(m) = members {
        cfg["cluster"]["initial_members"] = Value::Object(m.clone());
    }
    // Member ids are YAML integers, as an operator writes them.
    let mut yaml = to_yaml(&cfg);
    for m in 1..=NODES {
        yaml = yaml.replace(&format!("'{m}':"), &format!("{m}:"));
    }
    Server::try_start_in(dir, &yaml, ConfigVia::Flag, &[]).unwrap_or_else(|f| {
        panic!(
            "node {id} did not start: {:?}\n{}\n{}",
            f.status, f.stdout, f.stderr
        )
    })
}

fn instance(server: &Server, id: &str) -> Value {
    let mut c = server.connect();
    c.request("GET_INSTANCE", json!({"instance_id": id}))
}

#[test]
fn three_nodes_form_a_cluster_and_every_node_serves_the_same_log() {
    let mut cluster = Cluster::start();
    let mut probe = 0;
    let leader = cluster.wait_leader(Duration::from_secs(20), &mut probe);
    let mut c = cluster.nodes[&leader].connect();
    put_counter(&mut c, "counter");
    create(&mut c, "counter", "a", json!({"n": 0}));
    let mut last = Value::Null;
    for i in 1..=5 {
        last = apply(&mut c, "a", "inc", json!({"n": i}));
    }
    let acked = last["wal_offset"].as_u64().unwrap();

    // A follower refuses a write as not written, and says who leads.
    let follower = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    let mut f = cluster.nodes[&follower].connect();
    let r = f.request(
        "CREATE_INSTANCE",
        json!({"instance_id": "on-follower", "machine": "counter", "version": 1}),
    );
    assert_eq!(r["error"]["code"], "WAL_IO_ERROR", "{r}");
    assert_eq!(r["error"]["retryable"], true, "{r}");
    let leader_client = cluster.nodes[&leader].addr().to_string();
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&leader_client),
        "the refusal should name the leader's client address {leader_client}: {r}"
    );

    let log = cluster.wait_converged(leader, Duration::from_secs(20));
    assert!(
        log.iter().any(|(off, _)| *off == acked),
        "the acknowledged offset {acked} is in the log: {log:?}"
    );
    // Raft's own records (blank, membership) are not shown: every record is a client's.
    assert!(
        log.iter()
            .all(|(_, e)| e["type"] != "noop" && e["type"] != "membership")
    );
    for (id, server) in &cluster.nodes {
        let r = instance(server, "a");
        assert_eq!(r["status"], "ok", "node {id}: {r}");
        assert_eq!(r["result"]["ctx"]["n"], 5, "node {id}: {r}");
        assert_eq!(r["result"]["last_wal_offset"], acked, "node {id}: {r}");
    }
}

#[test]
fn killing_the_leader_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start();
    let mut probe = 0;
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut failover_ms = Vec::new();
    let mut leader = cluster.wait_leader(Duration::from_secs(20), &mut probe);
    {
        let mut c = cluster.nodes[&leader].connect();
        put_counter(&mut c, "counter");
    }
    let cycles: u64 = std::env::var("CLUSTER_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    for cycle in 0..cycles {
        // Acknowledged writes on the current leader, each with an idempotency key.
        let mut c = cluster.nodes[&leader].connect();
        for i in 0..20 {
            let id = format!("c{cycle}-{i}");
            let r = c.request(
                "CREATE_INSTANCE",
                json!({"instance_id": id, "machine": "counter", "version": 1,
                       "initial_ctx": {"cycle": cycle, "i": i}, "idempotency_key": format!("k-{id}")}),
            );
            assert_eq!(
                r["status"], "ok",
                "cycle {cycle} write {i} on leader {leader}: {r}"
            );
            acked.insert(id, r["result"]["wal_offset"].as_u64().unwrap());
        }
        drop(c);
        let killed = leader;
        cluster.nodes.get_mut(&killed).unwrap().kill_9();
        let t0 = Instant::now();
        leader = cluster.wait_leader(Duration::from_secs(20), &mut probe);
        failover_ms.push(t0.elapsed().as_millis());
        assert_ne!(leader, killed);
        // Every acknowledged write is on the new leader, at its acknowledged offset.
        for (id, off) in &acked {
            let r = instance(&cluster.nodes[&leader], id);
            assert_eq!(
                r["status"], "ok",
                "cycle {cycle}: {id} lost after the kill: {r}"
            );
            assert_eq!(
                r["result"]["last_wal_offset"], *off,
                "cycle {cycle}: {id}: {r}"
            );
        }
        cluster.nodes.get_mut(&killed).unwrap().restart();
    }
    // A retried write with a used idempotency key is answered from the record, not re-applied.
    let mut c = cluster.nodes[&leader].connect();
    let (first, off) = acked.iter().next().map(|(k, v)| (k.clone(), *v)).unwrap();
    let r = c.request(
        "CREATE_INSTANCE",
        json!({"instance_id": first, "machine": "counter", "version": 1,
               "initial_ctx": {"cycle": 0, "i": 0}, "idempotency_key": format!("k-{first}")}),
    );
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["result"]["wal_offset"], off, "{r}");

    let log = cluster.wait_converged(leader, Duration::from_secs(30));
    // No acknowledged create is in the log twice.
    let mut seen = std::collections::HashSet::new();
    for (off, e) in &log {
        if e["type"] == "create_instance" {
            let id = e["instance_id"].as_str().unwrap().to_owned();
            assert!(
                seen.insert(id.clone()),
                "{id} created twice (again at {off})"
            );
        }
    }
    for (id, off) in &acked {
        assert!(
            log.iter()
                .any(|(o, e)| o == off && e["instance_id"] == id.as_str()),
            "{id} is not at its acknowledged offset {off} in the converged log"
        );
    }
    eprintln!(
        "time from SIGKILL of the leader to the next acknowledged write, ms: {failover_ms:?}"
    );
    let mut sorted = failover_ms.clone();
    sorted.sort_unstable();
    eprintln!(
        "CLUSTER SUMMARY cycles={cycles} acknowledged={} lost=0 duplicates=0 failover_ms_median={} failover_ms_max={}",
        acked.len(),
        sorted.get(sorted.len() / 2).copied().unwrap_or(0),
        sorted.last().copied().unwrap_or(0)
    );
}

/// Whether a line of `logs` contains `what`.
fn mentions(logs: &str, what: &str) -> bool {
    logs.lines().any(|l| l.contains(what))
}

#[test]
fn a_tls_cluster_replicates_and_fails_over_on_mutual_tls_peers() {
    let t = ClusterPki::new(None);
    let mut cluster = Cluster::start_tls(&t);
    for (id, s) in &cluster.nodes {
        assert!(
            mentions(&s.stdout(), "peer_tls=true"),
            "node {id} should run TLS peers:\n{}",
            s.all_logs()
        );
    }
    let mut probe = 0;
    let leader = cluster.wait_leader(Duration::from_secs(20), &mut probe);
    let mut c = cluster.connect(leader);
    put_counter(&mut c, "counter");
    create(&mut c, "counter", "a", json!({"n": 0}));
    apply(&mut c, "a", "inc", json!({"n": 1}));
    drop(c);
    for id in 1..=NODES {
        cluster.wait_instance(id, "a", 1, Duration::from_secs(15));
    }

    cluster.nodes.get_mut(&leader).unwrap().kill_9();
    let next = cluster.wait_leader(Duration::from_secs(20), &mut probe);
    assert_ne!(next, leader);
    let mut c = cluster.connect(next);
    apply(&mut c, "a", "inc", json!({"n": 2}));
    drop(c);
    for id in (1..=NODES).filter(|id| *id != leader) {
        cluster.wait_instance(id, "a", 2, Duration::from_secs(15));
    }
}

#[test]
fn a_node_with_a_certificate_of_another_ca_cannot_join_until_sighup_gives_it_one() {
    const OUTSIDER: u64 = 3;
    let t = ClusterPki::new(Some(OUTSIDER));
    let mut cluster = Cluster::start_tls(&t);
    let mut probe = 0;
    // Two of three are a majority: they elect a leader among themselves.
    let leader = cluster.wait_leader(Duration::from_secs(20), &mut probe);
    assert_ne!(leader, OUTSIDER);
    let follower = (1..=NODES)
        .find(|id| *id != leader && *id != OUTSIDER)
        .unwrap();
    let mut c = cluster.connect(leader);
    put_counter(&mut c, "counter");
    create(&mut c, "counter", "a", json!({"n": 0}));
    apply(&mut c, "a", "inc", json!({"n": 1}));
    drop(c);
    cluster.wait_instance(follower, "a", 1, Duration::from_secs(15));
    // Time for a replication round or two more: the outsider still cannot reach a leader,
    // so it cannot serve a (linearizable, the default) read at all.
    std::thread::sleep(Duration::from_secs(1));
    let r = cluster.instance(OUTSIDER, "a");
    assert_eq!(r["error"]["code"], "REPLICATION_TIMEOUT", "{r}");
    assert_eq!(r["error"]["details"]["reason"], "no_leader", "{r}");

    // Both sides log the refused handshakes, with the peer's address.
    let outsider_logs = cluster.nodes[&OUTSIDER].all_logs();
    assert!(
        mentions(&outsider_logs, "peer TLS handshake failed"),
        "{outsider_logs}"
    );
    let leader_logs = cluster.nodes[&leader].all_logs();
    assert!(
        leader_logs
            .lines()
            .any(|l| l.contains("peer TLS handshake failed")
                && l.contains("peer=127.0.0.1:")
                && l.contains("UnknownIssuer")),
        "{leader_logs}"
    );
    for id in [leader, OUTSIDER] {
        let (_, _, body) = scrape::get(scrape::metrics_addr(&cluster.nodes[&id]), "/metrics");
        let failures = scrape::sample(&body, "rstmdb_peer_tls_handshake_failures_total");
        assert!(failures >= 1.0, "node {id} counted {failures} failures");
    }

    // SIGHUP swaps in a certificate of the cluster CA: new peer connections use it.
    let dir = cluster.nodes[&OUTSIDER].dir().to_path_buf();
    node_tls(&dir, &t.pki.ca, &t.pki.path("ca.pem"), OUTSIDER);
    cluster.nodes[&OUTSIDER].signal("HUP");
    cluster.wait_instance(OUTSIDER, "a", 1, Duration::from_secs(20));
    let logs = cluster.nodes[&OUTSIDER].stdout();
    assert!(mentions(&logs, "peer_tls=true reloads_ok=1"), "{logs}");
}

#[test]
fn with_forwarding_every_node_takes_writes() {
    let mut cluster = Cluster::start_with(true);
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    // Any node answers a write once there is a leader.
    cluster.put_counter_through(ids[0]);
    let mut offsets = Vec::new();
    for id in &ids {
        let mut c = cluster.nodes[id].connect();
        let name = format!("via-{id}");
        let r = c.ok(
            "CREATE_INSTANCE",
            json!({"instance_id": name, "machine": "counter", "version": 1, "idempotency_key": format!("k-{name}")}),
        );
        let off = r["wal_offset"].as_u64().unwrap();
        // The same key again through another node: the original answer, not a second write.
        let other = ids[(ids.iter().position(|x| x == id).unwrap() + 1) % ids.len()];
        let mut c2 = cluster.nodes[&other].connect();
        let again = c2.ok(
            "CREATE_INSTANCE",
            json!({"instance_id": name, "machine": "counter", "version": 1, "idempotency_key": format!("k-{name}")}),
        );
        assert_eq!(again["wal_offset"].as_u64(), Some(off), "{again}");
        let applied = c.ok("APPLY_EVENT", json!({"instance_id": name, "event": "inc"}));
        let off = applied["wal_offset"].as_u64().unwrap();
        offsets.push(off);
        // Linearizable reads (the default): every node, asked right after the
        // acknowledgement, already shows the write.
        for (rid, server) in &cluster.nodes {
            let r = instance(server, &name);
            assert_eq!(
                r["result"]["last_wal_offset"].as_u64(),
                Some(off),
                "node {rid} read {name} right after the write at {off}: {r}"
            );
        }
    }
    let leader = cluster.wait_leader_by_log();
    let log = cluster.wait_converged(leader, Duration::from_secs(20));
    for off in offsets {
        assert!(log.iter().any(|(o, _)| *o == off), "{off} not in the log");
    }
    for (id, server) in &cluster.nodes {
        for name in ["via-1", "via-2", "via-3"] {
            let r = instance(server, name);
            assert_eq!(r["status"], "ok", "node {id}: {name}: {r}");
        }
    }
}

#[test]
fn a_write_without_quorum_times_out_in_doubt_and_a_retry_resolves_it() {
    let mut cluster = Cluster::start_opts(false, 1500);
    let mut probe = 0;
    let leader = cluster.wait_leader(Duration::from_secs(20), &mut probe);
    let mut c = cluster.nodes[&leader].connect();
    put_counter(&mut c, "counter");
    let followers: Vec<u64> = cluster
        .nodes
        .keys()
        .copied()
        .filter(|id| *id != leader)
        .collect();
    for id in &followers {
        cluster.nodes.get_mut(id).unwrap().kill_9();
    }
    let params = json!({"instance_id": "doubt", "machine": "counter", "version": 1, "idempotency_key": "k-doubt"});
    let r = c.request("CREATE_INSTANCE", params.clone());
    assert_eq!(r["error"]["code"], "REPLICATION_TIMEOUT", "{r}");
    assert_eq!(r["error"]["retryable"], true, "{r}");
    assert_eq!(r["error"]["details"]["reason"], "commit_timeout", "{r}");
    assert_eq!(r["error"]["details"]["committed"], "unknown", "{r}");
    for id in &followers {
        cluster.nodes.get_mut(id).unwrap().restart();
    }
    // The retry with the same key resolves the doubt: one application, whatever happened.
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let leader = cluster.wait_leader(Duration::from_secs(20), &mut probe);
        let mut c = cluster.nodes[&leader].connect();
        let r = c.request("CREATE_INSTANCE", params.clone());
        if r["status"] == "ok" {
            break r["result"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "the retry never succeeded: {r}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let leader = cluster.wait_leader(Duration::from_secs(20), &mut probe);
    let mut c = cluster.nodes[&leader].connect();
    let again = c.ok("CREATE_INSTANCE", params);
    assert_eq!(
        again["wal_offset"], first["wal_offset"],
        "{again} vs {first}"
    );
    let log = cluster.wait_converged(leader, Duration::from_secs(20));
    let creates = log
        .iter()
        .filter(|(_, e)| e["type"] == "create_instance" && e["instance_id"] == "doubt")
        .count();
    assert_eq!(creates, 1, "applied exactly once: {log:?}");
}

#[test]
fn a_node_down_through_a_snapshot_and_purge_catches_up_by_installing_it() {
    // Small segments and snapshots, frequent checkpoints: the leader's log before the
    // snapshot is purged and its segments deleted while node `down` is stopped.
    let mut cluster = Cluster::start_full(
        json!({
            "storage": {"wal_segment_size_mb": 1, "wal_retention_mb": 0},
            "compaction": {"events_threshold": 300, "min_interval_secs": 0},
            "cluster": {"snapshot_log_mb": 1}
        }),
        None,
    );
    let mut probe = 0;
    let leader = cluster.wait_leader(Duration::from_secs(20), &mut probe);
    let mut c = cluster.nodes[&leader].connect();
    put_counter(&mut c, "counter");
    create(&mut c, "counter", "before", json!({}));
    let down = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    cluster.nodes.get_mut(&down).unwrap().kill_9();
    // Well past what openraft keeps after a snapshot (1,000 entries), about 7 MB of records: a
    // snapshot every ~250 records (1 MB), the same per 1 MB segment.
    let pad = "x".repeat(4000);
    let mut last = 0;
    for i in 0..1800 {
        let r = c.ok(
            "CREATE_INSTANCE",
            json!({"instance_id": format!("while-down-{i}"), "machine": "counter", "version": 1,
                   "initial_ctx": {"pad": pad}}),
        );
        last = r["wal_offset"].as_u64().unwrap();
    }
    // The leader snapshots (checked each second) and purges; checkpoints delete segments.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let earliest = cluster.wal(leader).first().map_or(0, |(o, _)| *o);
        if earliest > 10 {
            break;
        }
        let mut c = cluster.nodes[&leader].connect();
        c.ok("COMPACT", json!({}));
        assert!(
            Instant::now() < deadline,
            "the leader never dropped its early log (earliest {earliest})\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    cluster.nodes.get_mut(&down).unwrap().restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = instance(&cluster.nodes[&down], "while-down-1799");
        if r["status"] == "ok" {
            assert_eq!(r["result"]["last_wal_offset"].as_u64(), Some(last), "{r}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {down} never caught up: {r}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(instance(&cluster.nodes[&down], "before")["status"], "ok");
    assert!(
        cluster.nodes[&down]
            .stdout()
            .contains("installed a raft snapshot"),
        "node {down} caught up without a snapshot?\n{}",
        cluster.nodes[&down].stdout()
    );
}

#[test]
fn cluster_init_turns_a_single_node_into_a_one_voter_cluster_keeping_every_offset() {
    let mut s = Server::start();
    let mut c = s.connect();
    put_counter(&mut c, "counter");
    create(&mut c, "counter", "old", json!({"n": 1}));
    apply(&mut c, "old", "inc", json!({"n": 2}));
    drop(c);
    let mut c = s.connect();
    let before = c.ok("WAL_READ", json!({"from_offset": 0}))["records"].clone();
    let last = before.as_array().unwrap().last().unwrap()["offset"]
        .as_u64()
        .unwrap();
    drop(c);
    assert!(s.terminate().success());

    // The same data directory, now with a cluster: section (node 1, its own addresses).
    let (client, raft) = (free_port(), free_port());
    let mut cfg = base_config(&s.data_dir());
    merge(
        &mut cfg,
        &json!({
            "network": {"bind_addr": format!("127.0.0.1:{client}")},
            "cluster": {"cluster_id": "converted", "node_id": 1,
                        "raft_listen": format!("127.0.0.1:{raft}"), "insecure_plaintext": true,
                        "election_timeout_ms": [300, 600], "heartbeat_ms": 50}
        }),
    );
    std::fs::write(s.config_path(), to_yaml(&cfg)).unwrap();
    let config = s.config_path().to_string_lossy().to_string();
    let init = |what: &str| {
        run_to_exit(
            &["--config", &config, "cluster", "init"],
            &[],
            s.dir(),
            Duration::from_secs(30),
        )
        .tap(what)
    };
    let (st, out, err) = init("first");
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{out}\n{err}");
    assert!(out.contains(&format!("offsets 1..={last} kept")), "{out}");
    let (st, _, err) = init("again");
    assert_eq!(st.and_then(|s| s.code()), Some(1), "{err}");
    assert!(err.contains("already belongs to a cluster"), "{err}");

    s.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let created = loop {
        let mut c = s.connect();
        let r = c.request(
            "CREATE_INSTANCE",
            json!({"instance_id": "new", "machine": "counter", "version": 1}),
        );
        if r["status"] == "ok" {
            break r["result"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "never elected itself: {r}\n{}",
            s.all_logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        created["wal_offset"].as_u64().unwrap() > last + 1,
        "continues after the old records and the membership record: {created}"
    );
    let mut c = s.connect();
    let old = c.ok("GET_INSTANCE", json!({"instance_id": "old"}));
    assert_eq!(old["ctx"]["n"], 2, "{old}");
    let after = c.ok("WAL_READ", json!({"from_offset": 0}))["records"].clone();
    let after = after.as_array().unwrap();
    assert_eq!(
        &after[..before.as_array().unwrap().len()],
        before.as_array().unwrap().as_slice(),
        "every old record at its old offset"
    );
}

/// Names a child run in a failure message.
trait Tap {
    fn tap(self, what: &str) -> Self;
}

impl Tap for (Option<std::process::ExitStatus>, String, String) {
    fn tap(self, what: &str) -> Self {
        eprintln!(
            "cluster init ({what}): {:?}\n{}\n{}",
            self.0, self.1, self.2
        );
        self
    }
}

#[test]
fn a_watch_resumes_on_another_node_without_gap_or_duplicate() {
    let mut cluster = Cluster::start_with(true);
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    // A write through node 1 succeeds once there is a leader (forwarded if need be).
    cluster.put_counter_through(ids[0]);
    let mut writer = cluster.nodes[&ids[0]].connect();
    create(&mut writer, "counter", "w", json!({}));
    // Watch on node 2, take some events, drop the connection mid-stream.
    let mut w = cluster.nodes[&ids[1]].connect();
    w.ok("WATCH_ALL", json!({"from_offset": 0}));
    let mut seen: Vec<u64> = Vec::new();
    for i in 0..10 {
        apply(&mut writer, "w", "inc", json!({"i": i}));
    }
    for _ in 0..5 {
        seen.push(
            w.next_event(Duration::from_secs(10))["wal_offset"]
                .as_u64()
                .unwrap(),
        );
    }
    drop(w);
    for i in 10..20 {
        apply(&mut writer, "w", "inc", json!({"i": i}));
    }
    // Resume on node 3 after the last event seen.
    let mut w = cluster.nodes[&ids[2]].connect();
    let from = seen.last().unwrap() + 1;
    w.ok("WATCH_ALL", json!({"from_offset": from}));
    while seen.len() < 20 {
        seen.push(
            w.next_event(Duration::from_secs(10))["wal_offset"]
                .as_u64()
                .unwrap(),
        );
    }
    assert!(
        w.try_next_event(Duration::from_millis(300)).is_none(),
        "no extra event"
    );
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, seen, "strictly increasing, no duplicate: {seen:?}");
    // Exactly the applies in the log, none missing.
    let leader = cluster.wait_leader_by_log();
    let log = cluster.wait_converged(leader, Duration::from_secs(20));
    let applies: Vec<u64> = log
        .iter()
        .filter(|(_, e)| e["type"] == "apply_event")
        .map(|(o, _)| *o)
        .collect();
    assert_eq!(applies, seen, "every apply once, in order");
}

/// CLUSTER_STATUS on `server`, which must succeed.
fn status(server: &Server) -> Value {
    server.connect().ok("CLUSTER_STATUS", json!({}))
}

/// Waits until every node's status names `leader` in one term; returns the statuses.
fn wait_statuses_agree(cluster: &Cluster, leader: u64) -> BTreeMap<u64, Value> {
    let agreed = wait_for(Duration::from_secs(20), || {
        let all: BTreeMap<u64, Value> = cluster
            .nodes
            .iter()
            .map(|(id, s)| (*id, status(s)))
            .collect();
        let term = &all[&leader]["term"];
        all.values()
            .all(|s| s["leader"]["node_id"] == leader && &s["term"] == term)
            .then_some(all)
    });
    agreed.unwrap_or_else(|| {
        panic!(
            "the nodes did not agree on leader {leader}\n{}",
            cluster.logs()
        )
    })
}

#[test]
fn cluster_status_info_metrics_and_leader_endpoint_on_every_node() {
    use support::scrape::{get, metrics_addr, promtool_check, sample};
    let mut cluster = Cluster::start();
    let mut probe = 0;
    let leader = cluster.wait_leader(Duration::from_secs(20), &mut probe);
    let statuses = wait_statuses_agree(&cluster, leader);
    for (id, s) in &statuses {
        assert_eq!(s["cluster_id"], "it-cluster", "{s}");
        assert_eq!(s["node_id"], *id, "{s}");
        let role = if *id == leader { "leader" } else { "follower" };
        assert_eq!(s["role"], role, "node {id}: {s}");
        assert_eq!(
            s["leader"]["client"],
            cluster.nodes[&leader].addr().to_string(),
            "{s}"
        );
        let ids: Vec<u64> = s["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["node_id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, vec![1, 2, 3], "{s}");
        assert!(
            s["members"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["voter"] == true)
        );
        assert!(s["applied_index"].as_u64().unwrap() >= 1, "{s}");
        assert!(
            s["committed_index"].as_u64() >= s["applied_index"].as_u64(),
            "{s}"
        );
        // Only the leader knows how far each member is.
        for m in s["members"].as_array().unwrap() {
            assert_eq!(m["matched_index"].is_u64(), *id == leader, "node {id}: {s}");
            assert_eq!(m["lag"].is_u64(), *id == leader, "node {id}: {s}");
        }
        // INFO says the same, additively.
        let info = cluster.nodes[id].connect().ok("INFO", json!({}));
        assert_eq!(info["cluster"]["node_id"], *id, "{info}");
        assert_eq!(info["cluster"]["cluster_id"], "it-cluster", "{info}");
        assert_eq!(info["cluster"]["role"], role, "{info}");
        assert_eq!(
            info["cluster"]["leader_client"],
            cluster.nodes[&leader].addr().to_string(),
            "{info}"
        );
    }
    let term = statuses[&leader]["term"].as_u64().unwrap();
    for (id, server) in &cluster.nodes {
        let m = metrics_addr(server);
        let (st, _, body) = get(m, "/metrics");
        assert!(st.contains("200"), "{st}");
        promtool_check(&body);
        let is_leader = u64::from(*id == leader) as f64;
        assert_eq!(
            sample(&body, "rstmdb_raft_is_leader"),
            is_leader,
            "node {id}"
        );
        assert_eq!(sample(&body, "rstmdb_raft_term"), term as f64, "node {id}");
        assert!(
            sample(&body, "rstmdb_raft_leader_changes_total") >= 1.0,
            "{body}"
        );
        let last = sample(&body, "rstmdb_raft_last_log_index");
        let committed = sample(&body, "rstmdb_raft_committed_index");
        let applied = sample(&body, "rstmdb_raft_applied_index");
        assert!(
            last >= committed && committed >= applied && applied >= 1.0,
            "{body}"
        );
        for peer in cluster.nodes.keys().filter(|p| **p != *id) {
            let series = format!("rstmdb_raft_peer_lag_entries{{peer=\"{peer}\"}}");
            assert_eq!(body.contains(&series), *id == leader, "node {id}: {body}");
        }
        let (st, _, _) = get(m, "/leader");
        assert_eq!(st.contains("200"), *id == leader, "node {id} /leader: {st}");
        if *id != leader {
            assert!(st.contains("503"), "{st}");
        }
        let (st, _, body) = get(m, "/readyz");
        assert!(st.contains("200"), "node {id} /readyz: {st} {body}");
    }
}

#[test]
fn cluster_ops_on_a_server_without_a_cluster_are_bad_request() {
    let s = Server::start();
    let mut c = s.connect();
    for (op, params) in [
        ("CLUSTER_STATUS", json!({})),
        (
            "CLUSTER_ADD_NODE",
            json!({"node_id": 2, "client": "127.0.0.1:1", "raft": "127.0.0.1:2"}),
        ),
        ("CLUSTER_REMOVE_NODE", json!({"node_id": 2})),
    ] {
        let r = c.request(op, params);
        assert_eq!(r["error"]["code"], "BAD_REQUEST", "{op}: {r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("not a cluster member"),
            "{op}: {r}"
        );
    }
    let info = c.ok("INFO", json!({}));
    assert!(info.get("cluster").is_none(), "{info}");
}

#[test]
fn nodes_are_added_and_removed_and_a_removed_id_is_never_reused() {
    use support::scrape::{get, metrics_addr};
    let mut cluster = Cluster::start();
    let mut probe = 0;
    let leader = cluster.wait_leader(Duration::from_secs(20), &mut probe);
    let mut c = cluster.nodes[&leader].connect();
    put_counter(&mut c, "counter");
    create(&mut c, "counter", "before-join", json!({"n": 0}));
    apply(&mut c, "before-join", "inc", json!({"n": 7}));

    // A node started without initial_members waits to be added: no leader, not ready.
    let (c4, r4) = (free_port(), free_port());
    let fourth = start_node(4, c4, r4, None);
    let s4 = status(&fourth);
    assert_eq!(s4["role"], "learner", "{s4}");
    assert!(s4["leader"].is_null(), "{s4}");
    let m4 = metrics_addr(&fourth);
    assert!(get(m4, "/readyz").0.contains("503"));
    assert!(get(m4, "/leader").0.contains("503"));
    let add = json!({"node_id": 4, "client": format!("127.0.0.1:{c4}"), "raft": format!("127.0.0.1:{r4}")});

    // Only the leader changes the membership; a follower names it.
    let follower = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    let r = cluster.nodes[&follower]
        .connect()
        .request("CLUSTER_ADD_NODE", add.clone());
    assert_eq!(r["error"]["code"], "WAL_IO_ERROR", "{r}");
    assert_eq!(r["error"]["retryable"], true, "{r}");
    let leader_client = cluster.nodes[&leader].addr().to_string();
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&leader_client),
        "{r}"
    );
    // replication.md's routing details.
    let d = &r["error"]["details"];
    assert_eq!(d["reason"], "not_leader", "{r}");
    assert_eq!(d["leader_id"], leader, "{r}");
    assert_eq!(d["leader_addr"], leader_client, "{r}");
    assert!(d["term"].as_u64().unwrap() >= 1, "{r}");
    // A node that knows no leader says so.
    let r = fourth
        .connect()
        .request("CLUSTER_REMOVE_NODE", json!({"node_id": 1}));
    assert_eq!(r["error"]["code"], "WAL_IO_ERROR", "{r}");
    assert_eq!(r["error"]["details"]["reason"], "no_leader", "{r}");
    assert!(r["error"]["details"]["leader_addr"].is_null(), "{r}");

    // First as a learner: replicated to, not voting.
    let mut as_learner = add.clone();
    as_learner["voter"] = json!(false);
    let added = c.ok("CLUSTER_ADD_NODE", as_learner);
    assert_eq!(added["voter"], false, "{added}");
    let learner_index = added["log_index"].as_u64().unwrap();
    let s = status(&cluster.nodes[&leader]);
    let four = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node_id"] == 4)
        .cloned();
    assert_eq!(four.map(|m| m["voter"].clone()), Some(json!(false)), "{s}");
    let l4 = wait_for(Duration::from_secs(20), || {
        let s = status(&fourth);
        (s["leader"]["node_id"] == leader).then_some(s)
    })
    .unwrap_or_else(|| panic!("node 4 never learned the leader\n{}", cluster.logs()));
    assert_eq!(l4["role"], "learner", "{l4}");
    // The same request with voter (the default) promotes the learner rather than refusing
    // its id: a timed-out add can be repeated.
    let added = c.ok("CLUSTER_ADD_NODE", add);
    assert_eq!(added["node_id"], 4, "{added}");
    assert_eq!(added["voter"], true, "{added}");
    assert!(
        added["log_index"].as_u64().unwrap() > learner_index,
        "{added}"
    );
    cluster.nodes.insert(4, fourth);
    let s = status(&cluster.nodes[&leader]);
    let four = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node_id"] == 4)
        .cloned()
        .unwrap_or_else(|| panic!("node 4 not listed: {s}"));
    assert_eq!(four["voter"], true, "{s}");
    assert_eq!(four["client"], format!("127.0.0.1:{c4}"), "{s}");
    // The new node serves what was written before it joined.
    let got = wait_for(Duration::from_secs(20), || {
        let r = instance(&cluster.nodes[&4], "before-join");
        (r["status"] == "ok").then_some(r)
    })
    .unwrap_or_else(|| panic!("node 4 never served before-join\n{}", cluster.logs()));
    assert_eq!(got["result"]["ctx"]["n"], 7, "{got}");
    let s4 = wait_for(Duration::from_secs(20), || {
        let s = status(&cluster.nodes[&4]);
        (s["role"] == "follower").then_some(s)
    })
    .unwrap_or_else(|| panic!("node 4 never became a follower\n{}", cluster.logs()));
    assert_eq!(s4["leader"]["node_id"], leader, "{s4}");
    assert!(get(m4, "/readyz").0.contains("200"));

    // A node nobody can reach is added as a learner but never gets the log: the add times
    // out saying so, without making it a voter; it can then be removed.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let r = c.request(
        "CLUSTER_ADD_NODE",
        json!({"node_id": 5, "client": nowhere, "raft": nowhere, "timeout_ms": 1000}),
    );
    assert_eq!(r["error"]["code"], "REPLICATION_TIMEOUT", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has not received the log"),
        "{r}"
    );
    let s = status(&cluster.nodes[&leader]);
    let five = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node_id"] == 5)
        .cloned();
    assert_eq!(five.map(|m| m["voter"].clone()), Some(json!(false)), "{s}");
    c.ok("CLUSTER_REMOVE_NODE", json!({"node_id": 5}));
    let r = c.request(
        "CLUSTER_ADD_NODE",
        json!({"node_id": 6, "client": nowhere, "raft": nowhere, "timeout_ms": 0}),
    );
    assert_eq!(r["error"]["code"], "BAD_REQUEST", "{r}");

    // Remove a follower: no longer listed; its id cannot come back.
    let removed = follower;
    let r = c.ok("CLUSTER_REMOVE_NODE", json!({"node_id": removed}));
    assert_eq!(r["node_id"], removed, "{r}");
    let mut gone = cluster.nodes.remove(&removed).unwrap();
    gone.terminate();
    let s = status(&cluster.nodes[&leader]);
    let ids: Vec<u64> = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["node_id"].as_u64().unwrap())
        .collect();
    assert!(!ids.contains(&removed) && ids.contains(&4), "{s}");
    assert_eq!(ids.len(), 3, "{s}");
    let again = c.request(
        "CLUSTER_ADD_NODE",
        json!({"node_id": removed, "client": gone.addr().to_string(), "raft": "127.0.0.1:1"}),
    );
    assert_eq!(again["error"]["code"], "CONFLICT", "{again}");
    assert!(
        again["error"]["message"]
            .as_str()
            .unwrap()
            .contains("never reused"),
        "{again}"
    );
    let r = c.request("CLUSTER_REMOVE_NODE", json!({"node_id": 99}));
    assert_eq!(r["error"]["code"], "NOT_FOUND", "{r}");

    // The ids seen are kept on disk: after every node restarts (none remembers anything in
    // memory, and the membership no longer has it) the removed id is still refused.
    drop(c);
    for server in cluster.nodes.values_mut() {
        server.terminate();
    }
    for server in cluster.nodes.values_mut() {
        server.restart();
    }
    let leader = cluster.wait_leader(Duration::from_secs(20), &mut probe);
    let mut c = cluster.nodes[&leader].connect();
    let again = c.request(
        "CLUSTER_ADD_NODE",
        json!({"node_id": removed, "client": gone.addr().to_string(), "raft": "127.0.0.1:1"}),
    );
    assert_eq!(again["error"]["code"], "CONFLICT", "{again}");

    // The cluster of three still commits, and the added node serves it.
    create(&mut c, "counter", "after-remove", json!({"n": 1}));
    let got = wait_for(Duration::from_secs(20), || {
        let r = instance(&cluster.nodes[&4], "after-remove");
        (r["status"] == "ok").then_some(r)
    });
    assert!(
        got.is_some(),
        "node 4 never served after-remove\n{}",
        cluster.logs()
    );
    // Removing the leader itself: it commits the change and steps down; the other two elect
    // a leader whose membership no longer has it.
    let r = c.ok("CLUSTER_REMOVE_NODE", json!({"node_id": leader}));
    assert_eq!(r["node_id"], leader, "{r}");
    drop(c);
    let mut old = cluster.nodes.remove(&leader).unwrap();
    old.terminate();
    let next = cluster.wait_leader(Duration::from_secs(20), &mut probe);
    assert_ne!(next, leader);
    let s = status(&cluster.nodes[&next]);
    let ids: Vec<u64> = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["node_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{s}");
    assert!(!ids.contains(&leader) && ids.contains(&4), "{s}");
    // Down to one voter, which cannot be removed.
    let other = *ids.iter().find(|id| **id != next).unwrap();
    cluster.nodes[&next]
        .connect()
        .ok("CLUSTER_REMOVE_NODE", json!({"node_id": other}));
    let r = cluster.nodes[&next]
        .connect()
        .request("CLUSTER_REMOVE_NODE", json!({"node_id": next}));
    assert_eq!(r["error"]["code"], "BAD_REQUEST", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("last voter"),
        "{r}"
    );
}
