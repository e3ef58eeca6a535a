//! What admission costs per connection: one `admit` and the permit's release, the work the
//! address table adds to every accepted connection. Compared with postern's CPU per full
//! handshake + backend connect (≈ 280 µs, benches/RESULTS.md), anything under a
//! microsecond cannot move it.
//!
//! `cargo bench -p postern-limits` (release). Cases:
//! - `same_address`: one client reconnecting (the entry exists; lookup, bucket, count).
//! - `distinct_full`: every connection from a new address with the table at its bound
//!   (the eviction scan on every call: a flood of distinct addresses).
//! - `two_workers/*`: the same from two threads at once, as two SO_REUSEPORT workers do;
//!   the time is per operation per thread (wall time of the pair / operations each).

// A benchmark: a bad constant should stop it loudly.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use postern_config::{LimitsConfig, NetworkSet};
use postern_limits::AddressTable;
use tokio::time::Instant;

fn limits() -> LimitsConfig {
    LimitsConfig {
        per_ip_connections: NonZeroU32::new(1_000_000),
        per_ip_rate: NonZeroU32::new(100_000),
        prelogin_timeout: Duration::from_secs(60),
        max_prelogin: 20_000,
        auth_failures: NonZeroU32::new(10),
        auth_failure_window: Duration::from_secs(600),
        exempt: NetworkSet::new(["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]),
    }
}

/// The gateway's own size for the default `max_connections`.
fn gateway_table() -> Arc<AddressTable> {
    Arc::new(AddressTable::for_max_connections(100_000))
}

fn addr(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i & 0x00ff_ffff)))
}

/// Fills the table to its bound with addresses that hold nothing (connect and close).
fn fill(table: &Arc<AddressTable>, l: &LimitsConfig) -> u32 {
    let mut i = 0;
    while table.len() < table.capacity() {
        drop(table.admit(addr(i), l, Instant::now()));
        i += 1;
    }
    i
}

fn one_thread(c: &mut Criterion) {
    let l = limits();
    let mut g = c.benchmark_group("one_worker");
    let table = gateway_table();
    g.bench_function("same_address", |b| {
        let a = addr(7);
        b.iter(|| drop(black_box(table.admit(a, &l, Instant::now()))));
    });
    let table = gateway_table();
    let mut next = fill(&table, &l);
    g.bench_function("distinct_full", |b| {
        b.iter(|| {
            next = next.wrapping_add(1);
            drop(black_box(table.admit(addr(next), &l, Instant::now())));
        });
    });
    g.finish();
}

fn two_threads(c: &mut Criterion) {
    let l = Arc::new(limits());
    let mut g = c.benchmark_group("two_workers");
    for (name, distinct) in [("same_address", false), ("distinct_full", true)] {
        let table = gateway_table();
        let start = if distinct { fill(&table, &l) } else { 0 };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let barrier = Arc::new(Barrier::new(2));
                let threads: Vec<_> = (0..2u32)
                    .map(|t| {
                        let (table, l, barrier) = (table.clone(), l.clone(), barrier.clone());
                        std::thread::spawn(move || {
                            barrier.wait();
                            let began = Instant::now();
                            for i in 0..iters as u32 {
                                let a = if distinct {
                                    addr(start.wrapping_add(i.wrapping_mul(2) + t))
                                } else {
                                    // Both workers on one address: one mutex, the worst case.
                                    addr(7)
                                };
                                drop(black_box(table.admit(a, &l, Instant::now())));
                            }
                            began.elapsed()
                        })
                    })
                    .collect();
                threads
                    .into_iter()
                    .map(|t| t.join().unwrap_or_default())
                    .max()
                    .unwrap_or_default()
            });
        });
    }
    g.finish();
}

criterion_group!(benches, one_thread, two_threads);
criterion_main!(benches);
