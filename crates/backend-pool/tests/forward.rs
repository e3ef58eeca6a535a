//! Client address forwarding: PROXY v1/v2 headers and the protocol's own ID / XCLIENT.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use postern_config::{Balance, ForwardClient};
use postern_proto::Protocol;
use postern_testkit::wait_for;
use proxy_header::ProxiedAddress;
use tokio::io::AsyncWriteExt;

async fn proxy_case(forward: ForwardClient, peer: &str, local: &str) {
    let server = FakeServer::spawn(Behavior {
        proxy: true,
        ..Behavior::greeting("* OK behind proxy\r\n")
    })
    .await;
    let mut cfg = backend("px", vec![server.server_addr()], Balance::RoundRobin);
    cfg.forward_client = forward;
    let (pool, _m) = pool(&cfg, Protocol::Imap);
    let info = postern_backend_pool::ClientInfo {
        peer: peer.parse().unwrap(),
        local: local.parse().unwrap(),
    };
    let mut conn = pool.connect(info).await.unwrap();
    assert_eq!(
        conn.greeting, b"* OK behind proxy\r\n",
        "the greeting arrives intact after our header"
    );
    conn.stream.write_all(b"a1 CAPABILITY\r\n").await.unwrap();
    let mut buf = Vec::new();
    read_until_contains(&mut conn.stream, &mut buf, b"echo a1 CAPABILITY\r\n").await;
    let seen = server.seen.lock().unwrap();
    assert_eq!(
        seen.headers,
        vec![Some(ProxiedAddress::stream(
            peer.parse().unwrap(),
            local.parse().unwrap()
        ))]
    );
    assert_eq!(
        seen.lines,
        vec![vec!["a1 CAPABILITY".to_owned()]],
        "client bytes follow the header, nothing else"
    );
}

#[tokio::test]
async fn proxy_v1_header_arrives_first_with_the_client_addresses() {
    proxy_case(ForwardClient::ProxyV1, "192.0.2.7:50123", "127.0.0.1:993").await;
    proxy_case(
        ForwardClient::ProxyV1,
        "[2001:db8::7]:50123",
        "[2001:db8::1]:993",
    )
    .await;
}

#[tokio::test]
async fn proxy_v2_header_arrives_first_with_the_client_addresses() {
    proxy_case(ForwardClient::ProxyV2, "192.0.2.7:50123", "127.0.0.1:993").await;
    proxy_case(
        ForwardClient::ProxyV2,
        "[2001:db8::7]:50123",
        "[2001:db8::1]:993",
    )
    .await;
}

#[tokio::test]
async fn health_probes_send_a_local_proxy_header() {
    let server = FakeServer::spawn(Behavior {
        proxy: true,
        ..Behavior::greeting("* OK\r\n")
    })
    .await;
    let mut cfg = backend("probe", vec![server.server_addr()], Balance::RoundRobin);
    cfg.forward_client = ForwardClient::ProxyV2;
    cfg.health = health(50);
    let (pool, _m) = pool(&cfg, Protocol::Imap);
    let shutdown = tokio_util::sync::CancellationToken::new();
    pool.spawn_background(shutdown.clone());
    let seen = server.seen.clone();
    assert!(
        wait_for(std::time::Duration::from_secs(2), || !seen
            .lock()
            .unwrap()
            .headers
            .is_empty())
        .await
    );
    assert_eq!(
        seen.lock().unwrap().headers[0],
        None,
        "LOCAL header: no addresses"
    );
    shutdown.cancel();
}

/// Runs one session with `forward_client = "protocol"` and checks what each side saw.
async fn protocol_case(
    protocol: Protocol,
    greeting: &str,
    expected_command: &str,
    expected_greeting: &str,
) {
    let server = FakeServer::spawn(Behavior {
        forward: Some(protocol),
        ..Behavior::greeting(greeting)
    })
    .await;
    let mut cfg = backend("fwd", vec![server.server_addr()], Balance::RoundRobin);
    cfg.forward_client = ForwardClient::Protocol;
    let (pool, _m) = pool(&cfg, protocol);
    let info = client("192.0.2.7:50123");
    let mut conn = pool.connect(info).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&conn.greeting),
        expected_greeting,
        "the forwarding reply is consumed"
    );
    conn.stream.write_all(b"NOOP\r\n").await.unwrap();
    let mut buf = Vec::new();
    read_until_contains(&mut conn.stream, &mut buf, b"echo NOOP\r\n").await;
    assert_eq!(
        buf, b"echo NOOP\r\n",
        "the client sees no trace of the exchange"
    );
    let seen = server.seen.lock().unwrap();
    assert_eq!(
        seen.lines,
        vec![vec![expected_command.to_owned(), "NOOP".to_owned()]]
    );
}

#[tokio::test]
async fn imap_id_is_sent_after_the_greeting_and_its_reply_consumed() {
    protocol_case(
        Protocol::Imap,
        "* OK [CAPABILITY IMAP4rev1 ID] Dovecot ready.\r\n",
        "postern-id ID (\"x-originating-ip\" \"192.0.2.7\" \"x-originating-port\" \"50123\" \
         \"x-connected-ip\" \"127.0.0.1\" \"x-connected-port\" \"993\")",
        "* OK [CAPABILITY IMAP4rev1 ID] Dovecot ready.\r\n",
    )
    .await;
}

#[tokio::test]
async fn pop3_xclient_is_sent_after_the_greeting_and_its_reply_consumed() {
    protocol_case(
        Protocol::Pop3,
        "+OK Dovecot ready.\r\n",
        "XCLIENT ADDR=192.0.2.7 PORT=50123",
        "+OK Dovecot ready.\r\n",
    )
    .await;
}

#[tokio::test]
async fn smtp_xclient_reply_is_the_new_greeting() {
    protocol_case(
        Protocol::Smtp,
        "220 first.test ESMTP\r\n",
        "XCLIENT ADDR=192.0.2.7 PORT=50123",
        "220-fresh.test ESMTP\r\n220 fresh greeting\r\n",
    )
    .await;
}

#[tokio::test]
async fn refused_forwarding_is_failed_over() {
    // A backend that does not trust us answers the ID with NO: that server is unusable
    // for sessions that need the client address, so the next one is tried.
    let refusing = FakeServer::spawn(Behavior::greeting("+OK ready\r\n")).await; // echoes: "echo XCLIENT..." is Invalid
    let good = FakeServer::spawn(Behavior {
        forward: Some(Protocol::Pop3),
        ..Behavior::greeting("+OK ready\r\n")
    })
    .await;
    let mut cfg = backend(
        "fwd2",
        vec![refusing.server_addr(), good.server_addr()],
        Balance::RoundRobin,
    );
    cfg.forward_client = ForwardClient::Protocol;
    let (pool, _m) = pool(&cfg, Protocol::Pop3);
    let conn = pool.connect(client("192.0.2.7:1")).await.unwrap();
    assert_eq!(conn.server, good.label());
}
