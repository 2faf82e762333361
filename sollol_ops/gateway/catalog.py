"""The shard side: models in the coordinator's Ollama store (real sizes and GGUF facts) and the coordinator
`sollol-ops up` is running (its recorded state), as the gateway lists and routes them."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sollol_ops.errors import SollolError
from sollol_ops.gateway.translate import parameter_size
from sollol_ops.model.ollama import ResolvedModel, blob_path, list_models, resolve_model
from sollol_ops.model.roots import store_roots
from sollol_ops.serve import coordinator, server_http
from sollol_ops.serve.coordinator import CoordinatorState
from sollol_ops.serve.draft import DraftStatus, draft_status

log = logging.getLogger("sollol_ops.gateway")


@dataclass
class StoreModel:
    name: str
    resolved: ResolvedModel
    modified: float

    @property
    def size(self) -> int:
        return self.resolved.size

    def details(self) -> dict[str, Any]:
        info = self.resolved.gguf
        count = info.parameter_count if info else 0
        return {
            "parent_model": "",
            "format": "gguf",
            "family": info.architecture if info else "",
            "families": [info.architecture] if info else None,
            "parameter_size": (info.size_label or parameter_size(count)) if info else "",
            "quantization_level": info.file_type_name if info else "",
        }

    def tags_entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": datetime.fromtimestamp(self.modified, UTC).isoformat().replace("+00:00", "Z"),
            "size": self.size,
            "digest": self.resolved.digest.removeprefix("sha256:"),
            "details": self.details(),
        }

    def _small_blob(self, digest: str | None) -> str:
        if not digest:
            return ""
        try:
            with open(blob_path(self.resolved.root, digest), "rb") as f:
                return f.read(1 << 20).decode(errors="replace")
        except OSError:
            return ""

    def show(self, n_ctx: int | None = None) -> dict[str, Any]:
        """/api/show from the store: template and parameters blobs, GGUF facts as model_info."""
        info = self.resolved.gguf
        params_text = self._small_blob(self.resolved.params_digest)
        lines: list[str] = []
        try:
            params = json.loads(params_text) if params_text else {}
        except ValueError:
            params = {}
        if n_ctx:
            lines.append(f"num_ctx {n_ctx}")
        for key, value in params.items() if isinstance(params, Mapping) else ():
            for v in value if isinstance(value, list) else [value]:
                lines.append(f"{key} {json.dumps(v) if isinstance(v, str) else v}")
        arch = info.architecture if info else ""
        model_info: dict[str, Any] = {"general.architecture": arch}
        if info:
            model_info.update(
                {
                    "general.parameter_count": info.parameter_count,
                    f"{arch}.block_count": info.block_count,
                    f"{arch}.context_length": info.context_length,
                    f"{arch}.embedding_length": info.embedding_length,
                    f"{arch}.attention.head_count": info.head_count,
                    f"{arch}.attention.head_count_kv": info.head_count_kv,
                }
            )
        return {
            "license": self._small_blob(self.resolved.license_digest),
            "modelfile": f"# served by sollol-ops from {self.resolved.blob}\nFROM {self.resolved.blob}\n",
            "parameters": "\n".join(lines),
            "template": self._small_blob(self.resolved.template_digest),
            "details": self.details(),
            "model_info": model_info,
            "capabilities": ["completion"],
            "modified_at": self.tags_entry()["modified_at"],
        }


class Catalog:
    """The coordinator's store (re-read at most every `ttl` seconds) and its running coordinator."""

    def __init__(self, ollama_models: str | None = None, state_root: Path | None = None, ttl: float = 10.0) -> None:
        self.ollama_models = ollama_models
        self.state_root = state_root
        self.ttl = ttl
        self._models: dict[str, StoreModel] = {}
        self._read_at = -1e9
        self.error = ""

    def refresh(self) -> None:
        """Re-read the store at the next look (a model was pulled, copied or deleted through the gateway)."""
        self._read_at = -1e9

    def roots(self) -> list[Path]:
        return store_roots(self.ollama_models, os.environ)

    def models(self) -> dict[str, StoreModel]:
        if time.monotonic() - self._read_at < self.ttl:
            return self._models
        out: dict[str, StoreModel] = {}
        try:
            for entry in list_models(self.roots()):
                if entry.error or entry.shadowed or entry.ref in out:
                    continue
                try:
                    resolved = resolve_model(entry.ref, entry.root, os.environ, check_gguf=True)
                    out[entry.ref] = StoreModel(entry.ref, resolved, entry.manifest.stat().st_mtime)
                except (SollolError, OSError) as exc:
                    log.warning("store model %s skipped: %s", entry.ref, exc)
            self.error = ""
        except SollolError as exc:
            if str(exc) != self.error:
                log.warning("coordinator store unreadable: %s", exc)
            self.error = str(exc)
        self._models, self._read_at = out, time.monotonic()
        return out

    def running(self) -> CoordinatorState | None:
        """The coordinator `sollol-ops up` recorded, when its process is alive and provably ours."""
        state = coordinator.Coordinator(self.state_root).load(warn=lambda m: log.warning("%s", m))
        if state is None or not coordinator.is_alive(state):
            return None
        return state


async def draft_of(state: CoordinatorState) -> DraftStatus | None:
    """The running coordinator's draft and its acceptance so far (llama-server's counters, read in a worker
    thread); None when it runs without one."""
    if state.draft is None:
        return None
    counters = await asyncio.to_thread(server_http.draft_counters, state.endpoint, 1.0)
    return draft_status(state.draft, counters)
