//! The one-screen summary printed by `postern check-config`.

use crate::Config;

impl Config {
    /// Listeners → backends (addresses, protocol, TLS mode, servers), then certificates.
    pub fn summary(&self) -> String {
        String::new()
    }
}
