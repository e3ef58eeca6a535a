//! ManageSieve (RFC 5804) in the guard: commands are untagged lines whose arguments are
//! strings (quoted, or literals whose bytes follow at once: the protocol has no go-ahead,
//! and Dovecot reads `{n}` as it reads `{n+}`); each command gets data lines (strings, some
//! ending in a literal: a script, a SASL challenge) and then one `OK`/`NO`/`BYE` line, in
//! order. The greeting is the capability list, then `OK`.
//!
//! The guard follows the whole session (like POP3 and SMTP): `XCLIENT` (an address claim
//! Dovecot's managesieve-login honours from trusted networks) is refused at any point, and
//! `STARTTLS` inside TLS.

use std::ops::Range;

use super::claims::{GuardClose, Refused};
use super::framing::Plan;
use super::sasl::{sasl_response_name, LoginLine, SaslMech};
use super::{Core, Data, Entry, Io, Kind, RestOf, Tracker, Wait};
use crate::greeting::sieve_status;
use crate::lex::{
    first_word, keyword, parse_u64, strip_eol, trailing_literal, trim_leading_blanks, Literal,
};

/// Where the text of a quoted string lies in `s` (blanks and line-end bytes around it
/// ignored: a streamed line may have been cut between its CR and LF); all of `s` without
/// them when it is not quoted.
pub(super) fn unquoted_range(s: &[u8]) -> Range<usize> {
    let edge = |c: &u8| !matches!(c, b' ' | b'\t' | b'\r' | b'\n');
    let start = s.iter().position(edge).unwrap_or(s.len());
    let end = s.iter().rposition(edge).map_or(start, |i| i + 1);
    let inner = &s[start..end];
    if inner.len() >= 2 && inner.starts_with(b"\"") && inner.ends_with(b"\"") {
        start + 1..end - 1
    } else {
        start..end
    }
}

/// The text of a quoted string (see [`unquoted_range`]).
pub(crate) fn unquote(s: &[u8]) -> &[u8] {
    &s[unquoted_range(s)]
}

/// How a literal announced by a ManageSieve client is read: its bytes follow at once.
pub(super) fn literal_plan(lit: Literal) -> Plan {
    match lit.len {
        // `x{5}`: no token of its own; Dovecot's parser refuses the line, reading no literal.
        _ if !lit.delimited => Plan::None,
        Some(n) => Plan::NonSync(n),
        None => Plan::Unsupported,
    }
}

/// The login name in one complete ManageSieve command (terminator included or not; an
/// initial response sent as a literal included inline, as the client sends it).
pub(super) fn login_line(line: &[u8]) -> LoginLine {
    let (kw, rest) = keyword(line);
    if !kw.eq_ignore_ascii_case(b"AUTHENTICATE") {
        return LoginLine::NotLogin;
    }
    let Some((mech, rest)) = string(trim_leading_blanks(rest)) else {
        return LoginLine::NotLogin;
    };
    let mech = SaslMech::parse(mech);
    let rest = trim_leading_blanks(strip_eol(rest));
    if rest.is_empty() {
        return match mech {
            SaslMech::Other => LoginLine::Unreadable,
            m => LoginLine::AwaitsResponse(m),
        };
    }
    match string(rest).and_then(|(ir, _)| sasl_response_name(mech, ir)) {
        Some(name) => LoginLine::Name(name),
        None => LoginLine::Unreadable,
    }
}

/// The ManageSieve string at the start of `s` and what follows it: quoted (without
/// escapes: mechanism names and base64 need none), or a literal `{n}`/`{n+}` whose line end
/// and `n` bytes are in `s`.
fn string(s: &[u8]) -> Option<(&[u8], &[u8])> {
    if let Some(body) = s.strip_prefix(b"\"") {
        let end = memchr::memchr2(b'"', b'\\', body)?;
        return (body[end] == b'"').then(|| (&body[..end], &body[end + 1..]));
    }
    let body = s.strip_prefix(b"{")?;
    let close = memchr::memchr(b'}', body)?;
    let spec = &body[..close];
    let n = parse_u64(spec.strip_suffix(b"+").unwrap_or(spec))?;
    let after = &body[close + 1..];
    let data = after
        .strip_prefix(b"\r\n")
        .or_else(|| after.strip_prefix(b"\n"))?;
    let n = usize::try_from(n).ok().filter(|&n| n <= data.len())?;
    Some((&data[..n], &data[n..]))
}

impl Tracker {
    /// A complete ManageSieve command segment, or (`complete` false) the start of an
    /// over-long `AUTHENTICATE` line.
    pub(super) fn sieve_command(
        &mut self,
        core: &mut Core,
        seg: &[u8],
        content: &[u8],
        complete: bool,
        io: &mut Io<'_>,
    ) {
        let lit = if complete {
            trailing_literal(content)
        } else {
            None
        };
        if content.iter().all(|&c| c <= b' ') {
            return self.refuse(core, Refused::EmptyLine, b"", io);
        }
        if self.literal_plan(lit) == Plan::Unsupported {
            // Its bytes follow at once, of a length nobody can read.
            return self.close(core, GuardClose::CannotFollow, io);
        }
        let (kw, args) = keyword(content);
        let kind = match &kw.to_ascii_uppercase()[..] {
            b"XCLIENT" => {
                self.refuse(core, Refused::Xclient, b"", io);
                return self.refused_literal(core, lit, io);
            }
            b"STARTTLS" => {
                self.refuse(core, Refused::Starttls, b"", io);
                return self.refused_literal(core, lit, io);
            }
            b"AUTHENTICATE" if !first_word(args).0.is_empty() => {
                return self.sasl_start(core, b"", args, seg, lit, complete, io);
            }
            b"LOGOUT" => Kind::Quit,
            _ => Kind::Other,
        };
        io.to_backend.extend_from_slice(seg);
        self.push(Entry::new(b"", kind));
        self.follow_literal(core, RestOf::Other, lit, Data::Pass, io);
    }

    /// One complete backend line (`line`: its start, `tail`: its end, both without the
    /// terminator).
    pub(super) fn sieve_line(&mut self, core: &mut Core, line: &[u8], tail: &[u8], io: &mut Io) {
        let continued = std::mem::take(&mut self.reply.continued);
        if let Some(lit) = trailing_literal(tail) {
            // A string sent as a literal: its bytes pass unread, then the line goes on.
            self.reply.literal_left = lit.len.unwrap_or(u64::MAX);
            self.reply.continued = true;
        }
        if continued {
            // The rest of a line after a literal: what the line is was decided at its start.
            return;
        }
        let status = sieve_status(line);
        if status.is_some() && first_word(line).0.eq_ignore_ascii_case(b"BYE") {
            core.backend_goodbye = true;
        }
        if !self.reply.greeted {
            // Capability lines until the greeting's OK (or BYE).
            self.reply.greeted = status.is_some();
            return;
        }
        let front = self
            .in_flight
            .iter()
            .position(|e| !matches!(e.kind, Kind::Own(_)))
            .filter(|&i| i == 0);
        let Some(i) = front else {
            // A reply nothing asked for: a BYE before a close is expected, nothing else.
            if !core.backend_goodbye {
                self.close_now(core, GuardClose::CannotFollow, io);
            }
            return;
        };
        let Some(ok) = status else {
            // A data line; a string while a SASL exchange waits is the server's challenge.
            let sasl = matches!(self.in_flight[i].kind, Kind::Auth { .. })
                && self.wait == Some(Wait::Sasl);
            if sasl {
                self.continuation(core, io);
            }
            return;
        };
        let Some(entry) = self.in_flight.pop_front() else {
            return;
        };
        match entry.kind {
            Kind::Auth { .. } => super::replies::verdict(core, ok, entry.user),
            Kind::Quit => core.backend_goodbye = true,
            _ => {}
        }
        if self
            .in_flight
            .iter()
            .all(|e| matches!(e.kind, Kind::Own(_)))
            && self.wait.is_some()
        {
            self.end_wait();
        }
    }
}
