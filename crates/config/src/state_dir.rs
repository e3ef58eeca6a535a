//! The default `server.state_dir`, where the self-signed certificate is kept.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// `$STATE_DIRECTORY` (systemd `StateDirectory=`; the first of a colon-separated list),
/// else `/var/lib/postern` when running as root or when that directory exists and is
/// writable by this user, else `$XDG_STATE_HOME/postern`, else
/// `$HOME/.local/state/postern`, else `/var/lib/postern`.
pub(crate) fn default_state_dir() -> PathBuf {
    let system = Path::new(SYSTEM_STATE_DIR);
    let euid = effective_uid();
    let system_usable = euid == Some(0) || euid.is_some_and(|uid| writable_dir(system, uid));
    choose(
        std::env::var_os("STATE_DIRECTORY"),
        system_usable,
        std::env::var_os("XDG_STATE_HOME"),
        std::env::var_os("HOME"),
    )
}

/// [`default_state_dir`] with its environment passed in.
fn choose(
    state_directory: Option<OsString>,
    system_usable: bool,
    xdg_state_home: Option<OsString>,
    home: Option<OsString>,
) -> PathBuf {
    let first = state_directory
        .and_then(|v| {
            v.to_str()
                .and_then(|v| v.split(':').next())
                .map(PathBuf::from)
        })
        .filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = first {
        return dir;
    }
    if system_usable {
        return PathBuf::from(SYSTEM_STATE_DIR);
    }
    // XDG says relative values are invalid and must be ignored.
    let absolute = |v: Option<OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(xdg) = absolute(xdg_state_home) {
        return xdg.join("postern");
    }
    if let Some(home) = absolute(home) {
        return home.join(".local/state/postern");
    }
    PathBuf::from(SYSTEM_STATE_DIR)
}

/// The effective uid, read as the owner of `/proc/self` (no unsafe libc call needed).
fn effective_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Owned by `uid` and owner-writable, or writable by everyone. Group write is not
/// considered: a group-shared state directory should be named explicitly.
fn writable_dir(dir: &Path, uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir)
        .map(|m| m.is_dir() && ((m.uid() == uid && m.mode() & 0o200 != 0) || m.mode() & 0o002 != 0))
        .unwrap_or(false)
}

const SYSTEM_STATE_DIR: &str = "/var/lib/postern";

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> Option<OsString> {
        Some(OsString::from(s))
    }

    #[test]
    fn order_of_precedence() {
        let sys = PathBuf::from("/var/lib/postern");
        assert_eq!(
            choose(os("/run/a:/run/b"), true, os("/x"), os("/h")),
            PathBuf::from("/run/a")
        );
        assert_eq!(choose(os(""), true, os("/x"), os("/h")), sys);
        assert_eq!(
            choose(None, false, os("/x"), os("/h")),
            PathBuf::from("/x/postern")
        );
        assert_eq!(
            choose(None, false, os("rel"), os("/h")),
            PathBuf::from("/h/.local/state/postern")
        );
        assert_eq!(choose(None, false, None, None), sys);
    }
}
