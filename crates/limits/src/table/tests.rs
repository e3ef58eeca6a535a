//! The table under a made-up clock: every instant is `t0 + something`, so buckets and
//! windows are tested to the millisecond without sleeping.

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use postern_config::{LimitsConfig, NetworkSet};

use super::*;

fn limits() -> LimitsConfig {
    LimitsConfig {
        per_ip_connections: NonZeroU32::new(3),
        per_ip_rate: NonZeroU32::new(5),
        prelogin_timeout: Duration::from_secs(60),
        max_prelogin: 100,
        auth_failures: NonZeroU32::new(4),
        auth_failure_window: Duration::from_secs(10),
        exempt: NetworkSet::default(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn table(capacity: usize) -> (Arc<AddressTable>, Instant) {
    let t = Arc::new(AddressTable::new(capacity));
    (t, Instant::now())
}

#[test]
fn per_ip_connections_caps_open_sessions_and_a_closed_one_frees_its_place() {
    let (t, t0) = table(1000);
    let l = LimitsConfig {
        per_ip_rate: None,
        ..limits()
    };
    let a = ip("192.0.2.1");
    let held: Vec<_> = (0..3).map(|_| t.admit(a, &l, t0).unwrap()).collect();
    assert_eq!(t.admit(a, &l, t0).unwrap_err(), Refusal::PerIp);
    assert!(
        t.admit(ip("192.0.2.2"), &l, t0).is_ok(),
        "another address is not affected"
    );
    drop(held.into_iter().next());
    assert!(t.admit(a, &l, t0).is_ok(), "a closed session frees a place");
}

#[test]
fn per_ip_rate_is_a_token_bucket_with_twice_the_rate_as_burst() {
    let (t, t0) = table(1000);
    let l = LimitsConfig {
        per_ip_connections: None,
        ..limits()
    };
    let a = ip("192.0.2.1");
    for i in 0..10 {
        assert!(t.admit(a, &l, t0).is_ok(), "burst of 2 x 5: connection {i}");
    }
    assert_eq!(t.admit(a, &l, t0).unwrap_err(), Refusal::Rate);
    // 5 per second: one token every 200 ms.
    assert_eq!(t.admit(a, &l, t0 + ms(199)).unwrap_err(), Refusal::Rate);
    assert!(t.admit(a, &l, t0 + ms(200)).is_ok());
    assert_eq!(t.admit(a, &l, t0 + ms(201)).unwrap_err(), Refusal::Rate);
    // A long pause refills the burst, not more.
    let later = t0 + Duration::from_secs(3600);
    for _ in 0..10 {
        assert!(t.admit(a, &l, later).is_ok());
    }
    assert_eq!(t.admit(a, &l, later).unwrap_err(), Refusal::Rate);
}

#[test]
fn ipv6_counts_per_64_and_mapped_ipv4_is_ipv4() {
    let (t, t0) = table(1000);
    let l = LimitsConfig {
        per_ip_connections: NonZeroU32::new(1),
        per_ip_rate: None,
        ..limits()
    };
    let _a = t.admit(ip("2001:db8:1:2::1"), &l, t0).unwrap();
    assert_eq!(
        t.admit(ip("2001:db8:1:2:ffff::9"), &l, t0).unwrap_err(),
        Refusal::PerIp,
        "the same /64"
    );
    assert!(
        t.admit(ip("2001:db8:1:3::1"), &l, t0).is_ok(),
        "another /64"
    );
    let _v4 = t.admit(ip("192.0.2.7"), &l, t0).unwrap();
    assert_eq!(
        t.admit(ip("::ffff:192.0.2.7"), &l, t0).unwrap_err(),
        Refusal::PerIp,
        "an IPv4-mapped address is the IPv4 client"
    );
    assert!(t.admit(ip("192.0.2.8"), &l, t0).is_ok(), "IPv4 per address");
    assert!(
        t.admit(ip("::1"), &l, t0).is_ok(),
        "::/64 is not the mapped range's key"
    );
}

#[test]
fn exempt_networks_are_never_counted_rated_or_blocked() {
    let (t, t0) = table(1000);
    let l = LimitsConfig {
        per_ip_connections: NonZeroU32::new(1),
        per_ip_rate: NonZeroU32::new(1),
        auth_failures: NonZeroU32::new(1),
        exempt: NetworkSet::new(["10.0.0.0/8".parse().unwrap()]),
        ..limits()
    };
    let held: Vec<_> = (0..100)
        .map(|_| t.admit(ip("10.1.2.3"), &l, t0).unwrap())
        .collect();
    assert!(held.iter().all(|p| !p.is_tracked()));
    for p in &held {
        p.login_failed(&l, t0);
    }
    assert!(t.admit(ip("10.1.2.3"), &l, t0).is_ok());
    assert!(t.is_empty(), "exempt addresses take no entry");
}

#[test]
fn the_brake_blocks_after_auth_failures_until_the_window_has_passed() {
    let (t, t0) = table(1000);
    let l = limits(); // 4 failures in 10 s
    let a = ip("198.51.100.9");
    let session = t.admit(a, &l, t0).unwrap();
    for i in 0..3 {
        session.login_failed(&l, t0 + ms(100 * i));
    }
    assert!(t.admit(a, &l, t0 + ms(400)).is_ok(), "3 of 4: not yet");
    session.login_failed(&l, t0 + ms(500));
    let blocked = t0 + ms(500);
    assert_eq!(t.admit(a, &l, blocked).unwrap_err(), Refusal::AuthFailures);
    assert_eq!(
        t.admit(a, &l, blocked + ms(9_999)).unwrap_err(),
        Refusal::AuthFailures
    );
    assert!(
        t.admit(ip("198.51.100.10"), &l, blocked).is_ok(),
        "only the failing address is blocked"
    );
    assert!(
        t.admit(a, &l, blocked + ms(10_000)).is_ok(),
        "the window has passed"
    );
    drop(session);
}

#[test]
fn a_failure_while_blocked_starts_the_window_again() {
    let (t, t0) = table(1000);
    let l = LimitsConfig {
        per_ip_rate: None,
        ..limits()
    };
    let a = ip("198.51.100.9");
    let session = t.admit(a, &l, t0).unwrap();
    for _ in 0..4 {
        session.login_failed(&l, t0);
    }
    // The session opened before the block keeps trying.
    session.login_failed(&l, t0 + ms(8_000));
    assert_eq!(
        t.admit(a, &l, t0 + ms(12_000)).unwrap_err(),
        Refusal::AuthFailures
    );
    assert!(t.admit(a, &l, t0 + ms(18_000)).is_ok());
}

#[test]
fn failures_spread_thinner_than_the_window_never_block() {
    let (t, t0) = table(1000);
    let l = LimitsConfig {
        per_ip_rate: None,
        ..limits()
    };
    let a = ip("198.51.100.9");
    let session = t.admit(a, &l, t0).unwrap();
    // One failure every 5 s = 2 per 10 s window, the limit is 4.
    for i in 0..20 {
        let at = t0 + ms(5_000 * i);
        session.login_failed(&l, at);
        assert!(t.admit(a, &l, at).is_ok(), "failure {i}");
    }
}

#[test]
fn failures_straddling_a_window_boundary_still_block() {
    // A counter that restarts at each window boundary would let 2 x 3 failures through
    // around it; the sliding estimate counts the previous window's share (3 x 0.99 here).
    let (t, t0) = table(1000);
    let l = LimitsConfig {
        per_ip_rate: None,
        ..limits()
    };
    let a = ip("198.51.100.9");
    let session = t.admit(a, &l, t0).unwrap();
    let base = t.ms(t0);
    let boundary = t0 + ms(10_000 - base % 10_000) + ms(10_000);
    for i in 0..3 {
        session.login_failed(&l, boundary - ms(300 - 100 * i));
    }
    assert!(t.admit(a, &l, boundary - ms(1)).is_ok());
    session.login_failed(&l, boundary + ms(100));
    assert!(
        t.admit(a, &l, boundary + ms(100)).is_ok(),
        "estimate 3.97 of 4"
    );
    session.login_failed(&l, boundary + ms(100));
    assert_eq!(
        t.admit(a, &l, boundary + ms(100)).unwrap_err(),
        Refusal::AuthFailures
    );
}

#[test]
fn a_reload_applies_new_limits_to_the_next_connection_and_keeps_the_counts() {
    let (t, t0) = table(1000);
    let l = LimitsConfig {
        per_ip_rate: None,
        ..limits()
    };
    let a = ip("192.0.2.1");
    let _held: Vec<_> = (0..3).map(|_| t.admit(a, &l, t0).unwrap()).collect();
    let lower = LimitsConfig {
        per_ip_connections: NonZeroU32::new(2),
        ..l.clone()
    };
    assert_eq!(t.admit(a, &lower, t0).unwrap_err(), Refusal::PerIp);
    let higher = LimitsConfig {
        per_ip_connections: NonZeroU32::new(4),
        ..l.clone()
    };
    let _fourth = t.admit(a, &higher, t0).unwrap();
    assert_eq!(t.admit(a, &higher, t0).unwrap_err(), Refusal::PerIp);
    let off = LimitsConfig {
        per_ip_connections: None,
        ..l
    };
    assert!(
        t.admit(a, &off, t0).is_ok(),
        "the 4 open ones still count, but no limit"
    );
}

#[test]
fn a_flood_of_distinct_addresses_stays_within_the_bound() {
    let (t, t0) = table(4096);
    let l = limits();
    // A held session and a block from before the flood.
    let holder = ip("203.0.113.1");
    let held: Vec<_> = (0..3).map(|_| t.admit(holder, &l, t0).unwrap()).collect();
    let attacker = ip("203.0.113.2");
    let s = t.admit(attacker, &l, t0).unwrap();
    for _ in 0..4 {
        s.login_failed(&l, t0);
    }
    drop(s);
    // 25 x the capacity, each address once (connect and close), over 10 ms.
    for i in 0..100_000u32 {
        let a = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        let now = t0 + ms(u64::from(i) / 10_000);
        assert!(t.admit(a, &l, now).is_ok(), "address {a}");
        assert!(t.len() <= t.capacity());
    }
    assert_eq!(t.len(), t.capacity(), "filled to the bound, not past it");
    assert_eq!(
        t.untracked(),
        0,
        "always a slot worth less than a new address"
    );
    // Per slot: one Entry plus about 5 bytes of index (a u32 and a control byte at the
    // hashbrown load factor).
    let per_address = t.memory_bytes() / t.capacity();
    assert!(per_address <= 96, "{per_address} bytes per address");
    // What must survive a flood did.
    assert_eq!(t.admit(holder, &l, t0).unwrap_err(), Refusal::PerIp);
    assert_eq!(
        t.admit(attacker, &l, t0 + ms(20)).unwrap_err(),
        Refusal::AuthFailures,
        "a flood of new addresses does not lift a block"
    );
    drop(held);
    assert!(
        t.admit(holder, &l, t0 + ms(20)).is_ok(),
        "released after the flood"
    );
}

#[test]
fn at_the_bound_with_every_slot_pinned_a_new_address_is_admitted_untracked() {
    let (t, t0) = table(16); // one slot per shard
    let l = LimitsConfig {
        per_ip_rate: None,
        ..limits()
    };
    let mut held = Vec::new();
    let mut i = 0u32;
    while t.len() < t.capacity() {
        held.push(t.admit(IpAddr::V4(Ipv4Addr::from(i)), &l, t0).unwrap());
        i += 1;
    }
    // Filling every shard also sent some addresses to shards already full.
    let before = t.untracked();
    let extra = t.admit(ip("192.0.2.200"), &l, t0).unwrap();
    assert!(!extra.is_tracked());
    assert_eq!(t.untracked(), before + 1);
    assert_eq!(t.len(), t.capacity());
    drop(extra); // releases nothing
    drop(held);
    let again = t.admit(ip("192.0.2.200"), &l, t0).unwrap();
    assert!(again.is_tracked(), "released slots are taken again");
}

#[test]
fn two_threads_admitting_and_releasing_leave_exact_counts() {
    let (t, t0) = table(1000);
    let l = LimitsConfig {
        per_ip_connections: NonZeroU32::new(1_000_000),
        per_ip_rate: None,
        ..limits()
    };
    let a = ip("192.0.2.1");
    std::thread::scope(|s| {
        for _ in 0..2 {
            let (t, l) = (&t, &l);
            s.spawn(move || {
                for _ in 0..10_000 {
                    let p = t.admit(a, l, t0).unwrap();
                    drop(p);
                }
            });
        }
    });
    let one = LimitsConfig {
        per_ip_connections: NonZeroU32::new(1),
        ..l
    };
    let first = t.admit(a, &one, t0).unwrap();
    assert_eq!(t.admit(a, &one, t0).unwrap_err(), Refusal::PerIp);
    drop(first);
}

#[test]
fn the_gateway_size_leaves_room_beyond_max_connections() {
    let t = AddressTable::for_max_connections(100_000);
    assert!(t.capacity() >= 100_000 + SPARE_ENTRIES);
    assert!(t.is_empty());
    assert!(t.memory_bytes() < 4096, "nothing is allocated before use");
}

#[tokio::test(start_paused = true)]
async fn under_the_runtime_clock_buckets_refill_and_blocks_lift() {
    // What the session does: `Instant::now()` of the (here paused) runtime at each call.
    let t = Arc::new(AddressTable::new(1000));
    let l = limits(); // 5/s, burst 10; 4 failures in 10 s
    let a = ip("198.51.100.1");
    for _ in 0..10 {
        drop(t.admit(a, &l, Instant::now()).unwrap());
    }
    assert_eq!(t.admit(a, &l, Instant::now()).unwrap_err(), Refusal::Rate);
    tokio::time::advance(ms(400)).await;
    let session = t.admit(a, &l, Instant::now()).unwrap();
    drop(t.admit(a, &l, Instant::now()).unwrap());
    for _ in 0..4 {
        session.login_failed(&l, Instant::now());
    }
    tokio::time::advance(Duration::from_secs(9)).await;
    assert_eq!(
        t.admit(a, &l, Instant::now()).unwrap_err(),
        Refusal::AuthFailures
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(t.admit(a, &l, Instant::now()).is_ok());
}
