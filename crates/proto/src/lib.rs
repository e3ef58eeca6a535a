//! Sans-I/O edge logic for IMAP, POP3 and SMTP submission.
//!
//! Fed bytes, returns decisions and bytes to write. Owns every wire string postern
//! sends on its own behalf (greetings, refusals, goodbyes).
//!
//! # Invariants
//! - No sockets, no clock, no TLS, no logging, no dependency on another postern crate.
//! - No input panics; every buffer this crate keeps is bounded.

pub mod capfilter;
pub mod forward;
pub mod greeting;
pub mod line;
pub mod starttls;
pub mod watch;
mod protocol;

pub use protocol::Protocol;
