//! A backend's TLS to its servers, DNS re-resolution and route (`tls`, `tls_ca`,
//! `tls_name`, `resolve_interval`, `route`, `user_map`, `weights`).

use std::num::NonZeroU32;

use super::{hours, secs, Validator};
use crate::error::ConfigErrorKind as Kind;
use crate::raw::RawBackend;
use crate::{BackendTarget, BackendTls, Route, ServerAddr, TlsMode, UserRoute};

impl Validator<'_> {
    pub(super) fn backend_tls(
        &mut self,
        key: &str,
        b: &RawBackend,
        target: &BackendTarget,
    ) -> Option<BackendTls> {
        let mode = self.choice(
            &format!("{key}.tls"),
            b.tls.as_deref(),
            None,
            &[
                ("none", None),
                ("implicit", Some(TlsMode::Implicit)),
                ("starttls", Some(TlsMode::Starttls)),
            ],
        );
        let (ca_key, name_key) = (format!("{key}.tls_ca"), format!("{key}.tls_name"));
        let Some(mode) = mode else {
            let why = "applies only with tls = \"implicit\" or \"starttls\"";
            self.not_applicable(&ca_key, is_set(&b.tls_ca), why);
            self.not_applicable(&name_key, is_set(&b.tls_name), why);
            return None;
        };
        let servers = match target {
            BackendTarget::Servers(servers) => servers,
            BackendTarget::Exec { .. } => {
                self.error(&format!("{key}.tls"), Kind::TlsWithExec);
                return None;
            }
        };
        let ca = self.optional_file(&ca_key, b.tls_ca.as_deref(), TLS_CA_HINT);
        let name = match b.tls_name.as_deref() {
            None | Some("") => None,
            Some(n) => {
                if let Err(reason) = crate::addr::check_tls_name(n) {
                    self.error(
                        &name_key,
                        Kind::BadTlsName {
                            value: n.to_owned(),
                            reason,
                        },
                    );
                }
                Some(n.to_owned())
            }
        };
        if name.is_none() && servers.iter().any(|s| matches!(s, ServerAddr::Unix(_))) {
            self.error(&format!("{key}.tls"), Kind::TlsNameNeededForUnix);
        }
        Some(BackendTls { mode, ca, name })
    }

    pub(super) fn resolve_interval(
        &mut self,
        key: &str,
        b: &RawBackend,
        target: &BackendTarget,
    ) -> std::time::Duration {
        let rkey = format!("{key}.resolve_interval");
        if matches!(target, BackendTarget::Exec { .. }) {
            let why = "applies to `servers` backends only (an exec backend resolves nothing)";
            self.not_applicable(&rkey, b.resolve_interval.is_some(), why);
        }
        self.duration(
            &rkey,
            b.resolve_interval.as_deref(),
            secs(30),
            secs(1),
            hours(24),
        )
    }

    pub(super) fn route(&mut self, key: &str, b: &RawBackend, target: &BackendTarget) -> Route {
        #[derive(Clone, Copy)]
        enum R {
            Connection,
            User,
        }
        let route = self.choice(
            &format!("{key}.route"),
            b.route.as_deref(),
            R::Connection,
            &[("connection", R::Connection), ("user", R::User)],
        );
        let (map_key, weights_key) = (format!("{key}.user_map"), format!("{key}.weights"));
        match route {
            R::Connection => {
                let why = "applies only with route = \"user\"";
                self.not_applicable(&map_key, is_set(&b.user_map), why);
                let weighted = b.weights.as_ref().is_some_and(|w| !w.is_empty());
                self.not_applicable(&weights_key, weighted, why);
                Route::Connection
            }
            R::User => {
                let BackendTarget::Servers(servers) = target else {
                    self.error(&format!("{key}.route"), Kind::RouteUserWithExec);
                    return Route::Connection;
                };
                let why = "does not apply with route = \"user\", which places each user on a \
                           server by their login name";
                self.not_applicable(&format!("{key}.balance"), b.balance.is_some(), why);
                let user_map = self.optional_file(&map_key, b.user_map.as_deref(), USER_MAP_HINT);
                let weights = self.weights(&weights_key, b, servers);
                Route::User(UserRoute { user_map, weights })
            }
        }
    }

    fn weights(
        &mut self,
        key: &str,
        b: &RawBackend,
        servers: &[ServerAddr],
    ) -> Vec<(ServerAddr, NonZeroU32)> {
        let Some(raw) = &b.weights else {
            return Vec::new();
        };
        let mut weights: Vec<(ServerAddr, NonZeroU32)> = Vec::with_capacity(raw.len());
        for (server, weight) in raw {
            // Keys with dots or colons are written quoted; the key path quotes them too.
            let wkey = format!("{key}.\"{server}\"");
            let known = crate::addr::parse_server(server)
                .ok()
                .and_then(|addr| servers.iter().find(|s| crate::addr::same_server(s, &addr)));
            let Some(addr) = known else {
                let listed: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
                self.error(
                    &wkey,
                    Kind::UnknownWeightServer {
                        server: server.clone(),
                        servers: listed.join(", "),
                    },
                );
                continue;
            };
            let weight = self.number(&wkey, Some(*weight), 1, 1, 1000, "1 to 1000");
            if weights.iter().any(|(s, _)| s == addr) {
                self.error(
                    &wkey,
                    Kind::ListedTwice {
                        value: server.clone(),
                    },
                );
                continue;
            }
            if let Some(w) = u32::try_from(weight).ok().and_then(NonZeroU32::new) {
                weights.push((addr.clone(), w));
            }
        }
        weights
    }
}

/// Set to something other than `""`, which SPEC writes for "not set".
fn is_set(value: &Option<String>) -> bool {
    value.as_deref().is_some_and(|v| !v.is_empty())
}

const TLS_CA_HINT: &str = "point `tls_ca` at the PEM bundle of the CA that signed the \
servers' certificates, or remove it (or set \"\") to use the system roots";
const USER_MAP_HINT: &str = "create it (lines of `user-or-@domain  host:port`) or remove \
`user_map` to place every user by hashing";
