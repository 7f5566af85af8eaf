//! The reference's published Rust clients, `rstmdb-client` 0.1.1 and 0.3.0 exactly as on
//! crates.io, drive our real server through every op they have: plain, with a token, over
//! TLS (verified and insecure) and TLS with a token. A client that cannot parse one of our
//! answers fails here; the fix belongs in our server, not in this test.
//!
//! Both versions share one body (the API is the same; 0.3.0 adds `replication_status` and
//! `flush_all`), instantiated once per version by `cross_check!`.

use reference_clients::{order_definition, Options, Server, TOKEN};
use serde_json::{json, Value};
use std::time::Duration;

macro_rules! cross_check {
    ($module:ident, $client:ident, $extra:expr) => {
        mod $module {
            use super::*;
            use $client::{Client, ClientError, ConnectionConfig, TlsClientConfig};

            /// Connects and starts the read loop the published clients need for responses.
            async fn connect(config: ConnectionConfig) -> Result<Client, ClientError> {
                let client = Client::new(config.with_client_name("reference-cross-check"));
                client.connect().await?;
                let conn = client.connection();
                tokio::spawn(async move {
                    let _ = conn.read_loop().await;
                });
                Ok(client)
            }

            fn code_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> String {
                match r {
                    Err(ClientError::ServerError { code, .. }) => code.to_string(),
                    other => panic!("expected a server error, got {other:?}"),
                }
            }

            /// Every op the client has, each answer checked field by field.
            async fn every_op(client: &Client) {
                client.ping().await.expect("PING");
                let info = client.info().await.expect("INFO");
                assert_eq!(info["server_name"], "rstmdb", "{info}");
                assert_eq!(info["protocol_version"], 1, "{info}");

                let put = client
                    .put_machine("order", 1, order_definition())
                    .await
                    .expect("PUT_MACHINE");
                assert!(put.created);
                assert_eq!(put.stored_checksum.len(), 64);
                let again = client
                    .put_machine("order", 1, order_definition())
                    .await
                    .expect("PUT_MACHINE again");
                assert!(!again.created);
                assert_eq!(again.stored_checksum, put.stored_checksum);
                let m = client.get_machine("order", 1).await.expect("GET_MACHINE");
                assert_eq!(m.checksum, put.stored_checksum);
                assert_eq!(m.definition["initial"], "pending");
                let machines = client.list_machines().await.expect("LIST_MACHINES");
                assert_eq!(
                    machines["items"],
                    json!([{"machine": "order", "versions": [1]}])
                );
                assert_eq!(
                    code_of(client.get_machine("nope", 1).await),
                    "MACHINE_NOT_FOUND"
                );

                let c = client
                    .create_instance("order", 1, Some("o-1"), Some(json!({"amount": 5})), None)
                    .await
                    .expect("CREATE_INSTANCE");
                assert_eq!(c.instance_id, "o-1");
                assert_eq!(c.state, "pending");
                let generated = client
                    .create_instance("order", 1, None, None, Some("create-key"))
                    .await
                    .expect("CREATE_INSTANCE without id");
                let replay = client
                    .create_instance("order", 1, None, None, Some("create-key"))
                    .await
                    .expect("CREATE_INSTANCE replay");
                assert_eq!(replay.instance_id, generated.instance_id);
                assert_eq!(
                    code_of(client.create_instance("order", 1, Some("o-1"), None, None).await),
                    "INSTANCE_EXISTS"
                );

                let g = client.get_instance("o-1").await.expect("GET_INSTANCE");
                assert_eq!((g.machine.as_str(), g.version), ("order", 1));
                assert_eq!(g.state, "pending");
                assert_eq!(g.ctx, json!({"amount": 5}));
                assert_eq!(g.last_wal_offset, c.wal_offset);

                let list = client
                    .list_instances(None, None, None, None)
                    .await
                    .expect("LIST_INSTANCES");
                assert_eq!(list.total, 2);
                assert!(!list.has_more);
                let page = client
                    .list_instances(Some("order"), Some("pending"), Some(1), Some(0))
                    .await
                    .expect("LIST_INSTANCES filtered");
                assert_eq!(page.instances.len(), 1);
                assert!(page.has_more);

                // Subscriptions first, so the events below reach them.
                let mut events = client.connection().subscribe_stream_events();
                let wi = client.watch_instance("o-1", true).await.expect("WATCH_INSTANCE");
                assert_eq!(wi.instance_id, "o-1");
                let wa = client
                    .watch_all(Some(vec!["order".into()]), None, None, None, false)
                    .await
                    .expect("WATCH_ALL");

                let a = client
                    .apply_event("o-1", "PAY", Some(json!({"paid": true})), Some("pending"), Some("pay-1"))
                    .await
                    .expect("APPLY_EVENT");
                assert_eq!((a.from_state.as_str(), a.to_state.as_str()), ("pending", "paid"));
                assert!(a.applied);
                let replayed = client
                    .apply_event("o-1", "PAY", Some(json!({"paid": true})), None, Some("pay-1"))
                    .await
                    .expect("APPLY_EVENT replay");
                assert!(!replayed.applied);
                assert_eq!(replayed.wal_offset, a.wal_offset);
                assert_eq!(
                    code_of(client.apply_event("o-1", "PAY", None, None, None).await),
                    "INVALID_TRANSITION"
                );
                assert_eq!(
                    code_of(client.apply_event("o-1", "SHIP", None, Some("pending"), None).await),
                    "CONFLICT"
                );

                let mut subs = Vec::new();
                for _ in 0..2 {
                    let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
                        .await
                        .expect("an event within 5 s")
                        .expect("event stream open");
                    assert_eq!(ev.instance_id, "o-1");
                    assert_eq!(ev.event, "PAY");
                    assert_eq!((ev.from_state.as_str(), ev.to_state.as_str()), ("pending", "paid"));
                    assert_eq!(ev.wal_offset, a.wal_offset);
                    subs.push(ev.subscription_id);
                }
                subs.sort();
                let mut want = vec![wi.subscription_id.clone(), wa.subscription_id.clone()];
                want.sort();
                assert_eq!(subs, want, "one event per subscription");
                let u = client.unwatch(&wi.subscription_id).await.expect("UNWATCH");
                assert!(u.removed);
                assert!(!client.unwatch("no-such").await.expect("UNWATCH unknown").removed);

                let batch = client
                    .batch(
                        vec![
                            json!({"op": "CREATE_INSTANCE", "params": {"instance_id": "b-1", "machine": "order", "version": 1}}),
                            json!({"op": "APPLY_EVENT", "params": {"instance_id": "b-1", "event": "CANCEL"}}),
                        ],
                        true,
                    )
                    .await
                    .expect("BATCH atomic");
                let results = batch["results"].as_array().cloned().unwrap_or_default();
                assert_eq!(results.len(), 2, "{batch}");
                assert!(results.iter().all(|r| r["status"] == "ok"), "{batch}");
                let best = client
                    .batch(
                        vec![
                            json!({"op": "GET_INSTANCE", "params": {"instance_id": "b-1"}}),
                            json!({"op": "GET_INSTANCE", "params": {"instance_id": "nope"}}),
                        ],
                        false,
                    )
                    .await
                    .expect("BATCH best effort");
                assert_eq!(best["results"][0]["result"]["state"], "cancelled", "{best}");
                assert_eq!(best["results"][1]["error"]["code"], "INSTANCE_NOT_FOUND", "{best}");

                let wal = client.wal_read(0, Some(100)).await.expect("WAL_READ");
                let records = wal["records"].as_array().cloned().unwrap_or_default();
                assert!(records.len() >= 5, "{wal}");
                assert_eq!(records[0]["entry"]["type"], "put_machine", "{wal}");
                let stats = client.wal_stats().await.expect("WAL_STATS");
                assert!(stats["entry_count"].as_u64().unwrap_or(0) >= 5, "{stats}");
                let snap = client.snapshot_instance("o-1").await.expect("SNAPSHOT_INSTANCE");
                assert_eq!(snap["instance_id"], "o-1", "{snap}");
                let compact = client.compact(false).await.expect("COMPACT");
                assert!(compact["wal_segments"].is_u64(), "{compact}");

                let d = client.delete_instance("o-1", None).await.expect("DELETE_INSTANCE");
                assert_eq!(d["deleted"], true, "{d}");
                assert_eq!(code_of(client.get_instance("o-1").await), "INSTANCE_NOT_FOUND");

                $extra(client).await;
                client.close().await.expect("close");
            }

            fn plain(addr: std::net::SocketAddr) -> ConnectionConfig {
                ConnectionConfig::new(addr).with_request_timeout(Duration::from_secs(10))
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn every_op_over_plain_tcp() {
                let s = Server::start(Options::default());
                every_op(&connect(plain(s.addr)).await.expect("connect")).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn every_op_with_a_token_and_the_gate_without_one() {
                let s = Server::start(Options { token: true, ..Options::default() });
                let client = connect(plain(s.addr).with_auth_token(TOKEN))
                    .await
                    .expect("connect with token");
                every_op(&client).await;

                let anonymous = connect(plain(s.addr)).await.expect("HELLO needs no token");
                anonymous.ping().await.expect("PING needs no token");
                assert_eq!(code_of(anonymous.list_machines().await), "UNAUTHORIZED");
                match connect(plain(s.addr).with_auth_token("wrong")).await {
                    Err(ClientError::ServerError { code, .. }) => {
                        assert_eq!(code.to_string(), "AUTH_FAILED")
                    }
                    other => panic!("a wrong token must fail AUTH, got {:?}", other.map(|_| ())),
                }
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn every_op_over_tls_verified_by_the_ca() {
                let s = Server::start(Options { tls: true, ..Options::default() });
                let ca = s.ca.clone().expect("ca.pem");
                let config = plain(s.addr).with_tls(TlsClientConfig::new().with_ca_cert(ca));
                every_op(&connect(config).await.expect("TLS connect")).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn every_op_over_insecure_tls_with_a_token() {
                let s = Server::start(Options { tls: true, token: true });
                let config = plain(s.addr)
                    .with_tls(TlsClientConfig::new().with_insecure())
                    .with_auth_token(TOKEN);
                every_op(&connect(config).await.expect("TLS connect")).await;
                // Plain TCP to a TLS port is refused, not answered.
                assert!(connect(plain(s.addr)).await.is_err());
            }
        }
    };
}

/// 0.1.1 has nothing beyond the common ops.
fn nothing_more_011(
    _: &client_011::Client,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> {
    Box::pin(async {})
}

/// 0.3.0's additions: REPLICATION_STATUS and FLUSH_ALL.
fn replication_and_flush_030(
    client: &client_030::Client,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> {
    Box::pin(async move {
        let status = client
            .replication_status()
            .await
            .expect("REPLICATION_STATUS");
        assert_eq!(status, json!({"role": "standalone"}));
        let flushed: Value = client.flush_all().await.expect("FLUSH_ALL");
        assert_eq!(flushed["flushed"], true, "{flushed}");
        assert_eq!(flushed["machines_removed"], 1, "{flushed}");
        // o-1 is deleted already; the generated instance and b-1 are what is left.
        assert_eq!(flushed["instances_removed"], 2, "{flushed}");
        let list = client
            .list_instances(None, None, None, None)
            .await
            .expect("LIST_INSTANCES after FLUSH_ALL");
        assert_eq!(list.total, 0);
    })
}

cross_check!(client_0_1_1, client_011, nothing_more_011);
cross_check!(client_0_3_0, client_030, replication_and_flush_030);
