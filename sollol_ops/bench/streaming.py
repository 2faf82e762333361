"""Streamed chat requests timed as their client sees them: OpenAI SSE and Ollama NDJSON, read line by line.

TTFT = request sent to the first chunk carrying content; generation tokens/s = (tokens - 1) / (last content
chunk - first content chunk), with the token count the server reports at the end of the stream (llama-server's
`timings.predicted_n`, relayed by the gateway's OpenAI route; `eval_count` on its Ollama route), since a chunk
may carry more than one token (an incomplete UTF-8 character is sent with the next one).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from sollol_ops.errors import BenchError

OPENAI_CHAT = "/v1/chat/completions"
OLLAMA_CHAT = "/api/chat"


@dataclass
class Streamed:
    """One streamed answer as its client saw it."""

    ttft_s: float
    total_s: float
    tokens: int  # generated tokens: the server's count, else the chunks carrying content
    gen_tps: float | None


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _piece(line: str, api: str, url: str) -> tuple[str, bool, int | None]:
    """(content, done, generated tokens the server reports here) of one line of an OpenAI SSE or Ollama
    NDJSON stream; BenchError on an error event."""
    text = line.strip()
    if api == "openai":
        if not text.startswith("data:"):
            return "", False, None
        text = text[5:].strip()
        if text == "[DONE]":
            return "", True, None
    elif not text:
        return "", False, None
    try:
        chunk = json.loads(text)
    except ValueError as exc:
        raise BenchError(f"{url} sent a line that is not JSON: {text[:120]!r}") from exc
    if not isinstance(chunk, dict):
        raise BenchError(f"{url} sent an unexpected line: {text[:120]!r}")
    if chunk.get("error"):
        raise BenchError(f"{url} broke off the answer: {json.dumps(chunk['error'])[:200]}")
    if api == "openai":
        content = "".join((c.get("delta") or {}).get("content") or "" for c in chunk.get("choices") or [])
        return content, False, _count((chunk.get("timings") or {}).get("predicted_n"))
    done = bool(chunk.get("done"))
    return (chunk.get("message") or {}).get("content") or "", done, _count(chunk.get("eval_count")) if done else None


async def stream(client: httpx.AsyncClient, url: str, body: dict[str, Any], api: str) -> Streamed:
    """POST one streamed chat request and time it as the client sees it."""
    t0 = time.perf_counter()
    first: float | None = None
    last = t0
    chunks = 0
    reported: int | None = None
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                detail = " ".join((await resp.aread()).decode(errors="replace").split())[:200]
                raise BenchError(f"POST {url}: HTTP {resp.status_code} {detail}")
            async for line in resp.aiter_lines():
                piece, done, count = _piece(line, api, url)
                if piece:
                    last = time.perf_counter()
                    first = last if first is None else first
                    chunks += 1
                reported = count if count is not None else reported
                if done:
                    break
    except httpx.HTTPError as exc:
        raise BenchError(f"POST {url} failed: {exc or type(exc).__name__}") from exc
    total = time.perf_counter() - t0
    if first is None:
        raise BenchError(f"POST {url} answered no tokens")
    tokens = reported or chunks
    gen_tps = (tokens - 1) / (last - first) if tokens > 1 and last > first else None
    return Streamed(first - t0, total, tokens, gen_tps)


def openai_body(model: str, prompt: str, tokens: int) -> dict[str, Any]:
    messages = [{"role": "user", "content": prompt}]
    return {"model": model, "messages": messages, "max_tokens": tokens, "temperature": 0, "stream": True}


def ollama_body(model: str, prompt: str, tokens: int) -> dict[str, Any]:
    messages = [{"role": "user", "content": prompt}]
    return {"model": model, "messages": messages, "options": {"num_predict": tokens, "temperature": 0}, "stream": True}


def stream_client(timeout: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0))
