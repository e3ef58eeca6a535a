//! `[tls]`: certificates, versions, session tickets, ACME; and the TLS mode shared by
//! listeners and backends.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `[tls]`
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// Lowest TLS version accepted.
    pub min_version: TlsVersion,
    /// Deadline for the TLS handshake.
    pub handshake_timeout: Duration,
    /// What to do with a private key readable or writable by group/others.
    pub key_permissions: KeyPermissions,
    /// Reload certificates when their files change.
    pub watch: bool,
    /// `[[tls.certificate]]`; empty means "generate a self-signed certificate in state_dir".
    /// The first entry is the default for clients that send no (or an unknown) SNI name.
    pub certificates: Vec<CertificateConfig>,
    /// `ticket_key_file`: session-ticket keys shared by all replicas, one base64 key of
    /// 80 bytes per line (the first seals, all open); `None` = per-process random keys.
    /// The file existed at validation; its contents are the tls crate's to check.
    pub ticket_key_file: Option<PathBuf>,
    /// `[tls.acme]`; `None` when the table is absent (ACME off).
    pub acme: Option<AcmeConfig>,
}

/// `[tls.acme]`: one certificate for `domains`, obtained and renewed from an RFC 8555 CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The names of the certificate, lower case, unique, valid DNS names (no wildcard:
    /// that needs dns-01), in file order; the first is the certificate's subject.
    pub domains: Vec<String>,
    /// Account contact URLs (`mailto:...`), possibly empty.
    pub contact: Vec<String>,
    /// The CA's directory URL (https). Default: Let's Encrypt's production directory.
    pub directory: String,
    /// How the CA validates that postern controls the names.
    pub challenge: AcmeChallenge,
    /// Where postern answers the CA's validation connections. Default: `[::]:443` and
    /// `0.0.0.0:443` for tls-alpn-01, port 80 for http-01. Never overlaps a listener or
    /// the admin address.
    pub challenge_listen: Vec<SocketAddr>,
    /// PEM bundle that verifies the ACME server itself; `None` = the system roots.
    pub ca_roots: Option<PathBuf>,
    /// Renew when the certificate has less than this left (default 30 days).
    pub renew_before: Duration,
    /// Where the account key and the certificate are kept: `state_dir/acme`.
    pub store: PathBuf,
}

/// An ACME challenge type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// RFC 8737: the CA connects to port 443 with ALPN `acme-tls/1`.
    TlsAlpn01,
    /// RFC 8555 §8.3: the CA fetches `http://NAME/.well-known/acme-challenge/TOKEN` on port 80.
    Http01,
}

impl AcmeChallenge {
    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
            AcmeChallenge::Http01 => "http-01",
        }
    }

    /// The port the CA connects to, and so the port of the default `challenge_listen`.
    pub const fn port(self) -> u16 {
        match self {
            AcmeChallenge::TlsAlpn01 => 443,
            AcmeChallenge::Http01 => 80,
        }
    }
}

/// Lowest accepted TLS version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

/// Key file permission policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyPermissions {
    /// Log one warning naming the file, its mode and the fix.
    Warn,
    /// Refuse the key (at start: exit; on reload: keep the old one).
    Strict,
}

/// One `[[tls.certificate]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateConfig {
    /// PEM chain, leaf first; may also hold the key (stunnel-style combined file).
    pub cert: PathBuf,
    /// PEM private key; `None` when `cert` holds the key.
    pub key: Option<PathBuf>,
}

/// How TLS starts on a listener (and, in [`crate::BackendTls`], towards a backend server).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// TLS from the first byte (993, 995, 465).
    Implicit,
    /// Plaintext greeting, then STARTTLS / STLS (143, 110, 587); towards a backend: IMAP
    /// STARTTLS, POP3 STLS or SMTP STARTTLS after its greeting.
    Starttls,
}

impl TlsMode {
    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            TlsMode::Implicit => "implicit",
            TlsMode::Starttls => "starttls",
        }
    }
}
