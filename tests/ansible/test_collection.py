"""The roles and playbooks build as the sollol.ops collection, and its site playbook runs by its collection name."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from helpers import REPO

from sollol_ops import __version__

_spec = importlib.util.spec_from_file_location("build_collection", REPO / "scripts/build_collection.py")
assert _spec is not None and _spec.loader is not None
build_collection = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_collection)

_FOREIGN = ("PYTHONPATH", "ANSIBLE_CONFIG", "ANSIBLE_ROLES_PATH", "ANSIBLE_COLLECTIONS_PATH")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The collection built by scripts/build_collection.py and installed with ansible-galaxy into tmp."""
    tmp = tmp_path_factory.mktemp("collection")
    tarball = build_collection.build(tmp / "dist")
    assert tarball.name == f"sollol-ops-{__version__}.tar.gz"
    galaxy = Path(sys.executable).parent / "ansible-galaxy"
    proc = subprocess.run(
        [str(galaxy), "collection", "install", str(tarball), "-p", str(tmp / "collections")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return tmp / "collections"


def test_collection_holds_roles_and_playbooks_only(tmp_path: Path) -> None:
    tarball = build_collection.build(tmp_path)
    with tarfile.open(tarball) as tf:
        names = {n for n in tf.getnames() if not n.endswith("/")}
    top = {n.split("/")[0] for n in names}
    assert top == {"MANIFEST.json", "FILES.json", "README.md", "CHANGELOG.md", "meta", "roles", "playbooks"}
    for role in ("llama_cpp", "rpc_server", "coordinator", "sollol_cluster"):
        assert f"roles/{role}/meta/main.yml" in names
    assert {n for n in names if n.startswith("playbooks/")} == {
        f"playbooks/{p.name}" for p in (REPO / "playbooks").glob("*.yml")
    }


def _playbook(collections: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    empty = cwd / "no-roles"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN}
    # Only the installed collection: no roles path into the checkout, no ansible.cfg from it (cwd is tmp).
    env |= {"ANSIBLE_COLLECTIONS_PATH": str(collections), "ANSIBLE_ROLES_PATH": str(empty), "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_collection_site_playbook_syntax(installed: Path, tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[coordinator]\nc1 ansible_connection=local\n[rpc_servers]\nw1 ansible_connection=local\n")
    for name in ("site", "build", "upgrade", "reset"):
        proc = _playbook(installed, tmp_path, "-i", str(inventory), f"sollol.ops.{name}", "--syntax-check")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"ansible_collections/sollol/ops/playbooks/{name}.yml" in proc.stdout
    # Without the collection on the path the name means nothing: the check above could fail.
    missing = _playbook(tmp_path / "elsewhere", tmp_path, "-i", str(inventory), "sollol.ops.site", "--syntax-check")
    assert missing.returncode != 0


@pytest.mark.slow
def test_collection_site_playbook_runs_its_roles(installed: Path, tmp_path: Path) -> None:
    """Check mode, tasks tagged always: the preflight includes sollol.ops.rpc_server, every role validates its args."""
    inventory = tmp_path / "inventory.ini"
    python = sys.executable
    inventory.write_text(
        f"[coordinator]\nc1 ansible_connection=local ansible_python_interpreter={python}\n"
        f"[rpc_servers]\nw1 ansible_connection=local ansible_python_interpreter={python} sollol_rpc_address=127.0.0.1\n"
    )
    proc = _playbook(installed, tmp_path, "-i", str(inventory), "sollol.ops.site", "--check", "--tags", "always")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert "TASK [sollol.ops.rpc_server : Check the firewall settings]" in proc.stdout
    assert "TASK [sollol.ops.coordinator : Validating arguments" in proc.stdout
