"""Process sampling from /proc, shared by the benchmarks that watch a run's processes
(scale_bench.py, soak_bench.py).

Linux only; no psutil (not a dependency of this project). Every reader tolerates a process
that ends between listing /proc and reading its files: it returns "" / [] / None, and the
caller skips that process. What a process is (its role in a run) stays with each benchmark.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from typing import NamedTuple

KB = 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")  # /proc/<pid>/stat counts CPU time in these ticks


def read(path: str) -> str:
    """The text of a file ("" if it cannot be read: the process ended between listing and
    reading; bytes that are not UTF-8, as a process may put in its name, are replaced)."""
    try:
        with open(path, errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after comm ([0] state, [1] ppid, [11] utime, [12] stime),
    [] if it is gone. comm may hold spaces and parentheses: the fields start after the last
    ')'."""
    stat = read(f"/proc/{pid}/stat")
    return stat[stat.rindex(")") + 2 :].split() if stat else []


def descendants(root: int) -> list[int]:
    """`root` and every process below it, `root` first (from the ppid field of
    /proc/<pid>/stat); `root` is listed even if it has ended."""
    children: dict[int, list[int]] = defaultdict(list)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields:
            children[int(fields[1])].append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


class Memory(NamedTuple):
    """Memory of a process (or a sum of processes) in bytes, from /proc/<pid>/smaps_rollup.

    The field order is the layout soak_bench.py's --dump files store per pid: keep it."""

    rss: int
    """Resident pages, shared ones (libraries, the object store) counted in full."""
    pss: int
    """Private pages plus a fair share of the shared ones."""
    uss: int
    """Private pages only (Private_Clean + Private_Dirty; psutil's uss)."""

    @classmethod
    def sum(cls, mems: Iterable[Memory]) -> Memory:
        """Field by field sum (Memory(0, 0, 0) for none)."""
        rss = pss = uss = 0
        for m in mems:
            rss, pss, uss = rss + m.rss, pss + m.pss, uss + m.uss
        return cls(rss, pss, uss)


def memory(pid: int) -> Memory | None:
    """Memory of `pid`; None if it is gone."""
    text = read(f"/proc/{pid}/smaps_rollup")
    if not text:
        return None
    kb: dict[str, int] = {}
    for line in text.splitlines()[1:]:  # the first line names the mapping range
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            kb[key] = int(parts[0])
    uss = kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)
    return Memory(kb.get("Rss", 0) * KB, kb.get("Pss", 0) * KB, uss * KB)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of `pid` (its own, not its waited-for children's); None if it
    is gone."""
    fields = _stat_fields(pid)
    if not fields:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cmdline(pid: int) -> list[str]:
    """The command line of `pid` as its arguments ([] if it is gone or a kernel thread). A Ray
    worker renames itself: its first argument is then e.g. 'ray::AgentShard.act'."""
    text = read(f"/proc/{pid}/cmdline")
    return text.rstrip("\0").split("\0") if text.rstrip("\0") else []
