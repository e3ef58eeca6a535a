#!/usr/bin/env bash
# Full side-by-side run (postern, HAProxy, stunnel); extra arguments go to compare.py.
# Raw results land in benches/last-run.json; paste the table into RESULTS.md by hand.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec python3 "$here/compare.py" --json "$here/last-run.json" "$@"
