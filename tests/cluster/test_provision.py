"""`sollol-ops provision` runs a real playbook through ansible-runner: live progress, summary, exit codes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import REPO, assert_clean_failure, run_cli

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


RENAMED = """\
[coord_hosts]
c1 ansible_connection=local ansible_python_interpreter={python}
[gpu_workers]
w1 ansible_connection=local ansible_python_interpreter={python} sollol_rpc_address=127.0.0.1
w2 ansible_connection=local ansible_python_interpreter={python} sollol_rpc_address=127.0.0.1 sollol_rpc_port=50099
"""


def _plays(list_hosts_output: str) -> dict[str, list[str]]:
    """`ansible-playbook --list-hosts` output -> {play name: [hosts]}."""
    plays: dict[str, list[str]] = {}
    current: list[str] = []
    for line in list_hosts_output.splitlines():
        stripped = line.strip()
        if stripped.startswith("play #"):
            current = plays.setdefault(stripped.split("): ", 1)[1].split("\t")[0], [])
        elif line.startswith("      ") and stripped:
            current.append(stripped)
    return plays


@pytest.fixture
def renamed_inventory(tmp_path: Path) -> Path:
    inv = tmp_path / "renamed.ini"
    inv.write_text(RENAMED.format(python=sys.executable))
    return inv


def test_provision_renamed_groups_reach_the_playbooks(renamed_inventory: Path) -> None:
    groups = ("--rpc-group", "gpu_workers", "--coordinator-group", "coord_hosts")
    proc = run_cli("-i", str(renamed_inventory), *groups, "provision", "--list-hosts", timeout=240)
    assert proc.returncode == 0, proc.stderr
    plays = _plays(proc.stdout)
    assert sorted(plays["Preflight checks"]) == ["c1", "w1", "w2"]
    assert sorted(plays["Run the rpc-servers"]) == ["w1", "w2"]
    assert plays["Install the coordinator"] == ["c1"]
    # Without the options the same inventory gives the plays nothing to run on: the names are what selects.
    plain = run_cli("-i", str(renamed_inventory), "provision", "--list-hosts", timeout=240)
    assert plain.returncode == 0, plain.stderr
    assert all(hosts == [] for hosts in _plays(plain.stdout).values()), plain.stdout


@pytest.mark.slow
def test_provision_renamed_groups_run_site_preflight(renamed_inventory: Path) -> None:
    """A real run (check mode, the tasks tagged always: preflight and argument validation) on renamed groups."""
    groups = ("--rpc-group", "gpu_workers", "--coordinator-group", "coord_hosts")
    proc = run_cli("-i", str(renamed_inventory), *groups, "provision", "--check", "--tags", "always", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "TASK Check the firewall settings" in proc.stderr  # rpc_server's checks ran for the renamed group
    assert {h: _row(proc.stdout, h)["failed"] for h in ("c1", "w1", "w2")} == {"c1": 0, "w1": 0, "w2": 0}
    # The preflight names the coordinator group it was given when that group is empty.
    empty = renamed_inventory.read_text().replace("[coord_hosts]\nc1", "[coord_hosts]\n[spare]\nc1")
    renamed_inventory.write_text(empty)
    failed = run_cli("-i", str(renamed_inventory), *groups, "provision", "--check", "--tags", "always", timeout=300)
    assert failed.returncode == 10
    assert "the inventory has no host in group 'coord_hosts'" in failed.stderr


@pytest.mark.slow
def test_provision_passes_group_vars_to_a_run(tmp_path: Path, renamed_inventory: Path) -> None:
    out = tmp_path / "groups.txt"
    book = tmp_path / "groups.yml"
    book.write_text(
        "- name: Record the groups\n"
        '  hosts: "{{ sollol_rpc_group }}"\n'
        "  gather_facts: false\n"
        "  tasks:\n"
        "    - name: Write them\n"
        "      ansible.builtin.copy:\n"
        f"        dest: {out}\n"
        '        content: "{{ sollol_rpc_group }} {{ sollol_coordinator_group }}"\n'
        "        mode: '0644'\n"
        "      run_once: true\n"
    )
    groups = ("--rpc-group", "gpu_workers", "--coordinator-group", "coord_hosts")
    proc = run_cli("-i", str(renamed_inventory), *groups, "provision", "--playbook", str(book), timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == "gpu_workers coord_hosts"


def test_provision_unknown_group(renamed_inventory: Path) -> None:
    proc = run_cli("-i", str(renamed_inventory), "--rpc-group", "gpu", "provision", "--list-hosts")
    err = assert_clean_failure(proc, "--rpc-group gpu", "no such group", "gpu_workers")
    assert proc.returncode == 3, err


@pytest.mark.parametrize("name", ["a:b", "x,y", "{{ evil }}", "!gpu", ""])
def test_provision_group_that_is_no_name(renamed_inventory: Path, name: str) -> None:
    proc = run_cli("-i", str(renamed_inventory), "--coordinator-group", name, "provision", "--syntax-check")
    assert_clean_failure(proc, "--coordinator-group", "not an inventory group name")
    assert proc.returncode == 2


def test_provision_modes_exclude_each_other(inventory: Path) -> None:
    proc = run_cli("-i", str(inventory), "provision", "--check", "--syntax-check")
    assert_clean_failure(proc, "--check and --syntax-check exclude each other")
    assert proc.returncode == 2


def test_provision_syntax_check_of_the_site_playbook(inventory: Path) -> None:
    proc = run_cli("-i", str(inventory), "provision", "--syntax-check", timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert f"playbook: {REPO / 'playbooks/site.yml'}" in proc.stdout


def test_provision_syntax_error_is_one_line(tmp_path: Path, inventory: Path) -> None:
    book = tmp_path / "broken.yml"
    book.write_text("- name: Broken\n  hosts: all\n  tasks:\n    - name: Nope\n      no.such.module: {}\n")
    proc = run_cli("-i", str(inventory), "provision", "--playbook", str(book), "--syntax-check", timeout=240)
    assert_clean_failure(proc, "--syntax-check broken.yml failed", "no.such.module")
    assert proc.returncode == 10


def test_provision_coordinator_wheel_must_exist(tmp_path: Path, inventory: Path) -> None:
    proc = run_cli(
        "-i", str(inventory), "provision", "--coordinator-wheel", str(tmp_path / "sollol_ops-9-py3-none-any.whl")
    )
    assert_clean_failure(proc, "--coordinator-wheel", "no such sollol-ops wheel")
    assert proc.returncode == 2
    other = tmp_path / "other-1.0-py3-none-any.whl"
    other.write_bytes(b"PK")
    proc = run_cli("-i", str(inventory), "provision", "--coordinator-wheel", str(other))
    assert_clean_failure(proc, "--coordinator-wheel", "no such sollol-ops wheel")
