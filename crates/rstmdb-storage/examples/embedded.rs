//! rstmdb embedded in a program: no server, no network — the same engine, in-process.
//!
//! Run with `cargo run -p rstmdb-storage --example embedded`.

use rstmdb_storage::{ApplyEvent, CreateInstance, Database, ListQuery, StorageConfig};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("rstmdb-embedded-{}", std::process::id()));
    let db = Database::open(StorageConfig::new(&dir))?;

    // A machine: definitions are validated and versioned; guards are compiled once here.
    db.put_machine(
        "order",
        1,
        &json!({
            "states": ["pending", "paid", "shipped"],
            "initial": "pending",
            "transitions": [
                {"from": "pending", "event": "PAY", "to": "paid", "guard": "payload.amount > 0"},
                {"from": "paid", "event": "SHIP", "to": "shipped"}
            ]
        }),
    )
    .await?;

    // Watch committed changes while we work.
    let mut changes = db.watch(None)?;

    let order = db
        .create_instance(CreateInstance {
            instance_id: Some("order-1".into()),
            machine: "order".into(),
            version: 1,
            initial_ctx: Some(json!({"customer": "alice"})),
            idempotency_key: None,
        })
        .await?;
    println!(
        "created {} in {} at offset {}",
        order.instance_id, order.state, order.wal_offset
    );

    // Durable when it returns: the WAL record is synced (group commit) before the answer.
    let paid = db
        .apply_event(ApplyEvent {
            instance_id: "order-1".into(),
            event: "PAY".into(),
            payload: Some(json!({"amount": 99.5})),
            expected_state: Some("pending".into()),
            idempotency_key: Some("pay-order-1".into()),
            ..Default::default()
        })
        .await?;
    println!(
        "{} -> {}, ctx {}",
        paid.from_state,
        paid.to_state,
        json!(paid.ctx)
    );

    let ev = changes.next().await?;
    println!(
        "watch: {} {} at offset {}",
        ev.instance_id, ev.event, ev.wal_offset
    );

    let page = db.list_instances(&ListQuery {
        limit: 10,
        ..Default::default()
    })?;
    println!(
        "{} instance(s), first {:?}",
        page.total,
        page.instances.first().map(|i| &i.state)
    );

    db.close().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
