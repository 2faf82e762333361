"""Ollama store reading: names, roots, resolution, listing, and the bad-input corpus through the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures_gguf import (
    TINY_REF,
    manifest_path,
    model_blob,
    replace_model_blob,
    snapshot,
    tiny_store,
    write_tiny_gguf,
)
from helpers import assert_clean_failure, run_bounded, run_cli, run_cli_bounded

from sollol_ops.dev.devstore import write_store
from sollol_ops.errors import GGUFError, ModelNotFound, StoreError, UsageError
from sollol_ops.model.names import DEFAULT_HOST, ModelRef, parse_model_ref, suggest
from sollol_ops.model.ollama import list_models, read_manifest, resolve_model
from sollol_ops.model.roots import candidate_roots, store_roots

NO_DEFAULTS: tuple[str, ...] = ()


# --- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parts", "short"),
    [
        ("smollm2", (DEFAULT_HOST, "library", "smollm2", "latest"), "smollm2:latest"),
        ("smollm2:135m", (DEFAULT_HOST, "library", "smollm2", "135m"), "smollm2:135m"),
        ("library/smollm2:135m", (DEFAULT_HOST, "library", "smollm2", "135m"), "smollm2:135m"),
        (
            f"{DEFAULT_HOST}/library/smollm2:135m",
            (DEFAULT_HOST, "library", "smollm2", "135m"),
            "smollm2:135m",
        ),
        ("me/x:tag", (DEFAULT_HOST, "me", "x", "tag"), "me/x:tag"),
        ("me/x", (DEFAULT_HOST, "me", "x", "latest"), "me/x:latest"),
        (
            "hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M",
            ("hf.co", "bartowski", "Llama-3.2-1B-GGUF", "Q4_K_M"),
            None,
        ),
        ("localhost:5000/me/x:v1.2", ("localhost:5000", "me", "x", "v1.2"), None),
        (
            "qwen2.5-coder:1.5b-instruct-q4_K_M",
            (DEFAULT_HOST, "library", "qwen2.5-coder", "1.5b-instruct-q4_K_M"),
            None,
        ),
    ],
)
def test_parse_model_ref(text: str, parts: tuple[str, str, str, str], short: str | None) -> None:
    ref = parse_model_ref(text)
    assert ref == ModelRef(*parts)
    assert str(ref) == (short or text)
    assert parse_model_ref(str(ref)) == ref


@pytest.mark.parametrize(
    "text",
    ["", " ", "a b", "smollm2 ", "a/b/c/d", "/x", "x/", "a//b", "x:", ":tag", "x:a:b", "x@sha256:00",
     "../x", "../../etc/passwd", "x/..:y", "-x", "x!", "caf\u00e9", ".hidden", "x/y:/z"],
)  # fmt: skip
def test_parse_model_ref_rejects(text: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_model_ref(text)
    assert "\n" not in str(err.value) and "bad model name" in str(err.value)


def test_manifest_relpath() -> None:
    ref = parse_model_ref("me/x:tag")
    assert ref.manifest_relpath() == Path("manifests", DEFAULT_HOST, "me", "x", "tag")


# --- roots -------------------------------------------------------------------------------------


def _dirs(tmp_path: Path, *names: str) -> list[Path]:
    out = [tmp_path / n for n in names]
    for d in out:
        d.mkdir(parents=True)
    return out


def test_store_roots_order_and_existence(tmp_path: Path) -> None:
    explicit, env_root, home, system = _dirs(tmp_path, "explicit", "env", "home/.ollama/models", "system")
    env = {"OLLAMA_MODELS": str(env_root), "HOME": str(tmp_path / "home")}
    defaults = ("~/.ollama/models", str(system), str(tmp_path / "absent"))
    assert store_roots(explicit, env, defaults) == [explicit, env_root, home, system]
    assert candidate_roots(explicit, env, defaults)[-1] == tmp_path / "absent"
    assert store_roots(None, {"HOME": str(tmp_path / "home")}, defaults) == [home, system]


def test_store_roots_dedupes_and_ignores_empty_env(tmp_path: Path) -> None:
    (root,) = _dirs(tmp_path, "root")
    env = {"OLLAMA_MODELS": str(root), "HOME": str(tmp_path)}
    assert store_roots(str(root), env, (str(root) + "/",)) == [root]
    assert store_roots(None, {"OLLAMA_MODELS": "", "HOME": str(tmp_path)}, NO_DEFAULTS) == []


def test_store_roots_default_candidates(tmp_path: Path) -> None:
    roots = candidate_roots(None, {"HOME": str(tmp_path)})
    assert roots == [tmp_path / ".ollama/models", Path("/usr/share/ollama/.ollama/models")]


def test_explicit_root_must_exist(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such directory"):
        store_roots(tmp_path / "nope", {}, NO_DEFAULTS)


def test_relative_explicit_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _dirs(tmp_path, "rel")
    monkeypatch.chdir(tmp_path)
    assert store_roots("rel", {}, NO_DEFAULTS) == [tmp_path / "rel"]


# --- resolution --------------------------------------------------------------------------------


def test_resolve_explicit_root(tmp_path: Path) -> None:
    root = tiny_store(tmp_path)
    found = resolve_model(TINY_REF, root, env={}, defaults=NO_DEFAULTS)
    blob = model_blob(root, TINY_REF)
    assert (found.ref, found.root, found.blob) == (TINY_REF, root, blob)
    assert found.manifest == manifest_path(root, TINY_REF)
    assert found.digest == "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    assert found.size == blob.stat().st_size
    assert found.template_digest and found.params_digest and found.license_digest
    assert found.gguf is not None and found.gguf.block_count == 2 and not found.verified
    assert resolve_model(TINY_REF, root, env={}, verify=True, defaults=NO_DEFAULTS).verified


def test_resolve_via_ollama_models_env(tmp_path: Path) -> None:
    root = tiny_store(tmp_path)
    assert resolve_model("tiny:1b", env={"OLLAMA_MODELS": str(root)}, defaults=NO_DEFAULTS).root == root


def test_resolve_via_home(tmp_path: Path) -> None:
    tiny_store(tmp_path / "home/.ollama/models_src")
    (tmp_path / "home/.ollama/models_src/store").rename(tmp_path / "home/.ollama/models")
    found = resolve_model("tiny:1b", env={"HOME": str(tmp_path / "home")})
    assert found.root == tmp_path / "home/.ollama/models"


def test_resolve_via_system_default(tmp_path: Path) -> None:
    root = tiny_store(tmp_path)
    assert resolve_model("tiny:1b", env={"HOME": str(tmp_path / "nohome")}, defaults=[root]).root == root


def test_first_root_wins(tmp_path: Path) -> None:
    first = tiny_store(tmp_path / "a", blocks=2)
    second = tiny_store(tmp_path / "b", blocks=3)
    env = {"OLLAMA_MODELS": str(second)}
    assert resolve_model("tiny:1b", first, env=env, defaults=NO_DEFAULTS).gguf.block_count == 2  # type: ignore[union-attr]
    assert resolve_model("tiny:1b", None, env=env, defaults=[first]).root == second


@pytest.mark.parametrize("ref", ["me/tiny:v1", "example.com:5000/team/tiny:q4", "tiny"])
def test_namespaced_and_other_hosts(tmp_path: Path, ref: str) -> None:
    root = tiny_store(tmp_path, ref=ref)
    found = resolve_model(ref, root, env={}, defaults=NO_DEFAULTS)
    assert found.manifest == manifest_path(root, ref) and found.manifest.is_file()
    assert found.ref == str(parse_model_ref(ref))


def test_not_found_lists_searched_roots_and_suggests(tmp_path: Path) -> None:
    root = tiny_store(tmp_path, ref="smollm2:135m")
    with pytest.raises(ModelNotFound) as err:
        resolve_model("smollm2:13b", root, env={"HOME": str(tmp_path)}, defaults=("~/nope",))
    msg = str(err.value)
    assert msg.startswith("model 'smollm2:13b' not in any Ollama store (searched: ")
    assert f"{root}, {tmp_path / 'nope'}" in msg
    assert "run `ollama pull smollm2:13b` or pass --ollama-models" in msg
    assert msg.endswith("; did you mean: smollm2:135m?")


def test_not_found_without_near_match(tmp_path: Path) -> None:
    root = tiny_store(tmp_path, ref="smollm2:135m")
    with pytest.raises(ModelNotFound) as err:
        resolve_model("codellama:13b", root, env={}, defaults=NO_DEFAULTS)
    assert "did you mean" not in str(err.value)


def test_suggest_prefers_other_tags_of_the_same_name() -> None:
    installed = ["llama3:8b", "llama3.1:8b", "smollm2:135m", "smollm2:360m"]
    assert suggest(parse_model_ref("smollm2"), installed)[:2] == ["smollm2:135m", "smollm2:360m"]
    assert suggest(parse_model_ref("lama3:8b"), installed)[0] == "llama3:8b"
    assert suggest(parse_model_ref("zzz"), installed) == []


@pytest.mark.parametrize(
    ("breaker", "error", "needle"),
    [
        (lambda r: manifest_path(r, TINY_REF).write_text("{not json"), StoreError, "is not valid JSON"),
        (lambda r: manifest_path(r, TINY_REF).write_text("[1, 2]"), StoreError, "is not a JSON object"),
        (lambda r: manifest_path(r, TINY_REF).write_text('{"layers": []}'), StoreError, "0 model layers"),
        (lambda r: model_blob(r, TINY_REF).unlink(), StoreError, "missing; run `ollama pull tiny:1b`"),
        (lambda r: replace_model_blob(r, TINY_REF, b"GGUF\x03"), GGUFError, "truncated or corrupt"),
    ],
)
def test_resolve_errors(tmp_path: Path, breaker: Callable[[Path], object], error: type, needle: str) -> None:
    root = tiny_store(tmp_path)
    breaker(root)
    with pytest.raises(error, match=None) as err:
        resolve_model(TINY_REF, root, env={}, defaults=NO_DEFAULTS)
    assert needle in str(err.value)


def test_bad_digest_format(tmp_path: Path) -> None:
    root = tiny_store(tmp_path)
    path = manifest_path(root, TINY_REF)
    manifest = json.loads(path.read_text())
    manifest["layers"][0]["digest"] = "sha256:../../etc/passwd"
    path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="is not sha256:<64 hex digits>"):
        resolve_model(TINY_REF, root, env={}, defaults=NO_DEFAULTS)


def test_two_model_layers(tmp_path: Path) -> None:
    root = tiny_store(tmp_path)
    path = manifest_path(root, TINY_REF)
    manifest = json.loads(path.read_text())
    manifest["layers"].append(manifest["layers"][0])
    path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="has 2 model layers"):
        resolve_model(TINY_REF, root, env={}, defaults=NO_DEFAULTS)


# --- listing -----------------------------------------------------------------------------------


def test_list_models(tmp_path: Path) -> None:
    root = tiny_store(tmp_path, ref="tiny:1b")
    write_store(root, "me/other:v2", write_tiny_gguf(tmp_path / "o.gguf", blocks=5))
    manifest_path(root, "broken:x").parent.mkdir(parents=True)
    manifest_path(root, "broken:x").write_text("nope")
    (root / "manifests" / "stray").write_text("{}")
    entries = {m.ref: m for m in list_models([root], read_headers=True)}
    assert set(entries) == {"tiny:1b", "me/other:v2", "broken:x", "stray"}
    assert (entries["me/other:v2"].block_count, entries["me/other:v2"].architecture) == (5, "llama")
    assert entries["tiny:1b"].file_type_name == "F32" and entries["tiny:1b"].error is None
    assert "is not valid JSON" in (entries["broken:x"].error or "")
    assert "is not at manifests/" in (entries["stray"].error or "")
    assert list_models([root])[0].architecture is None  # headers only on request


def test_list_models_marks_shadowed_duplicates(tmp_path: Path) -> None:
    first, second = tiny_store(tmp_path / "a"), tiny_store(tmp_path / "b")
    entries = list_models([first, second])
    assert [(m.root, m.shadowed) for m in entries] == [(first, False), (second, True)]


def test_list_models_reports_bad_gguf_as_entry(tmp_path: Path) -> None:
    root = tiny_store(tmp_path)
    replace_model_blob(root, TINY_REF, b"not a gguf at all")
    (entry,) = list_models([root], read_headers=True)
    assert entry.error and "is not a GGUF file" in entry.error


# --- CLI ---------------------------------------------------------------------------------------


def _env(tmp_path: Path) -> dict[str, str]:
    return {"HOME": str(tmp_path / "home"), "OLLAMA_MODELS": ""}


def test_cli_resolve_prints_blob_path(tmp_path: Path) -> None:
    root = tiny_store(tmp_path)
    proc = run_cli("resolve", TINY_REF, "--ollama-models", str(root), "--verify", env=_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{model_blob(root, TINY_REF)}\n"


def test_cli_resolve_json(tmp_path: Path) -> None:
    root = tiny_store(tmp_path)
    proc = run_cli("resolve", "tiny:1b", "--json", env={**_env(tmp_path), "OLLAMA_MODELS": str(root)})
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["blob"] == str(model_blob(root, TINY_REF)) and data["gguf"]["block_count"] == 2


def test_cli_models_table_and_json(tmp_path: Path) -> None:
    root = tiny_store(tmp_path)
    proc = run_cli("models", "--ollama-models", str(root), env=_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    header, _, row = proc.stdout.splitlines()
    assert header.split() == ["MODEL", "SIZE", "ARCH", "LAYERS", "QUANT", "ROOT"]
    assert row.split()[:1] == ["tiny:1b"] and row.split()[3:] == ["llama", "2", "F32", str(root)]
    proc = run_cli("models", "--json", "--ollama-models", str(root), env=_env(tmp_path))
    assert [m["ref"] for m in json.loads(proc.stdout)] == ["tiny:1b"]


def test_cli_models_empty(tmp_path: Path) -> None:
    proc = run_cli("models", env=_env(tmp_path))
    assert proc.returncode == 0 and "no models found" in proc.stderr


def _flip_tensor_byte(root: Path) -> None:
    blob = model_blob(root, TINY_REF)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))


def _truncate_gguf(root: Path) -> None:
    data = model_blob(root, TINY_REF).read_bytes()
    replace_model_blob(root, TINY_REF, data[: len(data) - 100])


def _wrong_size(root: Path) -> None:
    with model_blob(root, TINY_REF).open("ab") as fh:
        fh.write(b"extra")


def _no_model_layer(root: Path) -> None:
    path = manifest_path(root, TINY_REF)
    manifest = json.loads(path.read_text())
    manifest["layers"] = [x for x in manifest["layers"] if not x["mediaType"].endswith(".model")]
    path.write_text(json.dumps(manifest))


RESOLVE = ("resolve", TINY_REF)
MODELS = ("models",)
NOT_GGUF = b"<html>not found</html>"
Run = tuple[tuple[str, ...], list[str]]
CORPUS: list[tuple[str, Callable[[Path], object], list[Run]]] = [
    ("missing manifest", lambda r: manifest_path(r, TINY_REF).unlink(),
        [(RESOLVE, ["not in any Ollama store"])]),
    ("not json", lambda r: manifest_path(r, TINY_REF).write_text("{oops"),
        [(RESOLVE, ["is not valid JSON"]), (MODELS, ["1 of 1", "is not valid JSON"])]),
    ("no model layer", _no_model_layer,
        [(RESOLVE, ["0 model layers"]), (MODELS, ["0 model layers"])]),
    ("missing blob", lambda r: model_blob(r, TINY_REF).unlink(),
        [(RESOLVE, ["missing", "ollama pull tiny:1b"]), (MODELS, ["missing"])]),
    ("wrong size", _wrong_size,
        [(RESOLVE, ["bytes but the manifest says"]), (MODELS, ["manifest says"])]),
    ("not gguf", lambda r: replace_model_blob(r, TINY_REF, NOT_GGUF),
        [(RESOLVE, ["is not a GGUF file"]), (MODELS, ["is not a GGUF file"])]),
    ("truncated gguf", _truncate_gguf,
        [(RESOLVE, ["truncated or corrupt"]), (MODELS, ["truncated or corrupt"])]),
    ("wrong digest", _flip_tensor_byte,
        [((*RESOLVE, "--verify"), ["has digest", "but the manifest says"])]),
]  # fmt: skip


@pytest.mark.parametrize(("case", "breaker", "runs"), CORPUS, ids=[c[0] for c in CORPUS])
def test_cli_bad_store_fails_cleanly_and_leaves_store_untouched(
    tmp_path: Path, case: str, breaker: Callable[[Path], object], runs: list[Run]
) -> None:
    root = tiny_store(tmp_path)
    breaker(root)
    before = snapshot(root)
    for args, needles in runs:
        proc = run_cli(*args, "--ollama-models", str(root), env=_env(tmp_path))
        assert_clean_failure(proc, *needles)
        assert proc.returncode == 4 or (case in ("not gguf", "truncated gguf") and proc.returncode == 5)
    assert snapshot(root) == before, f"{case}: store changed"


def test_cli_models_keeps_listing_good_entries_beside_broken_ones(tmp_path: Path) -> None:
    root = tiny_store(tmp_path)
    write_store(root, "good:1", write_tiny_gguf(tmp_path / "g.gguf"))
    manifest_path(root, TINY_REF).write_text("{oops")
    proc = run_cli("models", "--ollama-models", str(root), env=_env(tmp_path))
    assert_clean_failure(proc, "1 of 2 installed models are broken")
    assert "ERROR" in proc.stdout and "good:1" in proc.stdout and "is not valid JSON" in proc.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("resolve", "a b"), "bad model name"),
        (("resolve", "a/b/c/d"), "bad model name"),
        (("resolve", "x", "--ollama-models", "/nonexistent/store"), "no such directory"),
        (("models", "--ollama-models", "/nonexistent/store"), "no such directory"),
    ],
)
def test_cli_usage_errors(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    proc = run_cli(*args, env=_env(tmp_path))
    assert_clean_failure(proc, needle)
    assert proc.returncode == 2


@pytest.mark.model
def test_cli_real_smollm2_store(smollm2_store: Path, tmp_path: Path) -> None:
    before = snapshot(smollm2_store / "manifests")
    proc = run_cli("resolve", "smollm2:135m", "--verify", "--ollama-models", str(smollm2_store), env=_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(str(smollm2_store / "blobs" / "sha256-"))
    proc = run_cli("models", "--json", "--ollama-models", str(smollm2_store), env=_env(tmp_path))
    (entry,) = [m for m in json.loads(proc.stdout) if m["ref"] == "smollm2:135m"]
    assert (entry["architecture"], entry["block_count"], entry["file_type_name"]) == ("llama", 30, "Q4_1")
    assert snapshot(smollm2_store / "manifests") == before


# --- hostile stores: non-regular files, unreadable directories (issue 9) -----------------------


def _fifo_manifest(root: Path) -> None:
    path = manifest_path(root, TINY_REF)
    path.unlink()
    os.mkfifo(path)


def _device_manifest(root: Path) -> None:
    path = manifest_path(root, TINY_REF)
    path.unlink()
    path.symlink_to("/dev/zero")


def _fifo_beside(root: Path) -> None:
    os.mkfifo(manifest_path(root, TINY_REF).with_name("fifo"))


NON_REGULAR = {"fifo manifest": _fifo_manifest, "manifest -> /dev/zero": _device_manifest, "fifo tag": _fifo_beside}
UP_INVENTORY = "[rpc_servers]\nw1 ansible_host=127.0.0.1\n"
NON_REGULAR_RUNS = [
    (case, command)
    for case in sorted(NON_REGULAR)
    for command in ("resolve", "models", "up")
    if case != "fifo tag" or command == "models"  # a FIFO beside tiny:1b is not read by resolve tiny:1b
]


@pytest.mark.parametrize(("case", "command"), NON_REGULAR_RUNS)
def test_cli_non_regular_manifest_is_refused_not_read(tmp_path: Path, case: str, command: str) -> None:
    """A FIFO among the manifests used to hang resolve/models/up (open() waits for a writer)."""
    root = tiny_store(tmp_path)
    NON_REGULAR[case](root)
    (tmp_path / "inventory.ini").write_text(UP_INVENTORY)
    args = {
        "resolve": ["resolve", TINY_REF],
        "models": ["models"],
        "up": ["-i", str(tmp_path / "inventory.ini"), "up", TINY_REF, "--dry-run"],
    }[command]
    env = {**_env(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_STATE_HOME": str(tmp_path / "state")}
    before = snapshot_kinds(root)
    proc = run_cli_bounded(*args, "--ollama-models", str(root), env=env)
    err = assert_clean_failure(proc, "is not a regular file", "manifests")
    assert proc.returncode == StoreError.exit_code, err
    assert snapshot_kinds(root) == before


def snapshot_kinds(root: Path) -> dict[str, tuple[int, int]]:
    """(mode, size) of everything under root, without opening anything (FIFOs stay closed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = Path(dirpath, name).lstat()
            out[os.path.relpath(Path(dirpath, name), root)] = (st.st_mode, st.st_size)
    return out


def test_read_manifest_bounds_what_it_reads(tmp_path: Path) -> None:
    big = tmp_path / "big"
    with big.open("wb") as fh:
        fh.truncate(1 << 40)  # sparse: a 1 TiB "manifest" must not be read whole
    with pytest.raises(StoreError, match="is over 1048576 bytes"):
        read_manifest(big)


def _unprivileged() -> list[str]:
    """A command prefix under which permission bits count, also for root: setpriv drops CAP_DAC_*."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    drop = [setpriv or "setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    if setpriv is None or subprocess.run([*drop, "true"], check=False).returncode != 0:
        pytest.fail("needs setpriv (util-linux, installed by .ci/run) able to drop root's DAC capabilities")
    return drop


def _manifests_a_file(root: Path) -> Path:
    shutil.rmtree(root / "manifests")
    (root / "manifests").write_text("not a directory\n")
    return root / "manifests"


def _manifests_a_loop(root: Path) -> Path:
    shutil.rmtree(root / "manifests")
    (root / "manifests").symlink_to("manifests")
    return root / "manifests"


def _chmod_000(path: Path) -> Path:
    path.chmod(0)
    return path


UNREADABLE: dict[str, tuple[Callable[[Path], Path], str, bool]] = {
    # case: (breaker returning the path to name, the OS error, needs permission bits to count)
    "manifests is a file": (_manifests_a_file, "Not a directory", False),
    "manifests is a symlink loop": (_manifests_a_loop, "Too many levels of symbolic links", False),
    "manifests mode 000": (lambda r: _chmod_000(r / "manifests"), "Permission denied", True),
    "namespace dir mode 000": (
        lambda r: _chmod_000(r / "manifests/registry.ollama.ai/library"),
        "Permission denied",
        True,
    ),
    "store root behind a mode 000 dir": (lambda r: _chmod_000(r.parent) / r.name, "Permission denied", True),
}


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_cli_models_unreadable_store_fails(tmp_path: Path, case: str) -> None:
    """An unreadable store used to list as "no models found" with exit 0 (os.walk drops errors)."""
    breaker, os_error, needs_perms = UNREADABLE[case]
    prefix = _unprivileged() if needs_perms else []
    root = tiny_store(tmp_path / "base")
    named = breaker(root)
    try:
        # $OLLAMA_MODELS, not --ollama-models: a root that cannot be looked into is still a root.
        env = {"HOME": str(tmp_path / "home"), "OLLAMA_MODELS": str(root)}
        proc = run_bounded([*prefix, sys.executable, "-m", "sollol_ops.cli.main", "models"], env=env)
        err = assert_clean_failure(proc, f"cannot read {named}", os_error)
        assert proc.returncode == StoreError.exit_code, err
        assert "no models found" not in proc.stderr
    finally:
        for path in (root.parent, root / "manifests", root / "manifests/registry.ollama.ai/library"):
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
