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
