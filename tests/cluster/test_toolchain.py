"""The llama.cpp toolchain built by roles/llama_cpp (`make llama`): real binaries, found and runnable."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from helpers import assert_clean_failure, run_cli

from sollol_ops.cluster.toolchain import RPC_SERVER_NAMES, find_binary, find_toolchain
from sollol_ops.errors import ToolchainError


@pytest.mark.toolchain
def test_real_rpc_server_help_runs() -> None:
    tc = find_toolchain()
    assert tc.rpc_server.name in RPC_SERVER_NAMES
    proc = subprocess.run([str(tc.rpc_server), "--help"], capture_output=True, text=True, timeout=30)
    text = proc.stdout + proc.stderr
    assert "--port" in text and "--host" in text, text


@pytest.mark.toolchain
def test_real_llama_server_version_is_stamped_with_the_build_id() -> None:
    tc = find_toolchain()
    version = tc.version()
    # commit stamp is "<pinned ref>-<build id>" (roles/llama_cpp)
    assert "0c1e57098-" in version, version
    build_id = os.path.basename(os.path.realpath(tc.bin_dir.parent))
    assert build_id in version


@pytest.mark.toolchain
def test_both_rpc_server_names_are_installed() -> None:
    tc = find_toolchain()
    for name in RPC_SERVER_NAMES:
        assert (tc.bin_dir / name).exists(), name


def _fake_bin(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\necho fake\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_env_override_wins_and_old_rpc_name_is_accepted(tmp_path: Path) -> None:
    old = _fake_bin(tmp_path / "bin", "rpc-server")
    env = {"SOLLOL_LLAMA_BIN": str(tmp_path / "bin"), "HOME": str(tmp_path), "PATH": ""}
    assert find_binary(RPC_SERVER_NAMES, env) == old


def test_env_override_pointing_nowhere_is_an_error(tmp_path: Path) -> None:
    env = {"SOLLOL_LLAMA_BIN": str(tmp_path / "nope"), "HOME": str(tmp_path), "PATH": ""}
    with pytest.raises(ToolchainError, match="SOLLOL_LLAMA_BIN"):
        find_binary("llama-server", env)


def test_role_prefix_then_path(tmp_path: Path) -> None:
    role_bin = tmp_path / "data/sollol-ops/llama.cpp/current/bin"
    in_prefix = _fake_bin(role_bin, "llama-server")
    on_path = _fake_bin(tmp_path / "path", "llama-server")
    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "HOME": str(tmp_path), "PATH": str(tmp_path / "path")}
    assert find_binary("llama-server", env) == in_prefix
    in_prefix.unlink()
    assert find_binary("llama-server", env) == on_path


def test_missing_toolchain_is_one_clear_line(tmp_path: Path) -> None:
    proc = run_cli(
        "toolchain", env={"SOLLOL_LLAMA_BIN": "", "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path), "PATH": ""}
    )
    # /opt/sollol-ops may exist on a provisioned machine; only assert the failure shape when it does not
    if not Path("/opt/sollol-ops/llama.cpp/current/bin/llama-server").exists():
        assert_clean_failure(proc, "make llama")
        assert proc.returncode == 9


def test_cli_version_and_help() -> None:
    from sollol_ops import __version__

    proc = run_cli("--version")
    assert proc.returncode == 0 and __version__ in proc.stdout
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("up", "down", "status", "logs", "backends", "rpc-list", "models", "resolve", "local", "toolchain"):
        assert command in proc.stdout, command
