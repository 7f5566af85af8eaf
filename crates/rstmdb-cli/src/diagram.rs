//! `export-diagram`: a stored definition as a Mermaid or Graphviz state diagram.
//!
//! Names may contain anything but control characters, so neither language sees them as
//! identifiers: Mermaid states get generated ids (`s0`, `s1`, …) with the name as a label,
//! DOT names are quoted and escaped. Guards become part of the edge label, `EVENT [guard]`.

use serde_json::Value;

use crate::args::DiagramFormat;

/// One edge of the diagram.
struct Edge<'a> {
    from: &'a str,
    to: &'a str,
    event: &'a str,
    guard: Option<&'a str>,
}

impl Edge<'_> {
    fn label(&self) -> String {
        match self.guard {
            Some(g) => format!("{} [{g}]", self.event),
            None => self.event.to_owned(),
        }
    }
}

/// Renders the definition (canonical or as submitted: `from` may be a string or a list).
pub fn render(
    machine: &str,
    version: u32,
    definition: &Value,
    format: DiagramFormat,
) -> Result<String, String> {
    let states: Vec<&str> = definition
        .get("states")
        .and_then(Value::as_array)
        .ok_or("definition has no \"states\" list")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let initial = definition.get("initial").and_then(Value::as_str);
    let mut edges = Vec::new();
    for t in definition
        .get("transitions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let (Some(event), Some(to)) = (
            t.get("event").and_then(Value::as_str),
            t.get("to").and_then(Value::as_str),
        ) else {
            return Err(format!("malformed transition {t}"));
        };
        let guard = t.get("guard").and_then(Value::as_str);
        let sources: Vec<&str> = match t.get("from") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => return Err(format!("malformed transition {t}")),
        };
        for from in sources {
            edges.push(Edge {
                from,
                to,
                event,
                guard,
            });
        }
    }
    Ok(match format {
        DiagramFormat::Mermaid => mermaid(machine, version, &states, initial, &edges),
        DiagramFormat::Dot => dot(machine, version, &states, initial, &edges),
    })
}

/// Mermaid's entity codes for the characters that end a statement or a label.
fn mermaid_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '#' => out.push_str("#35;"),
            ';' => out.push_str("#59;"),
            '"' => out.push_str("#quot;"),
            ':' => out.push_str("#58;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            c => out.push(c),
        }
    }
    out
}

fn mermaid(
    machine: &str,
    version: u32,
    states: &[&str],
    initial: Option<&str>,
    edges: &[Edge<'_>],
) -> String {
    let id = |name: &str| {
        states
            .iter()
            .position(|s| *s == name)
            .map_or_else(|| "unknown".to_owned(), |i| format!("s{i}"))
    };
    let mut out = String::new();
    out.push_str(&format!(
        "---\ntitle: {} v{version}\n---\n",
        mermaid_text(machine)
    ));
    out.push_str("stateDiagram-v2\n");
    for (i, s) in states.iter().enumerate() {
        out.push_str(&format!("    state \"{}\" as s{i}\n", mermaid_text(s)));
    }
    if let Some(init) = initial {
        out.push_str(&format!("    [*] --> {}\n", id(init)));
    }
    for e in edges {
        out.push_str(&format!(
            "    {} --> {} : {}\n",
            id(e.from),
            id(e.to),
            mermaid_text(&e.label())
        ));
    }
    out
}

/// A DOT double-quoted string.
fn dot_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn dot(
    machine: &str,
    version: u32,
    states: &[&str],
    initial: Option<&str>,
    edges: &[Edge<'_>],
) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "digraph {} {{\n",
        dot_string(&format!("{machine} v{version}"))
    ));
    out.push_str("    rankdir=LR;\n");
    out.push_str("    node [shape=box, style=rounded];\n");
    for s in states {
        out.push_str(&format!("    {};\n", dot_string(s)));
    }
    if let Some(init) = initial {
        out.push_str("    \"__start__\" [shape=point, label=\"\"];\n");
        out.push_str(&format!("    \"__start__\" -> {};\n", dot_string(init)));
    }
    for e in edges {
        out.push_str(&format!(
            "    {} -> {} [label={}];\n",
            dot_string(e.from),
            dot_string(e.to),
            dot_string(&e.label())
        ));
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::json;

    fn order() -> Value {
        json!({
            "states": ["pending", "paid", "shipped", "cancelled"],
            "initial": "pending",
            "transitions": [
                {"from": ["pending"], "event": "PAY", "to": "paid"},
                {"from": ["paid"], "event": "SHIP", "to": "shipped", "guard": "ctx.amount > 0 && ctx.note == \"ok\""},
                {"from": ["pending", "paid"], "event": "CANCEL", "to": "cancelled"}
            ]
        })
    }

    #[test]
    fn mermaid_has_labels_and_guards() {
        let m = render("order", 1, &order(), DiagramFormat::Mermaid).unwrap();
        assert!(m.contains("stateDiagram-v2\n"), "{m}");
        assert!(m.contains("    [*] --> s0\n"), "{m}");
        assert!(m.contains("    s0 --> s1 : PAY\n"), "{m}");
        assert!(
            m.contains("    s1 --> s2 : SHIP [ctx.amount #gt; 0 && ctx.note == #quot;ok#quot;]\n"),
            "{m}"
        );
        assert!(m.contains("    s0 --> s3 : CANCEL\n") && m.contains("    s1 --> s3 : CANCEL\n"));
    }

    #[test]
    fn dot_quotes_and_escapes() {
        let d = render("order", 1, &order(), DiagramFormat::Dot).unwrap();
        assert!(d.starts_with("digraph \"order v1\" {\n"), "{d}");
        assert!(
            d.contains(
                r#"    "paid" -> "shipped" [label="SHIP [ctx.amount > 0 && ctx.note == \"ok\"]"];"#
            ),
            "{d}"
        );
        assert!(d.contains("\"__start__\" -> \"pending\";"), "{d}");
        assert!(d.ends_with("}\n"));
    }

    #[test]
    fn a_definition_without_states_is_an_error() {
        assert!(render("x", 1, &json!({}), DiagramFormat::Dot).is_err());
    }
}
