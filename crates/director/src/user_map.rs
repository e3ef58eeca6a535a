//! `user_map`: users and whole domains pinned to a server host.
//!
//! ```text
//! # comments and blank lines are ignored
//! alice@example.org    10.0.0.5:143
//! @example.net         mail2.example.org     # the port is optional
//! ```
//!
//! One line per user or `@domain`, then the server: `host`, `host:port` or `[v6]:port`.
//! Matching is by host (placement is by server host: docs/configuration.md, `user_map`), so one file serves the imap,
//! pop3 and sieve backends that list the same hosts on their own ports; a port picks one of
//! several servers on the same host. Names and hosts compare case-insensitively. A user's
//! own line wins over their domain's (the part after the last `@`).
//!
//! A file with any bad line is refused as a whole, every bad line reported with its file
//! and line number, and the last good map stays in use: half a map would move the users of
//! the lines that failed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use postern_metrics::FileVersion;

use crate::error::{MapError, MapLineError};
use crate::hrw::normalise_user;

/// A parsed `user_map`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserMap {
    users: HashMap<String, Target>,
    domains: HashMap<String, Target>,
}

/// Where a `user_map` line sends its users.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The host, lower-cased (an IPv6 literal without brackets).
    pub host: String,
    /// The port, when the line gives one.
    pub port: Option<u16>,
    /// The line it came from (1-based), for `ctl user`.
    pub line: usize,
}

/// What pinned a user, for `ctl user` and the logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinKind {
    /// The user's own line.
    User,
    /// The line of the user's domain.
    Domain,
}

impl UserMap {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<UserMap, MapError> {
        let text = std::fs::read(path).map_err(|source| MapError::Read {
            path: path.to_owned(),
            source,
        })?;
        let text = String::from_utf8_lossy(&text);
        UserMap::parse(&text).map_err(|lines| MapError::Lines {
            path: path.to_owned(),
            lines,
        })
    }

    /// Parses the text of a map; on any bad line, every bad line.
    pub fn parse(text: &str) -> Result<UserMap, Vec<MapLineError>> {
        let mut map = UserMap::default();
        let mut errors = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            match parse_line(content, line) {
                Ok((Key::User(user), target)) => {
                    if let Some(old) = map.users.insert(user.clone(), target) {
                        errors.push(MapLineError::Duplicate {
                            line,
                            key: user,
                            first: old.line,
                        });
                    }
                }
                Ok((Key::Domain(domain), target)) => {
                    if let Some(old) = map.domains.insert(domain.clone(), target) {
                        errors.push(MapLineError::Duplicate {
                            line,
                            key: format!("@{domain}"),
                            first: old.line,
                        });
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(map)
        } else {
            Err(errors)
        }
    }

    /// Where `user` is pinned, if anywhere: the user's own line, else their domain's.
    pub fn lookup(&self, user: &str) -> Option<(&Target, PinKind)> {
        let user = normalise_user(user);
        if let Some(t) = self.users.get(&user) {
            return Some((t, PinKind::User));
        }
        let (_, domain) = user.rsplit_once('@')?;
        self.domains.get(domain).map(|t| (t, PinKind::Domain))
    }

    /// Lines in the map.
    pub fn len(&self) -> usize {
        self.users.len() + self.domains.len()
    }

    /// True when the map pins nobody.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every target host with its line, for the check against a backend's servers.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.users.values().chain(self.domains.values())
    }
}

enum Key {
    User(String),
    Domain(String),
}

fn parse_line(content: &str, line: usize) -> Result<(Key, Target), MapLineError> {
    let mut fields = content.split_whitespace();
    let (Some(who), Some(server)) = (fields.next(), fields.next()) else {
        return Err(MapLineError::Fields { line });
    };
    if fields.next().is_some() {
        return Err(MapLineError::Fields { line });
    }
    let key = match who.strip_prefix('@') {
        Some("") => return Err(MapLineError::EmptyDomain { line }),
        Some(domain) if domain.contains('@') => {
            return Err(MapLineError::BadName {
                line,
                name: who.to_owned(),
            })
        }
        Some(domain) => Key::Domain(domain.to_ascii_lowercase()),
        None => Key::User(normalise_user(who)),
    };
    let (host, port) = parse_server(server).ok_or_else(|| MapLineError::BadServer {
        line,
        server: server.to_owned(),
    })?;
    Ok((key, Target { host, port, line }))
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn parse_server(s: &str) -> Option<(String, Option<u16>)> {
    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0);
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(port(p.strip_prefix(':')?)?),
        };
        return Some((host.to_ascii_lowercase(), port));
    }
    if s.parse::<std::net::Ipv6Addr>().is_ok() {
        return Some((s.to_ascii_lowercase(), None));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(port(p)?)),
        None => (s, None),
    };
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    valid.then(|| (host.to_ascii_lowercase(), port))
}

/// The path and the last good map of one `user_map` file, re-read when the file changes.
#[derive(Debug)]
pub(crate) struct MapFile {
    pub(crate) path: PathBuf,
    pub(crate) map: arc_swap::ArcSwap<UserMap>,
    /// The version of the file last read (`None`: it could not be looked at).
    seen: std::sync::Mutex<Option<FileVersion>>,
}

/// What a re-check found.
#[derive(Debug)]
pub(crate) enum Recheck {
    /// The file has not changed.
    Same,
    /// A new map is in use.
    Loaded(usize),
    /// The file changed but could not be used; the last good map stays.
    Refused(MapError),
}

impl MapFile {
    /// Loads the file once; a bad file at start is an error (the config named it).
    pub(crate) fn open(path: &Path) -> Result<MapFile, MapError> {
        let version = FileVersion::of(path).ok();
        let map = UserMap::load(path)?;
        Ok(MapFile {
            path: path.to_owned(),
            map: arc_swap::ArcSwap::from_pointee(map),
            seen: std::sync::Mutex::new(version),
        })
    }

    /// Re-reads the file if it changed since the last look.
    pub(crate) fn recheck(&self) -> Recheck {
        let now = FileVersion::of(&self.path).ok();
        {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *seen == now {
                return Recheck::Same;
            }
            *seen = now;
        }
        match UserMap::load(&self.path) {
            Ok(map) => {
                let n = map.len();
                self.map.store(std::sync::Arc::new(map));
                Recheck::Loaded(n)
            }
            Err(e) => Recheck::Refused(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_domains() {
        let map = UserMap::parse(
            "# pinned\nAlice@Example.org  10.0.0.5:143\n@example.org mail2.example.org # d\n\n\
             bob [2001:db8::1]:993\ncarol [2001:DB8::2]\n",
        )
        .unwrap();
        let (t, kind) = map.lookup("alice@example.org").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, kind),
            ("10.0.0.5", Some(143), PinKind::User)
        );
        let (t, kind) = map.lookup("dave@EXAMPLE.org").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, kind),
            ("mail2.example.org", None, PinKind::Domain)
        );
        assert_eq!(map.lookup("bob").unwrap().0.host, "2001:db8::1");
        assert_eq!(map.lookup("carol").unwrap().0.host, "2001:db8::2");
        assert!(map.lookup("erin@example.net").is_none());
        assert!(map.lookup("erin").is_none());
        assert_eq!(map.len(), 4);
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let errors = UserMap::parse(
            "ok 10.0.0.1\nonlyone\n@ 10.0.0.2\nx 10.0.0.3:99999\ny a b\nok 10.0.0.4\nz bad/host\n",
        )
        .unwrap_err();
        let lines: Vec<usize> = errors.iter().map(MapLineError::line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6, 7]);
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(text[0].contains("two fields"), "{}", text[0]);
        assert!(text[4].contains("line 1"), "{}", text[4]);
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_bad_one_keeps_the_last_good_map() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, "alice 10.0.0.1\n").unwrap();
        let file = MapFile::open(&path).unwrap();
        assert!(matches!(file.recheck(), Recheck::Same));
        std::fs::write(&path, "alice 10.0.0.2\nbob 10.0.0.3\n").unwrap();
        assert!(matches!(file.recheck(), Recheck::Loaded(2)));
        assert_eq!(file.map.load().lookup("alice").unwrap().0.host, "10.0.0.2");
        std::fs::write(&path, "alice 10.0.0.9\nbroken\n").unwrap();
        match file.recheck() {
            Recheck::Refused(e) => assert!(e.to_string().contains(":2:"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(file.map.load().lookup("alice").unwrap().0.host, "10.0.0.2");
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            file.recheck(),
            Recheck::Refused(MapError::Read { .. })
        ));
        assert_eq!(file.map.load().len(), 2);
    }
}
