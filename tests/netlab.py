"""Test hosts in network namespaces on one bridge, created and removed by the test itself.

Each host gets its own address in 10.214.<k>.0/24 (k from the test's pid, so parallel runs do not
collide); the machine itself is 10.214.<k>.1 on the bridge and plays the coordinator.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


@dataclass
class NetLab:
    hosts: int
    prefix: str = field(default_factory=lambda: f"sl{os.getpid() % 10000}")
    created: list[str] = field(default_factory=list)

    @property
    def subnet(self) -> str:
        return f"10.214.{os.getpid() % 250 + 1}"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.1"

    def namespace(self, i: int) -> str:
        return f"{self.prefix}n{i}"

    def address(self, i: int) -> str:
        return f"{self.subnet}.{10 + i}"

    def __enter__(self) -> NetLab:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self.created.append("bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i in range(self.hosts):
                ns, veth, peer = self.namespace(i), f"{self.prefix}v{i}", f"{self.prefix}p{i}"
                _ip("netns", "add", ns)
                self.created.append(ns)
                _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
                _ip("link", "set", peer, "netns", ns)
                _ip("link", "set", veth, "master", self.bridge, "up")
                _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", peer)
                _ip("-n", ns, "link", "set", peer, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def exec_argv(self, i: int, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(i), *argv]

    def __exit__(self, *exc: object) -> None:
        for name in reversed(self.created):
            if name == "bridge":
                _ip("link", "del", self.bridge, check=False)
            else:
                subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False)
                _ip("netns", "del", name, check=False)
        self.created.clear()
