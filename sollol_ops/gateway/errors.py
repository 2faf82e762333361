"""Errors the gateway answers with, in each API's own shape."""

from __future__ import annotations

import json
from typing import Any

from sollol_ops.errors import SollolError


class ApiError(Exception):
    """An answer the client gets instead of a model's output: HTTP status + one-line message."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        route: str = "gateway",
        node: str = "gateway",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.headers = headers or {}
        self.status = status
        self.message = " ".join(message.split())
        self.route = route
        self.node = node


_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    501: "not_supported_error",
}


def ollama_body(message: str) -> dict[str, Any]:
    return {"error": message}


def openai_body(status: int, message: str) -> dict[str, Any]:
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


def body_for(api: str, status: int, message: str) -> bytes:
    data = openai_body(status, message) if api == "openai" else ollama_body(message)
    return json.dumps(data).encode()


def upstream_message(raw: bytes, status: int) -> str:
    """The message of an upstream error body in either shape (or its first 300 characters)."""
    try:
        data = json.loads(raw)
    except ValueError:
        text = " ".join(raw.decode(errors="replace").split())[:300]
        return text or f"HTTP {status}"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(err, str):
            return err
    return " ".join(raw.decode(errors="replace").split())[:300]


class GatewayError(SollolError):
    """The gateway cannot start (port in use, bad settings)."""

    exit_code = 8
