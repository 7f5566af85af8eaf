//! A three-node cluster on loopback (issue 19): real `rstmdb` processes, each with its own
//! data directory, client port and peer port, started with nothing but their config files.
//!
//! - formation and replication: a write acknowledged by the leader is readable on every node
//!   and every node's WAL_READ returns the same records at the same offsets;
//! - a write sent to a follower is refused as not written (`WAL_IO_ERROR`, retryable; write
//!   forwarding comes later);
//! - failover: SIGKILL of the leader under a stream of acknowledged writes, repeatedly; the
//!   others elect a new leader, every acknowledged write survives, none is applied twice, and
//!   the killed node rejoins and catches up;
//! - operating it: CLUSTER_STATUS, INFO's `cluster`, the raft metrics, `/leader` and
//!   `/readyz` on every node; adding a fourth node (started without `initial_members`) as a
//!   learner, then a voter that serves earlier data; removing a follower (its id refused
//!   afterwards), the leader itself, and refusing to remove the last voter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/mod.rs"]
mod support;

use serde_json::{Value, json};
use std::collections::BTreeMap;
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
}

impl Cluster {
    fn start() -> Cluster {
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
            .map(|(id, (c, r))| (*id, start_node(*id, *c, *r, Some(&members))))
            .collect();
        Cluster { nodes }
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
            for (id, server) in self.nodes.iter_mut() {
                if !server.is_running() {
                    continue;
                }
                *probe += 1;
                let mut c = server.connect();
                let r = c.request(
                    "CREATE_INSTANCE",
                    json!({"instance_id": format!("probe-{probe}"), "machine": "probe", "version": 1}),
                );
                if r["status"] == "ok" {
                    return *id;
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
                        return *id;
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

    /// Every record of node `id`'s log (offset, entry), read with WAL_READ.
    fn wal(&self, id: u64) -> Vec<(u64, Value)> {
        let mut c = self.nodes[&id].connect();
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
                "write_timeout_ms": 5000
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
        .unwrap_or(3);
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

fn promtool_check(body: &str) {
    use std::io::Write;
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
    // As tests/metrics.rs: only the two `*_total` gauges kept from the reference may be
    // flagged; a parse error or any other finding (a raft family included) fails.
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

#[test]
fn cluster_status_info_metrics_and_leader_endpoint_on_every_node() {
    use support::scrape::{get, metrics_addr, sample};
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
