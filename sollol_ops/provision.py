"""Run a provisioning playbook through ansible-runner: live events per host and task, a per-host summary."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sollol_ops.errors import ProvisionError

REPO_ROOT = Path(__file__).resolve().parent.parent

# ansible-runner's stats keys -> our column names.
_STATS = {"ok": "ok", "changed": "changed", "failures": "failed", "dark": "unreachable", "skipped": "skipped"}


@dataclass
class HostSummary:
    host: str
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0

    @property
    def success(self) -> bool:
        return self.failed == 0 and self.unreachable == 0


@dataclass
class ProvisionResult:
    playbook: Path
    inventory: Path
    rc: int
    status: str
    hosts: list[HostSummary] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return self.rc == 0 and self.status == "successful" and all(h.success for h in self.hosts)


@dataclass
class TaskEvent:
    """One line of live progress: a task starting (host None) or a host's result of it."""

    kind: str  # play | task | ok | changed | failed | unreachable | skipped
    task: str
    host: str | None = None
    message: str = ""


def default_playbook() -> Path:
    """playbooks/site.yml of this checkout."""
    path = REPO_ROOT / "playbooks" / "site.yml"
    if not path.is_file():
        raise ProvisionError(f"no playbook at {path}: run from a sollol-ops checkout or pass --playbook PATH")
    return path


def _roles_path(playbook: Path) -> str:
    candidates = [playbook.parent / "roles", playbook.parent.parent / "roles", REPO_ROOT / "roles"]
    return os.pathsep.join(str(p) for p in candidates if p.is_dir())


def _event_to_task_event(event: Mapping[str, Any]) -> TaskEvent | None:
    name = event.get("event", "")
    data = event.get("event_data", {}) or {}
    task = str(data.get("task", "") or data.get("name", ""))
    host = data.get("host")
    if name == "playbook_on_play_start":
        return TaskEvent("play", str(data.get("play", "")))
    if name == "playbook_on_task_start":
        return TaskEvent("task", task)
    res = data.get("res", {}) or {}
    if name == "runner_on_ok":
        return TaskEvent("changed" if res.get("changed") else "ok", task, host)
    if name == "runner_on_failed":
        if data.get("ignore_errors"):
            return TaskEvent("ok", task, host, "failed (ignored)")
        return TaskEvent("failed", task, host, _one_line(res.get("msg") or res.get("stderr") or ""))
    if name == "runner_on_unreachable":
        return TaskEvent("unreachable", task, host, _one_line(res.get("msg", "")))
    if name == "runner_on_skipped":
        return TaskEvent("skipped", task, host)
    return None


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())[:300]


def run_playbook(
    playbook: Path,
    inventory: Path,
    *,
    check: bool = False,
    limit: str | None = None,
    tags: str | None = None,
    extravars: Mapping[str, Any] | None = None,
    on_event: Callable[[TaskEvent], None] | None = None,
) -> ProvisionResult:
    """Run `playbook` on `inventory`; raise ProvisionError only when it cannot start."""
    import ansible_runner

    playbook = playbook.resolve()
    inventory = inventory.resolve()
    if not playbook.is_file():
        raise ProvisionError(f"playbook {playbook} does not exist")
    if not inventory.exists():
        raise ProvisionError(f"inventory {inventory} does not exist")

    cmdline: list[str] = []
    if check:
        cmdline += ["--check", "--diff"]
    if tags:
        cmdline += ["--tags", tags]

    def handler(event: Mapping[str, Any]) -> bool:
        if on_event is not None:
            ev = _event_to_task_event(event)
            if ev is not None:
                on_event(ev)
        return True

    # The ansible-playbook next to this interpreter (the venv sollol-ops runs from), else the one on PATH.
    bindir = Path(sys.executable).parent
    binary = bindir / "ansible-playbook"
    if not binary.is_file():
        found = shutil.which("ansible-playbook")
        if found is None:
            raise ProvisionError("ansible-playbook not found next to sollol-ops or on PATH: install ansible-core")
        binary = Path(found)
    envvars = {
        "ANSIBLE_FORCE_COLOR": "false",
        "ANSIBLE_NOCOLOR": "true",
        "PATH": os.pathsep.join([str(binary.parent), os.environ.get("PATH", os.defpath)]),
    }
    roles = _roles_path(playbook)
    if roles:
        envvars["ANSIBLE_ROLES_PATH"] = roles
    cfg = playbook.parent.parent / "ansible.cfg"
    if "ANSIBLE_CONFIG" not in os.environ and cfg.is_file():
        envvars["ANSIBLE_CONFIG"] = str(cfg)

    # ansible-runner looks the command up on this process's PATH.
    os.environ["PATH"] = envvars["PATH"]
    with tempfile.TemporaryDirectory(prefix="sollol-provision-") as tmp:
        runner = ansible_runner.run(
            private_data_dir=tmp,
            playbook=str(playbook),
            inventory=str(inventory),
            limit=limit,
            cmdline=" ".join(_quote(a) for a in cmdline) or None,
            extravars=dict(extravars or {}),
            envvars=envvars,
            event_handler=handler,
            quiet=True,
            suppress_env_files=True,
            json_mode=False,
        )
        stats = runner.stats or {}
        hosts: dict[str, HostSummary] = {}
        for key, column in _STATS.items():
            for host, count in (stats.get(key) or {}).items():
                summary = hosts.setdefault(host, HostSummary(host))
                setattr(summary, column, int(count))
        for host in stats.get("processed") or {}:
            hosts.setdefault(host, HostSummary(host))
        rc = runner.rc if runner.rc is not None else 1
        if rc != 0 and not hosts:
            # Failed before any host ran (syntax error, unknown role, bad inventory): keep ansible's reason.
            tail = _stdout_tail(runner)
            raise ProvisionError(f"ansible-playbook {playbook.name} failed (exit {rc}) before any host ran: {tail}")
        return ProvisionResult(
            playbook, inventory, rc, str(runner.status), sorted(hosts.values(), key=lambda h: h.host)
        )


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def _stdout_tail(runner: Any) -> str:
    try:
        text = runner.stdout.read()
    except Exception:  # the artifact may be gone; the exit code still says enough
        return "no output"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln or "error" in ln.lower()]
    return _one_line((errors or lines or ["no output"])[-1])


def summary_rows(result: ProvisionResult) -> Sequence[Sequence[Any]]:
    return [[h.host, h.ok, h.changed, h.failed, h.unreachable, h.skipped] for h in result.hosts]
