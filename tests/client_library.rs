//! rstmdb-client against the real server: pipelining, typed errors, timeouts, reconnect,
//! and watch streams that resume without gaps or duplicates.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "cli_support/mod.rs"]
mod cli_support;

use std::time::Duration;

use cli_support::Server;
use futures::StreamExt;
use rstmdb_client::{
    ApplyEventParams, Client, ClientConfig, CreateInstanceParams, Error, ErrorCode, Event,
    ReconnectPolicy, WatchAllParams, WatchInstanceParams,
};
use serde_json::{Value, json};

fn order() -> Value {
    serde_json::from_str(cli_support::ORDER).unwrap()
}

fn create(id: &str) -> CreateInstanceParams {
    CreateInstanceParams {
        instance_id: Some(id.to_owned()),
        machine: "order".into(),
        version: 1,
        initial_ctx: Some(json!({"n": id})),
        idempotency_key: None,
    }
}

fn apply(id: &str, event: &str) -> ApplyEventParams {
    ApplyEventParams {
        instance_id: id.to_owned(),
        event: event.to_owned(),
        payload: None,
        expected_state: None,
        expected_wal_offset: None,
        event_id: None,
        idempotency_key: None,
    }
}

async fn connect(s: &Server) -> Client {
    let c = Client::connect(ClientConfig::new(s.server_arg()))
        .await
        .unwrap();
    c.put_machine("order", 1, order()).await.unwrap();
    c
}

async fn next(stream: &mut rstmdb_client::WatchStream) -> Event {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event within 10 s")
        .expect("stream still open")
        .expect("an event, not an error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_pipelined_and_matched_by_id() {
    let s = Server::start();
    let c = connect(&s).await;
    let hello = c.server_hello().await.unwrap();
    assert_eq!(hello.server_name, "rstmdb");
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let id = format!("o{i}");
                let created = c.create_instance(create(&id)).await.unwrap();
                assert_eq!(created.instance_id, id);
                let applied = c.apply_event(apply(&id, "PAY")).await.unwrap();
                assert_eq!(
                    applied.ctx["n"],
                    json!(id),
                    "response matched to its request"
                );
                c.get_instance(&id).await.unwrap()
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let inst = t.await.unwrap();
        assert_eq!(inst.state, "paid");
        assert_eq!(inst.ctx["n"], json!(format!("o{i}")));
    }
    let list = c
        .list_instances(rstmdb_client::ListInstancesParams {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(list.total, 200);
}

#[tokio::test]
async fn server_errors_carry_the_rcp_code() {
    let s = Server::start();
    let c = connect(&s).await;
    let e = c.get_instance("nope").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InstanceNotFound));
    assert!(!e.is_retryable());
    assert!(
        e.to_string()
            .starts_with("server error: INSTANCE_NOT_FOUND - ")
    );
    c.create_instance(create("o1")).await.unwrap();
    let e = c.apply_event(apply("o1", "SHIP")).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidTransition));
    let e = c
        .put_machine(
            "bad",
            1,
            json!({"states": [], "initial": "x", "transitions": []}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::BadRequest));
    // Every other op answers through its typed method.
    c.ping().await.unwrap();
    assert_eq!(c.info().await.unwrap().server_name, "rstmdb");
    assert_eq!(
        c.get_machine("order", 1).await.unwrap().definition["initial"],
        "pending"
    );
    assert_eq!(c.list_machines().await.unwrap().items.len(), 1);
    assert!(c.wal_stats().await.unwrap().entry_count >= 2);
    assert!(!c.wal_read(0, Some(10)).await.unwrap().records.is_empty());
    c.snapshot_instance("o1").await.unwrap();
    c.compact(false).await.unwrap();
    assert!(!c.unwatch("sub-nope").await.unwrap().removed);
    let e = c.flush_all().await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(ErrorCode::BadRequest),
        "flush_all is off by default"
    );
    let d = c
        .delete_instance(rstmdb_client::DeleteInstanceParams {
            instance_id: "o1".into(),
            idempotency_key: None,
        })
        .await
        .unwrap();
    assert!(d.deleted);
    let b = c
        .batch(
            rstmdb_client::BatchMode::Atomic,
            vec![rstmdb_client::Command::CreateInstance(create("b1"))],
        )
        .await
        .unwrap();
    assert_eq!(b.results.len(), 1);
    c.bye().await.unwrap();
}

#[tokio::test]
async fn a_silent_server_times_out() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let e = Client::connect(
        ClientConfig::new(addr.to_string()).with_connect_timeout(Duration::from_millis(300)),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Timeout(_)), "{e:?}");
}

#[tokio::test]
async fn without_a_policy_a_lost_connection_stays_lost_until_reconnect() {
    let mut s = Server::start();
    let c = connect(&s).await;
    s.kill();
    let e = c.ping().await.unwrap_err();
    assert!(
        e.is_connection_lost() || matches!(e, Error::ConnectionClosed),
        "{e:?}"
    );
    assert!(matches!(
        c.ping().await.unwrap_err(),
        Error::ConnectionClosed
    ));
    s.restart_same_port();
    c.reconnect().await.unwrap();
    c.ping().await.unwrap();
}

#[tokio::test]
async fn with_a_policy_the_next_call_reconnects() {
    let mut s = Server::start();
    let c = Client::connect(
        ClientConfig::new(s.server_arg()).with_reconnect(ReconnectPolicy::default()),
    )
    .await
    .unwrap();
    c.ping().await.unwrap();
    s.kill();
    s.restart_same_port();
    // The first call may still find the old connection half-open; the next one reconnects.
    if c.ping().await.is_err() {
        c.ping().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_resume_after_a_restart_without_gaps_or_duplicates() {
    let mut s = Server::start();
    let admin = connect(&s).await;
    for id in ["a", "b"] {
        admin.create_instance(create(id)).await.unwrap();
    }
    let watcher = Client::connect(ClientConfig::new(s.server_arg()).with_reconnect(
        ReconnectPolicy {
            max_attempts: 50,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
        },
    ))
    .await
    .unwrap();
    let mut all = watcher.watch_all(WatchAllParams::default()).await.unwrap();
    let mut only_b = watcher
        .watch_instance(WatchInstanceParams {
            instance_id: "b".into(),
            include_ctx: false,
            from_offset: None,
        })
        .await
        .unwrap();
    assert_eq!(
        only_b.start_info().current_state.as_deref(),
        Some("pending")
    );

    admin.apply_event(apply("a", "PAY")).await.unwrap();
    let first = next(&mut all).await;
    assert_eq!(
        (first.instance_id.as_str(), first.event.as_str()),
        ("a", "PAY")
    );
    let old_sub = all.subscription_id();

    s.kill();
    s.restart_same_port();
    let admin = connect(&s).await;
    admin.apply_event(apply("b", "PAY")).await.unwrap();
    admin.apply_event(apply("a", "SHIP")).await.unwrap_err(); // guard: no amount
    admin.apply_event(apply("a", "CANCEL")).await.unwrap();
    admin.apply_event(apply("b", "CANCEL")).await.unwrap();

    let got: Vec<(String, String)> = [
        next(&mut all).await,
        next(&mut all).await,
        next(&mut all).await,
    ]
    .into_iter()
    .map(|e| (e.instance_id, e.event))
    .collect();
    assert_eq!(
        got,
        [
            ("b".to_owned(), "PAY".to_owned()),
            ("a".to_owned(), "CANCEL".to_owned()),
            ("b".to_owned(), "CANCEL".to_owned())
        ]
    );
    assert_ne!(all.subscription_id(), old_sub, "resubscribed");
    let b1 = next(&mut only_b).await;
    let b2 = next(&mut only_b).await;
    assert_eq!((b1.event.as_str(), b2.event.as_str()), ("PAY", "CANCEL"));
    assert!(b1.ctx.is_none(), "include_ctx: false survives the resume");
    // Nothing more, in particular no replay of the first event.
    assert!(
        tokio::time::timeout(Duration::from_millis(400), all.next())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_consumer_loses_nothing() {
    let s = Server::start();
    let admin = connect(&s).await;
    admin.create_instance(create("c")).await.unwrap();
    let mut config = ClientConfig::new(s.server_arg());
    config.event_buffer = 2;
    let watcher = Client::connect(config).await.unwrap();
    let mut stream = watcher.watch_all(WatchAllParams::default()).await.unwrap();
    // A self-loop machine makes many events on one instance.
    admin
        .put_machine(
            "loop",
            1,
            json!({"states": ["on"], "initial": "on",
                   "transitions": [{"from": "on", "event": "inc", "to": "on"}]}),
        )
        .await
        .unwrap();
    admin
        .create_instance(CreateInstanceParams {
            instance_id: Some("l".into()),
            machine: "loop".into(),
            version: 1,
            initial_ctx: None,
            idempotency_key: None,
        })
        .await
        .unwrap();
    let mut offsets = Vec::new();
    for _ in 0..40 {
        offsets.push(
            admin
                .apply_event(apply("l", "inc"))
                .await
                .unwrap()
                .wal_offset,
        );
    }
    // Only now start reading: the buffer of 2 overflowed long ago.
    let mut seen = Vec::new();
    while seen.len() < offsets.len() {
        seen.push(next(&mut stream).await.wal_offset);
    }
    assert_eq!(seen, offsets);
    drop(stream);
    watcher.ping().await.unwrap();
}
