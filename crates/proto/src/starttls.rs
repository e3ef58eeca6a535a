//! The plaintext phase of a STARTTLS listener (being written).

use crate::Protocol;

/// Bounds of the plaintext phase (rule T9).
#[derive(Clone, Copy, Debug)]
pub struct PlainLimits {
    /// Longest command line accepted, terminator included.
    pub max_line_length: usize,
    /// Most commands answered before the client must upgrade.
    pub max_commands: usize,
}

/// What the caller does next.
#[derive(Debug, PartialEq, Eq)]
pub enum PlainStep {
    /// Need more input; nothing to write.
    NeedMore,
    /// Write these bytes to the client and call step() again (more lines may be buffered).
    Reply(Vec<u8>),
    /// Write `reply` (the STARTTLS/STLS go-ahead), then start the TLS handshake on the raw socket.
    /// `discarded` = bytes that were already buffered after the STARTTLS command line; the
    /// state machine has already dropped them from `buf` (rule T1: they must never be replayed
    /// inside TLS); the caller counts and logs them.
    Upgrade {
        /// The go-ahead reply.
        reply: Vec<u8>,
        /// Bytes dropped from the buffer after the upgrade command.
        discarded: usize,
    },
    /// Write these bytes, then close the connection.
    Close(Vec<u8>),
}

/// The plaintext dialogue of one connection.
#[derive(Debug)]
pub struct PlainPhase {
    protocol: Protocol,
    hostname: String,
    limits: PlainLimits,
}

impl PlainPhase {
    /// A new plaintext phase.
    pub fn new(protocol: Protocol, hostname: &str, limits: PlainLimits) -> Self {
        PlainPhase { protocol, hostname: hostname.to_owned(), limits }
    }

    /// postern's own greeting.
    pub fn greeting(&self) -> Vec<u8> {
        let _ = self.limits;
        match self.protocol {
            Protocol::Imap => format!(
                "* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] {} ready (postern)\r\n",
                self.hostname
            )
            .into_bytes(),
            Protocol::Pop3 => format!("+OK {} ready (postern)\r\n", self.hostname).into_bytes(),
            Protocol::Smtp => format!("220 {} ESMTP ready (postern)\r\n", self.hostname).into_bytes(),
        }
    }

    /// Consumes complete commands from the front of `buf` and returns the next step.
    pub fn step(&mut self, buf: &mut Vec<u8>) -> PlainStep {
        let _ = buf;
        PlainStep::NeedMore
    }

    /// What to send when the plaintext-phase timeout fires.
    pub fn timeout_goodbye(&self) -> &'static [u8] {
        match self.protocol {
            Protocol::Imap => b"* BYE timeout waiting for STARTTLS\r\n",
            Protocol::Pop3 => b"-ERR timeout waiting for STLS\r\n",
            Protocol::Smtp => b"421 4.4.2 timeout waiting for STARTTLS\r\n",
        }
    }
}
