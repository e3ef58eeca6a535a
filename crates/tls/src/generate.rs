//! `postern cert generate`: a self-signed certificate and its unencrypted key.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SignatureAlgorithm,
};

use crate::TlsError;

/// The key algorithm of a generated certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256: small, fast, accepted by every current mail client.
    EcdsaP256,
    /// RSA 2048 with SHA-256, for old clients without ECDSA.
    Rsa2048,
}

impl KeyType {
    /// The CLI spelling (`ecdsa-p256`, `rsa2048`).
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::Rsa2048 => "rsa2048",
        }
    }

    fn algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

/// Writes `DIR/fullchain.pem` and `DIR/privkey.pem` (mode 0600) for `names` (DNS names or IP
/// addresses; the first is also the subject CN), valid from one hour ago for `days` days.
/// Each file is written to a temporary name and renamed, so a running postern watching DIR
/// never reads half a file. Returns the two paths (certificate, key).
pub fn write_self_signed(
    names: &[String],
    dir: &Path,
    days: u32,
    key_type: KeyType,
) -> Result<(PathBuf, PathBuf), TlsError> {
    let (cert_pem, key_pem) = self_signed_pem(names, days, key_type)?;
    std::fs::create_dir_all(dir).map_err(|e| TlsError::write(dir, e))?;
    let cert_path = dir.join("fullchain.pem");
    let key_path = dir.join("privkey.pem");
    // Key first: a watcher that sees the new certificate before the new key would reject the
    // pair as mismatched until the key arrives.
    write_atomically(&key_path, key_pem.as_bytes(), 0o600)?;
    write_atomically(&cert_path, cert_pem.as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

/// The PEM texts (certificate, key) of a new self-signed certificate.
pub fn self_signed_pem(
    names: &[String],
    days: u32,
    key_type: KeyType,
) -> Result<(String, String), TlsError> {
    let fail = |source: rcgen::Error| TlsError::Generate {
        names: names.to_vec(),
        key_type: key_type.as_str(),
        source,
    };
    let usage = |problem: &'static str| TlsError::GenerateUsage {
        names: names.to_vec(),
        key_type: key_type.as_str(),
        problem,
    };
    let Some(first) = names.first() else {
        return Err(usage("no name given"));
    };
    if days == 0 {
        return Err(usage("--days must be at least 1"));
    }
    let key = KeyPair::generate_for(key_type.algorithm()).map_err(fail)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(fail)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, first.as_str());
    params.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clients whose clocks run a little behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key).map_err(fail)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| TlsError::write(&tmp, e))?;
    file.write_all(contents)
        .map_err(|e| TlsError::write(&tmp, e))?;
    file.sync_all().map_err(|e| TlsError::write(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| TlsError::write(path, e))
}
