"""The staging client that runs ON a worker: it uploads that worker's share of a model's weights to its own
rpc-server over loopback, so that the server's -c cache holds them before the first load.

Why this works (pinned llama.cpp, ggml/src/ggml-rpc/ggml-rpc.cpp): llama.cpp's client sends each weight
upload larger than HASH_THRESHOLD (10 MiB) first as SET_TENSOR_HASH with the 64-bit FNV-1a of exactly the
bytes of that ggml_backend_tensor_set call; the loader (src/llama-model-loader.cpp) makes one such call per
tensor with the tensor's whole data. An rpc-server run with -c answers "found" when ``<cache dir>/<hash>``
exists; on a miss the client uploads with SET_TENSOR and the cache flag, and the server writes the bytes
to that file, naming it by its own FNV-1a. So this client sends, per tensor, the same bytes with SET_TENSOR
and the cache flag into a scratch buffer: the server computes the name itself and the hashes match by
construction (no FNV in Python, which would be far too slow for GB models).

It is verified, not assumed: after each upload a round trip (BUFFER_GET_BASE) proves the server carried it
out, then the file the server wrote is found in the cache directory (a new name, or one rewritten just now,
of the tensor's size) and its sha256 must equal the sha256 of the source bytes. The result, per tensor:
file name, size, sha256: what the ledger records.

Standard library only (it is copied to workers that have no sollol-ops): this module, sollol_ops.cluster.rpc,
sollol_ops.cluster.wire and sollol_ops.errors. Run as ``python3 -m sollol_ops.stage.worker --endpoint
127.0.0.1:50052 --cache-dir DIR --source FILE --manifest MANIFEST.json``; prints the result as JSON; a failure
is one line and exit 15.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from sollol_ops.cluster import rpc, wire
from sollol_ops.errors import StageError

# Uploads larger than this are hashed by llama.cpp's client (HASH_THRESHOLD in ggml-rpc.cpp).
HASH_THRESHOLD = 10 * 1024 * 1024
CACHE_NAME = re.compile(r"^[0-9a-f]{16}$")
_CHUNK = 8 << 20
# File times come from a coarse kernel clock: a file written after `t` may carry a time a little before it.
_MTIME_SLACK_NS = 2_000_000_000


@dataclass(frozen=True)
class Piece:
    """One upload: `size` bytes at `offset` of the source file (a tensor's whole data)."""

    name: str
    offset: int
    size: int


@dataclass(frozen=True)
class StagedFile:
    tensor: str
    file: str  # 16 hex digits: the name rpc-server gave it (FNV-1a of the bytes)
    size: int
    sha256: str
    new: bool  # False when the server already had it


def sha256_range(fh: BinaryIO, offset: int, size: int) -> str:
    digest = hashlib.sha256()
    fh.seek(offset)
    left = size
    while left:
        chunk = fh.read(min(_CHUNK, left))
        if not chunk:
            raise StageError(f"{getattr(fh, 'name', 'the source')} ends before byte {offset + size}")
        digest.update(chunk)
        left -= len(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return sha256_range(fh, 0, os.fstat(fh.fileno()).st_size)


def cache_entries(cache_dir: Path) -> dict[str, os.stat_result]:
    """Regular files named like rpc-server's cache files (16 hex digits) in `cache_dir`; nothing else."""
    out: dict[str, os.stat_result] = {}
    try:
        with os.scandir(cache_dir) as it:
            for entry in it:
                if CACHE_NAME.match(entry.name) and entry.is_file(follow_symlinks=False):
                    out[entry.name] = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StageError(f"cannot read the cache directory {cache_dir}: {exc.strerror or exc}") from exc
    return out


def _written_file(cache_dir: Path, before: dict[str, os.stat_result], t0: int, size: int, sha: str) -> tuple[str, bool]:
    after = cache_entries(cache_dir)
    candidates = [
        name
        for name, st in after.items()
        if st.st_size == size and (name not in before or st.st_mtime_ns >= t0 - _MTIME_SLACK_NS)
    ]
    candidates.sort(key=lambda n: (n in before, -after[n].st_mtime_ns))
    for name in candidates:
        if sha256_file(cache_dir / name) == sha:
            return name, name not in before
    raise StageError(
        f"the rpc-server wrote no cache file of {size} bytes with the tensor's content into {cache_dir}: "
        "is it running with -c, and is this its cache directory ($LLAMA_CACHE/rpc)?"
    )


def stage_pieces(
    endpoint: str,
    cache_dir: Path,
    source: Path,
    pieces: Sequence[Piece],
    *,
    device: int = 0,
    reply_timeout: float = 600.0,
    deadline_s: float = 6 * 3600.0,
) -> list[StagedFile]:
    """Upload each piece to the rpc-server at `endpoint` (which must write its cache into `cache_dir`) and
    verify the file it wrote. Refuses (StageError) when the server is held by another client."""
    pieces = [p for p in pieces if p.size > HASH_THRESHOLD]
    if not pieces:
        return []
    if not cache_dir.is_dir():
        raise StageError(f"{cache_dir} is not a directory: pass the rpc-server's cache directory ($LLAMA_CACHE/rpc)")
    try:
        fh = open(source, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise StageError(f"cannot read {source}: {exc.strerror or exc}") from exc
    staged: list[StagedFile] = []
    try:
        with (
            fh,
            rpc.session(
                endpoint,
                rpc.Deadline(deadline_s),
                connect_timeout=5.0,
                turn_timeout=1.0,
                reply_timeout=reply_timeout,
                activity=("staging", "staging"),
            ) as s,
        ):
            s.stage = "alloc"
            try:
                buffer, base = s.alloc_buffer(device, wire.upload_alloc_size(max(p.size for p in pieces)))
            except rpc.BufferRefused as exc:
                s.clean = True
                raise StageError(f"{endpoint}: {exc}: free memory on the worker or stage while it is idle") from None
            for piece in pieces:
                s.stage = f"upload {piece.name}"
                sha = sha256_range(fh, piece.offset, piece.size)
                before = cache_entries(cache_dir)
                t0 = time.time_ns()
                s.upload_from_file(buffer, base, fh, piece.offset, piece.size, cache=True)
                s.sync()
                name, new = _written_file(cache_dir, before, t0, piece.size, sha)
                staged.append(StagedFile(piece.name, name, piece.size, sha, new))
            s.stage = "free"
            s.free_buffer(buffer)
            s.sync()
            s.clean = True
    except rpc.SessionFailed as failed:
        if failed.status is rpc.Status.BUSY:
            raise StageError(
                f"{endpoint} is held by another client (a coordinator is loaded on it): stage before `up`, or "
                "run `sollol-ops down` first"
            ) from None
        raise StageError(f"{endpoint}: {failed.status.value} during {failed.stage}: {failed.detail}") from None
    return staged


def verify_files(cache_dir: Path, files: Sequence[tuple[str, int, str]]) -> list[tuple[str, str]]:
    """(file, state) per (file, size, sha256) staged: ok, missing, or corrupt (removed) when the file's size or
    sha256 changed or it is no longer a regular file (llama.cpp would load it unchecked)."""
    out = []
    for name, size, sha in files:
        path = cache_dir / name
        if not CACHE_NAME.match(name):
            out.append((name, "not a cache name (skipped)"))
            continue
        try:
            st = path.lstat()
        except FileNotFoundError:
            out.append((name, "missing"))
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size == size and sha256_file(path) == sha:
            out.append((name, "ok"))
        else:
            path.unlink()
            out.append((name, "corrupt (removed)"))
    return out


def prune_files(cache_dir: Path, keep: set[str], dry_run: bool = False) -> list[tuple[str, int]]:
    """Remove the cache files (regular, 16 hex digits) of `cache_dir` not in `keep`; (file, size) removed."""
    removed = []
    for name, st in sorted(cache_entries(cache_dir).items()):
        if name not in keep:
            if not dry_run:
                (cache_dir / name).unlink(missing_ok=True)
            removed.append((name, st.st_size))
    return removed


def _pieces_from_manifest(data: object) -> list[Piece]:
    if not isinstance(data, dict) or not isinstance(data.get("pieces"), list):
        raise StageError("the manifest is not a staging manifest (no list of pieces)")
    try:
        return [Piece(str(p["name"]), int(p["offset"]), int(p["size"])) for p in data["pieces"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise StageError(f"a piece of the manifest is malformed: {exc}") from None


def _run(args: argparse.Namespace) -> dict[str, object]:
    try:
        manifest = json.loads(args.manifest.read_text())
    except (OSError, ValueError) as exc:
        raise StageError(f"cannot read the manifest {args.manifest}: {exc}") from None
    out: dict[str, object] = {"endpoint": args.endpoint, "cache_dir": str(args.cache_dir)}
    try:
        if args.action == "verify":
            files = [(str(f["file"]), int(f["size"]), str(f["sha256"])) for f in manifest["files"]]
            out["verify"] = [{"file": n, "state": st} for n, st in verify_files(args.cache_dir, files)]
        elif args.action == "prune":
            keep = {str(n) for n in manifest["keep"]}
            out["pruned"] = [{"file": n, "size": sz} for n, sz in prune_files(args.cache_dir, keep)]
        else:
            if args.source is None:
                raise StageError("--source is required to stage")
            staged = stage_pieces(
                args.endpoint, args.cache_dir, args.source, _pieces_from_manifest(manifest), device=args.device
            )
            out["files"] = [asdict(f) for f in staged]
    except (KeyError, TypeError, ValueError) as exc:
        raise StageError(f"the manifest {args.manifest} is malformed: {exc}") from None
    except OSError as exc:
        raise StageError(f"{args.cache_dir}: {exc.strerror or exc}") from None
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m sollol_ops.stage.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--action", choices=("stage", "verify", "prune"), default="stage")
    parser.add_argument("--endpoint", required=True, help="this worker's rpc-server, e.g. 127.0.0.1:50052")
    parser.add_argument("--cache-dir", required=True, type=Path, help="its cache directory ($LLAMA_CACHE/rpc)")
    parser.add_argument("--source", type=Path, help="stage: the GGUF or the pack holding the bytes")
    parser.add_argument(
        "--manifest",
        required=True,
        type=Path,
        help="JSON: stage {pieces: [{name, offset, size}]}, verify {files: [{file, size, sha256}]}, prune {keep: []}",
    )
    parser.add_argument("--device", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        out = _run(args)
    except StageError as exc:
        print(f"sollol-ops stage: error: {exc}", file=sys.stderr)
        return exc.exit_code
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
