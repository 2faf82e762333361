"""sollol-ops without a checkout: the wheel carries the playbooks and roles, a fresh venv outside the repository
runs them through `sollol-ops provision`, and the coordinator role installs sollol-ops from a wheel, idempotently.

The wheel is built once per session by the coordinator role's own builder (roles/coordinator/files/build_wheel.sh:
a snapshot of the checkout, `pip wheel --no-deps`); dependencies come from PyPI through pip's cache.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from helpers import REPO

from sollol_ops import __version__

BUILD_WHEEL = REPO / "roles/coordinator/files/build_wheel.sh"
_FOREIGN = ("PYTHONPATH", "SOLLOL_INVENTORY", "ANSIBLE_CONFIG", "ANSIBLE_ROLES_PATH", "ANSIBLE_COLLECTIONS_PATH")


def _env(**extra: str) -> dict[str, str]:
    """This environment without anything that would point a subprocess back at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN and k != "VIRTUAL_ENV"}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra)
    return env


def _run(argv: list[str | Path], *, cwd: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=timeout, check=False
    )


def _build_wheel(source: Path, outdir: Path) -> tuple[str, Path]:
    proc = _run(["bash", BUILD_WHEEL, source, outdir, sys.executable], cwd=outdir.parent)
    assert proc.returncode == 0, proc.stderr
    status, path = proc.stdout.strip().splitlines()[-1].split(" ", 1)
    return status, Path(path)


@pytest.fixture(scope="session")
def wheel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wheels")


@pytest.fixture(scope="session")
def wheel(wheel_dir: Path) -> Path:
    status, path = _build_wheel(REPO, wheel_dir)
    assert status == "built" and path.is_file()
    return path


def _ansible_files() -> list[str]:
    files = [p for p in (REPO / "roles").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    files += list((REPO / "playbooks").glob("*.yml"))
    return sorted(str(p.relative_to(REPO)) for p in files)


def test_wheel_carries_the_playbooks_and_roles(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for rel in _ansible_files():
            member = f"sollol_ops/ansible/{rel}"
            assert member in names, member
            assert zf.read(member) == (REPO / rel).read_bytes(), member
    assert {n.split("/")[0] for n in names} == {"sollol_ops", f"sollol_ops-{__version__}.dist-info"}


def test_wheel_carries_the_gateway_page(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        for name in ("ui.html", "ui.js", "ui.css"):  # GET /ui serves them from the installed package
            member = f"sollol_ops/gateway/static/{name}"
            assert zf.read(member) == (REPO / member).read_bytes(), member


def test_build_wheel_once_per_source_state(wheel: Path, wheel_dir: Path) -> None:
    status, path = _build_wheel(REPO, wheel_dir)
    assert (status, path) == ("cached", wheel)


def test_build_wheel_refuses_a_tree_without_roles(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy2(REPO / "pyproject.toml", src)
    shutil.copytree(
        REPO / "sollol_ops", src / "sollol_ops", symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
    )
    proc = _run(["bash", BUILD_WHEEL, src, tmp_path / "out", sys.executable], cwd=tmp_path)
    assert proc.returncode == 2
    assert "lacks the playbooks and roles the wheel carries" in proc.stderr
    proc = _run(["bash", BUILD_WHEEL, tmp_path, tmp_path / "out", sys.executable], cwd=tmp_path)
    assert proc.returncode == 2 and "is not a sollol-ops checkout" in proc.stderr


INVENTORY = """\
[coord_hosts]
c1 ansible_connection=local ansible_python_interpreter={python}
[gpu_workers]
w1 ansible_connection=local ansible_python_interpreter={python} sollol_rpc_address=127.0.0.1
"""


@pytest.mark.slow
def test_installed_wheel_provisions_without_a_checkout(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", venv], cwd=tmp_path).returncode == 0
    pip = _run([venv / "bin/pip", "install", "-q", wheel], cwd=tmp_path)
    assert pip.returncode == 0, pip.stderr
    python = venv / "bin/python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path)
    packaged = Path(purelib.stdout.strip()) / "sollol_ops/ansible/playbooks/site.yml"
    work = tmp_path / "work"
    work.mkdir()
    inventory = work / "inventory.ini"
    inventory.write_text(INVENTORY.format(python=python))
    sollol = [
        venv / "bin/sollol-ops",
        "-i",
        inventory,
        "--rpc-group",
        "gpu_workers",
        "--coordinator-group",
        "coord_hosts",
    ]

    syntax = _run([*sollol, "provision", "--syntax-check"], cwd=work)
    assert syntax.returncode == 0, syntax.stderr
    assert f"playbook: {packaged}" in syntax.stdout

    hosts = _run([*sollol, "provision", "--list-hosts"], cwd=work)
    assert hosts.returncode == 0, hosts.stderr
    assert re.search(r"play #3 \(gpu_workers\): Run the rpc-servers.*\n.*\n.*hosts \(1\):\n\s+w1\n", hosts.stdout)

    # A real run of the packaged roles (check mode, tasks tagged always: preflight and argument validation).
    run = _run([*sollol, "provision", "--check", "--tags", "always"], cwd=work, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"provision: {packaged} on {inventory} (check mode)" in run.stderr
    assert "TASK Check the firewall settings" in run.stderr
    assert str(REPO) not in run.stdout + run.stderr + hosts.stdout + syntax.stdout

    # No checkout to build the coordinator's wheel from: the role says what to set, in one line.
    coord = _run([*sollol, "provision", "--check", "--tags", "coordinator_install"], cwd=work, timeout=300)
    assert coord.returncode == 10
    assert "coordinator_wheel is not set" in coord.stderr and "--coordinator-wheel" in coord.stderr


ROLE_PLAY = """\
- name: Install sollol-ops on the coordinator
  hosts: coordinator
  gather_facts: false
  roles:
    - role: coordinator
      coordinator_install_llama_cpp: false
"""


def _recap(stdout: str) -> dict[str, int]:
    m = re.search(r"^localhost\s+:\s+(.*)$", stdout, re.M)
    assert m, stdout
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


@pytest.mark.slow
def test_coordinator_role_installs_a_wheel_idempotently(tmp_path: Path) -> None:
    """The role on this machine (local connection) with every path it writes in tmp_path."""
    (tmp_path / "play.yml").write_text(ROLE_PLAY)
    (tmp_path / "inventory.ini").write_text(
        f"[coordinator]\nlocalhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
    )
    paths = {
        "coordinator_venv": tmp_path / "venv",
        "coordinator_wheelhouse": tmp_path / "controller-cache",
        "coordinator__remote_wheelhouse": tmp_path / "coordinator-wheelhouse",
        "coordinator_cli_link": tmp_path / "bin/sollol-ops",
    }
    (tmp_path / "bin").mkdir()
    playbook = Path(sys.executable).parent / "ansible-playbook"

    def role(*extra: str, check: bool = False) -> dict[str, int]:
        argv = [playbook, "-i", tmp_path / "inventory.ini", tmp_path / "play.yml", "--tags", "coordinator_install"]
        argv += [a for k, v in paths.items() for a in ("-e", f"{k}={v}")]
        argv += [a for e in extra for a in ("-e", e)] + (["--check"] if check else [])
        proc = _run(argv, cwd=tmp_path, ANSIBLE_ROLES_PATH=str(REPO / "roles"), ANSIBLE_NOCOLOR="1")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
        return _recap(proc.stdout)

    # Default: a wheel built from the checkout the role belongs to. --check builds only in the controller's cache.
    assert role(check=True)["changed"] > 0
    assert not paths["coordinator_venv"].exists() and not paths["coordinator__remote_wheelhouse"].exists()
    assert role()["changed"] > 0
    version = _run([paths["coordinator_cli_link"], "--version"], cwd=tmp_path)
    assert version.returncode == 0 and __version__ in version.stdout
    assert role()["changed"] == 0

    # The same wheel given explicitly: same wheelhouse, nothing to do.
    (built,) = (paths["coordinator_wheelhouse"] / "wheels").glob("src-*/sollol_ops-*.whl")
    assert role(f"coordinator_wheel={built}")["changed"] == 0


@pytest.mark.slow
def test_coordinator_role_without_wheel_or_checkout(tmp_path: Path) -> None:
    (tmp_path / "play.yml").write_text(ROLE_PLAY)
    (tmp_path / "inventory.ini").write_text(
        f"[coordinator]\nlocalhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
    )
    playbook = Path(sys.executable).parent / "ansible-playbook"
    base = [playbook, "-i", tmp_path / "inventory.ini", tmp_path / "play.yml", "--tags", "coordinator_install"]
    base += ["-e", f"coordinator_venv={tmp_path / 'venv'}", "-e", f"coordinator_wheelhouse={tmp_path / 'cache'}"]
    env = {"ANSIBLE_ROLES_PATH": str(REPO / "roles"), "ANSIBLE_NOCOLOR": "1"}

    no_checkout = _run([*base, "-e", f"coordinator_source={tmp_path}"], cwd=tmp_path, **env)
    assert no_checkout.returncode == 2
    assert f"coordinator_wheel is not set and {tmp_path} is no sollol-ops checkout" in no_checkout.stdout

    not_a_wheel = tmp_path / "sollol_ops.tar.gz"
    not_a_wheel.write_text("x")
    bad = _run([*base, "-e", f"coordinator_wheel={not_a_wheel}"], cwd=tmp_path, **env)
    assert bad.returncode == 2
    assert f"coordinator_wheel '{not_a_wheel}' is not a sollol-ops wheel" in bad.stdout
    assert not (tmp_path / "venv").exists()


WHEELHOUSE = REPO / "roles/coordinator/files/wheelhouse.sh"


@pytest.mark.slow
def test_wheelhouse_holds_wheels_for_the_coordinators_python(wheel: Path, tmp_path: Path) -> None:
    """A coordinator whose Python is not the controller's (Debian 13's 3.13 from a Debian 12 controller) gets a
    wheelhouse of its own tags: before the fix it held the controller's cp311 wheels, which pip on 3.13 refuses."""
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    target = "3.13" if here != "3.13" else "3.12"
    tag = "cp" + target.replace(".", "")
    done = _run(["bash", WHEELHOUSE, wheel, tmp_path, sys.executable, target, "x86_64", "2.41"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    key, state = done.stdout.split()[-2:]
    assert state == "built" and key.endswith(f"-{tag}-x86_64-2.41")
    with tarfile.open(tmp_path / f"{key}.tar") as tar:
        names = [Path(n).name for n in tar.getnames() if n.endswith(".whl")]
    compiled = [n for n in names if re.search(r"-cp3\d+-", n)]
    assert any(n.startswith("sollol_ops-") for n in names)
    assert any(n.lower().startswith("pyyaml-") for n in compiled), names
    # Each compiled wheel is the target's own ABI or the stable ABI (cryptography's cp311-abi3 runs on 3.11+).
    assert all(f"-{tag}-{tag}-" in n or "-abi3-" in n for n in compiled), compiled
    again = _run(["bash", WHEELHOUSE, wheel, tmp_path, sys.executable, target, "x86_64", "2.41"], cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.split()[-2:] == [key, "cached"]


@pytest.mark.parametrize("target", [["3.13", "x86_64", "x"], ["three", "x86_64", "2.41"], ["3.13", "x/86", "2.41"]])
def test_wheelhouse_refuses_a_malformed_target(wheel: Path, tmp_path: Path, target: list[str]) -> None:
    done = _run(["bash", WHEELHOUSE, wheel, tmp_path, sys.executable, *target], cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "is not 'PYTHON_VERSION MACHINE GLIBC'" in done.stderr
    assert not list(tmp_path.glob("*.tar"))
