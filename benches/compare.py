#!/usr/bin/env python3
"""postern vs HAProxy vs stunnel vs hitch, side by side in one run on one machine.

Measures, for each proxy's process tree (never the clients or the backend):
  1. idle memory per proxied IMAP session (VmRSS and Pss growth / sessions),
  2. CPU time per connection with a full TLS 1.3 handshake, and with a resumed one,
  3. CPU time per GiB relayed: backend->client as IMAP literals (FETCH BODY[]), as bare
     80-byte response lines after LOGIN (FETCH ENVELOPE, SEARCH, LIST of a big account)
     and before login (what the strict login guard reads), client->backend (APPEND),
  4. the round-trip latency a proxy adds to a NOOP (p50/p99 against the backend direct).

CPU is utime+stime from /proc/PID/stat (all threads, dead ones included), so the
figures hold on a shared, noisy machine where wall-clock rates do not. Python 3.11
standard library only. Network traffic stays on 127.0.0.1; every count is bounded.

Run by hand (not from tests/run):
    python3 benches/compare.py --postern target/release/postern
See benches/README.md for the options and benches/RESULTS.md for recorded runs.

Internal sub-commands (started by the harness itself): backend, hold, handshakes, stream,
lines, noop.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxies import (  # noqa: E402
    Haproxy, Hitch, Postern, Proxy, Stunnel, cpu_seconds, memory, open_fds,
)
from workloads import GIB, SNI, SUBCOMMANDS, run_subcommand  # noqa: E402
HERE = Path(__file__).resolve()
WORKLOADS_PY = HERE.parent / "workloads.py"
# The release binary of this checkout (`cargo build --release -p postern`).
DEFAULT_POSTERN = HERE.parent.parent / "target" / "release" / "postern"


# --------------------------------------------------------------------------- measurements


def sub(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKLOADS_PY), *args], text=True, **kw)


def measure_idle(proxy: Proxy, sessions: int, holders: int) -> dict:
    # Warm-up: lazy initialisation (TLS config, thread-locals, scratch buffers) is not per session.
    w = sub("handshakes", str(proxy.port), "20", stdout=subprocess.PIPE)
    w.communicate(timeout=120)
    time.sleep(0.5)
    before = memory(proxy.pid)
    procs = []
    share = [sessions // holders + (1 if i < sessions % holders else 0) for i in range(holders)]
    for n in share:
        procs.append(sub("hold", str(proxy.port), str(n), stdin=subprocess.PIPE, stdout=subprocess.PIPE))
    held = 0
    errors = []
    for p in procs:
        line = p.stdout.readline().split(maxsplit=3)
        if not line or line[0] != "READY":
            errors.append(f"holder failed: {line}")
            continue
        held += int(line[1])
        if int(line[2]):
            errors.append(" ".join(line[2:]))
    time.sleep(2.0)  # let the proxy settle: every session is in IDLE, nothing flows
    after = memory(proxy.pid)
    fds = open_fds(proxy.pid)
    for p in procs:
        p.stdin.close()
        p.wait(60)
    if held == 0:
        raise RuntimeError(f"{proxy.name}: no session held: {errors}")
    return {
        "sessions": held,
        "errors": errors,
        "proxy_fds": fds,
        "before": before,
        "after": after,
        "rss_per_session": (after["VmRSS"] - before["VmRSS"]) / held,
        "pss_per_session": (after["Pss"] - before["Pss"]) / held,
        "anon_per_session": (after["RssAnon"] - before["RssAnon"]) / held,
    }


def measure_handshakes(proxy: Proxy, count: int, clients: int, resume: bool = False) -> dict:
    share = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
    mode = "resume" if resume else "full"
    procs = [sub("handshakes", str(proxy.port), str(n), mode, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
             for n in share]
    if resume:
        for p in procs:
            if p.stdout.readline().strip() != "READY":
                raise RuntimeError(f"{proxy.name}: resuming client did not get its first ticket")
    c0 = cpu_seconds(proxy.pid)
    t0 = time.monotonic()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    infos = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"{proxy.name}: handshake client failed ({p.returncode})")
        infos.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.monotonic() - t0
    cpu = cpu_seconds(proxy.pid) - c0
    return {
        "handshakes": count,
        "cpu_s": cpu,
        "wall_s": wall,
        "cpu_us_per_handshake": cpu / count * 1e6,
        "resumed": sum(i["reused"] for i in infos),
        "cipher": infos[0]["cipher"],
    }


def measure_stream(proxy: Proxy, direction: str, nbytes: int, payload: str = "literal") -> dict:
    p = sub("stream", str(proxy.port), direction, str(nbytes), payload, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    if p.stdout.readline().strip() != "LOGGED_IN":
        raise RuntimeError(f"{proxy.name}: stream client did not log in")
    c0 = cpu_seconds(proxy.pid)
    p.stdin.write("go\n")
    p.stdin.flush()
    out, _ = p.communicate(timeout=900)
    cpu = cpu_seconds(proxy.pid) - c0
    if p.returncode != 0:
        raise RuntimeError(f"{proxy.name}: stream client failed ({p.returncode})")
    info = json.loads(out.strip().splitlines()[-1])
    return {
        "bytes": nbytes,
        "payload": payload,
        "cpu_s": cpu,
        "wall_s": info["seconds"],
        "cpu_s_per_gib": cpu / (nbytes / GIB),
        "mib_per_s_wall": nbytes / (1 << 20) / info["seconds"],
        "cipher": info["cipher"],
    }


def measure_lines(proxy: Proxy, nbytes: int, when: str) -> dict:
    p = sub("lines", str(proxy.port), str(nbytes), when, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    if p.stdout.readline().strip() != "LOGGED_IN":
        raise RuntimeError(f"{proxy.name}: lines client did not start")
    c0 = cpu_seconds(proxy.pid)
    p.stdin.write("go\n")
    p.stdin.flush()
    out, _ = p.communicate(timeout=900)
    cpu = cpu_seconds(proxy.pid) - c0
    if p.returncode != 0:
        raise RuntimeError(f"{proxy.name}: lines client failed ({p.returncode})")
    info = json.loads(out.strip().splitlines()[-1])
    return {
        "bytes": nbytes,
        "when": when,
        "cpu_s": cpu,
        "wall_s": info["seconds"],
        "cpu_s_per_gib": cpu / (nbytes / GIB),
        "mib_per_s_wall": nbytes / (1 << 20) / info["seconds"],
    }


def noop_rtts(port: int, count: int) -> list[float]:
    p = sub("noop", str(port), str(count), stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"noop client failed ({p.returncode})")
    return json.loads(out.strip().splitlines()[-1])["rtt_us"]


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(q * len(v) + 0.5)) - 1))]


def measure_noop(proxy: Proxy, count: int, backend_port: int) -> dict:
    """NOOP round trips through the proxy, and right before them straight to the backend
    (plain TCP): the difference is what the proxy adds (TLS both ways + its own hop)."""
    direct = noop_rtts(-backend_port, count)
    via = noop_rtts(proxy.port, count)
    return {
        "count": count,
        "direct_p50_us": pct(direct, 0.5),
        "direct_p99_us": pct(direct, 0.99),
        "proxy_p50_us": pct(via, 0.5),
        "proxy_p99_us": pct(via, 0.99),
        "added_p50_us": pct(via, 0.5) - pct(direct, 0.5),
        "added_p99_us": pct(via, 0.99) - pct(direct, 0.99),
    }


def make_certs(d: Path) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-days", "30",
         "-subj", f"/CN={SNI}", "-addext", f"subjectAltName=DNS:{SNI},DNS:localhost"],
        check=True, capture_output=True,
    )
    os.chmod(d / "key.pem", 0o600)
    (d / "combined.pem").write_bytes((d / "cert.pem").read_bytes() + (d / "key.pem").read_bytes())
    os.chmod(d / "combined.pem", 0o600)


def versions(postern: str) -> dict:
    def first_line(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            text = (r.stdout + r.stderr).strip().splitlines()
            return next((l for l in text if l and "inetd" not in l), "?")
        except (OSError, subprocess.TimeoutExpired):
            return "not found"

    return {
        "postern": first_line([postern, "--version"]),
        "repo HEAD at run time": first_line(["git", "-C", str(HERE.parent), "log", "-1", "--format=%h %cI"]),
        "postern binary built": datetime.datetime.fromtimestamp(os.stat(postern).st_mtime, datetime.timezone.utc)
        .isoformat(timespec="seconds") if os.path.exists(postern) else "?",
        "haproxy": first_line(["haproxy", "-v"]),
        "stunnel": first_line(["stunnel", "-version"]),
        "hitch": first_line(["hitch", "--version"]),
        "openssl (python client)": ssl.OPENSSL_VERSION,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
        "cpu model": next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                           if l.startswith("model name")), "?"),
        "loadavg at start": Path("/proc/loadavg").read_text().strip(),
    }


def summarize(runs: dict[str, list[dict]], key_path: tuple[str, str]) -> dict[str, tuple[float, float, float]]:
    """name -> (median, min, max) of runs[name][*][section][field]."""
    section, field = key_path
    out = {}
    for name, reps in runs.items():
        vals = [r[section][field] for r in reps if section in r]
        if vals:
            out[name] = (statistics.median(vals), min(vals), max(vals))
    return out


def report(runs: dict[str, list[dict]]) -> str:
    rows = [
        ("idle RSS / session (bytes)", ("idle", "rss_per_session"), "{:.0f}"),
        ("idle Pss / session (bytes)", ("idle", "pss_per_session"), "{:.0f}"),
        ("idle RssAnon / session (bytes)", ("idle", "anon_per_session"), "{:.0f}"),
        ("CPU / full handshake+connect (µs)", ("handshake", "cpu_us_per_handshake"), "{:.0f}"),
        ("CPU / resumed handshake+connect (µs)", ("resumed", "cpu_us_per_handshake"), "{:.0f}"),
        ("CPU / GiB backend→client, literals (s)", ("down", "cpu_s_per_gib"), "{:.2f}"),
        ("CPU / GiB backend→client, 80-byte lines after LOGIN (s)", ("lines", "cpu_s_per_gib"), "{:.2f}"),
        ("CPU / GiB backend→client, 80-byte lines before login (s)", ("prelines", "cpu_s_per_gib"), "{:.2f}"),
        ("CPU / GiB client→backend, APPEND (s)", ("up", "cpu_s_per_gib"), "{:.2f}"),
        ("NOOP round trip added p50 (µs)", ("noop", "added_p50_us"), "{:.0f}"),
        ("NOOP round trip added p99 (µs)", ("noop", "added_p99_us"), "{:.0f}"),
    ]
    names = list(runs)
    ours = next((n for n in names if n.startswith("postern")), None)
    others = [n for n in (next((n for n in names if n.startswith(p)), None) for p in PEERS) if n]
    lines = ["| metric (median [min–max]) | " + " | ".join(names) + "".join(f" | {ours}/{o}" for o in others) + " |",
             "|---" * (len(names) + len(others) + 1) + "|"]
    for label, path, fmt in rows:
        s = summarize(runs, path)
        if not s:
            continue
        cells = []
        for n in names:
            if n in s:
                med, lo, hi = s[n]
                cells.append(f"{fmt.format(med)} [{fmt.format(lo)}–{fmt.format(hi)}]")
            else:
                cells.append("–")
        ratio = []
        for other in others:
            if ours in s and other in s and s[other][0] > 0:
                ratio.append(f"{s[ours][0] / s[other][0]:.2f}")
            else:
                ratio.append("–")
        lines.append(f"| {label} | " + " | ".join(cells + ratio) + " |")
    return "\n".join(lines)


def paired(runs: dict[str, list[dict]]) -> str:
    """postern / each peer per repetition (neighbours in time, so less noise than medians)."""
    fields = [("idle", "anon_per_session"), ("handshake", "cpu_us_per_handshake"),
              ("resumed", "cpu_us_per_handshake"), ("down", "cpu_s_per_gib"), ("lines", "cpu_s_per_gib"),
              ("prelines", "cpu_s_per_gib"), ("up", "cpu_s_per_gib")]
    names = list(runs)
    ours = next((n for n in names if n.startswith("postern")), None)
    if ours is None:
        return ""
    out = ["| pair | " + " | ".join(f"{a}" if a != "handshake" else "full hs" for a, _ in fields) + " |",
           "|---" * (len(fields) + 1) + "|"]
    for other in names:
        if other == ours or other.startswith("postern"):
            continue
        cells = []
        for sec, key in fields:
            vals = []
            for r in sorted(runs[ours], key=lambda r: r["rep"]):
                o = next((x for x in runs[other] if x["rep"] == r["rep"]), None)
                if o and sec in r and sec in o and o[sec][key]:
                    vals.append(f"{r[sec][key] / o[sec][key]:.2f}")
            cells.append(" / ".join(vals) or "–")
        out.append(f"| {ours} / {other} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def raw_table(runs: dict[str, list[dict]]) -> str:
    """One row per proxy and repetition: the raw samples behind the medians."""
    lines = ["| proxy | rep | sessions | RssAnon before→after (KiB) | full hs: CPU s / wall s | resumed hs: CPU s (resumed) "
             "| literals down: CPU s / MiB/s | lines: CPU s / MiB/s | pre-login lines: CPU s / MiB/s "
             "| up: CPU s / MiB/s | NOOP p50/p99 µs (direct) |", "|---" * 11 + "|"]
    for name, reps in runs.items():
        for r in sorted(reps, key=lambda r: r["rep"]):
            i, h, rs = r.get("idle"), r.get("handshake"), r.get("resumed")
            def flow(k):
                d = r.get(k)
                return f"{d['cpu_s']:.2f} / {d['mib_per_s_wall']:.0f} ({d['bytes'] / GIB:g} GiB)" if d else "–"
            n = r.get("noop")
            cells = [
                f"{i['sessions']}" if i else "–",
                f"{i['before']['RssAnon'] >> 10}→{i['after']['RssAnon'] >> 10}" if i else "–",
                f"{h['cpu_s']:.2f} / {h['wall_s']:.1f} ({h['handshakes']})" if h else "–",
                f"{rs['cpu_s']:.2f} ({rs['resumed']}/{rs['handshakes']})" if rs else "–",
                flow("down"), flow("lines"), flow("prelines"), flow("up"),
                (f"{n['proxy_p50_us']:.0f}/{n['proxy_p99_us']:.0f} ({n['direct_p50_us']:.0f}/{n['direct_p99_us']:.0f})"
                 if n else "–"),
            ]
            lines.append(f"| {name} | {r['rep']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


PEERS = ("haproxy", "hitch", "stunnel")
WORKLOADS = ("idle", "handshake", "resumed", "down", "lines", "prelines", "up", "noop")
# Debian package of each peer's binary.
PACKAGES = {"haproxy": "haproxy", "stunnel": "stunnel4", "hitch": "hitch", "openssl": "openssl"}


def ensure_tools(tools: list[str]) -> bool:
    """Installs the Debian packages of missing peers (apt-get; we are root on these machines)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if not missing:
        return True
    pkgs = [PACKAGES[t] for t in missing]
    print(f"installing {' '.join(pkgs)} (apt-get)", file=sys.stderr, flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *pkgs]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True)
        subprocess.run(cmd, env=env, capture_output=True)
    still = [t for t in missing if shutil.which(t) is None]
    if still:
        print(f"not found and not installable: {', '.join(still)}: apt-get install "
              f"{' '.join(PACKAGES[t] for t in still)}", file=sys.stderr)
        return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--postern", default=str(DEFAULT_POSTERN), help="postern binary (release build)")
    ap.add_argument("--proxies", default="postern,haproxy,hitch,stunnel",
                    help="comma list of postern, postern-w2, haproxy, haproxy-t2, hitch, hitch-w2, stunnel; "
                         "a postern name with -limits (postern-w2-limits) sends every connection "
                         "through the address table (limits.exempt = [])")
    ap.add_argument("--sessions", type=int, default=3000, help="idle sessions held per proxy")
    ap.add_argument("--holders", type=int, default=2, help="client processes holding the idle sessions")
    ap.add_argument("--handshakes", type=int, default=2000, help="full (and resumed) handshakes per proxy per repetition")
    ap.add_argument("--clients", type=int, default=2, help="handshake client processes")
    ap.add_argument("--gib", type=float, default=2.0, help="GiB relayed per direction per repetition (literals, APPEND)")
    ap.add_argument("--lines-gib", type=float, default=1.0, help="GiB of 80-byte response lines after LOGIN")
    ap.add_argument("--prelogin-gib", type=float, default=0.5, help="GiB of 80-byte response lines before login")
    ap.add_argument("--noops", type=int, default=2000, help="NOOP round trips per proxy per repetition")
    ap.add_argument("--payload", choices=("literal", "raw"), default="literal",
                    help="relayed bytes: IMAP FETCH/APPEND literals of CRLF text lines, or raw bytes without CR/LF")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma list of " + ", ".join(WORKLOADS) + " to skip")
    ap.add_argument("--json", help="write raw results here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    ap.add_argument("--report", metavar="FILE", help="only print the tables of an earlier --json FILE")
    args = ap.parse_args()
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        print(report(saved["runs"]))
        print()
        print(paired(saved["runs"]))
        print()
        print(raw_table(saved["runs"]))
        return 0

    args.postern = os.path.abspath(args.postern)
    names = args.proxies.split(",")
    tools = ["openssl"] + sorted({p for n in names for p in PEERS if n.startswith(p)})
    if not ensure_tools(tools):
        return 2
    if not os.access(args.postern, os.X_OK):
        print(f"postern binary {args.postern} not found: build it with "
              f"`cargo build --release -p postern` or pass --postern",
              file=sys.stderr)
        return 2
    skip = set(filter(None, args.skip.split(",")))
    unknown = skip - set(WORKLOADS)
    if unknown:
        print(f"unknown --skip {', '.join(sorted(unknown))}; choose from {', '.join(WORKLOADS)}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="postern-bench-"))
    certs = work / "certs"
    certs.mkdir()
    make_certs(certs)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "argv": sys.argv, "versions": versions(args.postern)}
    print(json.dumps(meta, indent=1), flush=True)

    backend = sub("backend", stdout=subprocess.PIPE)
    backend_port = int(backend.stdout.readline())
    proxies: list[Proxy] = []
    for name in names:
        if name.startswith("postern"):
            base = name.removesuffix("-limits")
            threads = int(base[len("postern-w"):]) if base.startswith("postern-w") else 1
            proxies.append(Postern(work, backend_port, threads, args.postern, certs,
                                   limits=name.endswith("-limits")))
        elif name.startswith("haproxy"):
            threads = int(name[len("haproxy-t"):]) if name.startswith("haproxy-t") else 1
            proxies.append(Haproxy(work, backend_port, threads, certs))
        elif name.startswith("hitch"):
            threads = int(name[len("hitch-w"):]) if name.startswith("hitch-w") else 1
            proxies.append(Hitch(work, backend_port, threads, certs))
        elif name == "stunnel":
            proxies.append(Stunnel(work, backend_port, 1, certs))
        else:
            print(f"unknown proxy {name!r} in --proxies", file=sys.stderr)
            return 2
    runs: dict[str, list[dict]] = {p.name: [] for p in proxies}
    nbytes = int(args.gib * GIB)
    t_start = time.monotonic()
    try:
        for rep in range(args.reps):
            # Rotate the order so no proxy always runs first (or last) on a drifting machine.
            order = proxies[rep % len(proxies):] + proxies[: rep % len(proxies)]
            for proxy in order:
                result: dict = {"rep": rep}
                proxy.start()
                try:
                    result["threads_at_start"] = memory(proxy.pid).get("Threads", 0)
                    if "idle" not in skip:
                        result["idle"] = measure_idle(proxy, args.sessions, args.holders)
                    if "handshake" not in skip:
                        result["handshake"] = measure_handshakes(proxy, args.handshakes, args.clients)
                    if "resumed" not in skip:
                        result["resumed"] = measure_handshakes(proxy, args.handshakes, args.clients, resume=True)
                    if "down" not in skip:
                        result["down"] = measure_stream(proxy, "down", nbytes, args.payload)
                    if "lines" not in skip:
                        result["lines"] = measure_lines(proxy, int(args.lines_gib * GIB), "login")
                    if "prelines" not in skip:
                        result["prelines"] = measure_lines(proxy, int(args.prelogin_gib * GIB), "prelogin")
                    if "up" not in skip:
                        result["up"] = measure_stream(proxy, "up", nbytes, args.payload)
                    if "noop" not in skip:
                        result["noop"] = measure_noop(proxy, args.noops, backend_port)
                finally:
                    proxy.stop()
                runs[proxy.name].append(result)
                brief = {k: (round(v["anon_per_session"]) if k == "idle" else
                             round(v["cpu_us_per_handshake"]) if k in ("handshake", "resumed") else
                             round(v["added_p50_us"]) if k == "noop" else
                             round(v["cpu_s_per_gib"], 2)) for k, v in result.items() if isinstance(v, dict)}
                print(f"rep {rep} {proxy.name}: {brief}  (t={time.monotonic() - t_start:.0f}s)", flush=True)
    finally:
        backend.terminate()
        backend.wait(10)
        for p in proxies:
            p.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")
    meta["elapsed_s"] = round(time.monotonic() - t_start)
    meta["runs"] = runs
    if args.json:
        Path(args.json).write_text(json.dumps(meta, indent=1))
    print()
    print(report(runs))
    print()
    print(paired(runs))
    print()
    print(raw_table(runs))
    print(f"\nelapsed {meta['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        run_subcommand(sys.argv[1:])
        sys.exit(0)
    sys.exit(main())
