"""The staging client run elsewhere: its command line, and playbooks/stage.yml running it on every worker."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sollol_ops.errors import StageError

if TYPE_CHECKING:
    from sollol_ops.cluster.provision import TaskEvent


def worker_argv(python: str, endpoint: str, cache_dir: Path, pack: Path, manifest: Path, device: int = 0) -> list[str]:
    """The staging client's command line on a worker (PYTHONPATH must reach sollol_ops: see worker_pythonpath)."""
    return [
        python, "-m", "sollol_ops.stage.worker", "--endpoint", endpoint, "--cache-dir", str(cache_dir),
        "--source", str(pack), "--manifest", str(manifest), "--device", str(device),
    ]  # fmt: skip


def worker_pythonpath() -> str:
    """The directory holding this sollol_ops package (the staging client needs only the standard library)."""
    return str(Path(__file__).resolve().parents[2])


@dataclass
class AnsibleJob:
    """One rpc-server's part of a run of playbooks/stage.yml."""

    host: str  # inventory host
    endpoint: str
    manifest: Path
    pack: Path | None = None  # stage only
    cache_dir: str = ""  # "" = the rpc_server role's layout on that host

    def extravar(self) -> dict[str, object]:
        return {
            "endpoint": self.endpoint,
            "port": int(self.endpoint.rpartition(":")[2]),
            "pack": str(self.pack or ""),
            "manifest": str(self.manifest),
            "cache_dir": self.cache_dir,
        }


def run_stage_playbook(
    action: str,
    jobs: Sequence[AnsibleJob],
    inventory: Path,
    on_event: Callable[[TaskEvent], None] | None = None,
) -> dict[str, dict[str, object]]:
    """playbooks/stage.yml with stage_action=`action` (stage | verify | prune): every worker in parallel runs the
    staging client for its jobs; each job's JSON result by endpoint. StageError naming the host and task when a
    job brought nothing back."""
    from sollol_ops.cluster.provision import default_playbook, run_playbook

    by_host: dict[str, list[dict[str, object]]] = {}
    for job in jobs:
        by_host.setdefault(job.host, []).append(job.extravar())
    failures: list[str] = []

    def seen(event: TaskEvent) -> None:
        if event.kind in ("failed", "unreachable"):
            failures.append(f"{event.host}: {event.task}: {event.message}")
        if on_event is not None:
            on_event(event)

    with tempfile.TemporaryDirectory(prefix="sollol-stage-results-") as tmp:
        extravars = {
            "stage_action": action,
            "stage_jobs": by_host,
            "stage_client_dir": str(Path(worker_pythonpath()) / "sollol_ops"),
            "stage_results_dir": tmp,
        }
        run = run_playbook(default_playbook("stage"), inventory, extravars=extravars, on_event=seen)
        out: dict[str, dict[str, object]] = {}
        for job in jobs:
            path = Path(tmp) / f"{job.endpoint.replace(':', '_')}.json"
            if path.is_file():
                try:
                    out[job.endpoint] = json.loads(path.read_text())
                except ValueError:
                    pass
    missing = sorted({j.host for j in jobs if j.endpoint not in out})
    if run.rc != 0 or missing:
        raise StageError(
            f"playbooks/stage.yml ({action}) failed (exit {run.rc}) on {', '.join(missing) or 'some host'}: "
            + (failures[0] if failures else "see the host's rpc-server (systemctl status sollol-rpc-server)")
        )
    return out
