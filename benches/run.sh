#!/usr/bin/env bash
# Full side-by-side run (postern, HAProxy, stunnel); extra arguments go to compare.py.
# Raw results land in benches/results/<UTC date-time>.json; the tables are printed at the
# end (again later with: python3 benches/compare.py --report FILE). Record a run you
# quote in RESULTS.md together with its JSON.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$here/results"
exec python3 "$here/compare.py" --json "$here/results/$(date -u +%Y-%m-%d-%H%M).json" "$@"
