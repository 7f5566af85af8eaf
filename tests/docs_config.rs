//! docs/configuration.md cannot drift from the code: every key the server accepts (read from
//! the `Deserialize` structs in crates/rstmdb-server/src/config.rs and config/cluster.rs,
//! starting at `Config`) has
//! a row in the key table, every row is a key the server accepts, the Default column loads to
//! exactly `Config::default()`, and every environment variable the server reads is named in
//! the row of the key it overrides (or in the list below the table).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rstmdb_server::config::Config;
use serde_yaml::{Mapping, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A field of a config struct: its YAML name, its type (with `Option<…>` removed) and
/// whether `#[serde(flatten)]` merges it into the parent.
#[derive(Debug)]
struct Field {
    name: String,
    ty: String,
    flatten: bool,
}

/// `struct name → fields` for every struct deriving `Deserialize` in `source`.
fn deserialize_structs(source: &str) -> BTreeMap<String, Vec<Field>> {
    let mut structs = BTreeMap::new();
    let lines: Vec<&str> = source.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        let Some(rest) = line.strip_prefix("pub struct ") else {
            i += 1;
            continue;
        };
        // The attributes just above the struct.
        let derives = lines[..i]
            .iter()
            .rev()
            .take_while(|l| {
                let l = l.trim();
                l.starts_with("#[") || l.starts_with("///")
            })
            .any(|l| l.contains("derive(") && l.contains("Deserialize"));
        let name = rest
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .next()
            .unwrap()
            .to_owned();
        let mut fields = Vec::new();
        let mut attrs = String::new();
        i += 1;
        while i < lines.len() && lines[i].trim() != "}" {
            let l = lines[i].trim();
            if l.starts_with("#[") {
                attrs.push_str(l);
            } else if let Some(f) = l.strip_prefix("pub ") {
                let (fname, ty) = f.split_once(':').unwrap();
                let mut ty = ty.trim().trim_end_matches(',').trim().to_owned();
                if let Some(inner) = ty.strip_prefix("Option<") {
                    ty = inner.trim_end_matches('>').to_owned();
                }
                let renamed = attrs
                    .split("rename = \"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .map(str::to_owned);
                fields.push(Field {
                    name: renamed.unwrap_or_else(|| fname.trim().to_owned()),
                    ty,
                    flatten: attrs.contains("flatten"),
                });
                attrs.clear();
            } else if !l.starts_with("///") && !l.is_empty() {
                attrs.clear();
            }
            i += 1;
        }
        if derives {
            structs.insert(name, fields);
        }
        i += 1;
    }
    structs
}

/// Dotted keys under `ty`: a field whose type is another config struct is a section.
fn keys(structs: &BTreeMap<String, Vec<Field>>, ty: &str, prefix: &str, out: &mut Vec<String>) {
    for f in &structs[ty] {
        let path = if f.flatten {
            prefix.trim_end_matches('.').to_owned()
        } else if prefix.is_empty() {
            f.name.clone()
        } else {
            format!("{prefix}{}", f.name)
        };
        if structs.contains_key(&f.ty) {
            let p = if path.is_empty() {
                String::new()
            } else {
                format!("{path}.")
            };
            keys(structs, &f.ty, &p, out);
        } else {
            out.push(path);
        }
    }
}

/// The config source files, each with the prefix its `self.` keys have: `config.rs` and the
/// `cluster:` section's module.
const CONFIG_SOURCES: [(&str, &str); 2] = [
    ("crates/rstmdb-server/src/config.rs", ""),
    ("crates/rstmdb-server/src/config/cluster.rs", "cluster."),
];

/// Every config key the server accepts, from the config source files.
fn code_keys() -> Vec<String> {
    let mut structs = BTreeMap::new();
    for (file, _) in CONFIG_SOURCES {
        structs.extend(deserialize_structs(&read(file)));
    }
    let mut out = Vec::new();
    keys(&structs, "Config", "", &mut out);
    out
}

/// Rows of the key table in docs/configuration.md: key → the row's cells.
fn doc_rows() -> BTreeMap<String, Vec<String>> {
    let doc = read("docs/configuration.md");
    let mut rows = BTreeMap::new();
    for line in doc.lines() {
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let cells: Vec<String> = format!("`{rest}")
            .trim_end_matches('|')
            .split(" | ")
            .map(|c| c.trim().to_owned())
            .collect();
        let key = cells[0].trim_matches('`').to_owned();
        assert!(
            rows.insert(key.clone(), cells).is_none(),
            "configuration.md: `{key}` has two rows"
        );
    }
    rows
}

/// Environment variables the server reads, with the key each overrides (from the
/// assignment that follows `env("VAR")` in the config sources, `self.` there standing for the
/// file's prefix; none for `RSTMDB_CONFIG`).
fn code_env_vars() -> BTreeMap<String, Option<String>> {
    let mut vars = BTreeMap::new();
    for (file, prefix) in CONFIG_SOURCES {
        let src = read(file);
        for (at, _) in src.match_indices("env(\"RSTMDB_") {
            let rest = &src[at + 5..];
            let var = rest[..rest.find('"').unwrap()].to_owned();
            let after = &rest[var.len()..];
            let key = after.find("self.").map(|s| {
                let field = after[s + 5..]
                    .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
                    .next()
                    .unwrap();
                format!("{prefix}{field}")
            });
            vars.insert(var, key);
        }
    }
    // `self.auth.token_hashes.push(…)`: the key is the longest prefix that is a key.
    let keys = code_keys();
    for key in vars.values_mut().flatten() {
        while !keys.contains(key) {
            match key.rsplit_once('.') {
                Some((head, _)) => *key = head.to_owned(),
                None => break,
            }
        }
    }
    let main = read("crates/rstmdb-server/src/main.rs");
    for (at, _) in main.match_indices("env = \"RSTMDB_") {
        let rest = &main[at + 7..];
        vars.insert(rest[..rest.find('"').unwrap()].to_owned(), None);
    }
    vars
}

#[test]
fn the_code_parser_finds_the_known_keys() {
    // Guards the parser itself: if it silently found nothing, the other checks would pass.
    let keys = code_keys();
    for k in [
        "network.bind_addr",
        "storage.fsync_policy",
        "auth.cert_identities",
        "audit.path",
        "logging.level",
    ] {
        assert!(keys.iter().any(|x| x == k), "{k} not found in {keys:?}");
    }
    assert!(keys.len() >= 35, "{} keys: {keys:?}", keys.len());
    let vars = code_env_vars();
    assert_eq!(
        vars.get("RSTMDB_BIND"),
        Some(&Some("network.bind_addr".into()))
    );
    assert!(vars.contains_key("RSTMDB_CONFIG"));
    assert!(vars.len() >= 25, "{vars:?}");
}

#[test]
fn parser_follows_sections_options_renames_and_flatten() {
    let src = r#"
#[derive(Debug, Deserialize)]
pub struct Config {
    pub storage: StorageSection,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// Where.
    pub data_dir: PathBuf,
    pub encryption: Option<Encryption>,
    #[serde(rename = "wal-dir")]
    pub wal: Option<PathBuf>,
    #[serde(flatten)]
    pub extra: Extra,
}
#[derive(Deserialize)]
pub struct Encryption {
    pub key_file: PathBuf,
}
#[derive(Deserialize)]
pub struct Extra {
    pub knob: u32,
}
pub struct NotConfig {
    pub x: u32,
}
"#;
    let structs = deserialize_structs(src);
    assert!(!structs.contains_key("NotConfig"));
    let mut out = Vec::new();
    keys(&structs, "Config", "", &mut out);
    assert_eq!(
        out,
        [
            "storage.data_dir",
            "storage.encryption.key_file",
            "storage.wal-dir",
            "storage.knob"
        ]
    );
}

#[test]
fn every_key_the_server_accepts_is_documented_and_nothing_else() {
    let code: BTreeSet<String> = code_keys().into_iter().collect();
    let doc: BTreeSet<String> = doc_rows().into_keys().collect();
    let undocumented: Vec<_> = code.difference(&doc).collect();
    let unknown: Vec<_> = doc.difference(&code).collect();
    assert!(
        undocumented.is_empty(),
        "keys accepted by config.rs without a row in docs/configuration.md: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "rows in docs/configuration.md for keys config.rs does not accept: {unknown:?}"
    );
}

#[test]
fn documented_defaults_are_the_defaults() {
    // The Default column, read as YAML (`none` and `stdout` mean "not set"), must load to
    // exactly the built-in defaults.
    let mut root = Mapping::new();
    // `cluster:` is absent by default: its rows are checked by
    // `documented_cluster_defaults_are_the_defaults`.
    for (key, cells) in doc_rows()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("cluster."))
    {
        let raw = cells[1].trim_matches('`');
        let value = match raw {
            "none" | "stdout" => Value::Null,
            _ => serde_yaml::from_str(raw)
                .unwrap_or_else(|e| panic!("default of {key} ({raw:?}) is not YAML: {e}")),
        };
        let (section, field) = key.split_once('.').unwrap();
        let entry = root
            .entry(Value::String(section.into()))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        let Value::Mapping(m) = entry else {
            unreachable!()
        };
        let mut parts: Vec<&str> = field.split('.').collect();
        let last = parts.pop().unwrap();
        let mut m = m;
        for p in parts {
            let e = m
                .entry(Value::String(p.into()))
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            let Value::Mapping(inner) = e else {
                unreachable!()
            };
            m = inner;
        }
        m.insert(Value::String(last.into()), value);
    }
    let yaml = serde_yaml::to_string(&Value::Mapping(root)).unwrap();
    let loaded = Config::from_yaml(&yaml)
        .unwrap_or_else(|e| panic!("the documented defaults do not load: {e}\n{yaml}"));
    assert_eq!(
        loaded,
        Config::default(),
        "docs/configuration.md's defaults differ from Config::default()\n{yaml}"
    );
}

#[test]
fn documented_cluster_defaults_are_the_defaults() {
    // The `cluster.*` rows: `required` keys get a value, every other Default cell is read as
    // YAML (`none` = not set); the section must equal one with only the required keys.
    let required = [
        ("cluster_id", "c1"),
        ("node_id", "1"),
        ("raft_listen", "127.0.0.1:7411"),
    ];
    let mut section = Mapping::new();
    for (key, cells) in doc_rows() {
        let Some(field) = key.strip_prefix("cluster.") else {
            continue;
        };
        let raw = cells[1].trim_matches('`');
        let value = match (raw, required.iter().find(|(k, _)| *k == field)) {
            ("required", Some((_, v))) => serde_yaml::from_str(v).unwrap(),
            ("required", None) => panic!("cluster.{field} is documented as required"),
            (_, Some(_)) => panic!("cluster.{field} is required: its Default cell must say so"),
            ("none", None) => Value::Null,
            (_, None) => serde_yaml::from_str(raw)
                .unwrap_or_else(|e| panic!("default of {key} ({raw:?}) is not YAML: {e}")),
        };
        section.insert(Value::String(field.into()), value);
    }
    let mut root = Mapping::new();
    root.insert("cluster".into(), Value::Mapping(section));
    let yaml = serde_yaml::to_string(&Value::Mapping(root)).unwrap();
    let documented = Config::from_yaml(&yaml)
        .unwrap_or_else(|e| panic!("the documented cluster defaults do not load: {e}\n{yaml}"));
    let minimal = Config::from_yaml(
        "cluster: {cluster_id: c1, node_id: 1, raft_listen: \"127.0.0.1:7411\"}\n",
    )
    .unwrap();
    assert!(documented.cluster.is_some());
    assert_eq!(
        documented.cluster, minimal.cluster,
        "docs/configuration.md's cluster defaults differ from the code's\n{yaml}"
    );
}

#[test]
fn every_environment_variable_is_documented_with_its_key() {
    let rows = doc_rows();
    let doc = read("docs/configuration.md");
    for (var, key) in code_env_vars() {
        match key {
            Some(key) => {
                let row = rows
                    .get(&key)
                    .unwrap_or_else(|| panic!("{var} overrides {key}, which has no row"));
                assert!(
                    row.iter().any(|c| c.contains(&format!("`{var}`"))),
                    "the row of {key} in docs/configuration.md must name `{var}`: {row:?}"
                );
            }
            None => assert!(
                doc.contains(&format!("`{var}`")),
                "docs/configuration.md must name `{var}`"
            ),
        }
    }
    // And the page names no server variable the code does not read.
    let vars = code_env_vars();
    for (at, _) in doc.match_indices("`RSTMDB_") {
        let rest = &doc[at + 1..];
        let name = &rest[..rest.find('`').unwrap()];
        assert!(
            vars.contains_key(name),
            "docs/configuration.md names {name}, which the server does not read"
        );
    }
}
