//! One-shot subcommands: one connection, one request (or a few), human or `--json` output.

use std::io::IsTerminal;
use std::process::ExitCode;

use futures::StreamExt;
use rstmdb_client::{
    ApplyEventParams, Client, CreateInstanceParams, DeleteInstanceParams, Error, Event,
    ListInstancesParams, WatchAllParams, WatchInstanceParams, WatchStream,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::args::{BatchArgs, BatchModeArg, Cli, Cmd, WatchAllArgs, WatchInstanceArgs};
use crate::output::{self, line, print};
use crate::{CliError, certs, connect, diagram, input};

/// Runs one subcommand (not the REPL).
pub async fn run(cli: &Cli, cmd: &Cmd) -> Result<ExitCode, CliError> {
    // Commands that need no server.
    match cmd {
        Cmd::HashToken { token } => {
            let hash = hash_token(token);
            if cli.json {
                line(json!({ "hash": hash }).to_string());
            } else {
                line(hash);
            }
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            clap_complete::generate(*shell, &mut command, "rstmdb-cli", &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::GenCerts(args) => return certs::generate(args, cli.json),
        Cmd::Backup(a) => {
            if let Some(r) = crate::backup::verify_cmd(a, cli.json) {
                return r;
            }
            return crate::backup::backup(cli, a).await;
        }
        Cmd::RestoreInstance(a) => return crate::backup::restore_instance(cli, a).await,
        Cmd::RestoreMachine(a) => return crate::backup::restore_machine(cli, a).await,
        Cmd::FlushAll { yes: false }
            if std::io::stdin().is_terminal() && !confirm_flush(&cli.server)? =>
        {
            eprintln!("Aborted: nothing was flushed");
            return Ok(ExitCode::FAILURE);
        }
        _ => {}
    }

    let reconnect = match cmd {
        Cmd::WatchInstance(a) => a.reconnect,
        Cmd::WatchAll(a) => a.reconnect,
        _ => false,
    };
    let client = connect(cli, reconnect).await?;
    let json_out = cli.json;
    match cmd {
        Cmd::Repl
        | Cmd::HashToken { .. }
        | Cmd::Completions { .. }
        | Cmd::GenCerts(_)
        | Cmd::Backup(_)
        | Cmd::RestoreInstance(_)
        | Cmd::RestoreMachine(_) => Ok(ExitCode::SUCCESS),
        Cmd::Ping => {
            client.ping().await?;
            print(json_out, &json!({"pong": true}), || {
                line("PONG");
            });
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Info => {
            let info = client.call(rstmdb_client::Command::Info).await?;
            if json_out {
                line(info.to_string());
            } else {
                line(output::pretty(&info));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::PutMachine(a) => {
            let definition = match (&a.definition, &a.file) {
                (_, Some(path)) => input::json_file(path)?,
                (Some(arg), None) => input::json_arg(arg)?,
                (None, None) => {
                    return Err(CliError::Input(
                        "a definition (JSON, @PATH or --file) is required".into(),
                    ));
                }
            };
            let r = client.put_machine(&a.name, a.version, definition).await?;
            print(json_out, &r, || {
                let verb = if r.created {
                    "Created"
                } else {
                    "Already exists"
                };
                line(format!(
                    "{verb} machine {} v{} (checksum: {})",
                    r.machine, r.version, r.stored_checksum
                ));
            });
            Ok(ExitCode::SUCCESS)
        }
        Cmd::GetMachine(m) => {
            let r = client.get_machine(&m.name, m.version).await?;
            print(json_out, &r, || {
                line(format!("Machine {} v{}", m.name, m.version));
                line(output::pretty(&r.definition));
            });
            Ok(ExitCode::SUCCESS)
        }
        Cmd::ListMachines => list_machines(&client, json_out).await,
        Cmd::CreateInstance(a) => {
            let initial_ctx = a.ctx.as_deref().map(input::json_arg).transpose()?;
            let r = client
                .create_instance(CreateInstanceParams {
                    instance_id: a.id.clone(),
                    machine: a.machine.clone(),
                    version: a.version,
                    initial_ctx,
                    idempotency_key: a.idempotency_key.clone(),
                })
                .await?;
            print(json_out, &r, || {
                line(format!("Created instance {}", r.instance_id));
                line(format!("  Machine: {} v{}", a.machine, a.version));
                line(format!("  State: {}", r.state));
                line(format!("  WAL offset: {}", r.wal_offset));
            });
            Ok(ExitCode::SUCCESS)
        }
        Cmd::GetInstance { id } => {
            let r = client.get_instance(id.clone()).await?;
            print(json_out, &r, || {
                line(format!("Instance {id}"));
                line(format!("  Machine: {} v{}", r.machine, r.version));
                line(format!("  State: {}", r.state));
                line(format!("  Context: {}", output::pretty(&r.ctx)));
                line(format!("  Last WAL offset: {}", r.last_wal_offset));
            });
            Ok(ExitCode::SUCCESS)
        }
        Cmd::ListInstances(a) => {
            let r = client
                .list_instances(ListInstancesParams {
                    machine: a.machine.clone(),
                    state: a.state.clone(),
                    limit: a.limit,
                    offset: a.offset,
                    after: a.after.clone(),
                    include_deleted: a.include_deleted,
                })
                .await?;
            print(json_out, &r, || {
                if r.instances.is_empty() {
                    line("No instances");
                    return;
                }
                if r.has_more {
                    line(format!(
                        "Instances ({} total, showing {})",
                        r.total,
                        r.instances.len()
                    ));
                } else {
                    line(format!("Instances ({} total)", r.total));
                }
                for i in &r.instances {
                    line(format!(
                        "  {} ({} v{}) state={}",
                        i.id, i.machine, i.version, i.state
                    ));
                }
            });
            Ok(ExitCode::SUCCESS)
        }
        Cmd::ApplyEvent(a) => {
            let payload = a.payload.as_deref().map(input::json_arg).transpose()?;
            let r = client
                .apply_event(ApplyEventParams {
                    instance_id: a.instance.clone(),
                    event: a.event.clone(),
                    payload,
                    expected_state: a.expected_state.clone(),
                    expected_wal_offset: a.expected_wal_offset,
                    event_id: a.event_id.clone(),
                    idempotency_key: a.idempotency_key.clone(),
                })
                .await?;
            print(json_out, &r, || {
                line(format!("Applied event {} on {}", a.event, a.instance));
                line(format!("  {} → {}", r.from_state, r.to_state));
                line(format!("  WAL offset: {}", r.wal_offset));
            });
            Ok(ExitCode::SUCCESS)
        }
        Cmd::DeleteInstance {
            id,
            idempotency_key,
        } => {
            let r = client
                .delete_instance(DeleteInstanceParams {
                    instance_id: id.clone(),
                    idempotency_key: idempotency_key.clone(),
                })
                .await?;
            print(json_out, &r, || {
                line(format!("Deleted instance {}", r.instance_id));
            });
            Ok(ExitCode::SUCCESS)
        }
        Cmd::SnapshotInstance { id } => {
            let r = client.snapshot_instance(id.clone()).await?;
            print(json_out, &r, || {
                line(format!("Snapshot {} of {}", r.snapshot_id, r.instance_id));
                line(format!("  WAL offset: {}", r.wal_offset));
                line(format!("  Size: {}", output::bytes(r.size_bytes)));
                line(format!("  Checksum: {}", r.checksum));
            });
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Batch(a) => batch(&client, a, json_out).await,
        Cmd::WalRead { from, limit } => {
            let r = client.wal_read(*from, *limit).await?;
            print(json_out, &r, || {
                let Some(last) = r.records.last() else {
                    line("No WAL entries");
                    return;
                };
                for record in &r.records {
                    for l in output::wal_record(record) {
                        line(l);
                    }
                }
                line("");
                line(format!("Next offset: {}", last.offset.saturating_add(1)));
            });
            Ok(ExitCode::SUCCESS)
        }
        Cmd::WalStats => {
            let r = client.wal_stats().await?;
            print(json_out, &r, || {
                for l in wal_stats_lines(&r) {
                    line(l);
                }
            });
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Compact { force } => {
            let r = client.compact(*force).await?;
            print(json_out, &r, || {
                line("Compaction complete");
                line(format!("  Snapshots created: {}", r.snapshots_created));
                line(format!("  WAL segments deleted: {}", r.segments_deleted));
                line(format!(
                    "  Bytes reclaimed: {}",
                    output::bytes(r.bytes_reclaimed)
                ));
                line("  ---");
                line(format!("  Total snapshots: {}", r.total_snapshots));
                line(format!("  WAL segments remaining: {}", r.wal_segments));
            });
            Ok(ExitCode::SUCCESS)
        }
        Cmd::ReplicationStatus => {
            let r = client.replication_status().await?;
            print(json_out, &r, || {
                for l in output::replication_status(&r) {
                    line(l);
                }
            });
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cluster(a) => crate::cluster::run(&client, json_out, a).await,
        Cmd::Sessions => {
            let r = client.sessions().await?;
            print(json_out, &r, || {
                line(format!(
                    "{:<8} {:<24} {:<22} {:<5} SINCE",
                    "ID", "PRINCIPAL", "ADDRESS", "TLS"
                ));
                for s in &r.sessions {
                    line(format!(
                        "{:<8} {:<24} {:<22} {:<5} {}",
                        s.session_id,
                        s.principal.as_deref().unwrap_or("-"),
                        s.client_addr,
                        if s.tls { "yes" } else { "no" },
                        s.since
                    ));
                }
            });
            Ok(ExitCode::SUCCESS)
        }
        Cmd::EndSession { id } => {
            let r = client.end_session(*id).await?;
            print(json_out, &r, || {
                line(format!("Ended session {}", r.session_id));
            });
            Ok(ExitCode::SUCCESS)
        }
        Cmd::FlushAll { .. } => {
            let r = client.flush_all().await?;
            print(json_out, &r, || {
                line("Database flushed");
                line(format!("  Instances removed: {}", r.instances_removed));
                line(format!("  Machines removed: {}", r.machines_removed));
            });
            Ok(ExitCode::SUCCESS)
        }
        Cmd::WatchInstance(a) => watch_instance(client, a, json_out).await,
        Cmd::WatchAll(a) => watch_all(client, a, json_out).await,
        Cmd::Unwatch { subscription_id } => {
            let r = client.unwatch(subscription_id.clone()).await?;
            print(json_out, &r, || {
                if r.removed {
                    line(format!("Removed subscription {subscription_id}"));
                } else {
                    line(format!("Warning: subscription {subscription_id} not found"));
                }
            });
            Ok(ExitCode::SUCCESS)
        }
        Cmd::ExportDiagram(a) => {
            let r = client.get_machine(&a.name, a.version).await?;
            let text = diagram::render(&a.name, a.version, &r.definition, a.format)
                .map_err(CliError::Input)?;
            if json_out {
                let format = format!("{:?}", a.format).to_lowercase();
                line(json!({"machine": a.name, "version": a.version, "format": format, "diagram": text}).to_string());
            } else {
                // The text ends with a newline already.
                use std::io::Write;
                let _ = std::io::stdout().write_all(text.as_bytes());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Asks on the terminal before FLUSH_ALL; true only for `y` or `yes`. An unreadable stdin
/// (closed mid-prompt) is a refusal, never a flush.
fn confirm_flush(server: &str) -> Result<bool, CliError> {
    use std::io::Write;
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "This removes every machine and instance on {server}. Continue? [y/N] "
    );
    let _ = err.flush();
    let mut answer = String::new();
    match std::io::stdin().read_line(&mut answer) {
        Ok(_) => Ok(matches!(
            answer.trim().to_ascii_lowercase().as_str(),
            "y" | "yes"
        )),
        Err(e) => Err(CliError::Input(format!("reading the confirmation: {e}"))),
    }
}

/// Lowercase hex SHA-256 of the token's bytes (operations.md §6.5).
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `--json`: the value as one compact JSON document; otherwise the human form.
/// The `wal-stats` lines (the REPL's `wal-stats` layout).
pub fn wal_stats_lines(r: &rstmdb_client::WalStatsResult) -> Vec<String> {
    let mut lines = vec![
        "WAL Statistics".to_owned(),
        format!("  Entries: {}", r.entry_count),
        format!("  Segments: {}", r.segment_count),
        format!("  Size: {}", output::bytes(r.total_size_bytes)),
    ];
    if let Some(o) = r.latest_offset {
        lines.push(format!("  Latest offset: {o}"));
    }
    lines.extend([
        String::new(),
        "I/O Statistics".to_owned(),
        format!(
            "  Bytes written: {}",
            output::bytes(r.io_stats.bytes_written)
        ),
        format!("  Bytes read: {}", output::bytes(r.io_stats.bytes_read)),
        format!("  Writes: {}", r.io_stats.writes),
        format!("  Reads: {}", r.io_stats.reads),
        format!("  Fsyncs: {}", r.io_stats.fsyncs),
    ]);
    lines
}

async fn list_machines(client: &Client, json_out: bool) -> Result<ExitCode, CliError> {
    let list = client.list_machines().await?;
    if json_out {
        line(serde_json::to_string(&list).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    if list.items.is_empty() {
        line("No machines registered");
        return Ok(ExitCode::SUCCESS);
    }
    for item in &list.items {
        let Some(&latest) = item.versions.iter().max() else {
            line(format!("  {} [no versions]", item.machine));
            continue;
        };
        match client.get_machine(&item.machine, latest).await {
            Ok(m) => {
                let (states, transitions) = output::definition_counts(&m.definition);
                line(format!(
                    "  {} v{latest} ({states} states, {transitions} transitions)",
                    item.machine
                ));
            }
            Err(_) => {
                line(format!(
                    "  {} [versions: {:?}]",
                    item.machine, item.versions
                ));
            }
        }
    }
    line("");
    Ok(ExitCode::SUCCESS)
}

async fn batch(client: &Client, a: &BatchArgs, json_out: bool) -> Result<ExitCode, CliError> {
    let file = input::json_file(&a.file)?;
    let (mut mode, ops) = match file {
        Value::Array(ops) => (None, ops),
        Value::Object(mut obj) => {
            let mode = obj.remove("mode");
            let ops = obj
                .remove("ops")
                .or_else(|| obj.remove("operations"))
                .ok_or_else(|| {
                    CliError::Input(format!(
                        "{}: expected an \"ops\" array (or the array itself)",
                        a.file.display()
                    ))
                })?;
            let Value::Array(ops) = ops else {
                return Err(CliError::Input(format!(
                    "{}: \"ops\" must be an array",
                    a.file.display()
                )));
            };
            (mode, ops)
        }
        _ => {
            return Err(CliError::Input(format!(
                "{}: expected an object with \"ops\" or an array of ops",
                a.file.display()
            )));
        }
    };
    if let Some(m) = a.mode {
        mode = Some(json!(match m {
            BatchModeArg::Atomic => "atomic",
            BatchModeArg::BestEffort => "best_effort",
        }));
    }
    let mode_name = mode
        .as_ref()
        .and_then(Value::as_str)
        .unwrap_or("best_effort")
        .to_owned();
    let mut params = json!({ "ops": ops });
    if let (Some(m), Some(obj)) = (mode, params.as_object_mut()) {
        obj.insert("mode".into(), m);
    }
    let ops_sent: Vec<String> = ops_names(&params);
    let result = client.call_raw("BATCH", params).await?;
    let batch: rstmdb_client::BatchResult = serde_json::from_value(result.clone())
        .map_err(|e| CliError::Client(Error::Protocol(format!("unexpected BATCH result: {e}"))))?;
    let failed = batch.results.iter().filter(|r| r.error.is_some()).count();
    if json_out {
        line(result.to_string());
    } else {
        line(format!(
            "Batch ({mode_name}): {} ok, {failed} failed",
            batch.results.len() - failed
        ));
        for (i, r) in batch.results.iter().enumerate() {
            let op = ops_sent.get(i).map_or("?", String::as_str);
            match &r.error {
                None => line(format!(
                    "  [{i}] {op} ok {}",
                    r.result.as_ref().map(Value::to_string).unwrap_or_default()
                )),
                Some(e) => line(format!("  [{i}] {op} error {} - {}", e.code, e.message)),
            };
        }
    }
    // A batch with failed elements is a failed command for scripts.
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn ops_names(params: &Value) -> Vec<String> {
    params["ops"]
        .as_array()
        .map(|ops| {
            ops.iter()
                .map(|op| op["op"].as_str().unwrap_or("?").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn watch_instance(
    client: Client,
    a: &WatchInstanceArgs,
    json_out: bool,
) -> Result<ExitCode, CliError> {
    let stream = client
        .watch_instance(WatchInstanceParams {
            instance_id: a.id.clone(),
            include_ctx: !a.no_ctx,
            from_offset: a.from_offset,
        })
        .await?;
    let start = stream.start_info();
    eprintln!(
        "Watching instance {} (sub_id: {}, state: {}, wal_offset: {})",
        a.id,
        start.subscription_id,
        start.current_state.as_deref().unwrap_or("?"),
        start.wal_offset
    );
    follow(stream, json_out).await
}

async fn watch_all(client: Client, a: &WatchAllArgs, json_out: bool) -> Result<ExitCode, CliError> {
    let stream = client
        .watch_all(WatchAllParams {
            include_ctx: !a.no_ctx,
            from_offset: a.from_offset,
            machines: a.machines.clone(),
            from_states: a.from_states.clone(),
            to_states: a.to_states.clone(),
            events: a.events.clone(),
        })
        .await?;
    let start = stream.start_info();
    eprintln!(
        "Watching all events (sub_id: {}, wal_offset: {})",
        start.subscription_id, start.wal_offset
    );
    follow(stream, json_out).await
}

/// Prints events until Ctrl+C / SIGTERM (UNWATCH, exit 0) or the end of the stream.
async fn follow(mut stream: WatchStream, json_out: bool) -> Result<ExitCode, CliError> {
    eprintln!("Press Ctrl+C to stop...");
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => {
                eprintln!();
                eprintln!("Stopping watch...");
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), stream.unwatch()).await;
                return Ok(ExitCode::SUCCESS);
            }
            item = stream.next() => match item {
                Some(Ok(event)) => {
                    if !line(render_event(&event, json_out)) {
                        // Nobody reads our output any more.
                        return Ok(ExitCode::SUCCESS);
                    }
                }
                Some(Err(Error::ConnectionClosed)) | None => {
                    eprintln!("Connection closed");
                    return Ok(ExitCode::SUCCESS);
                }
                Some(Err(e)) => return Err(CliError::Client(e)),
            }
        }
    }
}

fn render_event(event: &Event, json_out: bool) -> String {
    if json_out {
        serde_json::to_string(event).unwrap_or_default()
    } else {
        output::event_line(event)
    }
}

/// Resolves on Ctrl+C (SIGINT) or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_token_matches_the_reference_example() {
        assert_eq!(
            hash_token("my-secret-token"),
            "ea5add57437cbf20af59034d7ed17968dcc56767b41965fcc5b376d45db8b4a3"
        );
    }
}
