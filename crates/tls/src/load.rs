//! Reading and validating one certificate/key pair: PEM sections, key formats, encrypted keys,
//! key/certificate match, permissions, and the facts logged and exported about the leaf.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use postern_config::KeyPermissions;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject, SectionKind};
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::TlsError;

/// Where one certificate (and its key) lives on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Source {
    pub(crate) cert: PathBuf,
    /// `None`: the key is in `cert` (combined file).
    pub(crate) key: Option<PathBuf>,
    /// Who put the files there.
    pub(crate) kind: SourceKind,
}

/// Where a certificate comes from; postern's own files are never watched for changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SourceKind {
    /// A `[[tls.certificate]]` entry.
    Configured,
    /// The pair postern generated in its state directory.
    SelfSigned,
    /// The certificate postern obtained from the ACME CA (`state_dir/acme/`).
    Acme,
}

impl Source {
    /// The self-signed pair postern generated.
    pub(crate) fn self_signed(&self) -> bool {
        self.kind == SourceKind::SelfSigned
    }

    /// The file that holds the private key.
    pub(crate) fn key_file(&self) -> &Path {
        self.key.as_deref().unwrap_or(&self.cert)
    }
}

/// The raw bytes of one source, read in one go so a reload compares and parses the same bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Files {
    pub(crate) cert: Vec<u8>,
    pub(crate) key: Option<Vec<u8>>,
    /// Permission bits of the key file (following symlinks, as Kubernetes uses them).
    pub(crate) key_mode: u32,
    /// Owner uid of the key file, for the permission message.
    pub(crate) key_owner: u32,
}

/// Reads a source's files. A missing file is an error, never a reason to fall back.
pub(crate) fn read_files(source: &Source) -> Result<Files, TlsError> {
    let cert = read_file("certificate", &source.cert)?;
    let key = match &source.key {
        Some(path) => Some(read_file("private key", path)?),
        None => None,
    };
    let key_file = source.key_file();
    let meta = fs::metadata(key_file).map_err(|e| TlsError::read("private key", key_file, e))?;
    Ok(Files {
        cert,
        key,
        key_mode: meta.permissions().mode() & 0o7777,
        key_owner: meta.uid(),
    })
}

pub(crate) fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let bytes = fs::read(path).map_err(|e| TlsError::read(what, path, e))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// One validated certificate with what is logged and exported about it.
#[derive(Clone, Debug)]
pub(crate) struct Loaded {
    pub(crate) source: Source,
    pub(crate) certified: Arc<CertifiedKey>,
    pub(crate) info: CertInfo,
}

/// Facts about a leaf certificate.
#[derive(Clone, Debug)]
pub(crate) struct CertInfo {
    pub(crate) subject: String,
    pub(crate) issuer: String,
    /// DNS names, lower-case, as they appear (wildcards keep their `*.`).
    pub(crate) dns_names: Vec<String>,
    /// IP address SANs, printed.
    pub(crate) ip_names: Vec<String>,
    /// The subject CN when the certificate has no SAN extension (legacy certificates).
    pub(crate) cn_fallback: Option<String>,
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    pub(crate) self_signed: bool,
    pub(crate) key_type: String,
}

impl CertInfo {
    /// The metric label: the first SAN (the `certificate` label, docs/metrics.md), else the CN.
    pub(crate) fn name(&self) -> String {
        self.dns_names
            .first()
            .or(self.ip_names.first())
            .or(self.cn_fallback.as_ref())
            .cloned()
            .unwrap_or_else(|| self.subject.clone())
    }

    /// Names clients can reach this certificate under (for SNI and log lines).
    pub(crate) fn all_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.dns_names.clone();
        names.extend(self.ip_names.iter().cloned());
        if names.is_empty() {
            names.extend(self.cn_fallback.iter().cloned());
        }
        names
    }

    /// Validity warnings for a served certificate (it is still served: an admin must not lose
    /// mail access over a clock). For postern's own ACME certificate the advice is postern's
    /// renewal, and nearing the end is no warning: the ACME task renews it and logs failures.
    pub(crate) fn validity_warnings(&self, file: &Path, now: i64, kind: SourceKind) -> Vec<String> {
        let mut out = Vec::new();
        let file = file.display();
        if kind == SourceKind::Acme && now > self.not_after {
            out.push(format!(
                "ACME certificate {file} expired on {}; it is still served but clients will reject it: its renewal has been failing, see the `ACME order failed` lines for the CA's reason",
                format_time(self.not_after)
            ));
        } else if kind == SourceKind::Acme {
        } else if now > self.not_after {
            out.push(format!(
                "certificate {file} expired on {} ({} days ago); it is still served but clients will reject it: renew it (certbot renew) or replace the file; postern picks up the new one without a restart",
                format_time(self.not_after),
                (now - self.not_after) / 86_400
            ));
        } else if self.not_after - now < crate::EXPIRY_WARNING.as_secs() as i64 {
            out.push(format!(
                "certificate {file} expires on {} (in {} days); renew it soon (certbot renew); postern picks up the new one without a restart",
                format_time(self.not_after),
                (self.not_after - now) / 86_400
            ));
        }
        if now < self.not_before {
            out.push(format!(
                "certificate {file} is not valid before {}; it is still served, but check this machine's clock (timedatectl) or the certificate's issue date",
                format_time(self.not_before)
            ));
        }
        out
    }
}

/// Parses, matches and checks one source. Returns the certificate and its warnings.
pub(crate) fn load(
    source: &Source,
    files: &Files,
    policy: KeyPermissions,
    provider: &CryptoProvider,
) -> Result<(Loaded, Vec<String>), TlsError> {
    let chain = parse_chain(&source.cert, &files.cert)?;
    let info = cert_info(&source.cert, &chain)?;
    let key_path = source.key_file();
    let key_bytes = files.key.as_deref().unwrap_or(&files.cert);
    let Some((key, _format)) = parse_key(key_path, key_bytes)? else {
        return Err(TlsError::NoKey {
            path: key_path.to_path_buf(),
            cert: source.cert.clone(),
        });
    };
    let mut warnings = Vec::new();
    if let Some(warning) = permission_problem(key_path, files.key_mode, files.key_owner) {
        match policy {
            KeyPermissions::Strict => {
                return Err(TlsError::KeyPermissions {
                    path: key_path.to_path_buf(),
                    mode: files.key_mode,
                    owner: user_name(files.key_owner),
                })
            }
            KeyPermissions::Warn => warnings.push(warning),
        }
    }
    let certified = certify(chain, key, &source.cert, key_path, provider)?;
    warnings.extend(info.validity_warnings(&source.cert, unix_now(), source.kind));
    warnings.extend(chain_order_warning(&source.cert, &certified.cert));
    Ok((
        Loaded {
            source: source.clone(),
            certified: Arc::new(certified),
            info,
        },
        warnings,
    ))
}

/// Every certificate in a PEM file, leaf first.
pub(crate) fn parse_chain(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    if looks_like_der(bytes) {
        return Err(TlsError::Der {
            path: path.to_path_buf(),
        });
    }
    let mut chain = Vec::new();
    for section in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(bytes) {
        let (kind, der) = section.map_err(|e| pem_error(path, e))?;
        if kind == SectionKind::Certificate {
            chain.push(CertificateDer::from(der));
        }
    }
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    for (i, der) in chain.iter().enumerate() {
        X509Certificate::from_der(der).map_err(|e| TlsError::BadCertificate {
            path: path.to_path_buf(),
            index: i + 1,
            source: e.into(),
        })?;
    }
    Ok(chain)
}

/// Each certificate should be issued by the next one; a reversed chain fails in clients.
pub(crate) fn chain_order_warning(path: &Path, chain: &[CertificateDer<'_>]) -> Option<String> {
    let parsed: Vec<X509Certificate<'_>> = chain
        .iter()
        .filter_map(|der| X509Certificate::from_der(der).ok().map(|(_, c)| c))
        .collect();
    for (i, pair) in parsed.windows(2).enumerate() {
        if pair[0].issuer().as_raw() != pair[1].subject().as_raw() {
            return Some(format!(
                "certificate #{} in {} was not issued by certificate #{}: the chain is out of order or holds an unrelated certificate; put the leaf first, then its issuer, then that one's issuer",
                i + 1,
                path.display(),
                i + 2
            ));
        }
    }
    None
}

/// The PEM label a key was found under, for `cert inspect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyFormat {
    Pkcs1,
    Pkcs8,
    Sec1,
}

impl KeyFormat {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            KeyFormat::Pkcs1 => "PKCS#1 (BEGIN RSA PRIVATE KEY)",
            KeyFormat::Pkcs8 => "PKCS#8 (BEGIN PRIVATE KEY)",
            KeyFormat::Sec1 => "SEC1 (BEGIN EC PRIVATE KEY)",
        }
    }
}

/// The first private key in a PEM file, `None` when there is none. An encrypted key is an
/// error that says how to decrypt it.
pub(crate) fn parse_key(
    path: &Path,
    bytes: &[u8],
) -> Result<Option<(PrivateKeyDer<'static>, KeyFormat)>, TlsError> {
    // Checked before PEM parsing: the `Proc-Type`/`DEK-Info` headers of an encrypted PKCS#1
    // key are not base64 and would otherwise surface as a confusing "invalid PEM".
    if contains(bytes, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        let p = path.display();
        return Err(TlsError::EncryptedKey {
            path: path.to_path_buf(),
            command: format!("`openssl pkey -in {p} -out {p}.unencrypted`"),
        });
    }
    if contains(bytes, b"Proc-Type: 4,ENCRYPTED") {
        let p = path.display();
        return Err(TlsError::EncryptedKey {
            path: path.to_path_buf(),
            command: format!(
                "`openssl rsa -in {p} -out {p}.unencrypted` (an old-style PKCS#1 key; `openssl pkey -in {p} -out {p}.unencrypted` works too)"
            ),
        });
    }
    for section in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(bytes) {
        let (kind, der) = section.map_err(|e| pem_error(path, e))?;
        let key = match kind {
            SectionKind::RsaPrivateKey => (
                PrivateKeyDer::from(PrivatePkcs1KeyDer::from(der)),
                KeyFormat::Pkcs1,
            ),
            SectionKind::PrivateKey => (
                PrivateKeyDer::from(PrivatePkcs8KeyDer::from(der)),
                KeyFormat::Pkcs8,
            ),
            SectionKind::EcPrivateKey => (
                PrivateKeyDer::from(PrivateSec1KeyDer::from(der)),
                KeyFormat::Sec1,
            ),
            _ => continue,
        };
        return Ok(Some(key));
    }
    Ok(None)
}

/// Loads the key with the provider and checks it belongs to the leaf (SPKI comparison).
pub(crate) fn certify(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::UnsupportedKey {
                path: key_path.to_path_buf(),
                source: e,
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // "Unknown" means the provider cannot export the public key; rustls itself accepts that.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(_) => Err(TlsError::KeyMismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
        }),
    }
}

/// Facts about the leaf (the first certificate of a chain that `parse_chain` accepted).
pub(crate) fn cert_info(path: &Path, chain: &[CertificateDer<'_>]) -> Result<CertInfo, TlsError> {
    let bad = |source: x509_parser::error::X509Error| TlsError::BadCertificate {
        path: path.to_path_buf(),
        index: 1,
        source,
    };
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    };
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| bad(e.into()))?;
    let mut dns_names = Vec::new();
    let mut ip_names = Vec::new();
    let san = cert.subject_alternative_name().map_err(bad)?;
    if let Some(san) = &san {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => dns_names.push(normalize_name(dns)),
                GeneralName::IPAddress(bytes) => ip_names.extend(format_ip(bytes)),
                _ => {}
            }
        }
    }
    let cn_fallback = if san.is_none() {
        cert.subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(normalize_name)
    } else {
        None
    };
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        dns_names,
        ip_names,
        cn_fallback,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        self_signed: cert.subject().as_raw() == cert.issuer().as_raw(),
        key_type: key_type(&cert),
    })
}

/// The warning for a key readable or writable by group or others, `None` when private.
pub(crate) fn permission_problem(path: &Path, mode: u32, owner: u32) -> Option<String> {
    if mode & 0o077 == 0 {
        return None;
    }
    let p = path.display();
    let owner = user_name(owner);
    Some(format!(
        "private key {p} (owner {owner}) has mode {mode:04o}: group or others can read or write it; run `chmod 600 {p}`, and if postern runs as a user other than {owner}, also `chown <that user> {p}` so it can still read the key on reload (Kubernetes: a Secret volume with fsGroup is always group-readable; keep key_permissions = \"warn\" there, see deploy/README.md); tls.key_permissions = \"strict\" refuses such a key"
    ))
}

/// The user name for a uid, else the number.
pub(crate) fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => uid.to_string(),
    }
}

/// SNI and SAN names compare case-insensitively; a trailing dot is the same name.
pub(crate) fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `2026-11-27 09:49:23 UTC`
pub(crate) fn format_time(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("@{unix}"),
    }
}

fn key_type(cert: &X509Certificate<'_>) -> String {
    let spki = cert.public_key();
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => format!("RSA {} bits", rsa.key_size()),
        Ok(PublicKey::EC(point)) => match point.key_size() {
            256 => "ECDSA P-256".to_owned(),
            384 => "ECDSA P-384".to_owned(),
            521 => "ECDSA P-521".to_owned(),
            bits => format!("ECDSA {bits} bits"),
        },
        _ => match spki.algorithm.algorithm.to_id_string().as_str() {
            "1.3.101.112" => "Ed25519".to_owned(),
            "1.3.101.113" => "Ed448".to_owned(),
            other => format!("unknown ({other})"),
        },
    }
}

fn format_ip(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => {
            let a: [u8; 4] = bytes.try_into().ok()?;
            Some(std::net::Ipv4Addr::from(a).to_string())
        }
        16 => {
            let a: [u8; 16] = bytes.try_into().ok()?;
            Some(std::net::Ipv6Addr::from(a).to_string())
        }
        _ => None,
    }
}

fn pem_error(path: &Path, e: pem::Error) -> TlsError {
    let reason = match e {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!(
                "the `-----END {}-----` line is missing",
                String::from_utf8_lossy(&end_marker)
            )
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("malformed line `{}`", String::from_utf8_lossy(&line))
        }
        pem::Error::Base64Decode(why) => format!("damaged base64 ({why})"),
        other => other.to_string(),
    };
    TlsError::Pem {
        path: path.to_path_buf(),
        reason,
    }
}

fn looks_like_der(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x30) && bytes.iter().take(64).any(|b| !b.is_ascii())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
