//! Dropping the server's replies the client already had from postern.

use crate::Protocol;

/// Drops the first `n` replies of a server's stream (after its greeting): the answers to the
/// part of a replayed login that postern itself answered ([`super::Login::swallow`]).
///
/// - IMAP: continuation lines (`+ ...`). Untagged lines pass; a tagged line passes and ends
///   the swallowing (the command finished early, e.g. a `NO` in place of a continuation).
/// - POP3, ManageSieve (the challenge of a SASL exchange): one line each.
/// - SMTP: one reply each, its `NNN-` lines included.
///
/// Holds four bytes of the current line at most.
#[derive(Debug)]
pub struct ReplySwallow {
    protocol: Protocol,
    left: u32,
    /// Inside a line: whether it is dropped. None: at a line start.
    line: Option<bool>,
    /// IMAP: the current line is tagged.
    tagged: bool,
    head: [u8; 4],
    head_len: usize,
}

impl ReplySwallow {
    /// Drops `replies` replies of `protocol`.
    pub fn new(protocol: Protocol, replies: u32) -> Self {
        ReplySwallow {
            protocol,
            left: replies,
            line: None,
            tagged: false,
            head: [0; 4],
            head_len: 0,
        }
    }

    /// True once every reply to drop went by: the rest of the stream passes unchanged.
    pub fn done(&self) -> bool {
        self.left == 0 && self.line.is_none()
    }

    /// Server bytes on their way to the client: what passes goes to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            let drop = match self.line {
                Some(drop) => drop,
                None if self.left == 0 => {
                    out.extend_from_slice(input);
                    return;
                }
                None => {
                    let drop = match self.protocol {
                        Protocol::Imap => {
                            self.tagged = !matches!(input[0], b'+' | b'*');
                            input[0] == b'+'
                        }
                        Protocol::Pop3 | Protocol::Smtp | Protocol::Sieve => true,
                    };
                    self.line = Some(drop);
                    self.head_len = 0;
                    drop
                }
            };
            let end = memchr::memchr(b'\n', input).map(|i| i + 1);
            let (part, rest) = input.split_at(end.unwrap_or(input.len()));
            let take = (self.head.len() - self.head_len).min(part.len());
            self.head[self.head_len..self.head_len + take].copy_from_slice(&part[..take]);
            self.head_len += take;
            if !drop {
                out.extend_from_slice(part);
            }
            if end.is_some() {
                self.line = None;
                match self.protocol {
                    Protocol::Imap if drop => self.left = self.left.saturating_sub(1),
                    Protocol::Imap if self.tagged => self.left = 0,
                    Protocol::Imap => {}
                    Protocol::Pop3 | Protocol::Sieve => self.left = self.left.saturating_sub(1),
                    Protocol::Smtp => {
                        if !(self.head_len == 4 && self.head[3] == b'-') {
                            self.left = self.left.saturating_sub(1);
                        }
                    }
                }
            }
            input = rest;
        }
    }
}
