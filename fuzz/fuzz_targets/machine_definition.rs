//! Machine definition validation (`Machine::new`, as PUT_MACHINE runs it) and the transition
//! function over whatever it accepts.
//!
//! Properties: never panics; every rejection maps to an RCP error code and details; an
//! accepted definition's canonical form is itself accepted with the same checksum and the
//! same canonical form (normalising twice changes nothing); and walking the machine — every
//! event from every reached state, with a payload that changes the context — only ever lands
//! in one of its states.
//!
//! Input: a JSON definition as the `definition` param of PUT_MACHINE.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rstmdb_core::{EventRequest, Instance, InstanceLimits, Machine, apply_event};
use serde_json::{Map, Value, json};

/// Upper bound on applies per input, so one input cannot run for long.
const MAX_STEPS: usize = 256;

fuzz_target!(|data: &[u8]| {
    let Ok(definition) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let machine = match Machine::new("fuzz", 1, &definition) {
        Ok(m) => m,
        Err(error) => {
            let _ = error.code();
            let _ = error.details();
            let _ = error.to_string();
            return;
        }
    };

    let canonical = machine.canonical_json();
    let again = Machine::new("fuzz", 1, &canonical)
        .unwrap_or_else(|e| panic!("canonical form rejected: {e}\n{canonical}"));
    assert_eq!(
        again.checksum(),
        machine.checksum(),
        "checksum of the canonical form"
    );
    assert_eq!(
        again.canonical_json(),
        canonical,
        "canonicalising is not idempotent"
    );

    let limits = InstanceLimits::default();
    let mut ctx = Map::new();
    ctx.insert("n".into(), json!(1));
    ctx.insert("s".into(), json!("x"));
    let Ok(mut instance) = Instance::create("i-1", &machine, ctx, 0, &limits) else {
        return;
    };
    let events: Vec<String> = machine
        .definition()
        .transitions
        .iter()
        .map(|t| t.event.clone())
        .collect();
    let mut steps = 0usize;
    for round in 0..4i64 {
        for event in &events {
            if steps >= MAX_STEPS {
                return;
            }
            steps += 1;
            let mut payload = Map::new();
            payload.insert("n".into(), json!(round));
            let request = EventRequest {
                event,
                payload: &payload,
                expected_state: None,
                expected_wal_offset: None,
                event_id: None,
            };
            match apply_event(&instance, &machine, &request, round, &limits) {
                Ok(applied) => {
                    assert!(
                        machine.has_state(&applied.to_state),
                        "landed outside the machine"
                    );
                    assert_eq!(applied.from_state, instance.state);
                    assert_eq!(applied.instance.state, applied.to_state);
                    instance = applied.instance;
                }
                Err(error) => {
                    let _ = error.code();
                }
            }
        }
    }
});
