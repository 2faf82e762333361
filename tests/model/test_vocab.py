"""A draft's vocabulary against its target's (llama.cpp's rule, read from the GGUF headers): small GGUFs written
by the `gguf` package, and the real SmolLM2 file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fixtures_gguf import extract_smollm2, tokens_of, write_tiny_gguf, write_vocab_gguf

from sollol_ops.errors import GGUFError
from sollol_ops.model.gguf_header import read_string_items
from sollol_ops.model.vocab import MAX_SIZE_DIFFERENCE, mismatch, read_vocabulary

TOKENS = tokens_of(300)


def _pair(tmp_path: Path, draft: dict, target: dict | None = None) -> str | None:
    """mismatch() of a draft GGUF written with `draft`'s keywords against a target written with `target`'s."""
    target = {"tokens": TOKENS, **(target or {})}
    draft = {"tokens": TOKENS, **draft}
    t = write_vocab_gguf(tmp_path / "target.gguf", target.pop("tokens"), **target)
    d = write_vocab_gguf(tmp_path / "draft.gguf", draft.pop("tokens"), **draft)
    return mismatch("small:1b", read_vocabulary(d), "big:7b", read_vocabulary(t))


def test_the_header_reader_finds_the_token_list_and_reads_it_back(tmp_path: Path) -> None:
    vocab = read_vocabulary(write_vocab_gguf(tmp_path / "v.gguf", TOKENS, add_bos=True))
    assert (vocab.model, vocab.n_tokens, vocab.bos, vocab.eos, vocab.add_bos, vocab.add_eos) == (
        "gpt2",
        300,
        1,
        2,
        True,
        None,
    )
    assert vocab.tokens is not None
    assert read_string_items(vocab.path, vocab.tokens, 0, 300) == [t.encode() for t in TOKENS]
    assert read_string_items(vocab.path, vocab.tokens, 298, 10_000) == [b"tok298", b"tok299"]


def test_a_gguf_without_a_tokenizer_has_an_empty_vocabulary(tmp_path: Path) -> None:
    vocab = read_vocabulary(write_tiny_gguf(tmp_path / "bare.gguf"))
    assert (vocab.model, vocab.n_tokens, vocab.tokens) == (None, 0, None)


def test_the_same_vocabulary_is_accepted(tmp_path: Path) -> None:
    assert _pair(tmp_path, {}) is None
    assert _pair(tmp_path, {"add_bos": True}, {"add_bos": True}) is None


def test_another_tokenizer_is_named_with_both_sizes(tmp_path: Path) -> None:
    why = _pair(tmp_path, {"model": "llama", "tokens": tokens_of(100)})
    assert why == (
        "draft small:1b has vocabulary 100 tokens (llama), big:7b has 300 tokens (gpt2): "
        "a draft must share its target's vocabulary"
    )
    same_size = _pair(tmp_path, {"model": "llama"}) or ""
    assert "has vocabulary 300 tokens (llama), big:7b has 300 tokens (gpt2)" in same_size


def test_sizes_apart_by_more_than_llama_cpp_allows(tmp_path: Path) -> None:
    near = tokens_of(300 + MAX_SIZE_DIFFERENCE)  # the same 300 first tokens, then 128 more: llama.cpp accepts it
    assert _pair(tmp_path, {"tokens": near}) is None
    far = tokens_of(300 + MAX_SIZE_DIFFERENCE + 1)
    assert "has vocabulary 429 tokens (gpt2), big:7b has 300 tokens (gpt2)" in (_pair(tmp_path, {"tokens": far}) or "")


def test_a_token_that_differs_is_named_from_id_5_on(tmp_path: Path) -> None:
    changed = list(TOKENS)
    changed[217] = "other"
    why = _pair(tmp_path, {"tokens": changed})
    assert why is not None and "has token 217 'other' where big:7b has 'tok217'" in why
    early = list(TOKENS)
    early[3] = "other"  # llama.cpp compares from id 5 (the special tokens below may differ)
    assert _pair(tmp_path, {"tokens": early}) is None


def test_bos_and_eos_handling(tmp_path: Path) -> None:
    assert "has BOS token 7, big:7b has 1" in (_pair(tmp_path, {"bos": 7, "add_bos": True}, {"add_bos": True}) or "")
    assert _pair(tmp_path, {"bos": 7, "add_bos": False}, {"add_bos": False}) is None  # no BOS added: ids unused
    assert "does not add a BOS token and big:7b does" in (_pair(tmp_path, {"add_bos": False}, {"add_bos": True}) or "")
    assert "adds an EOS token and big:7b does not" in (_pair(tmp_path, {"add_eos": True}, {"add_eos": False}) or "")
    assert "has EOS token 9, big:7b has 2" in (_pair(tmp_path, {"eos": 9, "add_eos": True}, {"add_eos": True}) or "")
    assert _pair(tmp_path, {"bos": 7}) is None  # neither file says whether a BOS is added: llama.cpp decides


def test_a_token_list_cut_short_after_its_header_was_read_is_a_gguf_error(tmp_path: Path) -> None:
    path = write_vocab_gguf(tmp_path / "v.gguf", TOKENS)
    vocab = read_vocabulary(path)
    assert vocab.tokens is not None
    os.truncate(path, vocab.tokens.offset + 100)
    with pytest.raises(GGUFError, match="runs past the end of the file"):
        read_string_items(path, vocab.tokens, 0, 300)


@pytest.mark.model
def test_smollm2_against_itself_and_against_another_tokenizer(tmp_path: Path) -> None:
    real = extract_smollm2(tmp_path)
    vocab = read_vocabulary(real)
    assert (vocab.model, vocab.n_tokens, vocab.bos, vocab.eos) == ("gpt2", 49152, 1, 2)
    assert mismatch("smollm2:135m", vocab, "smollm2:135m", vocab) is None
    other = read_vocabulary(write_vocab_gguf(tmp_path / "llama.gguf", tokens_of(32000), model="llama"))
    assert mismatch("tiny:1b", other, "smollm2:135m", vocab) == (
        "draft tiny:1b has vocabulary 32000 tokens (llama), smollm2:135m has 49152 tokens (gpt2): "
        "a draft must share its target's vocabulary"
    )
