"""roles/llama_cpp through real ansible-playbook runs: idempotence, and bad input that must not touch
the previous install."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from helpers import REPO

BIN = Path(sys.executable).parent


def _playbook(extra_vars: dict, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    base = {"llama_cpp_hosts": "all", "ansible_python_interpreter": sys.executable}
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "playbooks/build.yml",
         "-e", json.dumps({**base, **extra_vars})],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def _recap(output: str) -> dict[str, int]:
    m = re.search(r"localhost\s+: (.*)", output.split("PLAY RECAP")[-1])
    assert m, output[-2000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


def test_second_make_llama_changes_nothing_and_compiles_nothing() -> None:
    """`make llama` already ran (make test depends on it): running it again must be a no-op."""
    proc = subprocess.run(["make", "-s", "llama"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    recap = _recap(proc.stdout)
    assert recap["changed"] == 0 and recap["failed"] == 0, recap
    compile_block = proc.stdout.split("TASK [llama_cpp : Compile (log in build.log)]")[1].split("TASK [")[0]
    assert "skipping" in compile_block and "changed" not in compile_block


@pytest.fixture
def previous_install(tmp_path: Path) -> Path:
    """A prefix holding an earlier build with `current` pointing at it."""
    prefix = tmp_path / "prefix"
    (prefix / "oldbuild/bin").mkdir(parents=True)
    (prefix / "oldbuild/BUILD-INFO.json").write_text("{}")
    (prefix / "current").symlink_to("oldbuild")
    return prefix


def _snapshot(prefix: Path) -> list[tuple[str, str]]:
    return sorted((str(p.relative_to(prefix)), os.readlink(p) if p.is_symlink() else "") for p in prefix.rglob("*"))


def _isolated_vars(tmp_path: Path, prefix: Path, **extra: object) -> dict:
    return {
        "llama_cpp_prefix": str(prefix),
        "llama_cpp_build_root": str(tmp_path / "build"),
        "llama_cpp_artifact_cache": str(tmp_path / "artifacts"),
        "llama_cpp_install_build_deps": False,
        **extra,
    }


def test_unknown_backend_names_the_variable(tmp_path: Path, previous_install: Path) -> None:
    before = _snapshot(previous_install)
    proc = _playbook(_isolated_vars(tmp_path, previous_install, llama_cpp_backend="rocm"))
    assert proc.returncode != 0
    assert re.search(r"llama_cpp_backend must be one of: cpu, cuda, vulkan, hip, metal", proc.stdout), proc.stdout
    assert _snapshot(previous_install) == before


def test_missing_archive_names_the_variable(tmp_path: Path, previous_install: Path) -> None:
    before = _snapshot(previous_install)
    missing = tmp_path / "no-such-llama.tar.gz"
    proc = _playbook(
        _isolated_vars(tmp_path, previous_install, llama_cpp_source="archive", llama_cpp_archive=str(missing))
    )
    assert proc.returncode != 0
    assert f"llama_cpp_archive '{missing}' does not exist" in proc.stdout, proc.stdout[-2000:]
    assert _snapshot(previous_install) == before


def _broken_source(tmp_path: Path) -> Path:
    """A tiny cmake project shaped like llama.cpp whose ggml-rpc-server target does not compile."""
    top = tmp_path / "src/broken-llama"
    (top / "ggml/src/ggml-rpc").mkdir(parents=True)
    (top / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.14)\nproject(broken CXX)\n"
        "add_executable(ggml-rpc-server rpc.cpp)\nadd_executable(llama-server rpc.cpp)\n"
    )
    (top / "rpc.cpp").write_text("int main() { this is not C++; }\n")
    archive = tmp_path / "broken-llama.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(top, arcname="broken-llama")
    return archive


@pytest.mark.slow
def test_failed_compile_names_the_log_and_keeps_the_previous_install(tmp_path: Path, previous_install: Path) -> None:
    before = _snapshot(previous_install)
    archive = _broken_source(tmp_path)
    proc = _playbook(
        _isolated_vars(
            tmp_path, previous_install, llama_cpp_source="archive", llama_cpp_archive=str(archive),
            llama_cpp_targets=["ggml-rpc-server", "llama-server"],
        )
    )  # fmt: skip
    assert proc.returncode != 0
    m = re.search(r"llama.cpp build failed \(exit \d+\); see (\S+/build.log)", proc.stdout)
    assert m, proc.stdout[-3000:]
    assert "this is not C++" in Path(m.group(1)).read_text() or "error" in Path(m.group(1)).read_text()
    assert _snapshot(previous_install) == before
    assert os.readlink(previous_install / "current") == "oldbuild"
