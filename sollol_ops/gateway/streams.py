"""Streams between the APIs: OpenAI's SSE events read, turned into Ollama's NDJSON lines (OllamaStream), and
the gateway's own chunks in either shape (loading progress, a last error event). No I/O."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from sollol_ops.gateway.errors import ApiError
from sollol_ops.gateway.translate import Translated, is_number, now_rfc3339


def sse_events(buffer: bytearray, chunk: bytes) -> Iterator[str]:
    """Feed bytes of an SSE stream; yields the payload of each complete `data:` line."""
    buffer += chunk
    while (nl := buffer.find(b"\n")) >= 0:
        line = bytes(buffer[:nl]).rstrip(b"\r")
        del buffer[: nl + 1]
        if line.startswith(b"data:"):
            yield line[5:].strip().decode(errors="replace")
        elif line.startswith(b"error:"):
            yield json.dumps({"error": {"message": line[6:].strip().decode(errors="replace")}})


_DONE_REASONS = {"stop": "stop", "length": "length", "tool_calls": "stop", "content_filter": "stop"}


class OllamaStream:
    """OpenAI chat/completion chunks in, Ollama NDJSON objects out (chat: `message`, generate: `response`)."""

    def __init__(self, t: Translated, started: float | None = None) -> None:
        self.t = t
        self.t0 = time.perf_counter() if started is None else started
        self.ttft: float | None = None
        self.parts: list[str] = []
        self.thinking: list[str] = []
        self.finish: str | None = None
        self.usage: dict[str, Any] = {}
        self.timings: dict[str, Any] = {}
        self.tools: dict[int, dict[str, Any]] = {}
        self.pieces = 0
        self.finished = False

    def _line(self, content: str, thinking: str = "") -> dict[str, Any]:
        base: dict[str, Any] = {"model": self.t.model, "created_at": now_rfc3339()}
        if self.t.kind == "chat":
            msg: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                msg["thinking"] = thinking
            base["message"] = msg
        else:
            base["response"] = content
            if thinking:
                base["thinking"] = thinking
        base["done"] = False
        return base

    def feed(self, payload: str) -> Iterator[dict[str, Any]]:
        """One SSE payload -> zero or more Ollama lines; `[DONE]` sets `finished`. Raises ApiError on an
        upstream error event."""
        if payload == "[DONE]":
            self.finished = True
            return
        try:
            chunk = json.loads(payload)
        except ValueError:
            return
        if not isinstance(chunk, dict):
            return
        if "error" in chunk:
            err = chunk["error"]
            message = err.get("message") if isinstance(err, dict) else str(err)
            raise ApiError(502, f"upstream error: {message}")
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        if isinstance(chunk.get("timings"), dict):
            self.timings = chunk["timings"]
        for choice in chunk.get("choices") or []:
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
            delta = choice.get("delta") or {}
            text = delta.get("content") if "delta" in choice else choice.get("text")
            think = delta.get("reasoning_content") or ""
            for call in delta.get("tool_calls") or []:
                slot = self.tools.setdefault(call.get("index", 0), {"name": "", "arguments": ""})
                fn = call.get("function") or {}
                slot["name"] += fn.get("name") or ""
                slot["arguments"] += fn.get("arguments") or ""
            if text or think:
                if self.ttft is None:
                    self.ttft = time.perf_counter() - self.t0
                self.pieces += 1
                if text:
                    self.parts.append(text)
                if think:
                    self.thinking.append(think)
                yield self._line(text or "", think)

    def tool_calls(self) -> list[dict[str, Any]]:
        calls = []
        for _, slot in sorted(self.tools.items()):
            try:
                args = json.loads(slot["arguments"]) if slot["arguments"] else {}
            except ValueError:
                args = {"_raw": slot["arguments"]}
            calls.append({"function": {"name": slot["name"], "arguments": args}})
        return calls

    def final(self, aggregate: bool = False) -> dict[str, Any]:
        """The `done` line (stream) or the whole answer (aggregate): durations in ns, token counts."""
        total = time.perf_counter() - self.t0
        ttft = self.ttft if self.ttft is not None else total
        tm, usage = self.timings, self.usage
        prompt_ns = int(tm["prompt_ms"] * 1e6) if is_number(tm.get("prompt_ms")) else int(ttft * 1e9)
        eval_ns = int(tm["predicted_ms"] * 1e6) if is_number(tm.get("predicted_ms")) else int((total - ttft) * 1e9)
        line = self._line("".join(self.parts) if aggregate else "", "".join(self.thinking) if aggregate else "")
        calls = self.tool_calls()
        if calls and self.t.kind == "chat":
            line["message"]["tool_calls"] = calls
        line.update(
            done=True,
            done_reason=_DONE_REASONS.get(self.finish or "stop", "stop"),
            total_duration=int(total * 1e9),
            load_duration=0,
            prompt_eval_count=int(usage.get("prompt_tokens") or tm.get("prompt_n") or 0),
            prompt_eval_duration=prompt_ns,
            eval_count=int(usage.get("completion_tokens") or tm.get("predicted_n") or self.pieces),
            eval_duration=eval_ns,
        )
        return line


def progress_chunk(kind: str, model: str, text: str) -> bytes:
    """A streamed chunk that carries `text` (loading progress) where each API puts a model's reasoning, so it
    never mixes with the answer (llama-swap's sendLoadingState): OpenAI chat `delta.reasoning_content`,
    Ollama chat `message.thinking`, Ollama generate `thinking`; content stays empty and `done` false."""
    if kind == "chat.completions":
        chunk = {
            "id": "sollol-loading",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": text}, "finish_reason": None}],
        }
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"
    line: dict[str, Any] = {"model": model, "created_at": now_rfc3339()}
    if kind == "chat":
        line["message"] = {"role": "assistant", "content": "", "thinking": text}
    else:
        line |= {"response": "", "thinking": text}
    line["done"] = False
    return json.dumps(line).encode() + b"\n"


def stream_error(sse: bool, body: bytes) -> bytes:
    """An error body of the API's shape (errors.body_for) as the stream's last event or line."""
    return b"data: " + body + b"\n\n" if sse else body + b"\n"
