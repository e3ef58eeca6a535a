#!/usr/bin/env bash
# Attributes postern's idle-session memory to allocation sites: runs the release binary
# under heaptrack, opens N idle IMAP sessions (LOGIN, SELECT, IDLE) through it, then
# stops it and prints heaptrack's peak-memory consumers. Usage: heap_profile.sh [N]
# Env: POSTERN (binary, default /work/target-bench/release/postern).
set -euo pipefail
n=${1:-500}
postern=${POSTERN:-/work/target-bench/release/postern}
here=$(cd "$(dirname "$0")" && pwd)
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
f=$(ls "$w"/heap*.zst "$w"/heap*.gz 2>/dev/null | head -1)
heaptrack_print -f "$f" --print-peaks 1 --print-allocators 0 --print-temporary 0 --print-leaks 0 \
  --peak-limit 15 --sub-peak-limit 4 | tee "$w/peaks.txt"
echo "full data: $f (heaptrack_print -f $f); work dir $w"
