//! Machine definitions: decoding from JSON, validation, the canonical form and its checksum.
//!
//! A [`Machine`] is only ever built by [`Machine::new`], which validates everything, so any
//! `Machine` in the system is known to be well-formed: every state referenced exists, every
//! guard is compiled, and every `(state, event)` pair has a list of candidate transitions in
//! definition order.
//!
//! Errors are `BAD_REQUEST` with the JSON path of the bad field (`transitions[2].to`),
//! relative to the definition object.

use crate::error::{Error, Result};
use crate::guard::Guard;
use crate::limits::{MAX_STATES, MAX_TRANSITIONS};
use crate::names::validate_name;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};

/// One transition as defined. `from` is always a list (a single string is normalised).
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: Vec<String>,
    pub event: String,
    pub to: String,
    pub guard: Option<Guard>,
}

/// A validated definition, without its name and version.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineDefinition {
    pub states: Vec<String>,
    pub initial: String,
    pub transitions: Vec<Transition>,
    /// Opaque to the engine; `null` is normalised to absent.
    pub meta: Option<Value>,
}

/// A named, versioned, validated machine with its transition index and checksum.
#[derive(Debug, Clone)]
pub struct Machine {
    name: String,
    version: u32,
    definition: MachineDefinition,
    checksum: String,
    /// state → event → indexes into `definition.transitions`, in definition order.
    index: HashMap<String, HashMap<String, Vec<usize>>>,
}

impl PartialEq for Machine {
    fn eq(&self, other: &Self) -> bool {
        // The checksum covers the whole canonical definition.
        self.name == other.name && self.version == other.version && self.checksum == other.checksum
    }
}

impl Machine {
    /// Validates a definition as received in PUT_MACHINE.
    pub fn new(name: &str, version: u32, definition: &Value) -> Result<Machine> {
        validate_name("machine", name)?;
        if version == 0 {
            return Err(Error::bad_request("version", "version must be at least 1"));
        }
        let definition = MachineDefinition::from_json(definition)?;
        let checksum = checksum_of(&definition);
        let mut index: HashMap<String, HashMap<String, Vec<usize>>> = HashMap::new();
        for (i, t) in definition.transitions.iter().enumerate() {
            for from in &t.from {
                index
                    .entry(from.clone())
                    .or_default()
                    .entry(t.event.clone())
                    .or_default()
                    .push(i);
            }
        }
        Ok(Machine {
            name: name.to_owned(),
            version,
            definition,
            checksum,
            index,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn definition(&self) -> &MachineDefinition {
        &self.definition
    }

    /// Lowercase hex SHA-256 of [`Machine::canonical_json`].
    pub fn checksum(&self) -> &str {
        &self.checksum
    }

    /// The normalised definition (GET_MACHINE's `definition`).
    pub fn canonical_json(&self) -> Value {
        self.definition.to_json()
    }

    /// Whether `state` is one of the definition's states.
    pub fn has_state(&self, state: &str) -> bool {
        self.definition.states.iter().any(|s| s == state)
    }

    /// The transitions that may fire for `event` in `state`, in definition order.
    pub fn candidates(&self, state: &str, event: &str) -> impl Iterator<Item = &Transition> {
        self.index
            .get(state)
            .and_then(|by_event| by_event.get(event))
            .into_iter()
            .flatten()
            .filter_map(|&i| self.definition.transitions.get(i))
    }

    /// Picks the transition that fires: the first candidate whose guard passes on the
    /// context *before* the payload is merged.
    pub fn select_transition(
        &self,
        state: &str,
        event: &str,
        ctx: &Map<String, Value>,
        payload: &Map<String, Value>,
    ) -> Result<&Transition> {
        let mut first_rejected: Option<&Transition> = None;
        for t in self.candidates(state, event) {
            match &t.guard {
                Some(g) if !g.evaluate(ctx, payload) => {
                    first_rejected.get_or_insert(t);
                }
                _ => return Ok(t),
            }
        }
        Err(match first_rejected {
            Some(t) => Error::GuardFailed {
                from: state.to_owned(),
                to: t.to.clone(),
                event: event.to_owned(),
            },
            None => Error::InvalidTransition {
                state: state.to_owned(),
                event: event.to_owned(),
            },
        })
    }
}

impl MachineDefinition {
    /// Decodes and validates a definition object. Unknown keys are dropped.
    pub fn from_json(value: &Value) -> Result<MachineDefinition> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::bad_request("definition", "must be a JSON object"))?;

        let states = string_array(obj, "states")?;
        let initial = required_str(obj, "initial", "initial")?;
        let raw_transitions = match obj.get("transitions") {
            Some(Value::Array(a)) => a,
            Some(_) => return Err(Error::bad_request("transitions", "must be an array")),
            None => {
                return Err(Error::bad_request(
                    "transitions",
                    "missing field `transitions`",
                ));
            }
        };
        let meta = match obj.get("meta") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.clone()),
        };

        if states.is_empty() {
            return Err(Error::bad_request("states", "must list at least one state"));
        }
        if states.len() > MAX_STATES {
            return Err(Error::bad_request(
                "states",
                format!("{} states is over the limit of {MAX_STATES}", states.len()),
            ));
        }
        let mut seen = HashSet::with_capacity(states.len());
        for (i, s) in states.iter().enumerate() {
            let path = format!("states[{i}]");
            validate_name(&path, s)?;
            if !seen.insert(s.as_str()) {
                return Err(Error::bad_request(path, format!("duplicate state '{s}'")));
            }
        }
        if !seen.contains(initial.as_str()) {
            return Err(Error::bad_request(
                "initial",
                format!("initial state '{initial}' not in states list"),
            ));
        }
        if raw_transitions.len() > MAX_TRANSITIONS {
            return Err(Error::bad_request(
                "transitions",
                format!(
                    "{} transitions is over the limit of {MAX_TRANSITIONS}",
                    raw_transitions.len()
                ),
            ));
        }

        // (from, event) → index of an earlier unguarded transition, which always fires and
        // so makes any later alternative unreachable.
        let mut unguarded: HashMap<(&str, &str), usize> = HashMap::new();
        let mut transitions = Vec::with_capacity(raw_transitions.len());
        for (i, raw) in raw_transitions.iter().enumerate() {
            transitions.push(decode_transition(i, raw, &seen)?);
        }
        for (i, t) in transitions.iter().enumerate() {
            for (j, from) in t.from.iter().enumerate() {
                if let Some(&k) = unguarded.get(&(from.as_str(), t.event.as_str())) {
                    return Err(Error::bad_request(
                        format!("transitions[{i}]"),
                        format!(
                            "unreachable: transitions[{k}] already fires unconditionally from '{from}' on event '{}'; \
                             an unguarded alternative must come last",
                            t.event
                        ),
                    ));
                }
                if t.from[..j].contains(from) {
                    return Err(Error::bad_request(
                        format!("transitions[{i}].from[{j}]"),
                        format!("duplicate source state '{from}'"),
                    ));
                }
            }
            if t.guard.is_none() {
                for from in &t.from {
                    unguarded.insert((from.as_str(), t.event.as_str()), i);
                }
            }
        }

        Ok(MachineDefinition {
            states,
            initial,
            transitions,
            meta,
        })
    }

    /// The canonical form: `from` always an array, `guard`/`meta` only when present,
    /// unknown keys gone. Key order is irrelevant here; [`canonical_string`] sorts them.
    pub fn to_json(&self) -> Value {
        let transitions: Vec<Value> = self
            .transitions
            .iter()
            .map(|t| {
                let mut m = Map::new();
                m.insert("from".into(), Value::from(t.from.clone()));
                m.insert("event".into(), Value::from(t.event.as_str()));
                m.insert("to".into(), Value::from(t.to.as_str()));
                if let Some(g) = &t.guard {
                    m.insert("guard".into(), Value::from(g.source()));
                }
                Value::Object(m)
            })
            .collect();
        let mut m = Map::new();
        m.insert("states".into(), Value::from(self.states.clone()));
        m.insert("initial".into(), Value::from(self.initial.as_str()));
        m.insert("transitions".into(), Value::Array(transitions));
        if let Some(meta) = &self.meta {
            m.insert("meta".into(), meta.clone());
        }
        Value::Object(m)
    }
}

fn decode_transition(i: usize, raw: &Value, states: &HashSet<&str>) -> Result<Transition> {
    let base = format!("transitions[{i}]");
    let obj = raw
        .as_object()
        .ok_or_else(|| Error::bad_request(base.clone(), "must be a JSON object"))?;
    let from = match obj.get("from") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            let mut v = Vec::with_capacity(items.len());
            for (j, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => v.push(s.clone()),
                    _ => {
                        return Err(Error::bad_request(
                            format!("{base}.from[{j}]"),
                            "must be a string",
                        ));
                    }
                }
            }
            v
        }
        Some(_) => {
            return Err(Error::bad_request(
                format!("{base}.from"),
                "must be a string or an array of strings",
            ));
        }
        None => {
            return Err(Error::bad_request(
                format!("{base}.from"),
                "missing field `from`",
            ));
        }
    };
    let event = required_str(obj, "event", &format!("{base}.event"))?;
    let to = required_str(obj, "to", &format!("{base}.to"))?;
    let guard_src = match obj.get("guard") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            return Err(Error::bad_request(
                format!("{base}.guard"),
                "must be a string",
            ));
        }
    };

    validate_name(&format!("{base}.event"), &event)?;
    if !states.contains(to.as_str()) {
        return Err(Error::bad_request(
            format!("{base}.to"),
            format!("transition target '{to}' not in states list"),
        ));
    }
    let guard = match guard_src {
        None => None,
        Some(src) => Some(Guard::compile(src).map_err(|e| Error::BadRequest {
            message: format!("{base}.guard: {e}"),
            path: Some(format!("{base}.guard")),
            column: Some(e.column),
        })?),
    };
    if from.is_empty() {
        return Err(Error::bad_request(
            format!("{base}.from"),
            "must name at least one source state",
        ));
    }
    for (j, f) in from.iter().enumerate() {
        if !states.contains(f.as_str()) {
            let path = match obj.get("from") {
                Some(Value::String(_)) => format!("{base}.from"),
                _ => format!("{base}.from[{j}]"),
            };
            return Err(Error::bad_request(
                path,
                format!("transition source '{f}' not in states list"),
            ));
        }
    }
    Ok(Transition {
        from,
        event,
        to,
        guard,
    })
}

fn required_str(obj: &Map<String, Value>, key: &str, path: &str) -> Result<String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(Error::bad_request(path, "must be a string")),
        None => Err(Error::bad_request(path, format!("missing field `{key}`"))),
    }
}

fn string_array(obj: &Map<String, Value>, key: &str) -> Result<Vec<String>> {
    let items = match obj.get(key) {
        Some(Value::Array(a)) => a,
        Some(_) => return Err(Error::bad_request(key, "must be an array of strings")),
        None => return Err(Error::bad_request(key, format!("missing field `{key}`"))),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.clone()),
            _ => Err(Error::bad_request(
                format!("{key}[{i}]"),
                "must be a string",
            )),
        })
        .collect()
}

/// Lowercase hex SHA-256 of the canonical serialisation.
fn checksum_of(def: &MachineDefinition) -> String {
    let digest = Sha256::digest(canonical_string(&def.to_json()).as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compact JSON with object keys sorted by byte order at every level, independent of how
/// `serde_json::Map` orders keys (a dependency enabling `preserve_order` must not change
/// checksums).
pub fn canonical_string(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (n, k) in keys.into_iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(k.as_str()).to_string());
                out.push(':');
                if let Some(child) = m.get(k) {
                    write_canonical(child, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
#[path = "definition_tests.rs"]
mod tests;
