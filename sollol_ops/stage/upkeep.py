"""`stage --verify` and `--prune`: staged files re-hashed against the ledger, unneeded cache files removed.

`verify` re-hashes them with hashlib and removes any file whose content no longer matches (llama.cpp trusts a
cache file's name: a corrupt file would be loaded as weights); `prune` removes cache files no ledger entry needs
(regular files named by 16 hex digits only). Workers staged through Ansible are reached with playbooks/stage.yml.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sollol_ops.stage.ledger import LedgerEntry, LedgerFile, ledger_lock, load_ledger, save_ledger
from sollol_ops.stage.remote import AnsibleJob, run_stage_playbook
from sollol_ops.stage.worker import prune_files, verify_files


@dataclass
class VerifyRow:
    endpoint: str
    cache_dir: str
    model: str
    file: str
    state: str  # ok | missing | corrupt (removed) | remote (not checked: no inventory)


def _remote_host(entry: LedgerEntry) -> str | None:
    return entry.where.removeprefix("ansible:") if entry.where.startswith("ansible:") else None


def verify(root: Path | None = None, model: str | None = None, inventory: Path | None = None) -> list[VerifyRow]:
    """Re-hash every staged file (sha256) against the ledger: on this host directly, on workers staged through
    Ansible with playbooks/stage.yml (when `inventory` is given). A file whose content changed is removed; it and
    missing ones leave the ledger, so that the next load sends those tensors again."""
    rows: list[VerifyRow] = []
    with ledger_lock(root):
        ledger = load_ledger(root)
        entries = [e for e in ledger.entries if model is None or e.model == model]
        states: dict[tuple[str, str, str], str] = {}
        groups: dict[tuple[str, str], list[LedgerFile]] = {}
        for e in entries:
            groups.setdefault((e.endpoint, e.cache_dir), []).extend(e.files)
        remote_of = {(e.endpoint, e.cache_dir): _remote_host(e) for e in entries}
        local = [k for k in groups if remote_of[k] is None]
        remote = [k for k in groups if remote_of[k] is not None]
        for endpoint, directory in local:
            files = [(f.file, f.size, f.sha256) for f in groups[(endpoint, directory)]]
            for name, state in verify_files(Path(directory), files):
                states[(endpoint, directory, name)] = state
        if remote and inventory is not None:
            with tempfile.TemporaryDirectory(prefix="sollol-verify-") as tmp:
                jobs = []
                for endpoint, directory in remote:
                    manifest = Path(tmp) / f"{endpoint.replace(':', '_')}.json"
                    files = [
                        {"file": f.file, "size": f.size, "sha256": f.sha256} for f in groups[(endpoint, directory)]
                    ]
                    manifest.write_text(json.dumps({"files": files}))
                    jobs.append(AnsibleJob(str(remote_of[(endpoint, directory)]), endpoint, manifest, None, directory))
                outputs = run_stage_playbook("verify", jobs, inventory)
            for endpoint, directory in remote:
                for item in outputs[endpoint].get("verify", []):  # type: ignore[union-attr]
                    states[(endpoint, directory, str(item["file"]))] = str(item["state"])
        for e in entries:
            keep = []
            for f in e.files:
                state = states.get((e.endpoint, e.cache_dir, f.file), "remote")
                rows.append(VerifyRow(e.endpoint, e.cache_dir, e.model, f.file, state))
                if state in ("ok", "remote"):
                    keep.append(f)
            e.files = keep
        ledger.entries = [e for e in ledger.entries if e.files]  # nothing of it left: a stale entry
        save_ledger(ledger, root)
    return rows


@dataclass
class PruneRow:
    endpoint: str
    cache_dir: str
    file: str
    size: int


def prune(
    cache_dirs: dict[str, Path], root: Path | None = None, dry_run: bool = False, inventory: Path | None = None
) -> list[PruneRow]:
    """Remove cache files no ledger entry needs from the given cache directories (endpoint -> dir, on this host),
    from every cache directory the ledger names on this host, and (with `inventory`) from those of workers
    staged through Ansible. Only regular files named by 16 hex digits are ever removed."""
    removed: list[PruneRow] = []
    with ledger_lock(root):
        ledger = load_ledger(root)
        dirs = {(endpoint, str(d)) for endpoint, d in cache_dirs.items()}
        remote: dict[tuple[str, str], str] = {}
        for e in ledger.entries:
            host = _remote_host(e)
            if host is None:
                dirs.add((e.endpoint, e.cache_dir))
            else:
                remote[(e.endpoint, e.cache_dir)] = host
        for endpoint, directory in sorted(dirs):
            for name, size in prune_files(Path(directory), ledger.needed(endpoint, directory), dry_run):
                removed.append(PruneRow(endpoint, directory, name, size))
        if remote and inventory is not None and not dry_run:
            with tempfile.TemporaryDirectory(prefix="sollol-prune-") as tmp:
                jobs = []
                for (endpoint, directory), host in sorted(remote.items()):
                    manifest = Path(tmp) / f"{endpoint.replace(':', '_')}.json"
                    manifest.write_text(json.dumps({"keep": sorted(ledger.needed(endpoint, directory))}))
                    jobs.append(AnsibleJob(host, endpoint, manifest, None, directory))
                outputs = run_stage_playbook("prune", jobs, inventory)
            for endpoint, directory in sorted(remote):
                for item in outputs[endpoint].get("pruned", []):  # type: ignore[union-attr]
                    removed.append(PruneRow(endpoint, directory, str(item["file"]), int(item["size"])))
    return removed
