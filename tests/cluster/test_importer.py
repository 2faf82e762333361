"""`sollol-ops inventory import`: the original system's documented ~/.synapticllamas.json examples, its
older flag name, malformed files and unknown keys, each with its exact outcome; the written inventory
is read back through the real `ansible-inventory`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import assert_clean_failure, run_cli

# The examples of SynapticLlamas' own documentation (addresses from its docs; nothing is contacted).
SHARDING_ONLY = {
    "model_sharding_enabled": True,
    "task_distribution_enabled": False,
    "rpc_backends": [
        {"host": "10.9.66.154", "port": 50052},
        {"host": "10.9.66.48", "port": 50052},
        {"host": "10.9.66.45", "port": 50052},
        {"host": "10.9.66.90", "port": 50052},
    ],
}
WITH_COORDINATOR = {
    "model": "llama3.1:70b",
    "task_distribution_enabled": False,
    "model_sharding_enabled": True,
    "rpc_backends": [{"host": "10.9.66.154", "port": 50052}, {"host": "10.9.66.48", "port": 50052}],
    "coordinator_url": "http://127.0.0.1:18080",
}
OLDER_FLAG = {
    "mode": "distributed",
    "distributed_inference_enabled": True,
    "rpc_backends": [{"host": "192.168.1.10", "port": 50052}, {"host": "192.168.1.11", "port": 50052}],
    "model": "llama3.2",
    "collaborative_mode": False,
    "flockparser_enabled": False,
}


def _import(tmp_path: Path, config: object, *args: str, env: dict[str, str] | None = None):
    src = tmp_path / "synapticllamas.json"
    src.write_text(config if isinstance(config, str) else json.dumps(config))
    out = tmp_path / "inventory.ini"
    proc = run_cli("inventory", "import", str(src), "-o", str(out), *args, env={"OLLAMA_NODES": "", **(env or {})})
    return proc, out


def _backends(out: Path, group: str = "rpc_servers") -> list[dict]:
    proc = run_cli("-i", str(out), "--rpc-group", group, "backends", "--json", env={"SOLLOL_INVENTORY": ""})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["backends"]


def test_sharding_only(tmp_path: Path) -> None:
    proc, out = _import(tmp_path, SHARDING_ONLY)
    assert proc.returncode == 0, proc.stderr
    assert "mode shard, 4 rpc-server(s), 0 Ollama node(s)" in proc.stdout
    assert [b["endpoint"] for b in _backends(out)] == [f"{b['host']}:50052" for b in SHARDING_ONLY["rpc_backends"]]
    assert "sollol_gateway_mode=shard" in out.read_text()
    assert proc.stderr == ""


def test_task_distribution_only_takes_ollama_nodes_from_the_environment(tmp_path: Path) -> None:
    proc, out = _import(
        tmp_path, {"task_distribution_enabled": True}, env={"OLLAMA_NODES": "10.0.0.5:11434,http://gpu-box:11500"}
    )
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "sollol_gateway_mode=pool" in text
    assert "ollama-10-0-0-5 ansible_host=10.0.0.5 sollol_ollama_port=11434" in text
    assert "ollama-gpu-box ansible_host=gpu-box sollol_ollama_port=11500" in text


def test_hybrid_with_coordinator_url_noted(tmp_path: Path) -> None:
    config = {**WITH_COORDINATOR, "task_distribution_enabled": True, "ollama_nodes": ["10.9.66.154:11434"]}
    proc, out = _import(tmp_path, config)
    assert proc.returncode == 0, proc.stderr
    assert "sollol_gateway_mode=hybrid" in out.read_text()
    assert "note: coordinator_url not imported" in proc.stderr
    assert "note: model not imported" in proc.stderr
    assert len(_backends(out)) == 2


def test_older_flag_name_is_accepted(tmp_path: Path) -> None:
    proc, out = _import(tmp_path, OLDER_FLAG)
    assert proc.returncode == 0, proc.stderr
    # task_distribution_enabled defaults to true in the original system: both on = hybrid
    assert "sollol_gateway_mode=hybrid" in out.read_text()
    assert "distributed_inference_enabled read as model_sharding_enabled" in proc.stderr
    assert "unknown keys ignored: collaborative_mode, flockparser_enabled" in proc.stderr
    assert len(_backends(out)) == 2


def test_two_ports_on_one_host_become_instances(tmp_path: Path) -> None:
    config = {"model_sharding_enabled": True, "task_distribution_enabled": False}
    config["rpc_backends"] = [{"host": "10.0.0.1", "port": 50052}, {"host": "10.0.0.1", "port": 50053}]
    proc, out = _import(tmp_path, config)
    assert proc.returncode == 0, proc.stderr
    assert [b["endpoint"] for b in _backends(out)] == ["10.0.0.1:50052", "10.0.0.1:50053"]


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ({"model_sharding_enabled": "yes"}, "model_sharding_enabled must be true or false"),
        ({"model_sharding_enabled": False, "task_distribution_enabled": False}, "both false"),
        ({"model_sharding_enabled": True, "rpc_backends": {"host": "a"}}, "rpc_backends must be a list"),
        ({"model_sharding_enabled": True, "rpc_backends": [{"port": 50052}]}, "rpc_backends[0]: host must be"),
        ({"model_sharding_enabled": True, "rpc_backends": [{"host": "a", "port": 70000}]}, "port must be 1..65535"),
        ({"model_sharding_enabled": True, "rpc_backends": [{"host": "x" * 70}]}, "label of 70 characters"),
    ],
)
def test_malformed_files_fail_in_one_line_and_write_nothing(tmp_path: Path, config: object, needle: str) -> None:
    proc, out = _import(tmp_path, config)
    err = assert_clean_failure(proc, needle)
    assert proc.returncode == 3, err
    assert not out.exists()


def test_an_existing_inventory_is_kept_without_force(tmp_path: Path) -> None:
    out = tmp_path / "inventory.ini"
    out.write_text("# mine\n")
    proc, _ = _import(tmp_path, SHARDING_ONLY)
    assert_clean_failure(proc, "exists; pass --force")
    assert proc.returncode == 2
    assert out.read_text() == "# mine\n"
    proc, _ = _import(tmp_path, SHARDING_ONLY, "--force")
    assert proc.returncode == 0, proc.stderr
    assert "[rpc_servers]" in out.read_text()


def test_a_fifo_or_missing_source_fails_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    proc = run_cli("inventory", "import", str(fifo), "-o", str(tmp_path / "o.ini"), timeout=20)
    assert_clean_failure(proc, "not a regular file")
    proc = run_cli("inventory", "import", str(tmp_path / "none.json"), "-o", str(tmp_path / "o.ini"))
    assert_clean_failure(proc, "no such file")
