#!/usr/bin/env python3
"""Fails when a Cargo manifest declares a dependency that no source file uses.

    python3 tests/lint/unused_deps.py [REPO]      # exit 0 clean, 1 with one line per problem

Why a script and not cargo-machete: `cargo install --locked cargo-machete` took 7 minutes
(3.3 CPU-minutes) on a clean 2-core machine, a third of the CI budget, for a check that is a
text search; this script does the same search (a dependency is used when its crate name
appears as a path, `use` or `extern crate` in a `.rs` file of the package) in well under a
second, and its tests are tests/lint/test_unused_deps.py. It honours cargo-machete's
`[package.metadata.cargo-machete] ignored = [...]`, so the two stay interchangeable.

What it checks, for every package of the workspace (members, and the packages excluded from
it, e.g. crates/proto/fuzz):
  - a [dependencies] / [build-dependencies] entry no source file of the package uses;
  - a [dependencies] entry used only by tests/, benches/ or examples/ (a dev-dependency);
  - a [dev-dependencies] entry nothing in the package uses;
  - a [workspace.dependencies] entry no member refers to.
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

# Directories whose sources only tests, benches and examples compile.
DEV_ONLY_DIRS = ("tests", "benches", "examples")
DEP_TABLES = ("dependencies", "dev-dependencies", "build-dependencies")


@dataclass(frozen=True)
class Problem:
    manifest: Path
    table: str
    name: str
    fix: str

    def __str__(self) -> str:
        return f"{self.manifest}: [{self.table}] {self.name}: {self.fix}"


def dep_tables(manifest: dict) -> list[tuple[str, dict]]:
    """(table name, entries) for the plain and the target-specific dependency tables."""
    out = [(t, manifest.get(t, {})) for t in DEP_TABLES]
    for cfg, target in manifest.get("target", {}).items():
        out += [(f"target.{cfg}.{t}", target.get(t, {})) for t in DEP_TABLES]
    return out


def uses(ident: str, text: str) -> bool:
    """True when `text` names the crate `ident` the way Rust code refers to a crate."""
    i = re.escape(ident)
    pattern = (
        rf"(?<![\w:])(?:::)?{i}::"  # a path: tokio::spawn, ::serde::Serialize
        rf"|\buse\s+(?:::)?{i}\b"  # use memchr; use serde as s;
        rf"|\bextern\s+crate\s+{i}\b"
    )
    return re.search(pattern, text) is not None


def sources(package_dir: Path, nested: set[Path]) -> list[Path]:
    """The package's .rs files, without target/ and without packages nested inside it."""
    files = []
    for path in package_dir.rglob("*.rs"):
        rel_parts = path.relative_to(package_dir).parts
        if "target" in rel_parts:
            continue
        if any(package_dir in n.parents and n in path.parents for n in nested):
            continue
        files.append(path)
    return sorted(files)


def is_dev_only(path: Path, package_dir: Path) -> bool:
    return path.relative_to(package_dir).parts[0] in DEV_ONLY_DIRS


def check_package(manifest_path: Path, nested: set[Path], repo: Path) -> list[Problem]:
    manifest = tomllib.loads(manifest_path.read_text())
    package_dir = manifest_path.parent
    ignored = set(
        manifest.get("package", {})
        .get("metadata", {})
        .get("cargo-machete", {})
        .get("ignored", [])
    )
    texts = [(p, p.read_text(errors="replace")) for p in sources(package_dir, nested)]
    shown = manifest_path.relative_to(repo)
    problems = []
    for table, entries in dep_tables(manifest):
        for name in entries:
            if name in ignored:
                continue
            ident = name.replace("-", "_")
            users = [p for p, text in texts if uses(ident, text)]
            dev_table = table.endswith("dev-dependencies")
            if not users:
                problems.append(Problem(shown, table, name, (
                    "no source file of this package uses it; remove the line (if it is "
                    "needed only to enable a feature or for a side effect, add it to "
                    "[package.metadata.cargo-machete] ignored = [...] with a comment saying why)"
                )))
            elif not dev_table and not table.endswith("build-dependencies") and all(
                is_dev_only(p, package_dir) for p in users
            ):
                problems.append(Problem(shown, table, name, (
                    "only tests/benches/examples use it; move it to [dev-dependencies]"
                )))
    return problems


def member_refers(manifest: dict, name: str) -> bool:
    return any(name in entries for _, entries in dep_tables(manifest))


def check(repo: Path) -> list[Problem]:
    root_path = repo / "Cargo.toml"
    root = tomllib.loads(root_path.read_text())
    ws = root.get("workspace", {})
    # The members and the packages excluded from the workspace (checked on their own).
    dirs = {d for pattern in ws.get("members", []) for d in repo.glob(pattern)}
    dirs |= {repo / d for d in ws.get("exclude", [])}
    manifests = sorted(d / "Cargo.toml" for d in dirs if (d / "Cargo.toml").is_file())
    manifests = [p for p in manifests if "package" in tomllib.loads(p.read_text())]
    nested = {p.parent for p in manifests}
    problems = []
    for manifest_path in manifests:
        problems += check_package(manifest_path, nested, repo)
    parsed = [tomllib.loads(p.read_text()) for p in manifests]
    for name in root.get("workspace", {}).get("dependencies", {}):
        if not any(member_refers(m, name) for m in parsed):
            problems.append(Problem(root_path.relative_to(repo), "workspace.dependencies", name, (
                "no package refers to it; remove the line"
            )))
    return problems


def main(argv: list[str]) -> int:
    repo = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[2]
    problems = check(repo)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} unused or misplaced dependenc{'y' if len(problems) == 1 else 'ies'}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
