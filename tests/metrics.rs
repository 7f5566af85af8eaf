//! The metrics endpoint of the real `rstmdb` binary: reference metric names and labels,
//! gauges that return to zero, reload and auth counters, health and readiness (issue 7 §1,
//! issue 5 §3). When `promtool` is installed (`.ci/run` installs Debian's prometheus
//! package), the exposition is checked with `promtool check metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use std::time::Duration;
use support::scrape::{get, metrics_addr, promtool_check, sample};
use support::*;

fn metrics_server() -> Server {
    Server::with_config(json!({
        "metrics": {"enabled": true, "bind_addr": "127.0.0.1:0"},
        "auth": {"required": true, "token_hashes": [
            // sha256("metrics-token")
            "eb5a63e42b6b498364b3f10d5c3bb71cd8c7a7a9ad16524875557fa2e52f5d41"
        ]}
    }))
}

#[test]
fn reference_metric_families_and_counts() {
    let s = Server::with_config(json!({
        "metrics": {"enabled": true, "bind_addr": "127.0.0.1:0"}
    }));
    let m = metrics_addr(&s);
    let mut c = s.connect();
    put_order(&mut c, "order");
    create(&mut c, "order", "o-1", json!({}));
    apply(&mut c, "o-1", "PAY", json!({}));
    c.err_code(
        "GET_INSTANCE",
        json!({"instance_id": "nope"}),
        "INSTANCE_NOT_FOUND",
    );

    let (status, headers, body) = get(m, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{headers}"
    );
    for family in [
        "rstmdb_connections_total",
        "rstmdb_connections_active",
        "rstmdb_requests_total",
        "rstmdb_errors_total",
        "rstmdb_request_duration_seconds",
        "rstmdb_subscriptions_active",
        "rstmdb_events_forwarded_total",
        "rstmdb_instances_total",
        "rstmdb_machines_total",
        "rstmdb_wal_entries",
        "rstmdb_wal_segments",
        "rstmdb_wal_size_bytes",
        "rstmdb_wal_bytes_written_total",
        "rstmdb_wal_bytes_read_total",
        "rstmdb_wal_writes_total",
        "rstmdb_wal_reads_total",
        "rstmdb_wal_fsyncs_total",
        "rstmdb_group_commit_size",
        "rstmdb_wal_fsync_duration_seconds",
        "rstmdb_checkpoint_duration_seconds",
        "rstmdb_recovery_duration_seconds",
        "rstmdb_subscription_closures_total",
        "rstmdb_auth_failures_total",
        "rstmdb_reloads_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            body.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{body}"
        );
    }
    assert_eq!(
        sample(&body, "rstmdb_requests_total{operation=\"APPLY_EVENT\"}"),
        1.0
    );
    assert_eq!(
        sample(&body, "rstmdb_requests_total{operation=\"PUT_MACHINE\"}"),
        1.0
    );
    assert_eq!(
        sample(&body, "rstmdb_errors_total{code=\"INSTANCE_NOT_FOUND\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &body,
            "rstmdb_request_duration_seconds_count{operation=\"APPLY_EVENT\"}"
        ),
        1.0
    );
    assert_eq!(sample(&body, "rstmdb_instances_total"), 1.0);
    assert_eq!(sample(&body, "rstmdb_machines_total"), 1.0);
    assert!(sample(&body, "rstmdb_wal_entries") >= 3.0, "{body}");
    assert!(
        sample(&body, "rstmdb_group_commit_size_count") >= 3.0,
        "{body}"
    );
    assert!(
        sample(&body, "rstmdb_wal_fsync_duration_seconds_count") >= 1.0,
        "{body}"
    );
    assert_eq!(sample(&body, "rstmdb_connections_active"), 1.0);

    promtool_check(&body);

    assert_eq!(get(m, "/healthz").2, "OK");
    assert_eq!(get(m, "/health").2, "OK");
    assert_eq!(get(m, "/readyz").0, "HTTP/1.1 200 OK");
    let (st, _, b) = get(m, "/nope");
    assert_eq!(
        (st.as_str(), b.as_str()),
        ("HTTP/1.1 404 Not Found", "Not Found")
    );
}

/// Every forwarded event is observed in the lag histogram, with its distance from the log's
/// end; a subscriber that keeps up is at most a few offsets behind.
#[test]
fn forwarded_events_are_observed_in_the_lag_histogram() {
    let s = Server::with_config(json!({
        "metrics": {"enabled": true, "bind_addr": "127.0.0.1:0"}
    }));
    let m = metrics_addr(&s);
    let mut w = s.connect();
    let mut c = s.connect();
    put_counter(&mut c, "lagm");
    create(&mut c, "lagm", "l1", json!({}));
    w.ok("WATCH_ALL", json!({}));
    for _ in 0..5 {
        apply(&mut c, "l1", "inc", json!({}));
    }
    for _ in 0..5 {
        w.next_event(Duration::from_secs(5));
    }
    let body = get(m, "/metrics").2;
    assert_eq!(
        sample(&body, "rstmdb_subscription_lag_offsets_count"),
        5.0,
        "{body}"
    );
    assert_eq!(
        sample(&body, "rstmdb_subscription_lag_offsets_bucket{le=\"+Inf\"}"),
        5.0
    );
    assert!(
        sample(&body, "rstmdb_subscription_lag_offsets_bucket{le=\"4\"}") >= 1.0,
        "{body}"
    );
    promtool_check(&body);
}

/// Instance lookups are counted as cache hits or misses, and the ratio follows them.
#[test]
fn instance_cache_hits_and_misses_are_exported() {
    let s = Server::with_config(json!({
        "metrics": {"enabled": true, "bind_addr": "127.0.0.1:0"}
    }));
    let m = metrics_addr(&s);
    let mut c = s.connect();
    put_counter(&mut c, "cachem");
    create(&mut c, "cachem", "k1", json!({}));
    let body = get(m, "/metrics").2;
    let (hits0, misses0) = (
        sample(&body, "rstmdb_instance_cache_hits_total"),
        sample(&body, "rstmdb_instance_cache_misses_total"),
    );
    assert_eq!(
        sample(&body, "rstmdb_instance_cache_entries"),
        1.0,
        "{body}"
    );
    assert!(sample(&body, "rstmdb_instance_cache_bytes") > 0.0, "{body}");
    for _ in 0..4 {
        c.ok("GET_INSTANCE", json!({"instance_id": "k1"}));
    }
    c.err("GET_INSTANCE", json!({"instance_id": "absent"}));
    let body = get(m, "/metrics").2;
    let hits = sample(&body, "rstmdb_instance_cache_hits_total");
    let misses = sample(&body, "rstmdb_instance_cache_misses_total");
    assert_eq!((hits - hits0, misses - misses0), (4.0, 1.0), "{body}");
    let ratio = sample(&body, "rstmdb_instance_cache_hit_ratio");
    assert!((ratio - hits / (hits + misses)).abs() < 1e-9, "{body}");
    promtool_check(&body);
}

/// A subscription counts as active from its WATCH response on: a scrape right after the
/// answer always includes it (it used to be counted only once its forwarding task ran).
#[test]
fn a_watch_is_counted_before_its_response_arrives() {
    let s = Server::with_config(json!({
        "metrics": {"enabled": true, "bind_addr": "127.0.0.1:0"}
    }));
    let m = metrics_addr(&s);
    let mut c = s.connect();
    for n in 1..=40 {
        c.ok("WATCH_ALL", json!({}));
        let body = get(m, "/metrics").2;
        assert_eq!(
            sample(&body, "rstmdb_subscriptions_active{type=\"all\"}"),
            f64::from(n),
            "after WATCH number {n}"
        );
    }
}

#[test]
fn gauges_come_back_down_however_connections_end() {
    let s = Server::with_config(json!({
        "metrics": {"enabled": true, "bind_addr": "127.0.0.1:0"}
    }));
    let m = metrics_addr(&s);
    {
        let mut a = s.connect();
        let mut b = s.connect();
        a.ok("WATCH_ALL", json!({}));
        b.ok("WATCH_ALL", json!({}));
        let body = get(m, "/metrics").2;
        assert_eq!(sample(&body, "rstmdb_connections_active"), 2.0);
        assert_eq!(
            sample(&body, "rstmdb_subscriptions_active{type=\"all\"}"),
            2.0
        );
    }
    // Both clients dropped without UNWATCH or BYE.
    let settled = wait_for(Duration::from_secs(10), || {
        let body = get(m, "/metrics").2;
        (sample(&body, "rstmdb_connections_active") == 0.0
            && sample(&body, "rstmdb_subscriptions_active{type=\"all\"}") == 0.0)
            .then_some(())
    });
    assert!(settled.is_some(), "{}", get(m, "/metrics").2);
    assert_eq!(
        sample(&get(m, "/metrics").2, "rstmdb_connections_total"),
        2.0
    );
}

#[test]
fn auth_failures_and_reloads_are_counted() {
    let s = metrics_server();
    let m = metrics_addr(&s);
    let mut c = s.connect();
    c.err_code(
        "AUTH",
        json!({"method": "bearer", "token": "wrong"}),
        "AUTH_FAILED",
    );
    s.signal("HUP");
    let body = wait_for(Duration::from_secs(10), || {
        let body = get(m, "/metrics").2;
        (sample(&body, "rstmdb_reloads_total{result=\"ok\"}") == 1.0).then_some(body)
    })
    .unwrap_or_else(|| panic!("no reload counted:\n{}", get(m, "/metrics").2));
    assert_eq!(sample(&body, "rstmdb_auth_failures_total"), 1.0);
    assert_eq!(
        sample(&body, "rstmdb_errors_total{code=\"AUTH_FAILED\"}"),
        1.0
    );
    // A reload that fails is counted as such.
    std::fs::write(s.config_path(), "network: {bogus: 1}\n").unwrap();
    s.signal("HUP");
    let failed = wait_for(Duration::from_secs(10), || {
        let body = get(m, "/metrics").2;
        (sample(&body, "rstmdb_reloads_total{result=\"failed\"}") == 1.0).then_some(())
    });
    assert!(failed.is_some(), "{}", s.stdout());
}

#[test]
fn metrics_port_in_use_is_a_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let f = Server::try_with_config(json!({
        "metrics": {"enabled": true, "bind_addr": addr.to_string()}
    }))
    .unwrap_err();
    assert!(f.stderr.contains("metrics.bind_addr"), "{}", f.stderr);
}

/// deploy/grafana/rstmdb.json may only use metric families the server exports, and (when
/// promtool is installed) every panel query must be valid PromQL.
#[test]
fn grafana_dashboard_uses_only_exported_metrics() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/rstmdb.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap()
                // Grafana variables, as Grafana would fill them in.
                .replace("$__rate_interval", "5m")
                .replace("$instance", ".*")
        })
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");

    let s = Server::with_config(json!({
        "metrics": {"enabled": true, "bind_addr": "127.0.0.1:0"}
    }));
    let body = get(metrics_addr(&s), "/metrics").2;
    for e in &exprs {
        for name in metric_names(e) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|f| body.contains(&format!("# TYPE {f} histogram")))
                })
                .unwrap_or(&name);
            assert!(
                body.contains(&format!("# TYPE {family} ")),
                "the dashboard uses {name}, which /metrics does not export (query: {e})"
            );
        }
    }

    // Each query as a recording rule: `promtool check rules` parses them.
    let dir = tempdir();
    let rules = dir.path().join("rules.yml");
    let mut text = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        text.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {}\n",
            serde_json::to_string(e).unwrap()
        ));
    }
    std::fs::write(&rules, text).unwrap();
    match std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => eprintln!("promtool not installed: dashboard queries not parsed"),
    }
}

/// Metric names in a PromQL expression: identifiers starting with `rstmdb_` or `process_`.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let starts = expr[i..].starts_with("rstmdb_") || expr[i..].starts_with("process_");
        let boundary = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if starts && boundary {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(b.len(), |n| i + n);
            out.push(expr[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}
