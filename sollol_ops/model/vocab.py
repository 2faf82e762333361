"""A GGUF's vocabulary (its tokenizer metadata) and whether a draft model shares its target's, by the rule
llama.cpp applies before it speculates (common/speculative.cpp, common_speculative_are_compatible).

llama.cpp loads both models and then refuses a draft whose vocabulary differs: the same tokenizer model
(tokenizer.ggml.model), token counts at most 128 apart, the same text for every token from id 5 up to the
smaller count, the same add-BOS/EOS flags and, where one is added, the same BOS/EOS id. Here the same rule is
read from the two headers before anything starts. The flags and ids are compared where both files set them
(llama.cpp's defaults for an unset flag depend on the tokenizer and its pre-tokenizer; a pair that differs
only there is still caught by llama.cpp itself, at load)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sollol_ops.model.gguf_header import Header, StringArray, read_checked, read_string_items

TOKENS_KEY = "tokenizer.ggml.tokens"
# llama.cpp's limits (common/speculative.cpp): SPEC_VOCAB_MAX_SIZE_DIFFERENCE, SPEC_VOCAB_CHECK_START_TOKEN_ID.
MAX_SIZE_DIFFERENCE = 128
CHECK_START_TOKEN_ID = 5


@dataclass(frozen=True)
class Vocabulary:
    """The tokenizer a GGUF declares: what llama.cpp compares between a draft and its target."""

    path: Path
    model: str | None  # tokenizer.ggml.model: llama (SentencePiece), gpt2 (BPE), bert, t5, ...
    n_tokens: int
    tokens: StringArray | None  # where tokenizer.ggml.tokens lies in the file
    bos: int | None = None
    eos: int | None = None
    add_bos: bool | None = None
    add_eos: bool | None = None

    def describe(self) -> str:
        return f"{self.n_tokens} tokens ({self.model or 'no tokenizer model'})"


def _int(metadata: Mapping[str, Any], key: str) -> int | None:
    value = metadata.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _bool(metadata: Mapping[str, Any], key: str) -> bool | None:
    value = metadata.get(key)
    return value if isinstance(value, bool) else None


def _build(path: Path, header: Header, _size: int) -> Vocabulary:
    md = header.metadata
    model = md.get("tokenizer.ggml.model")
    tokens = header.string_arrays.get(TOKENS_KEY)
    return Vocabulary(
        path=path,
        model=model if isinstance(model, str) else None,
        n_tokens=tokens.count if tokens is not None else 0,
        tokens=tokens,
        bos=_int(md, "tokenizer.ggml.bos_token_id"),
        eos=_int(md, "tokenizer.ggml.eos_token_id"),
        add_bos=_bool(md, "tokenizer.ggml.add_bos_token"),
        add_eos=_bool(md, "tokenizer.ggml.add_eos_token"),
    )


def read_vocabulary(path: str | Path) -> Vocabulary:
    """The vocabulary the GGUF at `path` declares (a one-line GGUFError when its header is unreadable)."""
    return read_checked(Path(path), _build)


def _special(which: str, draft: Vocabulary, target: Vocabulary, target_name: str) -> str | None:
    """How the two differ in adding a BOS or EOS token (`which`: bos/eos), as far as both files say."""
    add_d, add_t = getattr(draft, f"add_{which}"), getattr(target, f"add_{which}")
    if add_d is not None and add_t is not None and add_d != add_t:
        token = f"{'an' if which == 'eos' else 'a'} {which.upper()} token"
        return f"{'adds' if add_d else 'does not add'} {token} and {target_name} {'does' if add_t else 'does not'}"
    id_d, id_t = getattr(draft, which), getattr(target, which)
    if (add_t or add_d) and id_d is not None and id_t is not None and id_d != id_t:
        return f"has {which.upper()} token {id_d}, {target_name} has {id_t}"
    return None


def _printable(raw: bytes) -> str:
    return repr(raw.decode("utf-8", errors="replace"))[:40]


def _difference(draft: Vocabulary, target: Vocabulary, target_name: str) -> str | None:
    if draft.model != target.model or abs(draft.n_tokens - target.n_tokens) > MAX_SIZE_DIFFERENCE:
        return f"has vocabulary {draft.describe()}, {target_name} has {target.describe()}"
    for which in ("bos", "eos"):
        if (why := _special(which, draft, target, target_name)) is not None:
            return why
    if draft.tokens is None or target.tokens is None:
        return None  # neither has tokens (counts at most 128 apart: both empty)
    stop = min(draft.n_tokens, target.n_tokens)
    ours = read_string_items(draft.path, draft.tokens, CHECK_START_TOKEN_ID, stop)
    theirs = read_string_items(target.path, target.tokens, CHECK_START_TOKEN_ID, stop)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True), start=CHECK_START_TOKEN_ID):
        if a != b:
            return f"has token {i} {_printable(a)} where {target_name} has {_printable(b)} ({draft.describe()})"
    return None


def mismatch(draft_name: str, draft: Vocabulary, target_name: str, target: Vocabulary) -> str | None:
    """One line naming how `draft`'s vocabulary differs from `target`'s, or None when llama.cpp would accept
    the pair (the first of its rules that fails: tokenizer model and size, BOS/EOS, then each token's text)."""
    why = _difference(draft, target, target_name)
    return None if why is None else f"draft {draft_name} {why}: a draft must share its target's vocabulary"
