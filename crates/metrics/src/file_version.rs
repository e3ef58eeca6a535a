//! [`FileVersion`]: what tells a changed file from an unchanged one without reading it, for
//! the files postern re-checks by polling (`tls.ticket_key_file`, a backend's `user_map`).
//! Kept here, beside [`crate::ErrorChain`], because every crate that needs it already depends
//! on this one.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// One version of a file: a rename over it (a Kubernetes `..data` swap, an editor that
/// writes a new file) changes the device or inode, a rewrite in place the size or mtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileVersion {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileVersion {
    /// The version of the file at `path` now (one `stat`, following symlinks).
    pub fn of(path: &Path) -> std::io::Result<FileVersion> {
        let m = std::fs::metadata(path)?;
        Ok(FileVersion {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::FileVersion;

    #[test]
    fn a_rewrite_and_a_rename_over_the_file_are_new_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, b"one").unwrap();
        let first = FileVersion::of(&path).unwrap();
        assert_eq!(FileVersion::of(&path).unwrap(), first);
        std::fs::write(&path, b"longer").unwrap();
        let rewritten = FileVersion::of(&path).unwrap();
        assert_ne!(rewritten, first);
        let new = dir.path().join("keys.new");
        std::fs::write(&new, b"longer").unwrap();
        std::fs::rename(&new, &path).unwrap();
        assert_ne!(FileVersion::of(&path).unwrap(), rewritten);
        assert!(FileVersion::of(&dir.path().join("missing")).is_err());
    }
}
