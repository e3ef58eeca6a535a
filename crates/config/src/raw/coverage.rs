//! Every key of the schema is documented: in docs/configuration.md (under the heading of
//! its table) and in config/postern.example.toml (set or commented out, under its table
//! header). The key list is read from the raw structs themselves through their serde
//! `Deserialize` impls (serde-reflection), so a key added to the schema fails this test
//! until it is documented.

use std::collections::BTreeSet;
use std::path::Path;

use serde_reflection::{ContainerFormat, Format, Registry, Tracer, TracerConfig};

use super::RawConfig;

/// (table header as written in TOML, key), e.g. (`[backend.health]`, `interval`).
type Key = (String, String);

fn schema_keys() -> Vec<Key> {
    let mut tracer = Tracer::new(TracerConfig::default());
    let (root, _) = tracer.trace_simple_type::<RawConfig>().unwrap();
    let registry = tracer.registry().unwrap();
    let Format::TypeName(root) = root else {
        panic!("RawConfig traced as {root:?}")
    };
    let mut keys = Vec::new();
    walk(&registry, &root, "", "", &mut keys);
    keys
}

/// Collects the keys of container `name`, the table at dotted `path` written `header`.
fn walk(registry: &Registry, name: &str, path: &str, header: &str, keys: &mut Vec<Key>) {
    let Some(ContainerFormat::Struct(fields)) = registry.get(name) else {
        panic!("{name} is not a struct in the schema")
    };
    for field in fields {
        let mut format = &field.value;
        if let Format::Option(inner) = format {
            format = inner;
        }
        let sub = if path.is_empty() {
            field.name.clone()
        } else {
            format!("{path}.{}", field.name)
        };
        match format {
            Format::TypeName(t) => walk(registry, t, &sub, &format!("[{sub}]"), keys),
            Format::Seq(item) if matches!(**item, Format::TypeName(_)) => {
                let Format::TypeName(t) = &**item else {
                    unreachable!()
                };
                walk(registry, t, &sub, &format!("[[{sub}]]"), keys);
            }
            _ => keys.push((header.to_owned(), field.name.clone())),
        }
    }
}

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

#[test]
fn the_schema_walk_finds_nested_and_array_tables() {
    let keys: BTreeSet<Key> = schema_keys().into_iter().collect();
    for (header, key) in [
        ("[server]", "workers"),
        ("[[listener]]", "proxy_from"),
        ("[[backend]]", "weights"),
        ("[backend.health]", "rise"),
        ("[[tls.certificate]]", "cert"),
        ("[tls.acme]", "renew_before"),
        ("[limits]", "exempt"),
    ] {
        assert!(
            keys.contains(&(header.to_owned(), key.to_owned())),
            "{header} {key}"
        );
    }
    assert!(keys.len() > 60, "{keys:?}");
}

#[test]
fn every_key_is_in_the_reference() {
    let doc = repo_file("docs/configuration.md");
    let mut missing = Vec::new();
    for (header, key) in schema_keys() {
        // The table's section: from its heading to the next heading.
        let heading = format!("`{header}`");
        let section = doc
            .split("\n#")
            .find(|s| s.lines().next().is_some_and(|h| h.contains(&heading)));
        let documented =
            section.is_some_and(|s| s.lines().any(|l| l.starts_with(&format!("| `{key}` |"))));
        if !documented {
            missing.push(format!("{header} {key}"));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/configuration.md has no table row (| `key` |) under a heading naming the table for: {missing:#?}"
    );
}

#[test]
fn every_key_is_in_the_example() {
    let example = repo_file("config/postern.example.toml");
    // (header, key) for every `key =` line, set or commented out, under the table header
    // (set or commented out) above it.
    let mut shown = BTreeSet::new();
    let mut table = String::new();
    for line in example.lines() {
        let line = line.trim_start_matches(['#', ' ']);
        if line.starts_with('[') {
            let end = line.rfind(']').map_or(line.len(), |i| i + 1);
            table = line[..end].to_owned();
        } else if let Some((key, _)) = line.split_once(" =") {
            if !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                shown.insert((table.clone(), key.to_owned()));
            }
        }
    }
    let missing: Vec<String> = schema_keys()
        .into_iter()
        .filter(|k| !shown.contains(k))
        .map(|(header, key)| format!("{header} {key}"))
        .collect();
    assert!(
        missing.is_empty(),
        "config/postern.example.toml does not show (as `key =`, set or commented, under its table): {missing:#?}"
    );
}
