//! `rstmdb-cli`: one-shot commands, watches and an interactive shell for rstmdb.
//!
//! Exit codes (operations.md §6.6): 0 success; 1 any failure after parsing (connection,
//! handshake, server error, bad JSON, unreadable file); 2 usage errors (from clap).

mod args;
mod backup;
mod certs;
mod cluster;
mod commands;
mod diagram;
mod input;
mod output;
mod repl;

use std::process::ExitCode;

use clap::Parser;
use rstmdb_client::{ClientConfig, TlsOptions, WireMode};

use crate::args::{Cli, Cmd, WireModeArg};

/// What went wrong, and how to report it on stderr.
#[derive(Debug)]
pub enum CliError {
    /// Connecting, the TLS handshake, HELLO or AUTH failed.
    Connect(rstmdb_client::Error),
    /// A request failed (server error with its RCP code, timeout, lost connection).
    Client(rstmdb_client::Error),
    /// Bad input: unreadable file, invalid JSON, inconsistent flags.
    Input(String),
}

impl From<rstmdb_client::Error> for CliError {
    fn from(e: rstmdb_client::Error) -> Self {
        CliError::Client(e)
    }
}

impl CliError {
    fn report(&self) {
        match self {
            CliError::Connect(e) => {
                eprintln!("Connection failed: {e}");
                eprintln!("Error: {e}");
            }
            CliError::Client(e) => eprintln!("Error: {e}"),
            CliError::Input(m) => eprintln!("Error: {m}"),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };

    let result = match cli.command {
        None | Some(Cmd::Repl) => repl::run(&cli, &runtime),
        Some(ref cmd) => runtime.block_on(commands::run(&cli, cmd)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            e.report();
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr at `warn` unless `RUST_LOG` says otherwise.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .try_init();
}

/// Connects with the global options; a failure here is reported as a connection failure.
/// `reconnect`: reconnect with backoff when the connection is lost (watch `--reconnect`).
/// (Here at the root, beside `client_config`, so `commands` and `backup` share it
/// without importing each other.)
pub async fn connect(cli: &Cli, reconnect: bool) -> Result<rstmdb_client::Client, CliError> {
    let mut config = client_config(cli)?;
    if reconnect {
        config = config.with_reconnect(rstmdb_client::ReconnectPolicy::default());
    }
    rstmdb_client::Client::connect(config)
        .await
        .map_err(CliError::Connect)
}

/// The client configuration the global options describe.
pub fn client_config(cli: &Cli) -> Result<ClientConfig, CliError> {
    let mut config = ClientConfig::new(cli.server.clone())
        .with_client_name("rstmdb-cli")
        .with_wire_mode(match cli.wire_mode {
            WireModeArg::BinaryJson => WireMode::BinaryJson,
            WireModeArg::Jsonl => WireMode::Jsonl,
        });
    if let Some(token) = &cli.token {
        config = config.with_token(token.clone());
    }
    // As the reference: --client-key alone does not turn TLS on.
    let tls_on = cli.tls || cli.ca_cert.is_some() || cli.client_cert.is_some() || cli.insecure;
    if tls_on {
        if cli.client_cert.is_some() != cli.client_key.is_some() {
            return Err(CliError::Input(
                "--client-cert and --client-key must be used together".into(),
            ));
        }
        config = config.with_tls(TlsOptions {
            ca_cert: cli.ca_cert.clone(),
            client_cert: cli.client_cert.clone(),
            client_key: cli.client_key.clone(),
            insecure: cli.insecure,
            server_name: cli.server_name.clone(),
        });
    }
    Ok(config)
}
