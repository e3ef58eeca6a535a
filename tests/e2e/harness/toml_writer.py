"""A minimal TOML writer for the configs the tests generate (Python has tomllib, no writer).

Handles str, bool, int, float, lists of scalars, nested tables and arrays of tables, which is
all postern's config uses. Strings are written as TOML basic strings via JSON escaping (valid
TOML for every character JSON escapes).
"""

from __future__ import annotations

import json
import re
from typing import Any

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as a TOML value: {v!r}")


def _is_table(v: Any) -> bool:
    return isinstance(v, dict)


def _is_table_array(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, dict) for x in v)


def _body(path: str, table: dict, out: list[str]) -> None:
    for k, v in table.items():
        if v is None or _is_table(v) or _is_table_array(v):
            continue
        out.append(f"{_key(k)} = {_value(v)}")
    for k, v in table.items():
        if _is_table(v):
            sub = f"{path}.{_key(k)}" if path else _key(k)
            out.append("")
            out.append(f"[{sub}]")
            _body(sub, v, out)
    for k, v in table.items():
        if _is_table_array(v):
            sub = f"{path}.{_key(k)}" if path else _key(k)
            for item in v:
                out.append("")
                out.append(f"[[{sub}]]")
                _body(sub, item, out)


def dumps(doc: dict) -> str:
    """Serialise a dict to TOML text. Keys whose value is None are left out."""
    out: list[str] = []
    _body("", doc, out)
    return "\n".join(out).lstrip("\n") + "\n"
