//! What the bench reads from /proc: a process's memory, CPU time and wake-ups, the kernel's
//! socket memory and the listen-queue overflow counters.

use std::path::Path;

use serde::Serialize;

use crate::BenchError;

/// Memory and CPU of one process (all its threads).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct ProcSample {
    /// Bytes of anonymous resident memory (heap, stacks): the cleanest per-session figure.
    pub(crate) rss_anon: u64,
    /// Bytes resident in total.
    pub(crate) vm_rss: u64,
    /// utime + stime in seconds, exited threads included.
    pub(crate) cpu_s: f64,
    /// Context switches summed over the live threads (voluntary + involuntary): a thread
    /// that sleeps in epoll and is woken counts one per wake-up, so an idle process whose
    /// count does not move has no timers firing.
    pub(crate) ctx_switches: u64,
    /// Open file descriptors.
    pub(crate) fds: u64,
}

/// `/proc/net/sockstat` (TCP) and the `TcpExt` counters of `/proc/net/netstat` that say the
/// accept queue overflowed.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct KernelSample {
    /// TCP sockets in use.
    pub(crate) tcp_inuse: u64,
    /// Sockets waiting in TIME_WAIT.
    pub(crate) tcp_tw: u64,
    /// Pages of memory the kernel charges to TCP sockets (`mem`), in bytes.
    pub(crate) tcp_mem_bytes: u64,
    /// Bytes of the kernel's per-socket objects (slab caches `TCP`, `sock_inode_cache`,
    /// `tcp_bind_bucket`, `tcp_bind2_bucket`, `filp`, `eventpoll_epi`: active objects x
    /// object size), for every socket of the machine. Needs root (slabinfo).
    pub(crate) socket_slab_bytes: u64,
    /// `TcpExt: ListenOverflows` (SYN or ACK dropped: accept queue full).
    pub(crate) listen_overflows: u64,
    /// `TcpExt: ListenDrops`.
    pub(crate) listen_drops: u64,
}

fn read(path: &str) -> Result<String, BenchError> {
    std::fs::read_to_string(path).map_err(|source| BenchError::Io {
        what: format!("read {path}"),
        source,
    })
}

fn field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// One sample of process `pid`.
pub(crate) fn process(pid: u32) -> Result<ProcSample, BenchError> {
    let status = read(&format!("/proc/{pid}/status"))?;
    let stat = read(&format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let clk = clock_ticks();
    let mut ctx = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("status")) {
                ctx += field(&s, "voluntary_ctxt_switches").unwrap_or(0)
                    + field(&s, "nonvoluntary_ctxt_switches").unwrap_or(0);
            }
        }
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Ok(ProcSample {
        rss_anon: field(&status, "RssAnon").unwrap_or(0) * 1024,
        vm_rss: field(&status, "VmRSS").unwrap_or(0) * 1024,
        // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name.
        cpu_s: (ticks(11) + ticks(12)) / clk,
        ctx_switches: ctx,
        fds,
    })
}

/// One sample of the kernel's TCP state.
pub(crate) fn kernel() -> Result<KernelSample, BenchError> {
    let sockstat = read("/proc/net/sockstat")?;
    let tcp = sockstat
        .lines()
        .find_map(|l| l.strip_prefix("TCP:"))
        .unwrap_or("");
    let words: Vec<&str> = tcp.split_whitespace().collect();
    let get = |name: &str| {
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (overflows, drops) = tcp_ext(&read("/proc/net/netstat")?);
    let slab = std::fs::read_to_string("/proc/slabinfo").map_or(0, |t| socket_slab(&t));
    Ok(KernelSample {
        tcp_inuse: get("inuse"),
        tcp_tw: get("tw"),
        tcp_mem_bytes: get("mem") * page_size(),
        socket_slab_bytes: slab,
        listen_overflows: overflows,
        listen_drops: drops,
    })
}

fn socket_slab(slabinfo: &str) -> u64 {
    const CACHES: [&str; 6] = [
        "TCP",
        "sock_inode_cache",
        "tcp_bind_bucket",
        "tcp_bind2_bucket",
        "filp",
        "eventpoll_epi",
    ];
    slabinfo
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            if !CACHES.contains(w.first()?) {
                return None;
            }
            Some(w.get(1)?.parse::<u64>().ok()? * w.get(3)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// `TcpExt:` is a header line of names followed by a line of values.
fn tcp_ext(netstat: &str) -> (u64, u64) {
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return (0, 0);
    };
    let pairs: Vec<(&str, u64)> = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter_map(|(n, v)| Some((n, v.parse().ok()?)))
        .collect();
    let get = |k: &str| pairs.iter().find(|(n, _)| *n == k).map_or(0, |(_, v)| *v);
    (get("ListenOverflows"), get("ListenDrops"))
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux architecture the bench runs on.
    100.0
}

fn page_size() -> u64 {
    // `mem` in sockstat is in pages; smaps says which size this kernel uses.
    std::fs::read_to_string("/proc/self/smaps")
        .ok()
        .and_then(|s| field(&s, "KernelPageSize"))
        .map_or(4096, |kib| kib * 1024)
}

/// The hard and soft open-file limits of this process, from /proc/self/limits.
pub(crate) fn open_file_limits() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or("");
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (
        nums.get(1).copied().unwrap_or(1024),
        nums.first().copied().unwrap_or(1024),
    )
}

/// Raises this process's soft open-file limit to the hard one (allowed without privilege).
pub(crate) fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Ok((soft, _)) => soft,
        Err(_) => open_file_limits().1,
    }
}

/// Whether `path` names a running process's executable (for a clear error when not).
pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_ext_reads_the_overflow_counters() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 7 9\nIpExt: A\nIpExt: 1\n";
        assert_eq!(tcp_ext(text), (7, 9));
        assert_eq!(tcp_ext(""), (0, 0));
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = process(std::process::id()).unwrap_or_default();
        assert!(s.vm_rss > 0 && s.fds > 0, "{s:?}");
        assert!(kernel().is_ok());
    }
}
