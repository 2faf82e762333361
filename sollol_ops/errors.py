"""Typed errors. Every failure a user can cause is one of these; the CLI maps them to exit codes in one place."""

from __future__ import annotations


class SollolError(Exception):
    """Base class: a one-line, actionable message and an exit code."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # one line, always
        return " ".join(self.message.split())


class UsageError(SollolError):
    exit_code = 2


class InventoryError(SollolError):
    exit_code = 3


class ModelNotFound(SollolError):
    exit_code = 4


class StoreError(SollolError):
    """The Ollama store is there but something in it is wrong (manifest, blob)."""

    exit_code = 4


class GGUFError(SollolError):
    exit_code = 5


class BackendError(SollolError):
    """One or more RPC backends are down, busy or incompatible."""

    exit_code = 6


class PlacementError(SollolError):
    """The model (plus KV cache) does not fit the backends."""

    exit_code = 7


class CoordinatorError(SollolError):
    exit_code = 8


class ToolchainError(SollolError):
    """llama.cpp binaries missing or unusable."""

    exit_code = 9


class ProvisionError(SollolError):
    exit_code = 10


class BenchError(SollolError):
    exit_code = 11


class NetworkLabError(SollolError):
    """Network namespaces for test hosts could not be set up (root, iproute2)."""

    exit_code = 12


class StateError(SollolError):
    """sollol-ops's own state directory cannot be read or written (full, read-only, wrong owner)."""

    exit_code = 13


class CheckFailed(SollolError):
    """A health check (`status --check`, `doctor`) found problems; the message names each one."""

    exit_code = 14


class StageError(SollolError):
    """Staging a model's weights into an rpc-server's tensor cache failed, or was not verified."""

    exit_code = 15
