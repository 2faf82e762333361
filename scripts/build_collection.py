"""Build the sollol.ops Ansible collection: python scripts/build_collection.py [--output DIR] -> prints the tarball.

A collection has roles/ and playbooks/ at its root: this stages collection/ (galaxy.yml, meta/, README.md) with
copies of the repository's roles/ and playbooks/ (the one copy in git) in a scratch directory and runs
`ansible-galaxy collection build` there, so nothing is duplicated in the repository and nothing else gets in.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def ansible_galaxy() -> str:
    beside = Path(sys.executable).parent / "ansible-galaxy"
    found = str(beside) if beside.is_file() else shutil.which("ansible-galaxy")
    if found is None:
        raise SystemExit(
            "build_collection.py: ansible-galaxy not found next to this Python or on PATH: install ansible-core"
        )
    return found


def build(output: Path, repo: Path = REPO) -> Path:
    """Stage and build the collection into output; return the tarball."""
    output.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    with tempfile.TemporaryDirectory(prefix="sollol-collection-") as tmp:
        stage = Path(tmp) / "ops"
        shutil.copytree(repo / "collection", stage, ignore=ignore)
        for tree in ("roles", "playbooks"):
            shutil.copytree(repo / tree, stage / tree, ignore=ignore)
        proc = subprocess.run(
            [ansible_galaxy(), "collection", "build", str(stage), "--output-path", str(output), "--force"],
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise SystemExit(f"build_collection.py: ansible-galaxy collection build failed: {(lines or ['no output'])[-1]}")
    built = [ln.split("at ", 1)[1].strip() for ln in proc.stdout.splitlines() if "Created collection" in ln]
    if not built:
        raise SystemExit(f"build_collection.py: ansible-galaxy printed no tarball: {proc.stdout.strip()!r}")
    return Path(built[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "dist", help="directory of the tarball (default dist/)")
    print(build(parser.parse_args().output))


if __name__ == "__main__":
    main()
