"""Run a provisioning playbook through ansible-runner: live events per host and task, a per-host summary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sollol_ops.errors import ProvisionError

# The playbooks and roles, as package data: in a checkout, links to its playbooks/ and roles/ (the one copy in
# git); in an installed wheel, the copies the wheel carries.
ANSIBLE_DIR = Path(__file__).resolve().parents[1] / "ansible"
PLAYBOOK_ACTIONS = ("syntax-check", "list-hosts", "list-tasks")

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


def default_playbook(name: str = "site") -> Path:
    """playbooks/NAME.yml that came with this sollol-ops (the checkout's, or the installed package's copy)."""
    path = (ANSIBLE_DIR / "playbooks" / f"{name}.yml").resolve()
    if not path.is_file():
        raise ProvisionError(
            f"no playbook at {path}: this sollol-ops lacks its Ansible files (reinstall it from a wheel, "
            "or in a checkout restore the links under sollol_ops/ansible/), or pass --playbook PATH"
        )
    return path


def _roles_path(playbook: Path) -> str:
    candidates = [playbook.parent / "roles", playbook.parent.parent / "roles", ANSIBLE_DIR / "roles"]
    seen: list[str] = []
    for path in candidates:
        if path.is_dir() and str(path.resolve()) not in seen:
            seen.append(str(path.resolve()))
    return os.pathsep.join(seen)


def _ansible_env(playbook: Path) -> tuple[Path, dict[str, str]]:
    """ansible-playbook, and the environment to run it in: its directory first on PATH, the roles, ansible.cfg."""
    # The ansible-playbook next to this interpreter (the venv sollol-ops runs from), else the one on PATH.
    binary = Path(sys.executable).parent / "ansible-playbook"
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
    return binary, envvars


def _check_paths(playbook: Path, inventory: Path) -> tuple[Path, Path]:
    playbook = playbook.resolve()
    inventory = inventory.resolve()
    if not playbook.is_file():
        raise ProvisionError(f"playbook {playbook} does not exist")
    if not inventory.exists():
        raise ProvisionError(f"inventory {inventory} does not exist")
    return playbook, inventory


def inspect_playbook(
    playbook: Path,
    inventory: Path,
    action: str,
    *,
    limit: str | None = None,
    tags: str | None = None,
    extravars: Mapping[str, Any] | None = None,
) -> str:
    """`ansible-playbook --ACTION` (syntax-check, list-hosts, list-tasks): its output; changes nothing on any host."""
    if action not in PLAYBOOK_ACTIONS:
        raise ValueError(action)
    playbook, inventory = _check_paths(playbook, inventory)
    binary, envvars = _ansible_env(playbook)
    argv = [str(binary), "-i", str(inventory), f"--{action}", str(playbook)]
    if limit:
        argv += ["--limit", limit]
    if tags:
        argv += ["--tags", tags]
    if extravars:
        argv += ["-e", json.dumps(dict(extravars))]
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, env={**os.environ, **envvars}, timeout=600, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ProvisionError(f"ansible-playbook --{action} {playbook.name} timed out") from exc
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR") or "[ERROR]" in ln]
        reason = _one_line((errors or lines or ["no output"])[0])
        raise ProvisionError(f"ansible-playbook --{action} {playbook.name} failed (exit {proc.returncode}): {reason}")
    return proc.stdout


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

    playbook, inventory = _check_paths(playbook, inventory)

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

    _, envvars = _ansible_env(playbook)  # ansible-runner finds ansible-playbook on envvars' PATH (pexpect's which)
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
