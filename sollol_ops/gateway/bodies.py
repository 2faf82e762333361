"""Reading a request's body: under the gateway's size limit, and a JSON object."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from sollol_ops.gateway.errors import ApiError


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object; ApiError 413 past `limit` bytes (refused early on Content-Length), 400
    when it is missing, not JSON or not an object."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"request body of {int(length)} bytes is over the gateway's limit of {limit} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise ApiError(413, f"request body is over the gateway's limit of {limit} bytes")
    if not raw.strip():
        raise ApiError(400, "missing request body")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"invalid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body
