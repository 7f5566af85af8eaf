//! A shell script written for the reference CLI (tests/cli/reference_script.sh) runs
//! unchanged against our rstmdb-cli and server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "cli_support/mod.rs"]
mod cli_support;

use std::process::Command;

use cli_support::*;

#[test]
fn reference_script_runs_unchanged() {
    let s = Server::start();
    // `rstmdb-cli` first on PATH, as an operator would have it installed.
    let bin_dir = tempdir();
    std::os::unix::fs::symlink(cli_bin(), bin_dir.path().join("rstmdb-cli")).unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = workspace_root().join("tests/cli/reference_script.sh");
    let mut cmd = Command::new("bash");
    scrub_env(&mut cmd);
    let out = cmd
        .arg(&script)
        .env("PATH", path)
        .env("RSTMDB_ADDR", s.server_arg())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "script failed ({:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("reference script: all checks passed"),
        "{stdout}"
    );
}
