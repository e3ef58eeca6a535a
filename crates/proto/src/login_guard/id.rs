//! IMAP `ID` (RFC 2971): which field names are reserved to the gateway, and what postern
//! sends the backend instead of the client's bytes.
//!
//! # Reserved fields, and why exactly these
//! Dovecot's imap-login applies these fields of a client's first `ID` when the client's
//! address is in `login_trusted_networks` (as postern's is, when Dovecot must see the real
//! client address): `x-originating-ip`, `x-originating-port` (the client address),
//! `x-connected-ip`, `x-connected-port` (the address it connected to), `x-proxy-ttl` (loop
//! prevention), `x-session-id`, `x-session-ext-id` (the session id in every log line), any
//! `x-forward-<name>` (a variable handed to the authentication process, e.g. for passdb
//! rules), and `x-multiplex` (registered for its proxy protocol). Names are compared without
//! regard to case; Dovecot reads them as C strings, so a name is cut at a NUL first.
//!
//! postern refuses every field whose name starts with one of [`RESERVED_ID_PREFIXES`] or
//! equals one of [`RESERVED_ID_FIELDS`]: the prefixes cover each family of trusted-proxy
//! fields whole, so a sibling that a later Dovecot version adds to a family (or another
//! server's variant of one) is refused too. No other field is touched: `name`, `version`,
//! `os`, `vendor`, `support-url`, ... and any other `x-` field pass.
//!
//! # What reaches the backend
//! Never the client's bytes: postern decodes the whole command ([`super::imap_string`]),
//! refuses it when it cannot decode it with certainty, and otherwise sends the decoded
//! fields re-encoded as quoted strings (`tag ID ("name" "value" ...)` or `tag ID NIL`). What
//! the backend parses is therefore exactly what postern checked, whatever spelling (escapes,
//! literals, atoms, case) the client used. A value holding CR, LF or NUL cannot be quoted
//! and is refused (no legitimate ID value holds one). The command may be up to
//! [`MAX_ID_COMMAND`] bytes (RFC 2971's largest ID, 30 fields of 1024-byte values, is
//! about 32 KB), independently of `max_line_length`.

use super::imap_string::{Cursor, DecodeError, NString};
use crate::lex::{echo_tag, Literal};

/// Field-name prefixes refused in a client's `ID` (any case, after decoding).
///
/// Dovecot's imap-login applies these fields of a client's first `ID` when the client's
/// address is in `login_trusted_networks` (as postern's is, when Dovecot must see the real
/// client address): `x-originating-ip`/`-port` (the client address), `x-connected-ip`/`-port`
/// (the address it connected to), `x-proxy-ttl` (loop prevention), `x-session-id` and
/// `x-session-ext-id` (the session id in every log line), any `x-forward-<name>` (a variable
/// handed to authentication, e.g. for passdb rules). A prefix covers each family whole, so a
/// sibling a later version adds (or another server's variant) is refused too. Every other
/// field (`name`, `version`, `os`, `vendor`, other `x-` fields) passes.
pub const RESERVED_ID_PREFIXES: [&str; 5] = [
    "x-originating-",
    "x-connected-",
    "x-proxy-",
    "x-session-",
    "x-forward-",
];

/// Whole field names refused in a client's `ID` (any case): `x-multiplex`, which Dovecot
/// registers for its own proxy protocol.
pub const RESERVED_ID_FIELDS: [&str; 1] = ["x-multiplex"];

/// Longest `ID` command postern assembles (terminator and literal bytes included).
pub const MAX_ID_COMMAND: usize = 64 * 1024;

/// Literals one `ID` may carry (RFC 2971's largest ID has 60 strings).
const MAX_ID_LITERALS: usize = 64;

/// An `ID` command being assembled: its bytes after the keyword, literals inline.
#[derive(Debug)]
pub(crate) struct IdAssembly {
    tag: Vec<u8>,
    raw: Vec<u8>,
    literals: usize,
}

/// What to do after a segment of an `ID` command.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum IdStep {
    /// Collect `n` literal bytes; with `go_ahead`, postern sends `+` first (the literal is
    /// synchronizing: the client waits for it).
    Literal { n: u64, go_ahead: bool },
    /// Complete and clean: send this to the backend.
    Forward(Vec<u8>),
    /// Refused with `reply`. `drop`: bytes of a non-synchronizing literal the client sends
    /// anyway (drop them and the rest of the command). `cannot_follow`: such a literal's
    /// length cannot be read.
    Refuse {
        reply: Vec<u8>,
        drop: Option<u64>,
        cannot_follow: bool,
    },
}

impl IdAssembly {
    /// An `ID` tagged `tag`; `args` is its first segment after the keyword.
    pub(crate) fn new(tag: &[u8], args: &[u8]) -> Self {
        IdAssembly {
            tag: tag.to_vec(),
            raw: args.to_vec(),
            literals: 0,
        }
    }

    /// Bytes the command may still grow by.
    pub(crate) fn room(&self) -> usize {
        MAX_ID_COMMAND.saturating_sub(self.tag.len() + 4 + self.raw.len())
    }

    pub(crate) fn len(&self) -> usize {
        self.tag.len() + self.raw.len()
    }

    /// Appends literal data or a further segment.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.raw.extend_from_slice(bytes);
    }

    /// A segment has ended (its line end is in); `lit` is the literal it announces.
    pub(crate) fn segment_end(&mut self, lit: Option<Literal>) -> IdStep {
        match lit {
            Some(l) if l.sync || l.delimited => {
                self.literals += 1;
                let fits = l
                    .len
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|&n| n <= self.room());
                match fits {
                    Some(n) if self.literals <= MAX_ID_LITERALS => IdStep::Literal {
                        n: n as u64,
                        go_ahead: l.sync,
                    },
                    _ => IdStep::Refuse {
                        reply: if self.literals > MAX_ID_LITERALS {
                            IdRefusal::Undecodable("too many literals").reply(&self.tag)
                        } else {
                            IdRefusal::TooLong.reply(&self.tag)
                        },
                        drop: if l.sync { None } else { l.len },
                        cannot_follow: !l.sync && l.len.is_none(),
                    },
                }
            }
            _ => match check_id(&self.tag, &self.raw) {
                Ok(command) => IdStep::Forward(command),
                Err(refusal) => IdStep::Refuse {
                    reply: refusal.reply(&self.tag),
                    drop: None,
                    cannot_follow: false,
                },
            },
        }
    }

    /// The refusal of a command that grew past [`MAX_ID_COMMAND`].
    pub(crate) fn too_long(&self) -> Vec<u8> {
        IdRefusal::TooLong.reply(&self.tag)
    }
}

/// True when a client may not send the `ID` field `name` (decoded bytes).
pub fn is_reserved_id_field(name: &[u8]) -> bool {
    let name = name.split(|&b| b == 0).next().unwrap_or_default();
    let lower = name.to_ascii_lowercase();
    RESERVED_ID_PREFIXES
        .iter()
        .any(|p| lower.starts_with(p.as_bytes()))
        || RESERVED_ID_FIELDS.iter().any(|f| lower == f.as_bytes())
}

/// Why an `ID` command is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum IdRefusal {
    /// It carries a reserved field (the decoded name).
    Reserved(Vec<u8>),
    /// It cannot be decoded with certainty.
    Undecodable(&'static str),
    /// A name or value holds CR, LF or NUL.
    LineBreak,
    /// It is longer than [`MAX_ID_COMMAND`].
    TooLong,
}

impl IdRefusal {
    /// The tagged refusal, saying what was refused.
    pub(crate) fn reply(&self, tag: &[u8]) -> Vec<u8> {
        let tag = echo_tag(tag);
        match self {
            IdRefusal::Reserved(name) => format!(
                "{tag} BAD ID field \"{}\" is reserved to the mail gateway\r\n",
                printable(name)
            ),
            IdRefusal::Undecodable(why) => {
                format!("{tag} BAD ID refused: the gateway could not parse it ({why})\r\n")
            }
            IdRefusal::LineBreak => {
                format!("{tag} BAD ID refused: a field holds a line break or NUL\r\n")
            }
            IdRefusal::TooLong => {
                format!("{tag} BAD ID refused: longer than {MAX_ID_COMMAND} bytes\r\n")
            }
        }
        .into_bytes()
    }
}

/// Checks an `ID` command: `args` is everything after the `ID` keyword, the final line end
/// included, literals inline. Returns the command to send the backend (canonical form,
/// tagged `tag`), or why it is refused.
pub(crate) fn check_id(tag: &[u8], args: &[u8]) -> Result<Vec<u8>, IdRefusal> {
    let fields = decode(args)?;
    if let Some(fields) = &fields {
        for (name, value) in fields {
            let value = match value {
                NString::Str(v) => &v[..],
                NString::Nil => b"",
            };
            if has_line_break(name) || has_line_break(value) {
                return Err(IdRefusal::LineBreak);
            }
            if is_reserved_id_field(name) {
                return Err(IdRefusal::Reserved(name.clone()));
            }
        }
    }
    let mut out = Vec::with_capacity(args.len() + tag.len() + 8);
    out.extend_from_slice(tag);
    out.extend_from_slice(b" ID ");
    match fields {
        None => out.extend_from_slice(b"NIL"),
        Some(fields) => {
            out.push(b'(');
            for (i, (name, value)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                quote(name, &mut out);
                out.push(b' ');
                match value {
                    NString::Str(v) => quote(v, &mut out),
                    NString::Nil => out.extend_from_slice(b"NIL"),
                }
            }
            out.push(b')');
        }
    }
    out.extend_from_slice(b"\r\n");
    Ok(out)
}

type Fields = Vec<(Vec<u8>, NString)>;

/// `NIL` (None) or the list of fields.
fn decode(args: &[u8]) -> Result<Option<Fields>, IdRefusal> {
    let undecodable = |e: DecodeError| IdRefusal::Undecodable(e.as_str());
    let mut c = Cursor::new(args);
    c.skip_blanks();
    let fields = match c.peek() {
        Some(b'(') => {
            c.bump();
            let mut fields = Vec::new();
            loop {
                c.skip_blanks();
                if c.peek() == Some(b')') {
                    c.bump();
                    break;
                }
                let name = match c.nstring().map_err(undecodable)? {
                    NString::Str(name) => name,
                    NString::Nil => return Err(IdRefusal::Undecodable("a field name is NIL")),
                };
                if c.skip_blanks() == 0 && c.peek() != Some(b')') {
                    return Err(IdRefusal::Undecodable("fields are not separated by spaces"));
                }
                if c.peek() == Some(b')') {
                    return Err(IdRefusal::Undecodable("a field has no value"));
                }
                let value = c.nstring().map_err(undecodable)?;
                fields.push((name, value));
                match c.peek() {
                    Some(b' ' | b'\t' | b')') => {}
                    None | Some(b'\r' | b'\n') => {
                        return Err(IdRefusal::Undecodable("the field list is not closed"))
                    }
                    Some(_) => {
                        return Err(IdRefusal::Undecodable("fields are not separated by spaces"))
                    }
                }
            }
            Some(fields)
        }
        _ => match c.nstring() {
            Ok(NString::Nil) => None,
            _ => return Err(IdRefusal::Undecodable("the argument is not a list or NIL")),
        },
    };
    c.skip_blanks();
    if !c.at_eol() {
        return Err(IdRefusal::Undecodable("bytes follow the field list"));
    }
    Ok(fields)
}

fn has_line_break(s: &[u8]) -> bool {
    s.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0))
}

fn quote(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in s {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// A field name fit to echo in a reply: printable ASCII, at most 40 bytes.
fn printable(name: &[u8]) -> String {
    name.iter()
        .take(40)
        .map(|&b| {
            if b.is_ascii_graphic() && b != b'"' && b != b'\\' {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(args: &[u8]) -> Result<String, IdRefusal> {
        check_id(b"a", args).map(|c| String::from_utf8_lossy(&c).into_owned())
    }

    #[test]
    fn reserved_names_in_every_case() {
        for name in [
            &b"x-originating-ip"[..],
            b"X-Originating-IP",
            b"x-originating-port",
            b"x-connected-ip",
            b"X-CONNECTED-PORT",
            b"x-proxy-ttl",
            b"x-session-id",
            b"x-session-ext-id",
            b"x-forward-foo",
            b"x-multiplex",
            b"x-originating-ip\0junk",
            b"x-originating-ipx",
        ] {
            assert!(is_reserved_id_field(name), "{name:?}");
        }
        for name in [
            &b"name"[..],
            b"version",
            b"x-originating",
            b"x-client-ip",
            b" x-originating-ip",
            b"x-multiplexer",
            b"\0x-originating-ip",
        ] {
            assert!(!is_reserved_id_field(name), "{name:?}");
        }
    }

    #[test]
    fn every_spelling_of_a_claim_is_refused() {
        for args in [
            &b" (\"x-originating-ip\" \"1.2.3.4\")\r\n"[..],
            b" (\"x\\-originating-ip\" \"1.2.3.4\")\r\n",
            b" (\"X-ORIGINATING-IP\" \"1.2.3.4\")\r\n",
            b" (x-originating-ip \"1.2.3.4\")\r\n",
            b" ({16}\r\nx-originating-ip \"1.2.3.4\")\r\n",
            b" ({16+}\r\nx-originating-ip \"1.2.3.4\")\r\n",
            b" (\"name\" \"a\" \"x-forward-user\" NIL)\r\n",
            b"(\"x-session-id\" \"s\")\n",
        ] {
            assert!(
                matches!(check(args), Err(IdRefusal::Reserved(_))),
                "{:?}",
                String::from_utf8_lossy(args)
            );
        }
    }

    #[test]
    fn clean_ids_are_forwarded_in_canonical_form() {
        assert_eq!(
            check(b" (\"name\" \"Thunderbird\" \"version\" \"115\")\r\n").unwrap(),
            "a ID (\"name\" \"Thunderbird\" \"version\" \"115\")\r\n"
        );
        assert_eq!(check(b" nil\r\n").unwrap(), "a ID NIL\r\n");
        assert_eq!(check(b" ()\r\n").unwrap(), "a ID ()\r\n");
        assert_eq!(
            check(b" (name {3}\r\na\"b vendor NIL)\r\n").unwrap(),
            "a ID (\"name\" \"a\\\"b\" \"vendor\" NIL)\r\n"
        );
    }

    #[test]
    fn what_cannot_be_decoded_is_refused() {
        for (args, want) in [
            (&b" (\"name\")\r\n"[..], "a field has no value"),
            (b" (\"name\" \"x\" \"y\")\r\n", "a field has no value"),
            (b" (\"name\" (\"x\"))\r\n", "an argument is not a string"),
            (b" (\"name\" \"x\"\r\n", "the field list is not closed"),
            (b" (\"name\" \"x\" \r\n", "a string is missing"),
            (b" (\"name\" \"x) \r\n", "a quoted string is not terminated"),
            (b" (\"a\" \"b\") x\r\n", "bytes follow the field list"),
            (b" \"a\"\r\n", "the argument is not a list or NIL"),
            (b" (NIL \"b\")\r\n", "a field name is NIL"),
            (b" ({9}\r\nab)\r\n", "a literal is malformed"),
            (
                b" (\"a\"\"b\"\"c\")\r\n",
                "fields are not separated by spaces",
            ),
        ] {
            assert_eq!(
                check(args),
                Err(IdRefusal::Undecodable(want)),
                "{:?}",
                String::from_utf8_lossy(args)
            );
        }
        assert_eq!(
            check(b" (\"name\" {3}\r\na\nb)\r\n"),
            Err(IdRefusal::LineBreak)
        );
    }

    #[test]
    fn refusals_say_what_was_refused() {
        let r = IdRefusal::Reserved(b"X-Originating-IP".to_vec()).reply(b"a1");
        assert_eq!(
            r,
            b"a1 BAD ID field \"X-Originating-IP\" is reserved to the mail gateway\r\n"
        );
        let r = IdRefusal::Reserved(b"x-forward-\"\r\n* OK".to_vec()).reply(b"a\"");
        assert_eq!(
            r,
            b"* BAD ID field \"x-forward-???*?OK\" is reserved to the mail gateway\r\n"
        );
    }

    #[test]
    fn rfc_2971_largest_id_passes() {
        let mut args = b" (".to_vec();
        for i in 0..30 {
            args.extend_from_slice(format!("\"field-{i:02}\" \"").as_bytes());
            args.extend(std::iter::repeat_n(b'v', 1024));
            args.extend_from_slice(b"\" ");
        }
        args.pop();
        args.extend_from_slice(b")\r\n");
        let forwarded = check_id(b"a", &args).unwrap();
        assert_eq!(&forwarded[5..], &args[1..]);
    }
}
