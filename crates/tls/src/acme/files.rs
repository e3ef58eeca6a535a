//! `state_dir/acme/`: the account per CA, the certificate and its key, and which CA and names
//! the certificate was ordered for. Directory 0700, files 0600, each written to a temporary
//! name, synced and renamed, so a crash leaves the old file or the new one, never half.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use postern_config::KeyPermissions;
use rustls::crypto::CryptoProvider;
use serde::{Deserialize, Serialize};

use super::error::AcmeError;
use crate::load::{self, Source, SourceKind};

/// The layout of one ACME state directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AcmeFiles {
    dir: PathBuf,
}

/// What was ordered: a certificate is reused only for the same CA and the same names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ordered {
    pub(crate) directory: String,
    pub(crate) domains: Vec<String>,
}

/// The stored certificate, as far as the renewal schedule needs it.
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    pub(crate) names: Vec<String>,
    /// `None` when `certificate.json` is missing or unreadable.
    pub(crate) ordered: Option<Ordered>,
}

impl Stored {
    /// Whether this certificate is the one the config asks for (same CA, same names).
    pub(crate) fn matches(&self, directory: &str, domains: &[String]) -> bool {
        let mut want: Vec<&str> = domains.iter().map(String::as_str).collect();
        let mut have: Vec<&str> = self.names.iter().map(String::as_str).collect();
        want.sort_unstable();
        have.sort_unstable();
        want == have
            && self
                .ordered
                .as_ref()
                .is_some_and(|o| o.directory == directory)
    }
}

impl AcmeFiles {
    pub(crate) fn new(dir: PathBuf) -> AcmeFiles {
        AcmeFiles { dir }
    }

    #[cfg(test)]
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn cert(&self) -> PathBuf {
        self.dir.join("fullchain.pem")
    }

    pub(crate) fn key(&self) -> PathBuf {
        self.dir.join("privkey.pem")
    }

    fn ordered(&self) -> PathBuf {
        self.dir.join("certificate.json")
    }

    /// `certificate.json` exists: this directory is an ACME state directory.
    pub(crate) fn has_order_record(&self) -> bool {
        self.ordered().exists()
    }

    /// One account per CA: switching between staging and production keeps both.
    pub(crate) fn account(&self, directory: &str) -> PathBuf {
        self.dir
            .join("accounts")
            .join(format!("{}.json", directory_key(directory)))
    }

    /// The certificate as a store source.
    pub(crate) fn source(&self) -> Source {
        Source {
            cert: self.cert(),
            key: Some(self.key()),
            kind: SourceKind::Acme,
        }
    }

    /// The stored certificate, `None` when there is none or the pair does not load (a new one
    /// is then ordered; the files are postern's own).
    pub(crate) fn stored(&self, provider: &CryptoProvider) -> Option<Stored> {
        let source = self.source();
        let files = load::read_files(&source).ok()?;
        let (loaded, _) = load::load(&source, &files, KeyPermissions::Warn, provider).ok()?;
        let info = loaded.info;
        let ordered = fs::read(self.ordered())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        Some(Stored {
            not_before: info.not_before,
            not_after: info.not_after,
            names: info.dns_names,
            ordered,
        })
    }

    /// Writes a new certificate, its key and what it was ordered for. The key goes first: a
    /// crash in between leaves a pair that does not match, which the store refuses and the
    /// task replaces, never a certificate served with the wrong key.
    pub(crate) fn write_certificate(
        &self,
        chain_pem: &[u8],
        key_pem: &[u8],
        ordered: &Ordered,
    ) -> Result<(), AcmeError> {
        let meta = serde_json::to_vec_pretty(ordered).unwrap_or_default();
        self.write_private(&self.key(), key_pem)?;
        self.write_private(&self.cert(), chain_pem)?;
        self.write_private(&self.ordered(), &meta)
    }

    pub(crate) fn read_account(&self, directory: &str) -> Result<Option<Vec<u8>>, AcmeError> {
        let path = self.account(directory);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(self.storage("read", &path, source)),
        }
    }

    pub(crate) fn write_account(&self, directory: &str, bytes: &[u8]) -> Result<(), AcmeError> {
        self.write_private(&self.account(directory), bytes)
    }

    /// Writes `bytes` to `path` (mode 0600) through a temporary file, creating the
    /// directories (mode 0700) as needed.
    fn write_private(&self, path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
        let parent = path.parent().unwrap_or(&self.dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| self.storage("create", parent, e))?;
        let tmp = path.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(bytes)?;
                f.sync_all()
            });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(self.storage("write", &tmp, e));
        }
        fs::rename(&tmp, path).map_err(|e| self.storage("write", path, e))?;
        // The rename is durable only once the directory is synced.
        if let Ok(dir) = fs::File::open(parent) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Before a privilege drop: creates the directory and gives it, and everything postern
    /// put in it, to `uid:gid` (symlinks are not followed), and lets `uid` enter the state
    /// directory above it (adding search permission, mode `--x--x`, when it cannot).
    pub(crate) fn hand_over(&self, uid: u32, gid: u32) -> Result<bool, AcmeError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| self.storage("create", &self.dir, e))?;
        let mut opened = false;
        if let Some(parent) = self.dir.parent() {
            let meta = fs::metadata(parent).map_err(|e| self.storage("read", parent, e))?;
            if !can_search(&meta, uid, gid) {
                let mode = (meta.mode() & 0o7777) | 0o011;
                fs::set_permissions(parent, fs::Permissions::from_mode(mode))
                    .map_err(|e| self.storage("change the mode of", parent, e))?;
                opened = true;
            }
        }
        self.chown_tree(&self.dir, uid, gid, 0)?;
        Ok(opened)
    }

    fn chown_tree(&self, path: &Path, uid: u32, gid: u32, depth: u32) -> Result<(), AcmeError> {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .map_err(|e| self.storage("change the owner of", path, e))?;
        let is_dir = fs::symlink_metadata(path)
            .map(|m| m.file_type().is_dir())
            .unwrap_or(false);
        // The layout is two levels deep (accounts/); nothing deeper is postern's.
        if is_dir && depth < 2 {
            let entries = fs::read_dir(path).map_err(|e| self.storage("read", path, e))?;
            for entry in entries.flatten() {
                self.chown_tree(&entry.path(), uid, gid, depth + 1)?;
            }
        }
        Ok(())
    }

    fn storage(&self, action: &'static str, path: &Path, source: io::Error) -> AcmeError {
        AcmeError::Storage {
            action,
            path: path.to_path_buf(),
            dir: self.dir.clone(),
            source,
        }
    }
}

/// Whether `uid:gid` may enter the directory `meta` describes (the permission class that
/// applies: owner, else group, else others).
fn can_search(meta: &fs::Metadata, uid: u32, gid: u32) -> bool {
    let mode = meta.mode();
    if uid == 0 {
        true
    } else if meta.uid() == uid {
        mode & 0o100 != 0
    } else if meta.gid() == gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// `https://acme-v02.api.letsencrypt.org/directory` → `acme-v02.api.letsencrypt.org`;
/// `https://127.0.0.1:14000/dir` → `127.0.0.1_14000_dir`: readable, one file per CA.
pub(crate) fn directory_key(directory: &str) -> String {
    let rest = directory
        .strip_prefix("https://")
        .or_else(|| directory.strip_prefix("http://"))
        .unwrap_or(directory);
    let rest = rest.trim_end_matches('/');
    let rest = rest.strip_suffix("/directory").unwrap_or(rest);
    let key: String = rest
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let key = key.trim_matches('_').to_owned();
    if key.is_empty() {
        "default".to_owned()
    } else {
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_keys_are_readable_file_names() {
        assert_eq!(
            directory_key("https://acme-v02.api.letsencrypt.org/directory"),
            "acme-v02.api.letsencrypt.org"
        );
        assert_eq!(
            directory_key("https://acme-staging-v02.api.letsencrypt.org/directory"),
            "acme-staging-v02.api.letsencrypt.org"
        );
        assert_eq!(
            directory_key("https://127.0.0.1:14000/dir"),
            "127.0.0.1_14000_dir"
        );
        assert_eq!(directory_key("https://ca/../x"), "ca_.._x");
        assert_eq!(directory_key("https://"), "default");
    }

    #[test]
    fn files_are_private_and_replaced_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = AcmeFiles::new(dir.path().join("acme"));
        let ordered = Ordered {
            directory: "https://ca/dir".into(),
            domains: vec!["a.test".into()],
        };
        files
            .write_certificate(b"chain", b"key", &ordered)
            .expect("write");
        files
            .write_certificate(b"chain2", b"key2", &ordered)
            .expect("rewrite");
        files
            .write_account("https://ca/dir", b"{}")
            .expect("account");
        for path in [
            files.cert(),
            files.key(),
            files.ordered(),
            files.account("https://ca/dir"),
        ] {
            let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        let mode = fs::metadata(files.dir())
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(fs::read(files.cert()).expect("read"), b"chain2");
        assert!(!files.cert().with_extension("tmp").exists());
    }
}
