"""Per-invocation CLI state: global options and lazily loaded inventory. No globals."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sollol_ops.cluster.facts import COORDINATOR_GROUP, RPC_GROUP
from sollol_ops.errors import InventoryError

if TYPE_CHECKING:
    from sollol_ops.cluster.inventory import Cluster


@dataclass
class Context:
    inventory_option: str | None = None
    verbose: int = 0
    rpc_group: str = RPC_GROUP
    coordinator_group: str = COORDINATOR_GROUP
    _cluster: Cluster | None = field(default=None, repr=False)

    def inventory_path(self) -> Path:
        from sollol_ops.cluster.ansible_inventory import locate_inventory

        return locate_inventory(self.inventory_option)

    def found_inventory_path(self) -> Path | None:
        """The inventory, or None when none was named (-i, $SOLLOL_INVENTORY) and none is found (the nearest
        ansible.cfg's, ./inventory.ini): for a command that also runs without one."""
        from sollol_ops.cluster.ansible_inventory import ENV_INVENTORY

        try:
            return self.inventory_path()
        except InventoryError:
            if self.inventory_option or os.environ.get(ENV_INVENTORY):
                raise
            return None

    def cluster(self) -> Cluster:
        if self._cluster is None:
            from sollol_ops.cluster.inventory import load_cluster

            self._cluster = load_cluster(
                self.inventory_path(), rpc_group=self.rpc_group, coordinator_group=self.coordinator_group
            )
        return self._cluster
