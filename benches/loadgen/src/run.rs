//! The orchestrated run: for each `workers` value, start backends and postern, hold the
//! sessions idle from several holder processes, measure memory and idle CPU, then the
//! reconnect storms; one JSON document for the whole run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::holder::PhaseReport;
use crate::procfs::{self, KernelSample, ProcSample};
use crate::setup::{self, Piped, SESSIONS_PER_PROCESS, SESSIONS_PER_SOURCE};
use crate::stats::Percentiles;
use crate::BenchError;

/// What to run.
#[derive(Debug)]
pub(crate) struct RunPlan {
    pub(crate) postern: PathBuf,
    pub(crate) sessions: usize,
    pub(crate) workers: Vec<usize>,
    /// Addresses postern listens on (127.0.2.1, .2, ...).
    pub(crate) listen_addrs: usize,
    /// Sessions each holder opens at once in the first phase.
    pub(crate) concurrency: usize,
    pub(crate) idle_window: Duration,
    /// Storms to run in order: `full`, `resume`.
    pub(crate) storms: Vec<String>,
    pub(crate) json: Option<PathBuf>,
    pub(crate) keep: bool,
}

#[derive(Debug, Serialize)]
struct Established {
    sessions: usize,
    failed: usize,
    errors: Vec<String>,
    secs: f64,
    handshake_us: Percentiles,
    before: ProcSample,
    after: ProcSample,
    kernel_before: KernelSample,
    kernel_after: KernelSample,
    rss_anon_per_session: f64,
    vm_rss_per_session: f64,
    kernel_tcp_mem_per_session: f64,
    kernel_socket_slab_per_session: f64,
}

/// Runs the plan; prints a summary and writes the JSON.
pub(crate) async fn run(plan: RunPlan) -> Result<(), BenchError> {
    if !procfs::is_executable(&plan.postern) {
        return Err(BenchError::Setup(format!(
            "postern binary {} not found or not executable: build it with \
             `cargo build --release -p postern` or pass --postern",
            plan.postern.display()
        )));
    }
    let (hard, _) = procfs::open_file_limits();
    // postern holds two descriptors per proxied session (client and backend socket).
    let fit = usize::try_from(hard.saturating_sub(200) / 2).unwrap_or(usize::MAX);
    if plan.sessions > fit {
        return Err(BenchError::Setup(format!(
            "{} sessions need {} descriptors in postern, but the open-file hard limit here is {hard} \
             (ulimit -Hn; raising it needs CAP_SYS_RESOURCE): at most {fit} sessions per postern process",
            plan.sessions,
            plan.sessions * 2 + 200
        )));
    }
    let started = chrono_now();
    let mut runs = Vec::new();
    for &workers in &plan.workers {
        let result = one(&plan, workers).await?;
        summary(workers, &result);
        runs.push(result);
    }
    let doc = json!({
        "date": started,
        "argv": std::env::args().collect::<Vec<_>>(),
        "machine": machine(&plan.postern),
        "open_file_hard_limit": hard,
        "runs": runs,
    });
    if let Some(path) = &plan.json {
        let text =
            serde_json::to_string_pretty(&doc).map_err(|e| BenchError::Setup(e.to_string()))?;
        setup::write(path, text.as_bytes())?;
        println!("raw results: {}", path.display());
    }
    Ok(())
}

async fn one(plan: &RunPlan, workers: usize) -> Result<Value, BenchError> {
    let dir =
        std::env::temp_dir().join(format!("postern-loadgen-{}-w{workers}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| BenchError::io(format!("mkdir {}", dir.display()), e))?;
    let certs = setup::certs(&dir)?;
    let n = plan.sessions;
    let per_proc = |k: usize| k.div_ceil(SESSIONS_PER_PROCESS).max(1);
    let (mut backends, backend_addrs) = setup::backends(per_proc(n)).await?;
    let port = setup::free_port(setup::loopback(2, 0))?;
    let listen: Vec<SocketAddr> = (0..plan.listen_addrs.max(1))
        .map(|i| SocketAddr::new(setup::loopback(2, i), port))
        .collect();
    let config = dir.join("postern.toml");
    setup::write(
        &config,
        setup::postern_config(&dir, workers, &listen, &backend_addrs, &certs).as_bytes(),
    )?;
    let postern =
        setup::start_postern(&plan.postern, &config, &dir.join("postern.stderr"), &listen).await?;
    let pid = postern.pid;
    let outcome = measure(plan, workers, pid, &listen, &certs).await;
    setup::stop_postern(postern).await;
    for b in &mut backends {
        let _ = b.child.kill().await;
    }
    if !plan.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("work directory kept: {}", dir.display());
    }
    outcome
}

async fn measure(
    plan: &RunPlan,
    workers: usize,
    pid: u32,
    listen: &[SocketAddr],
    certs: &setup::Certs,
) -> Result<Value, BenchError> {
    // Warm-up: lazy initialisation (TLS config, thread-locals, scratch buffers) is not per
    // session. A handful of sessions from this process, closed again.
    let base = crate::client::base_config(&certs.der)?;
    for i in 0..20 {
        let source = setup::loopback(250, 0);
        drop(crate::client::open(listen[i % listen.len()], source, base.clone()).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = procfs::process(pid)?;
    let kernel_before = procfs::kernel()?;

    let n = plan.sessions;
    let holders = n.div_ceil(SESSIONS_PER_PROCESS).max(1);
    let sources_each = (n / holders).div_ceil(SESSIONS_PER_SOURCE).max(1);
    let ca = certs.cert.display().to_string();
    let mut procs = Vec::new();
    let t0 = Instant::now();
    for h in 0..holders {
        let count = n / holders + usize::from(h < n % holders);
        let sources: Vec<String> = (0..sources_each)
            .map(|s| setup::loopback(3, h * sources_each + s).to_string())
            .collect();
        let targets: Vec<String> = listen.iter().map(ToString::to_string).collect();
        procs.push(setup::spawn_self(&[
            "hold".into(),
            "--targets".into(),
            targets.join(","),
            "--sources".into(),
            sources.join(","),
            "--count".into(),
            count.to_string(),
            "--concurrency".into(),
            plan.concurrency.to_string(),
            "--ca".into(),
            ca.clone(),
        ])?);
    }
    let ready = collect(&mut procs, Duration::from_secs(600), "holder ready").await?;
    let established_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = procfs::process(pid)?;
    let kernel_after = procfs::kernel()?;
    let held: usize = ready.iter().map(|r| r.held).sum();
    let per = |a: u64, b: u64| (a as f64 - b as f64) / held.max(1) as f64;
    let established = Established {
        sessions: held,
        failed: ready.iter().map(|r| r.failed).sum(),
        errors: ready
            .iter()
            .flat_map(|r| r.errors.clone())
            .take(5)
            .collect(),
        secs: established_secs,
        handshake_us: Percentiles::of(ready.iter().flat_map(|r| r.handshake_us.iter().copied())),
        rss_anon_per_session: per(after.rss_anon, before.rss_anon),
        vm_rss_per_session: per(after.vm_rss, before.vm_rss),
        kernel_tcp_mem_per_session: per(kernel_after.tcp_mem_bytes, kernel_before.tcp_mem_bytes),
        kernel_socket_slab_per_session: per(
            kernel_after.socket_slab_bytes,
            kernel_before.socket_slab_bytes,
        ),
        before,
        after,
        kernel_before,
        kernel_after,
    };

    // Idle: nothing flows; postern's CPU and wake-ups over the window should be ~0.
    let i0 = procfs::process(pid)?;
    let threads0 = crate::threads::sample(pid);
    tokio::time::sleep(plan.idle_window).await;
    let i1 = procfs::process(pid)?;
    let threads1 = crate::threads::sample(pid);
    let window = plan.idle_window.as_secs_f64();
    let idle = json!({
        "window_s": window,
        "cpu_ms_per_s": (i1.cpu_s - i0.cpu_s) * 1000.0 / window,
        "wakeups_per_s": (i1.ctx_switches - i0.ctx_switches) as f64 / window,
        "threads": crate::threads::delta(&threads0, &threads1),
    });

    let mut storms = Vec::new();
    for mode in &plan.storms {
        storms.push(storm(&mut procs, pid, mode).await?);
    }
    for p in &mut procs {
        drop(p.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(30), p.child.wait()).await;
    }
    Ok(json!({
        "workers": workers,
        "sessions_requested": n,
        "holders": holders,
        "sources_per_holder": sources_each,
        "listen": listen.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "established": established,
        "idle": idle,
        "storms": storms,
    }))
}

async fn storm(procs: &mut [Piped], pid: u32, mode: &str) -> Result<Value, BenchError> {
    let k0 = procfs::kernel()?;
    let p0 = procfs::process(pid)?;
    let threads0 = crate::threads::sample(pid);
    let t0 = Instant::now();
    let command = format!("storm {mode}\n");
    for p in procs.iter_mut() {
        if let Some(stdin) = p.stdin.as_mut() {
            stdin
                .write_all(command.as_bytes())
                .await
                .map_err(|e| BenchError::io("command a holder", e))?;
            stdin
                .flush()
                .await
                .map_err(|e| BenchError::io("command a holder", e))?;
        }
    }
    let reports = collect(procs, Duration::from_secs(600), "storm").await?;
    let wall = t0.elapsed().as_secs_f64();
    let p1 = procfs::process(pid)?;
    let threads1 = crate::threads::sample(pid);
    let k1 = procfs::kernel()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = procfs::process(pid)?;
    let back: usize = reports.iter().map(|r| r.held).sum();
    Ok(json!({
        "mode": mode,
        "back": back,
        "failed": reports.iter().map(|r| r.failed).sum::<usize>(),
        "errors": reports.iter().flat_map(|r| r.errors.clone()).take(5).collect::<Vec<_>>(),
        "resumed": reports.iter().map(|r| r.resumed).sum::<usize>(),
        "last_back_s": wall,
        "holder_secs": reports.iter().map(|r| r.secs).collect::<Vec<_>>(),
        "handshake_us": Percentiles::of(reports.iter().flat_map(|r| r.handshake_us.iter().copied())),
        "idle_again_us": Percentiles::of(reports.iter().flat_map(|r| r.total_us.iter().copied())),
        "postern_cpu_s": p1.cpu_s - p0.cpu_s,
        "postern_cpu_us_per_reconnect": (p1.cpu_s - p0.cpu_s) * 1e6 / back.max(1) as f64,
        "threads": crate::threads::delta(&threads0, &threads1),
        "listen_overflows": k1.listen_overflows - k0.listen_overflows,
        "listen_drops": k1.listen_drops - k0.listen_drops,
        "rss_anon_after": settled.rss_anon,
        "kernel_before": k0,
        "kernel_after": k1,
    }))
}

/// One JSON report line from every holder.
async fn collect(
    procs: &mut [Piped],
    deadline: Duration,
    what: &str,
) -> Result<Vec<PhaseReport>, BenchError> {
    let mut out = Vec::new();
    for p in procs.iter_mut() {
        let line = setup::line(p, deadline, what).await?;
        let report: PhaseReport = serde_json::from_str(&line)
            .map_err(|e| BenchError::Setup(format!("{what}: bad report {line:?}: {e}")))?;
        out.push(report);
    }
    Ok(out)
}

fn summary(workers: usize, run: &Value) {
    let e = &run["established"];
    println!(
        "workers={workers}: {} sessions held ({} failed) in {:.1} s; RssAnon {:.0} B/session, \
         kernel TCP mem {:.0} B + socket slabs {:.0} B/session (all 4 sockets); idle CPU {:.2} ms/s, {:.1} wake-ups/s",
        e["sessions"], e["failed"], e["secs"].as_f64().unwrap_or(0.0),
        e["rss_anon_per_session"].as_f64().unwrap_or(0.0),
        e["kernel_tcp_mem_per_session"].as_f64().unwrap_or(0.0),
        e["kernel_socket_slab_per_session"].as_f64().unwrap_or(0.0),
        run["idle"]["cpu_ms_per_s"].as_f64().unwrap_or(0.0),
        run["idle"]["wakeups_per_s"].as_f64().unwrap_or(0.0),
    );
    for s in run["storms"].as_array().into_iter().flatten() {
        println!(
            "  storm {}: {} back, {} failed, {} resumed, last back after {:.2} s; handshake p50 {} µs \
             p99 {} µs; postern {:.0} µs CPU/reconnect; ListenOverflows +{} ListenDrops +{}",
            s["mode"], s["back"], s["failed"], s["resumed"],
            s["last_back_s"].as_f64().unwrap_or(0.0),
            s["handshake_us"]["p50"], s["handshake_us"]["p99"],
            s["postern_cpu_us_per_reconnect"].as_f64().unwrap_or(0.0),
            s["listen_overflows"], s["listen_drops"],
        );
    }
}

fn chrono_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(String::new, |s| s.trim().to_string())
}

fn machine(postern: &std::path::Path) -> Value {
    let first = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(str::to_string))
            .unwrap_or_default()
    };
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    json!({
        "postern": first(&postern.display().to_string(), &["--version"]),
        "kernel": read("/proc/sys/kernel/osrelease"),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "loadavg": read("/proc/loadavg"),
        "somaxconn": read("/proc/sys/net/core/somaxconn"),
        "tcp_max_syn_backlog": read("/proc/sys/net/ipv4/tcp_max_syn_backlog"),
    })
}
