//! Server states set by `postern ctl server BACKEND SERVER online|standby|offline`, kept in
//! `state_dir/server-states.json` so that a restart (and a config reload, which rebuilds the
//! pools) keeps them.
//!
//! The file holds only the servers that are not `online`; servers it names that the config
//! no longer has are kept (a later config may bring them back) and ignored. It is written
//! whole to a temporary file, synced and renamed over the old one, so a crash leaves either
//! the old states or the new ones.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::error::StateError;

/// What an operator has said about a server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// Takes users and sessions (the default).
    #[default]
    Online,
    /// Keeps its own users (pinned to it or ranked first for it) and their sessions, takes
    /// nobody else's: when another server fails, its users go elsewhere.
    Standby,
    /// Takes no session; its users are placed elsewhere and its open sessions get the
    /// protocol's goodbye, spread over `server.drain_spread` (evacuation).
    Offline,
}

impl ServerState {
    /// Every state, in the order `ctl` lists them.
    pub const ALL: [ServerState; 3] = [
        ServerState::Online,
        ServerState::Standby,
        ServerState::Offline,
    ];

    /// The word used on the command line, in the file and as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Online => "online",
            ServerState::Standby => "standby",
            ServerState::Offline => "offline",
        }
    }

    /// The state named `word`.
    pub fn parse(word: &str) -> Option<ServerState> {
        ServerState::ALL.into_iter().find(|s| s.as_str() == word)
    }
}

impl std::fmt::Display for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// backend name -> server label -> state (only servers that are not online).
pub type StateTable = BTreeMap<String, BTreeMap<String, ServerState>>;

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    servers: StateTable,
}

/// The states in force, read lock-free by every placement, and their file.
#[derive(Debug)]
pub struct StateStore {
    path: Option<PathBuf>,
    table: ArcSwap<StateTable>,
    /// Serialises writers so that two `ctl` commands cannot interleave file writes.
    write: Mutex<()>,
}

impl StateStore {
    /// The store kept in `state_dir/server-states.json`; an absent file means every server
    /// is online.
    pub fn open(state_dir: &Path) -> Result<StateStore, StateError> {
        let path = state_dir.join(STATE_FILE);
        let table = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: StateFile =
                    serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
                        path: path.clone(),
                        source,
                    })?;
                file.servers
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateTable::new(),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        Ok(StateStore {
            path: Some(path),
            table: ArcSwap::from_pointee(table),
            write: Mutex::new(()),
        })
    }

    /// An empty store (every server online) saved in `state_dir` from the next change on:
    /// the start after a damaged state file was reported.
    pub fn fresh(state_dir: &Path) -> StateStore {
        StateStore {
            path: Some(state_dir.join(STATE_FILE)),
            table: ArcSwap::from_pointee(StateTable::new()),
            write: Mutex::new(()),
        }
    }

    /// A store that is never saved (tests, and a start whose state file was unusable).
    pub fn in_memory() -> StateStore {
        StateStore {
            path: None,
            table: ArcSwap::from_pointee(StateTable::new()),
            write: Mutex::new(()),
        }
    }

    /// Where the states are saved.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The state of one server.
    pub fn get(&self, backend: &str, server: &str) -> ServerState {
        self.table
            .load()
            .get(backend)
            .and_then(|b| b.get(server))
            .copied()
            .unwrap_or_default()
    }

    /// Every non-online state.
    pub fn snapshot(&self) -> Arc<StateTable> {
        self.table.load_full()
    }

    /// Sets one server's state and saves the table. The new state is in force even when
    /// saving fails (the error says so).
    pub fn set(&self, backend: &str, server: &str, state: ServerState) -> Result<(), StateError> {
        let _writer = self
            .write
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut table = StateTable::clone(&self.table.load());
        let servers = table.entry(backend.to_owned()).or_default();
        match state {
            ServerState::Online => {
                servers.remove(server);
            }
            other => {
                servers.insert(server.to_owned(), other);
            }
        }
        table.retain(|_, servers| !servers.is_empty());
        let saved = match &self.path {
            Some(path) => save(path, &table),
            None => Ok(()),
        };
        self.table.store(Arc::new(table));
        saved
    }
}

const STATE_FILE: &str = "server-states.json";

fn save(path: &Path, table: &StateTable) -> Result<(), StateError> {
    let write_err = |source| StateError::Write {
        path: path.to_owned(),
        source,
    };
    let file = StateFile {
        version: 1,
        servers: table.clone(),
    };
    let mut bytes = serde_json::to_vec_pretty(&file)
        .map_err(|e| write_err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    bytes.push(b'\n');
    let tmp = path.with_extension("json.tmp");
    let result = (|| {
        if let Some(dir) = path.parent().filter(|d| !d.exists()) {
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o700,
            )
            .create(dir)?;
        }
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename is durable only once the directory is synced.
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_survive_a_reopen_and_online_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.get("imap", "10.0.0.1:143"), ServerState::Online);
        store
            .set("imap", "10.0.0.1:143", ServerState::Offline)
            .unwrap();
        store
            .set("imap", "10.0.0.2:143", ServerState::Standby)
            .unwrap();
        store
            .set("pop3", "10.0.0.1:110", ServerState::Standby)
            .unwrap();
        store
            .set("pop3", "10.0.0.1:110", ServerState::Online)
            .unwrap();
        let again = StateStore::open(dir.path()).unwrap();
        assert_eq!(again.get("imap", "10.0.0.1:143"), ServerState::Offline);
        assert_eq!(again.get("imap", "10.0.0.2:143"), ServerState::Standby);
        assert_eq!(again.get("pop3", "10.0.0.1:110"), ServerState::Online);
        let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        assert!(!text.contains("pop3"), "{text}");
        assert!(!dir.path().join("server-states.json.tmp").exists());
    }

    #[test]
    fn a_missing_state_dir_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("new/state");
        let store = StateStore::open(&state).unwrap();
        store.set("imap", "a:1", ServerState::Standby).unwrap();
        assert_eq!(
            StateStore::open(&state).unwrap().get("imap", "a:1"),
            ServerState::Standby
        );
    }

    #[test]
    fn a_damaged_file_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), "{not json").unwrap();
        let e = StateStore::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("remove the file"), "{e}");
    }

    #[test]
    fn a_failed_save_still_applies_the_state() {
        let dir = tempfile::tempdir().unwrap();
        // A state_dir below a regular file cannot be created.
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let store = StateStore::fresh(&file.join("state"));
        let e = store.set("imap", "a:1", ServerState::Offline).unwrap_err();
        assert!(e.to_string().contains("until postern restarts"), "{e}");
        assert_eq!(store.get("imap", "a:1"), ServerState::Offline);
    }
}
