//! TOML text → raw schema, turning serde's errors into [`ConfigError`]s with key paths
//! and lines.

use std::borrow::BorrowMut;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::RawConfig;
use crate::error::ConfigErrorKind as Kind;
use crate::lines::{split_indexes, Lines};
use crate::ConfigError;

/// Deserializes the raw schema. serde stops at the first unknown key, so each one found
/// is recorded, removed from the document and deserialization retried: every misspelt
/// key is reported in one pass, along with the semantic errors of the rest. Any other
/// schema error (wrong type, missing key) ends parsing.
pub(crate) fn deserialize(
    text: &str,
    file: &str,
    lines: &Lines<'_>,
) -> Result<(RawConfig, Vec<ConfigError>), Vec<ConfigError>> {
    let mut doc = DeTable::parse(text).map_err(|e| {
        let line = e.span().map(|s| lines.line_of_offset(s.start));
        let kind = Kind::Syntax { source: e };
        vec![ConfigError {
            file: file.to_owned(),
            key: String::new(),
            line,
            kind,
        }]
    })?;
    let mut unknown = Vec::new();
    loop {
        let de = toml::Deserializer::from(doc.clone());
        let error = match serde_path_to_error::deserialize::<_, RawConfig>(de) {
            Ok(raw) => return Ok((raw, unknown)),
            Err(e) => schema_error(file, lines, e),
        };
        let removed = matches!(error.kind, Kind::UnknownKey { .. })
            && unknown.len() < MAX_UNKNOWN_KEYS
            && remove_key(doc.get_mut(), &error.key);
        unknown.push(error);
        if !removed {
            return Err(unknown);
        }
    }
}

/// Removes the key at dotted `path` (`listener[0].foo`); false when it is not there.
fn remove_key(root: &mut DeTable<'_>, path: &str) -> bool {
    let mut segments: Vec<&str> = path.split('.').collect();
    let Some(last) = segments.pop() else {
        return false;
    };
    let mut table = root;
    for segment in segments {
        let (name, indexes) = split_indexes(segment);
        let Some(mut value) = table.get_mut(name) else {
            return false;
        };
        for index in indexes {
            let DeValue::Array(array) = value.get_mut() else {
                return false;
            };
            let items: &mut [Spanned<DeValue<'_>>] = array.borrow_mut();
            let Some(item) = items.get_mut(index) else {
                return false;
            };
            value = item;
        }
        let DeValue::Table(next) = value.get_mut() else {
            return false;
        };
        table = next;
    }
    table.remove(last).is_some()
}

/// Turns a serde error (unknown key, missing key, wrong type) into a [`ConfigError`].
fn schema_error(
    file: &str,
    lines: &Lines<'_>,
    e: serde_path_to_error::Error<toml::de::Error>,
) -> ConfigError {
    let path = e.path().to_string();
    let path = if path == "." { String::new() } else { path };
    let inner = e.into_inner();
    let line = inner.span().map(|s| lines.line_of_offset(s.start));
    let message = inner.message().trim_end().to_owned();

    let (key, kind) = if let Some(rest) = message.strip_prefix("unknown field `") {
        let (name, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let expected = tail
            .trim_start_matches(", expected one of ")
            .trim_start_matches(", expected ")
            .replace("` or `", ", ")
            .replace('`', "");
        let expected = if tail.contains("there are no fields") {
            "none".to_owned()
        } else {
            expected
        };
        let key = if path.rsplit('.').next() == Some(name) {
            path
        } else {
            join(&path, name)
        };
        (
            key,
            Kind::UnknownKey {
                name: name.to_owned(),
                expected,
            },
        )
    } else if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest).to_owned();
        (join(&path, &name), Kind::MissingKey { name })
    } else {
        let last = path.rsplit('.').next().unwrap_or("");
        let hint = if message.contains("expected a string") && DURATION_KEYS.contains(&last) {
            "; write a duration in quotes, e.g. \"10s\""
        } else if message.contains("expected a string") {
            "; write the value in quotes"
        } else if message.contains("expected a sequence") && TABLE_ARRAYS.contains(&path.as_str()) {
            "; write the table header with double brackets, e.g. [[listener]], since there may be several"
        } else if message.contains("expected a sequence") {
            "; write a list in brackets, e.g. [\"127.0.0.1:143\"]"
        } else {
            ""
        };
        (
            path,
            Kind::WrongType {
                source: inner,
                hint,
            },
        )
    };
    ConfigError {
        file: file.to_owned(),
        key,
        line,
        kind,
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// Unknown keys reported before giving up on a file (it is probably not a postern config).
const MAX_UNKNOWN_KEYS: usize = 20;

/// Keys whose value is a duration string; a bare number there gets a duration hint.
const DURATION_KEYS: &[&str] = &[
    "shutdown_grace",
    "drain_spread",
    "handshake_timeout",
    "idle_timeout",
    "plaintext_timeout",
    "connect_timeout",
    "interval",
    "timeout",
    "prelogin_timeout",
    "auth_failure_window",
    "resolve_interval",
    "renew_before",
];

/// Arrays of tables, written `[[name]]`.
const TABLE_ARRAYS: &[&str] = &["listener", "backend", "tls.certificate"];
