//! Checks across tables: addresses that two parts of the file would both bind.

use std::net::SocketAddr;

use super::Validator;
use crate::error::ConfigErrorKind as Kind;
use crate::{AcmeConfig, AdminConfig, ListenerConfig};

impl Validator<'_> {
    pub(super) fn admin_conflicts(&mut self, admin: &AdminConfig, listeners: &[ListenerConfig]) {
        let clash = listeners.iter().find_map(|l| {
            l.listen
                .iter()
                .find(|a| overlaps(admin.listen, **a))
                .map(|a| (l, *a))
        });
        if let Some((l, other)) = clash {
            let kind = if other == admin.listen {
                Kind::DuplicateListen {
                    addr: other,
                    first: l.name.clone(),
                }
            } else {
                Kind::OverlappingListen {
                    addr: admin.listen,
                    other,
                    listener: l.name.clone(),
                }
            };
            self.error("admin.listen", kind);
        }
    }

    /// `challenge_listen` must not bind what a listener or the admin endpoint binds.
    pub(super) fn acme_conflicts(
        &mut self,
        acme: &AcmeConfig,
        admin: &AdminConfig,
        listeners: &[ListenerConfig],
    ) {
        for (i, addr) in acme.challenge_listen.iter().enumerate() {
            // An unset challenge_listen has no line of its own: the error points at the
            // [tls.acme] table (or challenge) and says it is the default.
            let key = format!("tls.acme.challenge_listen[{i}]");
            let clash = listeners
                .iter()
                .find_map(|l| {
                    l.listen
                        .iter()
                        .find(|a| overlaps(*addr, **a))
                        .map(|a| (format!("listener {:?}", l.name), *a))
                })
                .or_else(|| {
                    overlaps(*addr, admin.listen).then(|| ("admin".to_owned(), admin.listen))
                });
            if let Some((owner, other)) = clash {
                self.error(
                    &key,
                    Kind::ChallengeListenTaken {
                        addr: *addr,
                        other,
                        owner,
                        port: acme.challenge.port(),
                    },
                );
            }
        }
    }
}

/// Whether binding both addresses would make them share connections: the same port and
/// family, the same address or one of them the wildcard. IPv6 sockets are IPV6_V6ONLY, so
/// `[::]` does not cover IPv4. Port 0 never collides (the kernel picks a fresh port).
pub(super) fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
