//! Balancing laws over synthetic backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use common::*;
use postern_backend_pool::PoolError;
use postern_config::Balance;
use postern_proto::Protocol;

async fn servers(n: usize) -> Vec<FakeServer> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(FakeServer::spawn(Behavior::greeting("* OK ready\r\n")).await);
    }
    v
}

#[tokio::test]
async fn round_robin_spreads_evenly_over_three() {
    let s = servers(3).await;
    let (pool, _m) = pool(
        &backend(
            "rr",
            s.iter().map(FakeServer::server_addr).collect(),
            Balance::RoundRobin,
        ),
        Protocol::Imap,
    );
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut held = Vec::new();
    for i in 0..30 {
        let conn = pool
            .connect(client(&format!("192.0.2.{}:1000", i + 1)))
            .await
            .unwrap();
        assert_eq!(conn.greeting, b"* OK ready\r\n");
        *counts.entry(conn.server.clone()).or_default() += 1;
        held.push(conn);
    }
    for server in &s {
        assert_eq!(counts.get(&server.label()), Some(&10), "{counts:?}");
    }
}

#[tokio::test]
async fn least_connections_prefers_the_idle_server() {
    let s = servers(2).await;
    let (pool, metrics) = pool(
        &backend(
            "lc",
            s.iter().map(FakeServer::server_addr).collect(),
            Balance::LeastConnections,
        ),
        Protocol::Imap,
    );
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(pool.connect(client("192.0.2.1:1000")).await.unwrap());
    }
    let on = |held: &[postern_backend_pool::BackendConn], label: &str| {
        held.iter().filter(|c| c.server == label).count()
    };
    assert_eq!(on(&held, &s[0].label()), 2, "ties are shared");
    assert_eq!(metrics.server("lc", &s[0].label()).active.get(), 2);
    // Close both sessions on server 0: it is now the idle one and must get the next two.
    let first = s[0].label();
    held.retain(|c| c.server != first);
    assert_eq!(
        metrics.server("lc", &first).active.get(),
        0,
        "dropping a BackendConn releases its count"
    );
    for _ in 0..2 {
        let conn = pool.connect(client("192.0.2.1:1000")).await.unwrap();
        assert_eq!(conn.server, first);
        held.push(conn);
    }
}

#[tokio::test]
async fn client_hash_is_sticky_and_removing_one_of_three_moves_about_a_third() {
    let s = servers(3).await;
    let all: Vec<_> = s.iter().map(FakeServer::server_addr).collect();
    let (three, _m) = pool(
        &backend("ch", all.clone(), Balance::ClientHash),
        Protocol::Imap,
    );
    let (two, _m2) = pool(
        &backend("ch", all[..2].to_vec(), Balance::ClientHash),
        Protocol::Imap,
    );
    let removed = s[2].label();
    let mut moved = 0;
    let mut on_removed = 0;
    for i in 0..300u32 {
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i * 7919);
        let c = client(&format!("{ip}:{}", 1024 + i));
        let a = three.connect(c).await.unwrap().server;
        // Same IP, another source port (a parallel IMAP connection): same server.
        let again = three
            .connect(common::client(&format!("{ip}:{}", 40000 + i)))
            .await
            .unwrap()
            .server;
        assert_eq!(a, again, "client {ip} moved between its own connections");
        let b = two.connect(c).await.unwrap().server;
        if a == removed {
            on_removed += 1;
        }
        if a != b {
            moved += 1;
            assert_eq!(a, removed, "client {ip} moved although its server stayed");
        }
    }
    assert_eq!(moved, on_removed);
    assert!(
        (60..=140).contains(&moved),
        "moved {moved} of 300, expected about 100"
    );
}

#[tokio::test]
async fn per_server_limit_skips_full_servers() {
    let s = servers(2).await;
    let mut cfg = backend(
        "lim",
        s.iter().map(FakeServer::server_addr).collect(),
        Balance::RoundRobin,
    );
    cfg.max_connections_per_server = 1;
    let (pool, _m) = pool(&cfg, Protocol::Imap);
    let a = pool.connect(client("192.0.2.1:1")).await.unwrap();
    let b = pool.connect(client("192.0.2.1:2")).await.unwrap();
    assert_ne!(a.server, b.server);
    let err = pool.connect(client("192.0.2.1:3")).await.unwrap_err();
    assert!(matches!(err, PoolError::AllFull { limit: 1, .. }), "{err}");
    drop(a);
    pool.connect(client("192.0.2.1:4")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_least_connections_stays_balanced_and_counts_return_to_zero() {
    let s = servers(2).await;
    let (pool, metrics) = pool(
        &backend(
            "lcc",
            s.iter().map(FakeServer::server_addr).collect(),
            Balance::LeastConnections,
        ),
        Protocol::Imap,
    );
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..60u16 {
        let pool = pool.clone();
        tasks.spawn(async move {
            pool.connect(client(&format!("192.0.2.1:{}", 2000 + i)))
                .await
        });
    }
    let mut held = Vec::new();
    while let Some(r) = tasks.join_next().await {
        held.push(r.unwrap().unwrap());
    }
    for server in &s {
        let n = held.iter().filter(|c| c.server == server.label()).count();
        assert!((20..=40).contains(&n), "{} got {n} of 60", server.label());
        assert_eq!(
            metrics.server("lcc", &server.label()).active.get(),
            n as i64
        );
    }
    drop(held);
    for server in &s {
        assert_eq!(metrics.server("lcc", &server.label()).active.get(), 0);
    }
}

#[tokio::test]
async fn host_names_are_resolved_at_connect_time() {
    let s = servers(1).await;
    let addr = postern_config::ServerAddr::Tcp {
        host: "localhost".into(),
        port: s[0].addr.port(),
    };
    let (pool, _m) = pool(
        &backend("dns", vec![addr], Balance::RoundRobin),
        Protocol::Imap,
    );
    let conn = pool.connect(client("192.0.2.1:1")).await.unwrap();
    assert_eq!(conn.server, format!("localhost:{}", s[0].addr.port()));
    assert_eq!(conn.greeting, b"* OK ready\r\n");
}

#[tokio::test]
async fn with_background_tasks_each_resolved_address_is_a_server() {
    let s = servers(1).await;
    let port = s[0].addr.port();
    let addr = postern_config::ServerAddr::Tcp {
        host: "localhost".into(),
        port,
    };
    let mut cfg = backend("dns", vec![addr], Balance::RoundRobin);
    cfg.resolve_interval = std::time::Duration::from_secs(1);
    let (pool, metrics) = pool(&cfg, Protocol::Imap);
    let shutdown = tokio_util::sync::CancellationToken::new();
    pool.spawn_background(shutdown.clone());
    let want = format!("127.0.0.1:{port}");
    assert!(
        postern_testkit::wait_for(std::time::Duration::from_secs(5), || {
            pool.servers().iter().any(|st| st.label == want)
        })
        .await,
        "{:?}",
        pool.servers()
    );
    let status = pool
        .servers()
        .into_iter()
        .find(|st| st.label == want)
        .unwrap();
    assert_eq!(status.addr.to_string(), format!("localhost:{port}"));
    assert!(pool
        .servers()
        .iter()
        .all(|st| st.label != format!("localhost:{port}")));
    let conn = pool.connect(client("192.0.2.1:1")).await.unwrap();
    assert_eq!(conn.server, want);
    // The name's own series went with the server that stood for it.
    drop(conn);
    assert!(
        postern_testkit::wait_for(std::time::Duration::from_secs(5), || {
            !metrics
                .encode()
                .contains(&format!("server=\"localhost:{port}\""))
        })
        .await
    );
    shutdown.cancel();
}
