//! Login names in SASL exchanges and IMAP/POP3/SMTP login commands, as pure functions.
//!
//! One parser serves the login guard (which logs the name a login tried) and any part of
//! postern that must know the name before a backend is chosen (routing by user): give it a
//! client's pre-login command line, or the SASL response line that follows a continuation,
//! and it says which name the client is logging in as. Passwords and tokens are decoded only
//! into buffers that are zeroed before they are dropped; no function returns them.
//!
//! Names are cut to [`MAX_USER`] bytes, invalid UTF-8 becomes U+FFFD and control characters
//! become `?` (a name goes into log lines).

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;

use super::imap_string::Cursor;
use crate::lex::{first_word, is_imap_tag, keyword, strip_eol, trim_blanks};
use crate::Protocol;

/// Longest login name kept, in bytes.
pub const MAX_USER: usize = 256;

/// Base64 bytes of a SASL response the guard keeps to find the name in (the name comes
/// first in every mechanism it reads, and is at most [`MAX_USER`] bytes): 1368 base64
/// characters decode to 1026 bytes.
pub(crate) const NAME_WINDOW: usize = 1368;

/// A SASL mechanism, as far as finding the login name is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslMech {
    /// RFC 4616 `PLAIN`: `authzid NUL authcid NUL password`.
    Plain,
    /// The `LOGIN` mechanism: the first response is the user name, the second the password.
    Login,
    /// Google/Microsoft `XOAUTH2`: `user=<name> ^A auth=Bearer <token> ^A ^A`.
    XOAuth2,
    /// RFC 7628 `OAUTHBEARER`: the user is the `a=` field of the GS2 header.
    OAuthBearer,
    /// Any other mechanism (CRAM-MD5, SCRAM-*, GSSAPI, EXTERNAL...): no name is read.
    Other,
}

impl SaslMech {
    /// The mechanism named `name` (case-insensitive).
    pub fn parse(name: &[u8]) -> Self {
        match &name.to_ascii_uppercase()[..] {
            b"PLAIN" => SaslMech::Plain,
            b"LOGIN" => SaslMech::Login,
            b"XOAUTH2" => SaslMech::XOAuth2,
            b"OAUTHBEARER" => SaslMech::OAuthBearer,
            _ => SaslMech::Other,
        }
    }

    /// True when the client's first response (initial or after the first continuation)
    /// carries the login name.
    pub fn name_in_first_response(self) -> bool {
        self != SaslMech::Other
    }
}

/// What a client's pre-login command line says about the login name ([`login_line`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginLine {
    /// A login command whose name is in the line: IMAP `LOGIN`, `AUTHENTICATE` or `AUTH`
    /// with an initial response, POP3 `USER` and `APOP`.
    Name(String),
    /// A SASL exchange whose name comes in the client's first response, on the line after
    /// the server's continuation: read it with [`sasl_response_name`].
    AwaitsResponse(SaslMech),
    /// A login command whose name this parser cannot read: an unknown mechanism, an empty
    /// or undecodable response, an IMAP `LOGIN` whose literal is not in the bytes given.
    Unreadable,
    /// Not a login command (or not a valid one).
    NotLogin,
}

/// The login name in one complete pre-login command line of `protocol` (terminator
/// included or not). IMAP literals may be included inline, as the client sends them
/// (`a LOGIN {5}\r\nalice {6}\r\nsecret\r\n`). Keywords are matched case-insensitively.
///
/// - IMAP `tag LOGIN user password` (atom, quoted string with escapes, or literal);
///   `tag AUTHENTICATE mech [initial-response]`.
/// - POP3 `USER name`, `APOP name digest`, `AUTH mech [initial-response]`.
/// - SMTP `AUTH mech [initial-response]`.
/// - ManageSieve `AUTHENTICATE "mech" ["initial-response" | {n+} CRLF initial-response]`.
///
/// For PLAIN the name is the authentication identity, or the authorization identity when
/// the former is empty ([`sasl_plain_identities`] gives both).
pub fn login_line(protocol: Protocol, line: &[u8]) -> LoginLine {
    let content = strip_eol(line);
    let args = match protocol {
        Protocol::Imap => {
            let Some(sp) = memchr::memchr(b' ', content) else {
                return LoginLine::NotLogin;
            };
            if !is_imap_tag(&content[..sp]) {
                return LoginLine::NotLogin;
            }
            &content[sp + 1..]
        }
        Protocol::Pop3 | Protocol::Smtp => content,
        Protocol::Sieve => return super::sieve::login_line(line),
    };
    let (kw, rest) = keyword(args);
    match (protocol, &kw.to_ascii_uppercase()[..]) {
        (Protocol::Imap, b"LOGIN") => match imap_login_user(rest) {
            Some(name) => LoginLine::Name(name),
            None => LoginLine::Unreadable,
        },
        (Protocol::Imap, b"AUTHENTICATE") | (Protocol::Pop3 | Protocol::Smtp, b"AUTH") => {
            let (mech_name, ir) = first_word(rest);
            if mech_name.is_empty() {
                return LoginLine::NotLogin;
            }
            let mech = SaslMech::parse(mech_name);
            match ir.map(trim_blanks).filter(|ir| !ir.is_empty()) {
                None => match mech {
                    SaslMech::Other => LoginLine::Unreadable,
                    m => LoginLine::AwaitsResponse(m),
                },
                Some(ir) => match sasl_response_name(mech, ir) {
                    Some(name) => LoginLine::Name(name),
                    None => LoginLine::Unreadable,
                },
            }
        }
        (Protocol::Pop3, b"USER") => match clean_user(trim_blanks(rest)) {
            Some(name) => LoginLine::Name(name),
            None => LoginLine::Unreadable,
        },
        (Protocol::Pop3, b"APOP") => match clean_user(first_word(rest).0) {
            Some(name) => LoginLine::Name(name),
            None => LoginLine::Unreadable,
        },
        _ => LoginLine::NotLogin,
    }
}

/// The user name of IMAP `LOGIN` arguments (`rest` starts after the keyword): the first
/// astring, decoded (quoted escapes, an inline literal); None when it is absent or cannot
/// be decoded.
pub fn imap_login_user(rest: &[u8]) -> Option<String> {
    let mut cursor = Cursor::new(rest);
    if cursor.skip_blanks() == 0 {
        return None;
    }
    let mut user = cursor.astring().ok()?;
    let name = clean_user(&user);
    scrub(&mut user);
    name
}

/// The login name in a client's first SASL response for `mech` (base64 as sent, blanks
/// around it ignored; `=` is the empty response). None for an empty, cancelled (`*`) or
/// undecodable response, and for mechanisms whose name this parser does not read.
pub fn sasl_response_name(mech: SaslMech, response: &[u8]) -> Option<String> {
    let mut window = NameWindow::default();
    window.feed(response);
    window.finish(mech)
}

/// PLAIN's two identities (authorization, authentication), from the base64 response.
pub fn sasl_plain_identities(response: &[u8]) -> Option<(Option<String>, Option<String>)> {
    let mut decoded = decode_prefix(trim_blanks(response))?;
    let mut parts = decoded.split(|&b| b == 0);
    let authzid = parts.next().and_then(clean_user);
    let authcid = parts.next().and_then(clean_user);
    scrub(&mut decoded);
    Some((authzid, authcid))
}

/// The first [`NAME_WINDOW`] bytes of a SASL response being streamed, enough to read the
/// name without holding the rest (a token may be many kilobytes).
#[derive(Default)]
pub(crate) struct NameWindow {
    buf: Vec<u8>,
}

impl NameWindow {
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        let room = NAME_WINDOW.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// The name the response carries for `mech`; the window is zeroed and emptied.
    pub(crate) fn finish(&mut self, mech: SaslMech) -> Option<String> {
        let response = trim_blanks(&self.buf);
        let name = if response == b"*" || response == b"=" {
            None
        } else {
            name_from_response(mech, response)
        };
        scrub(&mut self.buf);
        name
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Drops the quotes around a ManageSieve quoted string (blanks around it too).
    pub(crate) fn unquote(&mut self) {
        let range = super::sieve::unquoted_range(&self.buf);
        let len = range.len();
        self.buf.copy_within(range, 0);
        self.buf[len..].fill(0);
        self.buf.truncate(len);
    }
}

fn name_from_response(mech: SaslMech, response: &[u8]) -> Option<String> {
    if mech == SaslMech::Other {
        return None;
    }
    let mut decoded = decode_prefix(response)?;
    let name = match mech {
        SaslMech::Plain => {
            let mut parts = decoded.split(|&b| b == 0);
            let authzid = parts.next().unwrap_or_default();
            let authcid = parts.next().unwrap_or_default();
            clean_user(if authcid.is_empty() { authzid } else { authcid })
        }
        SaslMech::Login => clean_user(&decoded),
        SaslMech::XOAuth2 => decoded
            .split(|&b| b == 0x01)
            .find_map(|kv| kv.strip_prefix(b"user="))
            .and_then(clean_user),
        SaslMech::OAuthBearer => oauthbearer_user(&decoded),
        SaslMech::Other => None,
    };
    scrub(&mut decoded);
    name
}

/// Decodes base64 (padding optional); when the text was cut by the window, the longest
/// prefix of whole 4-character groups.
fn decode_prefix(b64: &[u8]) -> Option<Vec<u8>> {
    if let Ok(all) = B64.decode(b64) {
        return Some(all);
    }
    let whole = b64.len() - b64.len() % 4;
    B64.decode(&b64[..whole]).ok()
}

/// `a=<user>` from an OAUTHBEARER GS2 header (`n,a=user,...`), `=2C`/`=3D` unescaped.
fn oauthbearer_user(decoded: &[u8]) -> Option<String> {
    let header = decoded.split(|&b| b == 0x01).next()?;
    let value = header
        .split(|&b| b == b',')
        .find_map(|f| f.strip_prefix(b"a="))?;
    let text = String::from_utf8_lossy(value)
        .replace("=2C", ",")
        .replace("=3D", "=");
    clean_user(text.as_bytes())
}

/// A login name fit for a log line, or None when empty.
pub(crate) fn clean_user(raw: &[u8]) -> Option<String> {
    let raw = &raw[..raw.len().min(MAX_USER)];
    let name: String = String::from_utf8_lossy(raw)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    (!name.is_empty()).then_some(name)
}

/// Zeroes a buffer that may have held a secret, then empties it.
pub(crate) fn scrub(buf: &mut Vec<u8>) {
    buf.fill(0);
    buf.clear();
}

/// Base64 as clients send it: standard alphabet, padding optional.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .encode(s)
            .into_bytes()
    }

    fn name(s: &str) -> LoginLine {
        LoginLine::Name(s.to_owned())
    }

    #[test]
    fn imap_login_spellings() {
        let p = Protocol::Imap;
        assert_eq!(login_line(p, b"a LOGIN alice secret\r\n"), name("alice"));
        assert_eq!(login_line(p, b"a login \"al ice\" x"), name("al ice"));
        assert_eq!(login_line(p, b"a LOGIN \"a\\\"b\\\\c\" x"), name("a\"b\\c"));
        assert_eq!(
            login_line(p, b"a LOGIN {5}\r\nalice {6}\r\nsecret\r\n"),
            name("alice")
        );
        assert_eq!(login_line(p, b"a LOGIN {5+}\nalice x"), name("alice"));
        assert_eq!(login_line(p, b"a LOGIN {5}\r\n"), LoginLine::Unreadable);
        assert_eq!(login_line(p, b"a LOGIN \"open"), LoginLine::Unreadable);
        assert_eq!(login_line(p, b"a NOOP"), LoginLine::NotLogin);
        assert_eq!(login_line(p, b"a+ LOGIN x y"), LoginLine::NotLogin);
    }

    #[test]
    fn sasl_in_every_protocol() {
        let plain = b64(b"\0bob\0pw");
        for (p, cmd) in [
            (Protocol::Imap, &b"a AUTHENTICATE PLAIN "[..]),
            (Protocol::Pop3, b"AUTH PLAIN "),
            (Protocol::Smtp, b"auth plain "),
        ] {
            let line = [cmd, &plain[..], b"\r\n"].concat();
            assert_eq!(login_line(p, &line), name("bob"), "{p}");
            let bare = &cmd[..cmd.len() - 1];
            assert_eq!(
                login_line(p, bare),
                LoginLine::AwaitsResponse(SaslMech::Plain)
            );
        }
        assert_eq!(
            login_line(Protocol::Smtp, b"AUTH CRAM-MD5"),
            LoginLine::Unreadable
        );
        assert_eq!(login_line(Protocol::Smtp, b"AUTH"), LoginLine::NotLogin);
        assert_eq!(login_line(Protocol::Pop3, b"USER carol"), name("carol"));
        assert_eq!(login_line(Protocol::Pop3, b"APOP dave c4c9"), name("dave"));
    }

    #[test]
    fn mechanisms() {
        assert_eq!(
            sasl_response_name(SaslMech::Plain, &b64(b"admin\0\0pw")),
            Some("admin".into())
        );
        assert_eq!(
            sasl_plain_identities(&b64(b"zid\0cid\0pw")),
            Some((Some("zid".into()), Some("cid".into())))
        );
        assert_eq!(
            sasl_response_name(SaslMech::Login, &b64(b"erin")),
            Some("erin".into())
        );
        assert_eq!(
            sasl_response_name(
                SaslMech::XOAuth2,
                &b64(b"user=frank@x.test\x01auth=Bearer tok\x01\x01")
            ),
            Some("frank@x.test".into())
        );
        assert_eq!(
            sasl_response_name(
                SaslMech::OAuthBearer,
                &b64(b"n,a=g=2Cx=3Dy@x.test,\x01auth=Bearer t\x01\x01")
            ),
            Some("g,x=y@x.test".into())
        );
        assert_eq!(sasl_response_name(SaslMech::Plain, b"*"), None);
        assert_eq!(sasl_response_name(SaslMech::Plain, b"="), None);
        assert_eq!(sasl_response_name(SaslMech::Plain, b"!!!"), None);
        assert_eq!(sasl_response_name(SaslMech::Other, &b64(b"x")), None);
    }

    #[test]
    fn a_long_token_is_read_from_its_start() {
        let mut raw = b"user=henry@x.test\x01auth=Bearer ".to_vec();
        raw.extend(std::iter::repeat_n(b't', 20_000));
        raw.extend_from_slice(b"\x01\x01");
        let mut window = NameWindow::default();
        for chunk in b64(&raw).chunks(7) {
            window.feed(chunk);
        }
        assert_eq!(window.len(), NAME_WINDOW);
        assert_eq!(
            window.finish(SaslMech::XOAuth2),
            Some("henry@x.test".into())
        );
        assert_eq!(window.len(), 0);
    }

    #[test]
    fn names_are_sanitised_and_bounded() {
        assert_eq!(clean_user(b"a\r\nb\x00c"), Some("a??b?c".into()));
        assert_eq!(clean_user(&[b'x'; 1000]).map(|n| n.len()), Some(MAX_USER));
        assert_eq!(clean_user(b""), None);
        assert_eq!(clean_user(b"\xff"), Some("\u{fffd}".into()));
    }
}
