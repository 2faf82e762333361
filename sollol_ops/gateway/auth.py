"""The gateway's API key: a request must send it as `Authorization: Bearer KEY` or `X-API-Key`."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from sollol_ops.gateway.errors import ApiError


def check_key(request: Request, key: str | None) -> None:
    """ApiError 401 unless `request` carries `key` (nothing to check without a key)."""
    if not key:
        return
    auth = request.headers.get("authorization", "")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
    if not given:
        raise ApiError(401, "missing API key: send Authorization: Bearer KEY")
    if not hmac.compare_digest(given.encode(), key.encode()):
        raise ApiError(401, "invalid API key")
