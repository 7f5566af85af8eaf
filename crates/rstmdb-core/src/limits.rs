//! Every limit the core enforces, named with its unit. The server exposes the configurable
//! ones as config keys; these are the defaults and the hard ceilings.

/// Longest machine, state or event name.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest instance id (decisions.md).
pub const MAX_INSTANCE_ID_BYTES: usize = 256;
/// Longest guard expression (decisions.md).
pub const MAX_GUARD_BYTES: usize = 4 * 1024;
/// Deepest nesting of `(` and `!` in a guard (decisions.md).
pub const MAX_GUARD_DEPTH: usize = 64;
/// Most states in one machine definition.
pub const MAX_STATES: usize = 10_000;
/// Most transitions in one machine definition.
pub const MAX_TRANSITIONS: usize = 10_000;
/// Default ceiling on an instance context, serialised, after a payload merge.
pub const DEFAULT_MAX_CTX_BYTES: usize = 1024 * 1024;
