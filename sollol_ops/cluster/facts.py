"""The one definition of every fact the CLI and the Ansible side share.

The Ansible side (roles' defaults and argument_specs, the playbooks' fallbacks) cannot import Python, so it
carries the same values as literals; tests/support/contract.py checks every one of them against this module, and
also the Makefile's LLAMA_REF and the Molecule scenarios' llama_cpp_version. Change a fact here first, then
run `pytest tests/ansible/test_contract.py`: it names every place that still says otherwise. Documented in
docs/inventory.md. This module imports nothing from sollol_ops (the contract check loads it on its own).
"""

from __future__ import annotations

# Inventory groups: the workers and the machine that serves. The CLI's --rpc-group/--coordinator-group
# defaults; the playbooks take them as the variables in GROUP_VARS (default: these names).
RPC_GROUP = "rpc_servers"
COORDINATOR_GROUP = "coordinator"

# Port of a host's single rpc-server (sollol_rpc_port).
DEFAULT_PORT = 50052

# Where roles/llama_cpp installs on cluster hosts (llama_cpp_prefix): PREFIX/<build id>, PREFIX/current.
LLAMA_PREFIX = "/opt/sollol-ops/llama.cpp"

# The RPC server binary: its current upstream name first, then the name of older releases (same program).
RPC_SERVER_NAMES: tuple[str, ...] = ("ggml-rpc-server", "rpc-server")

# The pinned llama.cpp commit (llama_cpp_version): every host of a cluster runs this same build.
LLAMA_REF = "0c1e57098"

# Play-level variables naming the groups; `sollol-ops provision` passes them as extra vars.
RPC_GROUP_VAR = "sollol_rpc_group"
COORDINATOR_GROUP_VAR = "sollol_coordinator_group"
GROUP_VARS: dict[str, str] = {RPC_GROUP_VAR: RPC_GROUP, COORDINATOR_GROUP_VAR: COORDINATOR_GROUP}

# Cluster-wide variables, read by `sollol-ops up` and the gateway: set them in [all:vars] or group_vars/all (hosts
# that set one must agree). roles/coordinator writes them into the inventory of the CLI on the coordinator.
CLUSTER_WIDE: dict[str, object] = {
    # Start the coordinator on the healthy rpc-servers when some are down, if the model still fits them (as
    # `up --skip-unhealthy`; `status` then calls it degraded, naming the backends left out). Off: refuse, naming them.
    "sollol_skip_unhealthy": False,
    # A draft model per target for speculative decoding (`up --draft`, docs/inventory.md): {"codellama:13b":
    # "codellama:7b", "qwen:32b": "ngram"}; a model not named here is served without one.
    "sollol_draft_models": {},
    # How `up` and the gateway split a model's layers: speed (by the compute and link speeds `sollol-ops plan MODEL
    # --measure` measured and cached; by memory while any worker is unmeasured) or memory (llama.cpp's rule).
    "sollol_placement": "speed",
    # Run the coordinator's llama-server with --embeddings, so /api/embed, /api/embeddings and /v1/embeddings work
    # on sharded models (through `up` and the gateway); off: the gateway answers them 501 naming this variable.
    "sollol_embeddings": False,
    # What is done when the coordinator ran degraded and a backend left out answers again, or it stalls (a frozen
    # rpc-server): `auto`, the gateway and `up --foreground` reload it on the full set (with no request in flight) and
    # stop one stalled longer than sollol_stall_timeout; `manual`, only `sollol-ops heal` does.
    "sollol_heal": "auto",
    # Seconds with requests in flight and no model step before the coordinator counts as stalled and is stopped.
    "sollol_stall_timeout": 60,
}
PLACEMENTS = ("speed", "memory")
HEAL_MODES = ("auto", "manual")

# The coordinator as a device (docs/inventory.md): variables of the coordinator group's host, read by `up` there
# and written by roles/coordinator into the inventory it leaves for the CLI.
COORDINATOR_VARS: dict[str, object] = {
    # Memory the coordinator offers to the model's layers, in MiB; 0 = none (every layer on the rpc-servers).
    "sollol_coordinator_memory_mib": 0,
    # The device that offers it: CPU (host memory), or one `llama-server --list-devices` names (CUDA0, Vulkan0, ...).
    "sollol_coordinator_device": "CPU",
    # The coordinator's own Ollama (http://HOST:11434): where the gateway pulls models that no pool node takes
    # (/api/pull, /api/delete, /api/copy); its store is the one the coordinator serves from. Empty: none.
    "sollol_coordinator_ollama_url": "",
}

# Every variable of roles/sollol_cluster with its default (that file must equal this mapping).
DEFAULTS: dict[str, object] = {
    # Address the cluster uses to reach the host's rpc-servers (also what they bind to).
    "sollol_rpc_address": "{{ ansible_host | default(inventory_hostname) }}",
    # Port of the host's single rpc-server.
    "sollol_rpc_port": DEFAULT_PORT,
    # Several rpc-servers on one host (one per device): [{port: 50052, device: CUDA0}, ...].
    "sollol_rpc_instances": [],
    # Memory the host offers to the model, in MiB (CPU hosts: RPC reports total RAM as free).
    "sollol_rpc_memory_mib": 0,
    # Relative share of layers; 0 = derived from memory.
    "sollol_rpc_weight": 0,
    # Compute backend of the host (same variable as roles/llama_cpp).
    "llama_cpp_backend": "cpu",
    **CLUSTER_WIDE,
    # The coordinator's own memory for layers.
    **COORDINATOR_VARS,
    # The inventory groups the playbooks and roles work on.
    **GROUP_VARS,
}

# Threads of each rpc-server (rpc_server_threads, `sollol-ops local start --threads`): 0 = automatic, the
# host's cores split evenly across the rpc-servers on it, at least 1 each (rpc_threads below; the role's
# rpc_server__default_threads computes the same in Jinja, checked by tests/support/contract.py). Chosen by
# measurement (docs/benchmarks.md, "Defaults vs. tuned settings"): rpc-servers that share a host's cores
# with each other, together, never use more threads than it has cores.
RPC_THREADS_AUTO = 0


def rpc_threads(cores: int, instances: int) -> int:
    """The automatic rpc-server thread count: `cores` split across `instances` rpc-servers, at least 1."""
    return max(1, cores // max(1, instances))


# `sollol-ops gateway` defaults that roles/coordinator's sollol-gateway.service repeats (coordinator_gateway_*).
GATEWAY_PORT = 11435  # next to Ollama's 11434, so both can run on one machine
GATEWAY_KEEP_ALIVE = "5m"  # Ollama's default keep_alive
GATEWAY_QUEUE_SIZE = 32  # requests that may wait for a sharded model to load
# The variable the gateway reads its API key from (the unit's 0600 EnvironmentFile sets it, never the command line).
GATEWAY_API_KEY_ENV = "SOLLOL_GATEWAY_API_KEY"

# Other role variables whose default is one of the facts above.
ROLE_DEFAULTS: dict[str, object] = {
    "llama_cpp_prefix": LLAMA_PREFIX,
    "llama_cpp_version": LLAMA_REF,
    "rpc_server_binary": RPC_SERVER_NAMES[0],
    "rpc_server_threads": RPC_THREADS_AUTO,
    "coordinator_gateway_port": GATEWAY_PORT,
    "coordinator_gateway_keep_alive": GATEWAY_KEEP_ALIVE,
    "coordinator_gateway_queue_size": GATEWAY_QUEUE_SIZE,
}
# The gateway's pool (`sollol-ops gateway`, docs/gateway.md): Ollama (or OpenAI-compatible) nodes that
# each serve whole models. Read by the CLI only (no role deploys them), so they are not role defaults.
POOL_GROUP = "ollama_nodes"
POOL_DEFAULTS: dict[str, object] = {
    # Port of the node's Ollama (or llama-server / vLLM) API.
    "sollol_ollama_port": 11434,
    # Which API the node speaks: `ollama`, or `openai` (llama-server, vLLM: /v1 only; the gateway translates).
    "sollol_ollama_api": "ollama",
    # Memory the node offers to one model in MiB (0 = no limit declared: a model it lists is taken to fit).
    "sollol_ollama_memory_mib": 0,
}
POOL_APIS = ("ollama", "openai")
# Gateway-wide variables (set them in [all:vars] or group_vars/all): every host that has one must agree.
GATEWAY_DEFAULTS: dict[str, object] = {
    # shard | pool | hybrid; unset: hybrid when both rpc_servers and ollama_nodes have hosts, else the one that has.
    "sollol_gateway_mode": None,
    # Per-model routes that override the size rule: {"llama3.1:70b": "shard", "qwen2.5:7b": "pool"}.
    "sollol_gateway_pins": {},
    # Streamed requests that wait for a sharded model to load get its loading progress as reasoning/thinking text.
    "sollol_gateway_loading_progress": False,
    # Token limit the gateway sets on a generation request that sets none (Ollama options.num_predict, OpenAI
    # max_tokens / max_completion_tokens); 0: none (llama-server then generates until the slot's context is full).
    "sollol_gateway_default_num_predict": 2048,
}
GATEWAY_MODES = ("shard", "pool", "hybrid")
