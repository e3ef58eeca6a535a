//! Property tests of placement: the same inputs give the same server whatever the order of
//! the servers, a change moves only the users it must, and weights give proportional shares.

use postern_director::placement::{place, Candidate};
use postern_director::ServerState;
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Server {
    label: String,
    host: String,
    weight: u32,
    up: bool,
    state: ServerState,
}

fn servers(n: usize) -> Vec<Server> {
    (0..n)
        .map(|i| Server {
            label: format!("10.1.{}.{}:143", i / 200, i % 200 + 1),
            host: format!("10.1.{}.{}", i / 200, i % 200 + 1),
            weight: 1,
            up: true,
            state: ServerState::Online,
        })
        .collect()
}

fn cands(s: &[Server]) -> Vec<Candidate<'_>> {
    s.iter()
        .map(|s| Candidate {
            label: &s.label,
            host: &s.host,
            port: Some(143),
            weight: s.weight,
            up: s.up,
            state: s.state,
        })
        .collect()
}

fn placed(user: &str, s: &[Server]) -> Option<String> {
    let c = cands(s);
    place(user, &c, None).map(|p| s[p.index].label.clone())
}

fn users() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("[a-z0-9._@-]{1,24}", 1..60)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_order_of_the_servers_does_not_matter(
        users in users(),
        n in 1usize..12,
        seed in any::<u64>(),
    ) {
        let list = servers(n);
        let mut shuffled = list.clone();
        // A deterministic shuffle from the seed.
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        for u in &users {
            prop_assert_eq!(placed(u, &list), placed(u, &shuffled));
        }
    }

    #[test]
    fn a_server_going_down_moves_only_its_users_and_they_come_back(
        users in users(),
        n in 2usize..12,
        down in any::<prop::sample::Index>(),
        offline in any::<bool>(),
    ) {
        let list = servers(n);
        let d = down.index(n);
        let mut changed = list.clone();
        if offline {
            changed[d].state = ServerState::Offline;
        } else {
            changed[d].up = false;
        }
        for u in &users {
            let before = placed(u, &list).unwrap();
            let after = placed(u, &changed).unwrap();
            if before == list[d].label {
                prop_assert_ne!(&after, &list[d].label);
            } else {
                prop_assert_eq!(&after, &before, "user {} moved off a healthy server", u);
            }
            // Back up: everyone is home again.
            prop_assert_eq!(placed(u, &list).unwrap(), before);
        }
    }

    #[test]
    fn a_new_server_takes_users_only_for_itself(users in users(), n in 1usize..12) {
        let list = servers(n + 1);
        let before = &list[..n];
        for u in &users {
            let old = placed(u, before).unwrap();
            let new = placed(u, &list).unwrap();
            prop_assert!(new == old || new == list[n].label, "{u}: {old} -> {new}");
        }
    }

    #[test]
    fn standby_gains_no_users_when_another_server_fails(
        users in users(),
        n in 3usize..10,
        which in any::<(prop::sample::Index, prop::sample::Index)>(),
    ) {
        let (s, d) = (which.0.index(n), which.1.index(n));
        prop_assume!(s != d);
        let mut list = servers(n);
        list[s].state = ServerState::Standby;
        let mut failed = list.clone();
        failed[d].up = false;
        for u in &users {
            let before = placed(u, &list).unwrap();
            let after = placed(u, &failed).unwrap();
            if after == list[s].label {
                prop_assert_eq!(&before, &list[s].label, "{} moved onto the standby server", u);
            }
        }
    }
}

#[test]
fn weights_give_proportional_shares() {
    let mut list = servers(4);
    let weights = [1u32, 2, 3, 4];
    for (s, w) in list.iter_mut().zip(weights) {
        s.weight = w;
    }
    let total = 20_000;
    let mut counts = [0usize; 4];
    for i in 0..total {
        let label = placed(&format!("user{i}@example.org"), &list).unwrap();
        let idx = list.iter().position(|s| s.label == label).unwrap();
        counts[idx] += 1;
    }
    for (i, w) in weights.iter().enumerate() {
        let want = total as f64 * f64::from(*w) / 10.0;
        let got = counts[i] as f64;
        assert!(
            (got - want).abs() / want < 0.06,
            "server {i} (weight {w}): {got} users, want about {want} ({counts:?})"
        );
    }
}

#[test]
fn equal_weights_spread_evenly() {
    let list = servers(5);
    let mut counts = std::collections::HashMap::new();
    for i in 0..10_000 {
        *counts
            .entry(placed(&format!("u{i}"), &list).unwrap())
            .or_insert(0usize) += 1;
    }
    for (server, n) in &counts {
        assert!(
            (1800..2200).contains(n),
            "{server}: {n} of 10000 ({counts:?})"
        );
    }
}
