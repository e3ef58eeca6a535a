use std::net::SocketAddr;
use std::time::Duration;

use postern_config::{NetworkSet, ProxyConfig, ProxyVersion};
use proxy_header::{ProxiedAddress, ProxyHeader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

fn config(version: ProxyVersion, from: &str) -> ProxyConfig {
    ProxyConfig {
        version,
        from: NetworkSet::new([from.parse().unwrap()]),
    }
}

/// A connected pair: (postern's accepted side, the load balancer's side).
async fn pair() -> (TcpStream, TcpStream, SocketAddr, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lb = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (accepted, peer) = listener.accept().await.unwrap();
    let local = accepted.local_addr().unwrap();
    (accepted, lb, peer, local)
}

fn v2(client: &str, dest: &str) -> Vec<u8> {
    let mut out = Vec::new();
    ProxyHeader::with_address(ProxiedAddress::stream(
        client.parse().unwrap(),
        dest.parse().unwrap(),
    ))
    .encode_v2(&mut out)
    .unwrap();
    out
}

async fn rest(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).await.unwrap();
    buf
}

const DEADLINE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn v1_header_gives_the_client_and_keeps_the_bytes_after_it() {
    let (mut accepted, mut lb, peer, local) = pair().await;
    lb.write_all(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 993\r\n\x16\x03\x01hello")
        .await
        .unwrap();
    let cfg = config(ProxyVersion::V1, "127.0.0.0/8");
    let got = read_header(&mut accepted, &cfg, peer, local, DEADLINE)
        .await
        .unwrap();
    assert_eq!(got.client, "192.0.2.7:40000".parse().unwrap());
    assert_eq!(got.local, "198.51.100.1:993".parse().unwrap());
    assert_eq!(rest(&mut accepted, 8).await, b"\x16\x03\x01hello");
}

#[tokio::test]
async fn v2_header_split_over_many_segments_is_read_exactly() {
    let (mut accepted, mut lb, peer, local) = pair().await;
    let mut bytes = v2("[2001:db8::5]:5000", "[2001:db8::1]:143");
    bytes.extend_from_slice(b"a1 CAPABILITY\r\n");
    let cfg = config(ProxyVersion::Any, "127.0.0.1/32");
    let reader = tokio::spawn(async move {
        let got = read_header(&mut accepted, &cfg, peer, local, DEADLINE).await;
        (got, accepted)
    });
    for chunk in bytes.chunks(3) {
        lb.write_all(chunk).await.unwrap();
        lb.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (got, mut accepted) = reader.await.unwrap();
    let got = got.unwrap();
    assert_eq!(got.client, "[2001:db8::5]:5000".parse().unwrap());
    assert_eq!(rest(&mut accepted, 15).await, b"a1 CAPABILITY\r\n");
}

#[tokio::test]
async fn local_header_keeps_the_peer_as_client() {
    let (mut accepted, mut lb, peer, local) = pair().await;
    let mut bytes = Vec::new();
    ProxyHeader::with_local().encode_v2(&mut bytes).unwrap();
    lb.write_all(&bytes).await.unwrap();
    let cfg = config(ProxyVersion::V2, "127.0.0.0/8");
    let got = read_header(&mut accepted, &cfg, peer, local, DEADLINE)
        .await
        .unwrap();
    assert_eq!(
        got,
        Addresses {
            client: peer,
            local
        }
    );
}

#[tokio::test]
async fn untrusted_peer_is_refused_without_reading() {
    let (mut accepted, mut lb, peer, local) = pair().await;
    lb.write_all(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 993\r\n")
        .await
        .unwrap();
    let cfg = config(ProxyVersion::Any, "10.0.0.0/8");
    let got = read_header(&mut accepted, &cfg, peer, local, DEADLINE).await;
    assert!(matches!(got, Err(ProxyRefusal::Untrusted)), "{got:?}");
}

#[tokio::test]
async fn missing_or_wrong_version_header_is_refused() {
    for (version, bytes) in [
        (ProxyVersion::Any, b"a1 LOGIN x y\r\n".to_vec()),
        (ProxyVersion::V1, v2("192.0.2.1:1", "192.0.2.2:2")),
        (
            ProxyVersion::V2,
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\r\n".to_vec(),
        ),
        (
            ProxyVersion::Any,
            b"PROXY TCP4 not-an-ip x 1 2\r\n".to_vec(),
        ),
        (ProxyVersion::V1, vec![b'P'; 200]),
    ] {
        let (mut accepted, mut lb, peer, local) = pair().await;
        lb.write_all(&bytes).await.unwrap();
        let cfg = config(version, "127.0.0.0/8");
        let got = read_header(&mut accepted, &cfg, peer, local, DEADLINE).await;
        assert!(
            matches!(got, Err(ProxyRefusal::Invalid(_))),
            "{version:?} {bytes:?}: {got:?}"
        );
    }
}

#[tokio::test]
async fn incomplete_header_times_out_and_early_close_is_reported() {
    let (mut accepted, mut lb, peer, local) = pair().await;
    lb.write_all(b"PROXY TCP4 192.0.2.7").await.unwrap();
    let cfg = config(ProxyVersion::Any, "127.0.0.0/8");
    let short = Duration::from_millis(100);
    let got = read_header(&mut accepted, &cfg, peer, local, short).await;
    assert!(matches!(got, Err(ProxyRefusal::Timeout(_))), "{got:?}");

    let (mut accepted, mut lb, peer, local) = pair().await;
    lb.write_all(b"PROXY TCP4 192.0.2.7").await.unwrap();
    drop(lb);
    let got = read_header(&mut accepted, &cfg, peer, local, DEADLINE).await;
    assert!(matches!(got, Err(ProxyRefusal::Closed)), "{got:?}");
}

#[tokio::test]
async fn oversized_v2_header_is_refused() {
    let (mut accepted, mut lb, peer, local) = pair().await;
    // A v2 signature announcing 60 000 bytes of addresses and TLVs.
    let mut bytes = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    bytes.extend_from_slice(&60_000u16.to_be_bytes());
    bytes.resize(16 + 60_000, 0);
    let writer = tokio::spawn(async move {
        let _ = lb.write_all(&bytes).await;
        lb
    });
    let cfg = config(ProxyVersion::V2, "127.0.0.0/8");
    let got = read_header(&mut accepted, &cfg, peer, local, DEADLINE).await;
    assert!(matches!(got, Err(ProxyRefusal::Invalid(_))), "{got:?}");
    drop(accepted);
    let _ = writer.await;
}
