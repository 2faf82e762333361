"""sollol-ops's own state files: corrupt ones are set aside in one line, never crash or block a command;
a recorded pid is signalled only when proven ours; the start lock has one winner that the loser names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_cli

from sollol_ops import procs
from sollol_ops.cluster import local as local_cluster
from sollol_ops.serve import coordinator, statefile

GOOD_STATE = {
    "pid": 1,
    "start_time": 1,
    "host": "127.0.0.1",
    "port": 8080,
    "model": "smollm2:135m",
    "digest": "sha256:00",
    "blob": "/nonexistent",
    "backends": ["127.0.0.1:50052"],
    "command": ["/nonexistent/llama-server"],
    "started_at": 0.0,
    "log": "/nonexistent.log",
    "n_ctx": 4096,
    "kv_per_layer": 1,
}

CORRUPT: dict[str, bytes | None] = {
    "non-integer pid": json.dumps({**GOOD_STATE, "pid": "12x"}).encode(),
    "float pid": json.dumps({**GOOD_STATE, "pid": 12.5}).encode(),
    "negative pid": json.dumps({**GOOD_STATE, "pid": -1}).encode(),
    "pid zero": json.dumps({**GOOD_STATE, "pid": 0}).encode(),
    "boolean pid": json.dumps({**GOOD_STATE, "pid": True}).encode(),
    "missing field": json.dumps({k: v for k, v in GOOD_STATE.items() if k != "command"}).encode(),
    "empty command": json.dumps({**GOOD_STATE, "command": []}).encode(),
    "backends not a list": json.dumps({**GOOD_STATE, "backends": "a:1"}).encode(),
    "a list": b"[1, 2, 3]",
    "null": b"null",
    "not json": b"{pid: 12",
    "binary": bytes(range(256)) * 4,
    "empty": b"",
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "too large": b" " * (statefile.MAX_STATE_BYTES + 1),
    "fifo": None,
}


def _write_corrupt(path: Path, content: bytes | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if content is None:
        os.mkfifo(path)
    else:
        path.write_bytes(content)


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_coordinator_state_is_set_aside_in_one_line(tmp_path: Path, case: str) -> None:
    _write_corrupt(coordinator.Coordinator(tmp_path).state_path, CORRUPT[case])
    warnings: list[str] = []
    t0 = time.monotonic()
    assert coordinator.Coordinator(tmp_path).load(warn=warnings.append) is None
    assert time.monotonic() - t0 < 5
    assert len(warnings) == 1 and "set aside as coordinator.json.corrupt-" in warnings[0], warnings
    assert not coordinator.Coordinator(tmp_path).state_path.exists()
    assert len(list(tmp_path.glob("coordinator.json.corrupt-*"))) == 1
    # the next reader finds nothing and says nothing
    assert coordinator.Coordinator(tmp_path).load(warn=warnings.append) is None
    assert len(warnings) == 1


def test_a_symlink_as_state_file_is_set_aside_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps(GOOD_STATE))
    coordinator.Coordinator(tmp_path).state_path.symlink_to(target)
    warnings: list[str] = []
    assert coordinator.Coordinator(tmp_path).load(warn=warnings.append) is None
    assert len(warnings) == 1 and "symbolic link" in warnings[0]
    assert target.read_text() == json.dumps(GOOD_STATE)


@pytest.mark.model
@pytest.mark.parametrize("case", ["non-integer pid", "binary", "fifo", "deep nesting"])
def test_cli_commands_survive_a_corrupt_state_file(sollol_env: dict[str, str], case: str) -> None:
    state_file = Path(sollol_env["XDG_STATE_HOME"]) / "sollol-ops" / "coordinator.json"
    _write_corrupt(state_file, CORRUPT[case])
    for args in (["ask", "hello"], ["down"], ["logs"]):
        proc = run_cli(*args, env=sollol_env, timeout=30)
        assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
        assert proc.returncode in (0, 8), (args, proc.returncode, proc.stderr)
    # set aside exactly once, by the first command, with one warning line naming the file
    assert not state_file.exists()
    assert len(list(state_file.parent.glob("coordinator.json.corrupt-*"))) == 1


LOCAL_CORRUPT = {
    "servers not a list": {"host": "127.0.0.1", "servers": 3, "inventory": "x", "threads": 1, "cache": True},
    "server without pid": {
        "host": "127.0.0.1",
        "servers": [{"port": 1, "start_time": 1, "log": "x"}],
        "inventory": "x",
        "threads": 1,
        "cache": True,
    },
    "a string": "cluster",
}


@pytest.mark.model
@pytest.mark.parametrize("case", sorted(LOCAL_CORRUPT))
def test_a_local_cluster_file_of_the_wrong_shape_is_set_aside(sollol_env: dict[str, str], case: str) -> None:
    state_file = Path(sollol_env["XDG_STATE_HOME"]) / "sollol-ops" / "local" / "cluster.json"
    state_file.parent.mkdir(parents=True)
    state_file.write_text(json.dumps(LOCAL_CORRUPT[case]))
    proc = run_cli("local", "status", env=sollol_env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "no local cluster" in proc.stdout
    assert proc.stderr.count("\n") == 1 and "set aside" in proc.stderr, proc.stderr
    proc = run_cli("local", "stop", env=sollol_env, timeout=30)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "300"], start_new_session=True)


@pytest.mark.model
def test_down_never_signals_a_pid_it_cannot_prove_is_ours(sollol_env: dict[str, str]) -> None:
    """A state file naming a reused pid (no start time, or another start time or program) must not make
    `down` kill that unrelated process."""
    state_file = Path(sollol_env["XDG_STATE_HOME"]) / "sollol-ops" / "coordinator.json"
    state_file.parent.mkdir(parents=True)
    victim = _sleeper()
    try:
        real_start = procs.process_start_time(victim.pid)
        for start_time, argv0 in ((None, "sleep"), (real_start + 1, "sleep"), (real_start, "/opt/llama-server")):
            state = {**GOOD_STATE, "pid": victim.pid, "start_time": start_time, "command": [argv0]}
            state_file.write_text(json.dumps(state))
            proc = run_cli("down", "--timeout", "1", env=sollol_env, timeout=30)
            assert proc.returncode == 0, proc.stderr
            assert "no longer running" in proc.stdout, proc.stdout
            assert victim.poll() is None, f"down killed an unrelated process (start_time={start_time}, {argv0})"
            assert not state_file.exists()
    finally:
        victim.kill()
        victim.wait()


def test_stop_process_signals_a_proven_process(tmp_path: Path) -> None:
    """The positive control of the test above: the same call does stop the process it can prove."""
    proc = _sleeper()
    start = procs.process_start_time(proc.pid)
    assert procs.stop_process(proc.pid, start, timeout=2, argv0="sleep")
    assert not procs.is_alive(proc.pid, start)
    proc.wait(timeout=5)


def test_the_start_lock_has_one_winner_and_the_loser_names_it(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from sollol_ops.serve import coordinator\n"
            "with coordinator.Coordinator(Path(sys.argv[1])).lock('model:a'):\n"
            "    print('held', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(statefile.LockHeld) as err, coordinator.Coordinator(tmp_path).lock("model:b"):
            pass
        assert f"pid {holder.pid}" in str(err.value) and "sollol-ops up model:a" in str(err.value)
        holder.kill()  # the kernel releases the lock of a killed holder
        holder.wait()
        with coordinator.Coordinator(tmp_path).lock("model:b"):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_state_files_are_private(tmp_path: Path) -> None:
    os.umask(0o022)
    root = tmp_path / "state"
    statefile.write(root / "x.json", {"a": 1}, "x")
    assert (root / "x.json").stat().st_mode & 0o777 == 0o600
    assert root.stat().st_mode & 0o777 == 0o700
    with statefile.reserve(root / "y.json", {"a": 1}, "y") as slot:
        slot.commit({"a": 2})
    assert json.loads((root / "y.json").read_text()) == {"a": 2}
    assert (root / "y.json").stat().st_mode & 0o777 == 0o600
    assert not list(root.glob(".*.tmp"))


def test_local_cluster_state_round_trips(tmp_path: Path) -> None:
    cluster = local_cluster.LocalCluster(
        "127.0.0.1", [local_cluster.LocalServer(1, 2, 3, "l", "rpc")], "inv", 1, True, str(tmp_path)
    )
    statefile.write(tmp_path / "cluster.json", cluster, "c")
    assert local_cluster.load(tmp_path) == cluster
