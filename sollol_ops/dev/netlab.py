"""Test hosts in network namespaces: one veth per namespace into a bridge on this machine, optionally
rate-shaped with `tc tbf`. Used by the benchmark (LAN-like links) and the tests (hosts with their own
addresses). Everything it creates carries a per-run prefix and is removed by `down()`.

Only traffic to these namespaces' addresses and the bridge's own address is ever generated.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence

from sollol_ops.errors import NetworkLabError

RATE = re.compile(r"^(\d+(?:\.\d+)?)(k|m|g)bit$")


def run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise NetworkLabError(f"`{' '.join(argv)}` failed: {(proc.stderr or proc.stdout).strip()[:200]}")
    return proc


def tbf_args(rate: str) -> list[str]:
    """tc tbf parameters for a rate like 1gbit: burst ~4 ms of traffic (at least 128 KiB), 50 ms queue."""
    m = RATE.match(rate)
    if not m:
        raise NetworkLabError(f"not a rate: {rate!r} (use e.g. 1gbit, 100mbit)")
    bits = float(m.group(1)) * {"k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]
    burst = max(128 * 1024, int(bits / 8 / 250))
    return ["rate", rate, "burst", str(burst), "latency", "50ms"]


class NetLab:
    """`count` namespaces on one bridge; the machine itself is `<subnet>1` on the bridge."""

    def __init__(self, count: int, prefix: str | None = None, subnet_base: str = "10.213") -> None:
        if os.geteuid() != 0:
            raise NetworkLabError("network namespaces need root (ip netns, tc)")
        for tool in ("ip", "tc"):
            if shutil.which(tool) is None:
                raise NetworkLabError(f"`{tool}` (iproute2) is not installed")
        self.count = count
        self.prefix = prefix or f"sl{os.getpid() % 10_000_000}"
        self.bridge = f"{self.prefix}br"
        self.subnet_base = subnet_base
        self.subnet = ""
        self.namespaces: list[str] = []

    def _free_subnet(self) -> str:
        used = run(["ip", "-4", "-o", "addr", "show"], check=False).stdout
        used += run(["ip", "-4", "route", "show"], check=False).stdout
        first = os.getpid() % 250 + 1
        for i in range(250):
            net = f"{self.subnet_base}.{(first + i) % 250 + 1}."
            if net not in used:
                return net
        raise NetworkLabError(f"no free /24 in {self.subnet_base}.0.0/16 for the namespaces")

    @property
    def gateway(self) -> str:
        return f"{self.subnet}1"

    def namespace(self, i: int) -> str:
        return f"{self.prefix}n{i}"

    def address(self, i: int) -> str:
        return f"{self.subnet}{10 + i}"

    def host_veth(self, i: int) -> str:
        return f"{self.prefix}h{i}"

    def ns_veth(self, i: int) -> str:
        return f"{self.prefix}p{i}"

    def exec_argv(self, i: int, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(i), *argv]

    def up(self) -> None:
        self.subnet = self._free_subnet()
        try:
            run(["ip", "link", "add", self.bridge, "type", "bridge"])
            run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge])
            run(["ip", "link", "set", self.bridge, "up"])
            for i in range(self.count):
                ns = self.namespace(i)
                run(["ip", "netns", "add", ns])
                self.namespaces.append(ns)
                run(["ip", "link", "add", self.host_veth(i), "type", "veth", "peer", "name", self.ns_veth(i)])
                run(["ip", "link", "set", self.ns_veth(i), "netns", ns])
                run(["ip", "link", "set", self.host_veth(i), "master", self.bridge, "up"])
                run(["ip", "-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", self.ns_veth(i)])
                run(["ip", "-n", ns, "link", "set", self.ns_veth(i), "up"])
                run(["ip", "-n", ns, "link", "set", "lo", "up"])
        except BaseException:
            self.down()
            raise

    def shape(self, rate: str | None) -> None:
        """tbf at `rate` on both ends of every veth (None: remove shaping)."""
        for i, ns in enumerate(self.namespaces):
            for prefix, dev in ((["tc"], self.host_veth(i)), (["tc", "-n", ns], self.ns_veth(i))):
                if rate is None:
                    run([*prefix, "qdisc", "del", "dev", dev, "root"], check=False)
                else:
                    run([*prefix, "qdisc", "replace", "dev", dev, "root", "tbf", *tbf_args(rate)])

    def down(self) -> None:
        for ns in self.namespaces:
            run(["ip", "netns", "del", ns], check=False)
        self.namespaces = []
        existing = run(["ip", "-o", "link", "show"], check=False).stdout
        for i in range(self.count):  # a veth whose peer never reached its namespace
            if f" {self.host_veth(i)}@" in existing or f" {self.host_veth(i)}:" in existing:
                run(["ip", "link", "del", self.host_veth(i)], check=False)
        run(["ip", "link", "del", self.bridge], check=False)

    def __enter__(self) -> NetLab:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()
