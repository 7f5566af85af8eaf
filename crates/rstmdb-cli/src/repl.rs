//! The interactive shell (operations.md §6.7): line editing and history (rustyline), tab
//! completion of command names, and `\json` to switch between human and JSON output.
//!
//! Lines are split on whitespace with no quoting, as in the reference; JSON arguments must
//! therefore be one token, except for `put-machine`, which takes the rest of the line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use rstmdb_client::{
    ApplyEventParams, ApplyEventResult, Client, Command, CreateInstanceParams,
    CreateInstanceResult, DeleteInstanceParams, DeleteInstanceResult, Error, GetInstanceParams,
    GetInstanceResult, GetMachineParams, GetMachineResult, ListInstancesParams,
    ListInstancesResult, PutMachineParams, PutMachineResult, WalReadParams, WalReadResult,
    WalStatsResult,
};
use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Config, Editor, Helper};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::runtime::Runtime;

use crate::args::Cli;
use crate::output::{self, line};
use crate::{CliError, client_config, commands};

/// Page size of `list-instances` in the REPL.
const LIST_LIMIT: u32 = 50;
/// How long `reconnect` may take.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Every command word, for completion and `help`.
const COMMANDS: &[&str] = &[
    "help",
    "quit",
    "exit",
    "reconnect",
    "ping",
    "info",
    "put-machine",
    "get-machine",
    "list-machines",
    "create",
    "get",
    "list-instances",
    "delete",
    "apply",
    "wal",
    "wal-stats",
    "\\json",
];

const HELP: &str = "\
Commands:
  help, ?                                       Show this help
  quit, exit, q                                 Leave the shell
  reconnect, rc                                 Open a new connection
  ping                                          Check the server answers
  info                                          Server information
  put-machine, pm <name> <version> <json>       Store a machine definition
  get-machine, gm <name> <version>              Show a machine definition
  list-machines, lm                             List machines
  create, c <machine> <version> [id] [ctx]      Create an instance
  get, g <instance_id>                          Show an instance
  list-instances, li [machine] [state]          List instances (first 50)
  delete, d <instance_id>                       Delete an instance
  apply, a <instance_id> <event> [payload]      Apply an event
  wal [from] [limit]                            Read WAL records
  wal-stats, ws                                 WAL statistics
  \\json                                         Toggle JSON output

JSON arguments (ctx, payload) must not contain spaces; put-machine takes the rest of the line.";

struct ReplHelper;

impl Completer for ReplHelper {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let before = line.get(..pos).unwrap_or(line);
        // Only the command word is completed.
        if before.trim_start().contains(char::is_whitespace) {
            return Ok((pos, Vec::new()));
        }
        let start = before.len() - before.trim_start().len();
        let word = before.trim_start();
        let matches = COMMANDS
            .iter()
            .filter(|c| c.starts_with(word))
            .map(|c| (*c).to_owned())
            .collect();
        Ok((start, matches))
    }
}

impl Hinter for ReplHelper {
    type Hint = String;
}
impl Highlighter for ReplHelper {}
impl Validator for ReplHelper {}
impl Helper for ReplHelper {}

fn history_path() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home).join(".rstmdb_history"),
        _ => PathBuf::from(".rstmdb_history"),
    }
}

/// Runs the shell until `quit` or end of input.
pub fn run(cli: &Cli, runtime: &Runtime) -> Result<ExitCode, CliError> {
    line("rstmdb CLI");
    line(format!("Connecting to {}...", cli.server));
    let config = client_config(cli)?;
    let client = runtime
        .block_on(Client::connect(config))
        .map_err(CliError::Client)?;
    line("Connected!");
    line("Type 'help' for available commands.");
    line("");

    // History is added by hand below: rustyline skips it when stdin is not a terminal,
    // and piped sessions (scripts, tests) should be recorded too.
    let editor_config = Config::builder()
        .auto_add_history(false)
        .history_ignore_space(true)
        .build();
    let mut editor: Editor<ReplHelper, DefaultHistory> = Editor::with_config(editor_config)
        .map_err(|e| CliError::Input(format!("cannot start the line editor: {e}")))?;
    editor.set_helper(Some(ReplHelper));
    let history = history_path();
    let _ = editor.load_history(&history);

    let mut shell = Shell {
        client,
        server: cli.server.clone(),
        json: cli.json,
    };
    loop {
        match editor.readline("rstmdb> ") {
            Ok(input) => {
                // Lines starting with a space stay out of the history.
                if !input.trim().is_empty() && !input.starts_with(' ') {
                    let _ = editor.add_history_entry(input.as_str());
                }
                if !runtime.block_on(shell.execute(input.trim())) {
                    break;
                }
            }
            Err(ReadlineError::Interrupted) => {
                line("^C");
            }
            Err(ReadlineError::Eof) => {
                line("^D");
                break;
            }
            Err(e) => {
                eprintln!("Error: {e}");
                break;
            }
        }
    }
    let _ = editor.save_history(&history);
    line("Disconnected.");
    Ok(ExitCode::SUCCESS)
}

struct Shell {
    client: Client,
    server: String,
    json: bool,
}

/// What a command produced: lines to print, or an error.
type Outcome = Result<Vec<String>, String>;

impl Shell {
    /// Runs one line; false = leave the shell.
    async fn execute(&mut self, input: &str) -> bool {
        let words: Vec<&str> = input.split_whitespace().collect();
        let Some(first) = words.first() else {
            return true;
        };
        let cmd = first.to_lowercase();
        let args = &words[1..];
        let outcome = match cmd.as_str() {
            "quit" | "exit" | "q" => return false,
            "help" | "?" => Ok(vec![HELP.to_owned()]),
            "\\json" => {
                self.json = !self.json;
                Ok(vec![format!(
                    "JSON output {}",
                    if self.json { "on" } else { "off" }
                )])
            }
            "reconnect" | "rc" => Ok(self.reconnect().await),
            "ping" => match self.call::<Value>(Command::Ping).await {
                Ok(r) => self.show(r, |_| vec!["PONG".to_owned()]),
                Err(e) => Err(e),
            },
            "info" => match self.call::<Value>(Command::Info).await {
                Ok(r) => self.show(r, |v| vec![output::pretty(&v)]),
                Err(e) => Err(e),
            },
            "put-machine" | "pm" => self.put_machine(input, args).await,
            "get-machine" | "gm" => self.get_machine(args).await,
            "list-machines" | "lm" => self.list_machines().await,
            "create" | "c" => self.create(args).await,
            "get" | "g" => self.get(args).await,
            "list-instances" | "li" => self.list_instances(args).await,
            "delete" | "d" => self.delete(args).await,
            "apply" | "a" => self.apply(args).await,
            "wal" => self.wal(args).await,
            "wal-stats" | "ws" => self.wal_stats().await,
            _ => Ok(vec![format!(
                "Unknown command: {first}. Type 'help' for help."
            )]),
        };
        match outcome {
            Ok(lines) => {
                for l in lines {
                    line(l);
                }
            }
            Err(message) => {
                line(format!("Error: {message}"));
                let lower = message.to_lowercase();
                if ["not connected", "connection", "channel closed"]
                    .iter()
                    .any(|k| lower.contains(k))
                {
                    line("Hint: Use 'reconnect' command to reconnect to the server.");
                }
            }
        }
        line("");
        true
    }

    async fn reconnect(&mut self) -> Vec<String> {
        line("Closing existing connection...");
        tokio::time::sleep(Duration::from_millis(100)).await;
        line(format!("Reconnecting to {}...", self.server));
        match tokio::time::timeout(RECONNECT_TIMEOUT, self.client.reconnect()).await {
            Ok(Ok(())) => vec!["Reconnected!".to_owned()],
            Ok(Err(e)) => vec![format!("Reconnect failed: {e}")],
            Err(_) => vec!["Reconnect timed out (10s)".to_owned()],
        }
    }

    async fn call_raw(&self, command: Command) -> Result<Value, String> {
        self.client.call(command).await.map_err(|e| e.to_string())
    }

    /// Runs the command; returns the raw result (for JSON mode) and the typed one.
    async fn call<T: DeserializeOwned>(&self, command: Command) -> Result<(Value, T), String> {
        let value = self.call_raw(command).await?;
        let typed = serde_json::from_value(value.clone())
            .map_err(|e| Error::Protocol(format!("unexpected result: {e}")).to_string())?;
        Ok((value, typed))
    }

    /// JSON mode prints the raw result; otherwise `human` formats the typed one.
    fn show<T>(&self, (raw, typed): (Value, T), human: impl FnOnce(T) -> Vec<String>) -> Outcome {
        if self.json {
            Ok(vec![raw.to_string()])
        } else {
            Ok(human(typed))
        }
    }

    async fn put_machine(&self, input: &str, args: &[&str]) -> Outcome {
        if args.len() < 3 {
            return usage("put-machine <name> <version> <definition_json>");
        }
        let version = parse_u32(args[1])?;
        // The definition is the rest of the line, spaces included.
        let rest = input
            .split_whitespace()
            .skip(3)
            .collect::<Vec<_>>()
            .join(" ");
        let definition: Value = serde_json::from_str(&rest).map_err(|e| e.to_string())?;
        let r = self
            .call::<PutMachineResult>(Command::PutMachine(PutMachineParams {
                machine: args[0].to_owned(),
                version,
                definition,
                checksum: None,
            }))
            .await?;
        self.show(r, |r| {
            let verb = if r.created { "Created" } else { "Exists" };
            vec![format!(
                "{verb} {} v{} (checksum: {})",
                r.machine, r.version, r.stored_checksum
            )]
        })
    }

    async fn get_machine(&self, args: &[&str]) -> Outcome {
        if args.len() < 2 {
            return usage("get-machine <name> <version>");
        }
        let version = parse_u32(args[1])?;
        let r = self
            .call::<GetMachineResult>(Command::GetMachine(GetMachineParams {
                machine: args[0].to_owned(),
                version,
            }))
            .await?;
        self.show(r, |r| vec![output::pretty(&r.definition)])
    }

    async fn list_machines(&self) -> Outcome {
        let (raw, list) = self
            .call::<rstmdb_client::ListMachinesResult>(Command::ListMachines)
            .await?;
        if self.json {
            return Ok(vec![raw.to_string()]);
        }
        if list.items.is_empty() {
            return Ok(vec!["No machines".to_owned()]);
        }
        let mut lines = Vec::new();
        for item in &list.items {
            let Some(&latest) = item.versions.iter().max() else {
                lines.push(format!("  {} [no versions]", item.machine));
                continue;
            };
            match self.client.get_machine(&item.machine, latest).await {
                Ok(m) => {
                    let (s, t) = output::definition_counts(&m.definition);
                    lines.push(format!(
                        "  {} v{latest} ({s} states, {t} transitions)",
                        item.machine
                    ));
                }
                Err(_) => lines.push(format!(
                    "  {} [versions: {:?}]",
                    item.machine, item.versions
                )),
            }
        }
        Ok(lines)
    }

    async fn create(&self, args: &[&str]) -> Outcome {
        if args.len() < 2 {
            return usage("create <machine> <version> [instance_id] [ctx_json]");
        }
        let version = parse_u32(args[1])?;
        let initial_ctx = args
            .get(3)
            .map(|c| serde_json::from_str::<Value>(c))
            .transpose()
            .map_err(|e| e.to_string())?;
        let r = self
            .call::<CreateInstanceResult>(Command::CreateInstance(CreateInstanceParams {
                instance_id: args.get(2).map(|s| (*s).to_owned()),
                machine: args[0].to_owned(),
                version,
                initial_ctx,
                idempotency_key: None,
            }))
            .await?;
        self.show(r, |r| {
            vec![format!(
                "Created {} (state: {}, offset: {})",
                r.instance_id, r.state, r.wal_offset
            )]
        })
    }

    async fn get(&self, args: &[&str]) -> Outcome {
        let Some(id) = args.first() else {
            return usage("get <instance_id>");
        };
        let r = self
            .call::<GetInstanceResult>(Command::GetInstance(GetInstanceParams {
                instance_id: (*id).to_owned(),
            }))
            .await?;
        self.show(r, |r| {
            vec![
                format!("{} v{}", r.machine, r.version),
                format!("  State: {}", r.state),
                format!("  Context: {}", output::pretty(&r.ctx)),
            ]
        })
    }

    async fn list_instances(&self, args: &[&str]) -> Outcome {
        let r = self
            .call::<ListInstancesResult>(Command::ListInstances(ListInstancesParams {
                machine: args.first().map(|s| (*s).to_owned()),
                state: args.get(1).map(|s| (*s).to_owned()),
                limit: Some(LIST_LIMIT),
                ..ListInstancesParams::default()
            }))
            .await?;
        self.show(r, |r| {
            if r.instances.is_empty() {
                return vec!["No instances".to_owned()];
            }
            let showing = if r.has_more {
                format!(", showing first {LIST_LIMIT}")
            } else {
                String::new()
            };
            let mut lines = vec![format!("Instances ({} total{showing})", r.total)];
            lines.extend(r.instances.iter().map(|i| {
                format!(
                    "  {} ({} v{}) state={}",
                    i.id, i.machine, i.version, i.state
                )
            }));
            lines
        })
    }

    async fn delete(&self, args: &[&str]) -> Outcome {
        let Some(id) = args.first() else {
            return usage("delete <instance_id>");
        };
        let r = self
            .call::<DeleteInstanceResult>(Command::DeleteInstance(DeleteInstanceParams {
                instance_id: (*id).to_owned(),
                idempotency_key: None,
            }))
            .await?;
        self.show(r, |r| vec![format!("Deleted {}", r.instance_id)])
    }

    async fn apply(&self, args: &[&str]) -> Outcome {
        if args.len() < 2 {
            return usage("apply <instance_id> <event> [payload_json]");
        }
        let payload = args
            .get(2)
            .map(|p| serde_json::from_str::<Value>(p))
            .transpose()
            .map_err(|e| e.to_string())?;
        let event = args[1].to_owned();
        let r = self
            .call::<ApplyEventResult>(Command::ApplyEvent(ApplyEventParams {
                instance_id: args[0].to_owned(),
                event: event.clone(),
                payload,
                expected_state: None,
                expected_wal_offset: None,
                event_id: None,
                idempotency_key: None,
            }))
            .await?;
        self.show(r, |r| {
            vec![format!(
                "{event} {} → {} (offset: {})",
                r.from_state, r.to_state, r.wal_offset
            )]
        })
    }

    async fn wal(&self, args: &[&str]) -> Outcome {
        // As the reference: an unparsable `from` is 0 and an unparsable `limit` is none.
        let from = args.first().and_then(|s| s.parse().ok()).unwrap_or(0);
        let limit = args.get(1).and_then(|s| s.parse().ok());
        let r = self
            .call::<WalReadResult>(Command::WalRead(WalReadParams {
                from_offset: from,
                limit,
            }))
            .await?;
        self.show(r, |r| {
            if r.records.is_empty() {
                return vec!["No entries".to_owned()];
            }
            r.records
                .iter()
                .map(|rec| {
                    let kind = rec.entry.get("type").and_then(Value::as_str).unwrap_or("?");
                    format!("[{}] {kind}", rec.sequence)
                })
                .collect()
        })
    }

    async fn wal_stats(&self) -> Outcome {
        let r = self.call::<WalStatsResult>(Command::WalStats).await?;
        self.show(r, |r| commands::wal_stats_lines(&r))
    }
}

fn usage(text: &str) -> Outcome {
    Ok(vec![format!("Usage: {text}")])
}

fn parse_u32(s: &str) -> Result<u32, String> {
    s.parse::<u32>().map_err(|e| e.to_string())
}
