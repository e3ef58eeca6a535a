//! Rotation under load: full handshakes in a loop while the certificate is replaced 50 times
//! by each of the three ways certificates are replaced in practice. Zero failed handshakes;
//! each handshake sees the old or the new certificate; the new one within 2 s of each swap.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_tls::{CertWatcherOptions, Tls};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::support::{self, pair, Pair};

const SWAPS: usize = 50;
const NEW_CERT_DEADLINE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug)]
enum Style {
    InPlace,
    TempRename,
    KubernetesSymlink,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_in_place_rewrite() {
    rotate(Style::InPlace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_temp_then_rename() {
    rotate(Style::TempRename).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_kubernetes_data_symlink_swap() {
    rotate(Style::KubernetesSymlink).await;
}

/// Shared between the test and its client loops.
#[derive(Debug, Default)]
struct Observed {
    /// Leaf DER -> generation; filled before a generation is written to disk.
    known: Mutex<HashMap<Vec<u8>, usize>>,
    /// Highest generation written to disk so far.
    written: AtomicUsize,
    /// Highest generation any client has seen.
    seen: AtomicUsize,
    handshakes: AtomicU64,
    failures: Mutex<Vec<String>>,
}

async fn rotate(style: Style) {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path(), style);
    let observed = Arc::new(Observed::default());
    let first = pair(&["rotate.test"]);
    observed.known.lock().unwrap().insert(first.leaf.clone(), 0);
    layout.install(&first, 0);

    let metrics = support::metrics();
    let config = support::config(&[(layout.cert.clone(), Some(layout.key.clone()))]);
    let tls = Tls::load(&config, dir.path(), metrics.tls()).unwrap();
    let shutdown = CancellationToken::new();
    // Poll far beyond the test's length: every swap must be caught by the file watcher.
    // The debounce is short to keep the test fast; POSTERN_TLS_TEST_DEBOUNCE_MS=200 measures
    // the production default.
    let debounce = std::env::var("POSTERN_TLS_TEST_DEBOUNCE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_millis(25), Duration::from_millis);
    let options = CertWatcherOptions {
        poll_interval: Duration::from_secs(600),
        debounce,
    };
    let watcher = tls.spawn_watcher_with(shutdown.clone(), options).unwrap();
    let addr = serve(&tls, shutdown.clone()).await;

    let stop = CancellationToken::new();
    let clients: Vec<_> = (0..2)
        .map(|_| tokio::spawn(client_loop(addr, Arc::clone(&observed), stop.clone())))
        .collect();

    let mut latencies = Vec::with_capacity(SWAPS);
    for generation in 1..=SWAPS {
        let next = pair(&["rotate.test"]);
        observed
            .known
            .lock()
            .unwrap()
            .insert(next.leaf.clone(), generation);
        // Bumped first: a handshake may see the new certificate as soon as it is on disk.
        observed.written.store(generation, Ordering::SeqCst);
        layout.install(&next, generation);
        let swapped = Instant::now();
        let served = postern_testkit::wait_for(NEW_CERT_DEADLINE, || {
            observed.seen.load(Ordering::SeqCst) >= generation
        })
        .await;
        assert!(
            served,
            "{style:?}: generation {generation} not served within {NEW_CERT_DEADLINE:?}"
        );
        latencies.push(swapped.elapsed());
    }

    // A read that races a replacement half-way is retried, not reported: a clean rotation
    // logs no error.
    let errors_before = support::reloads(&metrics, "error");
    assert_eq!(
        errors_before, 0,
        "{style:?}: clean swaps counted reload errors"
    );
    assert_eq!(
        support::reloads(&metrics, "ok"),
        SWAPS as u64,
        "{style:?}: one reload per swap"
    );

    // Broken replacements keep the current certificate and count an error each.
    let good_generation = SWAPS;
    let stranger = pair(&["rotate.test"]);
    let mismatched = Pair {
        key_pem: stranger.key_pem.clone(),
        ..pair(&["rotate.test"])
    };
    let garbage = Pair {
        cert_pem: "garbage\n".to_owned(),
        key_pem: "garbage\n".to_owned(),
        leaf: Vec::new(),
    };
    for (i, broken) in [mismatched, garbage].iter().enumerate() {
        layout.install(broken, SWAPS + 1 + i);
        let want = errors_before + i as u64 + 1;
        assert!(
            postern_testkit::wait_for(NEW_CERT_DEADLINE, || support::reloads(&metrics, "error")
                >= want)
            .await,
            "{style:?}: broken replacement #{i} was not rejected"
        );
        let seen = support::handshake(tls.server_config(b"imap"), Some("rotate.test"), &[])
            .await
            .unwrap();
        assert_eq!(
            observed.known.lock().unwrap().get(&seen.leaf),
            Some(&good_generation),
            "{style:?}: old certificate kept"
        );
    }

    stop.cancel();
    for client in clients {
        tokio::time::timeout(Duration::from_secs(10), client)
            .await
            .unwrap()
            .unwrap();
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .unwrap()
        .unwrap();

    let failures = observed.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{style:?}: {} failed handshakes: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    latencies.sort();
    let handshakes = observed.handshakes.load(Ordering::SeqCst);
    eprintln!(
        "rotation {style:?} (debounce {debounce:?}): {SWAPS} swaps, {handshakes} handshakes, 0 failed; time to new cert: median {:?}, max {:?}; reloads ok={} error={}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        support::reloads(&metrics, "ok"),
        support::reloads(&metrics, "error"),
    );
    assert!(
        handshakes > SWAPS as u64,
        "the clients must actually have been handshaking"
    );
}

/// A loopback server: handshake, greet, close.
async fn serve(tls: &Tls, shutdown: CancellationToken) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config(b"imap"));
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                r = listener.accept() => r.unwrap().0,
                () = shutdown.cancelled() => return,
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(Ok(mut s)) =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                {
                    let _ = s.write_all(b"* OK\r\n").await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    addr
}

/// Full handshakes (no resumption) until `stop`; records what each one saw.
async fn client_loop(addr: SocketAddr, observed: Arc<Observed>, stop: CancellationToken) {
    let connector = tokio_rustls::TlsConnector::from(support::client(&[b"imap"]));
    let mut last_seen = 0;
    while !stop.is_cancelled() {
        let written_before = observed.written.load(Ordering::SeqCst);
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            let stream = connector
                .connect(support::server_name(Some("rotate.test")), tcp)
                .await
                .map_err(|e| e.to_string())?;
            let leaf = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec());
            leaf.ok_or_else(|| "no certificate".to_owned())
        };
        let outcome = match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(leaf)) => Ok(leaf),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("handshake timed out".to_owned()),
        };
        observed.handshakes.fetch_add(1, Ordering::SeqCst);
        let leaf = match outcome {
            Ok(leaf) => leaf,
            Err(e) => {
                observed.failures.lock().unwrap().push(e);
                continue;
            }
        };
        let generation = observed.known.lock().unwrap().get(&leaf).copied();
        let written_after = observed.written.load(Ordering::SeqCst);
        match generation {
            None => observed
                .failures
                .lock()
                .unwrap()
                .push("an unknown certificate was served".to_owned()),
            Some(g) if g < last_seen => observed
                .failures
                .lock()
                .unwrap()
                .push(format!("went back from generation {last_seen} to {g}")),
            // Old or new only: nothing older than the generation before the one on disk when
            // the handshake started, nothing newer than what is on disk now.
            Some(g) if g + 1 < written_before || g > written_after => {
                observed.failures.lock().unwrap().push(format!(
                    "generation {g} served while {written_before}..{written_after} was on disk"
                ))
            }
            Some(g) => {
                last_seen = g;
                observed.seen.fetch_max(g, Ordering::SeqCst);
            }
        }
    }
}

/// Where the configured paths point and how a new pair is put in place.
struct Layout {
    dir: PathBuf,
    style: Style,
    cert: PathBuf,
    key: PathBuf,
}

impl Layout {
    fn new(dir: &Path, style: Style) -> Layout {
        let (cert, key) = match style {
            Style::KubernetesSymlink => (dir.join("tls.crt"), dir.join("tls.key")),
            Style::InPlace | Style::TempRename => {
                (dir.join("fullchain.pem"), dir.join("privkey.pem"))
            }
        };
        Layout {
            dir: dir.to_path_buf(),
            style,
            cert,
            key,
        }
    }

    fn install(&self, pair: &Pair, generation: usize) {
        match self.style {
            Style::InPlace => {
                std::fs::write(&self.key, &pair.key_pem).unwrap();
                std::fs::write(&self.cert, &pair.cert_pem).unwrap();
            }
            Style::TempRename => {
                for (path, contents) in [(&self.key, &pair.key_pem), (&self.cert, &pair.cert_pem)] {
                    let tmp = path.with_extension("tmp");
                    std::fs::write(&tmp, contents).unwrap();
                    std::fs::rename(&tmp, path).unwrap();
                }
            }
            Style::KubernetesSymlink => self.kubernetes_swap(pair, generation),
        }
    }

    /// What the kubelet does: a new timestamped directory, a `..data_tmp` symlink to it renamed
    /// over `..data`, the old directory removed; `tls.crt -> ..data/tls.crt` never changes.
    fn kubernetes_swap(&self, pair: &Pair, generation: usize) {
        let ts = format!("..2026_11_27_00_00_{generation:04}");
        let ts_dir = self.dir.join(&ts);
        std::fs::create_dir(&ts_dir).unwrap();
        std::fs::write(ts_dir.join("tls.crt"), &pair.cert_pem).unwrap();
        std::fs::write(ts_dir.join("tls.key"), &pair.key_pem).unwrap();
        let data = self.dir.join("..data");
        let old = std::fs::read_link(&data).ok();
        let tmp = self.dir.join("..data_tmp");
        symlink(&ts, &tmp).unwrap();
        std::fs::rename(&tmp, &data).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
        for name in ["tls.crt", "tls.key"] {
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
    }
}
