"""`sollol-ops local start`: the inventory it writes works with every later command, whatever it binds."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sollol_ops.cluster.local import dial_address


def test_a_wildcard_bind_is_dialled_on_loopback() -> None:
    assert dial_address("0.0.0.0") == "127.0.0.1"
    assert dial_address("") == "127.0.0.1"
    assert dial_address("::") == "::1"
    assert dial_address("10.1.2.3") == "10.1.2.3"
    assert dial_address("127.0.0.1") == "127.0.0.1"


@pytest.mark.toolchain
@pytest.mark.netns
def test_local_start_on_every_interface_writes_an_inventory_that_works(tmp_path: Path) -> None:
    """`local start --host 0.0.0.0`, in a network namespace of its own (every interface is its loopback, nothing
    else can reach it): the exposure warning stays, and the inventory names the address a client dials, which
    `rpc-list`, `backends` and `status` accept (they refused `ansible_host 0.0.0.0` before)."""
    root, out = tmp_path / "local", tmp_path / "out"
    out.mkdir()
    cli = f"{shlex.quote(sys.executable)} -m sollol_ops.cli.main"
    inv = shlex.quote(str(root / "inventory.ini"))
    script = "\n".join(
        [
            "ip link set lo up",
            f"{cli} local start 1 --host 0.0.0.0 --threads 1 --no-cache --dir {root} --json"
            f" >{out}/start 2>{out}/start.err",
            *(
                f"{cli} -i {inv} {cmd} >{out}/{name} 2>{out}/{name}.err; echo $? >{out}/{name}.rc"
                for name, cmd in (
                    ("rpc-list", "rpc-list"),
                    ("backends", "backends --json"),
                    ("status", "status --json"),
                )
            ),
            f"{cli} local stop --dir {root}",
        ]
    )
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "XDG_STATE_HOME": str(tmp_path / "state"),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "SOLLOL_INVENTORY": "",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # fmt: skip
    proc = subprocess.run(["unshare", "--net", "bash", "-c", script], env=env, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "listen on every interface" in (out / "start.err").read_text()
    port = json.loads((out / "start").read_text())["servers"][0]["port"]
    assert "ansible_host=127.0.0.1" in (root / "inventory.ini").read_text()
    for name in ("rpc-list", "backends", "status"):
        assert (out / f"{name}.rc").read_text().strip() == "0", (out / f"{name}.err").read_text()
    assert (out / "rpc-list").read_text() == f"127.0.0.1:{port}\n"
    status = json.loads((out / "status").read_text())
    assert [b["status"] for b in status["backends"]] == ["ready"], status
