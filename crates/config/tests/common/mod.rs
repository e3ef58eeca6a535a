//! Helpers shared by the config integration tests: a minimal valid file and ways to add
//! to it at known lines, and checks that return every error as its displayed line.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use postern_config::{from_toml, Config, ConfigSource};

/// Lines 1-5.
pub const LISTENER: &str = "[[listener]]\nname = \"imaps\"\nprotocol = \"imap\"\nlisten = [\"127.0.0.1:993\"]\nbackend = \"imap\"\n";
/// Three lines.
pub const BACKEND: &str = "[[backend]]\nname = \"imap\"\nservers = [\"127.0.0.1:143\"]\n";

pub fn check(text: &str) -> Result<Config, Vec<String>> {
    from_toml(text, ConfigSource::File("postern.toml".into()))
        .map_err(|e| e.errors().iter().map(ToString::to_string).collect())
}

#[track_caller]
pub fn errors(text: &str) -> Vec<String> {
    match check(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(errors) => errors,
    }
}

#[track_caller]
pub fn one_error(text: &str) -> String {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors.into_iter().next().unwrap_or_default()
}

/// A valid config with `extra` appended to the listener table (line 6 onwards).
pub fn listener_with(extra: &str) -> String {
    format!("{LISTENER}{extra}\n{BACKEND}")
}

/// A valid config with `extra` appended to the backend table (line 9 onwards).
pub fn backend_with(extra: &str) -> String {
    format!("{LISTENER}{BACKEND}{extra}\n")
}

/// A valid config followed by a top-level table (its header on line 9).
pub fn with_table(table: &str) -> String {
    format!("{LISTENER}{BACKEND}{table}\n")
}
