"""Read Ollama's on-disk model store: model names, manifests and the GGUF blob behind a name.

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

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
DEFAULT_ROOTS: tuple[str, ...] = ("~/.ollama/models", "/usr/share/ollama/.ollama/models")

MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_LICENSE = "application/vnd.ollama.image.license"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
MEDIA_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"

CHUNK = 1 << 20
MAX_MANIFEST_BYTES = 1 << 20

_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$")
_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,253}(:[0-9]{1,5})?$")
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


# --- names -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRef:
    host: str
    namespace: str
    name: str
    tag: str

    def __str__(self) -> str:
        if self.host != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.name}:{self.tag}"
        if self.namespace != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.name}:{self.tag}"
        return f"{self.name}:{self.tag}"

    def manifest_relpath(self) -> Path:
        return Path("manifests", self.host, self.namespace, self.name, self.tag)


def _check_part(text: str, what: str, value: str, pattern: re.Pattern[str]) -> str:
    if not value:
        raise UsageError(f"bad model name {text!r}: empty {what}")
    if not pattern.match(value):
        raise UsageError(
            f"bad model name {text!r}: {what} {value!r} must be letters, digits, '_', '.', '-'"
            " (starting with a letter or digit)"
        )
    return value


def _split_tag(text: str, last: str) -> tuple[str, str]:
    if ":" not in last:
        return last, DEFAULT_TAG
    name, tag = last.split(":", 1)
    if not tag:
        raise UsageError(f"bad model name {text!r}: empty tag after ':'")
    return name, tag


def parse_model_ref(text: str) -> ModelRef:
    """`name`, `name:tag`, `namespace/name:tag` or `host/namespace/name:tag`."""
    if not text or not text.strip():
        raise UsageError(f"bad model name {text!r}: give a name like smollm2:135m")
    if any(c.isspace() for c in text):
        raise UsageError(f"bad model name {text!r}: no whitespace allowed")
    parts = text.split("/")
    if len(parts) > 3:
        raise UsageError(f"bad model name {text!r}: at most host/namespace/name:tag")
    name, tag = _split_tag(text, parts[-1])
    host = parts[0] if len(parts) == 3 else DEFAULT_HOST
    namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
    return ModelRef(
        host=_check_part(text, "host", host, _HOST),
        namespace=_check_part(text, "namespace", namespace, _PART),
        name=_check_part(text, "name", name, _PART),
        tag=_check_part(text, "tag", tag, _TAG),
    )


# --- store roots -------------------------------------------------------------------------------


def _expand(path: str | Path, env: Mapping[str, str]) -> Path:
    text = str(path)
    if text == "~" or text.startswith("~/"):
        home = env.get("HOME") or str(Path.home())
        text = home + text[1:]
    return Path(os.path.abspath(text))


def _dedupe(paths: Sequence[Path]) -> list[Path]:
    seen: set[str] = set()
    out: list[Path] = []
    for path in paths:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            out.append(path)
    return out


def candidate_roots(
    explicit: str | Path | None, env: Mapping[str, str], defaults: Sequence[str | Path] = DEFAULT_ROOTS
) -> list[Path]:
    """Every place searched, in order: --ollama-models, $OLLAMA_MODELS, then `defaults`."""
    wanted: list[str | Path] = []
    if explicit:
        wanted.append(explicit)
    if env.get("OLLAMA_MODELS"):
        wanted.append(env["OLLAMA_MODELS"])
    wanted.extend(defaults)
    return _dedupe([_expand(p, env) for p in wanted])


def _may_exist(root: Path) -> bool:
    """A directory, or a path we cannot look at: only what the OS says is absent (or a file) is left out.

    A root behind a directory we may not search is kept, so that reading it fails naming the reason
    instead of the store silently reading as empty.
    """
    try:
        return stat.S_ISDIR(os.stat(root).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True


def store_roots(
    explicit: str | Path | None, env: Mapping[str, str], defaults: Sequence[str | Path] = DEFAULT_ROOTS
) -> list[Path]:
    """The candidate roots that exist. An explicit root that is not a directory is a UsageError."""
    if explicit and not _may_exist(_expand(explicit, env)):
        raise UsageError(f"--ollama-models {explicit}: no such directory")
    return [p for p in candidate_roots(explicit, env, defaults) if _may_exist(p)]


# --- manifests and blobs -----------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedModel:
    ref: str
    root: Path
    manifest: Path
    blob: Path
    digest: str
    size: int
    template_digest: str | None = None
    params_digest: str | None = None
    license_digest: str | None = None
    verified: bool = False
    gguf: GGUFInfo | None = None


@dataclass(frozen=True)
class InstalledModel:
    ref: str
    root: Path
    manifest: Path
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


def suggest(ref: ModelRef, installed: Sequence[str], limit: int = 3) -> list[str]:
    """Installed names close to `ref`: other tags of the same name first, then difflib matches."""
    names = list(dict.fromkeys(installed))
    same_name = [n for n in names if _same_model(n, ref)]
    by_lower = {n.lower(): n for n in names}
    import difflib  # only for a model that is not found

    close = difflib.get_close_matches(str(ref).lower(), list(by_lower), n=limit, cutoff=0.6)
    return list(dict.fromkeys(same_name + [by_lower[c] for c in close]))[:limit]


def _same_model(text: str, ref: ModelRef) -> bool:
    try:
        other = parse_model_ref(text)
    except UsageError:
        return False
    return (other.host, other.namespace, other.name.lower()) == (ref.host, ref.namespace, ref.name.lower())


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
