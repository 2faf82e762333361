"""Staging: each worker's share of a model's weights put into its rpc-server's -c cache before the first
load, recorded in a ledger, verified and pruned. Docs: docs/staging.md.

Which tensors go where follows from the placement plan `up` makes (sollol_ops.cluster.placement): a share's
repeating blocks ``blk.<i>.*`` and, for the share holding the output layer, ``output.weight`` (or
``token_embd.weight`` for a model with tied embeddings: llama.cpp loads a duplicate of it there). Only
tensors larger than llama.cpp's HASH_THRESHOLD (10 MiB) go through the cache; smaller ones are always sent.
The upload itself is sollol_ops.stage.worker, run on the worker (here, for rpc-servers on this host).

The ledger (``$XDG_STATE_HOME/sollol-ops/staging.json``) records per model and rpc-server the cache files
staged, with size and sha256 taken at staging time. `verify` re-hashes them with hashlib and removes any
file whose content no longer matches (llama.cpp trusts a cache file's name: a corrupt file would be loaded
as weights); `prune` removes cache files no ledger entry needs (regular files named by 16 hex digits only).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sollol_ops import procs
from sollol_ops.cluster.inventory import Backend
from sollol_ops.cluster.placement import Plan, is_local_address
from sollol_ops.errors import BackendError, StageError, UsageError
from sollol_ops.model.gguf_info import GGUFInfo, TensorEntry, TensorTable, read_gguf, read_tensor_table
from sollol_ops.serve import statefile
from sollol_ops.stage.worker import (
    HASH_THRESHOLD,
    Piece,
    StagedFile,
    prune_files,
    stage_pieces,
    verify_files,
)

if TYPE_CHECKING:
    from sollol_ops.cluster.provision import TaskEvent

_BLOCK = re.compile(r"^blk\.(\d+)\.")
LEDGER_WHAT = "staging ledger"


# --------------------------------------------------------------------------- what goes where


@dataclass
class WorkerShare:
    """The uploads one rpc-server receives when the model loads (its devices' layers, maybe the output)."""

    endpoint: str
    device: int
    layers: list[int]
    output: bool
    tensors: list[TensorEntry]

    @property
    def cached(self) -> list[TensorEntry]:
        """The tensors that go through its cache (larger than HASH_THRESHOLD)."""
        return [t for t in self.tensors if t.n_bytes > HASH_THRESHOLD]

    def pieces(self, table: TensorTable) -> list[Piece]:
        return [Piece(t.name, table.file_offset(t), t.n_bytes) for t in self.cached]


def output_tensor_names(table: TensorTable) -> list[str]:
    names = {t.name for t in table.tensors}
    head = "output.weight" if "output.weight" in names else "token_embd.weight"
    return [n for n in (head, "output_norm.weight") if n in names]


def worker_shares(plan: Plan, table: TensorTable) -> list[WorkerShare]:
    """Per rpc-server (in --rpc order), the tensors llama.cpp will upload to it for this plan."""
    by_layer: dict[int, list[TensorEntry]] = {}
    for t in table.tensors:
        m = _BLOCK.match(t.name)
        if m:
            by_layer.setdefault(int(m.group(1)), []).append(t)
    out: dict[str, WorkerShare] = {}
    layer = 0
    for share in plan.shares:
        endpoint = share.slot.backend.endpoint
        ws = out.setdefault(endpoint, WorkerShare(endpoint, share.slot.device_index, [], False, []))
        layers = list(range(layer, layer + share.layers))
        layer += share.layers
        ws.layers += layers
        for i in layers:
            ws.tensors += by_layer.get(i, [])
        if share.has_output:
            ws.output = True
            wanted = set(output_tensor_names(table))
            ws.tensors += [t for t in table.tensors if t.name in wanted]
    return list(out.values())


# --------------------------------------------------------------------------- the ledger


@dataclass
class LedgerFile:
    tensor: str
    file: str
    size: int
    sha256: str


@dataclass
class LedgerEntry:
    model: str
    digest: str
    endpoint: str
    cache_dir: str
    where: str  # "this host", or "ansible:<inventory host>"
    staged_at: float
    files: list[LedgerFile] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class Ledger:
    entries: list[LedgerEntry] = field(default_factory=list)

    def record(self, entry: LedgerEntry) -> None:
        self.entries = [e for e in self.entries if (e.digest, e.endpoint) != (entry.digest, entry.endpoint)]
        self.entries.append(entry)

    def for_model(self, model: str) -> list[LedgerEntry]:
        return [e for e in self.entries if e.model == model]

    def needed(self, endpoint: str, cache_dir: str) -> set[str]:
        return {f.file for e in self.entries if (e.endpoint, e.cache_dir) == (endpoint, cache_dir) for f in e.files}


def ledger_path(root: Path | None = None) -> Path:
    from sollol_ops.paths import state_dir

    return (root or state_dir()) / "staging.json"


def load_ledger(root: Path | None = None, warn: statefile.Warn = statefile.warn_stderr) -> Ledger:
    return statefile.load(ledger_path(root), Ledger, LEDGER_WHAT, warn) or Ledger()


def save_ledger(ledger: Ledger, root: Path | None = None) -> None:
    statefile.write(ledger_path(root), ledger, LEDGER_WHAT)


def ledger_lock(root: Path | None = None) -> contextlib.AbstractContextManager[None]:
    return statefile.exclusive(ledger_path(root).with_suffix(".lock"), "sollol-ops stage", "the staging ledger")


# --------------------------------------------------------------------------- where a local rpc-server caches


def rpc_cache_dir_of(argv: Sequence[str], environ: dict[str, str]) -> Path | None:
    """rpc-server's cache directory for its command line and environment (tools/rpc/rpc-server.cpp):
    None without -c; else $LLAMA_CACHE/rpc, $XDG_CACHE_HOME/llama.cpp/rpc or ~/.cache/llama.cpp/rpc."""
    if not any(a in ("-c", "--cache") for a in argv[1:]):
        return None
    if environ.get("LLAMA_CACHE"):
        return Path(environ["LLAMA_CACHE"]) / "rpc"
    if environ.get("XDG_CACHE_HOME"):
        return Path(environ["XDG_CACHE_HOME"]) / "llama.cpp" / "rpc"
    return Path(environ.get("HOME", "/root")) / ".cache" / "llama.cpp" / "rpc"


def find_cache_dir(endpoint: str) -> Path:
    """The cache directory of the rpc-server listening on this host at `endpoint`, read from its process."""
    port = int(endpoint.rpartition(":")[2])
    pid = procs.listener_pid(port)
    hint = f"pass --cache-dir {endpoint}=DIR"
    if pid is None:
        raise StageError(f"cannot find the process listening on {endpoint} on this host (another user's?); {hint}")
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    except OSError as exc:
        raise StageError(f"cannot read process {pid} listening on {endpoint}: {exc.strerror}; {hint}") from None
    environ = dict(item.split("=", 1) for item in raw if "=" in item)
    found = rpc_cache_dir_of(argv, environ)
    if found is None:
        raise StageError(
            f"the rpc-server on {endpoint} (pid {pid}) runs without -c: it has no tensor cache to stage into; "
            "restart it with -c (roles/rpc_server: rpc_server_cache: true)"
        )
    return found


def parse_cache_dirs(items: Sequence[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        endpoint, sep, directory = item.partition("=")
        if not sep or ":" not in endpoint or not directory:
            raise UsageError(f"--cache-dir {item!r}: write it ENDPOINT=DIR, e.g. 127.0.0.1:50052=/var/cache/rpc")
        out[endpoint] = Path(directory)
    return out


# --------------------------------------------------------------------------- staging, verifying, pruning


@dataclass
class Prepared:
    """A model placed as `up` would place it: what each rpc-server will be sent."""

    model: str
    digest: str
    blob: Path
    info: GGUFInfo
    plan: Plan
    table: TensorTable
    shares: list[WorkerShare]


def prepare(model: str, backends: Sequence[Backend], n_ctx: int, ollama_models: str | None = None) -> Prepared:
    """Resolve, probe (every backend must be ready: a held one is refused), plan as `up` plans."""
    from sollol_ops.model.ollama import resolve_model

    resolved = resolve_model(model, ollama_models)
    info = resolved.gguf or read_gguf(resolved.blob)
    return place(resolved.ref, resolved.digest, resolved.blob, info, backends, n_ctx)


def place(model: str, digest: str, blob: Path, info: GGUFInfo, backends: Sequence[Backend], n_ctx: int) -> Prepared:
    """Probe and plan a resolved model exactly as `up` (lifecycle.plan_command) does."""
    from sollol_ops.cluster import rpc
    from sollol_ops.cluster.placement import build_slots, describe_backend_problem, plan_placement

    table = read_tensor_table(blob)
    probes = list(zip(backends, rpc.probe_all([b.endpoint for b in backends]), strict=True))
    bad = [(b, r) for b, r in probes if not r.ok]
    if bad:
        busy = any(r.status is rpc.Status.BUSY for _, r in bad)
        hint = (
            "rpc-server serves one client at a time: stage before `up`, or run `sollol-ops down` first"
            if busy
            else "fix them (systemctl status sollol-rpc-server); staging places the model on every backend, as `up`"
        )
        raise BackendError("; ".join(describe_backend_problem(b, r) for b, r in bad) + f"; {hint}")
    plan = plan_placement(info, build_slots(probes), n_ctx, model)
    return Prepared(model, digest, blob, info, plan, table, worker_shares(plan, table))


# --------------------------------------------------------------------------- packs: a worker's share as a file


def write_pack(share: WorkerShare, table: TensorTable, directory: Path) -> tuple[Path, Path]:
    """The worker's cached tensors, back to back, in `<dir>/<endpoint>.pack`, and the manifest the worker's
    staging client reads (`python3 -m sollol_ops.stage.worker --source PACK --manifest MANIFEST`)."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = share.endpoint.replace(":", "_").replace("/", "_")
    pack, manifest = directory / f"{stem}.pack", directory / f"{stem}.json"
    pieces = []
    with open(table.path, "rb") as src, open(pack, "wb") as dst:
        at = 0
        for t in share.cached:
            left, offset = t.n_bytes, table.file_offset(t)
            while left:
                n = os.copy_file_range(src.fileno(), dst.fileno(), left, offset, at + t.n_bytes - left)
                if n == 0:
                    raise StageError(f"{table.path} ends inside tensor {t.name}")
                left -= n
                offset += n
            pieces.append({"name": t.name, "offset": at, "size": t.n_bytes})
            at += t.n_bytes
    manifest.write_text(json.dumps({"endpoint": share.endpoint, "device": share.device, "pieces": pieces}))
    return pack, manifest


def worker_argv(python: str, endpoint: str, cache_dir: Path, pack: Path, manifest: Path, device: int = 0) -> list[str]:
    """The staging client's command line on a worker (PYTHONPATH must reach sollol_ops: see worker_pythonpath)."""
    return [
        python, "-m", "sollol_ops.stage.worker", "--endpoint", endpoint, "--cache-dir", str(cache_dir),
        "--source", str(pack), "--manifest", str(manifest), "--device", str(device),
    ]  # fmt: skip


def worker_pythonpath() -> str:
    """The directory holding this sollol_ops package (the staging client needs only the standard library)."""
    return str(Path(__file__).resolve().parents[2])


def record(model: str, digest: str, where: str, results: Sequence[StageResult], root: Path | None = None) -> None:
    """Record staged files in the ledger (one entry per model and rpc-server, replacing an older one)."""
    with ledger_lock(root):
        ledger = load_ledger(root)
        for r in results:
            if not r.files:  # nothing over 10 MiB goes to this rpc-server: nothing to record
                continue
            files = [LedgerFile(f.tensor, f.file, f.size, f.sha256) for f in r.files]
            ledger.record(LedgerEntry(model, digest, r.endpoint, r.cache_dir, where, time.time(), files))
        save_ledger(ledger, root)


def result_from_worker(share: WorkerShare, output: str) -> StageResult:
    """The staging client's JSON output as a StageResult (StageError when it is not what it prints)."""
    try:
        data = json.loads(output)
        files = [StagedFile(**f) for f in data["files"]]
        return StageResult(share.endpoint, str(data["cache_dir"]), share.layers, share.output, files)
    except (ValueError, KeyError, TypeError) as exc:
        raise StageError(
            f"the staging client on {share.endpoint} printed no result ({exc}): {output[:200]!r}"
        ) from None


@dataclass
class StageResult:
    endpoint: str
    cache_dir: str
    layers: list[int]
    output: bool
    files: list[StagedFile]

    @property
    def new_bytes(self) -> int:
        return sum(f.size for f in self.files if f.new)


Stager = Callable[[WorkerShare, Path], list[StagedFile]]


def stage_local(
    model: str,
    digest: str,
    blob: Path,
    shares: Sequence[WorkerShare],
    table: TensorTable,
    cache_dirs: dict[str, Path],
    root: Path | None = None,
) -> list[StageResult]:
    """Stage the shares of rpc-servers on this host, all at once, from the model file itself; record them."""
    remote = [s.endpoint for s in shares if not is_local_address(s.endpoint.rpartition(":")[0])]
    if remote:
        raise StageError(
            f"{', '.join(remote)} {'is' if len(remote) == 1 else 'are'} not on this host: stage remote workers "
            "with playbooks/stage.yml (sollol-ops stage --via-ansible)"
        )
    dirs = {s.endpoint: cache_dirs.get(s.endpoint) or find_cache_dir(s.endpoint) for s in shares if s.cached}

    def one(share: WorkerShare) -> StageResult:
        if not share.cached:
            return StageResult(share.endpoint, "", share.layers, share.output, [])
        files = stage_pieces(share.endpoint, dirs[share.endpoint], blob, share.pieces(table), device=share.device)
        return StageResult(share.endpoint, str(dirs[share.endpoint]), share.layers, share.output, files)

    with ThreadPoolExecutor(max_workers=max(1, len(shares))) as pool:
        results = list(pool.map(one, shares))
    record(model, digest, "this host", results, root)
    return results


def stage_via_commands(
    prepared: Prepared,
    pack_dir: Path,
    cache_dirs: dict[str, Path],
    wrap: Callable[[WorkerShare], list[str]],
    where: str,
    root: Path | None = None,
    timeout: float = 6 * 3600.0,
) -> list[StageResult]:
    """Write each worker's pack, run the staging client for every worker at once, each under `wrap(share)`
    (e.g. `ip netns exec NS`: the worker's own network, so its upload is loopback there), record the results."""
    import subprocess
    import sys

    missing = [s.endpoint for s in prepared.shares if s.cached and s.endpoint not in cache_dirs]
    if missing:
        raise StageError(f"no cache directory known for {', '.join(missing)}")
    env = {**os.environ, "PYTHONPATH": worker_pythonpath()}

    def one(share: WorkerShare) -> StageResult:
        if not share.cached:
            return StageResult(share.endpoint, str(cache_dirs.get(share.endpoint, "")), share.layers, share.output, [])
        pack, manifest = write_pack(share, prepared.table, pack_dir)
        argv = [*wrap(share), *worker_argv(sys.executable, share.endpoint, cache_dirs[share.endpoint], pack, manifest)]
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise StageError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"{argv[0]} failed")
        return result_from_worker(share, proc.stdout)

    with ThreadPoolExecutor(max_workers=max(1, len(prepared.shares))) as pool:
        results = list(pool.map(one, prepared.shares))
    record(prepared.model, prepared.digest, where, results, root)
    return results


@dataclass
class AnsibleJob:
    """One rpc-server's part of a run of playbooks/stage.yml."""

    host: str  # inventory host
    endpoint: str
    manifest: Path
    pack: Path | None = None  # stage only
    cache_dir: str = ""  # "" = the rpc_server role's layout on that host

    def extravar(self) -> dict[str, object]:
        return {
            "endpoint": self.endpoint,
            "port": int(self.endpoint.rpartition(":")[2]),
            "pack": str(self.pack or ""),
            "manifest": str(self.manifest),
            "cache_dir": self.cache_dir,
        }


def run_stage_playbook(
    action: str,
    jobs: Sequence[AnsibleJob],
    inventory: Path,
    on_event: Callable[[TaskEvent], None] | None = None,
) -> dict[str, dict[str, object]]:
    """playbooks/stage.yml with stage_action=`action` (stage | verify | prune): every worker in parallel runs the
    staging client for its jobs; each job's JSON result by endpoint. StageError naming the host and task when a
    job brought nothing back."""
    from sollol_ops.cluster.provision import default_playbook, run_playbook

    by_host: dict[str, list[dict[str, object]]] = {}
    for job in jobs:
        by_host.setdefault(job.host, []).append(job.extravar())
    failures: list[str] = []

    def seen(event: TaskEvent) -> None:
        if event.kind in ("failed", "unreachable"):
            failures.append(f"{event.host}: {event.task}: {event.message}")
        if on_event is not None:
            on_event(event)

    with tempfile.TemporaryDirectory(prefix="sollol-stage-results-") as tmp:
        extravars = {
            "stage_action": action,
            "stage_jobs": by_host,
            "stage_client_dir": str(Path(worker_pythonpath()) / "sollol_ops"),
            "stage_results_dir": tmp,
        }
        run = run_playbook(default_playbook("stage"), inventory, extravars=extravars, on_event=seen)
        out: dict[str, dict[str, object]] = {}
        for job in jobs:
            path = Path(tmp) / f"{job.endpoint.replace(':', '_')}.json"
            if path.is_file():
                try:
                    out[job.endpoint] = json.loads(path.read_text())
                except ValueError:
                    pass
    missing = sorted({j.host for j in jobs if j.endpoint not in out})
    if run.rc != 0 or missing:
        raise StageError(
            f"playbooks/stage.yml ({action}) failed (exit {run.rc}) on {', '.join(missing) or 'some host'}: "
            + (failures[0] if failures else "see the host's rpc-server (systemctl status sollol-rpc-server)")
        )
    return out


def stage_via_ansible(
    prepared: Prepared,
    backends: Sequence[Backend],
    inventory: Path,
    cache_dirs: dict[str, Path],
    root: Path | None = None,
    on_event: Callable[[TaskEvent], None] | None = None,
) -> list[StageResult]:
    """Write each rpc-server's pack here, then playbooks/stage.yml sends every worker its packs in parallel and
    runs the staging client there against its own rpc-server; the results come back and are recorded."""
    host_of = {b.endpoint: b.host for b in backends}
    with tempfile.TemporaryDirectory(prefix="sollol-stage-") as tmp:
        jobs = []
        for share in prepared.shares:
            if share.cached:
                pack, manifest = write_pack(share, prepared.table, Path(tmp))
                cache = str(cache_dirs.get(share.endpoint, ""))
                jobs.append(AnsibleJob(host_of[share.endpoint], share.endpoint, manifest, pack, cache))
        outputs = run_stage_playbook("stage", jobs, inventory, on_event)
    results = [
        result_from_worker(s, json.dumps(outputs[s.endpoint]))
        if s.cached
        else StageResult(s.endpoint, "", s.layers, s.output, [])
        for s in prepared.shares
    ]
    for r in results:
        record(prepared.model, prepared.digest, f"ansible:{host_of[r.endpoint]}", [r], root)
    return results


@dataclass
class VerifyRow:
    endpoint: str
    cache_dir: str
    model: str
    file: str
    state: str  # ok | missing | corrupt (removed) | remote (not checked: no inventory)


def _remote_host(entry: LedgerEntry) -> str | None:
    return entry.where.removeprefix("ansible:") if entry.where.startswith("ansible:") else None


def verify(root: Path | None = None, model: str | None = None, inventory: Path | None = None) -> list[VerifyRow]:
    """Re-hash every staged file (sha256) against the ledger: on this host directly, on workers staged through
    Ansible with playbooks/stage.yml (when `inventory` is given). A file whose content changed is removed; it and
    missing ones leave the ledger, so that the next load sends those tensors again."""
    rows: list[VerifyRow] = []
    with ledger_lock(root):
        ledger = load_ledger(root)
        entries = [e for e in ledger.entries if model is None or e.model == model]
        states: dict[tuple[str, str, str], str] = {}
        groups: dict[tuple[str, str], list[LedgerFile]] = {}
        for e in entries:
            groups.setdefault((e.endpoint, e.cache_dir), []).extend(e.files)
        remote_of = {(e.endpoint, e.cache_dir): _remote_host(e) for e in entries}
        local = [k for k in groups if remote_of[k] is None]
        remote = [k for k in groups if remote_of[k] is not None]
        for endpoint, directory in local:
            files = [(f.file, f.size, f.sha256) for f in groups[(endpoint, directory)]]
            for name, state in verify_files(Path(directory), files):
                states[(endpoint, directory, name)] = state
        if remote and inventory is not None:
            with tempfile.TemporaryDirectory(prefix="sollol-verify-") as tmp:
                jobs = []
                for endpoint, directory in remote:
                    manifest = Path(tmp) / f"{endpoint.replace(':', '_')}.json"
                    files = [
                        {"file": f.file, "size": f.size, "sha256": f.sha256} for f in groups[(endpoint, directory)]
                    ]
                    manifest.write_text(json.dumps({"files": files}))
                    jobs.append(AnsibleJob(str(remote_of[(endpoint, directory)]), endpoint, manifest, None, directory))
                outputs = run_stage_playbook("verify", jobs, inventory)
            for endpoint, directory in remote:
                for item in outputs[endpoint].get("verify", []):  # type: ignore[union-attr]
                    states[(endpoint, directory, str(item["file"]))] = str(item["state"])
        for e in entries:
            keep = []
            for f in e.files:
                state = states.get((e.endpoint, e.cache_dir, f.file), "remote")
                rows.append(VerifyRow(e.endpoint, e.cache_dir, e.model, f.file, state))
                if state in ("ok", "remote"):
                    keep.append(f)
            e.files = keep
        ledger.entries = [e for e in ledger.entries if e.files]  # nothing of it left: a stale entry
        save_ledger(ledger, root)
    return rows


@dataclass
class PruneRow:
    endpoint: str
    cache_dir: str
    file: str
    size: int


def prune(
    cache_dirs: dict[str, Path], root: Path | None = None, dry_run: bool = False, inventory: Path | None = None
) -> list[PruneRow]:
    """Remove cache files no ledger entry needs from the given cache directories (endpoint -> dir, on this host),
    from every cache directory the ledger names on this host, and (with `inventory`) from those of workers
    staged through Ansible. Only regular files named by 16 hex digits are ever removed."""
    removed: list[PruneRow] = []
    with ledger_lock(root):
        ledger = load_ledger(root)
        dirs = {(endpoint, str(d)) for endpoint, d in cache_dirs.items()}
        remote: dict[tuple[str, str], str] = {}
        for e in ledger.entries:
            host = _remote_host(e)
            if host is None:
                dirs.add((e.endpoint, e.cache_dir))
            else:
                remote[(e.endpoint, e.cache_dir)] = host
        for endpoint, directory in sorted(dirs):
            for name, size in prune_files(Path(directory), ledger.needed(endpoint, directory), dry_run):
                removed.append(PruneRow(endpoint, directory, name, size))
        if remote and inventory is not None and not dry_run:
            with tempfile.TemporaryDirectory(prefix="sollol-prune-") as tmp:
                jobs = []
                for (endpoint, directory), host in sorted(remote.items()):
                    manifest = Path(tmp) / f"{endpoint.replace(':', '_')}.json"
                    manifest.write_text(json.dumps({"keep": sorted(ledger.needed(endpoint, directory))}))
                    jobs.append(AnsibleJob(host, endpoint, manifest, None, directory))
                outputs = run_stage_playbook("prune", jobs, inventory)
            for endpoint, directory in sorted(remote):
                for item in outputs[endpoint].get("pruned", []):  # type: ignore[union-attr]
                    removed.append(PruneRow(endpoint, directory, str(item["file"]), int(item["size"])))
    return removed


def staged_summary(ledger: Ledger) -> list[dict[str, object]]:
    """One row per ledger entry, for `status` and `models`."""
    return [
        {
            "model": e.model,
            "digest": e.digest,
            "endpoint": e.endpoint,
            "where": e.where,
            "cache_dir": e.cache_dir,
            "files": len(e.files),
            "bytes": e.bytes,
            "staged_at": e.staged_at,
            "files_detail": [vars(f) for f in e.files],
        }
        for e in ledger.entries
    ]


def describe_plan(shares: Sequence[WorkerShare]) -> list[dict[str, object]]:
    return [
        {
            "endpoint": s.endpoint,
            "layers": f"{s.layers[0]}-{s.layers[-1]}" if s.layers else "-",
            "output": s.output,
            "tensors": len(s.tensors),
            "cached_tensors": len(s.cached),
            "cached_bytes": sum(t.n_bytes for t in s.cached),
            "always_sent_bytes": sum(t.n_bytes for t in s.tensors if t.n_bytes <= HASH_THRESHOLD),
        }
        for s in shares
    ]
