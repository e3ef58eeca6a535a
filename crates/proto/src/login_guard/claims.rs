//! What the login guard says on postern's own behalf: refusals (each saying what was
//! refused) and the goodbyes of a session the guard ends.

use crate::lex::echo_tag;
use crate::Protocol;

/// A client command postern answers itself instead of passing it on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// POP3/SMTP/ManageSieve `XCLIENT` (an address claim).
    Xclient,
    /// SMTP `XFORWARD` (an address claim).
    Xforward,
    /// `STARTTLS` / `STLS` inside TLS (rule T4: only once).
    Starttls,
    /// IMAP `COMPRESS` before login (the guard must read every pre-login command).
    CompressBeforeLogin,
    /// IMAP: a line whose tag is not a valid tag, or longer than the guard tracks.
    InvalidTag,
    /// IMAP: the tag of a command still in progress (its reply could be taken for the other's).
    TagInUse,
    /// IMAP: a non-synchronizing literal the backend did not advertise (LITERAL+/LITERAL-).
    NonSyncLiteral,
    /// POP3/SMTP/ManageSieve: an empty command line (servers differ on whether it gets a reply).
    EmptyLine,
    /// SMTP `BDAT` before authentication.
    BdatBeforeAuth,
    /// SMTP `BDAT` to a backend that did not advertise CHUNKING.
    BdatWithoutChunking,
}

impl Refused {
    /// True for the address claims whose refusals count toward [`super::MAX_REFUSED_CLAIMS`].
    pub(crate) fn is_claim(self) -> bool {
        matches!(self, Refused::Xclient | Refused::Xforward)
    }

    /// The reply; `tag` is the IMAP command's tag (ignored otherwise).
    pub(crate) fn reply(self, protocol: Protocol, tag: &[u8]) -> Vec<u8> {
        let t = echo_tag(tag);
        let text = match (protocol, self) {
            (Protocol::Imap, Refused::Starttls) => format!("{t} BAD TLS is already active\r\n"),
            (Protocol::Imap, Refused::CompressBeforeLogin) => {
                format!("{t} BAD COMPRESS is not accepted before login\r\n")
            }
            (Protocol::Imap, Refused::InvalidTag) => {
                "* BAD Invalid tag (the mail gateway accepts tags of at most 64 valid characters)\r\n"
                    .to_owned()
            }
            (Protocol::Imap, Refused::TagInUse) => {
                format!("{t} BAD Tag already in use by a command in progress\r\n")
            }
            (Protocol::Imap, Refused::NonSyncLiteral) => format!(
                "{t} BAD Non-synchronizing literal refused: the server did not advertise LITERAL+\r\n"
            ),
            (Protocol::Pop3, Refused::Xclient) => {
                "-ERR XCLIENT is not accepted from clients\r\n".to_owned()
            }
            (Protocol::Pop3, Refused::Starttls) => "-ERR TLS is already active\r\n".to_owned(),
            (Protocol::Pop3, Refused::EmptyLine) => "-ERR Empty command\r\n".to_owned(),
            (Protocol::Smtp, Refused::Xclient) => {
                "550 5.7.0 XCLIENT is not accepted from clients\r\n".to_owned()
            }
            (Protocol::Smtp, Refused::Xforward) => {
                "550 5.7.0 XFORWARD is not accepted from clients\r\n".to_owned()
            }
            (Protocol::Smtp, Refused::Starttls) => "503 5.5.1 TLS is already active\r\n".to_owned(),
            (Protocol::Smtp, Refused::EmptyLine) => "500 5.5.2 Empty command\r\n".to_owned(),
            (Protocol::Smtp, Refused::BdatBeforeAuth) => {
                "530 5.7.0 Authentication required before BDAT\r\n".to_owned()
            }
            (Protocol::Smtp, Refused::BdatWithoutChunking) => {
                "502 5.5.1 BDAT refused: the server did not advertise CHUNKING\r\n".to_owned()
            }
            (Protocol::Sieve, Refused::Xclient) => {
                "NO \"XCLIENT is not accepted from clients\"\r\n".to_owned()
            }
            (Protocol::Sieve, Refused::Starttls) => "NO \"TLS is already active\"\r\n".to_owned(),
            (Protocol::Sieve, Refused::EmptyLine) => "NO \"Empty command\"\r\n".to_owned(),
            // Combinations the guard never produces; still a protocol-correct error.
            (Protocol::Imap, _) => format!("{t} BAD Command refused by the mail gateway\r\n"),
            (Protocol::Pop3, _) => "-ERR Command refused by the mail gateway\r\n".to_owned(),
            (Protocol::Smtp, _) => "502 5.5.1 Command refused by the mail gateway\r\n".to_owned(),
            (Protocol::Sieve, _) => "NO \"Command refused by the mail gateway\"\r\n".to_owned(),
        };
        text.into_bytes()
    }
}

/// Why the guard ends a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardClose {
    /// The client sent [`super::MAX_REFUSED_CLAIMS`] refused address claims.
    TooManyClaims,
    /// A command line longer than the bound that applies to it (`max_line_length`, the
    /// SASL line bound or [`super::MAX_ID_COMMAND`]).
    LineTooLong,
    /// Bytes whose meaning the guard cannot be sure of: a literal or BDAT chunk whose length
    /// it cannot read, a backend reply it cannot match to a command.
    CannotFollow,
}

impl GuardClose {
    /// A closed label, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            GuardClose::TooManyClaims => "too_many_refused_claims",
            GuardClose::LineTooLong => "line_too_long",
            GuardClose::CannotFollow => "cannot_follow",
        }
    }

    /// The protocol's goodbye.
    pub(crate) fn goodbye(self, protocol: Protocol) -> &'static [u8] {
        match (protocol, self) {
            (Protocol::Imap, GuardClose::TooManyClaims) => {
                b"* BYE Too many refused commands, closing connection\r\n"
            }
            (Protocol::Imap, GuardClose::LineTooLong) => {
                b"* BYE Line too long, closing connection\r\n"
            }
            (Protocol::Imap, GuardClose::CannotFollow) => {
                b"* BYE The mail gateway cannot follow this command, closing connection\r\n"
            }
            (Protocol::Pop3, GuardClose::TooManyClaims) => {
                b"-ERR Too many refused commands, closing connection\r\n"
            }
            (Protocol::Pop3, GuardClose::LineTooLong) => {
                b"-ERR Line too long, closing connection\r\n"
            }
            (Protocol::Pop3, GuardClose::CannotFollow) => {
                b"-ERR The mail gateway cannot follow this command, closing connection\r\n"
            }
            (Protocol::Smtp, GuardClose::TooManyClaims) => {
                b"421 4.7.0 Too many refused commands, closing connection\r\n"
            }
            (Protocol::Smtp, GuardClose::LineTooLong) => {
                b"421 4.7.0 Line too long, closing connection\r\n"
            }
            (Protocol::Smtp, GuardClose::CannotFollow) => {
                b"421 4.7.0 The mail gateway cannot follow this command, closing connection\r\n"
            }
            (Protocol::Sieve, GuardClose::TooManyClaims) => {
                b"BYE \"Too many refused commands, closing connection\"\r\n"
            }
            (Protocol::Sieve, GuardClose::LineTooLong) => {
                b"BYE \"Line too long, closing connection\"\r\n"
            }
            (Protocol::Sieve, GuardClose::CannotFollow) => {
                b"BYE \"The mail gateway cannot follow this command, closing connection\"\r\n"
            }
        }
    }
}

/// The go-ahead postern gives for a synchronizing literal inside an `ID` it assembles.
pub(crate) const LITERAL_GO_AHEAD: &[u8] = b"+ Ready for literal data\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reply_is_one_line() {
        let all = [
            Refused::Xclient,
            Refused::Xforward,
            Refused::Starttls,
            Refused::CompressBeforeLogin,
            Refused::InvalidTag,
            Refused::TagInUse,
            Refused::NonSyncLiteral,
            Refused::EmptyLine,
            Refused::BdatBeforeAuth,
            Refused::BdatWithoutChunking,
        ];
        for p in Protocol::ALL {
            for r in all {
                let reply = r.reply(p, b"a\r\nb");
                assert!(reply.ends_with(b"\r\n"));
                assert_eq!(memchr::memchr_iter(b'\n', &reply).count(), 1, "{r:?}");
            }
            for c in [
                GuardClose::TooManyClaims,
                GuardClose::LineTooLong,
                GuardClose::CannotFollow,
            ] {
                assert!(c.goodbye(p).ends_with(b"\r\n"));
            }
        }
        assert_eq!(
            Refused::Starttls.reply(Protocol::Imap, b"a1"),
            b"a1 BAD TLS is already active\r\n"
        );
    }
}
