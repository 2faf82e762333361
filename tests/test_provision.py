"""`sollol-ops provision` runs a real playbook through ansible-runner: live progress, summary, exit codes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import assert_clean_failure, run_cli

OK_PLAYBOOK = """\
- name: Tiny provision
  hosts: all
  gather_facts: false
  tasks:
    - name: Say hello
      ansible.builtin.command: "true"
      changed_when: false
    - name: Write a file
      ansible.builtin.copy:
        dest: "{out}"
        content: "hello\\n"
        mode: "0644"
      tags: [write]
"""

FAILING_PLAYBOOK = """\
- name: Tiny provision that fails
  hosts: all
  gather_facts: false
  tasks:
    - name: Break on purpose
      ansible.builtin.fail:
        msg: deliberate failure for the test
"""


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    inv = tmp_path / "inventory.ini"
    inv.write_text(
        f"[coordinator]\nlocalhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
        "[rpc_servers]\n"
    )
    return inv


def _row(stdout: str, host: str) -> dict[str, int]:
    for line in stdout.splitlines():
        cells = line.split()
        if cells and cells[0] == host:
            return dict(zip(["ok", "changed", "failed", "unreachable", "skipped"], map(int, cells[1:6]), strict=True))
    raise AssertionError(f"no summary row for {host} in {stdout!r}")


@pytest.mark.slow
def test_provision_summary_and_idempotence(tmp_path: Path, inventory: Path) -> None:
    out = tmp_path / "hello.txt"
    book = tmp_path / "ok.yml"
    book.write_text(OK_PLAYBOOK.format(out=out))
    args = ("-i", str(inventory), "provision", "--playbook", str(book))

    first = run_cli(*args, timeout=240)
    assert first.returncode == 0, first.stderr
    assert out.read_text() == "hello\n"
    assert "HOST" in first.stdout and "CHANGED" in first.stdout
    assert _row(first.stdout, "localhost") == {"ok": 2, "changed": 1, "failed": 0, "unreachable": 0, "skipped": 0}
    # Live progress per task and host goes to stderr.
    assert "TASK Write a file" in first.stderr
    assert "localhost: changed" in first.stderr

    second = run_cli(*args, timeout=240)
    assert second.returncode == 0, second.stderr
    assert _row(second.stdout, "localhost")["changed"] == 0

    tagged = run_cli(*args, "--tags", "write", "--check", timeout=240)
    assert tagged.returncode == 0, tagged.stderr
    assert _row(tagged.stdout, "localhost")["ok"] == 1


@pytest.mark.slow
def test_provision_failure_exits_nonzero(tmp_path: Path, inventory: Path) -> None:
    book = tmp_path / "fail.yml"
    book.write_text(FAILING_PLAYBOOK)
    proc = run_cli("-i", str(inventory), "provision", "--playbook", str(book), timeout=240)
    assert proc.returncode == 10  # ProvisionError
    assert _row(proc.stdout, "localhost")["failed"] == 1
    assert "deliberate failure for the test" in proc.stderr
    assert "provision failed" in proc.stderr.splitlines()[-1]


def test_provision_missing_playbook(tmp_path: Path, inventory: Path) -> None:
    proc = run_cli("-i", str(inventory), "provision", "--playbook", str(tmp_path / "nope.yml"))
    assert_clean_failure(proc, "nope.yml", "does not exist")


@pytest.mark.slow
def test_provision_unreachable_host(tmp_path: Path) -> None:
    inv = tmp_path / "inventory.ini"
    inv.write_text("[coordinator]\nghost ansible_host=127.0.0.1 ansible_port=1 ansible_connection=ssh\n")
    book = tmp_path / "ok.yml"
    book.write_text(OK_PLAYBOOK.format(out=tmp_path / "x"))
    proc = run_cli("-i", str(inv), "provision", "--playbook", str(book), timeout=240)
    assert proc.returncode == 10
    assert _row(proc.stdout, "ghost")["unreachable"] == 1
