"""The per-host inventory variables shared by the CLI and the roles (roles/sollol_cluster/defaults).

A test asserts these defaults equal the roles' defaults. Documented in docs/inventory.md.
"""

from __future__ import annotations

# Inventory groups.
RPC_GROUP = "rpc_servers"
COORDINATOR_GROUP = "coordinator"

DEFAULTS: dict[str, object] = {
    # Address the cluster uses to reach the host's rpc-servers (also what they bind to).
    "sollol_rpc_address": "{{ ansible_host | default(inventory_hostname) }}",
    # Port of the host's single rpc-server.
    "sollol_rpc_port": 50052,
    # Several rpc-servers on one host (one per device): [{port: 50052, device: CUDA0}, ...].
    "sollol_rpc_instances": [],
    # Memory the host offers to the model, in MiB (CPU hosts: RPC reports total RAM as free).
    "sollol_rpc_memory_mib": 0,
    # Relative share of layers; 0 = derived from memory.
    "sollol_rpc_weight": 0,
    # Compute backend of the host (same variable as roles/llama_cpp).
    "llama_cpp_backend": "cpu",
}

DEFAULT_PORT = int(DEFAULTS["sollol_rpc_port"])  # type: ignore[call-overload]

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
}
GATEWAY_MODES = ("shard", "pool", "hybrid")
