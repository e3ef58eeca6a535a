//! Raw schema → validated model; defaults are applied here and only here.

use crate::{Config, ConfigError, ConfigErrorKind, ConfigErrors, ConfigSource};

pub(crate) fn parse_and_validate(_text: &str, source: ConfigSource) -> Result<Config, ConfigErrors> {
    Err(ConfigErrors::one(ConfigError {
        file: source.to_string(),
        key: String::new(),
        line: None,
        kind: ConfigErrorKind::Syntax { message: "config loading is not implemented yet".into() },
    }))
}
