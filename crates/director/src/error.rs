//! The director's errors: a `user_map` that cannot be used, a state file that cannot be
//! read or written, a control socket that cannot be opened.

use std::path::PathBuf;

/// A `user_map` file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The file could not be read.
    #[error("cannot read user_map {}: {source}; fix the path or its permissions (the last good map stays in use)", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Lines that do not parse; the whole file is refused.
    #[error("user_map {} refused (the last good map stays in use): {}", path.display(), Lines(lines, path))]
    Lines {
        /// The file.
        path: PathBuf,
        /// Every bad line.
        lines: Vec<MapLineError>,
    },
}

/// One bad `user_map` line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapLineError {
    /// Not `who server`.
    #[error("line {line}: expected two fields, `user-or-@domain  host[:port]`")]
    Fields {
        /// 1-based line number.
        line: usize,
    },
    /// `@` with nothing after it.
    #[error("line {line}: `@` needs a domain after it, e.g. `@example.org`")]
    EmptyDomain {
        /// 1-based line number.
        line: usize,
    },
    /// A domain with another `@` in it.
    #[error("line {line}: {name:?} is neither a user nor `@domain`")]
    BadName {
        /// 1-based line number.
        line: usize,
        /// What was written.
        name: String,
    },
    /// The server field is not a host with an optional port.
    #[error("line {line}: {server:?} is not `host`, `host:port` or `[ipv6]:port`")]
    BadServer {
        /// 1-based line number.
        line: usize,
        /// What was written.
        server: String,
    },
    /// The same user or domain twice.
    #[error("line {line}: {key} is already pinned on line {first}; keep one of the lines")]
    Duplicate {
        /// 1-based line number.
        line: usize,
        /// The user or `@domain`.
        key: String,
        /// The earlier line.
        first: usize,
    },
}

impl MapLineError {
    /// The 1-based line number.
    pub fn line(&self) -> usize {
        match self {
            MapLineError::Fields { line }
            | MapLineError::EmptyDomain { line }
            | MapLineError::BadName { line, .. }
            | MapLineError::BadServer { line, .. }
            | MapLineError::Duplicate { line, .. } => *line,
        }
    }
}

/// `file:line: reason` for each bad line, joined.
struct Lines<'a>(&'a [MapLineError], &'a PathBuf);

impl std::fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            // "line N: reason" becomes "path:N: reason", the form editors jump to.
            let text = e.to_string();
            let reason = text.split_once(": ").map_or(text.as_str(), |(_, r)| r);
            write!(f, "{}:{}: {reason}", self.1.display(), e.line())?;
        }
        Ok(())
    }
}

/// The server-state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading the file failed (other than its absence).
    #[error("cannot read the server states {}: {source}; fix its permissions, or remove it to start with every server online", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not what postern writes.
    #[error("the server states {} are not valid: {source}; remove the file to start with every server online", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// Writing the file failed; the new state is in force but would not survive a restart.
    #[error("cannot save the server states to {}: {source}; the change is in force until postern restarts", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The control socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Binding `state_dir/control.sock` failed.
    #[error("cannot listen on the control socket {}: {source}; check that server.state_dir exists and is writable", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
