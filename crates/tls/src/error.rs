//! The one error type of this crate. Every message names the file and says what to do.
//!
//! A variant caused by another error keeps it as `#[source]`; where the message also quotes
//! it (`({source})`), [`postern_metrics::ErrorChain`] prints it once.

use std::io;
use std::path::PathBuf;

/// Why certificates could not be loaded, generated or watched.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read (missing, permission denied, ...).
    #[error("cannot read {what} file {path}: {hint}")]
    Read {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file as configured.
        path: PathBuf,
        /// What to do, chosen from the I/O error kind.
        hint: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The file exists but holds nothing.
    #[error("{what} file {path} is empty; it was probably truncated while being copied or renewed: copy it again from your CA or ACME client (e.g. certbot's live/ directory)")]
    Empty {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },

    /// The PEM text is damaged (missing END line, bad base64).
    #[error("{path} is not valid PEM ({reason}); the file looks truncated or edited: copy it again from your CA or ACME client")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser objected to.
        reason: String,
    },

    /// Binary DER where PEM text is expected.
    #[error("{path} is binary DER, not PEM text; convert it with `openssl x509 -inform der -in {path} -out {path}.pem` (a key: `openssl pkey -inform der -in KEY -out KEY.pem`) and point the setting at the .pem file")]
    Der {
        /// The file.
        path: PathBuf,
    },

    /// No `-----BEGIN CERTIFICATE-----` block.
    #[error("no certificate in {path}: expected a PEM block `-----BEGIN CERTIFICATE-----` (leaf first, then intermediates); point `cert` at the fullchain file (certbot: fullchain.pem, Kubernetes: tls.crt)")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },

    /// A certificate block that is not a valid X.509 certificate.
    #[error("certificate #{index} in {path} cannot be parsed ({source}); the file is damaged or is not an X.509 certificate: copy it again from your CA")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// 1-based position of the certificate in the file.
        index: usize,
        /// The parser's complaint.
        #[source]
        source: x509_parser::error::X509Error,
    },

    /// No private key in the key file (or in the combined file when `key` is unset).
    #[error("no private key found in {path}; set `key = \"/path/to/privkey.pem\"` in its [[tls.certificate]] entry or append the key to {cert}")]
    NoKey {
        /// Where postern looked for the key.
        path: PathBuf,
        /// The certificate file the key belongs to.
        cert: PathBuf,
    },

    /// The key is protected by a passphrase.
    #[error("private key {path} is encrypted (passphrase-protected); postern needs it unencrypted because it reloads certificates without anyone at a prompt. Decrypt it with {command}, point `key` at the new file and protect it with `chmod 600`")]
    EncryptedKey {
        /// The key file.
        path: PathBuf,
        /// The openssl command (in backticks) that writes an unencrypted copy.
        command: String,
    },

    /// The key parses as PEM but the crypto provider cannot use it.
    #[error("private key in {path} is not usable ({source}); postern accepts RSA (2048 bits or more), ECDSA P-256/P-384 and Ed25519 keys in PKCS#8, PKCS#1 or SEC1 PEM: convert it with `openssl pkey -in {path} -out {path}.pkcs8`")]
    UnsupportedKey {
        /// The key file.
        path: PathBuf,
        /// The provider's complaint.
        #[source]
        source: rustls::Error,
    },

    /// The key does not belong to the certificate.
    #[error("private key {key} does not match certificate {cert} (their public keys differ); use the key that was generated with this certificate's request (certbot: privkey.pem next to fullchain.pem) or the certificate issued for this key")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },

    /// `key_permissions = "strict"` and the key is readable/writable by group or others.
    #[error("private key {path} (owner {owner}) has mode {mode:04o}: group or others can read or write it, and tls.key_permissions = \"strict\" refuses it; run `chmod 600 {path}`, and if postern runs as a user other than {owner}, also `chown <that user> {path}` so it can still read the key on reload (Kubernetes: a Secret volume with fsGroup is always group-readable; keep key_permissions = \"warn\" there, see deploy/README.md); or set tls.key_permissions = \"warn\"")]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Its owner (user name, or uid when unknown).
        owner: String,
    },

    /// The self-signed certificate in the state directory could not be created or stored.
    #[error("cannot create the self-signed certificate in {dir}: {source}; make the directory writable by postern, set server.state_dir to a writable directory, or configure [[tls.certificate]]")]
    SelfSigned {
        /// The directory.
        dir: PathBuf,
        /// What went wrong: the directory could not be created (`io::Error`) or the pair not
        /// written (`TlsError`).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// Only one file of the self-signed pair is in the state directory.
    #[error("cannot create the self-signed certificate in {dir}: only one of {cert_file} and {key_file} exists; delete {dir} so postern generates a new pair")]
    SelfSignedHalfPair {
        /// The directory.
        dir: PathBuf,
        /// The certificate's file name.
        cert_file: &'static str,
        /// The key's file name.
        key_file: &'static str,
    },

    /// A file could not be written (certificate generation).
    #[error("cannot write {path}: {hint}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What to do.
        hint: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Certificate generation failed.
    #[error("cannot generate a {key_type} certificate for {names:?}: {source}; use names that are valid DNS names or IP addresses (e.g. --name mail.example.com), or --key-type ecdsa-p256")]
    Generate {
        /// The requested names.
        names: Vec<String>,
        /// The requested key type.
        key_type: &'static str,
        /// rcgen's complaint.
        #[source]
        source: rcgen::Error,
    },

    /// `cert generate` was asked for something it cannot make.
    #[error("cannot generate a {key_type} certificate for {names:?}: {problem}; use names that are valid DNS names or IP addresses (e.g. --name mail.example.com), or --key-type ecdsa-p256")]
    GenerateUsage {
        /// The requested names.
        names: Vec<String>,
        /// The requested key type.
        key_type: &'static str,
        /// What is wrong with the request (`no name given`, `--days must be at least 1`).
        problem: &'static str,
    },

    /// The file watcher could not be set up.
    #[error("cannot watch {path} for certificate changes ({source}); raise fs.inotify.max_user_watches / max_user_instances, or set tls.watch = false and restart postern after each renewal")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// notify's complaint.
        #[source]
        source: notify::Error,
    },

    /// The crypto provider rejected the configured protocol versions (a build problem).
    #[error("the TLS library rejected tls.min_version ({source}); set tls.min_version = \"1.2\" or \"1.3\" and report this as a bug")]
    Provider {
        /// rustls's complaint.
        #[source]
        source: rustls::Error,
    },

    /// `spawn_watcher` was called outside a tokio runtime.
    #[error("the certificate watcher must be started from inside a tokio runtime")]
    NoRuntime,

    /// `tls.ticket_key_file` could not be read.
    #[error("cannot read session ticket key file {path}: check that it exists and is readable by postern's user (create it with one `openssl rand -base64 80` line per key), or remove `ticket_key_file` to let each process make its own keys")]
    TicketKeyRead {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A line of `tls.ticket_key_file` is not a key.
    #[error("{path} line {line}: {problem}; each line must be one key, the base64 of 80 random bytes (`openssl rand -base64 80`)")]
    TicketKeyLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        problem: String,
    },

    /// `tls.ticket_key_file` holds no key.
    #[error("session ticket key file {path} holds no key; add one line `openssl rand -base64 80` prints (the first line seals new tickets, every line opens old ones)")]
    TicketKeyEmpty {
        /// The file.
        path: PathBuf,
    },

    /// The system random generator failed while making a ticket key.
    #[error("the system random number generator failed while making a session ticket key; check /dev/urandom and the getrandom system call")]
    TicketRandom,
}

impl TlsError {
    pub(crate) fn read(what: &'static str, path: &std::path::Path, source: io::Error) -> Self {
        let hint = match source.kind() {
            io::ErrorKind::NotFound => {
                "the file does not exist; fix the path in [[tls.certificate]] or create the file \
                 (`postern cert generate --name HOST --out DIR` makes a self-signed pair); a configured \
                 file is never replaced by a self-signed certificate"
            }
            io::ErrorKind::PermissionDenied => {
                "permission denied; make the file (and every directory above it) readable by the user \
                 postern runs as, e.g. `chown root:postern FILE && chmod 640 FILE` for a certificate, \
                 `chown postern FILE && chmod 600 FILE` for a key"
            }
            io::ErrorKind::IsADirectory => {
                "it is a directory; point the setting at the PEM file inside it"
            }
            _ => "check that the path names a readable regular file",
        };
        TlsError::Read {
            what,
            path: path.to_path_buf(),
            hint,
            source,
        }
    }

    pub(crate) fn write(path: &std::path::Path, source: io::Error) -> Self {
        let hint = match source.kind() {
            io::ErrorKind::PermissionDenied => {
                "permission denied; choose a directory you can write (--out DIR) or run as its owner"
            }
            io::ErrorKind::NotFound => "the directory does not exist; create it or choose another --out DIR",
            _ => "check that the directory exists, is writable and the disk is not full",
        };
        TlsError::Write {
            path: path.to_path_buf(),
            hint,
            source,
        }
    }

    /// The message and every source on one line ([`postern_metrics::ErrorChain`], the
    /// workspace's one formatter), for log lines, which show no chain.
    pub fn chain(&self) -> String {
        postern_metrics::ErrorChain(self).to_string()
    }
}
