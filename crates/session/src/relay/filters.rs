//! What the relay does to a session's bytes on their way: the login guard (both
//! directions), the capability filter (backend->client, after a STARTTLS upgrade) and the
//! IMAP response tracker (both directions, for the drain's goodbye).

use postern_proto::capfilter::CapabilityFilter;
use postern_proto::imap_state::{Goodbye, ImapState};
use postern_proto::login_guard::{LoginGuard, Passed};
use postern_proto::prelogin::ReplySwallow;
use postern_proto::Protocol;

use crate::logins::LoginSink;

/// The inspections of one session. Boxed: a session holds 8 bytes for each one that is off.
pub(crate) struct Filters {
    /// The login guard (address claims, login outcomes): for the whole session. `None`
    /// only in relay tests of raw byte streams.
    pub(crate) guard: Option<Box<LoginGuard>>,
    /// Backend→client capability filter after a STARTTLS upgrade: until login (IMAP, POP3)
    /// or for the whole session (SMTP: a client may send EHLO again after AUTH).
    pub(crate) caps: Option<Box<CapabilityFilter>>,
    /// IMAP sessions: where a drain goodbye may go (response boundaries, literals, COMPRESS).
    pub(crate) imap: Option<Box<ImapState>>,
    /// `route = "user"`: the server's answers to the replayed login that the client already
    /// had from postern (after the guard, which must see them); gone once they went by.
    pub(crate) swallow: Option<Box<ReplySwallow>>,
}

/// What a filter did with a chunk.
pub(crate) enum Chunk {
    /// Pass the input as it is.
    Unchanged,
    /// The bytes to pass were written to the output.
    Rewritten,
}

impl Filters {
    /// Client bytes on their way to the backend. postern's own replies go to `to_client`.
    pub(crate) fn client(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
    ) -> Chunk {
        let passed = match self.guard.as_mut() {
            Some(g) => {
                let passed = g.client(input, out, to_client);
                self.replies_at_boundary(to_client);
                passed
            }
            None => Passed::Unchanged,
        };
        let data = match passed {
            Passed::Unchanged => input,
            Passed::Written => &out[..],
        };
        if let Some(state) = self.imap.as_mut() {
            state.client(data);
        }
        match passed {
            Passed::Unchanged => Chunk::Unchanged,
            Passed::Written => Chunk::Rewritten,
        }
    }

    /// Backend bytes on their way to the client; client bytes the guard was holding for
    /// this answer go to `to_backend`, login outcomes to `logins`.
    pub(crate) fn backend(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        to_backend: &mut Vec<u8>,
        logins: Option<&LoginSink<'_>>,
    ) -> Chunk {
        // Observed before it is written: the goodbye decision must never lag the stream.
        if let Some(state) = self.imap.as_mut() {
            state.backend(input);
        }
        // `out` (empty on entry) holds the bytes to write once `rewritten` is set; else
        // `input` goes as it is. With no other filter on the way the guard writes straight
        // into `out` (one copy less).
        let direct = self.caps.is_none() && self.swallow.is_none();
        let mut guarded = Vec::new();
        let mut guard_wrote = false;
        if let Some(g) = self.guard.as_mut() {
            if g.reads_backend() {
                let to_client = if direct { &mut *out } else { &mut guarded };
                guard_wrote = g.backend(input, to_client, to_backend) == Passed::Written;
                while let Some(v) = g.next_verdict() {
                    if let Some(sink) = logins {
                        sink.record(&v);
                    }
                }
            }
        }
        let mut rewritten = direct && guard_wrote;
        if !direct {
            let data: &[u8] = if guard_wrote { &guarded } else { input };
            let mut kept = Vec::new();
            let swallowing = self.swallow.is_some();
            if let Some(s) = self.swallow.as_mut() {
                s.feed(data, &mut kept);
                if s.done() {
                    self.swallow = None;
                }
            }
            let data: &[u8] = if swallowing { &kept } else { data };
            if let Some(f) = self.caps.as_mut() {
                f.feed(data, out);
            } else {
                // Swallowing: what is kept of the chunk goes on.
                out.extend_from_slice(data);
            }
            rewritten = true;
        }
        if let Some(g) = self.guard.as_mut() {
            if self.imap.as_ref().is_some_and(|s| s.compressed()) {
                g.compressed();
            }
            // Capability lists after login carry no STARTTLS (it is a pre-login capability);
            // an SMTP client may send EHLO again after AUTH, so SMTP keeps the filter.
            if g.logged_in() && g.protocol() != Protocol::Smtp {
                if let Some(mut f) = self.caps.take() {
                    f.flush(out);
                }
            }
        }
        let mut replies = Vec::new();
        self.replies_at_boundary(&mut replies);
        if !replies.is_empty() {
            if !rewritten {
                out.extend_from_slice(input);
                rewritten = true;
            }
            out.extend_from_slice(&replies);
        }
        if rewritten {
            Chunk::Rewritten
        } else {
            Chunk::Unchanged
        }
    }

    /// The backend closed: whatever the capability filter holds goes on.
    pub(crate) fn backend_eof(&mut self, out: &mut Vec<u8>) -> bool {
        match self.caps.take() {
            Some(mut f) => {
                f.flush(out);
                true
            }
            None => false,
        }
    }

    /// IMAP after login, where the guard no longer reads the backend: its waiting replies go
    /// out when the response tracker sees a boundary.
    fn replies_at_boundary(&mut self, to_client: &mut Vec<u8>) {
        let Some(g) = self.guard.as_mut() else {
            return;
        };
        if g.reads_backend() || !g.has_waiting_replies() {
            return;
        }
        let at_boundary = match self.imap.as_deref().map(ImapState::goodbye) {
            Some(Goodbye::Now) | None => true,
            // A compressed stream: nothing readable may be written into it.
            Some(Goodbye::Wait | Goodbye::Close) => false,
        };
        if at_boundary {
            g.replies_at_boundary(to_client);
        }
    }

    /// True while replies the guard handed out (in `to_client` of [`Self::client`]) are not
    /// known to be written yet.
    pub(crate) fn own_replies_unwritten(&self) -> bool {
        self.guard
            .as_ref()
            .is_some_and(|g| g.own_replies_unwritten())
    }

    /// postern's own replies were written to the client: the guard goes on with the client
    /// bytes it parked behind them. Bytes for the backend are appended to `to_backend`,
    /// postern's next replies to `to_client`.
    pub(crate) fn own_replies_written(
        &mut self,
        to_backend: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
    ) {
        let Some(g) = self.guard.as_mut() else {
            return;
        };
        let start = to_backend.len();
        g.own_replies_written(to_backend, to_client);
        self.replies_at_boundary(to_client);
        if let Some(state) = self.imap.as_mut() {
            state.client(&to_backend[start..]);
        }
    }

    /// The client may be read now (the guard takes bytes; postern's replies were written).
    pub(crate) fn wants_client(&self) -> bool {
        self.guard.as_ref().is_none_or(|g| g.wants_client())
    }

    /// The backend stream is inside a literal (a ManageSieve script, a string): a line start
    /// there is no place for a drain goodbye.
    pub(crate) fn backend_in_literal(&self) -> bool {
        self.guard.as_ref().is_some_and(|g| g.backend_in_literal())
    }

    /// A backend reset after this is a close: the backend said goodbye.
    pub(crate) fn backend_said_goodbye(&self) -> bool {
        self.guard
            .as_ref()
            .is_some_and(|g| g.backend_said_goodbye())
            || self.imap.as_ref().is_some_and(|s| s.backend_said_bye())
    }
}
