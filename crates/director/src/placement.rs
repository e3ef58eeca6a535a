//! Where one user goes: a pure function of the user, the backend's servers (host, weight,
//! health, state) and the `user_map`, so every replica that sees the same inputs places the
//! user on the same server with no shared state.
//!
//! 1. A `user_map` line wins when its server is up and not offline (a standby server keeps
//!    its pinned users).
//! 2. Otherwise the servers are ranked by weighted rendezvous hashing of the user on each
//!    server's **host** ([`crate::hrw`]). The user's *home* is the first of that ranking
//!    whatever the servers' health and states; the user goes to the first server of the
//!    ranking that is up and either online, or standby and their home. So a server that goes
//!    down or offline moves only its own users (each to their next server), a standby server
//!    keeps its own users and receives nobody else's, and when a server comes back its users
//!    are placed on it again (the session registry then asks their sessions elsewhere to
//!    leave).
//! 3. When nothing else is left, a standby server takes anyone rather than nobody (each such
//!    placement says so: [`Why::LastResort`]).

use crate::hrw;
use crate::states::ServerState;
use crate::user_map::{PinKind, UserMap};

/// One server as placement sees it.
#[derive(Clone, Debug)]
pub struct Candidate<'a> {
    /// The server label (`10.0.0.5:143`).
    pub label: &'a str,
    /// Its host, the placement key (`10.0.0.5`); a unix socket's path.
    pub host: &'a str,
    /// Its port (none for a unix socket).
    pub port: Option<u16>,
    /// Its `weights` share (at least 1).
    pub weight: u32,
    /// Passing its health checks.
    pub up: bool,
    /// What the operator said.
    pub state: ServerState,
}

/// Why a user went where they went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// A `user_map` line (the user's own or the domain's).
    Pinned(PinKind),
    /// The ranking, and this server is the user's home.
    Home,
    /// The ranking; the user's home is down, offline, or the user is pinned to a server
    /// that is.
    Moved,
    /// Only standby servers are left and this one is not the user's.
    LastResort,
}

impl Why {
    /// The word `ctl user` and the logs show.
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Pinned(PinKind::User) => "user_map (user)",
            Why::Pinned(PinKind::Domain) => "user_map (domain)",
            Why::Home => "hash (home)",
            Why::Moved => "hash (moved: home not available)",
            Why::LastResort => "last resort (only standby servers left)",
        }
    }
}

/// A placement: the index of the chosen candidate and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Index into the candidates.
    pub index: usize,
    /// Why.
    pub why: Why,
}

/// Places `user` on one of `servers`, or nowhere when none is up and not offline.
pub fn place(user: &str, servers: &[Candidate<'_>], map: Option<&UserMap>) -> Option<Placement> {
    let usable = |c: &Candidate<'_>| c.up && c.state != ServerState::Offline;
    if let Some((target, kind)) = map.and_then(|m| m.lookup(user)) {
        let on_host = |c: &&Candidate<'_>| c.host.eq_ignore_ascii_case(&target.host);
        // A port picks one of several servers on the pinned host; with none, or a port no
        // server has, the host's first server.
        let pinned = servers
            .iter()
            .filter(on_host)
            .find(|c| target.port.is_some() && c.port == target.port)
            .or_else(|| servers.iter().find(on_host));
        if let Some(c) = pinned.filter(|c| usable(c)) {
            let index = servers
                .iter()
                .position(|s| std::ptr::eq(s, c))
                .unwrap_or_default();
            return Some(Placement {
                index,
                why: Why::Pinned(kind),
            });
        }
    }
    let ranking = rank(user, servers);
    let home = *ranking.first()?;
    let chosen = ranking.iter().copied().find(|&i| {
        let c = &servers[i];
        usable(c) && (c.state == ServerState::Online || i == home)
    });
    if let Some(index) = chosen {
        let why = if index == home { Why::Home } else { Why::Moved };
        return Some(Placement { index, why });
    }
    ranking
        .into_iter()
        .find(|&i| usable(&servers[i]))
        .map(|index| Placement {
            index,
            why: Why::LastResort,
        })
}

/// Candidate indices from the user's best to worst, by host and weight.
pub fn rank(user: &str, servers: &[Candidate<'_>]) -> Vec<usize> {
    let user = hrw::normalise_user(user);
    let hosts: Vec<(&str, u32)> = servers.iter().map(|c| (c.host, c.weight)).collect();
    hrw::rank(&user, &hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(states: &[(bool, ServerState)]) -> Vec<(String, String)> {
        (0..states.len())
            .map(|i| (format!("10.0.0.{i}:143"), format!("10.0.0.{i}")))
            .collect()
    }

    fn cands<'a>(
        names: &'a [(String, String)],
        states: &[(bool, ServerState)],
    ) -> Vec<Candidate<'a>> {
        names
            .iter()
            .zip(states)
            .map(|((label, host), (up, state))| Candidate {
                label,
                host,
                port: Some(143),
                weight: 1,
                up: *up,
                state: *state,
            })
            .collect()
    }

    /// A user whose ranking starts with server `first`.
    fn user_with_home(n: usize, first: usize, second: usize) -> String {
        let states = vec![(true, ServerState::Online); n];
        let names = servers(&states);
        let c = cands(&names, &states);
        (0..)
            .map(|i| format!("user{i}"))
            .find(|u| {
                let r = rank(u, &c);
                r[0] == first && r[1] == second
            })
            .unwrap()
    }

    #[test]
    fn standby_keeps_its_own_users_and_takes_no_one_elses() {
        use ServerState::*;
        let states = [(true, Online), (true, Standby), (true, Online)];
        let names = servers(&states);
        // Home 1 (standby): stays there.
        let own = user_with_home(3, 1, 0);
        let p = place(&own, &cands(&names, &states), None).unwrap();
        assert_eq!((p.index, p.why), (1, Why::Home));
        // Home 0 down, next 1 (standby): skipped, goes to 2.
        let other = user_with_home(3, 0, 1);
        let down0 = [(false, Online), (true, Standby), (true, Online)];
        let p = place(&other, &cands(&names, &down0), None).unwrap();
        assert_eq!((p.index, p.why), (2, Why::Moved));
        // Same with 0 offline instead of down.
        let off0 = [(true, Offline), (true, Standby), (true, Online)];
        assert_eq!(place(&other, &cands(&names, &off0), None).unwrap().index, 2);
        // Only the standby left: last resort.
        let last = [(false, Online), (true, Standby), (true, Offline)];
        let p = place(&other, &cands(&names, &last), None).unwrap();
        assert_eq!((p.index, p.why), (1, Why::LastResort));
        // Nothing usable.
        let none = [(false, Online), (false, Standby), (true, Offline)];
        assert_eq!(place(&other, &cands(&names, &none), None), None);
    }

    #[test]
    fn user_map_pins_by_host_and_port_and_falls_back_to_hashing() {
        use ServerState::*;
        let map =
            UserMap::parse("alice 10.0.0.2\n@example.org 10.0.0.1:143\nbob 10.0.0.9\n").unwrap();
        let states = [(true, Online), (true, Standby), (true, Online)];
        let names = servers(&states);
        let c = cands(&names, &states);
        let p = place("Alice", &c, Some(&map)).unwrap();
        assert_eq!((p.index, p.why), (2, Why::Pinned(PinKind::User)));
        let p = place("carol@example.org", &c, Some(&map)).unwrap();
        assert_eq!((p.index, p.why), (1, Why::Pinned(PinKind::Domain)));
        // A host the backend does not have: hashing.
        let p = place("bob", &c, Some(&map)).unwrap();
        assert_eq!(p, place("bob", &c, None).unwrap());
        // The pinned server down: hashing over the rest.
        let down2 = [(true, Online), (true, Online), (false, Online)];
        let c = cands(&names, &down2);
        let p = place("alice", &c, Some(&map)).unwrap();
        assert_ne!(p.index, 2);
        assert!(matches!(p.why, Why::Home | Why::Moved));
    }

    #[test]
    fn two_servers_on_one_host_are_told_apart_by_the_pinned_port() {
        let names = [
            ("h:1".to_owned(), "h".to_owned()),
            ("h:2".to_owned(), "h".to_owned()),
        ];
        let mut c = cands(&names, &[(true, ServerState::Online); 2]);
        c[0].port = Some(1);
        c[1].port = Some(2);
        let map = UserMap::parse("alice h:2\nbob h\n").unwrap();
        assert_eq!(place("alice", &c, Some(&map)).unwrap().index, 1);
        assert_eq!(place("bob", &c, Some(&map)).unwrap().index, 0);
    }
}
