//! JSON arguments: literal text, or `@PATH` to read a file.

use std::path::Path;

use serde_json::Value;

use crate::CliError;

/// Parses a JSON argument; `@PATH` reads the file first.
pub fn json_arg(arg: &str) -> Result<Value, CliError> {
    match arg.strip_prefix('@') {
        Some(path) => json_file(Path::new(path)),
        None => serde_json::from_str(arg).map_err(|e| CliError::Input(e.to_string())),
    }
}

/// Reads and parses a JSON file.
pub fn json_file(path: &Path) -> Result<Value, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Input(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| CliError::Input(format!("invalid JSON in {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn literal_and_file_arguments() {
        assert_eq!(json_arg(r#"{"a":1}"#).unwrap()["a"], 1);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        std::fs::write(&p, r#"{"b":2}"#).unwrap();
        assert_eq!(json_arg(&format!("@{}", p.display())).unwrap()["b"], 2);
        assert!(matches!(json_arg("{nope"), Err(CliError::Input(_))));
        assert!(matches!(
            json_arg("@/nonexistent/file.json"),
            Err(CliError::Input(m)) if m.contains("cannot read")
        ));
    }
}
