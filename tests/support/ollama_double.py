"""A double of an Ollama server, for what cannot run here (no Ollama binary in any registry): its model
management API on a real HTTP port, in Ollama's wire format (ollama/ollama docs/api.md, as the official `ollama`
client reads it).

- `GET /`, `GET /api/version`, `GET /api/tags` (its store, read with sollol_ops.model.ollama), `GET /api/ps` (empty);
- `POST /api/pull` {model | name, stream (default true), insecure}: the "registry" is the `registry` mapping
  (name -> GGUF file) given to it; the model is written into its store as `ollama pull` lays it out
  (sollol_ops.dev.devstore: a real manifest and blobs), with Ollama's progress lines: `pulling manifest`,
  `pulling <12 hex>` with digest/total/completed, `verifying sha256 digest`, `writing manifest`, `success`;
  `stream: false` answers `{"status": "success"}` once done; an unknown name is 404 `{"error": ...}` (the
  message Ollama gives: `pull model manifest: file does not exist`);
- `DELETE /api/delete` {model}: 200 with an empty body, 404 `{"error": "model 'x' not found"}`;
- `POST /api/copy` {source, destination}: 200 empty, 404 when the source is not there;
- a body that is not a JSON object, or lacks the model: 400 `{"error": ...}`.

It records every request (`requests`: method, path, body) for the tests to check what reached it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import uvicorn
from ports import free_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sollol_ops.dev.devstore import CHATML_TEMPLATE, SMOLLM2_PARAMS, lay_out_store
from sollol_ops.errors import UsageError
from sollol_ops.model.names import parse_model_ref
from sollol_ops.model.ollama import list_models, resolve_model, sha256_file

CHUNK = 1 << 20  # progress every MiB of the blob


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class OllamaDouble:
    """An Ollama server's model management on 127.0.0.1:`port`, over the store at `store`."""

    def __init__(self, store: Path, registry: Mapping[str, Path] | None = None, version: str = "0.12.3") -> None:
        self.store = store
        self.registry = {self._canon(k): Path(v) for k, v in (registry or {}).items()}
        self.version = version
        self.port = free_port()
        self.requests: list[tuple[str, str, Any]] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def _canon(name: str) -> str:
        return str(parse_model_ref(name))

    # ------------------------------------------------------------------ routes

    async def _body(self, request: Request) -> dict[str, Any] | Response:
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError:
            return _error(400, "invalid JSON")
        self.requests.append((request.method, request.url.path, body))
        if not isinstance(body, dict):
            return _error(400, "invalid request body")
        return body

    def _manifest(self, name: str) -> Path | None:
        try:
            path = self.store / parse_model_ref(name).manifest_relpath()
        except UsageError:
            return None
        return path if path.is_file() else None

    async def tags(self, request: Request) -> Response:
        self.requests.append((request.method, request.url.path, None))
        models = []
        for entry in list_models([self.store]):
            if entry.error:
                continue
            resolved = resolve_model(entry.ref, self.store)
            models.append(
                {
                    "name": entry.ref,
                    "model": entry.ref,
                    "modified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.manifest.stat().st_mtime)),
                    "size": resolved.size,
                    "digest": resolved.digest.removeprefix("sha256:"),
                    "details": {"format": "gguf", "family": "llama", "parameter_size": "", "quantization_level": ""},
                }
            )
        return JSONResponse({"models": models})

    async def pull(self, request: Request) -> Response:
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            return _error(400, "model is required")
        try:
            canon = self._canon(name)
        except UsageError:
            return _error(400, f"invalid model name {name!r}")
        source = self.registry.get(canon)
        if source is None:
            return _error(404, "pull model manifest: file does not exist")
        if body.get("stream", True) is False:
            await asyncio.to_thread(self._lay_out, canon, source)
            return JSONResponse({"status": "success"})
        return StreamingResponse(self._progress(canon, source), media_type="application/x-ndjson")

    async def _progress(self, canon: str, source: Path) -> AsyncIterator[bytes]:
        def line(obj: dict[str, Any]) -> bytes:
            return json.dumps(obj).encode() + b"\n"

        yield line({"status": "pulling manifest"})
        digest = await asyncio.to_thread(sha256_file, source)
        total = source.stat().st_size
        short = digest.removeprefix("sha256:")[:12]
        for done in [*range(0, total, CHUNK), total]:
            yield line({"status": f"pulling {short}", "digest": digest, "total": total, "completed": done})
            await asyncio.sleep(0)
        yield line({"status": "verifying sha256 digest"})
        yield line({"status": "writing manifest"})
        await asyncio.to_thread(self._lay_out, canon, source)
        yield line({"status": "success"})

    def _lay_out(self, canon: str, source: Path) -> None:
        lay_out_store(self.store, canon, source, template=CHATML_TEMPLATE, params=SMOLLM2_PARAMS, link="hardlink")

    async def delete(self, request: Request) -> Response:
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            return _error(400, "model is required")
        path = self._manifest(name)
        if path is None:
            return _error(404, f"model '{name}' not found")
        path.unlink()
        return Response(status_code=200)

    async def copy(self, request: Request) -> Response:
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        source, destination = body.get("source"), body.get("destination")
        if not isinstance(source, str) or not isinstance(destination, str) or not source or not destination:
            return _error(400, "source and destination are required")
        path = self._manifest(source)
        if path is None:
            return _error(404, f"model '{source}' not found")
        try:
            target = self.store / parse_model_ref(destination).manifest_relpath()
        except UsageError:
            return _error(400, f"invalid model name {destination!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        return Response(status_code=200)

    def app(self) -> Starlette:
        async def root(_r: Request) -> Response:
            return Response("Ollama is running", media_type="text/plain")

        async def version(_r: Request) -> Response:
            return JSONResponse({"version": self.version})

        async def ps(_r: Request) -> Response:
            return JSONResponse({"models": []})

        return Starlette(
            routes=[
                Route("/", root, methods=["GET", "HEAD"]),
                Route("/api/version", version, methods=["GET"]),
                Route("/api/tags", self.tags, methods=["GET"]),
                Route("/api/ps", ps, methods=["GET"]),
                Route("/api/pull", self.pull, methods=["POST"]),
                Route("/api/delete", self.delete, methods=["DELETE"]),
                Route("/api/copy", self.copy, methods=["POST"]),
            ]
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> OllamaDouble:
        self.store.mkdir(parents=True, exist_ok=True)
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_config=None, access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"the Ollama double did not listen on {self.port}")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
