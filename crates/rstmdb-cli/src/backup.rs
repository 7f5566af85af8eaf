//! `backup`, `backup verify`, `restore-instance`, `restore-machine`.
//!
//! `backup` asks the server for a consistent online backup (BACKUP_BEGIN), pulls the body
//! (BACKUP_READ), wraps it in the backup container (`rstmdb-backup`), encrypting it here when
//! asked so the key never leaves this machine, and renames the file into place only once it
//! is complete and fsynced.

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine;
use indicatif::{ProgressBar, ProgressStyle};
use rstmdb_backup::{Counts, Key, Manifest, Record};
use rstmdb_client::Client;
use serde_json::{Value, json};

use crate::CliError;
use crate::args::{
    BackupAction, BackupArgs, Cli, KeyArgs, RestoreInstanceArgs, RestoreMachineArgs,
};
use crate::output::line;

/// Bytes asked for per BACKUP_READ.
const READ_BYTES: u64 = 4 * 1024 * 1024;
/// Requests of a backup may take long (the export of a large database).
const BACKUP_REQUEST_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// A PING this often keeps the connection from the server's idle timeout while the export
/// runs (the server reads it while BACKUP_BEGIN is in progress).
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Largest RESTORE_INSTANCE request we build, in bytes (under the 16 MiB frame limit).
const MAX_RESTORE_REQUEST_BYTES: usize = 15 * 1024 * 1024;

fn input(e: impl std::fmt::Display) -> CliError {
    CliError::Input(e.to_string())
}

fn load_key(k: &KeyArgs) -> Result<Option<Key>, CliError> {
    Key::load(
        k.key_file.as_deref(),
        std::env::var(rstmdb_backup::KEY_ENV).ok(),
    )
    .map_err(input)
}

fn progress(total: u64, json_out: bool, what: &str) -> ProgressBar {
    if json_out || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    pb.set_style(style);
    pb.set_message(what.to_owned());
    pb
}

fn counts_text(c: &Counts) -> String {
    format!(
        "{} machine versions, {} instances, {} idempotency records, {} WAL records",
        c.machines, c.instances, c.idempotency_records, c.wal_records
    )
}

/// Runs `backup verify` (no server needed). `None` when this is not a verify.
pub fn verify_cmd(a: &BackupArgs, json_out: bool) -> Option<Result<ExitCode, CliError>> {
    let Some(BackupAction::Verify { file, key }) = &a.action else {
        return None;
    };
    Some(verify(file, key, json_out))
}

fn verify(file: &Path, key: &KeyArgs, json_out: bool) -> Result<ExitCode, CliError> {
    let key = load_key(key)?;
    let f = std::fs::File::open(file).map_err(|e| input(format!("{}: {e}", file.display())))?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    let pb = progress(size, json_out, "verifying");
    let summary = rstmdb_backup::verify(std::io::BufReader::new(f), key.as_ref(), |n| {
        pb.set_position(n)
    });
    pb.finish_and_clear();
    let s = summary.map_err(|e| input(format!("{}: {e}", file.display())))?;
    if json_out {
        line(
            json!({
                "ok": true,
                "file": file.display().to_string(),
                "manifest": s.manifest,
                "chunks": s.chunks,
                "wal_first": s.wal_first,
                "wal_last": s.wal_last,
            })
            .to_string(),
        );
    } else {
        line(format!("Backup OK: {}", file.display()));
        line(format!(
            "  format {} from server {}, created {} (Unix ms)",
            s.manifest.format_version, s.manifest.server_version, s.manifest.created_at
        ));
        line(format!(
            "  state at WAL offset {} (export base {}, WAL records {}..={})",
            s.manifest.wal_end,
            s.manifest.base_offset,
            s.manifest.base_offset + 1,
            s.manifest.wal_end
        ));
        line(format!("  {}", counts_text(&s.counts)));
        line(format!(
            "  {} body bytes in {} chunks, sha256 {}",
            s.manifest.body_bytes, s.chunks, s.manifest.body_sha256
        ));
        line(format!(
            "  encryption: {}",
            match &s.manifest.encryption {
                Some(e) => format!("{} (key {})", e.algorithm, e.key_fingerprint),
                None => "none".into(),
            }
        ));
    }
    Ok(ExitCode::SUCCESS)
}

fn temp_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".into());
    out.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

fn sync_parent(p: &Path) {
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Connects for a backup: long request timeout.
async fn connect(cli: &Cli) -> Result<Client, CliError> {
    let config = crate::client_config(cli)?.with_request_timeout(BACKUP_REQUEST_TIMEOUT);
    Client::connect(config).await.map_err(CliError::Connect)
}

/// `backup --out FILE`.
pub async fn backup(cli: &Cli, a: &BackupArgs) -> Result<ExitCode, CliError> {
    let json_out = cli.json;
    let out = a
        .out
        .clone()
        .ok_or_else(|| input("backup needs --out FILE (or: backup verify FILE)"))?;
    let key = if a.encrypt {
        Some(load_key(&a.key)?.ok_or_else(|| {
            input(format!(
                "--encrypt needs a key: --key-file PATH or {}",
                rstmdb_backup::KEY_ENV
            ))
        })?)
    } else {
        if a.key.key_file.is_some() {
            return Err(input("--key-file is only used with --encrypt"));
        }
        None
    };
    let client = connect(cli).await?;

    let spinner = if json_out || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        let s = ProgressBar::new_spinner();
        s.set_message("server exporting a consistent backup…");
        s.enable_steady_tick(Duration::from_millis(200));
        s
    };
    let begin = {
        let call = client.call_raw("BACKUP_BEGIN", json!({}));
        tokio::pin!(call);
        let mut tick = tokio::time::interval(KEEPALIVE);
        tick.tick().await;
        loop {
            tokio::select! {
                r = &mut call => break r?,
                _ = tick.tick() => {
                    let c = client.clone();
                    tokio::spawn(async move { let _ = c.ping().await; });
                }
            }
        }
    };
    spinner.finish_and_clear();
    let field = |k: &str| -> Result<&Value, CliError> {
        begin
            .get(k)
            .ok_or_else(|| input(format!("BACKUP_BEGIN result lacks `{k}`")))
    };
    let backup_id = field("backup_id")?
        .as_str()
        .ok_or_else(|| input("backup_id is not a string"))?
        .to_owned();
    let num = |k: &str| -> Result<u64, CliError> {
        field(k)?
            .as_u64()
            .ok_or_else(|| input(format!("`{k}` is not a number")))
    };
    let manifest = Manifest {
        format_version: u32::try_from(num("format_version")?)
            .map_err(|_| input("bad format_version"))?,
        created_at: field("created_at")?.as_i64().unwrap_or(0),
        server_version: field("server_version")?.as_str().unwrap_or("").to_owned(),
        base_offset: num("base_offset")?,
        wal_end: num("wal_end")?,
        counts: serde_json::from_value(field("counts")?.clone()).map_err(input)?,
        body_bytes: num("body_bytes")?,
        body_sha256: field("body_sha256")?.as_str().unwrap_or("").to_owned(),
        chunk_bytes: 0,
        encryption: None,
    };
    if manifest.format_version != rstmdb_backup::FORMAT_VERSION {
        return Err(input(format!(
            "the server writes backup format {}, this CLI {}",
            manifest.format_version,
            rstmdb_backup::FORMAT_VERSION
        )));
    }

    let tmp = temp_path(&out);
    let result = download(&client, &backup_id, manifest, key.as_ref(), &tmp, json_out).await;
    let _ = client
        .call_raw("BACKUP_END", json!({"backup_id": backup_id}))
        .await;
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if let Err(e) = std::fs::rename(&tmp, &out) {
        let _ = std::fs::remove_file(&tmp);
        return Err(input(format!("renaming into {}: {e}", out.display())));
    }
    sync_parent(&out);
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    if json_out {
        line(
            json!({
                "file": out.display().to_string(),
                "bytes": size,
                "base_offset": manifest.base_offset,
                "wal_end": manifest.wal_end,
                "counts": manifest.counts,
                "body_sha256": manifest.body_sha256,
                "encrypted": manifest.encryption.is_some(),
            })
            .to_string(),
        );
    } else {
        line(format!(
            "Backup written to {} ({size} bytes{})",
            out.display(),
            if manifest.encryption.is_some() {
                ", AES-256-GCM"
            } else {
                ""
            }
        ));
        line(format!(
            "  state at WAL offset {}; {}",
            manifest.wal_end,
            counts_text(&manifest.counts)
        ));
    }
    Ok(ExitCode::SUCCESS)
}

async fn download(
    client: &Client,
    backup_id: &str,
    manifest: Manifest,
    key: Option<&Key>,
    tmp: &Path,
    json_out: bool,
) -> Result<Manifest, CliError> {
    let total = manifest.body_bytes;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    // A backup holds every instance (in clear without --encrypt): owner-only, whatever the
    // umask, like the data directory it copies.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options
        .open(tmp)
        .map_err(|e| input(format!("creating {}: {e}", tmp.display())))?;
    let mut w =
        rstmdb_backup::Writer::new(std::io::BufWriter::new(file), manifest, key).map_err(input)?;
    let pb = progress(total, json_out, "downloading");
    let mut offset = 0u64;
    while offset < total {
        let r = client
            .call_raw(
                "BACKUP_READ",
                json!({"backup_id": backup_id, "offset": offset, "max_bytes": READ_BYTES}),
            )
            .await?;
        let data = r
            .get("data")
            .and_then(Value::as_str)
            .ok_or_else(|| input("BACKUP_READ result lacks `data`"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| input(format!("BACKUP_READ data: {e}")))?;
        if bytes.is_empty() {
            return Err(input(format!(
                "the server returned no data at offset {offset} of {total}"
            )));
        }
        w.write_body(&bytes).map_err(input)?;
        offset += bytes.len() as u64;
        pb.set_position(offset);
    }
    pb.finish_and_clear();
    let manifest = w.manifest().clone();
    let out = w.finish().map_err(input)?;
    let file = out
        .into_inner()
        .map_err(|e| input(format!("writing {}: {e}", tmp.display())))?;
    file.sync_all()
        .map_err(|e| input(format!("syncing {}: {e}", tmp.display())))?;
    Ok(manifest)
}

// ---- restore-instance / restore-machine ---------------------------------------------------

/// The instance ids a WAL entry may change (batches by their members), and whether it is a
/// FLUSH_ALL (which changes every instance).
fn entry_ids<'a>(entry: &'a Value, out: &mut Vec<&'a str>) -> bool {
    match entry.get("type").and_then(Value::as_str) {
        Some("flush_all") => true,
        Some("batch") => {
            let mut flush = false;
            for e in entry
                .get("entries")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                flush |= entry_ids(e, out);
            }
            flush
        }
        _ => {
            out.extend(entry.get("instance_id").and_then(Value::as_str));
            false
        }
    }
}

fn open_backup(
    from: &Path,
    key: &KeyArgs,
) -> Result<rstmdb_backup::Records<std::io::BufReader<std::fs::File>>, CliError> {
    let key = load_key(key)?;
    let f = std::fs::File::open(from).map_err(|e| input(format!("{}: {e}", from.display())))?;
    let r = rstmdb_backup::Reader::open(std::io::BufReader::new(f), key.as_ref())
        .map_err(|e| input(format!("{}: {e}", from.display())))?;
    Ok(r.records())
}

/// What the backup holds for a set of instances: their records and the WAL records that
/// may touch them.
#[derive(Default)]
struct Found {
    instances: Vec<(String, Option<Value>)>,
    machines: Vec<(String, u32, Value)>,
    /// The WAL records kept, in offset order.
    wal: Vec<(u64, Value)>,
    /// Per instance id, the indexes into `wal` of its records.
    by_id: HashMap<String, Vec<usize>>,
    /// Indexes of FLUSH_ALL records (they concern every instance).
    flushes: Vec<usize>,
}

impl Found {
    /// The WAL records instance `id` needs, in offset order.
    fn records_of(&self, id: &str) -> Vec<&(u64, Value)> {
        let mut idx: Vec<usize> = self.flushes.clone();
        idx.extend(self.by_id.get(id).into_iter().flatten());
        idx.sort_unstable();
        idx.dedup();
        idx.iter().filter_map(|&i| self.wal.get(i)).collect()
    }
}

/// Reads the whole backup (checking it end to end) and keeps what concerns `want_instance`
/// or, for a machine, its definitions and instances.
fn collect(
    from: &Path,
    key: &KeyArgs,
    want_instance: Option<&str>,
    want_machine: Option<&str>,
) -> Result<Found, CliError> {
    let mut found = Found::default();
    let mut ids: HashSet<String> = want_instance.map(|s| s.to_owned()).into_iter().collect();
    for r in open_backup(from, key)? {
        match r.map_err(|e| input(format!("{}: {e}", from.display())))? {
            Record::Machine {
                machine,
                version,
                definition,
                ..
            } if Some(machine.as_str()) == want_machine => {
                found.machines.push((machine, version, definition));
            }
            Record::Instance { instance } => {
                let id = instance.get("id").and_then(Value::as_str).unwrap_or("");
                let m = instance.get("machine").and_then(Value::as_str);
                if Some(id) == want_instance || (want_machine.is_some() && m == want_machine) {
                    let id = id.to_owned();
                    ids.insert(id.clone());
                    found.instances.push((id, Some(instance)));
                }
            }
            Record::Wal { offset, entry } => {
                // Instances of the machine created after the export exist only here.
                if let Some(m) = want_machine {
                    for e in std::iter::once(&entry).chain(
                        entry
                            .get("entries")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten(),
                    ) {
                        if e.get("type").and_then(Value::as_str) == Some("create_instance")
                            && e.get("machine").and_then(Value::as_str) == Some(m)
                            && let Some(id) = e.get("instance_id").and_then(Value::as_str)
                            && ids.insert(id.to_owned())
                        {
                            found.instances.push((id.to_owned(), None));
                        }
                    }
                }
                // Instance records come before WAL records and a create before the records
                // after it, so every id is known when its records pass: only those are kept.
                let mut touched = Vec::new();
                let flush = entry_ids(&entry, &mut touched);
                let mine: Vec<String> = touched
                    .into_iter()
                    .filter(|id| ids.contains(*id))
                    .map(str::to_owned)
                    .collect();
                if flush || !mine.is_empty() {
                    let i = found.wal.len();
                    if flush {
                        found.flushes.push(i);
                    }
                    for id in mine {
                        found.by_id.entry(id).or_default().push(i);
                    }
                    found.wal.push((offset, entry));
                }
            }
            _ => {}
        }
    }
    if let Some(id) = want_instance
        && !found.instances.iter().any(|(i, _)| i == id)
    {
        found.instances.push((id.to_owned(), None));
    }
    Ok(found)
}

async fn restore_one(
    client: &Client,
    id: &str,
    instance: Option<&Value>,
    found: &Found,
    as_id: Option<&str>,
    replace: bool,
) -> Result<Value, CliError> {
    let wal: Vec<Value> = found
        .records_of(id)
        .into_iter()
        .map(|(o, e)| json!({"offset": o, "entry": e}))
        .collect();
    let mut params = json!({"instance_id": id, "wal": wal, "replace": replace});
    if let Some(obj) = params.as_object_mut() {
        if let Some(i) = instance {
            obj.insert("instance".into(), i.clone());
        }
        if let Some(a) = as_id {
            obj.insert("as_id".into(), Value::from(a));
        }
    }
    let size = serde_json::to_vec(&params).map(|v| v.len()).unwrap_or(0);
    if size > MAX_RESTORE_REQUEST_BYTES {
        return Err(input(format!(
            "instance {id} has {size} bytes of history in the backup; more than one request can carry"
        )));
    }
    Ok(client.call_raw("RESTORE_INSTANCE", params).await?)
}

/// `restore-instance`.
pub async fn restore_instance(cli: &Cli, a: &RestoreInstanceArgs) -> Result<ExitCode, CliError> {
    let found = collect(&a.from, &a.key, Some(&a.instance), None)?;
    let client = crate::connect(cli, false).await?;
    let instance = found
        .instances
        .iter()
        .find(|(i, _)| i == &a.instance)
        .and_then(|(_, v)| v.as_ref());
    let r = restore_one(
        &client,
        &a.instance,
        instance,
        &found,
        a.as_id.as_deref(),
        a.replace,
    )
    .await?;
    if cli.json {
        line(r.to_string());
    } else {
        line(format!(
            "Restored instance {} as {} (state {}, wal_offset {})",
            a.instance,
            r.get("instance_id").and_then(Value::as_str).unwrap_or("?"),
            r.get("state").and_then(Value::as_str).unwrap_or("?"),
            r.get("wal_offset").and_then(Value::as_u64).unwrap_or(0)
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// `restore-machine`: every definition version (PUT_MACHINE: identical ones are no-ops, a
/// different definition under the same version is refused by the server), then every instance
/// of the machine at the backup's end. Live instances with the same id are kept unless
/// `--replace`; instances deleted at the backup's end are skipped.
pub async fn restore_machine(cli: &Cli, a: &RestoreMachineArgs) -> Result<ExitCode, CliError> {
    let found = collect(&a.from, &a.key, None, Some(&a.machine))?;
    if found.machines.is_empty() {
        return Err(input(format!(
            "machine {:?} is not in the backup",
            a.machine
        )));
    }
    let client = crate::connect(cli, false).await?;
    let mut versions = Vec::new();
    for (machine, version, definition) in &found.machines {
        let r = client
            .call_raw(
                "PUT_MACHINE",
                json!({"machine": machine, "version": version, "definition": definition}),
            )
            .await?;
        versions.push(json!({"version": version, "created": r.get("created")}));
    }
    let mut restored = Vec::new();
    let mut skipped = Vec::new();
    for (id, instance) in &found.instances {
        match restore_one(&client, id, instance.as_ref(), &found, None, a.replace).await {
            Ok(_) => restored.push(id.clone()),
            Err(CliError::Client(e))
                if matches!(
                    e.code(),
                    Some(rstmdb_client::ErrorCode::InstanceExists)
                        | Some(rstmdb_client::ErrorCode::InstanceNotFound)
                ) =>
            {
                skipped.push(json!({"instance_id": id, "reason": e.to_string()}));
            }
            Err(e) => return Err(e),
        }
    }
    if cli.json {
        line(
            json!({"machine": a.machine, "versions": versions, "restored": restored, "skipped": skipped})
                .to_string(),
        );
    } else {
        line(format!(
            "Restored machine {}: {} versions, {} instances ({} skipped)",
            a.machine,
            versions.len(),
            restored.len(),
            skipped.len()
        ));
        for s in &skipped {
            line(format!(
                "  skipped {}: {}",
                s.get("instance_id").and_then(Value::as_str).unwrap_or("?"),
                s.get("reason").and_then(Value::as_str).unwrap_or("")
            ));
        }
    }
    let _ = std::io::stdout().flush();
    Ok(ExitCode::SUCCESS)
}
