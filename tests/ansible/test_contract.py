"""One definition of each shared fact (sollol_ops/cluster/facts.py), and a check that finds every copy that drifts.

test_contract_holds runs the check on this checkout; the mutation tests run it on a copy in tmp_path with one fact
changed in one place and assert the check names that place, so the check is shown to fail when it should.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from contract import check
from helpers import REPO

from sollol_ops.cli.context import Context
from sollol_ops.cli.gateway import gateway as gateway_cli
from sollol_ops.cli.main import cli
from sollol_ops.cluster import facts as cluster_vars
from sollol_ops.cluster import toolchain
from sollol_ops.gateway import server as gateway_server
from sollol_ops.gateway.ondemand import OnDemandSettings

_TREES = ["roles", "playbooks", "molecule", "sollol_ops", "collection"]
_FILES = ["site.yml", "Makefile", "inventory.example.ini"]


def _copy(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for tree in _TREES:
        if (REPO / tree).is_dir():
            shutil.copytree(REPO / tree, dest / tree, symlinks=True, ignore=ignore)
    for name in _FILES:
        shutil.copy2(REPO / name, dest / name)
    return dest


def test_contract_holds() -> None:
    assert check(REPO) == []


def test_python_side_names_cluster_vars() -> None:
    assert toolchain.RPC_SERVER_NAMES is cluster_vars.RPC_SERVER_NAMES
    assert str(toolchain.default_prefixes({"HOME": "/h"})[-1]) == cluster_vars.LLAMA_PREFIX
    params = {p.name: p.default for p in cli.params}
    assert params["rpc_group"] == Context(None).rpc_group == cluster_vars.RPC_GROUP
    assert params["coordinator_group"] == Context(None).coordinator_group == cluster_vars.COORDINATOR_GROUP


def test_gateway_defaults_name_cluster_vars() -> None:
    params = {p.name: p.default for p in gateway_cli.params}
    assert params["port"] == gateway_server.DEFAULT_PORT == cluster_vars.GATEWAY_PORT
    assert params["keep_alive"] == cluster_vars.GATEWAY_KEEP_ALIVE
    assert params["queue_size"] == OnDemandSettings().queue_size == cluster_vars.GATEWAY_QUEUE_SIZE
    api_key = next(p for p in gateway_cli.params if p.name == "api_key")
    assert api_key.envvar == gateway_server.ENV_API_KEY == cluster_vars.GATEWAY_API_KEY_ENV


def test_unmutated_copy_holds(tmp_path: Path) -> None:
    assert check(_copy(tmp_path)) == []


# (file, text, replacement, what the check must report): one fact changed in one place.
MUTATIONS = [
    ("Makefile", "LLAMA_REF := 0c1e57098", "LLAMA_REF := 0c1e57099", "Makefile: LLAMA_REF is '0c1e57099'"),
    (
        "molecule/user-scope/molecule.yml",
        "llama_cpp_version: 0c1e57098",
        "llama_cpp_version: 0c1e57099",
        "molecule/user-scope/molecule.yml: all: llama_cpp_version",
    ),
    (
        "roles/llama_cpp/defaults/main.yml",
        "llama_cpp_version: 0c1e57098",
        "llama_cpp_version: 0c1e57099",
        "roles/llama_cpp/defaults/main.yml: llama_cpp_version",
    ),
    (
        "roles/llama_cpp/meta/argument_specs.yml",
        "default: 0c1e57098",
        "default: 0c1e57099",
        "roles/llama_cpp/meta/argument_specs.yml: option llama_cpp_version",
    ),
    (
        "roles/sollol_cluster/defaults/main.yml",
        "sollol_rpc_port: 50052",
        "sollol_rpc_port: 50053",
        "roles/sollol_cluster/defaults/main.yml: sollol_rpc_port is 50053",
    ),
    (
        "roles/rpc_server/meta/argument_specs.yml",
        "default: 50052",
        "default: 50053",
        "roles/rpc_server/meta/argument_specs.yml: option sollol_rpc_port",
    ),
    (
        "roles/sollol_cluster/meta/argument_specs.yml",
        "default: coordinator",
        "default: coordinators",
        "roles/sollol_cluster/meta/argument_specs.yml: option sollol_coordinator_group",
    ),
    (
        "roles/llama_cpp/meta/argument_specs.yml",
        "default: [ggml-rpc-server, llama-server, llama-bench]",
        "default: [ggml-rpc-server, llama-server]",
        "option llama_cpp_targets default",
    ),
    (
        "playbooks/site.yml",
        "default('rpc_servers')",
        "default('workers')",
        "playbooks/site.yml: sollol_rpc_group | default('workers')",
    ),
    (
        "playbooks/reset.yml",
        "\"{{ sollol_coordinator_group | default('coordinator') }}\"",
        "coordinator",
        "playbooks/reset.yml: play 'Remove the coordinator services and venv' has hosts 'coordinator'",
    ),
    (
        "playbooks/site.yml",
        "groups[sollol_rpc_group]",
        "groups['rpc_servers']",
        "playbooks/site.yml: groups['rpc_servers'] hard-codes a group",
    ),
    (
        "playbooks/reset.yml",
        "default('/opt/sollol-ops/llama.cpp')",
        "default('/opt/llama.cpp')",
        "playbooks/reset.yml: llama_cpp_prefix | default('/opt/llama.cpp')",
    ),
    (
        "roles/llama_cpp/defaults/main.yml",
        "llama_cpp_prefix: /opt/sollol-ops/llama.cpp",
        "llama_cpp_prefix: /opt/llama.cpp",
        "roles/llama_cpp/defaults/main.yml: llama_cpp_prefix",
    ),
    (
        "roles/rpc_server/defaults/main.yml",
        "rpc_server_binary: ggml-rpc-server",
        "rpc_server_binary: rpc-server",
        "roles/rpc_server/defaults/main.yml: rpc_server_binary",
    ),
    (
        "roles/llama_cpp/vars/main.yml",
        "llama_cpp__rpc_names: [ggml-rpc-server, rpc-server]",
        "llama_cpp__rpc_names: [ggml-rpc-server]",
        "roles/llama_cpp/vars/main.yml: llama_cpp__rpc_names",
    ),
    (
        "roles/coordinator/templates/inventory.yml.j2",
        "    coordinator:\n      hosts:",
        "    coordinators:\n      hosts:",
        "roles/coordinator/templates/inventory.yml.j2: writes groups",
    ),
    (
        "roles/coordinator/templates/inventory.yml.j2",
        "sollol_rpc_memory_mib | default(0)",
        "sollol_rpc_memory_mib | default(1024)",
        "an unset sollol_rpc_memory_mib is written as 1024",
    ),
    (
        "roles/coordinator/templates/inventory.yml.j2",
        "sollol_skip_unhealthy | default(false)",
        "sollol_skip_unhealthy | default(true)",
        "sollol_skip_unhealthy | default(true), cluster_vars says False",
    ),
    (
        "roles/coordinator/templates/inventory.yml.j2",
        "    sollol_skip_unhealthy: {{",
        "    sollol_skip_unhealthy_x: {{",
        "all.vars.sollol_skip_unhealthy is written as None, not False",
    ),
    (
        "sollol_ops/cluster/facts.py",
        '"sollol_skip_unhealthy": False,',
        '"sollol_skip_unhealthy": True,',
        "roles/sollol_cluster/defaults/main.yml: sollol_skip_unhealthy is False, cluster_vars says True",
    ),
    (
        "roles/coordinator/templates/inventory.yml.j2",
        "sollol_placement | default('speed')",
        "sollol_placement | default('memory')",
        "roles/coordinator/templates/inventory.yml.j2: sollol_placement | default('memory'), cluster_vars says 'speed'",
    ),
    (
        "roles/coordinator/templates/inventory.yml.j2",
        "sollol_ollama_port | default(11434)",
        "sollol_ollama_port | default(11435)",
        "a pool node's unset sollol_ollama_port is written as 11435, not 11434",
    ),
    (
        "roles/coordinator/templates/inventory.yml.j2",
        "sollol_gateway_default_num_predict | default(2048)",
        "sollol_gateway_default_num_predict | default(1024)",
        "all.vars.sollol_gateway_default_num_predict is written as 1024, not 2048",
    ),
    (
        "roles/coordinator/templates/inventory.yml.j2",
        "    ollama_nodes:\n",
        "    pool_nodes:\n",
        "the CLI reads ['coordinator', 'ollama_nodes', 'rpc_servers']",
    ),
    (
        "roles/coordinator/templates/inventory.yml.j2",
        "{% set gateway_part = not (coordinator__without_gateway | default(false)) %}",
        "{% set gateway_part = true %}",
        "the coordinator's part (coordinator__without_gateway) holds the gateway's",
    ),
    (
        "roles/sollol_cluster/defaults/main.yml",
        "sollol_placement: speed",
        "sollol_placement: memory",
        "roles/sollol_cluster/defaults/main.yml: sollol_placement is 'memory', cluster_vars says 'speed'",
    ),
    (
        "roles/coordinator/templates/inventory.yml.j2",
        "    sollol_placement: {{",
        "    sollol_placement_x: {{",
        "all.vars.sollol_placement is written as None, not 'speed'",
    ),
    (
        "roles/coordinator/templates/inventory.yml.j2",
        "sollol_coordinator_memory_mib: {{ sollol_coordinator_memory_mib | int }}",
        "sollol_coordinator_memory_mib: 512",
        "the coordinator's sollol_coordinator_memory_mib is written as 512, not 0",
    ),
    (
        "roles/coordinator/templates/inventory.yml.j2",
        "          sollol_coordinator_device: {{ sollol_coordinator_device | to_json }}\n",
        "",
        "the coordinator's sollol_coordinator_device is written as None, not 'CPU'",
    ),
    (
        "roles/sollol_cluster/defaults/main.yml",
        "sollol_coordinator_memory_mib: 0",
        "sollol_coordinator_memory_mib: 1024",
        "roles/sollol_cluster/defaults/main.yml: sollol_coordinator_memory_mib is 1024, cluster_vars says 0",
    ),
    (
        "roles/sollol_cluster/meta/argument_specs.yml",
        "default: CPU",
        "default: cpu",
        "roles/sollol_cluster/meta/argument_specs.yml: option sollol_coordinator_device default is 'cpu'",
    ),
    ("inventory.example.ini", "[rpc_servers]", "[workers]", "inventory.example.ini: no [rpc_servers] section"),
    (
        "inventory.example.ini",
        "llama_cpp_version=0c1e57098",
        "llama_cpp_version=0c1e57099",
        "inventory.example.ini: llama_cpp_version=0c1e57099",
    ),
    (
        "molecule/default/molecule.yml",
        "groups: [coordinator]",
        "groups: [coord]",
        "molecule/default/molecule.yml: group_vars for coordinator, but no platform in that group",
    ),
    (
        "sollol_ops/cluster/toolchain.py",
        "Path(LLAMA_PREFIX)]",
        'Path("/opt/sollol-ops/llama.cpp")]',
        "sollol_ops/cluster/toolchain.py:22: literal '/opt/sollol-ops/llama.cpp'",
    ),
    (
        "sollol_ops/cli/main.py",
        "default=RPC_GROUP,",
        'default="rpc_servers",',
        "sollol_ops/cli/main.py:",
    ),
    (
        "sollol_ops/cluster/inventory.py",
        "coordinator_group: str = cluster_vars.COORDINATOR_GROUP,",
        'coordinator_group: str = "coordinator",',
        "literal 'coordinator': use cluster_vars.COORDINATOR_GROUP",
    ),
    (
        "roles/rpc_server/vars/main.yml",
        "else [1, (rpc_server__cpu_count | int) // (rpc_server__instances | length)] | max",
        "else (rpc_server__cpu_count | int)",
        "rpc_server__default_threads gives 2 threads for 2 cores and 2 instance(s), cluster_vars.rpc_threads gives 1",
    ),
    (
        "roles/rpc_server/defaults/main.yml",
        "rpc_server_threads: 0",
        "rpc_server_threads: 2",
        "roles/rpc_server/defaults/main.yml: rpc_server_threads is 2, cluster_vars says 0",
    ),
    (
        "roles/coordinator/defaults/main.yml",
        "coordinator_gateway_port: 11435",
        "coordinator_gateway_port: 11434",
        "roles/coordinator/defaults/main.yml: coordinator_gateway_port is 11434, cluster_vars says 11435",
    ),
    (
        "roles/coordinator/meta/argument_specs.yml",
        "default: 5m",
        "default: 10m",
        "roles/coordinator/meta/argument_specs.yml: option coordinator_gateway_keep_alive default is '10m'",
    ),
    (
        "roles/coordinator/vars/main.yml",
        "coordinator__gateway_key_env: SOLLOL_GATEWAY_API_KEY",
        "coordinator__gateway_key_env: GATEWAY_API_KEY",
        "roles/coordinator/vars/main.yml: coordinator__gateway_key_env is 'GATEWAY_API_KEY'",
    ),
    (
        "sollol_ops/gateway/server.py",
        "DEFAULT_PORT = cluster_vars.GATEWAY_PORT",
        "DEFAULT_PORT = 11435",
        "sollol_ops/gateway/server.py:{line}: literal 11435: use cluster_vars.GATEWAY_PORT",
    ),
    ("collection/galaxy.yml", "version: 0.1.0", "version: 0.2.0", "collection/galaxy.yml: version '0.2.0'"),
    (
        "sollol_ops/cluster/facts.py",
        'LLAMA_REF = "0c1e57098"',
        'LLAMA_REF = "0c1e57099"',
        "Makefile: LLAMA_REF is '0c1e57098', cluster_vars says '0c1e57099'",
    ),
    (
        "sollol_ops/cluster/facts.py",
        '"sollol_rpc_memory_mib": 0,',
        '"sollol_rpc_memory_mib": 512,',
        "roles/sollol_cluster/defaults/main.yml: sollol_rpc_memory_mib is 0, cluster_vars says 512",
    ),
]


@pytest.mark.parametrize(("file", "old", "new", "reported"), MUTATIONS, ids=[f"{m[0]}:{m[2]}" for m in MUTATIONS])
def test_check_reports_drift(tmp_path: Path, file: str, old: str, new: str, reported: str) -> None:
    root = _copy(tmp_path)
    path = root / file
    text = path.read_text()
    assert old in text, f"mutation target {old!r} is gone from {file}: update the test"
    path.write_text(text.replace(old, new, 1))
    problems = check(root)
    line = text[: text.index(old)].count("\n") + 1  # `{line}`: where the mutation landed, whatever moves above it
    assert any(reported.replace("{line}", str(line)) in p for p in problems), problems


def test_the_unit_inventory_carries_the_whole_routing_picture(tmp_path: Path) -> None:
    """What roles/coordinator writes for the gateway's unit, read back as the gateway reads it (ansible-inventory):
    the pool with its variables, the mode and the pins, the drafts; the coordinator's part has none of the first."""
    from contract import template_env

    from sollol_ops.cluster.ansible_inventory import ansible_inventory_list
    from sollol_ops.cluster.inventory import cluster_from_inventory_data
    from sollol_ops.gateway.settings import PoolNode, gateway_settings_from_inventory_data

    template = (REPO / "roles/coordinator/templates/inventory.yml.j2").read_text()
    variables = {
        **cluster_vars.DEFAULTS,
        "ansible_managed": "managed",
        "inventory_hostname": "coord1",
        "groups": {"rpc_servers": ["worker1"], "ollama_nodes": ["gpu1", "box2"]},
        "hostvars": {
            "worker1": {"ansible_host": "10.0.0.2"},
            "gpu1": {"ansible_host": "10.0.0.7", "sollol_ollama_api": "openai", "sollol_ollama_port": 8081},
            "box2": {"sollol_ollama_memory_mib": 8192},
        },
        "sollol_gateway_mode": "hybrid",
        "sollol_gateway_pins": {"llama3.1:70b": "shard"},
        "sollol_draft_models": {"llama3.1:70b": "llama3.2:1b"},
    }
    path = tmp_path / "inventory.yml"
    path.write_text(template_env().from_string(template).render(**variables))
    data = ansible_inventory_list(path)
    settings = gateway_settings_from_inventory_data(data, path)
    assert settings.pool == [
        PoolNode("gpu1", "10.0.0.7", 8081, "openai", None),
        PoolNode("box2", "box2", 11434, "ollama", 8192),
    ]
    assert (settings.mode, settings.pins) == ("hybrid", {"llama3.1:70b": "shard"})
    cluster = cluster_from_inventory_data(data, path)
    assert cluster.draft_models == {"llama3.1:70b": "llama3.2:1b"}
    assert [b.endpoint for b in cluster.backends] == ["10.0.0.2:50052"]
    part = tmp_path / "coordinator.yml"
    part.write_text(template_env().from_string(template).render(**variables, coordinator__without_gateway=True))
    alone = gateway_settings_from_inventory_data(ansible_inventory_list(part), part)
    assert (alone.pool, alone.mode, alone.pins) == ([], None, {})
    assert cluster_from_inventory_data(ansible_inventory_list(part), part).draft_models == cluster.draft_models
