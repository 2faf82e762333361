"""The inventory -> cluster model, over real layouts read by the real `ansible-inventory`.

Every layout is written into a tmp dir; nothing is mocked except, in the cache tests, a counter
around subprocess.run. XDG_CACHE_HOME always points into a tmp dir, so no test reads or writes the
user's cache. Inventories are shared per module where the cache makes repeated reads cheap
(`ansible-inventory` costs ~0.5 s a call).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, assert_clean_failure, run_cli, run_cli_bounded

from sollol_ops.cluster import ansible_inventory as inv
from sollol_ops.cluster.ansible_inventory import ansible_inventory_list, locate_inventory
from sollol_ops.cluster.inventory import Coordinator, load_cluster
from sollol_ops.errors import InventoryError

INVENTORY_EXIT = InventoryError.exit_code  # 3


# --------------------------------------------------------------------------- helpers


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and mtime: proves a command wrote nothing there."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.stat()
            result[str(path.relative_to(root))] = (st.st_size if path.is_file() else 0, st.st_mtime_ns)
    return result


def sollol(*args: str, cache: Path, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env={"XDG_CACHE_HOME": str(cache), **env}, cwd=cwd)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the user's inventory settings or cache (run_cli copies os.environ)."""
    for var in ("SOLLOL_INVENTORY", "ANSIBLE_CONFIG", "ANSIBLE_INVENTORY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


# --------------------------------------------------------------------------- one cluster, three layouts

# The same cluster in every layout: rpc_servers = children gpu (gpu2, gpu1 with two instances) then
# cpu (node1 on a custom port, node2 with sollol_rpc_address, node3 with neither ansible_host nor port).
# Hosts are deliberately not in alphabetical order: the order is the inventory's.
EXPECTED = [
    # host, endpoint, device, backend, memory_mib, weight, threads
    ("gpu2", "192.168.1.32:50052", None, "cuda", 24000, None, None),
    ("gpu1", "192.168.1.31:50052", "CUDA0", "cuda", 22000, 1.5, 8),
    ("gpu1", "192.168.1.31:50053", "CUDA1", "cuda", None, None, None),
    ("node1", "192.168.1.21:50060", None, "cpu", None, 0.5, None),
    ("node2", "10.0.0.22:50052", None, "cpu", 12000, 0.5, None),
    ("node3", "node3:50052", None, "cpu", None, 0.5, None),
]
EXPECTED_RPC_LIST = ",".join(e[1] for e in EXPECTED)
EXPECTED_COORDINATORS = [Coordinator("coord", "192.168.1.10")]

GPU1_INSTANCES_YAML = """
sollol_rpc_instances:
  - {port: 50052, device: CUDA0, memory_mib: 22000, weight: 1.5, threads: 8}
  - {port: 50053, device: CUDA1}
"""

LAYOUTS: dict[str, tuple[str, dict[str, str]]] = {
    # INI; group_vars as a file (cpu.yml) and as a per-group directory (gpu/); host_vars as a file
    # (gpu1.yml, holding the instances) and as a directory (node1/).
    "ini": (
        "inventory.ini",
        {
            "inventory.ini": """
                [coordinator]
                coord ansible_host=192.168.1.10

                [head]
                head1 ansible_host=192.168.1.11

                [cpu]
                node1 ansible_host=192.168.1.21
                node2 ansible_host=192.168.1.22 sollol_rpc_address=10.0.0.22 sollol_rpc_memory_mib=12000
                node3

                [gpu]
                gpu2 ansible_host=192.168.1.32
                gpu1 ansible_host=192.168.1.31

                [rpc_servers:children]
                gpu
                cpu
            """,
            "group_vars/cpu.yml": "sollol_rpc_weight: 0.5\n",
            "group_vars/gpu/backend.yml": "llama_cpp_backend: cuda\n",
            "group_vars/gpu/memory.yaml": "sollol_rpc_memory_mib: 24000\n",
            "host_vars/gpu1.yml": GPU1_INSTANCES_YAML,
            "host_vars/node1/rpc.yml": "sollol_rpc_port: 50060\n",
        },
    ),
    # YAML; the instances inline, group_vars file + directory.
    "yaml": (
        "hosts.yml",
        {
            "hosts.yml": """
                all:
                  children:
                    coordinator:
                      hosts:
                        coord: {ansible_host: 192.168.1.10}
                    rpc_servers:
                      children:
                        gpu:
                          hosts:
                            gpu2: {ansible_host: 192.168.1.32}
                            gpu1:
                              ansible_host: 192.168.1.31
                              sollol_rpc_instances:
                                - {port: 50052, device: CUDA0, memory_mib: 22000, weight: 1.5, threads: 8}
                                - {port: 50053, device: CUDA1}
                        cpu:
                          hosts:
                            node1: {ansible_host: 192.168.1.21, sollol_rpc_port: 50060}
                            node2:
                              ansible_host: 192.168.1.22
                              sollol_rpc_address: 10.0.0.22
                              sollol_rpc_memory_mib: 12000
                            node3:
            """,
            "group_vars/gpu.yml": "llama_cpp_backend: cuda\nsollol_rpc_memory_mib: 24000\n",
            "group_vars/cpu/weight.yml": "sollol_rpc_weight: 0.5\n",
        },
    ),
    # An inventory directory: two source files (sorted: coordinator first) plus group_vars/host_vars
    # inside it.
    "dir": (
        "inventory",
        {
            "inventory/00-coordinator.ini": "[coordinator]\ncoord ansible_host=192.168.1.10\n",
            "inventory/10-workers.yml": """
                rpc_servers:
                  children:
                    gpu:
                      hosts:
                        gpu2: {ansible_host: 192.168.1.32}
                        gpu1: {ansible_host: 192.168.1.31}
                    cpu:
                      hosts:
                        node1: {ansible_host: 192.168.1.21}
                        node2: {ansible_host: 192.168.1.22}
                        node3:
            """,
            "inventory/group_vars/gpu.yml": "llama_cpp_backend: cuda\nsollol_rpc_memory_mib: 24000\n",
            "inventory/group_vars/cpu.yml": "sollol_rpc_weight: 0.5\n",
            "inventory/host_vars/gpu1.yml": GPU1_INSTANCES_YAML,
            "inventory/host_vars/node1.yml": "sollol_rpc_port: 50060\n",
            "inventory/host_vars/node2/address.yml": "sollol_rpc_address: 10.0.0.22\n",
            "inventory/host_vars/node2/memory.yml": "sollol_rpc_memory_mib: 12000\n",
        },
    ),
}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tmp XDG cache for the tests over the shared layouts (each layout costs one ansible call)."""
    return tmp_path_factory.mktemp("shared-xdg-cache")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> dict[str, Path]:
    """name -> the inventory path to pass to -i; read once each (concurrently) to warm shared_cache."""
    result = {}
    for name, (entry, files) in LAYOUTS.items():
        root = write_tree(tmp_path_factory.mktemp(f"layout-{name}"), files)
        result[name] = root / entry
    with ThreadPoolExecutor(max_workers=len(result)) as pool:
        procs = list(pool.map(lambda p: sollol("-i", str(p), "rpc-list", cache=shared_cache), result.values()))
    for proc in procs:
        assert proc.returncode == 0, proc.stderr
    return result


def as_rows(backends: list[Any]) -> list[tuple[Any, ...]]:
    return [(b.host, b.endpoint, b.device, b.backend, b.memory_mib, b.weight, b.threads) for b in backends]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_load_cluster_reads_real_layouts(
    layout: str, layouts: dict[str, Path], shared_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared_cache))
    cluster = load_cluster(layouts[layout])
    assert as_rows(cluster.backends) == EXPECTED
    assert cluster.rpc_list() == EXPECTED_RPC_LIST
    assert cluster.coordinators == EXPECTED_COORDINATORS
    assert {"rpc_servers", "gpu", "cpu", "coordinator"} <= set(cluster.groups)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_cli_backends_json_and_rpc_list(layout: str, layouts: dict[str, Path], shared_cache: Path) -> None:
    path = layouts[layout]
    root = path if path.is_dir() else path.parent
    before = snapshot(root)

    proc = sollol("-i", str(path), "backends", "--json", cache=shared_cache)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["inventory"] == str(path)
    rows = [
        (b["host"], b["endpoint"], b["device"], b["backend"], b["memory_mib"], b["weight"], b["threads"])
        for b in out["backends"]
    ]
    assert rows == EXPECTED
    assert out["coordinators"] == [
        {"host": "coord", "address": "192.168.1.10", "memory_mib": 0, "device": "CPU", "local": False}
    ]
    gpu1 = [b for b in out["backends"] if b["host"] == "gpu1"]
    assert [(b["address"], b["port"]) for b in gpu1] == [("192.168.1.31", 50052), ("192.168.1.31", 50053)]

    proc = sollol("-i", str(path), "rpc-list", cache=shared_cache)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == EXPECTED_RPC_LIST + "\n"
    assert proc.stderr == ""
    assert snapshot(root) == before, "a read command wrote next to the inventory"


def test_cli_backends_table(layouts: dict[str, Path], shared_cache: Path) -> None:
    proc = sollol("-i", str(layouts["ini"]), "backends", cache=shared_cache)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["HOST", "ENDPOINT", "DEVICE", "BACKEND", "MEMORY", "CAP", "WEIGHT"]
    assert [ln.split()[:3] for ln in lines[2:8]] == [[h, e, d or "(all)"] for h, e, d, *_ in EXPECTED]
    assert "coordinator(s): coord (192.168.1.10)" in proc.stdout


def test_cli_group_overrides(layouts: dict[str, Path], shared_cache: Path) -> None:
    proc = sollol(
        "-i", str(layouts["ini"]), "--rpc-group", "gpu", "--coordinator-group", "head", "backends", "--json",
        cache=shared_cache,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [b["endpoint"] for b in out["backends"]] == [e[1] for e in EXPECTED if e[0].startswith("gpu")]
    assert out["coordinators"] == [
        {"host": "head1", "address": "192.168.1.11", "memory_mib": 0, "device": "CPU", "local": False}
    ]

    proc = sollol("-i", str(layouts["ini"]), "--rpc-group", "cpu", "rpc-list", cache=shared_cache)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "192.168.1.21:50060,10.0.0.22:50052,node3:50052"


def test_missing_coordinator_group_means_no_coordinators(
    layouts: dict[str, Path], shared_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared_cache))
    cluster = load_cluster(layouts["ini"], coordinator_group="nope")
    assert cluster.coordinators == []
    assert cluster.rpc_list() == EXPECTED_RPC_LIST


def test_default_port_and_address_rules(layouts: dict[str, Path], shared_cache: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared_cache))
    by_host = {b.host: b for b in load_cluster(layouts["ini"]).backends if b.device is None}
    assert by_host["gpu2"].port == 50052  # nothing set: the default port
    assert by_host["node2"].address == "10.0.0.22"  # sollol_rpc_address beats ansible_host
    assert by_host["node1"].address == "192.168.1.21"  # else ansible_host
    assert by_host["node3"].address == "node3"  # else the inventory hostname


# --------------------------------------------------------------------------- locating the inventory


@pytest.fixture
def nest(tmp_path: Path) -> dict[str, Path]:
    """proj/ansible.cfg -> inv/hosts.ini; proj/sub/deep/ is a cwd below it holding its own inventory.ini."""
    root = tmp_path / "proj"
    write_tree(
        root,
        {
            "ansible.cfg": "[defaults]\ninventory = inv/hosts.ini\nhost_key_checking = False\n",
            "inv/hosts.ini": "[rpc_servers]\ncfg-host\n",
            "sub/deep/inventory.ini": "[rpc_servers]\nlocal-host\n",
            "other.ini": "[rpc_servers]\nenv-host\n",
            "opt.ini": "[rpc_servers]\nopt-host\n",
        },
    )
    return {"root": root, "deep": root / "sub" / "deep"}


def test_locate_option_first(nest: dict[str, Path]) -> None:
    env = {"SOLLOL_INVENTORY": str(nest["root"] / "other.ini")}
    assert locate_inventory(str(nest["root"] / "opt.ini"), env=env, cwd=nest["deep"]) == nest["root"] / "opt.ini"


def test_locate_env_before_ansible_cfg(nest: dict[str, Path]) -> None:
    env = {"SOLLOL_INVENTORY": str(nest["root"] / "other.ini")}
    assert locate_inventory(None, env=env, cwd=nest["deep"]) == nest["root"] / "other.ini"


def test_locate_nearest_ansible_cfg_upward_before_local_inventory_ini(nest: dict[str, Path]) -> None:
    assert locate_inventory(None, env={}, cwd=nest["deep"]) == nest["root"] / "inv" / "hosts.ini"


def test_locate_nearest_ansible_cfg_wins_over_farther_one(nest: dict[str, Path]) -> None:
    write_tree(nest["root"] / "sub", {"ansible.cfg": "[defaults]\ninventory = ./near.yml\n", "near.yml": "all:\n"})
    assert locate_inventory(None, env={}, cwd=nest["deep"]) == nest["root"] / "sub" / "near.yml"


def test_locate_ansible_config_env_replaces_the_search(nest: dict[str, Path], tmp_path: Path) -> None:
    write_tree(tmp_path, {"elsewhere/my.cfg": "[defaults]\ninventory = /nonexistent/x.ini\n"})
    env = {"ANSIBLE_CONFIG": str(tmp_path / "elsewhere/my.cfg")}
    # That cfg's inventory does not exist, so the proj/ansible.cfg is NOT used: ./inventory.ini is.
    assert locate_inventory(None, env=env, cwd=nest["deep"]) == nest["deep"] / "inventory.ini"


def test_locate_cfg_without_inventory_falls_back_to_local_inventory_ini(nest: dict[str, Path]) -> None:
    (nest["root"] / "ansible.cfg").write_text("[defaults]\nforks = 5\n")
    assert locate_inventory(None, env={}, cwd=nest["deep"]) == nest["deep"] / "inventory.ini"


def test_locate_local_inventory_ini_last(tmp_path: Path) -> None:
    write_tree(tmp_path, {"inventory.ini": "[rpc_servers]\nh\n"})
    assert locate_inventory(None, env={}, cwd=tmp_path) == tmp_path / "inventory.ini"


def test_locate_nothing(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="no inventory found"):
        locate_inventory(None, env={}, cwd=tmp_path)


def test_cli_finds_inventory_through_ansible_cfg_and_env(nest: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "xdg-cache"
    proc = sollol("rpc-list", cache=cache, cwd=nest["deep"])
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "cfg-host:50052\n", "")
    proc = sollol("rpc-list", cache=cache, cwd=nest["deep"], SOLLOL_INVENTORY=str(nest["root"] / "other.ini"))
    assert (proc.returncode, proc.stdout) == (0, "env-host:50052\n")
    (nest["root"] / "ansible.cfg").unlink()
    proc = sollol("rpc-list", cache=cache, cwd=nest["deep"])
    assert (proc.returncode, proc.stdout) == (0, "local-host:50052\n")


# --------------------------------------------------------------------------- the cache


@pytest.fixture
def counted_runs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every subprocess.run the inventory module makes, still run for real."""
    calls: list[list[str]] = []
    real_run = subprocess.run

    def counting(cmd: list[str], *args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(list(cmd))
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(inv.subprocess, "run", counting)
    return calls


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Path]:
    root = write_tree(
        tmp_path / "small",
        {
            "hosts.ini": "[rpc_servers]\nw1 ansible_host=10.1.0.1\nw2 ansible_host=10.1.0.2\n",
            "group_vars/rpc_servers.yml": "sollol_rpc_port: 50070\n",
        },
    )
    yield root / "hosts.ini"


def bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


def test_cache_second_call_does_not_run_ansible(
    small: Path, counted_runs: list[list[str]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first = ansible_inventory_list(small)
    assert len(counted_runs) == 1 and Path(counted_runs[0][0]).name == "ansible-inventory"
    (entry,) = (tmp_path / "xdg-cache" / "sollol-ops" / "inventory").glob("*.json")

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("ansible-inventory ran although the cache is warm")

    with monkeypatch.context() as patched:
        patched.setattr(inv.subprocess, "run", forbidden)
        assert ansible_inventory_list(small) == first
        assert load_cluster(small).rpc_list() == "10.1.0.1:50070,10.1.0.2:50070"

    # A corrupt entry is not an error: it is read again and rewritten.
    entry.write_text("{not json")
    assert load_cluster(small).rpc_list() == "10.1.0.1:50070,10.1.0.2:50070"
    assert len(counted_runs) == 2
    assert json.loads(entry.read_text())["rpc_servers"]["hosts"] == ["w1", "w2"]


def test_big_inventory_read_once_then_from_the_cache(tmp_path: Path, counted_runs: list[list[str]]) -> None:
    """Issue 20: a big inventory (here the bench's generator, 3,000 hosts; the bench reads 10k and 95k) is read
    by ansible-inventory once; the second read is the cache's, with the same hosts in the same order."""
    from sollol_ops.bench.inventory_read import write_inventory

    inventory, backends = write_inventory(tmp_path / "big", 3000)
    first = load_cluster(inventory)
    assert len(counted_runs) == 1 and len(first.backends) == backends
    again = load_cluster(inventory)
    assert len(counted_runs) == 1  # the cache, not ansible-inventory
    assert [b.endpoint for b in again.backends] == [b.endpoint for b in first.backends]
    assert [b.host for b in again.backends][:3] == ["gpu0", "gpu0", "gpu1"]  # gpu0 runs two instances
    assert again.backends[-1].host == "cpu2699" and [c.host for c in again.coordinators] == ["coord"]


def test_group_hosts_keeps_inventory_order_and_each_host_once() -> None:
    """A host in two child groups (and the group itself) counts once, where it first appears."""
    from sollol_ops.cluster.inventory import group_hosts

    data = {
        "rpc_servers": {"hosts": ["z"], "children": ["gpu", "cpu", "gpu"]},
        "gpu": {"hosts": ["b", "a", "z"], "children": ["rpc_servers"]},  # a loop back to the parent
        "cpu": {"hosts": ["a", "c"]},
    }
    assert group_hosts(data, "rpc_servers") == ["z", "b", "a", "c"]
    assert group_hosts(data, "nosuch") == []


def test_cache_invalidated_by_group_vars_edit(small: Path, counted_runs: list[list[str]]) -> None:
    assert load_cluster(small).rpc_list() == "10.1.0.1:50070,10.1.0.2:50070"
    assert load_cluster(small).rpc_list() == "10.1.0.1:50070,10.1.0.2:50070"
    assert len(counted_runs) == 1
    gv = small.parent / "group_vars" / "rpc_servers.yml"
    gv.write_text("sollol_rpc_port: 50071\n")  # same size: only the mtime tells
    bump_mtime(gv)
    assert load_cluster(small).rpc_list() == "10.1.0.1:50071,10.1.0.2:50071"
    assert len(counted_runs) == 2


def test_cache_invalidated_by_inventory_edit_and_new_host_vars(small: Path, counted_runs: list[list[str]]) -> None:
    assert load_cluster(small).rpc_list() == "10.1.0.1:50070,10.1.0.2:50070"
    small.write_text("[rpc_servers]\nw1 ansible_host=10.1.0.9\nw2 ansible_host=10.1.0.2\n")  # same size
    bump_mtime(small)
    assert load_cluster(small).rpc_list() == "10.1.0.9:50070,10.1.0.2:50070"
    assert load_cluster(small).rpc_list() == "10.1.0.9:50070,10.1.0.2:50070"
    assert len(counted_runs) == 2
    write_tree(small.parent, {"host_vars/w2/rpc.yml": "sollol_rpc_address: 10.2.0.2\n"})
    assert load_cluster(small).rpc_list() == "10.1.0.9:50070,10.2.0.2:50070"
    assert len(counted_runs) == 3


def test_executable_inventory_is_never_cached(tmp_path: Path, counted_runs: list[list[str]]) -> None:
    script = tmp_path / "dyn" / "inventory.py"
    script.parent.mkdir()
    data = {"rpc_servers": {"hosts": ["d1"]}, "_meta": {"hostvars": {"d1": {"ansible_host": "10.3.0.1"}}}}
    script.write_text(f"#!{sys.executable}\nimport json\nprint(json.dumps({data!r}))\n")
    script.chmod(0o755)
    assert load_cluster(script).rpc_list() == "10.3.0.1:50052"
    assert load_cluster(script).rpc_list() == "10.3.0.1:50052"
    assert len(counted_runs) == 2
    assert not (tmp_path / "xdg-cache" / "sollol-ops" / "inventory").exists()


GENERATOR = """
    plugin: ansible.builtin.generator
    hosts:
      name: "w-{{ n }}"
      parents:
        - name: rpc_servers
    layers:
      n: ["1", "2"]
"""


def test_inventory_plugin_config_is_never_cached(tmp_path: Path, counted_runs: list[list[str]]) -> None:
    """A plugin config (aws_ec2, netbox, ... here the offline generator) gets its hosts from elsewhere."""
    config = write_tree(tmp_path / "plugin", {"gen.yml": GENERATOR}) / "gen.yml"
    assert load_cluster(config).rpc_list() == "w-1:50052,w-2:50052"
    assert load_cluster(config).rpc_list() == "w-1:50052,w-2:50052"
    assert len(counted_runs) == 2
    assert not (tmp_path / "xdg-cache" / "sollol-ops" / "inventory").exists()


def test_which_layouts_are_cacheable(tmp_path: Path) -> None:
    static = write_tree(
        tmp_path / "static",
        {"hosts.yml": "rpc_servers:\n  hosts:\n    a:\n", "group_vars/all.yml": "plugin: not-an-inventory-plugin\n"},
    )
    assert inv._inventory_files(static) == [static / "group_vars/all.yml", static / "hosts.yml"]
    assert inv._inventory_files(static / "hosts.yml") == [static / "group_vars/all.yml", static / "hosts.yml"]
    dynamic = write_tree(tmp_path / "dynamic", {"10-static.ini": "[rpc_servers]\na\n", "20-gen.yml": GENERATOR})
    assert inv._inventory_files(dynamic) is None
    assert inv._inventory_files(dynamic / "20-gen.yml") is None
    assert inv._inventory_files(dynamic / "10-static.ini") == [dynamic / "10-static.ini"]
    (static / "hosts.yml").chmod(0o755)
    assert inv._inventory_files(static) is None


# --------------------------------------------------------------------------- bad input: one clean line, exit 3

# Cases that need an inventory of their own (it does not parse, or its rpc_servers group is the problem).
BAD_OWN: dict[str, tuple[dict[str, str], list[str]]] = {
    # name: (files; the inventory is the one named hosts.*, needles)
    "malformed-ini": (
        {"hosts.ini": "[rpc_servers]\nnode1 ansible_host\n"},
        ["cannot parse inventory", "hosts.ini", "Expected key=value"],
    ),
    "malformed-yaml": (
        {"hosts.yml": "all:\n  children:\n    rpc_servers:\n      hosts:\n        a: {x: [1\n"},
        ["cannot parse inventory", "hosts.yml", "YAML parsing failed"],
    ),
    "malformed-group-vars": (
        {"hosts.ini": "[rpc_servers]\nnode1\n", "group_vars/rpc_servers.yml": "sollol_rpc_port: [1\n"},
        ["cannot parse inventory", "YAML parsing failed"],
    ),
    "rpc-servers-without-hosts": (
        {"hosts.ini": "[rpc_servers]\n[coordinator]\nc1\n"},
        ["group 'rpc_servers'", "has no hosts"],
    ),
    "rpc-servers-children-without-hosts": (
        {"hosts.yml": "all:\n  children:\n    rpc_servers:\n      children:\n        gpu: {}\n        cpu:\n"},
        ["group 'rpc_servers'", "has no hosts"],
    ),
    "missing-rpc-servers": (
        {"hosts.ini": "[workers]\nnode1\n"},
        ["no group 'rpc_servers'", "groups: all, ungrouped, workers", "--rpc-group"],
    ),
}

# The variable errors share one inventory directory (INI + YAML + group_vars + host_vars), one bad
# group per case, picked with --rpc-group: a single `ansible-inventory` run serves them all.
LONG_LABEL = "a" * 64  # DNS labels are at most 63 characters: idna encoding used to raise UnicodeError
LONG_NAME = ".".join(["n" * 63] * 4)  # 255 characters: over the 253 of a DNS name
CORPUS = {
    "corpus/hosts.ini": """
        [rpc_servers]
        fine ansible_host=10.9.0.1

        [port_zero]
        pz sollol_rpc_port=0
        [port_too_big]
        pb
        [port_not_a_number]
        pa sollol_rpc_port=abc
        [port_jinja]
        pj
        [dup_hosts]
        d1 ansible_host=10.0.0.1
        d2 ansible_host=10.0.0.1
        [dup_instances]
        di ansible_host=10.0.0.2
        [instances_string]
        is1 sollol_rpc_instances=CUDA0
        [bad_device]
        bd
        [wildcard_address]
        wa ansible_host=192.168.1.50 sollol_rpc_address=0.0.0.0
        [host_long_label]
        ll sollol_rpc_address=LONG_LABEL.example
        [host_empty_label]
        el ansible_host=node..lan
        [host_bad_ipv4]
        b4 sollol_rpc_address=300.1.1.1
        [host_non_ascii]
        na sollol_rpc_address=bücher.example
        [host_bad_name]
        LONG_LABEL.lan
        [host_long_name]
        ln ansible_host=LONG_NAME
    """.replace("LONG_LABEL", LONG_LABEL).replace("LONG_NAME", LONG_NAME),
    "corpus/hosts.yml": """
        instance_port_range:
          hosts:
            ipr: {sollol_rpc_instances: [{port: 50052}, {port: 65536}]}
        instances_mapping:
          hosts:
            im:
              sollol_rpc_instances: {port: 50052, device: CUDA0}
        instance_without_port:
          hosts:
            inp: {sollol_rpc_instances: [{device: CUDA0}]}
        instance_unknown_key:
          hosts:
            iuk: {sollol_rpc_instances: [{port: 50052, gpu: CUDA0}]}
    """,
    "corpus/host_vars/pb.yml": "sollol_rpc_port: 70000\n",
    "corpus/group_vars/port_jinja.yml": 'sollol_rpc_port: "{{ 50000 + 52 }}"\n',
    "corpus/host_vars/di.yml": """
        sollol_rpc_instances:
          - {port: 50052, device: CUDA0}
          - {port: 50052, device: CUDA1}
    """,
    "corpus/host_vars/bd/instances.yml": "sollol_rpc_instances:\n  - {port: 50052, device: 'CUDA0; rm -rf /'}\n",
}
BAD_SHARED: dict[str, tuple[str, list[str]]] = {
    # name: (--rpc-group, needles)
    "unknown-rpc-group": (
        "nope",
        ["no group 'nope'", "groups: all, bad_device, dup_hosts", "rpc_servers", "--rpc-group"],
    ),
    "port-zero": ("port_zero", ["host pz", "sollol_rpc_port=0 is out of range 1..65535"]),
    "port-too-big": ("port_too_big", ["host pb", "sollol_rpc_port=70000 is out of range 1..65535"]),
    "port-not-a-number": ("port_not_a_number", ["host pa", "sollol_rpc_port must be an integer, got 'abc'"]),
    "port-jinja": ("port_jinja", ["host pj", "sollol_rpc_port='{{ 50000 + 52 }}' is a template", "literal value"]),
    "duplicate-host-port": ("dup_hosts", ["duplicate rpc endpoint 10.0.0.1:50052", "hosts d1 and d2"]),
    "duplicate-instance-port": ("dup_instances", ["host di has two rpc-server instances on 10.0.0.2:50052"]),
    "instance-port-out-of-range": (
        "instance_port_range",
        ["host ipr", "sollol_rpc_instances[1].port=65536 is out of range"],
    ),
    "instances-a-mapping": ("instances_mapping", ["host im", "sollol_rpc_instances must be a list"]),
    "instances-a-string": ("instances_string", ["host is1", "sollol_rpc_instances must be a list"]),
    "instance-without-port": (
        "instance_without_port",
        ["host inp", "sollol_rpc_instances[0] must be a mapping with at least 'port'"],
    ),
    "instance-unknown-key": ("instance_unknown_key", ["host iuk", "sollol_rpc_instances[0] has unknown keys ['gpu']"]),
    "wildcard-address": ("wildcard_address", ["host wa", "is 0.0.0.0", "address the coordinator reaches it on"]),
    "address-long-label": (
        "host_long_label",
        ["host ll", "sollol_rpc_address", LONG_LABEL, "64 characters (the limit is 63)"],
    ),
    "address-empty-label": ("host_empty_label", ["host el", "ansible_host 'node..lan'", "empty label"]),
    "address-bad-ipv4": ("host_bad_ipv4", ["host b4", "sollol_rpc_address '300.1.1.1'", "IPv4"]),
    "address-non-ascii": ("host_non_ascii", ["host na", "sollol_rpc_address", "xn--"]),
    "address-bad-inventory-hostname": (
        "host_bad_name",
        [f"host {LONG_LABEL}.lan", "the inventory hostname", "64 characters (the limit is 63)"],
    ),
    "address-too-long": ("host_long_name", ["host ln", "ansible_host", "255 characters (the limit is 253)"]),
    "bad-device": (
        "bad_device",
        ["host bd", "sollol_rpc_instances[0].device must be a device name like CUDA0", "CUDA0; rm -rf /"],
    ),
}
BAD_NEEDLES = {**{k: v[1] for k, v in BAD_OWN.items()}, **{k: v[1] for k, v in BAD_SHARED.items()}}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, dict[str, Any], dict[str, Any]]]:
    """case -> (CLI result, snapshot of its inventory folder before, after). Every case is a real,
    independent `sollol-ops ... rpc-list` process; they run concurrently to keep the suite fast."""
    jobs: dict[str, tuple[Path, list[str], Path]] = {}  # case -> (folder to snapshot, args, cache)
    for case, (files, _needles) in BAD_OWN.items():
        base = tmp_path_factory.mktemp(f"bad-{case}")
        root = write_tree(base / "inv", files)
        entry = next(root / name for name in files if name.startswith("hosts."))
        jobs[case] = (root, ["-i", str(entry), "rpc-list"], base / "xdg-cache")
    base = tmp_path_factory.mktemp("bad-corpus")
    corpus = write_tree(base, CORPUS) / "corpus"
    for case, (group, _needles) in BAD_SHARED.items():
        jobs[case] = (corpus, ["-i", str(corpus), "--rpc-group", group, "rpc-list"], base / "xdg-cache")

    befores = {case: snapshot(root) for case, (root, _, _) in jobs.items()}
    warm = sollol("-i", str(corpus), "rpc-list", cache=base / "xdg-cache")  # the corpus' good group
    assert (warm.returncode, warm.stdout) == (0, "10.9.0.1:50052\n"), warm.stderr
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {case: pool.submit(sollol, *args, cache=cache) for case, (_, args, cache) in jobs.items()}
        procs = {case: f.result() for case, f in futures.items()}
    return {case: (procs[case], befores[case], snapshot(jobs[case][0])) for case in jobs}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_NEEDLES))
def test_bad_inventory_fails_cleanly(case: str, bad_runs: dict[str, Any]) -> None:
    proc, before, after = bad_runs[case]
    err = assert_clean_failure(proc, *BAD_NEEDLES[case])
    assert proc.returncode == INVENTORY_EXIT, err
    assert err.startswith("sollol-ops: error: ")
    assert proc.stdout == ""
    assert after == before, "a failing read wrote next to the inventory"


def test_missing_inventory_file(tmp_path: Path) -> None:
    proc = sollol("-i", "nope", "rpc-list", cache=tmp_path / "xdg-cache", cwd=tmp_path)
    err = assert_clean_failure(proc, "inventory 'nope' not found", "pass -i PATH")
    assert proc.returncode == INVENTORY_EXIT, err
    assert os.listdir(tmp_path) == []  # not even the cache: it failed before reading anything


def test_no_inventory_anywhere(tmp_path: Path) -> None:
    cwd = tmp_path / "empty"
    cwd.mkdir()
    proc = sollol("backends", cache=tmp_path / "xdg-cache", cwd=cwd)
    err = assert_clean_failure(proc, "no inventory found", "SOLLOL_INVENTORY", "inventory.ini")
    assert proc.returncode == INVENTORY_EXIT, err
    assert os.listdir(cwd) == []


def test_sollol_inventory_pointing_nowhere(tmp_path: Path) -> None:
    proc = sollol("rpc-list", cache=tmp_path / "c", cwd=tmp_path, SOLLOL_INVENTORY=str(tmp_path / "gone.ini"))
    err = assert_clean_failure(proc, "gone.ini", "$SOLLOL_INVENTORY", "not found")
    assert proc.returncode == INVENTORY_EXIT, err


def test_status_with_an_over_long_label_is_an_inventory_error(tmp_path: Path) -> None:
    """`status` probes the backends: a 64-character label used to end in UnicodeError from idna (exit 70)."""
    hosts = write_tree(tmp_path / "inv", {"hosts.ini": f"[rpc_servers]\nw1 sollol_rpc_address={LONG_LABEL}.lan\n"})
    proc = sollol("-i", str(hosts / "hosts.ini"), "status", cache=tmp_path / "c", XDG_STATE_HOME=str(tmp_path / "s"))
    err = assert_clean_failure(proc, "host w1", "sollol_rpc_address", "the limit is 63")
    assert proc.returncode == INVENTORY_EXIT, err


# --------------------------------------------------------------------------- hostile YAML: bounded time and memory


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """ "Billion laughs": each level lists the previous one `width` times (9**9 strings once expanded)."""
    lines = ["lol0: &lol0 [" + ", ".join(['"lol"'] * width) + "]"]
    lines += [f"lol{i}: &lol{i} [" + ", ".join([f"*lol{i - 1}"] * width) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def _indent(text: str, spaces: int) -> str:
    return textwrap.indent(text, " " * spaces)


BOMBS: dict[str, tuple[dict[str, str], str, str]] = {
    # case: (files, the -i path, the file the error must name)
    "yaml inventory": (
        {"hosts.yml": "all:\n  vars:\n" + _indent(alias_bomb(), 4) + "rpc_servers:\n  hosts:\n    w1:\n"},
        "hosts.yml",
        "hosts.yml",
    ),
    "group_vars": (
        {"hosts.ini": "[rpc_servers]\nw1 ansible_host=10.1.0.1\n", "group_vars/all.yml": alias_bomb()},
        "hosts.ini",
        "group_vars/all.yml",
    ),
    "host_vars file without extension": (
        {"hosts.ini": "[rpc_servers]\nw1 ansible_host=10.1.0.1\n", "host_vars/w1": alias_bomb()},
        "hosts.ini",
        "host_vars/w1",
    ),
    "source in an inventory directory": (
        {"inv/00-hosts.ini": "[rpc_servers]\nw1 ansible_host=10.1.0.1\n", "inv/10-more.yaml": alias_bomb()},
        "inv",
        "inv/10-more.yaml",
    ),
    "recursive alias": (
        {"hosts.ini": "[rpc_servers]\nw1 ansible_host=10.1.0.1\n", "group_vars/all.yml": "loop: &loop [1, *loop]\n"},
        "hosts.ini",
        "group_vars/all.yml",
    ),
}


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_yaml_alias_bomb_is_refused_in_bounded_time(tmp_path: Path, case: str) -> None:
    """A billion-laughs inventory used to keep ansible-inventory busy (and growing) for minutes."""
    files, entry, named = BOMBS[case]
    root = write_tree(tmp_path / "inv-root", files)
    start = time.monotonic()
    proc = run_cli_bounded("-i", str(root / entry), "rpc-list", env={"XDG_CACHE_HOME": str(tmp_path / "c")})
    elapsed = time.monotonic() - start
    err = assert_clean_failure(proc, str(root / named), "alias")
    assert proc.returncode == INVENTORY_EXIT, err
    assert elapsed < 15, f"took {elapsed:.1f} s"


def test_ordinary_yaml_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    files = {
        "hosts.yml": """
            rpc_servers:
              vars:
                defaults: &defaults {sollol_rpc_port: 50080, llama_cpp_backend: cpu}
              hosts:
                w1: {<<: *defaults, ansible_host: 10.1.0.1}
                w2: {<<: *defaults, ansible_host: 10.1.0.2}
        """,
    }
    root = write_tree(tmp_path / "inv", files)
    assert load_cluster(root / "hosts.yml").rpc_list() == "10.1.0.1:50080,10.1.0.2:50080"


def test_ansible_inventory_output_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its JSON goes to a file under RLIMIT_FSIZE: past the cap ansible-inventory dies (SIGXFSZ), we say why."""
    hosts = write_tree(tmp_path / "inv", {"hosts.ini": "[rpc_servers]\nw[0:199] ansible_host=10.1.0.1\n"})
    monkeypatch.setattr(inv, "ANSIBLE_INVENTORY_OUTPUT", 4096)
    with pytest.raises(InventoryError, match=r"ansible-inventory printed more than 4,096 bytes for .*hosts\.ini"):
        ansible_inventory_list(hosts / "hosts.ini")


def test_ansible_inventory_memory_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It runs under RLIMIT_AS: running out is an InventoryError naming the limit, not a machine swapping."""
    hosts = write_tree(tmp_path / "inv", {"hosts.ini": "[rpc_servers]\nw1 ansible_host=10.1.0.1\n"})
    monkeypatch.setattr(inv, "ANSIBLE_INVENTORY_MEMORY", 32 << 20)
    with pytest.raises(InventoryError, match=r"ansible-inventory ran out of its 32 MiB of memory reading .*hosts\.ini"):
        ansible_inventory_list(hosts / "hosts.ini")


# --------------------------------------------------------------------------- the cache holds secrets: 0600, 0700


def _sollol_umask_022(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "sollol_ops.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(REPO),
        timeout=120,
        check=False,
        preexec_fn=lambda: os.umask(0o022),
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_inventory_cache_is_private_even_with_umask_022(tmp_path: Path) -> None:
    """The cache copies every variable, ansible_become_password included: it was written 0644 in a 0755 dir."""
    secret = "s3cret-become-password"
    root = write_tree(
        tmp_path / "inv", {"hosts.ini": f"[rpc_servers]\nw1 ansible_host=10.1.0.1 ansible_become_password={secret}\n"}
    )
    (root / "hosts.ini").chmod(0o600)
    cache = tmp_path / "xdg"
    proc = _sollol_umask_022("-i", str(root / "hosts.ini"), "rpc-list", cache=cache)
    assert (proc.returncode, proc.stdout) == (0, "10.1.0.1:50052\n"), proc.stderr
    cache_dir = cache / "sollol-ops" / "inventory"
    (entry,) = cache_dir.glob("*.json")
    assert secret in entry.read_text()  # it is there: so only we may read it
    assert (_mode(cache_dir), _mode(entry)) == (0o700, 0o600)
    assert not [p for p in cache_dir.iterdir() if p.suffix != ".json"], "a temporary file was left behind"

    # A cache written by an older version (0755 dir, 0644 file) is fixed by the next read of it.
    cache_dir.chmod(0o755)
    entry.chmod(0o644)
    proc = _sollol_umask_022("-i", str(root / "hosts.ini"), "rpc-list", cache=cache)
    assert (proc.returncode, proc.stdout) == (0, "10.1.0.1:50052\n"), proc.stderr
    assert (_mode(cache_dir), _mode(entry)) == (0o700, 0o600)


def _wide(**values: object) -> dict[str, Any]:
    return {"_meta": {"hostvars": {"w1": dict(values)}}, "rpc_servers": {"hosts": ["w1"]}}


def test_heal_settings_default_to_auto_and_60_s() -> None:
    from sollol_ops.cluster.inventory import cluster_from_inventory_data

    cluster = cluster_from_inventory_data(_wide(), Path("i"))
    assert (cluster.heal, cluster.stall_timeout) == ("auto", 60.0)
    cluster = cluster_from_inventory_data(_wide(sollol_heal="manual", sollol_stall_timeout="2.5"), Path("i"))
    assert (cluster.heal, cluster.stall_timeout) == ("manual", 2.5)  # an INI [all:vars] value is a string


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"sollol_heal": "sometimes"}, "sollol_heal must be one of auto, manual, got 'sometimes'"),
        ({"sollol_stall_timeout": "soon"}, "sollol_stall_timeout must be a number of seconds"),
        ({"sollol_stall_timeout": 0}, "sollol_stall_timeout must be a number of seconds in (0, 86400], got 0"),
        ({"sollol_stall_timeout": True}, "sollol_stall_timeout must be a number of seconds"),
        ({"sollol_stall_timeout": "{{ t }}"}, "sollol_stall_timeout must be a number of seconds"),
    ],
)
def test_bad_heal_settings_are_refused_naming_the_variable(values: dict[str, object], needle: str) -> None:
    from sollol_ops.cluster.inventory import cluster_from_inventory_data

    with pytest.raises(InventoryError, match="sollol_") as exc:
        cluster_from_inventory_data(_wide(**values), Path("i"))
    assert needle in str(exc.value)


def test_cli_heal_without_a_coordinator_and_with_a_bad_setting(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "inv", {"hosts.ini": "[rpc_servers]\nw1 ansible_host=127.0.0.1\n"})
    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = run_cli("-i", str(root / "hosts.ini"), "heal", env=env, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "nothing to heal: no coordinator running\n"), proc.stderr
    (root / "hosts.ini").write_text("[rpc_servers]\nw1 ansible_host=127.0.0.1\n\n[all:vars]\nsollol_heal=never\n")
    proc = run_cli("-i", str(root / "hosts.ini"), "heal", "--json", env=env, timeout=60)
    assert proc.returncode == 3
    assert_clean_failure(proc, "sollol_heal must be one of auto, manual, got 'never'")
