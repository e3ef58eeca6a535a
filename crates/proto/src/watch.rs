//! Watches client->backend bytes until authentication (being written).

use crate::Protocol;

/// Watches the client's first commands.
#[derive(Debug)]
pub struct ClientWatch {
    protocol: Protocol,
    max_line_length: usize,
    user: Option<String>,
    done: bool,
}

impl ClientWatch {
    /// A new watcher.
    pub fn new(protocol: Protocol, max_line_length: usize) -> Self {
        ClientWatch { protocol, max_line_length, user: None, done: false }
    }

    /// Feeds bytes read from the client.
    pub fn feed(&mut self, input: &[u8], to_backend: &mut Vec<u8>, to_client: &mut Vec<u8>) {
        let _ = (self.protocol, self.max_line_length, to_client);
        to_backend.extend_from_slice(input);
        self.done = true;
    }

    /// The login name once seen.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// True once inspection has ended.
    pub fn is_done(&self) -> bool {
        self.done
    }
}
