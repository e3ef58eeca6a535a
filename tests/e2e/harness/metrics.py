"""Reading postern's admin endpoint: plain HTTP GET and a Prometheus text-format parser."""

from __future__ import annotations

import http.client
import math
import re
from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def http_get(addr: tuple[str, int], path: str, timeout: float = 5.0) -> HttpResponse:
    """GET http://addr/path (HTTP/1.1, one connection per request); header names lowercased."""
    conn = http.client.HTTPConnection(addr[0], addr[1], timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        return HttpResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
    finally:
        conn.close()


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass
class Metrics:
    """A parsed exposition. `types` maps family name -> counter/gauge/histogram/...;
    `helps` maps family name -> HELP text."""

    samples: list[Sample]
    types: dict[str, str] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)
    text: str = ""

    # the metric name is positional-only, so a label called `name` (certificate expiry) works
    def find(self, metric: str, /, **labels: str) -> list[Sample]:
        """Samples called `metric` whose labels include every given label (a subset match)."""
        return [s for s in self.samples if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, metric: str, /, default: Optional[float] = 0.0, **labels: str) -> Optional[float]:
        """The sum over matching samples; `default` when none match (a labelled series that
        was never touched is usually absent from the exposition)."""
        found = self.find(metric, **labels)
        if not found:
            return default
        return sum(s.value for s in found)

    def has(self, metric: str, /, **labels: str) -> bool:
        return bool(self.find(metric, **labels))


_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


class ExpositionError(ValueError):
    """The /metrics text is not valid Prometheus text format."""


def _unescape(v: str) -> str:
    return v.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")


def parse_exposition(text: str) -> Metrics:
    """Parse Prometheus text format 0.0.4 strictly enough to catch malformed lines."""
    m = Metrics(samples=[], text=text)
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] == "TYPE":
                m.types[parts[2]] = parts[3] if len(parts) > 3 else ""
            elif len(parts) >= 3 and parts[1] == "HELP":
                m.helps[parts[2]] = parts[3] if len(parts) > 3 else ""
            continue
        mt = _LINE.match(line)
        if not mt:
            raise ExpositionError(f"line {lineno}: cannot parse {line!r}")
        name, _, label_text, value = mt.group(1), mt.group(2), mt.group(3), mt.group(4)
        labels: dict[str, str] = {}
        if label_text:
            pos = 0
            while pos < len(label_text):
                lm = _LABEL.match(label_text, pos)
                if not lm:
                    raise ExpositionError(f"line {lineno}: bad labels in {line!r}")
                labels[lm.group(1)] = _unescape(lm.group(2))
                pos = lm.end()
        try:
            v = float(value) if value not in ("+Inf", "-Inf", "NaN") else {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}[value]
        except ValueError as e:
            raise ExpositionError(f"line {lineno}: bad value in {line!r}") from e
        m.samples.append(Sample(name, labels, v))
    return m
