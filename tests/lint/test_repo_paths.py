"""The repository explains itself: no file points a reader at a document or a path that a
person who clones it does not have (the team's private specification and references, or a
directory of one machine). Point at README.md, ARCHITECTURE.md, CONTRIBUTING.md or docs/
instead: docs/configuration.md (keys), docs/metrics.md (metrics, log lines),
docs/starttls.md (STARTTLS and login-guard rules T1-T13)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

OUTSIDE = re.compile(
    r"\.\./shared|SPEC\.md|SPEC §|DEVELOPERS\.md|starttls-rules|style\.md|test-tools\.md"
    r"|dependencies\.md|/work/"
)

# Recorded measurements keep the paths of the run they record.
SKIP_DIRS = ("benches/results/",)

# Files allowed to match anyway (none today); each entry must still match, so that it is
# removed from here once the file is clean.
KNOWN: dict[str, str] = {}


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout
    return [f for f in out.splitlines() if not f.startswith(SKIP_DIRS)]


def test_no_file_points_outside_the_repository():
    me = str(Path(__file__).resolve().relative_to(REPO))
    found = []
    for rel in tracked_files():
        if rel == me or rel in KNOWN:
            continue
        path = REPO / rel
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue  # binary files, and deletions not yet committed
        for n, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, (
        "these lines point outside the repository; point at README.md, ARCHITECTURE.md, "
        "CONTRIBUTING.md or docs/ instead:\n" + "\n".join(found)
    )


def test_known_exceptions_are_still_needed():
    stale = [
        rel for rel, pattern in KNOWN.items()
        if not (REPO / rel).exists() or pattern not in (REPO / rel).read_text(encoding="utf-8")
    ]
    assert not stale, f"remove from KNOWN in {Path(__file__).name}, they are clean now: {stale}"
