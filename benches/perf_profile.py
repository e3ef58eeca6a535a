#!/usr/bin/env python3
"""Where a proxy's CPU goes: `perf record` (software cpu-clock, call graphs) on one proxy
while compare.py's handshake or stream workload runs, then a flat per-DSO and
per-symbol summary.

    python3 benches/perf_profile.py --proxy postern --workload handshake
    python3 benches/perf_profile.py --proxy haproxy --workload down --gib 1
    python3 benches/perf_profile.py --proxy postern --workload lines --gib 0.5

Needs `perf` (linux-perf). Same setup as compare.py (certificate, backend, configs).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--postern", default=str(compare.DEFAULT_POSTERN))
    ap.add_argument("--proxy", default="postern", help="postern, haproxy or stunnel")
    ap.add_argument("--workload", default="handshake",
                    help="handshake, down, up, lines (80-byte lines after LOGIN) or prelines (before login)")
    ap.add_argument("--handshakes", type=int, default=3000)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--payload", choices=("literal", "raw"), default="literal")
    ap.add_argument("--top", type=int, default=25, help="symbols to print")
    ap.add_argument("--strace", action="store_true",
                    help="count system calls per operation with `strace -c -f` instead of perf (slows the proxy)")
    args = ap.parse_args()
    if shutil.which("perf") is None:
        print("perf not found: apt-get install linux-perf", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="postern-perf-"))
    certs = work / "certs"
    certs.mkdir()
    compare.make_certs(certs)
    backend = compare.sub("backend", stdout=subprocess.PIPE)
    bport = int(backend.stdout.readline())
    if args.proxy == "postern":
        proxy: compare.Proxy = compare.Postern(work, bport, 1, args.postern, certs)
    elif args.proxy == "haproxy":
        proxy = compare.Haproxy(work, bport, 1, certs)
    elif args.proxy == "hitch":
        proxy = compare.Hitch(work, bport, 1, certs)
    else:
        proxy = compare.Stunnel(work, bport, 1, certs)
    proxy.start()
    data = work / "perf.data"
    try:
        # Warm-up outside the recording.
        compare.sub("handshakes", str(proxy.port), "20", stdout=subprocess.PIPE).communicate(timeout=120)
        if args.strace:
            cmd = ["strace", "-c", "-f", "-o", str(work / "strace.txt"), "-p", str(proxy.pid)]
        else:
            cmd = ["perf", "record", "-e", "cpu-clock", "-F", "2000", "-g", "-o", str(data), "-p", str(proxy.pid)]
        rec = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        if args.workload == "handshake":
            print(compare.measure_handshakes(proxy, args.handshakes, 2))
        elif args.workload in ("lines", "prelines"):
            when = "login" if args.workload == "lines" else "prelogin"
            print(compare.measure_lines(proxy, int(args.gib * compare.GIB), when))
        else:
            print(compare.measure_stream(proxy, args.workload, int(args.gib * compare.GIB), args.payload))
        rec.send_signal(signal.SIGINT)
        rec.wait(60)
    finally:
        proxy.stop()
        backend.terminate()
        backend.wait(10)
    if args.strace:
        ops = args.handshakes if args.workload == "handshake" else args.gib
        unit = "connection" if args.workload == "handshake" else "GiB"
        print(f"\n== system calls per {unit} (strace -c -f; the workload ran {ops} times)")
        for line in (work / "strace.txt").read_text().splitlines():
            parts = line.split()
            if parts and parts[-1] == "total":
                # the total line has no usecs/call column: calls is the larger integer (errors follow)
                print(f"{max(int(p) for p in parts[1:-1] if p.isdigit()) / ops:>10.1f}  total")
            elif len(parts) >= 5 and parts[0][0].isdigit() and parts[3].isdigit():
                print(f"{int(parts[3]) / ops:>10.1f}  {parts[-1]}")
        return 0
    for sort in ("dso", "dso,sym"):
        out = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", sort, "--stdio",
                              "-g", "none", "--percent-limit", "0.4"],
                             capture_output=True, text=True).stdout
        lines = [l for l in out.splitlines() if l.strip() and not l.startswith("#")]
        print(f"\n== self time by {sort}")
        print("\n".join(lines[: args.top]))
    print(f"\nperf data: {data} (perf report -i {data})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
