"""`sollol-ops stage` end to end on loopback: real rpc-servers with -c and their own cache directories, a real
llama-server load through a counting relay, answers compared token by token."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import assert_clean_failure, run_cli
from ports import free_port
from stagingparts import MODEL, Relay, Worker, answer, inventory, start_workers, stop_workers, synthetic_store

from sollol_ops.serve.coordinator import CoordinatorState

pytestmark = [pytest.mark.toolchain, pytest.mark.model, pytest.mark.slow]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, smollm2_store: Path) -> Path:
    from sollol_ops.model.ollama import resolve_model

    tokenizer = resolve_model("smollm2:135m", smollm2_store).blob
    return synthetic_store(tmp_path_factory.mktemp("staging-model"), tokenizer)


@pytest.fixture
def env(sollol_env: dict[str, str], store: Path) -> dict[str, str]:
    return {**sollol_env, "OLLAMA_MODELS": str(store)}


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[Worker]]:
    started = start_workers(tmp_path, 2)
    yield started
    stop_workers(started)


@pytest.fixture
def relays(workers: list[Worker]) -> Iterator[list[Relay]]:
    out = [Relay(w.endpoint).start() for w in workers]
    yield out
    for r in out:
        r.close()


def _load(env: dict[str, str], inv: str) -> list[int]:
    """`up` (through the relays), the greedy answer, `down`."""
    port = free_port()
    proc = run_cli("-i", inv, "up", MODEL, "--port", str(port), "-c", "1024", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    try:
        state = CoordinatorState(
            **json.loads((Path(env["XDG_STATE_HOME"]) / "sollol-ops/coordinator.json").read_text())
        )
        return answer(state.endpoint)
    finally:
        assert run_cli("down", env=env).returncode == 0


def _files(workers: list[Worker]) -> list[dict[str, int]]:
    return [w.files() for w in workers]


def test_stage_then_first_load_sends_hashes_and_answers_the_same(
    env: dict[str, str], workers: list[Worker], relays: list[Relay], tmp_path: Path
) -> None:
    direct = inventory(tmp_path / "direct.ini", [w.endpoint for w in workers])
    relayed = inventory(tmp_path / "relayed.ini", [r.endpoint for r in relays])

    # Unstaged first load: every tensor crosses the link; the servers cache what the loader sent.
    unstaged_answer = _load(env, relayed)
    unstaged_bytes = sum(r.reset() for r in relays)
    loaded = _files(workers)
    assert all(loaded), f"the load put no file into some cache: {loaded}"
    for w in workers:
        for f in w.cache.iterdir():
            f.unlink()

    # Staging, worker-local (here: this host), then the first load.
    proc = run_cli("-i", direct, "stage", MODEL, "-c", "1024", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    staged = _files(workers)
    # The staged set is exactly what a real load asks for: same names (FNV-1a by rpc-server), same sizes.
    assert staged == loaded
    assert [sorted(f["file"] for f in s["files"]) for s in out["staged"]] == [sorted(s) for s in loaded]

    staged_answer = _load(env, relayed)
    staged_bytes = sum(r.reset() for r in relays)
    assert _files(workers) == staged, "the first load after staging created cache files: something was missed"
    assert staged_answer == unstaged_answer
    cached = sum(sum(s.values()) for s in staged)
    assert staged_bytes < unstaged_bytes - cached * 0.99, (staged_bytes, unstaged_bytes, cached)
    assert staged_bytes < 0.5 * unstaged_bytes

    # The ledger shows in status and models (--json).
    status = json.loads(run_cli("-i", direct, "status", "--json", env=env).stdout)
    assert {(s["model"], s["endpoint"]) for s in status["staged"]} == {(out["model"], w.endpoint) for w in workers}
    models = json.loads(run_cli("models", "--json", env=env).stdout)
    assert {s["endpoint"] for m in models if m["ref"] == out["model"] for s in m["staged"]} == {
        w.endpoint for w in workers
    }


def test_corrupt_staged_file_is_removed_by_verify_and_answer_unchanged(
    env: dict[str, str], workers: list[Worker], relays: list[Relay], tmp_path: Path
) -> None:
    direct = inventory(tmp_path / "direct.ini", [w.endpoint for w in workers])
    relayed = inventory(tmp_path / "relayed.ini", [r.endpoint for r in relays])
    assert run_cli("-i", direct, "stage", MODEL, "-c", "1024", env=env).returncode == 0
    reference = _load(env, relayed)

    victim = sorted(workers[0].cache.iterdir())[0]
    data = bytearray(victim.read_bytes())
    data[100:4196] = bytes(4096)  # the name still claims the old content: llama.cpp would load this unchecked
    victim.write_bytes(bytes(data))

    proc = run_cli("stage", "--verify", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    states = {r["file"]: r["state"] for r in json.loads(proc.stdout)["verify"]}
    assert states[victim.name] == "corrupt (removed)"
    assert sum(s == "ok" for s in states.values()) == len(states) - 1
    assert not victim.exists()
    assert _load(env, relayed) == reference


def test_prune_removes_only_unneeded_cache_files(env: dict[str, str], workers: list[Worker], tmp_path: Path) -> None:
    direct = inventory(tmp_path / "direct.ini", [w.endpoint for w in workers])
    assert run_cli("-i", direct, "stage", MODEL, "-c", "1024", env=env).returncode == 0
    staged = _files(workers)
    foreign = workers[1].cache / "0123456789abcdef"
    foreign.write_bytes(b"x" * 1000)
    keep = [workers[1].cache / "notes.txt", workers[1].cache / "0123456789ABCDEF", workers[1].cache / "abc"]
    for k in keep:
        k.write_bytes(b"mine")
    proc = run_cli("stage", "--prune", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert [r["file"] for r in json.loads(proc.stdout)["pruned"]] == [foreign.name]
    assert not foreign.exists() and all(k.exists() for k in keep)
    assert _files(workers) == staged


def test_stage_refuses_a_held_rpc_server(env: dict[str, str], workers: list[Worker], tmp_path: Path) -> None:
    direct = inventory(tmp_path / "direct.ini", [w.endpoint for w in workers])
    port = free_port()
    assert run_cli("-i", direct, "up", MODEL, "--port", str(port), "-c", "1024", env=env).returncode == 0
    try:
        proc = run_cli("-i", direct, "stage", MODEL, "-c", "1024", env=env)
        assert_clean_failure(proc, "busy", "stage before `up`")
        assert proc.returncode == 6
    finally:
        run_cli("down", env=env)


def test_stage_without_cache_is_one_line(env: dict[str, str], rpc_server: tuple[str, object], tmp_path: Path) -> None:
    endpoint, _ = rpc_server
    inv = inventory(tmp_path / "inv.ini", [endpoint])
    proc = run_cli("-i", inv, "stage", MODEL, "-c", "1024", env=env)
    assert_clean_failure(proc, "without -c")
    assert proc.returncode == 15


def test_stage_via_ansible_local_connection(
    env: dict[str, str], workers: list[Worker], relays: list[Relay], tmp_path: Path
) -> None:
    """playbooks/stage.yml with ansible_connection=local: packs copied, the client run per worker, results back."""
    inv = inventory(
        tmp_path / "ansible.ini",
        [w.endpoint for w in workers],
        f"ansible_connection=local ansible_python_interpreter={sys.executable} rpc_server_scope=user",
    )
    dirs = [f"--cache-dir={w.endpoint}={w.cache}" for w in workers]
    proc = run_cli("-i", inv, "stage", MODEL, "-c", "1024", "--via-ansible", "--json", *dirs, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    staged = _files(workers)
    assert all(staged)
    assert [sorted(f["file"] for f in s["files"]) for s in out["staged"]] == [sorted(s) for s in staged]
    status = json.loads(run_cli("-i", inv, "status", "--json", env=env).stdout)
    assert {s["where"] for s in status["staged"]} == {"ansible:w0", "ansible:w1"}

    relayed = inventory(tmp_path / "relayed.ini", [r.endpoint for r in relays])
    reference = _load(env, relayed)
    assert _files(workers) == staged, "the first load after staging through Ansible created cache files"

    # verify and prune reach workers staged through Ansible with the same playbook.
    victim = sorted(workers[1].cache.iterdir())[0]
    victim.write_bytes(bytes(victim.stat().st_size))
    foreign = workers[0].cache / "fedcba9876543210"
    foreign.write_bytes(b"y" * 100)
    proc = run_cli("-i", inv, "stage", "--verify", "--prune", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    states = {r["file"]: r["state"] for r in result["verify"]}
    assert states.pop(victim.name) == "corrupt (removed)" and set(states.values()) == {"ok"}
    assert [r["file"] for r in result["pruned"]] == [foreign.name]
    assert not victim.exists() and not foreign.exists()
    assert _load(env, relayed) == reference


def test_dry_run_plans_without_sending(env: dict[str, str], workers: list[Worker], tmp_path: Path) -> None:
    direct = inventory(tmp_path / "direct.ini", [w.endpoint for w in workers])
    proc = run_cli("-i", direct, "stage", MODEL, "-c", "1024", "--dry-run", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)["plan"]
    # 3 blocks + output over 2 equal servers: blocks 0-1 on the first, block 2 and the (tied) output on the second;
    # over 10 MiB: three FFN matrices per block, and token_embd as the output.
    assert [(p["endpoint"], p["layers"], p["output"], p["cached_tensors"]) for p in plan] == [
        (workers[0].endpoint, "0-1", False, 6),
        (workers[1].endpoint, "2-2", True, 4),
    ]
    assert _files(workers) == [{}, {}]
    assert not (Path(env["XDG_STATE_HOME"]) / "sollol-ops/staging.json").exists()


def test_bad_cache_dir_option_is_one_line(env: dict[str, str]) -> None:
    assert_clean_failure(run_cli("stage", MODEL, "--cache-dir", "nodir", env=env), "ENDPOINT=DIR")
    assert_clean_failure(run_cli("stage", env=env), "--verify")


def test_stage_playbook_follows_the_rpc_server_role_layout() -> None:
    """playbooks/stage.yml repeats two facts of roles/rpc_server (it cannot import the role's defaults without
    overriding the inventory): the system user and the unit's cache directory. They must agree."""
    import yaml
    from helpers import REPO

    defaults = yaml.safe_load((REPO / "roles/rpc_server/defaults/main.yml").read_text())
    unit = (REPO / "roles/rpc_server/templates/sollol-rpc-server.service.j2").read_text()
    play = (REPO / "playbooks/stage.yml").read_text()
    system_user = defaults["rpc_server_user"].split("'")[1]
    assert system_user == "sollol-rpc" and f"'{system_user}' if stage__scope == 'system'" in play
    assert "Environment=LLAMA_CACHE=%C/sollol-rpc{{ '/%i' if rpc_server__templated else '' }}" in unit
    # %C is /var/cache for system units and ~/.cache for user units; rpc-server appends /rpc.
    assert (
        "'/var/cache/sollol-rpc' if stage__scope == 'system' else ansible_facts['user_dir'] ~ '/.cache/sollol-rpc'"
        in play
    )
    assert "('/' ~ item.port if stage__templated else '') ~ '/rpc'" in play
