"""Tests of tests/lint/unused_deps.py on small made-up workspaces, and on this repository."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import unused_deps  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def workspace(tmp: Path, members: dict[str, tuple[str, dict[str, str]]], root_deps: str = "") -> Path:
    """A workspace whose members are `name -> (manifest tail, {relative path: source})`."""
    (tmp / "Cargo.toml").write_text(
        f'[workspace]\nmembers = ["crates/*"]\nexclude = ["crates/a/fuzz"]\n\n'
        f"[workspace.dependencies]\n{root_deps}"
    )
    for name, (tail, files) in members.items():
        d = tmp / "crates" / name
        d.mkdir(parents=True)
        (d / "Cargo.toml").write_text(f'[package]\nname = "{name}"\nversion = "0.1.0"\n\n{tail}')
        for rel, text in files.items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_text(text)
    return tmp


def problems(repo: Path) -> list[str]:
    return [f"{p.manifest}|{p.table}|{p.name}" for p in unused_deps.check(repo)]


@pytest.mark.parametrize(
    "source",
    [
        "use memchr::memchr;",
        "use memchr;",
        "fn f() { let _ = ::memchr::memchr(b'a', b\"\"); }",
        "fn f() { memchr::memchr(b'a', b\"\"); }",
        "extern crate memchr;",
        "use {std::io, memchr::memchr};",
        "#[derive(memchr::Thing)] struct S;",
    ],
)
def test_every_way_of_naming_a_crate_counts_as_a_use(tmp_path, source):
    repo = workspace(tmp_path, {"a": ("[dependencies]\nmemchr = \"2\"\n", {"src/lib.rs": source})})
    assert problems(repo) == []


@pytest.mark.parametrize(
    "source",
    [
        "",
        "fn memchr_like() {}",  # a longer identifier
        "use foo::memchr;",  # an item called memchr in another crate
        "let s = \"memchrx::y\";",
    ],
)
def test_a_crate_name_that_is_not_a_path_is_no_use(tmp_path, source):
    repo = workspace(tmp_path, {"a": ("[dependencies]\nmemchr = \"2\"\n", {"src/lib.rs": source})})
    assert problems(repo) == ["crates/a/Cargo.toml|dependencies|memchr"]


def test_dashes_become_underscores_and_renames_use_the_key(tmp_path):
    tail = '[dependencies]\nproxy-header = "0.1"\npp = { package = "ppp", version = "2" }\n'
    src = "use proxy_header::Header;\nuse pp::v2;\n"
    repo = workspace(tmp_path, {"a": (tail, {"src/lib.rs": src})})
    assert problems(repo) == []


def test_a_dependency_only_tests_use_must_be_a_dev_dependency(tmp_path):
    tail = '[dependencies]\ntempfile = "3"\n'
    repo = workspace(tmp_path, {"a": (tail, {"src/lib.rs": "", "tests/t.rs": "use tempfile::TempDir;"})})
    assert problems(repo) == ["crates/a/Cargo.toml|dependencies|tempfile"]
    message = str(unused_deps.check(repo)[0])
    assert "move it to [dev-dependencies]" in message


def test_dev_and_target_tables_are_checked(tmp_path):
    tail = (
        '[dev-dependencies]\nproptest = "1"\ntempfile = "3"\n\n'
        "[target.'cfg(unix)'.dependencies]\nlibc = \"0.2\"\n"
    )
    repo = workspace(tmp_path, {"a": (tail, {"src/lib.rs": "", "tests/t.rs": "use proptest::prelude::*;"})})
    assert problems(repo) == [
        "crates/a/Cargo.toml|dev-dependencies|tempfile",
        "crates/a/Cargo.toml|target.cfg(unix).dependencies|libc",
    ]


def test_the_cargo_machete_ignore_list_is_honoured(tmp_path):
    tail = '[package.metadata.cargo-machete]\nignored = ["openssl-sys"]\n\n[dependencies]\nopenssl-sys = "0.9"\n'
    repo = workspace(tmp_path, {"a": (tail, {"src/lib.rs": ""})})
    assert problems(repo) == []


def test_a_nested_package_is_checked_on_its_own(tmp_path):
    # crates/a/fuzz is a package of its own: its use of libfuzzer_sys does not count for a,
    # and a's sources do not count for it.
    repo = workspace(tmp_path, {"a": ('[dependencies]\nlibfuzzer-sys = "0.4"\nmemchr = "2"\n', {
        "src/lib.rs": "use memchr::memchr;",
        "fuzz/Cargo.toml": '[package]\nname = "a-fuzz"\nversion = "0.0.0"\n\n[dependencies]\nlibfuzzer-sys = "0.4"\nmemchr = "2"\n',
        "fuzz/fuzz_targets/t.rs": "use libfuzzer_sys::fuzz_target;",
    })})
    assert problems(repo) == [
        "crates/a/Cargo.toml|dependencies|libfuzzer-sys",
        "crates/a/fuzz/Cargo.toml|dependencies|memchr",
    ]


def test_an_orphan_workspace_dependency_is_reported(tmp_path):
    repo = workspace(
        tmp_path,
        {"a": ("[dependencies]\nmemchr.workspace = true\n", {"src/lib.rs": "use memchr::memchr;"})},
        root_deps='memchr = "2"\nanyhow = "1"\n',
    )
    assert problems(repo) == ["Cargo.toml|workspace.dependencies|anyhow"]


def test_the_exit_status_and_the_message_say_what_to_fix(tmp_path, capsys):
    repo = workspace(tmp_path, {"a": ('[dependencies]\nbytes = "1"\n', {"src/lib.rs": ""})})
    assert unused_deps.main(["unused_deps.py", str(repo)]) == 1
    out = capsys.readouterr().out
    assert "crates/a/Cargo.toml: [dependencies] bytes: no source file of this package uses it; remove the line" in out
    assert "1 unused or misplaced dependency" in out


def test_this_repository_has_no_unused_dependency():
    assert [str(p) for p in unused_deps.check(REPO)] == []
