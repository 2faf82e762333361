"""playbooks/upgrade.yml's final check (`sollol-ops status --check` on the coordinator) fails, naming the endpoint,
when an rpc-server speaks another RPC protocol version, and passes when it speaks ours.

Runs the real playbook with `--tags upgrade_check`: only that check runs (plus fact gathering and the roles'
argument validation, which are tagged `always`), so nothing is installed or changed on this machine. The coordinator
is this machine (connection local) with this checkout's CLI; the one rpc_servers host is an RpcDouble on loopback,
which speaks llama.cpp's real wire format and announces the version given.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO
from rpcdouble import RpcDouble

BIN = Path(sys.executable).parent


def _check(tmp_path: Path, double: RpcDouble) -> subprocess.CompletedProcess[str]:
    # coordinator_venv/bin/sollol-ops is what upgrade.yml runs: make it this checkout's CLI.
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    cli = venv / "bin/sollol-ops"
    cli.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m sollol_ops.cli.main "$@"\n')
    cli.chmod(0o755)
    inv = tmp_path / "inventory.ini"
    inv.write_text(
        "[rpc_servers]\n"
        f"worker ansible_host=127.0.0.1 ansible_connection=local sollol_rpc_port={double.port}\n"
        "[coordinator]\n"
        "coord ansible_host=127.0.0.1 ansible_connection=local\n"
    )
    extra = {
        "ansible_python_interpreter": sys.executable,
        "coordinator_venv": str(venv),
        # The CLI reads an Ansible inventory: the same file stands in for the one the coordinator role writes.
        "coordinator_inventory": str(inv),
        "upgrade_check_retries": 2,
        "upgrade_check_delay": 1,
    }
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",  # ansible-inventory, which the CLI runs
        # No coordinator state or inventory cache of the user's: the check must see no running coordinator.
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "SOLLOL_INVENTORY": "",
    }
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inv), "playbooks/upgrade.yml", "--tags", "upgrade_check",
         "-e", json.dumps(extra)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def _failures(output: str) -> list[str]:
    return re.findall(r"fatal: \[coord\].*?\"msg\": \"(.*?)\"", output, re.S)


@pytest.mark.parametrize("version", [(8, 0, 0), (6, 2, 0)], ids=["8.0.0", "6.2.0"])
def test_check_fails_against_another_protocol_version(tmp_path: Path, version: tuple[int, int, int]) -> None:
    with RpcDouble(version=version) as double:
        proc = _check(tmp_path, double)
        assert double.connections > 0, "the check never reached the rpc-server: " + proc.stdout[-3000:]
    assert proc.returncode != 0, proc.stdout[-3000:]
    msg = _failures(proc.stdout)[-1]  # the rescue's report, after the command's own failure
    assert msg.startswith("the cluster is not healthy"), proc.stdout[-3000:]
    assert f"worker ({double.endpoint}) is incompatible" in msg, msg
    assert ".".join(map(str, version)) in msg, msg
    # Retrying cannot fix a protocol mismatch: the check gives up at the first answer.
    assert "after 1 attempt(s)" in msg, msg
    assert re.search(r"PLAY RECAP.*coord\s+:.*failed=1", proc.stdout, re.S), proc.stdout[-2000:]


@pytest.mark.slow
def test_check_passes_against_our_protocol_version(tmp_path: Path) -> None:
    with RpcDouble(version=(7, 0, 0)) as double:
        proc = _check(tmp_path, double)
        assert double.connections > 0, "the check never reached the rpc-server: " + proc.stdout[-3000:]
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Wait until sollol-ops status --check passes" in proc.stdout
