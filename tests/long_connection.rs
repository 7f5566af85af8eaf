//! A connection that lives long and touches many instances keeps only what it has in flight
//! (issue 15): the ordering bookkeeping is counted through `rstmdb_request_ordering_entries`,
//! never timed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use support::scrape::{get, metrics_addr, sample};
use support::*;

const REQUESTS: usize = 200_000;
/// Requests the client keeps in flight: one pipelined burst.
const DEPTH: usize = 64;
/// Scrape the gauge every this many bursts (a scrape counts the instances, so not each).
const SCRAPE_EVERY: usize = 100;

fn ordering_entries(m: std::net::SocketAddr) -> f64 {
    sample(&get(m, "/metrics").2, "rstmdb_request_ordering_entries")
}

#[test]
fn one_connection_over_200k_requests_on_distinct_instances_holds_only_what_is_in_flight() {
    let s = Server::with_config(json!({
        "metrics": {"enabled": true, "bind_addr": "127.0.0.1:0"},
        "storage": {"fsync_policy": "never"}
    }));
    let m = metrics_addr(&s);
    let mut c = s.connect();
    put_counter(&mut c, "counter");
    assert_eq!(ordering_entries(m), 0.0, "nothing in flight yet");

    let mut sent = 0usize;
    let mut burst = 0usize;
    let mut most_seen = 0.0f64;
    while sent < REQUESTS {
        // Each instance is new: created, then read back on the same connection (the read
        // waits for the create through the bookkeeping), never touched again.
        let mut bytes = Vec::new();
        let mut ids = Vec::with_capacity(DEPTH);
        for k in 0..DEPTH / 2 {
            let instance = format!("long-{burst}-{k}");
            let (create, read) = (c.fresh_id(), c.fresh_id());
            bytes.extend(frame(
                request_json(
                    &create,
                    "CREATE_INSTANCE",
                    Some(json!({"instance_id": instance, "machine": "counter", "version": 1})),
                )
                .to_string()
                .as_bytes(),
            ));
            bytes.extend(frame(
                request_json(
                    &read,
                    "GET_INSTANCE",
                    Some(json!({"instance_id": instance})),
                )
                .to_string()
                .as_bytes(),
            ));
            ids.push((create, read, instance));
        }
        c.send_raw(&bytes);
        sent += DEPTH;
        let scrape = burst.is_multiple_of(SCRAPE_EVERY);
        if scrape {
            // Up to DEPTH requests are in flight on the only connection.
            let during = ordering_entries(m);
            assert!(
                during <= DEPTH as f64,
                "burst {burst}: {during} ordering entries with at most {DEPTH} requests in flight"
            );
            most_seen = most_seen.max(during);
        }
        for (create, read, instance) in ids {
            let r = c.read_response(&create);
            assert_eq!(r["status"], "ok", "{r}");
            let r = c.read_response(&read);
            assert_eq!(r["result"]["instance_id"], json!(instance), "{r}");
        }
        if scrape {
            // Every answer is in: nothing may be left behind.
            assert_eq!(
                ordering_entries(m),
                0.0,
                "after burst {burst} ({sent} requests)"
            );
        }
        burst += 1;
    }
    assert_eq!(ordering_entries(m), 0.0, "after {sent} requests");
    println!("{sent} requests; most ordering entries seen mid-burst: {most_seen}");
}
