//! rstmdb-core: what a state machine *means*, with no I/O.
//!
//! - [`definition`]: parse and validate machine definitions, their canonical form and
//!   checksum, and the per-(state, event) transition index.
//! - [`guard`]: the guard language — lexer, parser, compiled AST, evaluator.
//! - [`instance`]: instances and the pure transition function [`instance::apply_event`].
//! - [`error`]: the one error type; each variant maps to exactly one RCP error code.
//!
//! Nothing here touches files, sockets, clocks or randomness: callers pass `now_ms` and ids
//! in. That keeps the engine deterministic, so WAL replay reproduces live behaviour exactly.
//!
//! ```
//! use rstmdb_core::{Machine, Instance, InstanceLimits, EventRequest, apply_event};
//! use serde_json::{json, Map};
//!
//! let machine = Machine::new("order", 1, &json!({
//!     "states": ["pending", "paid"],
//!     "initial": "pending",
//!     "transitions": [{"from": "pending", "event": "PAY", "to": "paid", "guard": "payload.amount > 0"}]
//! })).unwrap();
//! let limits = InstanceLimits::default();
//! let order = Instance::create("o-1", &machine, Map::new(), 0, &limits).unwrap();
//! let payload = json!({"amount": 5}).as_object().cloned().unwrap();
//! let req = EventRequest { event: "PAY", payload: &payload, expected_state: None,
//!                          expected_wal_offset: None, event_id: None };
//! let applied = apply_event(&order, &machine, &req, 1, &limits).unwrap();
//! assert_eq!(applied.to_state, "paid");
//! assert_eq!(applied.instance.ctx["amount"], 5);
//! ```

pub mod definition;
pub mod error;
pub mod guard;
pub mod instance;
pub mod limits;
pub mod names;

pub use definition::{Machine, MachineDefinition, Transition, canonical_string};
pub use error::{ConflictKind, Error, ErrorCode, Result};
pub use guard::{Guard, GuardError};
pub use instance::{
    Applied, Deletion, EventRequest, Instance, InstanceLimits, apply_event, delete_instance,
    object_param,
};
