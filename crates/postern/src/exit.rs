//! The process exit statuses (README.md, Command line), by name.

use std::process::ExitCode;

/// How a `postern` command ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Done: a clean drain, a valid configuration, a written or usable certificate.
    Clean = 0,
    /// A fatal runtime or I/O error (a port that cannot be bound, a file that cannot be
    /// written, an unusable certificate for `cert inspect`).
    Failure = 1,
    /// The configuration (or a certificate or key it names) is invalid.
    BadConfig = 2,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}
