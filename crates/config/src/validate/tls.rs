//! `[tls]`, its `[[tls.certificate]]`s and `[tls.acme]`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use super::{days, millis, minutes, secs, Validator};
use crate::error::ConfigErrorKind as Kind;
use crate::raw::{RawAcme, RawTls};
use crate::{AcmeChallenge, AcmeConfig, CertificateConfig, KeyPermissions, TlsConfig, TlsVersion};

impl Validator<'_> {
    pub(super) fn tls(&mut self, raw: RawTls, state_dir: &Path) -> TlsConfig {
        let min_version = self.choice(
            "tls.min_version",
            raw.min_version.as_deref(),
            TlsVersion::V1_2,
            &[("1.2", TlsVersion::V1_2), ("1.3", TlsVersion::V1_3)],
        );
        let handshake_timeout = self.duration(
            "tls.handshake_timeout",
            raw.handshake_timeout.as_deref(),
            secs(10),
            millis(100),
            minutes(5),
        );
        let key_permissions = self.choice(
            "tls.key_permissions",
            raw.key_permissions.as_deref(),
            KeyPermissions::Warn,
            &[
                ("warn", KeyPermissions::Warn),
                ("strict", KeyPermissions::Strict),
            ],
        );
        let mut certificates = Vec::with_capacity(raw.certificate.len());
        for (i, c) in raw.certificate.into_iter().enumerate() {
            let cert_key = format!("tls.certificate[{i}].cert");
            let cert = self.existing_file(&cert_key, &c.cert, CERT_HINT);
            let key = c
                .key
                .map(|k| self.existing_file(&format!("tls.certificate[{i}].key"), &k, KEY_HINT));
            certificates.push(CertificateConfig { cert, key });
        }
        let ticket_key_file = self.optional_file(
            "tls.ticket_key_file",
            raw.ticket_key_file.as_deref(),
            TICKET_HINT,
        );
        let acme = raw.acme.map(|a| self.acme(a, state_dir));
        TlsConfig {
            min_version,
            handshake_timeout,
            key_permissions,
            watch: raw.watch.unwrap_or(true),
            certificates,
            ticket_key_file,
            acme,
        }
    }

    fn acme(&mut self, raw: RawAcme, state_dir: &Path) -> AcmeConfig {
        if raw.domains.is_empty() {
            self.error("tls.acme.domains", Kind::Empty);
        }
        let mut domains: Vec<String> = Vec::with_capacity(raw.domains.len());
        for (i, d) in raw.domains.iter().enumerate() {
            let key = format!("tls.acme.domains[{i}]");
            match crate::addr::parse_domain(d) {
                Ok(name) if domains.contains(&name) => {
                    self.error(&key, Kind::ListedTwice { value: d.clone() });
                }
                Ok(name) => domains.push(name),
                Err(reason) => self.error(
                    &key,
                    Kind::BadDomain {
                        value: d.clone(),
                        reason,
                    },
                ),
            }
        }
        let contact = raw.contact.unwrap_or_default();
        for (i, c) in contact.iter().enumerate() {
            let ok = c
                .strip_prefix("mailto:")
                .and_then(|a| a.split_once('@'))
                .is_some_and(|(user, host)| !user.is_empty() && host.contains('.'));
            if !ok {
                self.error(
                    &format!("tls.acme.contact[{i}]"),
                    Kind::BadContact { value: c.clone() },
                );
            }
        }
        let directory = match raw.directory {
            None => LETS_ENCRYPT.to_owned(),
            Some(url) => {
                if let Err(reason) = crate::addr::check_directory_url(&url) {
                    self.error(
                        "tls.acme.directory",
                        Kind::BadDirectoryUrl {
                            value: url.clone(),
                            reason,
                        },
                    );
                }
                url
            }
        };
        let challenge = self.choice(
            "tls.acme.challenge",
            raw.challenge.as_deref(),
            AcmeChallenge::TlsAlpn01,
            &[
                ("tls-alpn-01", AcmeChallenge::TlsAlpn01),
                ("http-01", AcmeChallenge::Http01),
            ],
        );
        let challenge_listen = match &raw.challenge_listen {
            Some(values) => self.listen_addrs("tls.acme.challenge_listen", values),
            None => {
                let port = challenge.port();
                vec![
                    SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
                    SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
                ]
            }
        };
        let ca_roots =
            self.optional_file("tls.acme.ca_roots", raw.ca_roots.as_deref(), CA_ROOTS_HINT);
        let renew_before = self.duration(
            "tls.acme.renew_before",
            raw.renew_before.as_deref(),
            days(30),
            minutes(1),
            // Ten years of 365.25 days, which humantime prints as "10years".
            std::time::Duration::from_secs(315_576_000),
        );
        AcmeConfig {
            domains,
            contact,
            directory,
            challenge,
            challenge_listen,
            ca_roots,
            renew_before,
            store: state_dir.join("acme"),
        }
    }
}

/// The default `directory`: Let's Encrypt's production CA.
const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

const CERT_HINT: &str =
    "point `cert` at your PEM certificate chain, create one with `postern cert generate`, \
or remove this [[tls.certificate]] to use a generated self-signed certificate";
const KEY_HINT: &str = "point `key` at the PEM private key of this certificate, \
or remove `key` if the `cert` file also holds the key";
const TICKET_HINT: &str = "create it (one line per key, each `openssl rand -base64 80`) \
or remove `ticket_key_file` to let each process make its own keys";
const CA_ROOTS_HINT: &str = "point `ca_roots` at the PEM bundle that signed the ACME \
server's certificate, or remove it (or set \"\") to use the system roots";
