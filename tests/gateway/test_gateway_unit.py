"""roles/coordinator's sollol-gateway.service, rendered by Ansible from the role's templates, defaults and vars, then
started the way systemd starts it (ExecStart, Environment=, EnvironmentFile=): the command line is one `sollol-ops
gateway` accepts, the API key reaches the gateway through the 0600 environment file only, and the unit carries the
rpc-server units' hardening. Molecule (molecule/default) runs the real unit under systemd."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from gatewayparts import wait_until
from helpers import REPO
from ports import free_port

from sollol_ops.cluster import facts as cluster_vars

ROLE = REPO / "roles/coordinator"
# A key with every character systemd's environment-file quoting must escape.
KEY = 'k3y "with" \\back$lash `and` $HOME'


def _render(tmp: Path, port: int) -> tuple[str, Path]:
    play = tmp / "render.yml"
    play.write_text(
        f"""- hosts: localhost
  gather_facts: false
  vars_files: [{ROLE}/defaults/main.yml, {ROLE}/vars/main.yml]
  tasks:
    - ansible.builtin.template: {{src: {ROLE}/templates/sollol-gateway.service.j2, dest: {tmp}/unit, mode: "0644"}}
    - ansible.builtin.template:
        src: {ROLE}/templates/gateway.env.j2
        dest: "{{{{ coordinator__gateway_env }}}}"
        mode: "0600"
"""
    )
    extra = {
        "coordinator_venv": str(Path(sys.executable).parent.parent),
        "coordinator_inventory": str(tmp / "etc/inventory.yml"),
        "coordinator_gateway_port": port,
        "coordinator_gateway_keep_alive": "20s",
        "coordinator_gateway_api_key": KEY,
    }
    (tmp / "etc").mkdir()
    (tmp / "etc/inventory.yml").write_text("all:\n  hosts: {}\n")
    extra["ansible_python_interpreter"] = sys.executable
    playbook = Path(sys.executable).parent / "ansible-playbook"
    proc = subprocess.run(
        [playbook, "-i", "localhost,", "-c", "local", play, "-e", json.dumps(extra)],
        capture_output=True,
        text=True,
        cwd=tmp,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    return (tmp / "unit").read_text(), tmp / "etc/gateway.env"


def _directives(text: str) -> dict[str, str]:
    """KEY=VALUE lines of a unit (the last one wins, as for systemd's single-valued settings)."""
    return dict(m.groups() for m in re.finditer(r"^([A-Z]\w+)=(.*)$", text, re.M))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, int, Path]:
    tmp = tmp_path_factory.mktemp("gateway-unit")
    port = free_port()
    unit, env_file = _render(tmp, port)
    return unit, env_file, port, tmp


def test_unit_runs_as_the_service_user_restarts_on_failure_and_holds_no_key(
    rendered: tuple[str, Path, int, Path],
) -> None:
    unit, env_file, _, _ = rendered
    d = _directives(unit)
    assert d["User"] == "sollol" and d["Restart"] == "on-failure"
    assert d["EnvironmentFile"] == str(env_file)
    assert "--api-key" not in d["ExecStart"] and "k3y" not in unit
    assert env_file.stat().st_mode & 0o777 == 0o600
    # The value a POSIX shell reads back is the key (systemd's double-quoted values follow the same rules).
    sourced = subprocess.run(
        ["bash", "-c", f'set -a; . "$1"; printf %s "${cluster_vars.GATEWAY_API_KEY_ENV}"', "_", env_file],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    )
    assert sourced.stdout == KEY


def test_unit_is_hardened_like_the_rpc_server_units(rendered: tuple[str, Path, int, Path]) -> None:
    gateway = _directives(rendered[0])
    rpc_text = (REPO / "roles/rpc_server/templates/sollol-rpc-server.service.j2").read_text()
    rpc = _directives(rpc_text[rpc_text.index("# Hardening") : rpc_text.index("[Install]")])
    rpc.pop("DevicePolicy", None), rpc.pop("DeviceAllow", None)  # GPU backends only
    assert rpc.pop("ProtectHome") == "yes" and gateway["ProtectHome"] == "read-only"  # a store may live in a home
    assert len(rpc) > 20
    assert {k: gateway.get(k) for k in rpc} == rpc


def test_unit_command_serves_with_the_key_from_the_environment_file(rendered: tuple[str, Path, int, Path]) -> None:
    unit, env_file, port, tmp = rendered
    d = _directives(unit)
    argv = shlex.split(d["ExecStart"])
    assert argv[:4] == [
        str(Path(sys.executable).parent / "sollol-ops"),
        "-i",
        str(tmp / "etc/inventory.yml"),
        "gateway",
    ]
    assert argv[4:] == ["--host", "127.0.0.1", "--port", str(port), "--keep-alive", "20s", "--queue-size", "32"]
    sourced = subprocess.run(
        ["bash", "-c", 'set -a; . "$1"; env -0', "_", env_file], capture_output=True, text=True, check=True, env={}
    )
    from_file = dict(kv.split("=", 1) for kv in sourced.stdout.split("\0") if "=" in kv and not kv.startswith("_="))
    from_file = {k: v for k, v in from_file.items() if k not in ("PWD", "SHLVL")}
    assert from_file == {cluster_vars.GATEWAY_API_KEY_ENV: KEY}
    home = tmp / "state"  # the unit's HOME/XDG_STATE_HOME/XDG_CACHE_HOME are under /var: kept out of this machine
    env = {**os.environ, "HOME": str(home), "XDG_STATE_HOME": str(home), "XDG_CACHE_HOME": str(tmp / "cache")}
    env.pop(cluster_vars.GATEWAY_API_KEY_ENV, None)
    env |= {**from_file, "PYTHONPATH": str(REPO)}
    log = tmp / "gateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                return httpx.get(f"{url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 60, f"the unit's gateway to answer (log: {log})")
        assert httpx.get(f"{url}/api/version", timeout=5).status_code == 401
        ok = httpx.get(f"{url}/api/version", headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
        assert ok.status_code == 200 and ok.json()["version"]
        assert KEY not in Path(f"/proc/{proc.pid}/cmdline").read_text()
        assert KEY not in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
