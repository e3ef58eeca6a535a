//! Health checks, failover and the all-down error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use postern_backend_pool::PoolError;
use postern_config::Balance;
use postern_proto::Protocol;
use postern_testkit::wait_for;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn killed_server_goes_down_sessions_go_elsewhere_and_it_rejoins() {
    let a = FakeServer::spawn(Behavior::greeting("* OK a\r\n")).await;
    let b = FakeServer::spawn(Behavior::greeting("* OK b\r\n")).await;
    let c = FakeServer::spawn(Behavior::greeting("* OK c\r\n")).await;
    let mut cfg = backend(
        "farm",
        vec![a.server_addr(), b.server_addr(), c.server_addr()],
        Balance::RoundRobin,
    );
    cfg.health = health(50); // fall 2, rise 2
    let (pool, metrics) = pool(&cfg, Protocol::Imap);
    let shutdown = CancellationToken::new();
    pool.spawn_background(shutdown.clone());
    let b_label = b.label();
    let b_up = metrics.server("farm", &b_label).up;
    assert_eq!(b_up.get(), 1, "servers start up");

    let killed_at = Instant::now();
    let b_addr = b.kill();
    // Sessions started right after the kill, before health checks notice: failover hides it.
    for i in 0..30 {
        let conn = pool
            .connect(client(&format!("192.0.2.9:{}", 1000 + i)))
            .await
            .expect("no client-visible failure");
        assert_ne!(conn.server, b_label);
    }
    assert!(
        wait_for(Duration::from_secs(2), || b_up.get() == 0).await,
        "b not marked down"
    );
    // fall × interval = 100 ms, plus passive failures that may come first; allow scheduling slack.
    assert!(
        killed_at.elapsed() < Duration::from_millis(1000),
        "took {:?}",
        killed_at.elapsed()
    );
    assert!(pool.any_up());
    for i in 0..30 {
        let conn = pool
            .connect(client(&format!("192.0.2.9:{}", 2000 + i)))
            .await
            .unwrap();
        assert_ne!(conn.server, b_label);
    }
    let failures_while_down = metrics.server("farm", &b_label).connect_failures.get();

    let _b = FakeServer::spawn_on(b_addr, Behavior::greeting("* OK b again\r\n")).await;
    assert!(
        wait_for(Duration::from_secs(2), || b_up.get() == 1).await,
        "b did not rejoin"
    );
    let mut saw_b = false;
    for i in 0..6 {
        let conn = pool
            .connect(client(&format!("192.0.2.9:{}", 3000 + i)))
            .await
            .unwrap();
        saw_b |= conn.server == b_label;
    }
    assert!(saw_b, "rejoined server gets sessions again");
    assert_eq!(
        metrics.server("farm", &b_label).connect_failures.get(),
        failures_while_down,
        "a down server gets no sessions"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn all_down_is_a_pool_error() {
    let a = FakeServer::spawn(Behavior::greeting("* OK a\r\n")).await;
    let b = FakeServer::spawn(Behavior::greeting("* OK b\r\n")).await;
    let mut cfg = backend(
        "gone",
        vec![a.server_addr(), b.server_addr()],
        Balance::LeastConnections,
    );
    cfg.health = health(50);
    let (pool, _metrics) = pool(&cfg, Protocol::Imap);
    a.kill();
    b.kill();
    for port in 1..=3 {
        let err = pool
            .connect(client(&format!("192.0.2.1:{port}")))
            .await
            .unwrap_err();
        assert!(
            matches!(err, PoolError::NoServerAvailable { tried: 2, .. }),
            "{err}"
        );
    }
    assert!(
        pool.any_up(),
        "without health checks, session failures never mark a server down"
    );
    let shutdown = CancellationToken::new();
    pool.spawn_background(shutdown.clone());
    assert!(wait_for(Duration::from_secs(2), || !pool.any_up()).await);
    let started = Instant::now();
    let err = pool.connect(client("192.0.2.1:2")).await.unwrap_err();
    assert!(
        matches!(err, PoolError::AllDown { servers: 2, .. }),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "all-down answers at once"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn refusing_greeting_is_failed_over() {
    let bye = FakeServer::spawn(Behavior::greeting(
        "* BYE [UNAVAILABLE] too many connections\r\n",
    ))
    .await;
    let ok = FakeServer::spawn(Behavior::greeting("* OK fine\r\n")).await;
    let (pool, metrics) = pool(
        &backend(
            "bye",
            vec![bye.server_addr(), ok.server_addr()],
            Balance::RoundRobin,
        ),
        Protocol::Imap,
    );
    // Session failures count toward health only while checks run (they bring servers back).
    let shutdown = CancellationToken::new();
    pool.spawn_background(shutdown.clone());
    for i in 0..4 {
        let conn = pool
            .connect(client(&format!("192.0.2.1:{}", 100 + i)))
            .await
            .unwrap();
        assert_eq!(conn.server, ok.label());
        assert_eq!(conn.greeting, b"* OK fine\r\n");
    }
    assert!(metrics.server("bye", &bye.label()).connect_failures.get() >= 1);
    // fall = 2 consecutive session failures: the refusing server is down, no more attempts.
    assert_eq!(metrics.server("bye", &bye.label()).up.get(), 0);
    shutdown.cancel();
}

#[tokio::test]
async fn silent_server_times_out_and_is_failed_over_within_the_budget() {
    let silent = FakeServer::spawn(Behavior {
        silent: true,
        ..Behavior::greeting("")
    })
    .await;
    let ok = FakeServer::spawn(Behavior::greeting("+OK pop ready\r\n")).await;
    let mut cfg = backend(
        "slow",
        vec![silent.server_addr(), ok.server_addr()],
        Balance::RoundRobin,
    );
    cfg.connect_timeout = Duration::from_millis(200);
    let (pool, _m) = pool(&cfg, Protocol::Pop3);
    let started = Instant::now();
    // Rotation 0 tries the silent server first.
    let conn = pool.connect(client("192.0.2.1:5")).await.unwrap();
    assert_eq!(conn.server, ok.label());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(400),
        "took {took:?}"
    );
}

#[tokio::test]
async fn wrong_protocol_greeting_is_rejected() {
    let smtp = FakeServer::spawn(Behavior::greeting("220 smtp.test ESMTP\r\n")).await;
    let (pool, _m) = pool(
        &backend("wrong", vec![smtp.server_addr()], Balance::RoundRobin),
        Protocol::Imap,
    );
    let err = pool.connect(client("192.0.2.1:5")).await.unwrap_err();
    let PoolError::NoServerAvailable { last_error, .. } = err else {
        panic!("{err}")
    };
    assert!(
        last_error.to_string().contains("not a imap greeting"),
        "{last_error}"
    );
}

#[tokio::test]
async fn unix_socket_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("imap.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s, Behavior::greeting("* OK unix\r\n"), seen2.clone()));
        }
    });
    let addr = postern_config::ServerAddr::Unix(path.clone());
    let (pool, _m) = pool(
        &backend("unix", vec![addr], Balance::RoundRobin),
        Protocol::Imap,
    );
    let mut conn = pool.connect(client("192.0.2.1:5")).await.unwrap();
    assert_eq!(conn.server, format!("unix:{}", path.display()));
    assert_eq!(conn.greeting, b"* OK unix\r\n");
    use tokio::io::AsyncWriteExt;
    conn.stream.write_all(b"a NOOP\r\n").await.unwrap();
    let mut buf = Vec::new();
    read_until_contains(&mut conn.stream, &mut buf, b"echo a NOOP\r\n").await;
}
