#!/usr/bin/env bash
# Attributes postern's idle-session memory to allocation sites: runs the release binary
# under heaptrack, opens N idle IMAP sessions (LOGIN, SELECT, IDLE) through it, then
# stops it and prints heaptrack's peak-memory consumers. Usage: heap_profile.sh [N]
# Env: POSTERN (binary, default target/release/postern of this checkout).
set -euo pipefail
n=${1:-500}
here=$(cd "$(dirname "$0")" && pwd)
postern=${POSTERN:-$here/../target/release/postern}
command -v heaptrack >/dev/null || { echo "heaptrack not found: apt-get install heaptrack" >&2; exit 2; }
[ -x "$postern" ] || { echo "postern binary $postern not found (POSTERN=...)" >&2; exit 2; }
w=$(mktemp -d /tmp/postern-heap-XXXXXX)
pids=()
cleanup() { exec 3>&- 2>/dev/null || true; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$w/key.pem" \
  -out "$w/cert.pem" -days 30 -subj /CN=mail.bench.test 2>/dev/null
chmod 600 "$w/key.pem"
python3 "$here/compare.py" backend >"$w/backend.port" &
pids+=($!)
for _ in $(seq 100); do [ -s "$w/backend.port" ] && break; sleep 0.1; done
bport=$(head -1 "$w/backend.port")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$w/postern.toml" <<TOML
[server]
workers = 1
shutdown_grace = "1s"
state_dir = "$w/state"
[admin]
listen = "127.0.0.1:0"
[log]
level = "warn"
[tls]
min_version = "1.3"
watch = false
[[tls.certificate]]
cert = "$w/cert.pem"
key = "$w/key.pem"
[[listener]]
name = "imaps"
protocol = "imap"
listen = ["127.0.0.1:$port"]
backend = "imap"
[[backend]]
name = "imap"
servers = ["127.0.0.1:$bport"]
TOML
heaptrack -o "$w/heap" "$postern" run -c "$w/postern.toml" >"$w/heaptrack.log" 2>&1 &
hpid=$!
for _ in $(seq 300); do
  python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null && break
  sleep 0.1
done
python3 "$here/compare.py" handshakes "$port" 20 >/dev/null
mkfifo "$w/hold.in"
python3 "$here/compare.py" hold "$port" "$n" <"$w/hold.in" >"$w/hold.out" &
pids+=($!)
exec 3>"$w/hold.in"
for _ in $(seq 1200); do grep -q READY "$w/hold.out" && break; sleep 0.1; done
echo "holder: $(cat "$w/hold.out")"
sleep 2
# heaptrack's script runs postern as a child: signal that child, not the wrapper.
ppid=""
for c in $(pgrep -P "$hpid"; for g in $(pgrep -P "$hpid"); do pgrep -P "$g"; done); do
  [ "$(readlink -f /proc/$c/exe)" = "$(readlink -f "$postern")" ] && ppid=$c
done
[ -n "$ppid" ] || { echo "postern process not found under heaptrack" >&2; exit 1; }
echo "postern pid $ppid: $(grep -E 'VmRSS|RssAnon' /proc/$ppid/status | tr -s ' \n' ' ')"
kill -TERM "$ppid"
exec 3>&-
wait "$hpid" || true
f=""
for c in "$w"/heap*.zst "$w"/heap*.gz; do [ -e "$c" ] && f=$c; done
[ -n "$f" ] || { echo "no heaptrack data in $w" >&2; exit 1; }
# Bytes live at the peak (all sessions idle), per session, by allocation site: the chain of
# non-generic frames below the last postern frame (handler.rs, relay.rs, worker.rs, ...).
heaptrack_print -f "$f" --print-peaks 0 --print-allocators 0 --print-temporary 0 \
  --flamegraph-cost-type peak -F "$w/stacks.txt" >/dev/null
python3 - "$w/stacks.txt" "$n" <<'PY'
import collections, re, sys
path, n = sys.argv[1], int(sys.argv[2])
ours = re.compile(r"\((handler|relay|worker|listener|starttls|dial|pool|stream)\.rs\)")
generic = re.compile(r"^_R|^(alloc|allocate|alloc_impl|alloc_impl_runtime|finish_grow|grow_amortized|grow_one|"
                     r"reserve|do_reserve_and_handle|with_capacity|with_capacity_in|try_allocate_in|new|from|into|"
                     r"call_once|clone|__rust_alloc|malloc|to_vec|map|and_then|unwrap_or_else|extend_with|resize|"
                     r"pin|box_new_uninit|push|push_back|push_mut|push_back_mut|poll|try_with|with)\b|OPENSSL_(z)?malloc")
sites, total = collections.Counter(), 0
for line in open(path):
    stack, _, cost = line.rstrip("\n").rpartition(" ")
    cost = int(cost)
    total += cost
    frames = stack.split(";")
    idx = [i for i, f in enumerate(frames) if ours.search(f)]
    if not idx:
        sites["(not under a session or worker: process-wide)"] += cost
        continue
    rest = [f.split(" (")[0] + "@" + f.rsplit("(", 1)[-1].rstrip(")")
            for f in frames[idx[-1] + 1 :] if " (" in f and not generic.search(f)]
    where = frames[idx[-1]]
    sites[where + ": " + (" > ".join(rest[-4:]) or "direct allocation (e.g. Box::pin of a future)")] += cost
print(f"heap live at peak: {total} bytes; per session (/{n}): {total / n:.0f}")
print(f"{'bytes':>10} {'per session':>11}  site (last postern file: allocation chain)")
for site, cost in sites.most_common(20):
    print(f"{cost:>10} {cost / n:>11.0f}  {site[:220]}")
PY
echo "full data: $f (heaptrack_print -f $f); work dir $w"
