//! Dropping root after the ports are bound and the keys are read.

use nix::unistd::{
    getegid, geteuid, getgid, getgroups, getuid, setgid, setgroups, setuid, Gid, Group, Uid, User,
};

/// The drop failed; postern refuses to serve as root by accident.
#[derive(Debug, thiserror::Error)]
pub enum PrivDropError {
    /// `server.user` names no account.
    #[error("server.user {0:?}: no such user; create it (e.g. `useradd --system postern`) or fix the name")]
    NoUser(String),
    /// `server.user` is root: that is no drop at all.
    #[error("server.user = {0:?} is root (uid 0): postern must not serve as root; set server.user to an unprivileged account such as \"postern\", or remove it and run postern as that user")]
    Root(String),
    /// `server.group` names no group.
    #[error("server.group {0:?}: no such group; create it or fix the name")]
    NoGroup(String),
    /// Not root, but asked to change user.
    #[error("server.user {user:?} is set but postern runs as uid {uid}, not root; start it as root or remove server.user (with systemd, prefer User= and AmbientCapabilities=CAP_NET_BIND_SERVICE)")]
    NotRoot {
        /// The configured user.
        user: String,
        /// Our uid.
        uid: u32,
    },
    /// A system call failed.
    #[error("dropping privileges to {user:?}: {step} failed")]
    Syscall {
        /// The configured user.
        user: String,
        /// Which call.
        step: &'static str,
        /// The error.
        #[source]
        source: nix::Error,
    },
    /// The calls returned but the ids did not change (verified afterwards).
    #[error(
        "dropping privileges to {user:?}: still uid {uid} gid {gid} afterwards; refusing to serve"
    )]
    NotDropped {
        /// The configured user.
        user: String,
        /// uid after the drop.
        uid: u32,
        /// gid after the drop.
        gid: u32,
    },
}

/// Switches the whole process (every thread: glibc's setuid family broadcasts to all
/// threads) to `user` and `group` (default: the user's primary group), in the only safe
/// order: supplementary groups, gid, uid. Verifies the result.
pub fn drop_privileges(user: &str, group: Option<&str>) -> Result<(Uid, Gid), PrivDropError> {
    let (uid, gid) = resolve(user, group)?;
    if geteuid() == uid && getegid() == gid {
        return Ok((uid, gid)); // already there (systemd User=)
    }
    if !geteuid().is_root() {
        return Err(PrivDropError::NotRoot {
            user: user.into(),
            uid: geteuid().as_raw(),
        });
    }
    let sys = |step: &'static str| {
        move |source| PrivDropError::Syscall {
            user: user.into(),
            step,
            source,
        }
    };
    setgroups(&[gid]).map_err(sys("setgroups"))?;
    setgid(gid).map_err(sys("setgid"))?;
    setuid(uid).map_err(sys("setuid"))?;
    verify(user, uid, gid)
}

/// The uid and gid `server.user` / `server.group` name (the group defaults to the user's
/// primary group); refuses root.
pub fn resolve(user: &str, group: Option<&str>) -> Result<(Uid, Gid), PrivDropError> {
    let pw = User::from_name(user)
        .map_err(|source| PrivDropError::Syscall {
            user: user.into(),
            step: "getpwnam",
            source,
        })?
        .ok_or_else(|| PrivDropError::NoUser(user.into()))?;
    if pw.uid.is_root() {
        return Err(PrivDropError::Root(user.into()));
    }
    let gid = match group {
        Some(g) => {
            Group::from_name(g)
                .map_err(|source| PrivDropError::Syscall {
                    user: user.into(),
                    step: "getgrnam",
                    source,
                })?
                .ok_or_else(|| PrivDropError::NoGroup(g.into()))?
                .gid
        }
        None => pw.gid,
    };
    Ok((pw.uid, gid))
}

/// Checks that the drop took effect and cannot be undone.
fn verify(user: &str, uid: Uid, gid: Gid) -> Result<(Uid, Gid), PrivDropError> {
    let groups = getgroups().unwrap_or_default();
    if getuid() != uid
        || geteuid() != uid
        || getgid() != gid
        || getegid() != gid
        || groups.iter().any(|g| *g != gid)
    {
        return Err(PrivDropError::NotDropped {
            user: user.into(),
            uid: geteuid().as_raw(),
            gid: getegid().as_raw(),
        });
    }
    // Regaining root must be impossible now.
    if setuid(Uid::from_raw(0)).is_ok() {
        return Err(PrivDropError::NotDropped {
            user: user.into(),
            uid: 0,
            gid: gid.as_raw(),
        });
    }
    Ok((uid, gid))
}
