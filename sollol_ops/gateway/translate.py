"""Ollama -> OpenAI requests (and the few answers built whole), for upstreams that speak OpenAI only
(llama-server, the sharded coordinator, vLLM); the streams back are `streams`. Pure functions; no I/O.

Ollama's API: https://github.com/ollama/ollama/blob/main/docs/api.md (shapes in docs/gateway.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sollol_ops.gateway.errors import ApiError

# Ollama option -> OpenAI / llama-server request field (llama-server accepts its sampler names as extensions).
OPTION_FIELDS: dict[str, str] = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "num_predict": "max_tokens",
    "stop": "stop",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "mirostat": "mirostat",
    "mirostat_tau": "mirostat_tau",
    "mirostat_eta": "mirostat_eta",
    "num_keep": "n_keep",
}
_INT_OPTIONS = {"top_k", "num_predict", "seed", "repeat_last_n", "mirostat", "num_keep"}
# Options that describe how Ollama loads a model: an OpenAI upstream was started with its own settings.
LOAD_OPTIONS = {
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "low_vram",
    "num_thread",
    "use_mmap",
    "use_mlock",
    "numa",
    "vocab_only",
    "f16_kv",
    "logits_all",
    "embedding_only",
}


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def bad(message: str) -> ApiError:
    return ApiError(400, message)


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def check_model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad("model is required" if model in (None, "") else "model must be a string")
    return model.strip()


def check_stream(body: Mapping[str, Any], default: bool) -> bool:
    stream = body.get("stream", default)
    if stream is None:
        return default
    if not isinstance(stream, bool):
        raise bad(f"stream must be true or false, got {json.dumps(stream)[:40]}")
    return stream


def translate_options(body: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Ollama `options` -> OpenAI request fields, and the names of the options that were ignored."""
    options = body.get("options") or {}
    if not isinstance(options, Mapping):
        raise bad("options must be an object")
    out: dict[str, Any] = {}
    ignored: list[str] = []
    for name, value in options.items():
        if value is None:
            continue
        if name == "stop":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                raise bad("options.stop must be a string or a list of strings")
            out["stop"] = value
        elif name in OPTION_FIELDS:
            if not is_number(value) or (name in _INT_OPTIONS and not float(value).is_integer()):
                kind = "an integer" if name in _INT_OPTIONS else "a number"
                raise bad(f"options.{name} must be {kind}, got {json.dumps(value)[:40]}")
            if name == "num_predict" and value < 0:
                continue  # -1: no limit, -2: fill the context (llama-server's default is unlimited)
            out[OPTION_FIELDS[name]] = int(value) if name in _INT_OPTIONS else value
        else:
            ignored.append(name)
    return out, sorted(ignored)


def _format(body: Mapping[str, Any]) -> dict[str, Any] | None:
    fmt = body.get("format")
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, Mapping):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": dict(fmt)}}
    raise bad('format must be "json" or a JSON schema object')


def _keep_alive(body: Mapping[str, Any]) -> None:
    ka = body.get("keep_alive")
    if ka is not None and not isinstance(ka, str | int | float):
        raise bad("keep_alive must be a duration string or a number of seconds")


def _images(images: Any, where: str) -> list[str]:
    if images is None:
        return []
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise bad(f"{where}.images must be a list of base64 strings")
    return images


def _content(text: str, images: list[str]) -> Any:
    if not images:
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}} for b64 in images]
    return parts


def _message(i: int, msg: Any) -> dict[str, Any]:
    where = f"messages[{i}]"
    if not isinstance(msg, Mapping):
        raise bad(f"{where} must be an object")
    role = msg.get("role")
    if not isinstance(role, str) or not role:
        raise bad(f"{where}.role must be a string")
    content = msg.get("content")
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise bad(f"{where}.content must be a string")
    out: dict[str, Any] = {"role": role, "content": _content(content, _images(msg.get("images"), where))}
    calls = msg.get("tool_calls")
    if calls:
        if not isinstance(calls, list):
            raise bad(f"{where}.tool_calls must be a list")
        out["tool_calls"] = [
            {
                "id": f"call_{i}_{n}",
                "type": "function",
                "function": {
                    "name": (c.get("function") or {}).get("name", ""),
                    "arguments": json.dumps((c.get("function") or {}).get("arguments") or {}),
                },
            }
            for n, c in enumerate(calls)
            if isinstance(c, Mapping)
        ]
    if role == "tool" and isinstance(msg.get("tool_name"), str):
        out["name"] = msg["tool_name"]
    return out


@dataclass
class Translated:
    path: str  # upstream path, e.g. /v1/chat/completions
    body: dict[str, Any]
    kind: str  # "chat" | "generate" | "embed" | "embeddings"
    model: str
    stream: bool = True
    ignored: list[str] = field(default_factory=list)


def _sampling(body: Mapping[str, Any], model: str) -> tuple[dict[str, Any], list[str]]:
    out, ignored = translate_options(body)
    out["model"] = model
    if (rf := _format(body)) is not None:
        out["response_format"] = rf
    _keep_alive(body)
    out["stream"] = True
    out["stream_options"] = {"include_usage": True}
    return out, ignored


def chat_request(body: Mapping[str, Any]) -> Translated:
    """POST /api/chat -> /v1/chat/completions (always streamed upstream; aggregated for stream=false)."""
    model = check_model(body)
    stream = check_stream(body, True)
    messages = body.get("messages")
    if messages is None:
        messages = []
    if not isinstance(messages, list):
        raise bad("messages must be a list")
    out, ignored = _sampling(body, model)
    out["messages"] = [_message(i, m) for i, m in enumerate(messages)]
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise bad("tools must be a list")
        out["tools"] = tools
    return Translated("/v1/chat/completions", out, "chat", model, stream, ignored)


def generate_request(body: Mapping[str, Any]) -> Translated:
    """POST /api/generate -> chat completions (the model's own template), or /v1/completions when raw."""
    model = check_model(body)
    stream = check_stream(body, True)
    prompt = body.get("prompt") or ""
    system = body.get("system") or ""
    if not isinstance(prompt, str):
        raise bad("prompt must be a string")
    if not isinstance(system, str):
        raise bad("system must be a string")
    if body.get("suffix"):
        raise bad(f"{model} does not support insert")
    raw = body.get("raw", False)
    if not isinstance(raw, bool):
        raise bad("raw must be true or false")
    out, ignored = _sampling(body, model)
    images = _images(body.get("images"), "request")
    if raw:
        out["prompt"] = prompt
        return Translated("/v1/completions", out, "generate", model, stream, ignored)
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": _content(prompt, images)})
    out["messages"] = messages
    return Translated("/v1/chat/completions", out, "generate", model, stream, ignored)


def embed_request(body: Mapping[str, Any], legacy: bool = False) -> Translated:
    """POST /api/embed (`input`: string or list) or the older /api/embeddings (`prompt`) -> /v1/embeddings."""
    model = check_model(body)
    key = "prompt" if legacy else "input"
    value = body.get(key)
    if isinstance(value, str):
        inputs = [value]
    elif isinstance(value, list) and value and all(isinstance(s, str) for s in value):
        inputs = value
    else:
        raise bad(f"{key} must be a string" + ("" if legacy else " or a non-empty list of strings"))
    _keep_alive(body)
    _, ignored = translate_options(body)
    kind = "embeddings" if legacy else "embed"
    return Translated("/v1/embeddings", {"model": model, "input": inputs}, kind, model, False, ignored)


def embed_answer(t: Translated, data: Mapping[str, Any], total_s: float) -> dict[str, Any]:
    rows = sorted(data.get("data") or [], key=lambda d: d.get("index", 0))
    vectors = [r.get("embedding") or [] for r in rows]
    if t.kind == "embeddings":
        return {"embedding": vectors[0] if vectors else []}
    usage = data.get("usage") or {}
    return {
        "model": t.model,
        "embeddings": vectors,
        "total_duration": int(total_s * 1e9),
        "load_duration": 0,
        "prompt_eval_count": int(usage.get("prompt_tokens") or 0),
    }


# --------------------------------------------------------------------------- listings


def parameter_size(count: int) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit}".replace(".0", "")
    return str(count)


def openai_models(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": e["model"], "object": "model", "created": e.get("created", 0), "owned_by": e["owned_by"]}
            for e in entries
        ],
    }
