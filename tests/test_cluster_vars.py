"""The per-host inventory variables have the same defaults in the roles and in the CLI."""

from __future__ import annotations

import yaml
from helpers import REPO

from sollol_ops import cluster_vars


def test_role_defaults_match_python_defaults() -> None:
    role_defaults = yaml.safe_load((REPO / "roles/sollol_cluster/defaults/main.yml").read_text())
    assert role_defaults == cluster_vars.DEFAULTS


def test_llama_cpp_backend_default_agrees_with_llama_cpp_role() -> None:
    llama = yaml.safe_load((REPO / "roles/llama_cpp/defaults/main.yml").read_text())
    assert llama["llama_cpp_backend"] == cluster_vars.DEFAULTS["llama_cpp_backend"]
