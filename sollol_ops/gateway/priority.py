"""Interactive requests ahead of background ones on the sharded model's slots.

Open WebUI sends its chat tasks (a title, tags, follow-up suggestions, search queries, autocompletion) as
ordinary `/api/chat` and `/v1/chat/completions` requests beside the user's own chat, and the coordinator has
few slots: one such task generating for minutes made the user's next message wait behind it. The gateway
therefore admits requests to the sharded model no faster than its llama-server has slots (`--parallel`),
interactive ones first, and, with more than one slot, keeps one free of background work.

What is background: a request whose header `X-Sollol-Priority` says `background`, or (no header) one whose
last user message is an Open WebUI task prompt. Every default task template of Open WebUI starts with the
line `### Task:` and quotes the conversation between `<chat_history>` tags; a user's own message seldom
does either. `X-Sollol-Priority: interactive` overrides the guess.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any, Protocol, TypeVar

HEADER = "x-sollol-priority"
TASK_PREFIX = "### Task:"
HISTORY_TAGS = ("<chat_history>", "</chat_history>")


class Priority(StrEnum):
    INTERACTIVE = "interactive"
    BACKGROUND = "background"


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of parts (OpenAI's multimodal shape)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p.get("text", "") for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)
        )
    return ""


def is_task_prompt(text: str) -> bool:
    """An Open WebUI task prompt: it starts with `### Task:` or quotes the chat between <chat_history> tags."""
    return text.lstrip().startswith(TASK_PREFIX) or all(tag in text for tag in HISTORY_TAGS)


def classify(body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Priority:
    """The priority of a chat or generate request (Ollama or OpenAI body)."""
    said = (headers or {}).get(HEADER, "").strip().lower()
    if said in (Priority.INTERACTIVE, Priority.BACKGROUND):
        return Priority(said)
    messages = body.get("messages")
    if isinstance(messages, list):
        users = [m for m in messages if isinstance(m, Mapping) and m.get("role") == "user"]
        text = _text(users[-1].get("content")) if users else ""
    else:
        text = _text(body.get("prompt"))
    return Priority.BACKGROUND if is_task_prompt(text) else Priority.INTERACTIVE


class Queued(Protocol):
    name: str
    priority: Priority


T = TypeVar("T", bound=Queued)


def admit(queue: Sequence[T], model: str | None, in_flight: int, background: int, slots: int) -> list[T]:
    """The tickets of `queue` for `model` to admit now, given `in_flight` requests (`background` of them) on
    `slots` slots: interactive ones first (in queue order), then background ones while one slot stays free of
    background work (with more than one slot)."""
    free = max(0, slots - in_flight)
    bg_cap = max(1, slots - 1)
    out: list[T] = []
    mine = [t for t in queue if t.name == model]
    for t in (t for t in mine if t.priority is Priority.INTERACTIVE):
        if free == 0:
            return out
        out.append(t)
        free -= 1
    for t in (t for t in mine if t.priority is Priority.BACKGROUND):
        if free == 0 or background >= bg_cap:
            break
        out.append(t)
        free -= 1
        background += 1
    return out


def slots_of(command: Iterable[str]) -> int:
    """llama-server's slot count from its command line (`--parallel N` / `-np N`; 1 without)."""
    argv = list(command)
    for i, arg in enumerate(argv[:-1]):
        if arg in ("--parallel", "-np") and argv[i + 1].isdigit():
            return max(1, int(argv[i + 1]))
    for arg in argv:
        if arg.startswith("--parallel=") and arg.split("=", 1)[1].isdigit():
            return max(1, int(arg.split("=", 1)[1]))
    return 1
