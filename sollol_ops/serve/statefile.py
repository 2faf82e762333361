"""sollol-ops's own state files: read strictly, set aside when corrupt, written atomically and privately,
and one lock per thing that is started, so two commands never both start it.

A state file is the only record of a process sollol-ops started; a command that cannot trust it must
neither crash nor act on it. So reading is total: a file that is missing gives None; one that is not a
regular file, too large, not JSON, or not of the expected shape is renamed aside (``NAME.corrupt-<time>``,
kept for inspection), reported in one line through ``warn``, and also gives None.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import stat
import sys
import time
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sollol_ops.errors import SollolError, StateError

T = TypeVar("T")
Warn = Callable[[str], None]

MAX_STATE_BYTES = 1 << 20


def warn_stderr(message: str) -> None:
    """The default warning sink of library calls: one line on stderr."""
    sys.stderr.write(f"sollol-ops: warning: {' '.join(message.split())}\n")


class ShapeError(ValueError):
    """The JSON is valid but not of the dataclass's shape."""


def _check(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (types.UnionType, typing.Union):
        for option in typing.get_args(hint):
            try:
                return _check(value, option, where)
            except ShapeError:
                continue
        raise ShapeError(f"{where}: {value!r:.40} is not {hint}")
    if hint is type(None):
        if value is None:
            return None
        raise ShapeError(f"{where}: expected null")
    if origin is list:
        if not isinstance(value, list):
            raise ShapeError(f"{where}: expected a list")
        (item,) = typing.get_args(hint) or (Any,)
        return [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ShapeError(f"{where}: expected an object")
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)  # type: ignore[arg-type]
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ShapeError(f"{where}: expected a number")
    if hint in (int, str, bool):
        if type(value) is hint:
            return value
        raise ShapeError(f"{where}: expected {hint.__name__}, got {type(value).__name__}")
    raise ShapeError(f"{where}: unsupported field type {hint}")


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from JSON data, checking every field's type (ShapeError otherwise)."""
    if not isinstance(data, dict):
        raise ShapeError(f"{where or cls.__name__}: expected an object")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = f"{where}.{f.name}" if where else f.name
        if f.name in data:
            kwargs[f.name] = _check(data[f.name], hints[f.name], name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ShapeError(f"{name}: missing")
    return cls(**kwargs)


def set_aside(path: Path, reason: str, what: str, warn: Warn) -> None:
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    try:
        os.replace(path, aside)
        warn(f"{what} {path} is unusable ({reason}); set aside as {aside.name}")
    except OSError as exc:
        warn(f"{what} {path} is unusable ({reason}) and could not be set aside ({exc.strerror}); ignoring it")


def read_bounded(path: Path, limit: int = MAX_STATE_BYTES) -> bytes:
    """A regular file's bytes, at most ``limit`` of them; never blocks on a FIFO or device.
    FileNotFoundError when absent, ValueError (with the reason) when it is not a small regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > limit:
            raise ValueError(f"{st.st_size} bytes, more than {limit}")
        chunks = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise ValueError(f"more than {limit} bytes")
        return data
    finally:
        os.close(fd)


def load(path: Path, cls: type[T], what: str, warn: Warn = warn_stderr) -> T | None:
    """The dataclass stored at path, or None (absent, or corrupt and set aside with a warning)."""
    try:
        raw = read_bounded(path)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        set_aside(path, str(exc), what, warn)
        return None
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: a symlink where a state file belongs
            set_aside(path, "a symbolic link", what, warn)
            return None
        raise StateError(f"cannot read {what} {path}: {exc.strerror}") from exc
    try:
        data = json.loads(raw)
        return from_dict(cls, data)
    except (ValueError, TypeError, RecursionError) as exc:
        set_aside(path, f"not valid JSON of the expected shape: {' '.join(str(exc).split())[:120]}", what, warn)
        return None


def write(path: Path, obj: Any, what: str) -> None:
    """Write JSON atomically (temp file, fsync, rename), mode 0600, directory 0700 when created.
    StateError (one line, naming the directory and the OS error) when it cannot be written."""
    data = _encode(obj)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise cannot_write(what, path.parent, exc) from exc


def cannot_write(what: str, directory: Path, exc: OSError) -> StateError:
    return StateError(
        f"cannot write {what} in {directory}: {exc.strerror or exc}; free space there or point XDG_STATE_HOME "
        "at a writable directory"
    )


def _encode(obj: Any) -> bytes:
    return json.dumps(dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj, indent=2).encode()  # type: ignore[arg-type]


class Reservation:
    """Room for a state file, written and synced before the thing it records exists (see reserve)."""

    def __init__(self, path: Path, tmp: Path, fd: int, size: int, what: str) -> None:
        self.path, self.tmp, self.fd, self.size, self.what = path, tmp, fd, size, what
        self.committed = False

    def commit(self, obj: Any) -> None:
        """Overwrite the reserved bytes in place (no new blocks needed), sync, rename into place."""
        data = _encode(obj)
        data += b" " * max(0, self.size - len(data))
        try:
            view = memoryview(data)
            offset = 0
            while offset < len(view):
                offset += os.pwrite(self.fd, view[offset:], offset)
            os.ftruncate(self.fd, len(data))
            os.fsync(self.fd)
            os.replace(self.tmp, self.path)
        except OSError as exc:
            raise cannot_write(self.what, self.path.parent, exc) from exc
        self.committed = True


@contextlib.contextmanager
def reserve(path: Path, template: Any, what: str) -> Iterator[Reservation]:
    """Reserve (write and fsync) room for a state file shaped like ``template`` plus slack; StateError
    now, before anything is started, when the directory is full or read-only. Commit within the block;
    an uncommitted reservation is removed."""
    size = len(_encode(template)) + 4096
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise cannot_write(what, path.parent, exc) from exc
    slot = Reservation(path, tmp, fd, size, what)
    try:
        try:
            view = memoryview(b" " * size)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as exc:
            raise cannot_write(what, path.parent, exc) from exc
        yield slot
    finally:
        os.close(fd)
        if not slot.committed:
            with contextlib.suppress(OSError):
                tmp.unlink()


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@dataclasses.dataclass
class LockHolder:
    pid: int
    start_time: int | None
    command: str
    since: float


class LockHeld(SollolError):
    """Another live sollol-ops command holds the lock; ``holder`` says who."""

    exit_code = 8

    def __init__(self, message: str, holder: LockHolder | None) -> None:
        super().__init__(message)
        self.holder = holder


@contextlib.contextmanager
def exclusive(path: Path, command: str, what: str) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on ``path`` for the block. The kernel drops it when the
    process dies (kill -9 included), so a crashed command never leaves it held. The loser raises
    LockHeld naming the holder's pid, command and age."""
    from sollol_ops.procs import process_start_time

    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StateError(
            f"cannot create the lock {path}: {exc.strerror or exc}; point XDG_STATE_HOME at a writable directory"
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = None
            with contextlib.suppress(OSError, ValueError, TypeError):
                holder = from_dict(LockHolder, json.loads(os.pread(fd, 4096, 0) or b"null"))
            who = (
                f"pid {holder.pid} ({holder.command}, for {time.time() - holder.since:.0f}s)"
                if holder
                else "another process"
            )
            raise LockHeld(f"{what} is held by {who}; wait for it to finish or stop it", holder) from None
        me = LockHolder(os.getpid(), process_start_time(os.getpid()), command, time.time())
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(dataclasses.asdict(me)).encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)
