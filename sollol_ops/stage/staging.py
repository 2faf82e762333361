"""Staging: each worker's share of a model's weights put into its rpc-server's -c cache before the first
load, from this host, through a command per worker (ip netns exec) or through Ansible, and recorded in the
ledger. Docs: docs/staging.md.

What each rpc-server is sent is sollol_ops.stage.shares; the upload itself is sollol_ops.stage.worker, run on
the worker (here, for rpc-servers on this host); the ledger is sollol_ops.stage.ledger, `verify` and `prune`
are sollol_ops.stage.upkeep.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from sollol_ops.cluster.inventory import Backend
from sollol_ops.cluster.placement import Plan, is_local_address
from sollol_ops.errors import BackendError, StageError
from sollol_ops.model.gguf_header import TensorTable, read_tensor_table
from sollol_ops.model.gguf_info import GGUFInfo, read_gguf
from sollol_ops.stage.cachedir import find_cache_dir
from sollol_ops.stage.ledger import StageResult, record
from sollol_ops.stage.remote import AnsibleJob, run_stage_playbook, worker_argv, worker_pythonpath
from sollol_ops.stage.shares import WorkerShare, worker_shares
from sollol_ops.stage.worker import StagedFile, stage_pieces

if TYPE_CHECKING:
    from sollol_ops.cluster.provision import TaskEvent


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


# copy_file_range's refusals that a plain copy does not have: another filesystem (the pack's temporary directory on
# a tmpfs, the model on disk), a kernel or filesystem without it.
_NO_COPY_RANGE = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP)
_CHUNK = 1 << 20


def _copy_range(src: BinaryIO, dst: BinaryIO, offset: int, at: int, size: int, short: str) -> None:
    """`size` bytes of `src` from `offset` to `dst` at `at`: in the kernel where it can, else in 1 MiB reads."""
    left = size
    while left:
        try:
            n = os.copy_file_range(src.fileno(), dst.fileno(), left, offset, at)
        except OSError as exc:
            if exc.errno not in _NO_COPY_RANGE:
                raise
            break
        if n == 0:
            raise StageError(short)
        left, offset, at = left - n, offset + n, at + n
    src.seek(offset)
    dst.seek(at)
    while left:
        chunk = src.read(min(left, _CHUNK))
        if not chunk:
            raise StageError(short)
        dst.write(chunk)
        left -= len(chunk)
    dst.flush()  # the next piece may go through copy_file_range again, past the buffer


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
            _copy_range(src, dst, table.file_offset(t), at, t.n_bytes, f"{table.path} ends inside tensor {t.name}")
            pieces.append({"name": t.name, "offset": at, "size": t.n_bytes})
            at += t.n_bytes
    manifest.write_text(json.dumps({"endpoint": share.endpoint, "device": share.device, "pieces": pieces}))
    return pack, manifest


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
