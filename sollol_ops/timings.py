"""Where a command spends its time: named phases, measured back to back, printed to stderr.

`sollol-ops up --timings` (or SOLLOL_OPS_TRACE=1 in the environment) prints one line per phase,
``sollol-ops: timing: PHASE SECONDS``, and a total. The first phase, "interpreter + imports", runs from
the kernel's start time of this process (clock ticks since boot, 10 ms resolution) to the first mark;
every other phase runs from the previous mark to its own. The benchmark parses these lines
(`parse_lines`) to report each phase of `up`.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

TRACE_ENV = "SOLLOL_OPS_TRACE"
PREFIX = "sollol-ops: timing: "
FIRST_PHASE = "interpreter + imports"


def wanted(flag: bool = False) -> bool:
    """Timings asked for by a command's flag or by SOLLOL_OPS_TRACE=1."""
    return flag or os.environ.get(TRACE_ENV, "") not in ("", "0")


def process_age() -> float | None:
    """Seconds since the kernel started this process, or None when /proc does not say."""
    try:
        stat = open("/proc/self/stat").read()  # noqa: SIM115 - one read, closed by refcount
        ticks = int(stat[stat.rfind(")") + 2 :].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class PhaseClock:
    """Back-to-back phases of one command. Marks are cheap (a clock read), so the clock is always
    there; it only prints when enabled."""

    enabled: bool = False
    phases: list[tuple[str, float]] = field(default_factory=list)
    _last: float = field(default_factory=time.perf_counter)
    _started: bool = False

    def mark(self, phase: str) -> None:
        """End ``phase`` now. The first mark also records the interpreter's start-up before it."""
        now = time.perf_counter()
        if not self._started:
            self._started = True
            age = process_age()
            if age is not None:
                self.phases.append((FIRST_PHASE, max(0.0, age - (time.perf_counter() - now))))
                self._last = now
                if phase == FIRST_PHASE:
                    return
        self.phases.append((phase, now - self._last))
        self._last = now

    def report(self) -> None:
        if not self.enabled:
            return
        for name, seconds in self.phases:
            sys.stderr.write(f"{PREFIX}{name} {seconds:.4f}\n")
        sys.stderr.write(f"{PREFIX}total {sum(s for _, s in self.phases):.4f}\n")
        sys.stderr.flush()


def parse_lines(text: str) -> list[tuple[str, float]]:
    """The phases a traced command printed (in order; without the total)."""
    out = []
    for line in text.splitlines():
        if line.startswith(PREFIX):
            name, _, value = line[len(PREFIX) :].rpartition(" ")
            if name != "total":
                try:
                    out.append((name, float(value)))
                except ValueError:
                    continue
    return out
