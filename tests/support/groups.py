"""Process groups the netns tests started, killed at the end whatever state they are in."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable


def kill_groups(pids: Iterable[int]) -> None:
    """SIGKILL the process group of each pid; one already gone is skipped."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
