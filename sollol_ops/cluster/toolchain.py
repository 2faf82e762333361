"""Find the llama.cpp binaries: env override, then the llama_cpp role's install prefixes, then PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sollol_ops.cluster.facts import LLAMA_PREFIX, RPC_SERVER_NAMES
from sollol_ops.errors import ToolchainError

ENV_BIN_DIR = "SOLLOL_LLAMA_BIN"


def default_prefixes(env: Mapping[str, str] | None = None) -> list[Path]:
    """Where roles/llama_cpp installs: `make llama` (per user) and the cluster default (/opt)."""
    env = os.environ if env is None else env
    data_home = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME", str(Path.home()))) / ".local/share")
    return [Path(data_home) / "sollol-ops/llama.cpp", Path(LLAMA_PREFIX)]


def _candidate_dirs(env: Mapping[str, str]) -> list[tuple[str, Path]]:
    dirs: list[tuple[str, Path]] = []
    if env.get(ENV_BIN_DIR):
        dirs.append((f"${ENV_BIN_DIR}", Path(env[ENV_BIN_DIR])))
    dirs += [("llama_cpp role", p / "current" / "bin") for p in default_prefixes(env)]
    return dirs


def find_binary(names: str | Sequence[str], env: Mapping[str, str] | None = None) -> Path:
    """The first executable among `names` in: $SOLLOL_LLAMA_BIN, the role prefixes, PATH."""
    env = os.environ if env is None else env
    wanted = (names,) if isinstance(names, str) else tuple(names)
    searched: list[str] = []
    explicit = env.get(ENV_BIN_DIR)
    for label, directory in _candidate_dirs(env):
        searched.append(str(directory))
        for name in wanted:
            candidate = directory / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
        if explicit and label.startswith("$"):
            raise ToolchainError(f"{wanted[0]} not found in ${ENV_BIN_DIR}={explicit}; fix the variable or unset it")
    for name in wanted:
        found = shutil.which(name, path=env.get("PATH", os.defpath))
        if found:
            return Path(found)
    searched.append("$PATH")
    raise ToolchainError(
        f"{' / '.join(wanted)} not found (searched: {', '.join(searched)}); run `make llama` "
        f"or set {ENV_BIN_DIR} to a llama.cpp bin directory"
    )


@dataclass(frozen=True)
class Toolchain:
    rpc_server: Path
    llama_server: Path
    llama_bench: Path | None

    @property
    def bin_dir(self) -> Path:
        return self.llama_server.parent

    def version(self) -> str:
        """`llama-server --version`'s first line, e.g. `version: 0 (0c1e57098-abcdef012345)`."""
        try:
            proc = subprocess.run(
                [str(self.llama_server), "--version"], capture_output=True, text=True, timeout=30, check=False
            )
        except OSError as exc:
            raise ToolchainError(f"cannot run {self.llama_server}: {exc.strerror}") from exc
        for line in (proc.stdout + proc.stderr).splitlines():
            if line.startswith("version:"):
                return line.strip()
        raise ToolchainError(f"{self.llama_server} --version printed no version (exit {proc.returncode})")


def find_toolchain(env: Mapping[str, str] | None = None, need_bench: bool = False) -> Toolchain:
    rpc = find_binary(RPC_SERVER_NAMES, env)
    server = find_binary("llama-server", env)
    try:
        bench: Path | None = find_binary("llama-bench", env)
    except ToolchainError:
        if need_bench:
            raise
        bench = None
    return Toolchain(rpc_server=rpc, llama_server=server, llama_bench=bench)
