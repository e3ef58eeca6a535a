//! `route = "user"` support: server status, connecting one chosen server (no failover), and
//! the pre-login capabilities learned by the health probes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use postern_backend_pool::PoolError;
use postern_config::{Balance, Route, UserRoute};
use postern_proto::Protocol;
use postern_testkit::wait_for;
use tokio_util::sync::CancellationToken;

fn user_backend(servers: Vec<postern_config::ServerAddr>) -> postern_config::BackendConfig {
    let mut b = backend("imap", servers, Balance::LeastConnections);
    b.route = Route::User(UserRoute {
        user_map: None,
        weights: Vec::new(),
    });
    b.health = health(50);
    b
}

#[tokio::test]
async fn connect_to_reaches_only_the_chosen_server() {
    let a = FakeServer::spawn(Behavior::greeting("* OK a\r\n")).await;
    let b = FakeServer::spawn(Behavior::greeting("* OK b\r\n")).await;
    let (pool, _m) = pool(
        &user_backend(vec![a.server_addr(), b.server_addr()]),
        Protocol::Imap,
    );
    let status = pool.servers();
    assert_eq!(status.len(), 2);
    assert_eq!(status[1].label, b.label());
    assert_eq!(
        (status[1].host.as_str(), status[1].port),
        ("127.0.0.1", Some(b.addr.port()))
    );
    for _ in 0..3 {
        let conn = pool
            .connect_to(&b.label(), client("192.0.2.1:5000"))
            .await
            .unwrap();
        assert_eq!(conn.greeting, b"* OK b\r\n");
        assert_eq!(conn.server, b.label());
    }
    assert_eq!(pool.servers()[1].sessions, 0);
    let held = pool
        .connect_to(&a.label(), client("192.0.2.1:5000"))
        .await
        .unwrap();
    assert_eq!(pool.servers()[0].sessions, 1);
    drop(held);
    let gone = pool
        .connect_to("10.9.9.9:143", client("192.0.2.1:5000"))
        .await;
    assert!(
        matches!(gone, Err(PoolError::ServerGone { .. })),
        "{gone:?}"
    );
    // A dead server fails at once, without trying the other one.
    let dead = a.label();
    a.kill();
    let failed = pool.connect_to(&dead, client("192.0.2.1:5000")).await;
    assert!(
        matches!(failed, Err(PoolError::ServerFailed { .. })),
        "{failed:?}"
    );
    assert_eq!(b.seen.lock().unwrap().lines.len(), 3);
}

#[tokio::test]
async fn probes_learn_the_capabilities_every_server_offers() {
    let a = FakeServer::spawn(Behavior::greeting(
        "* OK [CAPABILITY IMAP4rev1 SASL-IR ID AUTH=PLAIN AUTH=LOGIN] a\r\n",
    ))
    .await;
    let b = FakeServer::spawn(Behavior::greeting(
        "* OK [CAPABILITY IMAP4rev1 ID AUTH=PLAIN] b\r\n",
    ))
    .await;
    let (pool, _m) = pool(
        &user_backend(vec![a.server_addr(), b.server_addr()]),
        Protocol::Imap,
    );
    assert_eq!(pool.capabilities(), None);
    let stop = CancellationToken::new();
    pool.spawn_background(stop.clone());
    assert!(
        wait_for(Duration::from_secs(5), || pool
            .capabilities()
            .is_some_and(|c| c.items().len() == 3))
        .await
    );
    assert_eq!(
        pool.capabilities().unwrap().items(),
        ["IMAP4rev1", "ID", "AUTH=PLAIN"]
    );
    // The server that goes down no longer narrows the set.
    b.kill();
    assert!(wait_for(Duration::from_secs(5), || !pool.servers()[1].up).await);
    assert_eq!(
        pool.capabilities().unwrap().sasl_mechanisms(),
        ["PLAIN", "LOGIN"]
    );
    assert!(pool.servers()[1].transitions >= 1);
    stop.cancel();
}
