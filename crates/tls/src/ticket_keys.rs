//! Session-ticket keys: the `ticket_key_file` format and sealing/opening one ticket.
//!
//! A key is 80 random bytes, written as one base64 line (`openssl rand -base64 80`), laid
//! out as nginx's and RFC 5077 §4's recommended ticket keys are: a 16-byte key name (sent
//! in the clear in each ticket, so the right key is found without trial decryption), a
//! 32-byte HMAC-SHA256 key and a 32-byte AES-256 key. A ticket is
//! `name (16) | IV (16) | AES-256-CBC(state) | HMAC-SHA256(name | IV | ciphertext) (32)`:
//! encrypt-then-MAC, the MAC checked in constant time before anything is decrypted. These
//! are the primitives rustls' own aws-lc-rs ticketer uses, from the same library.

use std::fmt;
use std::path::Path;

use aws_lc_rs::cipher::{
    DecryptionContext, PaddedBlockDecryptingKey, PaddedBlockEncryptingKey, UnboundCipherKey,
    AES_256, AES_CBC_IV_LEN,
};
use aws_lc_rs::{hmac, iv::FixedLength};
use base64::Engine as _;

use crate::TlsError;

/// Bytes in one key as written in the file (after base64 decoding).
pub(crate) const KEY_LEN: usize = 80;
const NAME_LEN: usize = 16;
const TAG_LEN: usize = 32;
/// Longer tickets are rejected before any MAC work: postern's own are a few hundred bytes
/// (the session state, SNI name and ALPN of one connection), and the ticket is client input.
const MAX_TICKET_LEN: usize = 4096;

/// One ticket key. Its secret parts never leave this struct (no `Debug` of them).
#[derive(Clone)]
pub(crate) struct TicketKey {
    name: [u8; NAME_LEN],
    hmac: hmac::Key,
    aes: [u8; 32],
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKey")
            .field("name", &hex(&self.name))
            .finish_non_exhaustive()
    }
}

impl TicketKey {
    pub(crate) fn from_bytes(bytes: &[u8; KEY_LEN]) -> TicketKey {
        let mut name = [0; NAME_LEN];
        name.copy_from_slice(&bytes[..NAME_LEN]);
        let mut aes = [0; 32];
        aes.copy_from_slice(&bytes[48..]);
        TicketKey {
            name,
            hmac: hmac::Key::new(hmac::HMAC_SHA256, &bytes[NAME_LEN..48]),
            aes,
        }
    }

    /// A fresh key from the system's random generator (per-process keys without a file).
    pub(crate) fn random() -> Result<TicketKey, TlsError> {
        let mut bytes = [0; KEY_LEN];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| TlsError::TicketRandom)?;
        Ok(TicketKey::from_bytes(&bytes))
    }

    /// The key name as lower-case hex (for log lines: identifies a key, reveals nothing).
    pub(crate) fn name_hex(&self) -> String {
        hex(&self.name)
    }

    /// Whether `ticket` claims to be sealed with this key.
    pub(crate) fn names(&self, ticket: &[u8]) -> bool {
        ticket.get(..NAME_LEN) == Some(&self.name[..])
    }

    /// Encrypts and authenticates `plain` (a fresh random IV each time).
    pub(crate) fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let key = UnboundCipherKey::new(&AES_256, &self.aes).ok()?;
        let key = PaddedBlockEncryptingKey::cbc_pkcs7(key).ok()?;
        let mut state = plain.to_vec();
        let context = key.encrypt(&mut state).ok()?;
        let iv: &[u8] = (&context).try_into().ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + iv.len() + state.len() + TAG_LEN);
        out.extend_from_slice(&self.name);
        out.extend_from_slice(iv);
        out.extend_from_slice(&state);
        let tag = hmac::sign(&self.hmac, &out);
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    /// Checks the MAC (constant time), then decrypts. `None` for anything not sealed by this
    /// key: wrong name, wrong length, tampered bytes, bad padding.
    pub(crate) fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() > MAX_TICKET_LEN || !self.names(ticket) {
            return None;
        }
        let mac_at = ticket.len().checked_sub(TAG_LEN)?;
        let (signed, tag) = ticket.split_at(mac_at);
        let body = signed.get(NAME_LEN + AES_CBC_IV_LEN..)?;
        if body.is_empty() || body.len() % AES_CBC_IV_LEN != 0 {
            return None;
        }
        hmac::verify(&self.hmac, signed, tag).ok()?;
        let iv: [u8; AES_CBC_IV_LEN] = signed[NAME_LEN..NAME_LEN + AES_CBC_IV_LEN]
            .try_into()
            .ok()?;
        let key = UnboundCipherKey::new(&AES_256, &self.aes).ok()?;
        let key = PaddedBlockDecryptingKey::cbc_pkcs7(key).ok()?;
        let mut state = body.to_vec();
        let plain = key
            .decrypt(&mut state, DecryptionContext::Iv128(FixedLength::from(iv)))
            .ok()?;
        let len = plain.len();
        state.truncate(len);
        Some(state)
    }
}

/// Parses a key file's text: one base64 key of 80 bytes per line; blank lines and lines
/// starting with `#` are skipped. At least one key; every bad line is an error naming the
/// file and the line (a half-written rotation must not silently drop keys).
pub(crate) fn parse(path: &Path, text: &str) -> Result<Vec<TicketKey>, TlsError> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |problem: String| TlsError::TicketKeyLine {
            path: path.to_path_buf(),
            line: i + 1,
            problem,
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(line)
            .map_err(|e| bad(format!("not base64 ({e})")))?;
        let bytes: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            bad(format!(
                "{} bytes after base64 decoding, a key is {KEY_LEN}",
                bytes.len()
            ))
        })?;
        let key = TicketKey::from_bytes(&bytes);
        if keys.iter().any(|k: &TicketKey| k.name == key.name) {
            return Err(bad(
                "the same key name (first 16 bytes) as an earlier line".into()
            ));
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(TlsError::TicketKeyEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(keys)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::expect_used)]
pub(crate) mod tests {
    use super::*;

    /// A key file line for tests: 80 bytes of `seed`, varied per position.
    pub(crate) fn key_line(seed: u8) -> String {
        let bytes: Vec<u8> = (0..KEY_LEN as u8)
            .map(|i| i.wrapping_mul(7) ^ seed)
            .collect();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn key(seed: u8) -> TicketKey {
        let text = key_line(seed);
        parse(Path::new("t"), &text)
            .ok()
            .and_then(|mut k| k.pop())
            .expect("valid test key")
    }

    #[test]
    fn seal_then_open_round_trips() {
        let k = key(1);
        for len in [0, 1, 15, 16, 17, 300] {
            let plain = vec![0xa5; len];
            let ticket = k.seal(&plain).expect("sealed");
            assert!(k.names(&ticket));
            assert_eq!(k.open(&ticket), Some(plain));
        }
    }

    #[test]
    fn each_seal_uses_a_fresh_iv() {
        let k = key(1);
        assert_ne!(k.seal(b"same"), k.seal(b"same"));
    }

    #[test]
    fn tampered_or_foreign_tickets_do_not_open() {
        let k = key(1);
        let ticket = k.seal(b"session state").expect("sealed");
        for i in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 0x01;
            assert_eq!(k.open(&bad), None, "flipped byte {i} opened");
        }
        assert_eq!(k.open(&ticket[..ticket.len() - 1]), None);
        assert_eq!(k.open(&ticket[..20]), None);
        assert_eq!(k.open(b""), None);
        assert_eq!(k.open(&vec![0; MAX_TICKET_LEN + 1]), None);
        assert_eq!(key(2).open(&ticket), None);
    }

    #[test]
    fn parse_skips_comments_and_blank_lines() {
        let text = format!(
            "# rotated 2026-11-27\n\n{}\n  {}  \n",
            key_line(1),
            key_line(2)
        );
        let keys = parse(Path::new("/etc/postern/tickets"), &text).expect("parsed");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].name_hex(), key(1).name_hex());
    }

    #[test]
    fn bad_lines_name_the_file_and_line() {
        let path = Path::new("/etc/postern/tickets");
        let short = base64::engine::general_purpose::STANDARD.encode([0u8; 48]);
        let cases = [
            (format!("{}\nnot base64!\n", key_line(1)), 2, "not base64"),
            (
                format!("# c\n{short}\n"),
                2,
                "48 bytes after base64 decoding, a key is 80",
            ),
            (
                format!("{}\n{}\n", key_line(1), key_line(1)),
                2,
                "same key name",
            ),
        ];
        for (text, line, words) in cases {
            let err = parse(path, &text).expect_err("bad line accepted");
            let msg = err.to_string();
            assert!(
                matches!(err, TlsError::TicketKeyLine { line: l, .. } if l == line),
                "{msg}"
            );
            assert!(msg.contains("/etc/postern/tickets"), "{msg}");
            assert!(msg.contains(&format!("line {line}")), "{msg}");
            assert!(msg.contains(words), "{msg}");
        }
        let err = parse(path, "# nothing\n\n").expect_err("empty accepted");
        assert!(err.to_string().contains("/etc/postern/tickets"), "{err}");
    }
}
