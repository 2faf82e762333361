"""playbooks/site.yml fails early, with one clear message per problem, on a bad cluster inventory.

Runs the real playbook against localhost (connection local) with `--tags preflight-only`: only the
preflight tasks (tagged `always`) run, so nothing is installed or changed on this machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

BIN = Path(sys.executable).parent


def _site(inventory: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    inv = tmp_path / "inventory.ini"
    inv.write_text(inventory)
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inv), "playbooks/site.yml", "--tags", "preflight-only",
         "-e", f"ansible_python_interpreter={sys.executable}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def _failures(output: str) -> list[str]:
    return re.findall(r"(?:fatal|failed): \[localhost\].*?\"msg\": \"(.*?)\"", output, re.S)


WORKER = "localhost ansible_connection=local"


def test_no_coordinator_fails_early(tmp_path: Path) -> None:
    proc = _site(f"[rpc_servers]\n{WORKER}\n", tmp_path)
    assert proc.returncode != 0
    msgs = _failures(proc.stdout)
    assert len(msgs) == 1, proc.stdout[-3000:]
    assert "no host in group 'coordinator'" in msgs[0]


def test_port_clash_between_instances_fails_early(tmp_path: Path) -> None:
    inv = (
        f"[rpc_servers]\n{WORKER} "
        'sollol_rpc_instances=\'[{"port": 50052, "device": "CUDA0"}, {"port": 50052, "device": "CUDA1"}]\'\n'
        "[coordinator]\ncoord ansible_host=127.0.0.2 ansible_connection=local\n"
    )
    proc = _site(inv, tmp_path)
    assert proc.returncode != 0
    msgs = _failures(proc.stdout)
    assert len(msgs) == 1, proc.stdout[-3000:]
    assert "must give every instance its own port" in msgs[0] and "50052" in msgs[0]


@pytest.mark.parametrize("backend", ["ufw", "firewalld"])
def test_firewall_backend_not_installed_fails_early(tmp_path: Path, backend: str) -> None:
    tool = {"ufw": "ufw", "firewalld": "firewall-cmd"}[backend]
    if shutil.which(tool, path="/usr/sbin:/sbin:" + os.environ.get("PATH", "")):
        pytest.fail(f"{tool} is installed on this machine: this test needs a host without it")
    inv = (
        f"[rpc_servers]\n{WORKER} rpc_server_firewall_backend={backend}\n"
        "[coordinator]\ncoord ansible_host=127.0.0.2 ansible_connection=local\n"
    )
    proc = _site(inv, tmp_path)
    assert proc.returncode != 0
    msgs = _failures(proc.stdout)
    assert len(msgs) == 1, proc.stdout[-3000:]
    assert f"rpc_server_firewall_backend is '{backend}' but it is not installed" in msgs[0]
