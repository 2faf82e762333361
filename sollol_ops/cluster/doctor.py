"""`sollol-ops doctor`: the troubleshooting list of the system this grows from, as checks with one line of
advice each. Every worker reachable from this coordinator and speaking its protocol; each rpc-server
unit active and not restarting (read through Ansible from the hosts); the firewall table present; the
model fitting the free memory (when one is named); the link to each idle worker measured over the RPC
protocol itself against the minimum the original system names (1 Gbit/s)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sollol_ops import procs
from sollol_ops.cluster import link as rpc_link
from sollol_ops.cluster import local as local_cluster
from sollol_ops.cluster import rpc
from sollol_ops.cluster.inventory import Backend, Cluster
from sollol_ops.errors import CheckFailed, SollolError
from sollol_ops.serve import coordinator, doctor_links

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
MIN_LINK_BPS = 1e9  # the original system: "1 Gbps minimum" between coordinator and workers
UNIT_PATTERN = "sollol-rpc-server*"
FIREWALL_TABLE = "inet sollol_rpc"


@dataclass
class Check:
    check: str
    target: str
    status: str
    detail: str
    advice: str = ""


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)

    def add(self, *args: str) -> None:
        self.checks.append(Check(*args))

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    def raise_if_failed(self) -> None:
        if self.failed:
            raise CheckFailed(
                f"{len(self.failed)} check(s) failed: "
                + "; ".join(f"{c.check} {c.target}: {c.detail}" for c in self.failed)
            )


@dataclass
class DoctorOptions:
    model: str | None = None
    ollama_models: str | None = None
    n_ctx: int = 4096
    link_bytes: int = 32 << 20
    link_uploads: int = 3  # best of: a busy machine or link slows single uploads
    min_link_bps: float = MIN_LINK_BPS
    hosts: bool = True  # read units and firewall through Ansible
    ansible_timeout: float = 60.0


def _format_bps(bps: float) -> str:
    return f"{bps / 1e9:.2f} Gbit/s" if bps >= 1e9 else f"{bps / 1e6:.0f} Mbit/s"


def check_reachable(cluster: Cluster, held: set[str], report: DoctorReport) -> list[Backend]:
    """Probe every backend not held by our coordinator; returns the idle, compatible ones."""
    idle = []
    to_probe = [b for b in cluster.backends if b.endpoint not in held]
    results = dict(zip([b.endpoint for b in to_probe], rpc.probe_all([b.endpoint for b in to_probe]), strict=True))
    for b in cluster.backends:
        target = f"{b.host} ({b.endpoint})"
        if b.endpoint in held:
            report.add("reachable", target, OK, "serving our coordinator")
            report.add("protocol", target, OK, "serving our coordinator (it refused nothing)")
            continue
        r = results[b.endpoint]
        if r.status is rpc.Status.DOWN:
            report.add(
                "reachable",
                target,
                FAIL,
                r.detail,
                f"start it (systemctl status sollol-rpc-server on {b.host}) and check its firewall admits this "
                "coordinator (nft list table inet sollol_rpc)",
            )
            report.add("protocol", target, SKIP, "not reachable")
        elif r.status is rpc.Status.BUSY:
            report.add(
                "reachable", target, WARN, r.detail, "another client holds it: stop that client or wait, then re-run"
            )
            report.add("protocol", target, SKIP, "busy")
        elif r.status is rpc.Status.INCOMPATIBLE:
            report.add("reachable", target, OK, "answers")
            report.add(
                "protocol",
                target,
                FAIL,
                r.detail,
                "run the same llama.cpp build everywhere: ansible-playbook playbooks/upgrade.yml",
            )
        else:
            report.add("reachable", target, OK, f"{r.latency_ms:.0f} ms to HELLO" if r.latency_ms else "answers")
            report.add("protocol", target, OK, f"RPC {r.version}")
            idle.append(b)
    return idle


def _local_processes() -> dict[str, local_cluster.LocalServer]:
    cluster = local_cluster.load(warn=lambda _m: None)
    if cluster is None:
        return {}
    return {f"{cluster.host}:{s.port}": s for s in cluster.servers}


_HOST_SCRIPT = (
    "for scope in '' --user; do "
    f"for u in $(systemctl $scope list-units --all --plain --no-legend '{UNIT_PATTERN}' 2>/dev/null "
    "| awk '{print $1}'); do "
    'echo "UNIT $scope $(systemctl $scope show -p Id,ActiveState,SubState,NRestarts,Result --value $u '
    "| tr '\\n' ' ')\"; done; done; "
    f"if nft list table {FIREWALL_TABLE} >/dev/null 2>&1; then echo FIREWALL present; "
    "elif command -v nft >/dev/null 2>&1; then echo FIREWALL absent; else echo FIREWALL no-nft; fi"
)


def read_hosts(inventory: Path, hosts: Sequence[str], timeout: float) -> dict[str, str | Exception]:
    """Run the read-only host script on each host through Ansible (one ad-hoc command, per-host JSON
    results through the tree callback); host -> its output, or the error that kept it from running."""
    with tempfile.TemporaryDirectory(prefix="sollol-doctor-") as tree:
        argv = [
            "ansible",
            ":".join(hosts),
            "-i",
            str(inventory),
            "-b",
            "-T",
            "10",
            "-t",
            tree,
            "-m",
            "ansible.builtin.shell",
            "-a",
            _HOST_SCRIPT,
        ]
        env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False"}
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        except subprocess.TimeoutExpired:
            return {h: TimeoutError(f"Ansible did not finish within {timeout:g}s") for h in hosts}
        except OSError as exc:
            return {h: exc for h in hosts}
        out: dict[str, str | Exception] = {}
        for h in hosts:
            try:
                r = json.loads((Path(tree) / h).read_text())
            except (OSError, ValueError):
                last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                out[h] = RuntimeError(f"no result from Ansible ({last[0][:160]})")
                continue
            if r.get("unreachable") or (r.get("failed") and not r.get("stdout")):
                out[h] = RuntimeError(" ".join(str(r.get("msg", "failed")).split())[:200])
            else:
                out[h] = str(r.get("stdout", ""))
        return out


def check_hosts(cluster: Cluster, opts: DoctorOptions, report: DoctorReport) -> None:
    local = _local_processes()
    remote_hosts: list[str] = []
    for b in cluster.backends:
        if b.endpoint in local:
            s = local[b.endpoint]
            alive = procs.is_ours(s.pid, s.start_time, s.argv0)
            report.add(
                "unit",
                b.host,
                OK if alive else FAIL,
                f"`sollol-ops local` process pid {s.pid} {'running' if alive else 'gone'} (no unit)",
                "" if alive else "sollol-ops local stop && sollol-ops local start",
            )
            report.add("firewall", b.host, SKIP, "local rpc-server bound to loopback")
        elif b.host not in remote_hosts:
            remote_hosts.append(b.host)
    if not remote_hosts:
        return
    if not opts.hosts:
        for h in remote_hosts:
            report.add("unit", h, SKIP, "--no-hosts")
            report.add("firewall", h, SKIP, "--no-hosts")
        return
    for host, result in read_hosts(cluster.inventory, remote_hosts, opts.ansible_timeout).items():
        if isinstance(result, Exception):
            advice = f"check `ansible {host} -m ping -i {cluster.inventory}` works from here"
            report.add("unit", host, FAIL, f"could not read the host: {result}", advice)
            report.add("firewall", host, SKIP, "host not readable")
            continue
        _judge_host(host, result, report)


def _judge_host(host: str, output: str, report: DoctorReport) -> None:
    units = [line.split() for line in output.splitlines() if line.startswith("UNIT ")]
    if not units:
        report.add(
            "unit", host, FAIL, "no sollol-rpc-server unit", "provision it: sollol-ops provision --limit " + host
        )
    for fields in units:
        scope = "--user " if "--user" in fields else ""
        values = [f for f in fields[1:] if f != "--user"]
        if len(values) < 5:
            report.add("unit", host, WARN, f"unreadable unit state: {' '.join(values)}")
            continue
        unit, active, sub, restarts, result = values[:5]
        journal = f"journalctl {scope}-u {unit} -n 50 on {host}"
        if active != "active":
            report.add("unit", f"{host} {unit}", FAIL, f"{active}/{sub}, last result {result}", journal)
        elif restarts.isdigit() and int(restarts) > 0:
            report.add(
                "unit",
                f"{host} {unit}",
                WARN,
                f"active, but restarted {restarts} time(s) (last result {result})",
                f"find why it crashed: {journal}",
            )
        else:
            report.add("unit", f"{host} {unit}", OK, f"active/{sub}, no restarts")
    firewall = next((line.split()[1] for line in output.splitlines() if line.startswith("FIREWALL ")), "unknown")
    if firewall == "present":
        report.add("firewall", host, OK, f"table {FIREWALL_TABLE} loaded")
    elif firewall == "no-nft":
        report.add(
            "firewall",
            host,
            FAIL,
            "nftables is not installed",
            "rpc-server has no authentication: sollol-ops provision installs nftables and the table",
        )
    else:
        report.add(
            "firewall",
            host,
            FAIL,
            f"table {FIREWALL_TABLE} is not loaded: every host can reach the rpc-servers",
            f"sollol-ops provision --limit {host} (or systemctl restart sollol-rpc-firewall there)",
        )


def check_memory(cluster: Cluster, opts: DoctorOptions, idle: list[Backend], report: DoctorReport) -> None:
    from sollol_ops.cluster.inventory import HOST_DEVICE
    from sollol_ops.cluster.placement import build_slots, is_local_address, plan_placement
    from sollol_ops.cluster.toolchain import find_toolchain
    from sollol_ops.model.gguf_info import read_gguf
    from sollol_ops.model.ollama import resolve_model
    from sollol_ops.serve.command import list_devices

    assert opts.model is not None
    try:
        resolved = resolve_model(opts.model, opts.ollama_models)
        info = resolved.gguf or read_gguf(resolved.blob)
    except SollolError as exc:
        report.add("memory", opts.model, FAIL, str(exc), "sollol-ops models lists what the store holds")
        return
    probes = [(b, r) for b, r in zip(idle, rpc.probe_all([b.endpoint for b in idle]), strict=True) if r.ok]
    if not probes:
        report.add("memory", resolved.ref, SKIP, "no idle, compatible backend to place it on")
        return
    try:
        offer = cluster.offering_coordinator(is_local_address)  # the coordinator's own memory, as `up` uses it
        devices = list_devices(find_toolchain()) if offer is not None and offer.device != HOST_DEVICE else []
        slots = build_slots(probes, coordinator=offer, local_devices=devices)
        plan = plan_placement(info, slots, opts.n_ctx, resolved.ref)
    except SollolError as exc:
        report.add(
            "memory",
            resolved.ref,
            FAIL,
            str(exc),
            "add workers, declare more memory (sollol_rpc_memory_mib, sollol_coordinator_memory_mib), use a smaller "
            "quantization or a lower -c",
        )
        return
    need = sum(s.need_bytes for s in plan.shares) / 2**20
    usable = sum(s.slot.usable_bytes for s in plan.shares) / 2**20
    report.add("memory", resolved.ref, OK, f"fits at -c {opts.n_ctx}: needs {need:,.0f} of {usable:,.0f} MiB usable")


def check_links(idle: list[Backend], opts: DoctorOptions, report: DoctorReport) -> dict[str, tuple[float, float]]:
    """Measure each idle worker's link; endpoint -> (bit/s, round trip ms) of those measured."""
    measured: dict[str, tuple[float, float]] = {}
    for b in idle:
        target = f"{b.host} ({b.endpoint})"
        result = rpc_link.measure_link(b.endpoint, opts.link_bytes, uploads=opts.link_uploads)
        if not result.ok:
            report.add("link", target, WARN, f"not measured: {result.detail}", "re-run doctor when the worker is idle")
            continue
        detail = f"{_format_bps(result.throughput_bps)}, round trip {result.rtt_ms:.2f} ms"
        measured[b.endpoint] = (result.throughput_bps, result.rtt_ms)
        if result.throughput_bps < opts.min_link_bps:
            report.add(
                "link",
                target,
                FAIL,
                f"{detail}: below the {_format_bps(opts.min_link_bps)} minimum",
                "loading and every token cross this link: use wired gigabit or faster, or leave this worker out",
            )
        else:
            report.add("link", target, OK, detail)
    return measured


def run(
    cluster: Cluster,
    opts: DoctorOptions,
    root: Path | None = None,
    on_step: Callable[[str], None] | None = None,
) -> DoctorReport:
    step = on_step or (lambda _m: None)
    report = DoctorReport()
    state = coordinator.Coordinator(root).load()
    held = set(state.backends) if state is not None and coordinator.is_alive(state) else set()
    step(f"probing {len(cluster.backends)} backend(s)")
    idle = check_reachable(cluster, held, report)
    step("reading units and firewall on the hosts")
    check_hosts(cluster, opts, report)
    if opts.model:
        step(f"placing {opts.model}")
        check_memory(cluster, opts, idle, report)
    if idle:
        step(f"measuring the link to {len(idle)} idle backend(s)")
        measured = check_links(idle, opts, report)
        try:  # kept for the gateway's page (serve/doctor_links.py); the checks stand without it
            if measured:
                doctor_links.record(measured, root)
        except SollolError as exc:
            step(f"the link figures were not kept: {exc}")
    return report
