"""A CPU quota for one process the benchmark starts: a deliberately slow worker on a machine of equal cores.

A cgroup of this run's own with a CFS quota (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us`), entered by the
process before it execs (`wrap()`), so every thread it starts is limited. Removed by `remove()`; only groups
this run created are touched. Needs root and a writable cpu controller; `available()` says why not.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from sollol_ops.errors import BenchError

V2_ROOT = Path("/sys/fs/cgroup")
V2_UNIFIED = Path("/sys/fs/cgroup/unified")  # the v2 hierarchy beside v1 controllers (hybrid layout)
V1_CPU = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 100_000


def _v2_parent() -> Path | None:
    """A v2 hierarchy whose children may get the cpu controller."""
    for root in (V2_ROOT, V2_UNIFIED):
        controllers = root / "cgroup.controllers"
        if controllers.is_file() and "cpu" in controllers.read_text().split():
            return root
    return None


def available() -> str | None:
    """None when a quota can be set here, else why not (one line)."""
    if os.geteuid() != 0:
        return "a CPU quota needs root (cgroups)"
    if _v2_parent() is None and not (V1_CPU / "cpu.cfs_quota_us").is_file():
        return "no cgroup cpu controller (v2 cpu.max or v1 cpu.cfs_quota_us) is mounted"
    return None


class CpuQuota:
    """`fraction` of one core for the processes started through wrap() (0.25: a quarter of a core)."""

    def __init__(self, name: str, fraction: float) -> None:
        if not 0.01 <= fraction <= 64:
            raise BenchError(f"CPU quota {fraction} is out of range 0.01..64 cores")
        if (why := available()) is not None:
            raise BenchError(why)
        self.fraction = fraction
        quota = int(PERIOD_US * fraction)
        parent = _v2_parent()
        if parent is not None:
            with contextlib.suppress(OSError):  # the controller may already be on, or not switchable: tried below
                (parent / "cgroup.subtree_control").write_text("+cpu")
            self.path = parent / f"sollol-{name}-{os.getpid()}"
            self.path.mkdir(exist_ok=True)
            try:
                (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            except OSError as exc:
                self.remove()
                raise BenchError(f"cannot set cpu.max in {self.path}: {exc}") from exc
        else:
            self.path = V1_CPU / f"sollol-{name}-{os.getpid()}"
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """argv run inside the group: the shell joins it, then execs argv (no moment outside the quota)."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *argv]

    def throttled_s(self) -> float:
        """Seconds the group's processes waited for their quota so far (cpu.stat)."""
        text = (self.path / "cpu.stat").read_text() if (self.path / "cpu.stat").is_file() else ""
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "throttled_usec":
                return int(value) / 1e6
            if key == "throttled_time":  # v1: nanoseconds
                return int(value) / 1e9
        return 0.0

    def remove(self) -> None:
        """Remove the group (its processes must have exited; a busy group is left for the kernel to report)."""
        with contextlib.suppress(OSError):
            self.path.rmdir()
