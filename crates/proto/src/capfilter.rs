//! Backend->client capability filter after a STARTTLS upgrade (being written).

use crate::Protocol;

/// Removes STARTTLS/STLS advertisements from backend replies.
#[derive(Debug)]
pub struct CapabilityFilter {
    protocol: Protocol,
    done: bool,
}

impl CapabilityFilter {
    /// A new filter.
    pub fn new(protocol: Protocol) -> Self {
        CapabilityFilter { protocol, done: false }
    }

    /// Passes backend bytes to `to_client`.
    pub fn feed(&mut self, input: &[u8], to_client: &mut Vec<u8>) {
        let _ = self.protocol;
        to_client.extend_from_slice(input);
        self.done = true;
    }

    /// True once the filter has nothing held and the caller may copy directly.
    pub fn is_done(&self) -> bool {
        self.done
    }
}
