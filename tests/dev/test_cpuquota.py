"""The benchmark's slow worker: a process started through CpuQuota.wrap runs inside the quota (it is
throttled), its group is removed afterwards, and where no quota can be set the reason is one line."""

from __future__ import annotations

import subprocess

import pytest

from sollol_ops.dev import cpuquota
from sollol_ops.errors import BenchError


def test_a_wrapped_process_runs_inside_its_quota_and_the_group_is_removed() -> None:
    assert cpuquota.available() is None  # root with a cgroup cpu controller, as `make test` runs (the bench needs it)
    quota = cpuquota.CpuQuota("test", 0.1)
    try:
        spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
        subprocess.run(quota.wrap(["python3", "-c", spin]), check=True, timeout=60)
        assert quota.throttled_s() > 0  # 0.3 s of CPU at a tenth of a core: throttled for most of it
    finally:
        quota.remove()
    assert not quota.path.exists()


def test_an_out_of_range_quota_is_refused() -> None:
    with pytest.raises(BenchError, match="out of range"):
        cpuquota.CpuQuota("test", 0.0)
