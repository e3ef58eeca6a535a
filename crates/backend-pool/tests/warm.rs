//! Warm (pre-connected, pre-greeted) spare connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use postern_config::{Balance, ForwardClient};
use postern_proto::Protocol;
use postern_testkit::wait_for;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_session_gets_a_spare_connection_and_spares_are_refilled() {
    let server = FakeServer::spawn(Behavior::greeting("* OK warm\r\n")).await;
    let mut cfg = backend("warm", vec![server.server_addr()], Balance::RoundRobin);
    cfg.warm = 2;
    cfg.health = health(60_000); // one probe at start, then quiet
    let (pool, metrics) = pool(&cfg, Protocol::Imap);
    let shutdown = CancellationToken::new();
    pool.spawn_background(shutdown.clone());
    let seen = server.seen.clone();
    // The probe (which says LOGOUT) plus two spares.
    let greeted = || seen.lock().unwrap().lines.len();
    assert!(
        wait_for(Duration::from_secs(2), || greeted() >= 3).await,
        "spares not opened"
    );
    let before = greeted();

    let mut conn = pool.connect(client("192.0.2.1:1")).await.unwrap();
    assert_eq!(conn.greeting, b"* OK warm\r\n");
    conn.stream.write_all(b"a NOOP\r\n").await.unwrap();
    let mut buf = Vec::new();
    read_until_contains(&mut conn.stream, &mut buf, b"echo a NOOP\r\n").await;
    let index = seen
        .lock()
        .unwrap()
        .lines
        .iter()
        .position(|l| l.first().map(String::as_str) == Some("a NOOP"));
    assert!(
        index.is_some_and(|i| i < before),
        "the session used a connection opened before connect(): {index:?}"
    );
    assert_eq!(metrics.server("warm", &server.label()).active.get(), 1);
    // The used spare is replaced in the background.
    assert!(
        wait_for(Duration::from_secs(2), || greeted() > before).await,
        "spare not refilled"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn warm_is_ignored_when_the_client_address_must_be_forwarded() {
    let server = FakeServer::spawn(Behavior {
        forward: Some(Protocol::Pop3),
        ..Behavior::greeting("+OK\r\n")
    })
    .await;
    let mut cfg = backend("nowarm", vec![server.server_addr()], Balance::RoundRobin);
    cfg.warm = 2;
    cfg.forward_client = ForwardClient::Protocol;
    let (pool, _m) = pool(&cfg, Protocol::Pop3);
    // No background tasks needed to see it: the session must carry its XCLIENT.
    let _conn = pool.connect(client("192.0.2.1:7")).await.unwrap();
    let seen = server.seen.lock().unwrap();
    assert_eq!(
        seen.lines,
        vec![vec!["XCLIENT ADDR=192.0.2.1 PORT=7".to_owned()]]
    );
}

/// Which connection (in accept order) carried `line`, and how many there were before.
fn connection_of(server: &FakeServer, line: &str) -> Option<usize> {
    server
        .seen
        .lock()
        .unwrap()
        .lines
        .iter()
        .position(|l| l.iter().any(|x| x == line))
}

/// The spares are connected on the worker runtime they are kept for, and only its sessions
/// get them: a session on another runtime dials afresh.
#[tokio::test]
async fn spares_belong_to_the_worker_that_keeps_them() {
    let server = FakeServer::spawn(Behavior::greeting("* OK warm\r\n")).await;
    let mut cfg = backend("perworker", vec![server.server_addr()], Balance::RoundRobin);
    cfg.warm = 1;
    cfg.health = health(60_000);
    let (pool, _metrics) = pool(&cfg, Protocol::Imap);

    // A worker: a current-thread runtime on a thread of its own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let worker = runtime.handle().clone();
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let thread = std::thread::spawn(move || runtime.block_on(stopped.cancelled()));

    let shutdown = CancellationToken::new();
    pool.spawn_background_on(shutdown.clone(), std::slice::from_ref(&worker));
    let greeted = || server.seen.lock().unwrap().lines.len();
    // The probe plus the worker's one spare.
    assert!(wait_for(Duration::from_secs(2), || greeted() >= 2).await);

    // Here (not the worker): no spare, a fresh connection.
    let before = greeted();
    let mut conn = pool.connect(client("192.0.2.1:1")).await.unwrap();
    conn.stream.write_all(b"here NOOP\r\n").await.unwrap();
    let mut buf = Vec::new();
    read_until_contains(&mut conn.stream, &mut buf, b"echo here NOOP").await;
    assert!(connection_of(&server, "here NOOP").is_some_and(|i| i >= before));
    drop(conn);

    // On the worker: the spare it connected.
    let before = greeted();
    let p = std::sync::Arc::clone(&pool);
    let on_worker = worker.spawn(async move {
        let mut conn = p.connect(client("192.0.2.1:2")).await.unwrap();
        conn.stream.write_all(b"there NOOP\r\n").await.unwrap();
        let mut buf = Vec::new();
        read_until_contains(&mut conn.stream, &mut buf, b"echo there NOOP").await;
    });
    on_worker.await.unwrap();
    assert!(
        connection_of(&server, "there NOOP").is_some_and(|i| i < before),
        "the worker's session used its spare"
    );
    shutdown.cancel();
    stop.cancel();
    thread.join().unwrap();
}

/// Time from `connect()` to greeting, cold vs warm, against a local synthetic server.
/// Run: `cargo test -p postern-backend-pool --test warm -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; prints figures"]
async fn measure_time_to_greeting_cold_vs_warm() {
    let server =
        FakeServer::spawn(Behavior::greeting("* OK [CAPABILITY IMAP4rev1] ready\r\n")).await;
    for warm in [0, 4] {
        let mut cfg = backend("measure", vec![server.server_addr()], Balance::RoundRobin);
        cfg.warm = warm;
        cfg.health = health(60_000);
        let (pool, _m) = pool(&cfg, Protocol::Imap);
        let shutdown = CancellationToken::new();
        pool.spawn_background(shutdown.clone());
        tokio::time::sleep(Duration::from_millis(300)).await; // let the spares fill (pacing, not an event)
        let times = sample(&pool, 200, Duration::from_millis(30)).await;
        println!("local fake server, warm={warm}: {}", summary(&times));
        shutdown.cancel();
    }
}
