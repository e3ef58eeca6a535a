//! postern's configuration: the TOML schema and the validated model.
//!
//! Loading is `file text → raw (serde, deny_unknown_fields) → validate → Config`. Runtime
//! crates see only the types in `model` and never TOML.
//!
//! # Must not depend on
//! tokio, rustls, prometheus, tracing, or any postern crate but `postern-proto` (for
//! `Protocol` only).
//!
//! # Invariants
//! - No I/O beyond reading the config file and checking that the files it names exist
//!   (PEM contents are the tls crate's business).
//! - A [`Config`] is valid by construction: listener→backend references resolve, names are
//!   unique, durations and sizes are in range, defaults are applied in one place
//!   (`validate`).
//! - Every error names the file, the dotted key path (`listener[0].tls`) and the line when
//!   the parser knows it, and says what to fix. Semantic errors are all collected.

mod addr;
mod error;
mod lines;
mod model;
mod names;
mod raw;
mod reload;
mod state_dir;
mod summary;
mod validate;

use std::path::{Path, PathBuf};

pub use error::{ConfigError, ConfigErrorKind, ConfigErrors};
pub use model::*;

/// The embedded default configuration, commented; printed by `postern config default`.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigErrors::one(ConfigError {
            file: path.display().to_string(),
            key: String::new(),
            line: None,
            kind: ConfigErrorKind::Read { error },
        })
    })?;
    from_toml(&text, ConfigSource::File(path.to_path_buf()))
}

/// Parses and validates configuration text. Relative file paths in it (certificates,
/// state_dir) are resolved against the directory of `source` when it is a file, else
/// against the current directory.
pub fn from_toml(text: &str, source: ConfigSource) -> Result<Config, ConfigErrors> {
    validate::parse_and_validate(text, source)
}

/// The embedded default configuration.
pub fn embedded_default() -> Result<Config, ConfigErrors> {
    from_toml(DEFAULT_TOML, ConfigSource::Embedded)
}

/// Which configuration file to use: `-c PATH`, else `$POSTERN_CONFIG` (when set and not
/// empty), else `/etc/postern/postern.toml` if it exists, else `None` (the embedded
/// default).
pub fn resolve_path(cli: Option<&Path>) -> Option<PathBuf> {
    resolve_path_with(
        cli,
        std::env::var_os("POSTERN_CONFIG").map(PathBuf::from),
        Path::new(SYSTEM_CONFIG),
    )
}

/// [`resolve_path`] with its environment passed in, for tests.
fn resolve_path_with(cli: Option<&Path>, env: Option<PathBuf>, system: &Path) -> Option<PathBuf> {
    if let Some(path) = cli {
        return Some(path.to_path_buf());
    }
    if let Some(path) = env.filter(|p| !p.as_os_str().is_empty()) {
        return Some(path);
    }
    // A dangling symlink or unreadable /etc/postern counts as "exists" so that the
    // operator gets a read error naming the file rather than a silent fallback.
    if system.exists() || system.symlink_metadata().is_ok() {
        return Some(system.to_path_buf());
    }
    None
}

impl ListenerConfig {
    /// The backend this listener relays to.
    pub fn backend<'a>(&self, config: &'a Config) -> &'a BackendConfig {
        // Validation guarantees the index is in range for the Config this listener came from.
        &config.backends[self.backend]
    }
}

const SYSTEM_CONFIG: &str = "/etc/postern/postern.toml";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_prefers_cli_then_env_then_system() {
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path().join("postern.toml");
        let cli = Path::new("/x/cli.toml");
        let env = PathBuf::from("/x/env.toml");
        assert_eq!(
            resolve_path_with(Some(cli), Some(env.clone()), &system),
            Some(cli.to_path_buf())
        );
        assert_eq!(
            resolve_path_with(None, Some(env.clone()), &system),
            Some(env)
        );
        assert_eq!(resolve_path_with(None, Some(PathBuf::new()), &system), None);
        assert_eq!(resolve_path_with(None, None, &system), None);
        std::fs::write(&system, "").unwrap();
        assert_eq!(resolve_path_with(None, None, &system), Some(system.clone()));
    }
}
