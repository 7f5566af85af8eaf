//! Rules for names and ids (decisions.md): non-empty, bounded, no control characters.
//! Control characters are refused because names end up in logs, CLI output and diagrams,
//! where they could forge lines or terminal escapes.

use crate::error::{Error, Result};
use crate::limits::{MAX_INSTANCE_ID_BYTES, MAX_NAME_BYTES};

/// A machine, state or event name: 1–[`MAX_NAME_BYTES`] bytes, no control characters.
pub fn validate_name(path: &str, name: &str) -> Result<()> {
    validate(path, name, MAX_NAME_BYTES)
}

/// An instance id: 1–[`MAX_INSTANCE_ID_BYTES`] bytes, no control characters.
pub fn validate_instance_id(id: &str) -> Result<()> {
    validate("instance_id", id, MAX_INSTANCE_ID_BYTES)
}

fn validate(path: &str, name: &str, max_bytes: usize) -> Result<()> {
    if name.is_empty() {
        return Err(Error::bad_request(path, "must not be empty"));
    }
    if name.len() > max_bytes {
        return Err(Error::bad_request(
            path,
            format!(
                "is {} bytes long, over the limit of {max_bytes}",
                name.len()
            ),
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(Error::bad_request(
            path,
            format!(
                "must not contain control characters (found U+{:04X})",
                c as u32
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_names_are_rejected() {
        let e = validate_name("machine", "").unwrap_err();
        assert_eq!(e.details()["path"], "machine");
    }

    #[test]
    fn names_up_to_128_bytes_are_accepted() {
        assert!(validate_name("states[0]", &"a".repeat(128)).is_ok());
        assert!(validate_name("states[0]", &"a".repeat(129)).is_err());
        // Multi-byte characters count in bytes.
        assert!(validate_name("states[0]", &"é".repeat(65)).is_err());
    }

    #[test]
    fn control_characters_are_rejected() {
        for bad in ["a\nb", "a\u{0}", "\u{1b}[31m", "x\u{7f}"] {
            assert!(validate_name("event", bad).is_err(), "{bad:?}");
        }
        assert!(validate_name("event", "payé ✓").is_ok());
    }

    #[test]
    fn instance_ids_allow_256_bytes() {
        assert!(validate_instance_id(&"i".repeat(256)).is_ok());
        let e = validate_instance_id(&"i".repeat(257)).unwrap_err();
        assert_eq!(e.details()["path"], "instance_id");
        assert!(validate_instance_id("").is_err());
    }
}
