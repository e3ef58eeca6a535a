//! `postern cert inspect`: everything an admin needs to know about a certificate file (and
//! its key) before pointing postern at it, with the fix for every problem.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::load::{self, KeyFormat};
use crate::TlsError;

/// What `inspect` found.
#[derive(Debug)]
pub struct Report {
    /// postern can serve this pair (warnings allowed, no problems).
    pub usable: bool,
    /// The certificate file.
    pub cert: PathBuf,
    /// The key file, when one was given or the key sits in the certificate file.
    pub key: Option<PathBuf>,
    /// Leaf subject, e.g. `CN=mail.example.com`.
    pub subject: Option<String>,
    /// Leaf issuer.
    pub issuer: Option<String>,
    /// DNS and IP SANs (lower-case).
    pub sans: Vec<String>,
    /// Validity start, seconds since the Unix epoch.
    pub not_before: Option<i64>,
    /// Validity end, seconds since the Unix epoch.
    pub not_after: Option<i64>,
    /// Certificates in the file (leaf plus intermediates).
    pub chain_len: usize,
    /// The leaf's public key type, e.g. `ECDSA P-256`.
    pub key_type: Option<String>,
    /// The PEM format the key was found in.
    pub key_format: Option<&'static str>,
    /// Whether the key belongs to the certificate (`None`: not checked, no usable key).
    pub key_matches: Option<bool>,
    /// Problems that make the pair unusable, each with its fix.
    pub problems: Vec<String>,
    /// Things postern accepts but an admin should fix, each with its fix.
    pub warnings: Vec<String>,
}

/// Inspects a certificate file and its key (`key`, else a key inside `cert`). Never fails:
/// every problem is in the report.
pub fn inspect(cert: &Path, key: Option<&Path>) -> Report {
    let mut report = Report {
        usable: false,
        cert: cert.to_path_buf(),
        key: key.map(Path::to_path_buf),
        subject: None,
        issuer: None,
        sans: Vec::new(),
        not_before: None,
        not_after: None,
        chain_len: 0,
        key_type: None,
        key_format: None,
        key_matches: None,
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    let Some(chain) = read_chain(&mut report) else {
        return report;
    };
    inspect_key(&mut report, chain);
    report.usable = report.problems.is_empty();
    report
}

fn read_chain(report: &mut Report) -> Option<Vec<rustls_pki_types::CertificateDer<'static>>> {
    let cert = report.cert.clone();
    let result = load::read_file("certificate", &cert)
        .and_then(|bytes| load::parse_chain(&cert, &bytes))
        .and_then(|chain| load::cert_info(&cert, &chain).map(|info| (chain, info)));
    let (chain, info) = match result {
        Ok(ok) => ok,
        Err(error) => {
            report.problems.push(error.to_string());
            return None;
        }
    };
    report.subject = Some(info.subject.clone());
    report.issuer = Some(info.issuer.clone());
    report.sans = info.all_names();
    report.not_before = Some(info.not_before);
    report.not_after = Some(info.not_after);
    report.chain_len = chain.len();
    report.key_type = Some(info.key_type.clone());
    // postern's own ACME certificate (`state_dir/acme/`) gets postern's advice, not certbot's.
    let kind = if crate::acme::is_acme_certificate(&cert) {
        load::SourceKind::Acme
    } else {
        load::SourceKind::Configured
    };
    report
        .warnings
        .extend(info.validity_warnings(&cert, load::unix_now(), kind));
    if info.dns_names.is_empty() && info.ip_names.is_empty() {
        report.warnings.push(format!(
            "{} has no subjectAltName; current clients ignore the CN and will reject it: reissue it with the host names as SANs (postern cert generate --name HOST)",
            cert.display()
        ));
    }
    if info.self_signed {
        report.warnings.push(format!(
            "{} is self-signed: mail clients will warn or refuse unless they trust it explicitly; use a certificate from your CA or ACME client for production",
            cert.display()
        ));
    } else if chain.len() == 1 {
        report.warnings.push(format!(
            "{} holds only the leaf certificate, no intermediates: clients that lack them cannot verify it; use the full chain (certbot: fullchain.pem, not cert.pem)",
            cert.display()
        ));
    }
    if let Some(warning) = load::chain_order_warning(&cert, &chain) {
        report.warnings.push(warning);
    }
    Some(chain)
}

fn inspect_key(report: &mut Report, chain: Vec<rustls_pki_types::CertificateDer<'static>>) {
    let key_path = report.key.clone().unwrap_or_else(|| report.cert.clone());
    let bytes = match load::read_file("private key", &key_path) {
        Ok(bytes) => bytes,
        Err(error) => {
            report.problems.push(error.to_string());
            return;
        }
    };
    let parsed = match load::parse_key(&key_path, &bytes) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => {
            report.problems.push(match &report.key {
                Some(key) => format!("no private key in {}; pass the key file with --key PATH", key.display()),
                None => format!(
                    "no private key in {}; pass the key file with --key PATH (postern reads it from `key = ...` in [[tls.certificate]], or from the certificate file when the key is appended to it)",
                    report.cert.display()
                ),
            });
            return;
        }
        Err(error) => {
            report.problems.push(error.to_string());
            return;
        }
    };
    let (key, format): (_, KeyFormat) = parsed;
    report.key = Some(key_path.clone());
    report.key_format = Some(format.as_str());
    if let Ok(meta) = std::fs::metadata(&key_path) {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let mode = meta.permissions().mode() & 0o7777;
        if let Some(warning) = load::permission_problem(&key_path, mode, meta.uid()) {
            report.warnings.push(warning);
        }
    }
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    match load::certify(chain, key, &report.cert, &key_path, &provider) {
        Ok(_) => report.key_matches = Some(true),
        Err(error @ TlsError::KeyMismatch { .. }) => {
            report.key_matches = Some(false);
            report.problems.push(error.to_string());
        }
        Err(error) => report.problems.push(error.to_string()),
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.chain_len {
            0 => writeln!(f, "certificate  {}", self.cert.display())?,
            n => writeln!(f, "certificate  {} ({n} in chain)", self.cert.display())?,
        }
        if let Some(subject) = &self.subject {
            writeln!(f, "subject      {subject}")?;
        }
        if self.subject.is_some() {
            let sans = if self.sans.is_empty() {
                "(none)".to_owned()
            } else {
                self.sans.join(", ")
            };
            writeln!(f, "SANs         {sans}")?;
        }
        if let Some(issuer) = &self.issuer {
            writeln!(f, "issuer       {issuer}")?;
        }
        if let (Some(from), Some(until)) = (self.not_before, self.not_after) {
            let days = (until - load::unix_now()) / 86_400;
            let left = if days >= 0 {
                format!("{days} days left")
            } else {
                format!("expired {} days ago", -days)
            };
            writeln!(
                f,
                "valid        {} .. {} ({left})",
                load::format_time(from),
                load::format_time(until)
            )?;
        }
        if let Some(key_type) = &self.key_type {
            writeln!(f, "key type     {key_type}")?;
        }
        if let Some(key) = &self.key {
            let format = self.key_format.unwrap_or("not readable");
            let matches = match self.key_matches {
                Some(true) => ", matches the certificate",
                Some(false) => ", does NOT match the certificate",
                None => "",
            };
            writeln!(f, "private key  {} ({format}{matches})", key.display())?;
        }
        for problem in &self.problems {
            writeln!(f, "problem:     {problem}")?;
        }
        for warning in &self.warnings {
            writeln!(f, "warning:     {warning}")?;
        }
        // Ends with a newline: the report is printed as a whole (`print!`).
        writeln!(
            f,
            "result       {}",
            if self.usable { "usable" } else { "NOT usable" }
        )
    }
}
