//! reload_now semantics, expiry metrics, the watch switch, and the self-signed pair's upkeep.

use std::time::Duration;

use postern_tls::Tls;
use tokio_util::sync::CancellationToken;

use crate::support::{self, handshake, pair, write, write_pair};

fn expiry_line(metrics: &postern_metrics::Metrics, name: &str) -> Option<String> {
    let needle = format!("postern_certificate_expiry_timestamp_seconds{{name=\"{name}\"}} ");
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&needle).map(str::to_owned))
}

#[tokio::test]
async fn reload_now_publishes_changes_only_and_counts_each_broken_content_once() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = support::metrics();
    let (cert, key) = write_pair(dir.path(), &pair(&["Old.test"]));
    let tls = Tls::load(
        &support::config(&[(cert, Some(key))]),
        dir.path(),
        metrics.tls(),
    )
    .unwrap();
    let old_expiry =
        expiry_line(&metrics, "old.test").expect("expiry exported under the first SAN, lower-case");
    assert!(
        old_expiry.parse::<i64>().unwrap() > 4_000_000_000,
        "rcgen's default notAfter is in 4096: {old_expiry}"
    );

    assert!(
        !tls.reload_now().unwrap(),
        "unchanged files publish nothing"
    );
    assert_eq!(support::reloads(&metrics, "ok"), 0);

    let new = pair(&["new.test"]);
    write_pair(dir.path(), &new);
    assert!(tls.reload_now().unwrap());
    assert_eq!(support::reloads(&metrics, "ok"), 1);
    assert!(
        expiry_line(&metrics, "old.test").is_none(),
        "a certificate no longer loaded drops its series"
    );
    assert!(expiry_line(&metrics, "new.test").is_some());
    assert_eq!(
        handshake(tls.server_config(b"imap"), None, &[])
            .await
            .unwrap()
            .leaf,
        new.leaf
    );

    write(dir.path(), "cert.pem", "garbage\n", 0o644);
    for _ in 0..3 {
        assert!(tls.reload_now().is_err());
    }
    assert_eq!(
        support::reloads(&metrics, "error"),
        1,
        "the same broken bytes count once"
    );
    assert_eq!(
        handshake(tls.server_config(b"imap"), None, &[])
            .await
            .unwrap()
            .leaf,
        new.leaf,
        "old kept"
    );
    write(dir.path(), "cert.pem", "other garbage\n", 0o644);
    assert!(tls.reload_now().is_err());
    assert_eq!(
        support::reloads(&metrics, "error"),
        2,
        "new broken bytes count again"
    );
    std::fs::remove_file(dir.path().join("cert.pem")).unwrap();
    for _ in 0..3 {
        let err = tls.reload_now().unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
    assert_eq!(
        support::reloads(&metrics, "error"),
        3,
        "an unreadable file counts once while the reason stays the same"
    );
}

#[tokio::test]
async fn watch_off_spawns_a_finished_task_and_manual_reload_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), &pair(&["w.test"]));
    let mut config = support::config(&[(cert, Some(key))]);
    config.watch = false;
    let tls = Tls::load(&config, dir.path(), support::metrics().tls()).unwrap();
    let task = tls.spawn_watcher(CancellationToken::new()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    let new = pair(&["w.test"]);
    write_pair(dir.path(), &new);
    assert!(tls.reload_now().unwrap());
    assert_eq!(
        handshake(tls.server_config(b"imap"), None, &[])
            .await
            .unwrap()
            .leaf,
        new.leaf
    );
}

#[test]
fn spawn_watcher_outside_a_runtime_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), &pair(&["w.test"]));
    let tls = Tls::load(
        &support::config(&[(cert, Some(key))]),
        dir.path(),
        support::metrics().tls(),
    )
    .unwrap();
    let err = tls.spawn_watcher(CancellationToken::new()).unwrap_err();
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}

#[tokio::test]
async fn watcher_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), &pair(&["w.test"]));
    let tls = Tls::load(
        &support::config(&[(cert, Some(key))]),
        dir.path(),
        support::metrics().tls(),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let task = tls.spawn_watcher(shutdown.clone()).unwrap();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn damaged_self_signed_pair_is_regenerated() {
    let dir = tempfile::tempdir().unwrap();
    Tls::load(&support::config(&[]), dir.path(), support::metrics().tls()).unwrap();
    let cert = dir.path().join("selfsigned/fullchain.pem");
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
    let lines = Tls::check(&support::config(&[]), dir.path()).unwrap();
    assert!(lines[0].contains("will be replaced at start"), "{lines:?}");
    Tls::load(&support::config(&[]), dir.path(), support::metrics().tls()).unwrap();
    let report =
        postern_tls::inspect::inspect(&cert, Some(&dir.path().join("selfsigned/privkey.pem")));
    assert!(report.usable, "{report}");
}

#[tokio::test]
async fn certbot_live_symlinks_to_archive_are_followed() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive/host");
    let live = dir.path().join("live/host");
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::create_dir_all(&live).unwrap();
    let renew = |n: usize, p: &support::Pair| {
        write(&archive, &format!("fullchain{n}.pem"), &p.cert_pem, 0o644);
        write(&archive, &format!("privkey{n}.pem"), &p.key_pem, 0o600);
        // certbot's update_symlinks: a new link under a temporary name, renamed over the old.
        for name in ["privkey", "fullchain"] {
            let tmp = live.join(format!("{name}.pem.new"));
            symlink(format!("../../archive/host/{name}{n}.pem"), &tmp).unwrap();
            std::fs::rename(&tmp, live.join(format!("{name}.pem"))).unwrap();
        }
    };
    let first = pair(&["host.test"]);
    renew(1, &first);
    let config = support::config(&[(live.join("fullchain.pem"), Some(live.join("privkey.pem")))]);
    let tls = Tls::load(&config, dir.path(), support::metrics().tls()).unwrap();
    let shutdown = CancellationToken::new();
    let options = postern_tls::CertWatcherOptions {
        poll_interval: Duration::from_secs(600),
        debounce: Duration::from_millis(25),
    };
    let watcher = tls.spawn_watcher_with(shutdown.clone(), options).unwrap();
    let server = tls.server_config(b"imap");
    assert_eq!(
        handshake(server.clone(), None, &[]).await.unwrap().leaf,
        first.leaf
    );

    let second = pair(&["host.test"]);
    renew(2, &second);
    // Every handshake until the swap serves the old pair whole, never a mix.
    let renewed = postern_testkit::wait_for_async(Duration::from_secs(2), || async {
        let seen = handshake(server.clone(), None, &[]).await.unwrap();
        if seen.leaf != second.leaf {
            assert_eq!(seen.leaf, first.leaf);
        }
        seen.leaf == second.leaf
    })
    .await;
    assert!(renewed, "renewal not picked up within 2 s");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn open_sessions_survive_a_reload() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let old = pair(&["s.test"]);
    let (cert, key) = write_pair(dir.path(), &old);
    let tls = Tls::load(
        &support::config(&[(cert, Some(key))]),
        dir.path(),
        support::metrics().tls(),
    )
    .unwrap();
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config(b"imap"));
    let echo = tokio::spawn(async move {
        let mut s = acceptor.accept(server_io).await.unwrap();
        let mut buf = [0u8; 5];
        for _ in 0..2 {
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        }
    });
    let mut c = tokio_rustls::TlsConnector::from(support::client(&[]))
        .connect(support::server_name(Some("s.test")), client_io)
        .await
        .unwrap();
    let mut buf = [0u8; 5];
    c.write_all(b"hello").await.unwrap();
    c.read_exact(&mut buf).await.unwrap();

    let new = pair(&["s.test"]);
    write_pair(dir.path(), &new);
    assert!(tls.reload_now().unwrap());

    c.write_all(b"again").await.unwrap();
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"again", "the open session keeps working");
    assert_eq!(
        c.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
        &old.leaf[..]
    );
    tokio::time::timeout(Duration::from_secs(5), echo)
        .await
        .unwrap()
        .unwrap();
    let seen = handshake(tls.server_config(b"imap"), Some("s.test"), &[])
        .await
        .unwrap();
    assert_eq!(
        seen.leaf, new.leaf,
        "new handshakes get the new certificate"
    );
}
