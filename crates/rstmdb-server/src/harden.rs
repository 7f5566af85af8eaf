//! Process hardening done once at startup, before any secret is read: no core dumps.
//!
//! A core dump of the server would hold the encryption-at-rest key, the TLS private key,
//! bearer tokens in flight and decrypted instances, written wherever `core_pattern` points.
//! So the process makes itself non-dumpable (`PR_SET_DUMPABLE` 0, which also stops other
//! processes of the same user from attaching with ptrace) and sets its core size limit to 0.
//! The systemd unit sets `LimitCORE=0` too, and its seccomp filter may refuse `setrlimit`;
//! a refusal is reported, never fatal.

use rustix::process::{DumpableBehavior, Resource, Rlimit};

/// What [`no_core_dumps`] could not do, one message per failed step.
pub fn no_core_dumps() -> Vec<String> {
    let mut failed = Vec::new();
    if let Err(e) = rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        failed.push(format!("prctl(PR_SET_DUMPABLE, 0): {e}"));
    }
    let zero = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(e) = rustix::process::setrlimit(Resource::Core, zero) {
        failed.push(format!("setrlimit(RLIMIT_CORE, 0): {e}"));
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_is_left_undumpable_with_no_core_limit() {
        assert_eq!(no_core_dumps(), Vec::<String>::new());
        assert_eq!(
            rustix::process::dumpable_behavior().unwrap(),
            DumpableBehavior::NotDumpable
        );
        let lim = rustix::process::getrlimit(Resource::Core);
        assert_eq!((lim.current, lim.maximum), (Some(0), Some(0)));
    }
}
