"""Read Ollama's on-disk model store: the manifest and GGUF blob behind a model name, and every installed model.

Names are parsed in sollol_ops.model.names; the store roots searched come from sollol_ops.model.roots.

Read-only by design: nothing here creates, modifies or deletes anything under a store root.
Layout: <root>/manifests/<host>/<namespace>/<name>/<tag> (JSON) and <root>/blobs/sha256-<hex>.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sollol_ops.errors import GGUFError, ModelNotFound, StoreError, UsageError
from sollol_ops.model.gguf_info import GGUFInfo, read_gguf
from sollol_ops.model.names import ModelRef, parse_model_ref, suggest
from sollol_ops.model.roots import DEFAULT_ROOTS, candidate_roots, store_roots

MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_LICENSE = "application/vnd.ollama.image.license"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
MEDIA_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"

CHUNK = 1 << 20
MAX_MANIFEST_BYTES = 1 << 20

_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


# --- manifests and blobs -----------------------------------------------------------------------


@dataclass(frozen=True)
class StoreEntry:
    """A manifest in a store root, under the model name it stands for."""

    ref: str
    root: Path
    manifest: Path


@dataclass(frozen=True)
class ResolvedModel(StoreEntry):
    """A model name resolved to its blob, checked against the manifest (and hashed when `verified`)."""

    blob: Path
    digest: str
    size: int
    template_digest: str | None = None
    params_digest: str | None = None
    license_digest: str | None = None
    verified: bool = False
    gguf: GGUFInfo | None = None


@dataclass(frozen=True)
class InstalledModel(StoreEntry):
    """One manifest of `models`' listing: its blob and GGUF facts, or the `error` that kept it from resolving."""

    blob: Path | None = None
    digest: str | None = None
    size: int | None = None
    shadowed: bool = False  # an earlier root holds the same name; resolve picks that one
    architecture: str | None = None
    block_count: int | None = None
    file_type_name: str | None = None
    error: str | None = None


def blob_path(root: Path, digest: str) -> Path:
    return root / "blobs" / digest.replace(":", "-", 1)


def _pull_hint(ref: str) -> str:
    return f"run `ollama pull {ref}`"


_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


def _not_regular(path: Path, what: str, mode: int) -> StoreError:
    kind = _KINDS.get(stat.S_IFMT(mode), "not a file")
    return StoreError(f"{what} {path} is not a regular file ({kind}); remove it or run `ollama pull` again")


def _open_regular(path: Path, what: str) -> int:
    """A read-only fd on `path`, which must be a regular file (after symlinks).

    Checked before opening (opening a device can have effects), opened with O_NONBLOCK (a FIFO would
    otherwise wait for a writer forever), and checked again on the fd (the path may have changed).
    """
    try:
        if not stat.S_ISREG(mode := os.stat(path).st_mode):
            raise _not_regular(path, what, mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise StoreError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    try:
        if not stat.S_ISREG(mode := os.fstat(fd).st_mode):
            raise _not_regular(path, what, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest as a JSON object, or a StoreError naming the file. Reads at most 1 MiB + 1 byte."""
    fd = _open_regular(path, "manifest")
    try:
        with os.fdopen(fd, "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise StoreError(f"cannot read manifest {path}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_MANIFEST_BYTES:
        raise StoreError(f"manifest {path} is over {MAX_MANIFEST_BYTES} bytes; not an Ollama manifest")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise StoreError(f"manifest {path} is not valid JSON (not UTF-8)") from exc
    except json.JSONDecodeError as exc:
        raise StoreError(f"manifest {path} is not valid JSON (line {exc.lineno} column {exc.colno})") from exc
    if not isinstance(data, dict):
        raise StoreError(f"manifest {path} is not a JSON object")
    return data


def _layers(manifest: Mapping[str, Any], path: Path) -> list[Mapping[str, Any]]:
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not all(isinstance(x, dict) for x in layers):
        raise StoreError(f"manifest {path} has no list of layers")
    return layers


def _layers_of(layers: list[Mapping[str, Any]], media_type: str) -> list[Mapping[str, Any]]:
    return [layer for layer in layers if layer.get("mediaType") == media_type]


def _model_layer(layers: list[Mapping[str, Any]], path: Path) -> tuple[str, int]:
    models = _layers_of(layers, MEDIA_MODEL)
    if len(models) != 1:
        raise StoreError(f"manifest {path} has {len(models)} model layers ({MEDIA_MODEL}); expected exactly 1")
    digest, size = models[0].get("digest"), models[0].get("size")
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise StoreError(f"manifest {path}: model layer digest {digest!r} is not sha256:<64 hex digits>")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise StoreError(f"manifest {path}: model layer size {size!r} is not a byte count")
    return digest, size


def _optional_digest(layers: list[Mapping[str, Any]], media_type: str) -> str | None:
    found = _layers_of(layers, media_type)
    digest = found[0].get("digest") if found else None
    return digest if isinstance(digest, str) else None


def _check_blob(blob: Path, size: int, ref: str) -> None:
    try:
        st = blob.stat()
    except FileNotFoundError as exc:
        raise StoreError(f"blob {blob} missing; {_pull_hint(ref)}") from exc
    except OSError as exc:
        raise StoreError(f"cannot read blob {blob}: {exc.strerror or exc}") from exc
    if not blob.is_file():
        raise StoreError(f"blob {blob} is not a regular file")
    if st.st_size != size:
        raise StoreError(
            f"blob {blob} is {st.st_size} bytes but the manifest says {size}; incomplete download? {_pull_hint(ref)}"
        )


def sha256_file(path: Path) -> str:
    """`sha256:<hex>` of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _verify_blob(blob: Path, digest: str, ref: str) -> None:
    try:
        actual = sha256_file(blob)
    except OSError as exc:
        raise StoreError(f"cannot read blob {blob}: {exc.strerror or exc}") from exc
    if actual != digest:
        raise StoreError(f"blob {blob} has digest {actual} but the manifest says {digest}; {_pull_hint(ref)}")


def _resolve_manifest(root: Path, manifest: Path, ref: str, verify: bool, check_gguf: bool) -> ResolvedModel:
    layers = _layers(read_manifest(manifest), manifest)
    digest, size = _model_layer(layers, manifest)
    blob = blob_path(root, digest)
    _check_blob(blob, size, ref)
    if verify:
        _verify_blob(blob, digest, ref)
    return ResolvedModel(
        ref=ref,
        root=root,
        manifest=manifest,
        blob=blob,
        digest=digest,
        size=size,
        template_digest=_optional_digest(layers, MEDIA_TEMPLATE),
        params_digest=_optional_digest(layers, MEDIA_PARAMS),
        license_digest=_optional_digest(layers, MEDIA_LICENSE),
        verified=verify,
        gguf=_read_blob_header(blob, ref) if check_gguf else None,
    )


def _read_blob_header(blob: Path, ref: str) -> GGUFInfo:
    try:
        return read_gguf(blob)
    except GGUFError as exc:
        raise GGUFError(f"{exc}; {_pull_hint(ref)}") from exc


def _manifest_exists(path: Path) -> bool:
    """Whether a manifest is at `path` (absent: False); anything there but a regular file is a StoreError."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(mode):
        raise _not_regular(path, "manifest", mode)
    return True


def _not_found(ref: ModelRef, searched: Sequence[Path], roots: Sequence[Path]) -> ModelNotFound:
    where = ", ".join(str(p) for p in searched) or "nowhere"
    msg = f"model '{ref}' not in any Ollama store (searched: {where}); run `ollama pull {ref}` or pass --ollama-models"
    near = suggest(ref, [m.ref for m in list_models(roots)])
    if near:
        msg += f"; did you mean: {', '.join(near)}?"
    return ModelNotFound(msg)


def resolve_model(
    ref_text: str,
    roots_explicit: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    verify: bool = False,
    *,
    defaults: Sequence[str | Path] = DEFAULT_ROOTS,
    check_gguf: bool = True,
) -> ResolvedModel:
    """Find `ref_text` in the stores (first root holding its manifest wins) and check its GGUF blob.

    `verify` re-hashes the blob; `check_gguf` parses its GGUF header (fast) and attaches the facts.
    """
    env = os.environ if env is None else env
    ref = parse_model_ref(ref_text)
    roots = store_roots(roots_explicit, env, defaults)
    for root in roots:
        manifest = root / ref.manifest_relpath()
        if _manifest_exists(manifest):
            return _resolve_manifest(root, manifest, str(ref), verify, check_gguf)
    raise _not_found(ref, candidate_roots(roots_explicit, env, defaults), roots)


# --- listing -----------------------------------------------------------------------------------


def _unreadable(exc: OSError) -> None:
    raise StoreError(f"cannot read {exc.filename}: {exc.strerror or exc}") from exc


def _manifest_files(root: Path) -> Iterator[Path]:
    """Every file under root/manifests; a store without manifests/ is empty, an unreadable one a StoreError."""
    base = root / "manifests"
    try:
        mode = os.stat(base).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"cannot read {base}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(mode):
        raise StoreError(f"cannot read {base}: Not a directory")
    for dirpath, dirnames, filenames in os.walk(base, onerror=_unreadable):
        dirnames.sort()
        for filename in sorted(filenames):
            yield Path(dirpath, filename)


def _ref_from_path(root: Path, manifest: Path) -> str:
    rel = manifest.relative_to(root / "manifests").parts
    if len(rel) != 4:
        raise StoreError(f"manifest {manifest} is not at manifests/<host>/<namespace>/<name>/<tag>")
    host, namespace, name, tag = rel
    try:
        return str(parse_model_ref(f"{host}/{namespace}/{name}:{tag}"))
    except UsageError as exc:
        raise StoreError(f"manifest {manifest} has an invalid model name: {exc}") from exc


def _entry(root: Path, manifest: Path, read_headers: bool) -> InstalledModel:
    rel = manifest.relative_to(root / "manifests")
    ref = str(rel)
    try:
        ref = _ref_from_path(root, manifest)
        found = _resolve_manifest(root, manifest, ref, verify=False, check_gguf=read_headers)
    except (StoreError, GGUFError) as exc:
        return InstalledModel(ref=ref, root=root, manifest=manifest, error=str(exc))
    info = found.gguf
    return InstalledModel(
        ref=ref,
        root=root,
        manifest=manifest,
        blob=found.blob,
        digest=found.digest,
        size=found.size,
        architecture=info.architecture if info else None,
        block_count=info.block_count if info else None,
        file_type_name=info.file_type_name if info else None,
    )


def list_models(roots: Sequence[Path], *, read_headers: bool = False) -> list[InstalledModel]:
    """Every manifest under every root, in root order; broken ones carry `error` instead of raising.

    With `read_headers`, each blob's GGUF header is parsed for architecture, layers and quantisation.
    """
    out: list[InstalledModel] = []
    seen: set[str] = set()
    for root in roots:
        for manifest in _manifest_files(root):
            entry = _entry(root, manifest, read_headers)
            if entry.ref in seen:
                entry = replace(entry, shadowed=True)
            seen.add(entry.ref)
            out.append(entry)
    return out
