"""Processes seen through /proc: postern's children (exec backends, zombies), the ids and
capabilities of every thread (privilege drop), open descriptors, CPU time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .util import wait_for


def proc_stat(pid: int) -> Optional[tuple[str, int, str]]:
    """(state, ppid, comm) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm is in parentheses and may contain spaces or parentheses: split after the last ')'
    lpar, rpar = text.index("("), text.rindex(")")
    comm = text[lpar + 1:rpar]
    rest = text[rpar + 2:].split()
    return rest[0], int(rest[1]), comm


def children(ppid: int) -> list[tuple[int, str, str]]:
    """(pid, state, comm) of every process whose parent is `ppid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = proc_stat(int(entry))
        if st is not None and st[1] == ppid:
            found.append((int(entry), st[0], st[2]))
    return found


def zombies(ppid: int) -> list[tuple[int, str, str]]:
    return [c for c in children(ppid) if c[1] == "Z"]


def wait_no_children(ppid: int, timeout: float = 10.0) -> None:
    """Wait until `ppid` has no child at all (none running, none unreaped)."""
    wait_for(lambda: not children(ppid), timeout, f"process {ppid} to have no children",
             interval=0.02, on_timeout=lambda: f"still: {children(ppid)}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_ids(pid: int) -> dict[str, dict[str, list[int]]]:
    """{"<pid>" and each thread id: {"Uid": [...4], "Gid": [...4], "Groups": [...], "CapEff": [x], ...}}."""
    out: dict[str, dict[str, list[int]]] = {}
    for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
        try:
            text = (task / "status").read_text()
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        fields: dict[str, list[int]] = {}
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups"):
                fields[key] = [int(x) for x in value.split()]
            elif key in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
                fields[key] = [int(value.strip(), 16)]
        out[task.name] = fields
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process `pid` has used so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        # the fields after the command name, which may hold spaces and parentheses
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_queue_wait(pid: int) -> float:
    """Seconds the threads of process `pid` have spent runnable but waiting for a CPU so far
    (schedstat's second field, summed over the threads alive now): on a shared machine, how
    much of a latency is other processes' doing."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass  # a thread that ended meanwhile
    return total / 1e9
